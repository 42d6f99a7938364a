"""Data loaders on tiny files written in exactly the official formats, and preprocessing."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from natgrad.data import (
    ZCA,
    Dataset,
    gcn,
    gcn_zca,
    load_cifar,
    load_dataset,
    random_crop_flip,
    read_idx,
    write_idx,
)
from natgrad.errors import DataFileError, InputError
from natgrad.testing import assert_close

FASHION = Path("/usr/share/datasets/fashion-mnist")
RNG = np.random.default_rng(0)


def write_mnist(folder: Path, n_train=12, n_test=5, gz=True, size=28):
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = RNG.integers(0, 256, (n, size, size), dtype=np.uint8)
        lab = RNG.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", img)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", lab)
        arrays[prefix] = (img, lab)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    arr = (RNG.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, arr)
    assert np.array_equal(read_idx(path), arr)


def test_idx_bytes_are_the_documented_format(tmp_path):
    write_idx(tmp_path / "l", np.array([7, 1, 2], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x01\x02"
    write_idx(tmp_path / "l.gz", np.array([7, 1, 2], dtype=np.uint8))
    assert gzip.decompress((tmp_path / "l.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"


def _damaged_gzip() -> bytes:
    """A gzip IDX file whose compressed body is damaged: zlib.error, not a gzip error (it
    raised a traceback, a helper's find)."""
    import struct

    raw = b"\x00\x00\x08\x01" + struct.pack(">I", 3000)
    raw += bytes((i * 7919) % 251 % 10 for i in range(3000))
    damaged = bytearray(gzip.compress(raw, mtime=0))
    for i in range(12, min(40, len(damaged) - 8)):
        damaged[i] ^= 0x5A
    return bytes(damaged)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated or corrupt"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "truncated or corrupt"),
        (b"\x08\x03\x00\x00", "bad magic number"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x01", "bad magic number"),
        (b"", "bad magic number"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (_damaged_gzip(), "corrupt gzip"),
        (b"\x00\x00\x08\x04" + b"\x00\x01\x00\x00" * 4, "truncated or corrupt"),  # 2**64 bytes
        (b"\x00\x00\x08\x41" + b"\x00\x00\x00\x01" * 65 + b"\x07", "65 dimensions"),
    ],
    ids=["short", "trailing", "magic", "type", "empty", "gzip", "gzip-body", "overflow", "ndim"],
)
def test_idx_corrupt_file_names_it(tmp_path, payload, match):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataFileError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_loader(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", tmp_path, dtype=torch.float32)
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert_close(ds.train_x[:, 0] * 255, torch.from_numpy(arrays["train"][0]).float())
    assert torch.equal(ds.test_y, torch.from_numpy(arrays["t10k"][1]).long())


def test_mnist_missing_file_names_file_and_folder(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte") as info:
        load_dataset("fashion-mnist", tmp_path)
    assert "IDX" in str(info.value) and str(tmp_path) in str(info.value)


def test_mnist_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataFileError, match="expected 12 labels"):
        load_dataset("mnist", tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(ds.train_y), torch.full((10,), 6000))
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() == 1.0


def write_cifar(folder: Path, classes: int, n=6):
    """Batches exactly as the official python version: pickled dicts with bytes keys."""
    folder.mkdir(parents=True, exist_ok=True)
    names = (
        ["train", "test"]
        if classes == 100
        else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    )
    key = b"fine_labels" if classes == 100 else b"labels"
    batches = {}
    for name in names:
        batch = {
            b"batch_label": b"tiny batch",
            b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: RNG.integers(0, classes, n).tolist(),
            b"filenames": [b"x.png"] * n,
        }
        if classes == 100:
            batch[b"coarse_labels"] = [0] * n
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = batch
    return batches


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_loader(tmp_path, classes):
    sub = "cifar-100-python" if classes == 100 else "cifar-10-batches-py"
    batches = write_cifar(tmp_path / sub, classes)
    ds = load_dataset(f"cifar{classes}", tmp_path)  # parent folder works too
    n_train = 6 if classes == 100 else 30
    assert ds.train_x.shape == (n_train, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    first = batches["train" if classes == 100 else "data_batch_1"]
    red = torch.from_numpy(first[b"data"][0, :1024].reshape(32, 32)).float() / 255
    assert_close(ds.train_x[0, 0], red.to(ds.train_x.dtype))
    key = b"fine_labels" if classes == 100 else b"labels"
    assert ds.train_y[:6].tolist() == first[key]


def test_cifar_bad_files(tmp_path):
    write_cifar(tmp_path, 10)
    (tmp_path / "data_batch_3").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(DataFileError, match="data_batch_3.*uint8"):
        load_cifar(tmp_path, num_classes=10)
    for labels, match in (([[0], [1, 2]], "not an array"), ([0.0, 1.0], "float64")):
        (tmp_path / "data_batch_3").write_bytes(
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels})
        )
        with pytest.raises(DataFileError, match=f"data_batch_3.*{match}"):
            load_cifar(tmp_path, num_classes=10)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataFileError, match="data_batch_3: cannot read"):
        load_cifar(tmp_path, num_classes=10)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataFileError, match="data_batch_3: file not found"):
        load_cifar(tmp_path, num_classes=10)


