r"""The :class:`Dataset` record every loader returns (:func:`natgrad.data.load_dataset` by name).

Names, formats, default folders and split sizes (only ``mnist`` has a validation split):
docs/paper.md, "Data on these machines". Without one (``val_x is None``) studies say that the
test set served as the validation curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from natgrad.errors import InputError

__all__ = ["Dataset"]


@dataclass(frozen=True)
class Dataset:
    r"""A labelled image data set: images ``*_x`` ``[N, C, H, W]`` (float, ``[0, 1]`` as
    loaded) with ``input_shape`` ``(C, H, W)``, int64 labels ``*_y`` ``[N]`` in
    ``[0, num_classes)``, ``meta`` the provenance (files read, split seed, preprocessing). The
    validation split ``val_x, val_y`` (``None`` where there is none) serves selection and early
    stopping, never the test split."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    meta: dict = field(default_factory=dict)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.val_x is None) != (self.val_y is None):
            raise InputError(f"{self.name}: val_x and val_y go together (one is None)")
        for split in self.splits:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[1:] != self.input_shape or y.shape != x.shape[:1]:
                raise InputError(
                    f"{self.name} {split}: images {tuple(x.shape)} and labels "
                    f"{tuple(y.shape)} do not match input shape {self.input_shape}"
                )
            if y.dtype != torch.int64:
                raise InputError(f"{self.name} {split}: labels must be int64, got {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise InputError(
                    f"{self.name} {split}: labels must lie in [0, {self.num_classes - 1}], got "
                    f"values in [{int(y.min())}, {int(y.max())}]"
                )
        for split in self.splits:  # an empty held-out split scored a perfect 0 error
            if getattr(self, f"{split}_x").shape[0] == 0:
                raise InputError(f"{self.name}: the {split} split is empty; check the data files")

    @property
    def splits(self) -> tuple[str, ...]:
        """``("train", "val", "test")``, or ``("train", "test")`` without a validation split."""
        return ("train", "test") if self.val_x is None else ("train", "val", "test")

    def with_(self, **changes) -> Dataset:
        """A copy with some fields replaced (e.g. preprocessed images)."""
        return replace(self, **changes)

    def with_validation_in_train(self) -> Dataset:
        """The validation split appended to the training split (MNIST: the paper's 60k
        training images); unchanged where there is no validation split."""
        if self.val_x is None:
            return self
        return replace(
            self,
            train_x=torch.cat([self.train_x, self.val_x]),
            train_y=torch.cat([self.train_y, self.val_y]),
            val_x=None,
            val_y=None,
            meta=dict(self.meta, train_split="train+val"),
        )

    def __repr__(self) -> str:
        val = "" if self.val_x is None else f", val {tuple(self.val_x.shape)}"
        return (
            f"Dataset({self.name!r}, train {tuple(self.train_x.shape)}{val}, "
            f"test {tuple(self.test_x.shape)}, {self.num_classes} classes)"
        )
