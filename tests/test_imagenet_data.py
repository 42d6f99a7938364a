"""The ImageNet folder-tree loader on a tiny tree written in exactly that layout with PIL."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from natgrad.data import (
    DATASETS,
    imagenet_eval_transform,
    imagenet_train_transform,
    load_dataset,
    load_imagenet,
    random_crop_flip,
    scan_image_folder,
)
from natgrad.errors import DataFileError, InputError
from natgrad.testing import assert_close

Image = pytest.importorskip("PIL.Image")

CLASSES = ("n02085620", "n01440764", "n01443537")  # written unsorted on purpose
SORTED = tuple(sorted(CLASSES))


def solid(color, shape=(5, 7)) -> np.ndarray:
    """A ``shape`` image of one RGB colour: uint8 ``[H, W, 3]`` (resizing keeps it exact)."""
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (*shape, 3)).copy()


def write_tree(root: Path, per_class: int = 3, splits=("train", "val")) -> dict:
    """``root/<split>/<class>/<i>.{JPEG,png}``: solid-colour images of varying sizes and modes.

    Returns ``{(split, class): [colours in sorted file order]}``; PNGs are lossless, so their
    colour is exact after decoding and resizing. The first image of each class is a JPEG.
    """
    colours = {}
    for s, split in enumerate(splits):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            colours[split, name] = []
            for i in range(per_class):
                col = (40 * c + 10 * i, 200 - 30 * i, 17 * (s + 1))
                arr = solid(col, (5 + i, 9 - i))
                if i == 0:
                    Image.fromarray(arr).save(folder / f"img{i}.JPEG", quality=95)
                elif i == 1:
                    Image.fromarray(arr).quantize(4).save(folder / f"img{i}.png")  # palette, exact
                else:
                    Image.fromarray(arr).save(folder / f"img{i}.png")
                colours[split, name].append(col)
    (root / "train" / CLASSES[0] / "notes.txt").write_text("not an image")
    (root / "train" / ".DS_Store").mkdir()  # hidden entries are skipped
    return colours


@pytest.fixture
def tree(tmp_path):
    return tmp_path, write_tree(tmp_path)


def test_scan_image_folder_order_and_labels(tree):
    root, _ = tree
    paths, labels, classes = scan_image_folder(root / "train")
    assert classes == list(SORTED)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [p.parent.name for p in paths] == [SORTED[k] for k in labels.tolist()]
    assert [p.name for p in paths[:3]] == ["img0.JPEG", "img1.png", "img2.png"]


def test_load_imagenet_shapes_labels_resize(tree):
    root, colours = tree
    tr = load_imagenet(root, "train", size=6, crop=4)
    assert tr.x.shape == (9, 3, 6, 6) and tr.x.dtype == torch.uint8
    assert tr.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and tr.classes == SORTED
    assert len(tr.paths) == 9
    for k, name in enumerate(SORTED):
        for i, col in enumerate(colours["train", name]):
            img = tr.x[3 * k + i].to(torch.int64)  # [3, 6, 6]
            want = torch.tensor(col, dtype=torch.int64)[:, None, None].expand(3, 6, 6)
            tol = 3 if i == 0 else 0  # JPEG is lossy; PNG (RGB and palette) exact
            assert (img - want).abs().max() <= tol, (name, i)
    va = load_imagenet(root, "val", size=6, crop=4, dtype=torch.float64, mean=tr.mean)
    assert va.x.shape == (9, 3, 6, 6) and va.x.dtype == torch.float64
    assert float(va.x.min()) >= 0.0 and float(va.x.max()) <= 1.0
    assert va.mean.dtype == torch.float64 and va.classes == SORTED


def test_mean_image_and_subtraction(tree):
    root, _ = tree
    tr = load_imagenet(root, "train", size=6, crop=6)
    assert tr.mean.shape == (3, 6, 6) and tr.mean.dtype == torch.float32
    assert_close(tr.mean, tr.x.double().mean(0).float())
    assert load_imagenet(root, "val", size=6, crop=6).mean is None
    # crop = size: the only window is the whole image, so only flips remain
    g = torch.Generator().manual_seed(3)
    out = imagenet_train_transform(tr.x, g, 6, mean=tr.mean)
    assert out.dtype == torch.float32
    centred = tr.x.float() - tr.mean  # [9, 3, 6, 6], zero mean over the images
    assert_close(centred.double().mean(0), torch.zeros(3, 6, 6, dtype=torch.float64), atol=1e-4)
    for i in range(9):
        assert torch.equal(out[i], centred[i]) or torch.equal(out[i], centred[i].flip(-1))
    fl = load_imagenet(root, "train", size=6, crop=6, dtype=torch.float64)
    assert_close(fl.mean, tr.mean.double() / 255, rtol=1e-6, atol=1e-6)
    ev = imagenet_eval_transform(fl.x, 6, mean=fl.mean)
    assert_close(ev, fl.x - fl.mean)
    assert_close(ev.mean(0), torch.zeros(3, 6, 6, dtype=torch.float64), atol=1e-12)


def test_train_transform_crop_flip_is_seeded(tree):
    root, _ = tree
    tr = load_imagenet(root, "train", size=8, crop=5)
    # distinct pixel values so that crops and flips are visible
    x = torch.arange(9 * 3 * 8 * 8, dtype=torch.float64).reshape(9, 3, 8, 8)
    mean = torch.zeros(3, 8, 8, dtype=torch.float64)
    a = imagenet_train_transform(x, torch.Generator().manual_seed(7), 5, mean=mean)
    b = imagenet_train_transform(x, torch.Generator().manual_seed(7), 5, mean=mean)
    c = imagenet_train_transform(x, torch.Generator().manual_seed(8), 5, mean=mean)
    assert a.shape == (9, 3, 5, 5) and torch.equal(a, b) and not torch.equal(a, c)
    # every output is some 5×5 window of its image, possibly mirrored
    for i in range(9):
        views = [x[i, :, r : r + 5, s : s + 5] for r in range(4) for s in range(4)]
        assert any(torch.equal(a[i], v) or torch.equal(a[i], v.flip(-1)) for v in views)
    # it is random_crop_flip (padding 0, size 5) after subtracting the mean
    u = imagenet_train_transform(tr.x, torch.Generator().manual_seed(1), 5, mean=tr.mean)
    ref = random_crop_flip(
        tr.x.float() - tr.mean, torch.Generator().manual_seed(1), padding=0, size=5
    )
    assert torch.equal(u, ref)


def test_random_crop_flip_default_unchanged():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    a = random_crop_flip(x, torch.Generator().manual_seed(0), padding=1)
    b = random_crop_flip(x, torch.Generator().manual_seed(0), padding=1, size=4)
    assert a.shape == (2, 1, 4, 4) and torch.equal(a, b)
    with pytest.raises(InputError, match="does not fit"):
        random_crop_flip(x, torch.Generator(), padding=0, size=5)


def test_limit_per_class(tree):
    root, _ = tree
    tr = load_imagenet(root, "train", size=4, crop=4, limit_per_class=2)
    assert tr.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.name for p in tr.paths] == ["img0.JPEG", "img1.png"] * 3


def test_load_dataset_imagenet(tree):
    root, _ = tree
    assert "imagenet" in DATASETS
    ds = load_dataset("imagenet", root, dtype=torch.float64, limit_per_class=2)
    assert ds.train_x.shape == (6, 3, 256, 256) and ds.test_x.shape == (6, 3, 256, 256)
    assert ds.train_x.dtype == torch.float64 and ds.num_classes == 3
    assert ds.meta["classes"] == list(SORTED)
    # both splits class-mixed (the folders give them class by class): their first images span
    # the classes; the same fixed order on every load
    again = load_dataset("imagenet", root, limit_per_class=2)
    for y, y2 in ((ds.test_y, again.test_y), (ds.train_y, again.train_y)):
        assert y.tolist() != sorted(y.tolist()) and torch.equal(y, y2)
        assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(InputError, match="imagenet only"):
        load_dataset("digits", limit_per_class=2)
    with pytest.raises(InputError, match="float dtype"):  # pixels / 255, centred
        load_dataset("imagenet", root, dtype=torch.uint8, limit_per_class=2)


def test_missing_folder_errors(tmp_path):
    with pytest.raises(DataFileError, match=r"train: folder not found"):
        load_imagenet(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataFileError, match=r"train: no class folders"):
        load_imagenet(tmp_path, "train")


def test_empty_class_folder_error(tree):
    root, _ = tree
    (root / "train" / "n09999999").mkdir()
    (root / "train" / "n09999999" / "readme.txt").write_text("no images")
    with pytest.raises(DataFileError, match=r"n09999999: class folder 'n09999999' holds no"):
        scan_image_folder(root / "train")


def test_corrupt_image_names_file(tree):
    root, _ = tree
    bad = root / "val" / CLASSES[1] / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    with pytest.raises(DataFileError, match="broken.JPEG: cannot decode") as err:
        load_imagenet(root, "val")
    assert str(bad) in str(err.value)
    truncated = root / "train" / CLASSES[2] / "cut.JPEG"
    Image.fromarray(solid((1, 2, 3), (40, 40))).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataFileError, match="cut.JPEG"):
        load_imagenet(root, "train", size=8, crop=8)


def test_class_mismatch_and_bad_arguments(tree):
    root, _ = tree
    (root / "val" / "n09999999").mkdir()
    Image.fromarray(solid((0, 0, 0))).save(root / "val" / "n09999999" / "a.png")
    with pytest.raises(DataFileError, match="different class folders.*n09999999"):
        load_dataset("imagenet", root, limit_per_class=1)
    with pytest.raises(InputError, match="split"):
        load_imagenet(root, "test")
    with pytest.raises(InputError, match="crop"):
        load_imagenet(root, size=100, crop=224)
    with pytest.raises(InputError, match="mean"):
        load_imagenet(root, size=8, crop=8, mean=torch.zeros(3, 4, 4))


def test_palette_with_transparency_does_not_warn(tmp_path):
    # Pillow warns when a palette image with per-entry (bytes) transparency goes straight to
    # RGB; the loader goes through RGBA (filterwarnings=error turns a warning into a failure)
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    arr = solid((10, 20, 30), (4, 4))
    arr[0, 0], arr[1, 1] = (200, 0, 0), (0, 200, 0)
    Image.fromarray(arr).quantize(4).save(folder / "t.png", transparency=bytes([0, 128, 255]))
    with Image.open(folder / "t.png") as im:
        assert isinstance(im.info["transparency"], bytes)
    tr = load_imagenet(tmp_path, size=4, crop=4)
    assert tr.x.shape == (1, 3, 4, 4)
    assert tr.x[0, :, 2, 2].tolist() == [10, 20, 30]


def test_missing_pillow_is_a_clear_error(tree, monkeypatch):
    root, _ = tree
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        load_imagenet(root)


def test_training_sees_the_papers_imagenet_views(tree):
    """The paper: 256×256 images, the per-pixel mean subtracted, random 224 crops + flips.
    load_dataset subtracts the training mean image from both splits (it was computed and
    thrown away, while the run's meta said it was subtracted); the trainer's batches are
    random 224 windows with flips (augment, the preset's setting) or centred ones, and
    evaluation sees the centred window (it saw the whole 256 image)."""
    from natgrad.data import eval_view, train_view
    from natgrad.training.config import default_config
    from natgrad.training.engine import run_data

    root, _ = tree
    cfg = default_config("imagenet-15", data_dir=str(root), dtype="float64", epochs=1)
    assert cfg.augment
    ds = run_data(cfg)
    assert_close(ds.train_x.mean(0), torch.zeros(3, 256, 256), atol=1e-12, rtol=0,
                 what="training mean image after subtraction")  # fmt: skip
    raw = load_imagenet(root, "val", dtype=torch.float64,
                        mean=load_imagenet(root, "train", dtype=torch.float64).mean)  # fmt: skip
    order = torch.randperm(raw.y.shape[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(ds.test_y, raw.y[order])  # the registry's fixed class-mixed order
    train = load_imagenet(root, "train", dtype=torch.float64)
    mixed = torch.randperm(train.y.shape[0], generator=torch.Generator().manual_seed(1))
    assert torch.equal(ds.train_y, train.y[mixed])  # images and labels permuted together
    assert_close(ds.train_x, (train.x - train.mean)[mixed], what="training split, reordered")
    assert_close(
        ds.test_x, (raw.x - raw.mean)[order], what="test split centred on the training mean"
    )
    g = torch.Generator().manual_seed(0)
    views = train_view(ds.train_x, "imagenet", g, augment=True)
    assert views.shape == (ds.train_x.shape[0], 3, 224, 224)
    centred = eval_view(ds.test_x, "imagenet")
    assert torch.equal(centred, ds.test_x[:, :, 16:240, 16:240])
    assert torch.equal(train_view(ds.train_x, "imagenet", g, augment=False),
                       ds.train_x[:, :, 16:240, 16:240])  # fmt: skip
    x = torch.randn(2, 3, 32, 32)  # CIFAR: unchanged, the same draws as before
    assert torch.equal(train_view(x, "cifar10", torch.Generator().manual_seed(1), augment=True),
                       random_crop_flip(x, torch.Generator().manual_seed(1)))  # fmt: skip
    assert train_view(x, "cifar10", g, augment=False) is x and eval_view(x, "cifar10") is x


def test_evaluation_and_the_grid_use_the_imagenet_window(tree):
    """evaluate() feeds the net the centred 224 window of each 256 image; the batched grid,
    whose training steps do not crop, leaves ImageNet runs to the sequential trainer."""
    from torch import nn

    from natgrad.training.config import default_config
    from natgrad.training.engine import evaluate
    from natgrad.training.grid import grid_key

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(x.shape[0], 3, dtype=x.dtype)

    cfg = default_config("imagenet-15", epochs=1, eval_batch_size=4)
    x, y = torch.randn(6, 3, 256, 256), torch.zeros(6, dtype=torch.long)
    evaluate(Probe(), x, y, lambda out, xb, yb: nn.functional.cross_entropy(out, yb), cfg)
    assert seen == [(224, 224), (224, 224)]
    assert grid_key(default_config("mnist-fc", dataset="imagenet", epochs=1)) is None


def test_the_analysis_probes_see_the_imagenet_window(monkeypatch):
    """The unit-Fisher analysis's probes (held-out, training probe, training set) are the
    window the net is evaluated on, not the whole 256 image it never sees."""
    from natgrad.analysis import runs
    from natgrad.data import Dataset
    from natgrad.training.rundir import RunDir

    x = torch.randn(4, 3, 256, 256)
    y = torch.zeros(4, dtype=torch.long)
    ds = Dataset(name="imagenet", train_x=x, train_y=y, test_x=x, test_y=y, num_classes=2,
                 input_shape=(3, 256, 256), meta={})  # fmt: skip
    monkeypatch.setattr(runs, "_dataset", lambda run_dir: ds)
    monkeypatch.setattr(RunDir, "read_probe_indices", lambda self: torch.tensor([0, 2]))
    for split in ("test", "train", "train-all"):
        got, _ = runs.probe_set("run", 3, split=split)
        assert got.shape[-2:] == (224, 224), split
    assert runs.training_set("run")[0].shape[-2:] == (224, 224)
