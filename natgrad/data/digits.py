r"""scikit-learn's ``load_digits()``: 1,797 real 8×8 handwritten digits, shipped with sklearn.

Pixels (0..16) are scaled to ``[0, 1]``; a stratified split with a seed holds out
``test_fraction`` of the images. scikit-learn is imported only when this loader runs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from natgrad.data.dataset import Dataset
from natgrad.errors import DataFileError

__all__ = ["load_digits"]


def load_digits(*, seed: int = 0, test_fraction: float = 0.2, dtype=torch.float32) -> Dataset:
    r"""The 8×8 digits as a :class:`Dataset` with images ``[N, 1, 8, 8]`` in ``[0, 1]``.

    Example:
        >>> ds = load_digits(seed=0)
        >>> ds.train_x.shape, ds.test_x.shape, ds.num_classes
        (torch.Size([1437, 1, 8, 8]), torch.Size([360, 1, 8, 8]), 10)
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataFileError(
            "the digits data set ships with scikit-learn, which is not installed; "
            "pip install 'natgrad[data]'"
        ) from None
    data, target = _sklearn_digits(sk_load_digits)
    x = (data / 16.0).reshape(-1, 1, 8, 8)  # new arrays: the cached ones stay read-only
    y = target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(x_tr).to(dtype),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(x_te).to(dtype),
        test_y=torch.from_numpy(y_te),
        num_classes=10,
        input_shape=(1, 8, 8),
        meta={"split_seed": seed, "test_fraction": test_fraction},
    )


@functools.lru_cache(maxsize=1)
def _sklearn_digits(loader) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's pixels and labels, parsed once per process (the CSV parse is ~30 ms, paid
    by every run of a grid or a demo otherwise); read-only, so no caller can change them."""
    bunch = loader()
    data, target = bunch.data.copy(), bunch.target.copy()
    data.flags.writeable = target.flags.writeable = False
    return data, target
