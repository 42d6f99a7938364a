r"""CIFAR-10 and CIFAR-100, "python version" batches (Krizhevsky's official format).

Each batch file is a Python pickle of a dict with ``b"data"``: uint8 ``[N, 3072]`` (1024
red, 1024 green, 1024 blue values of a 32×32 image, row-major) and the labels, a list of N
ints (file names and label keys: ``_FILES``). The pickles are read only from the folder the
user names, through an unpickler that refuses every global except the few numpy array
constructors the official files use: anything else is a :class:`~natgrad.errors.DataFileError`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from natgrad.data.dataset import Dataset
from natgrad.data.mnist_pickle import ArrayUnpickler
from natgrad.errors import DataFileError

__all__ = ["load_cifar", "read_cifar_batch"]

_FILES = {  # classes: (train files, test files, label key, extracted folder)
    10: (
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        "cifar-10-batches-py",
    ),
    100: (["train"], ["test"], b"fine_labels", "cifar-100-python"),
}
_NUMPY_SCALARS = {  # what the official files hold besides arrays (ArrayUnpickler.ALLOWED)
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    r"""Read one batch file: images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]``.

    Raises:
        DataFileError: missing file, not a CIFAR pickle, or wrong keys/shapes/dtypes.
    """
    fmt = (
        f"a CIFAR 'python version' batch: pickled dict with b'data' uint8 [N, 3072] and "
        f"{label_key!r} (list of N ints)"
    )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found; expected {fmt} in {path.parent}") from None
    try:
        batch = ArrayUnpickler(io.BytesIO(raw), encoding="bytes", extra=_NUMPY_SCALARS,
                               refusal="refused global {name}").load()  # fmt: skip
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise DataFileError(
            f"{path}: cannot read ({type(exc).__name__}: {exc}); expected {fmt}"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataFileError(f"{path}: found {keys}; expected {fmt}")
    try:
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    except ValueError as exc:  # ragged lists
        raise DataFileError(f"{path}: b'data' or {label_key!r} is not an array ({exc}); "
                            f"expected {fmt}") from None  # fmt: skip
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFileError(f"{path}: b'data' is {data.dtype} {data.shape}; expected {fmt}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(
            f"{path}: {label_key!r} is {labels.dtype} {labels.shape}, expected integer labels "
            f"of shape ({data.shape[0]},)"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(
    folder: Path, *, num_classes: int = 10, dtype: torch.dtype = torch.float32
) -> Dataset:
    r"""CIFAR-10 (``num_classes=10``) or CIFAR-100 (fine labels) from ``folder``.

    ``folder`` may be the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder
    itself or its parent. Images are ``[N, 3, 32, 32]`` in ``[0, 1]`` (``dtype``); apply
    :func:`natgrad.data.preprocess.gcn_zca` for the paper's preprocessing.
    """
    if num_classes not in _FILES:
        raise DataFileError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    train_files, test_files, label_key, subdir = _FILES[num_classes]
    folder = Path(folder)
    if not (folder / test_files[0]).exists() and (folder / subdir).is_dir():
        folder = folder / subdir  # the parent of the extracted folder was given
    out, files = {}, {}
    for split, names in (("train", train_files), ("test", test_files)):
        parts = [read_cifar_batch(folder / n, label_key) for n in names]
        x, y = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        if y.size == 0:
            raise DataFileError(f"{folder}: the {split} batches ({', '.join(names)}) hold no "
                                "images; the files are incomplete: extract the archive again")  # fmt: skip
        if y.min() < 0 or y.max() >= num_classes:
            raise DataFileError(f"{folder}: {split} labels outside 0..{num_classes - 1}")
        out[f"{split}_x"] = torch.from_numpy(x).to(dtype).div_(255.0)
        out[f"{split}_y"] = torch.from_numpy(y)
        files[split] = [str(folder / n) for n in names]
    return Dataset(f"cifar{num_classes}", num_classes=num_classes, input_shape=(3, 32, 32),
                   meta={"files": files}, **out)  # fmt: skip
