r"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), gzip-compressed or raw.

Layout (all integers big-endian)::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions n
    4·n bytes   the n dimension sizes, uint32
    the rest    the elements, row-major

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x-idx3-ubyte.gz"
    >>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    >>> read_idx(path).shape
    (2, 3, 4)
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from natgrad.errors import DataFileError

__all__ = ["read_idx", "write_idx"]

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_FORMAT = "IDX (MNIST format: 0x0000, type byte, ndim byte, big-endian uint32 dims, data)"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(
            f"{path}: file not found; expected an {_FORMAT} file, gzip-compressed or raw, "
            f"in {path.parent}"
        ) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:  # zlib: a bad body
            raise DataFileError(
                f"{path}: corrupt gzip stream ({exc}); expected a gzip-compressed {_FORMAT} "
                "file. Download it again."
            ) from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    r"""Read one IDX file (``.gz`` detected by its magic bytes) into a native-endian array.

    Raises:
        DataFileError: missing file, bad magic number, unknown type, or a data length that
            does not match the header's dimensions (truncated or trailing bytes).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _TYPES:
        raise DataFileError(
            f"{path}: bad magic number {data[:4].hex() or '(empty file)'}; expected an "
            f"{_FORMAT} file"
        )
    ndim = data[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(data) < head:
        raise DataFileError(f"{path}: header declares {ndim} dimensions but is truncated")
    if ndim > 32:  # numpy's limit is 64; no data set has more than a few
        raise DataFileError(f"{path}: header declares {ndim} dimensions; an {_FORMAT} data set "
                            "has a few (images: 3). The file is corrupt")  # fmt: skip
    dims = struct.unpack(f">{ndim}I", data[4:head])
    dtype = _TYPES[data[2]]
    expected = math.prod(dims) * dtype.itemsize  # exact: np.prod wraps around at 2**63
    if len(data) - head != expected:
        raise DataFileError(
            f"{path}: header says dims {dims} of {dtype.name} ({expected} data bytes) but the "
            f"file holds {len(data) - head}; it is truncated or corrupt. Download it again."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=head).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    arr = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    code = codes.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"IDX cannot store dtype {arr.dtype}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(_TYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
