r"""MNIST and Fashion-MNIST from their four IDX files.

``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with or without ``.gz`` in one folder
(the Debian package ``dataset-fashion-mnist`` installs them in
``/usr/share/datasets/fashion-mnist``). Images become ``[N, 1, 28, 28]`` in ``[0, 1]``.

MNIST's official 60,000-image training file is split as ``mnist.pkl.gz`` splits it
(:mod:`natgrad.data.mnist_pickle`): the first 50,000 train, the last 10,000 validation.
A training file of any other size, and Fashion-MNIST, get no validation split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from natgrad.data.dataset import Dataset
from natgrad.data.idx import read_idx
from natgrad.errors import DataFileError

__all__ = ["MNIST_TRAIN_SIZE", "MNIST_VAL_SIZE", "find_idx_file", "has_idx_files", "load_mnist"]

#: The official MNIST training file's size, and how many of its last images are validation.
MNIST_TRAIN_SIZE, MNIST_VAL_SIZE = 60_000, 10_000

#: SHA-256 of the official label files' labels (uint8, in file order) of each data set: both
#: sets share file names and shapes, so these tell them apart.
LABELS_SHA256 = {
    "mnist": {
        "train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    },
    "fashion-mnist": {
        "train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    },
}
_TITLE = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def _check_not_the_other(labels: np.ndarray, split: str, name: str, path: Path) -> None:
    """A :class:`DataFileError` if ``path``'s labels are the other data set's official ones."""
    digest = hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest()
    for other, sha in LABELS_SHA256.items():
        if other != name and digest == sha[split]:
            raise DataFileError(
                f"{path}: these are {_TITLE[other]}'s {split} labels, not {_TITLE.get(name, name)}'s "
                f"(the two share file names and shapes); pass --dataset {other} to train on "
                f"them, or --data-dir a folder holding {_TITLE.get(name, name)}'s files"
            )


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds the training images IDX file (gzip or raw)."""
    return any((Path(folder) / f"train-images-idx3-ubyte{s}").is_file() for s in (".gz", ""))


def find_idx_file(folder: Path, stem: str) -> Path:
    """``folder/stem.gz`` or ``folder/stem``; a :class:`DataFileError` naming both if absent."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    hint = " (on Debian: apt-get install dataset-fashion-mnist)" if "fashion" in str(folder) else ""
    raise DataFileError(
        f"{folder / stem}[.gz]: file not found; expected the IDX file {stem} (gzip or raw) "
        f"in {folder}. Pass --data-dir to the folder holding it{hint}."
    )


def load_mnist(folder: Path, *, name: str = "mnist", dtype: torch.dtype = torch.float32) -> Dataset:
    r"""The four IDX files of MNIST/Fashion-MNIST in ``folder`` as a :class:`Dataset`: images
    ``[N, 1, H, W]`` (``dtype``, ``/255``), int64 labels, split as the module docstring says.
    A :class:`~natgrad.errors.DataFileError` if a file is missing or corrupt, or images and
    labels disagree."""
    folder = Path(folder)
    out, meta = {}, {"files": {}}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = find_idx_file(folder, f"{prefix}-images-idx3-ubyte")
        lab_path = find_idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataFileError(
                f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataFileError(
                f"{lab_path}: expected {images.shape[0]} labels (one per image in "
                f"{img_path.name}), got shape {labels.shape}"
            )
        if images.shape[0] == 0:
            raise DataFileError(f"{img_path}: holds no images (0 × {images.shape[1:]}); the "
                                f"{split} set must not be empty. Download it again.")  # fmt: skip
        if labels.dtype.kind not in "iu":
            raise DataFileError(f"{lab_path}: labels must be integers (IDX type uint8), got "
                                f"{labels.dtype}; this is not an MNIST label file")  # fmt: skip
        if labels.min() < 0 or labels.max() > 9:
            raise DataFileError(f"{lab_path}: labels must lie in 0..9, found values in "
                                f"[{labels.min()}, {labels.max()}]")  # fmt: skip
        _check_not_the_other(labels, split, name, lab_path)
        if split == "test" and images.shape[1:] != tuple(out["train_x"].shape[2:]):
            raise DataFileError(f"{img_path}: images of {images.shape[1]}×{images.shape[2]} "
                                f"pixels, the training file's are {out['train_x'].shape[2]}×"
                                f"{out['train_x'].shape[3]}; the files are of two data sets")  # fmt: skip
        out[f"{split}_x"] = torch.from_numpy(images).to(dtype).div_(255.0).unsqueeze(1)
        out[f"{split}_y"] = torch.from_numpy(labels.astype(np.int64))
        meta["files"][split] = [str(img_path), str(lab_path)]
    if name == "mnist" and out["train_x"].shape[0] == MNIST_TRAIN_SIZE:
        cut = MNIST_TRAIN_SIZE - MNIST_VAL_SIZE
        out["val_x"], out["val_y"] = out["train_x"][cut:], out["train_y"][cut:]
        out["train_x"], out["train_y"] = out["train_x"][:cut], out["train_y"][:cut]
    h, w = out["train_x"].shape[2:]
    return Dataset(name=name, num_classes=10, input_shape=(1, h, w), meta=meta, **out)
