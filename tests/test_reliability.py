"""Reliability, round 2: folders natgrad replaces or writes (files, symlinks, read-only, mode),
renamed checkpoints, the optimizer's and the measures' inputs, one-line CLI errors."""

from __future__ import annotations

import dataclasses
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
        train(dataclasses.replace(cfg, epochs=3), run, progress=False)


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
        (["compare", "--ema", "2"], "--ema must be in"),  # compare's flag, not train's --set
        (["compare", "--rel-damping", "-1"], "--rel-damping must be"),
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
    assert f.read_text() == "x" and not (tmp_path / "runs").is_symlink()


# --- natgrad compare's outputs --------------------------------------------------------------


def _compare_outputs(folder):
    import numpy as np

    from natgrad.studies import compare

    config = compare.CompareConfig(seeds=3, epochs=2, last_epochs=1)
    rng = np.random.default_rng(0)
    level = dict(zip(config.arms, np.linspace(1.0, 0.2, len(config.arms)), strict=True))
    rows = [dict(seed=s, arm=a, epoch=e, train_loss=(2.0 if e == 0 else lv / e) + 0.01 * rng.random(),
                 test_loss=lv, test_error=0.1 * lv, seconds=float(e))
            for s in range(3) for a, lv in level.items() for e in range(3)]  # fmt: skip
    compare.write_outputs(pd.DataFrame(rows), config, folder, {"command": "test"})
    return config


