"""Reliability, round 2: folders natgrad replaces or writes (files, symlinks, read-only, mode),
renamed checkpoints, the optimizer's and the measures' inputs, one-line CLI errors."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest
import torch

from natgrad import cli
from natgrad.analysis.summary import save_tables
from natgrad.errors import CheckpointError, DataFileError, DivergedError, InputError, RunDirError
from natgrad.fisher import unit_fisher
from natgrad.optim import UnitNaturalGradient
from natgrad.training import default_config, train
from natgrad.training.checkpoint import read_checkpoint

FRAME = {"a": pd.DataFrame({"x": [1.0, 2.0]})}


def _one_line_exit_2(capsys, argv, named):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert named in err, err


# --- output folders -----------------------------------------------------------------------


def test_tables_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(RunDirError, match="is a file"):
        save_tables(FRAME, notes)
    _one_line_exit_2(capsys, ["tables", str(tmp_path), "--out", str(notes)], "is a file")
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing moved aside


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused_and_kept(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    out.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match="read-only"):
            save_tables(FRAME, out)
        assert (out / "keep.txt").read_text() == "x"
    finally:
        out.chmod(0o755)


def test_read_only_check_names_the_folder(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(out) else real(p, m))
    with pytest.raises(RunDirError, match=f"{out}: is read-only"):
        save_tables(FRAME, out)
    assert (out / "keep.txt").read_text() == "x"


def test_output_symlink_is_refused_not_replaced(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(RunDirError, match="symlink"):
        save_tables(FRAME, link)
    assert link.is_symlink() and not any(real.iterdir())


def test_output_folder_keeps_its_mode(tmp_path):
    out = tmp_path / "private"
    out.mkdir(mode=0o700)
    out.chmod(0o700)
    save_tables(FRAME, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert (out / "a.csv").is_file()


# --- run directories ----------------------------------------------------------------------

DIGITS = dict(dataset="digits", epochs=1, probe_size=32, checkpoint_every=1)


def test_symlinked_lock_file_is_refused_and_its_target_kept(tmp_path):
    cfg = default_config("mnist-fc", unit="relu", **DIGITS)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    (run / ".natgrad.lock").unlink(missing_ok=True)
    (run / ".natgrad.lock").symlink_to(target)
    with pytest.raises(RunDirError, match="lock file .* is a symlink|symlink"):
        train(cfg, run, progress=False)
    assert target.read_text() == "precious"


@pytest.mark.parametrize("sub", ["checkpoints", "activations"])
def test_symlinked_run_subfolder_is_refused_and_its_files_kept(tmp_path, sub):
    cfg = default_config("mnist-fc", unit="relu", **DIGITS)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    elsewhere = tmp_path / "elsewhere"
    (run / sub).rename(elsewhere)
    (run / sub).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(RunDirError, match="symlink"):
        train(cfg, run, resume=False, progress=False)
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_renamed_checkpoint_is_refused(tmp_path):
    cfg = default_config("mnist-fc", unit="relu", **dict(DIGITS, epochs=1))
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    ck = run / "checkpoints"
    for suffix in (".json", ".safetensors"):
        (ck / f"epoch_0001{suffix}").rename(ck / f"epoch_0002{suffix}")
    with pytest.raises(CheckpointError, match="file name says epoch 2 but the checkpoint holds"):
        read_checkpoint(run, 2)
    with pytest.raises(CheckpointError, match="epoch 2"):
        train(dataclasses_replace(cfg, epochs=3), run, progress=False)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_deeply_nested_json_is_a_named_error(tmp_path):
    from natgrad.training.rundir import RunDir

    cfg = default_config("mnist-fc", unit="relu", **DIGITS)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    deep = "[" * 200_000 + "]" * 200_000
    (run / "checkpoints" / "epoch_0001.json").write_text(deep)
    with pytest.raises(CheckpointError, match="corrupt checkpoint JSON"):
        read_checkpoint(run, 1)
    (run / "config.json").write_text(deep)
    with pytest.raises(DataFileError, match="not valid JSON"):
        RunDir(run).read_meta()


# --- optimizer and measures ---------------------------------------------------------------


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ELU(), torch.nn.Linear(6, 3))


@pytest.mark.parametrize(
    "kw",
    [dict(lr=float("nan")), dict(lr=float("inf")), dict(lr="0.1"), dict(lr=True),
     dict(lr=0.1, momentum=float("nan")), dict(lr=0.1, weight_decay=float("inf")),
     dict(lr=0.1, momentum=1.0), dict(lr=0.1, seed=2**70), dict(lr=0.1, ema="0.9"),
     dict(lr=0.1, mc_samples=0)],
    ids=["lr-nan", "lr-inf", "lr-str", "lr-bool", "mom-nan", "wd-inf", "mom-1", "seed-huge",
         "ema-str", "mc-0"],
)  # fmt: skip
def test_optimizer_refuses_bad_hyperparameters(kw):
    with pytest.raises(InputError):
        UnitNaturalGradient(_net(), **kw)


def test_optimizer_refuses_a_schedule_that_sets_nan():
    net = _net()
    opt = UnitNaturalGradient(net, lr=0.01, layer_damping=0.3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(InputError, match="lr=nan"):
        opt.step(x)


def test_nan_gradient_stops_the_step_and_keeps_the_weights():
    net = _net()
    opt = UnitNaturalGradient(net, lr=0.01, layer_damping=0.3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    net[0].bias.grad[0] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(DivergedError, match="not finite"):
        opt.step(x)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize("method", ["cosine", "natural_gradient", "efficiency"])
def test_measures_name_a_non_finite_gradient(method):
    net = _net()
    F = unit_fisher(net, net[2], torch.randn(32, 4))
    gw, gb = torch.full((3, 6), float("nan")), torch.zeros(3)
    args = (gw, gb, "plain") if method == "efficiency" else (gw, gb)
    with pytest.raises(InputError, match="layer '2': the gradient of unit"):
        getattr(F, method)(*args)


# --- one-line CLI errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["tables", ".", "--out", "x", "--probe-size", "-5"], "--probe-size"),
        (["tables", ".", "--out", "x", "--threads", "-3"], "--threads"),
        (["tables", "/nonexistent-natgrad", "--out", "x"], "no such folder"),
        (["tables", ".", "--out", "x", "--epochs", "a,b"], "--epochs"),
        (["tables", ".", "--out", "x", "--epochs", "-1"], "--epochs"),
        (["compare", "--train-size", "-5"], "--train-size"),
        (["compare", "--arms", ""], "no arms"),
        (["compare", "--lr-sgd", "nan"], "--lr-sgd"),
        (["models", "--unit", "bogus"], "--unit"),
        (["models", "--num-classes", "-5"], "--num-classes"),
        (["train", "--net", "mnist-fc", "--threads", "0"], "--threads"),
        (["demo", "--seeds", "0"], "--seeds"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_arguments_are_one_line_exit_2(capsys, argv, named):
    _one_line_exit_2(capsys, argv, named)


def test_tables_out_is_checked_before_any_analysis(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    f = tmp_path / "f"
    f.write_text("x")
    _one_line_exit_2(capsys, ["tables", str(tmp_path / "runs"), "--out", str(f)], "is a file")
    assert json.dumps(f.read_text()) == '"x"'