def test_an_empty_held_out_split_is_refused_naming_its_files(tmp_path):
    """An empty test_batch loaded without complaint; training then failed in torch (a
    stride error), and an evaluation of no images scored a perfect 0 error (a helper's
    hunt). The loader names the files, and a Dataset refuses any empty split."""
    from natgrad.data.dataset import Dataset
    from natgrad.errors import InputError

    write_cifar(tmp_path, 10)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((0, 3072), np.uint8), b"labels": np.zeros(0, np.int64)}))  # fmt: skip
    with pytest.raises(DataFileError, match=r"the test batches \(test_batch\) hold no images"):
        load_cifar(tmp_path, num_classes=10)
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(InputError, match="the test split is empty"):
        Dataset("d", x, y, x[:0], y[:0], num_classes=2, input_shape=(1, 2, 2))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_unpickler_refuses_code(tmp_path, capsys):
    write_cifar(tmp_path, 100)
    (tmp_path / "test").write_bytes(pickle.dumps({b"data": _Evil(), b"fine_labels": []}))
    with pytest.raises(DataFileError, match="refused global builtins.print"):
        load_cifar(tmp_path, num_classes=100)
    assert "pwned" not in capsys.readouterr().out


def test_digits_split_is_stratified_and_seeded():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    assert torch.equal(a.train_x, b.train_x) and a.train_x.dtype == torch.float32
    assert not torch.equal(a.train_x, load_dataset("digits", seed=2).train_x)
    test_frac = torch.bincount(a.test_y) / len(a.test_y)
    train_frac = torch.bincount(a.train_y) / len(a.train_y)
    assert (test_frac - train_frac).abs().max() < 0.005  # stratified
    assert len(a.test_y) == 360 and a.train_x.max() <= 1.0


def test_unknown_dataset():
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("svhn")


def test_gcn_is_pylearn2s_zero_mean_and_scaled_norm():
    """pylearn2's global_contrast_normalize(X, scale=55) (its default use_std=False, the
    maxout CIFAR setup the docs follow) scales each centred image to vector norm 55, not to
    standard deviation 55 (√D times larger, which changes what ZCA's ε = 0.1 does)."""
    x = torch.rand(7, 3, 4, 4, dtype=torch.float64)
    y = gcn(x, scale=55.0).flatten(1)
    assert_close(y.mean(1), torch.zeros(7, dtype=torch.float64), atol=1e-10)
    assert_close(y.norm(dim=1), torch.full((7,), 55.0, dtype=torch.float64))
    c = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)  # pylearn2's formula, written out
    assert_close(y, c / (c.pow(2).sum(1, keepdim=True).sqrt() / 55.0))


def test_zca_whitens_full_rank_data():
    x = torch.randn(400, 12) @ torch.randn(12, 12) + 3.0
    zca = ZCA.fit(x, eps=0.0)
    z = zca.transform(x)
    assert zca.rank == 12
    assert_close(torch.cov(z.T, correction=0), torch.eye(12), atol=1e-9)
    assert_close(zca.W, zca.W.T)


def test_zca_after_gcn_is_projector_on_kept_subspace():
    x = gcn(torch.randn(300, 3, 2, 2))  # every sample has mean 0: rank D-1
    zca = ZCA.fit(x, eps=0.0)
    z = zca.transform(x).flatten(1)
    d = 12
    assert zca.rank == d - 1
    projector = torch.eye(d) - torch.full((d, d), 1.0 / d)  # kills the all-ones direction
    assert_close(torch.cov(z.T, correction=0), projector, atol=1e-9)


def test_gcn_zca_fits_on_train_only():
    ds = Dataset(
        name="tiny",
        train_x=torch.rand(50, 3, 3, 3),
        train_y=torch.zeros(50, dtype=torch.int64),
        test_x=torch.rand(9, 3, 3, 3),
        test_y=torch.zeros(9, dtype=torch.int64),
        num_classes=1,
        input_shape=(3, 3, 3),
    )
    out = gcn_zca(ds, eps=0.1)
    zca = ZCA.fit(gcn(ds.train_x), eps=0.1)
    assert zca.rank == 26  # GCN removes the all-ones direction
    assert_close(out.test_x, zca.transform(gcn(ds.test_x)))
    assert_close(out.train_x, zca.transform(gcn(ds.train_x)))
    assert "zca" in out.meta["preprocess"]


def test_random_crop_flip_matches_reference():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float64).reshape(2, 3, 6, 6)
    out = random_crop_flip(x, torch.Generator().manual_seed(5), padding=2)
    g = torch.Generator().manual_seed(5)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    flips = torch.rand(2, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):  # the slow, obvious way
        ref = padded[n, :, oy[n] : oy[n] + 6, ox[n] : ox[n] + 6]
        assert_close(out[n], ref.flip(-1) if flips[n] else ref)
    again = random_crop_flip(x, torch.Generator().manual_seed(5), padding=2)
    assert torch.equal(out, again)


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_files_are_refused_as_mnist():
    """Fashion-MNIST's IDX files have MNIST's names and shapes: read as ``mnist`` they trained
    a run on clothes called digits (exit 0). Their label files identify them."""
    with pytest.raises(DataFileError, match="Fashion-MNIST.*--dataset fashion-mnist"):
        load_dataset("mnist", FASHION)


def test_mnist_files_are_refused_as_fashion_mnist(tmp_path):
    """The other way round: MNIST's label files (written here from the shipped copy, with
    1×1 images) read as ``fashion-mnist`` are refused, naming MNIST."""
    mnist = load_dataset("mnist")
    train = np.concatenate([mnist.train_y.numpy(), mnist.val_y.numpy()]).astype(np.uint8)
    for prefix, lab in (("train", train), ("t10k", mnist.test_y.numpy().astype(np.uint8))):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((lab.size, 1, 1), np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", lab)
    with pytest.raises(DataFileError, match="MNIST's.*--dataset mnist"):
        load_dataset("fashion-mnist", tmp_path)
    assert load_dataset("mnist", tmp_path).train_y.shape == (50_000,)