def test_compare_outputs_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from natgrad.studies import compare

    _compare_outputs(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert "curves.csv.sha256" in before

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies half-way through the writes

    monkeypatch.setattr(compare, "_figure", killed)
    with pytest.raises(KeyboardInterrupt):
        compare.rewrite_outputs(tmp_path / "out")
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_tables_from_refuses_a_truncated_table(tmp_path, capsys):
    _compare_outputs(tmp_path)
    data = (tmp_path / "curves.csv").read_bytes()
    (tmp_path / "curves.csv").write_bytes(data[: len(data) // 2])
    _one_line_exit_2(capsys, ["compare", "--tables-from", str(tmp_path)], "checksum")
    (tmp_path / "curves.csv.sha256").unlink()  # an older output without checksums
    (tmp_path / "curves.csv").write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])
    _one_line_exit_2(capsys, ["compare", "--tables-from", str(tmp_path)], "truncated")
    lines = data.decode().splitlines()
    head = lines[0].split(",")
    cells = lines[1].split(",")
    cells[head.index("train_loss")] = "abc"  # an edited cell, with no checksum to catch it
    (tmp_path / "curves.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    _one_line_exit_2(capsys, ["compare", "--tables-from", str(tmp_path)], "not numbers")


@pytest.mark.parametrize(
    "change",
    [
        {"seeds": 10**30},
        {"epochs": -1},
        {"arms": "relu-sgd"},
        {"seeds": "3"},
        {"bogus_key": 1},
        {"lr_sgd": "abc"},
        {"rel_damping": None},
        {"only_seeds": "x"},
    ],
    ids=[
        "huge-seeds",
        "negative",
        "arms-str",
        "seeds-str",
        "unknown-key",
        "rate-str",
        "damping-null",
        "only-seeds-str",
    ],
)
def test_tables_from_validates_run_json(tmp_path, capsys, change):
    _compare_outputs(tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    record["config"].update(change)
    (tmp_path / "run.json").write_text(json.dumps(record))
    if "bogus_key" in change:  # unknown keys are ignored: the rebuild works
        assert cli.main(["compare", "--tables-from", str(tmp_path)]) == 0
        return
    _one_line_exit_2(capsys, ["compare", "--tables-from", str(tmp_path)], "run.json")


@pytest.mark.parametrize("generator", [5, "seed"])
def test_unit_fisher_names_a_wrong_generator(generator):
    net = _net()
    with pytest.raises(InputError, match="torch.Generator"):
        unit_fisher(net, net[2], torch.randn(8, 4), kind="mc", generator=generator)


def test_unit_fisher_names_a_meta_model():
    net = _net().to("meta")
    with pytest.raises(InputError, match="meta device"):
        unit_fisher(net, net[2], torch.randn(8, 4))


def test_a_one_unit_type_demo_or_report_is_refused_up_front(tmp_path, capsys):
    _one_line_exit_2(capsys, ["demo", "--units", "elu", "--out", str(tmp_path / "d")],
                     "at least two")  # fmt: skip
    assert not (tmp_path / "d").exists()
    cfg = default_config("mnist-fc", unit="elu", **dict(DIGITS, epochs=0))
    train(cfg, tmp_path / "runs" / "elu-s0", progress=False)
    _one_line_exit_2(capsys, ["tables", str(tmp_path / "runs"), "--out", str(tmp_path / "t"),
                              "--report"], "compares unit types")  # fmt: skip
    assert not (tmp_path / "t").exists()


def test_tables_at_epoch_zero_only(tmp_path):
    for unit in ("elu", "relu"):
        cfg = default_config("mnist-fc", unit=unit, **dict(DIGITS, epochs=1))
        train(cfg, tmp_path / "runs" / f"{unit}-s0", progress=False)
    assert cli.main(["tables", str(tmp_path / "runs"), "--out", str(tmp_path / "t"),
                     "--epochs", "0", "--probe-size", "20"]) == 0  # fmt: skip
    assert (tmp_path / "t" / "units.csv").is_file()


# Every numeric option of tables, compare and models against values that must be refused at
# parse time (before any data is read or any folder made): one line, exit 2, the option named.
BAD_VALUES = ["-5", "nan", "abc", "1e400", ""]
NUMERIC = {
    "tables": (["tables", ".", "--out", "never"], ["--probe-size", "--threads"]),
    "compare": (["compare", "--out", "never"],
                ["--seeds", "--epochs", "--batch-size", "--train-size", "--lr-sgd", "--lr-ng",
                 "--lr-qd", "--refresh-every", "--window", "--memory-budget", "--last-epochs",
                 "--threads"]),
    "models": (["models"], ["--num-classes"]),
}  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "option"),
    [(base, opt) for base, opts in NUMERIC.values() for opt in opts],
    ids=[f"{c}{o}" for c, (_, opts) in NUMERIC.items() for o in opts],
)
def test_numeric_options_fuzzed(tmp_path, monkeypatch, capsys, argv, option):
    monkeypatch.chdir(tmp_path)
    for value in BAD_VALUES:
        _one_line_exit_2(capsys, [*argv, option, value], option)
    assert not (tmp_path / "never").exists()


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    cfg = default_config("mnist-fc", unit="relu", **dict(DIGITS, epochs=1))
    train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / ".natgrad.lock").exists()
    train(cfg, tmp_path / "run", progress=False)  # and the next job takes it again
    assert not (tmp_path / "run" / ".natgrad.lock").exists()


def test_analysis_cache_is_not_written_through_a_symlink(tmp_path):
    from natgrad.analysis.runs import unit_table

    cfg = default_config("mnist-fc", unit="relu", **dict(DIGITS, epochs=0))
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "analysis").symlink_to(elsewhere)
    with pytest.raises(RunDirError, match="symlink"):
        unit_table([run], epochs=[0], probe_size=20)
    assert not any(elsewhere.iterdir())


