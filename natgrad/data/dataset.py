r"""The :class:`Dataset` record every loader returns, and :func:`load_dataset` by name.

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

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from natgrad.errors import DataFileError, InputError

__all__ = ["DATASETS", "Dataset", "default_data_dir", "load_dataset"]


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

    def with_(self, **changes) -> Dataset:
        """A copy with some fields replaced (e.g. preprocessed images)."""
        return replace(self, **changes)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train {tuple(self.train_x.shape)}, "
            f"test {tuple(self.test_x.shape)}, {self.num_classes} classes)"
        )


def default_data_dir(name: str) -> Path | None:
    """Where ``name`` is looked for when no ``data_dir`` is given (``None``: shipped)."""
    root = Path(os.environ.get("NATGRAD_DATA", "data"))
    return {
        "mnist": root / "mnist",
        "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
        "cifar10": root / "cifar-10-batches-py",
        "cifar100": root / "cifar-100-python",
        "imagenet": root / "imagenet",
        "digits": None,
    }[name]


DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "cifar10", "cifar100", "imagenet")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    limit_per_class: int | None = None,
) -> Dataset:
    r"""Load the data set ``name`` (see the module table) with images in ``dtype``.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the folder holding its files (default: :func:`default_data_dir`).
        seed: split seed (``digits`` only: the others ship a fixed test set).
        dtype: image dtype; float32 unless configured otherwise.
        limit_per_class: ``imagenet`` only: at most this many images of each class per
            split (``None``: all, feasible only for small trees).

    Raises:
        DataFileError: a file is missing or corrupt (names the file, format and folder).
        InputError: unknown name, or ``limit_per_class`` for a name other than ``imagenet``.
    """
    from natgrad.data import cifar, digits, imagenet, mnist

    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit_per_class is not None and name != "imagenet":
        raise InputError(f"limit_per_class applies to imagenet only, not {name!r}")
    folder = Path(data_dir) if data_dir is not None else default_data_dir(name)
    if name == "imagenet":
        return _load_imagenet(imagenet, folder, dtype, limit_per_class)
    if name in ("mnist", "fashion-mnist"):
        return mnist.load_mnist(folder, name=name, dtype=dtype)
    if name.startswith("cifar"):
        return cifar.load_cifar(folder, num_classes=int(name[5:]), dtype=dtype)
    return digits.load_digits(seed=seed, dtype=dtype)


def _load_imagenet(imagenet, folder: Path, dtype: torch.dtype, limit: int | None) -> Dataset:
    """``train/`` and ``val/`` of an ImageNet folder tree as a :class:`Dataset` (float ``/255``)."""
    train = imagenet.load_imagenet(folder, "train", dtype=dtype, limit_per_class=limit)
    val = imagenet.load_imagenet(folder, "val", dtype=dtype, limit_per_class=limit)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DataFileError(
            f"{folder}: train/ and val/ hold different class folders (in one only: "
            f"{', '.join(only[:5])}{', …' if len(only) > 5 else ''}); both splits need the "
            "same classes so that labels agree"
        )
    return Dataset(
        name="imagenet",
        train_x=train.x,
        train_y=train.y,
        test_x=val.x,
        test_y=val.y,
        num_classes=len(train.classes),
        input_shape=tuple(train.x.shape[1:]),
        meta={
            "files": {"train": str(folder / "train"), "test": str(folder / "val")},
            "classes": list(train.classes),
            "limit_per_class": limit,
            "preprocess": "resize 256x256 (bilinear); mean image = train_x.mean(0)",
        },
    )
