r"""The :class:`Dataset` record every loader returns (:func:`natgrad.data.load_dataset` by name).

=================  ======================  ============  =================================
name               format                  input shape   default ``data_dir``
=================  ======================  ============  =================================
``mnist``          IDX (gz or raw)         1×28×28       ``$NATGRAD_DATA/mnist``
``fashion-mnist``  IDX (gz or raw)         1×28×28       ``/usr/share/datasets/fashion-mnist``
``digits``         scikit-learn, shipped   1×8×8         (none)
``cifar10``        CIFAR python batches    3×32×32       ``$NATGRAD_DATA/cifar-10-batches-py``
``cifar100``       CIFAR python batches    3×32×32       ``$NATGRAD_DATA/cifar-100-python``
``imagenet``       class-folder tree       3×256×256     ``$NATGRAD_DATA/imagenet``
=================  ======================  ============  =================================

``$NATGRAD_DATA`` defaults to ``./data``. Images are float (``[0, 1]``, dtype as asked,
float32 by default) of shape ``[N, C, H, W]``; labels are int64 ``[N]``.

``imagenet`` reads ``train/`` and ``val/`` (the test split) of the folder tree described in
:mod:`natgrad.data.imagenet`, resized to 256×256. It is loaded eagerly, so it is meant for
small subsets (a few classes, or ``limit_per_class``), not the full 1.28M-image set; the
per-pixel training mean is ``train_x.mean(0)``, subtracted by ``imagenet_train_transform``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from natgrad.errors import InputError

__all__ = ["Dataset"]


@dataclass(frozen=True)
class Dataset:
    r"""A labelled image data set split into train and test.

    Attributes:
        name: the registry name (``"fashion-mnist"``, …).
        train_x, test_x: images ``[N, C, H, W]``, float.
        train_y, test_y: labels ``[N]``, int64 in ``[0, num_classes)``.
        num_classes: C.
        input_shape: ``(C, H, W)``.
        meta: provenance (files read, split seed, preprocessing applied).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
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
        if self.train_x.shape[0] == 0:
            raise InputError(f"{self.name}: the training set is empty; check the data files")

    def with_(self, **changes) -> Dataset:
        """A copy with some fields replaced (e.g. preprocessed images)."""
        return replace(self, **changes)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train {tuple(self.train_x.shape)}, "
            f"test {tuple(self.test_x.shape)}, {self.num_classes} classes)"
        )