@pytest.mark.parametrize("edit", ["no metrics", "future key", "no bias", "no rng"])
def test_a_checkpoint_edited_by_hand_is_refused_by_name_on_resume(tmp_path, edit):
    """A checkpoint whose JSON lost a field, whose config has a key of another version, or
    whose (hash-consistent) tensors lack a weight or a random state: resuming raises a
    CheckpointError naming the file and what to do, not a KeyError or TypeError."""
    import hashlib

    from safetensors.torch import load, save

    cfg = default_config("mnist-fc", dataset="digits", epochs=2, width=8, depth=2,
                         checkpoint_every=1, probe_size=16)  # fmt: skip
    run = train(cfg, tmp_path / "r", device="cpu", progress=False).run_dir
    st, js = run / "checkpoints" / "epoch_0002.safetensors", run / "checkpoints" / "epoch_0002.json"
    info, tensors = json.loads(js.read_text()), load(st.read_bytes())
    if edit == "no metrics":
        del info["metrics"]
    elif edit == "future key":
        info["config"]["a_future_field"] = 1
    else:
        del tensors["model.fc1.bias" if edit == "no bias" else "rng.torch"]
        blob = save(tensors)
        st.write_bytes(blob)
        info["safetensors_sha256"] = hashlib.sha256(blob).hexdigest()
    js.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="epoch_0002.json"):
        train(dataclasses.replace(cfg, epochs=3), run, device="cpu", progress=False)


def test_resuming_with_fewer_epochs_than_trained_is_refused(tmp_path):
    """A run trained to epoch 2 asked for 1 epoch: an error saying so, and its config.json
    still says 2 (it used to train nothing, exit 0, and rewrite epochs to 1)."""
    cfg = default_config("mnist-fc", dataset="digits", epochs=2, width=8, depth=2,
                         checkpoint_every=1, probe_size=16)  # fmt: skip
    run = train(cfg, tmp_path / "r", device="cpu", progress=False).run_dir
    with pytest.raises(InputError, match="already trained to epoch 2"):
        train(dataclasses.replace(cfg, epochs=1), run, device="cpu", progress=False)
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 2


def test_tables_out_holding_folders_is_refused_before_any_analysis(tmp_path, capsys, monkeypatch):
    """``--out`` pointing at a folder with subfolders (a run directory, say) is refused before
    a single unit Fisher is computed, not after the whole analysis."""
    import natgrad.analysis.summary as summary

    (tmp_path / "runs").mkdir()
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(summary, "write_tables", lambda *a, **k: pytest.fail("analysed"))
    _one_line_exit_2(capsys, ["tables", str(tmp_path / "runs"), "--out", str(out)],
                     "holds folders (checkpoints)")  # fmt: skip


@pytest.mark.parametrize("edit", ["config", "metrics"])
def test_a_run_record_edited_by_hand_is_a_named_error(tmp_path, edit):
    """``config.json`` without its net, or a ``metrics.jsonl`` row without an integer epoch:
    reading the run raises a DataFileError naming the file, not a KeyError or TypeError."""
    from natgrad.analysis.runs import curve_table

    cfg = default_config("mnist-fc", dataset="digits", epochs=1, width=8, depth=2,
                         probe_size=16)  # fmt: skip
    run = train(cfg, tmp_path / "r", device="cpu", progress=False).run_dir
    if edit == "config":
        meta = json.loads((run / "config.json").read_text())
        del meta["config"]["net"]
        (run / "config.json").write_text(json.dumps(meta))
    else:
        rows = (run / "metrics.jsonl").read_text().splitlines()
        rows[0] = json.dumps({**json.loads(rows[0]), "epoch": "0"})
        (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataFileError, match="config.json" if edit == "config" else "metrics.jsonl"):
        curve_table([run])


def test_a_resume_restores_the_metrics_from_the_checkpoints_own_history(tmp_path):
    """``metrics.jsonl`` emptied or with a row cut out before a resume: the resumed run's
    metrics hold every epoch again, from the checkpoint's history (the curves and claims
    read from them would otherwise miss epochs silently)."""
    cfg = default_config("mnist-fc", dataset="digits", epochs=2, width=8, depth=2,
                         checkpoint_every=1, probe_size=16)  # fmt: skip
    run = train(cfg, tmp_path / "r", device="cpu", progress=False).run_dir
    full = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(full[2] + "\n")  # epochs 0 and 1 lost
    train(dataclasses.replace(cfg, epochs=3), run, device="cpu", progress=False)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1, 2, 3] and rows[:3] == full
