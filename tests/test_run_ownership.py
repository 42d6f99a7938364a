"""Issue 10, items 3, 4 and 7: one process per run directory, fresh runs never delete what
natgrad did not write, diverging training stops with a named error and strict metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natgrad import cli
from natgrad._lock import DirLock
from natgrad.errors import DivergedError, RunDirError
from natgrad.training import default_config, read_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", epochs=1, probe_size=16, checkpoint_every=1)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _strict_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    return [json.loads(s, parse_constant=refuse) for s in path.read_text().splitlines()]


def _cmd(run: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "natgrad", "train", "--net", "mnist-fc", "--dataset", "digits",
        "--epochs", "4", "--checkpoint-every", "1", "--run-dir", str(run), "--no-progress",
        "--threads", "1", "--device", "cpu", "--set", "probe_size=16", *extra,
    ]  # fmt: skip


# --- item 3: two processes, one run directory ------------------------------------------


def test_a_held_run_dir_names_the_holders_pid(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with DirLock(run, "run directory"):  # another process (another open file) holds it
        code = cli.main(["train", "--net", "mnist-fc", "--dataset", "digits", "--epochs", "1",
                         "--run-dir", str(run), "--no-progress", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"held by pid {os.getpid()}" in err and str(run) in err
    # nothing written, and the holder removed its lock file when it let go
    assert sorted(p.name for p in run.iterdir()) == []


@pytest.mark.parametrize("second_lr", ["0.01", "0.02"], ids=["same-command", "other-config"])
def test_concurrent_launch_race(tmp_path, second_lr):
    """Two `natgrad train` started together on one run dir: at most one trains; the
    metrics hold each epoch once and every checkpoint comes from one config."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            _cmd(run, "--lr", lr),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for lr in ("0.01", second_lr)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    errors = [r[2] for r in results if r[0] != 0]
    if second_lr == "0.01":  # the second waits for nothing: it fails, or resumes a done run
        assert codes in ([0, 0], [0, 2]), results
    else:
        assert codes == [0, 2], results
    for err in errors:  # one line, naming the holder's pid or the other config
        assert len(err.strip().splitlines()) == 1, err
        assert "held by pid" in err or "different config" in err, err
    rows = _strict_lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    lrs = {read_checkpoint(run, e)[1]["config"]["lr"] for e in range(5)}
    assert len(lrs) == 1


# --- item 4: a fresh run deletes nothing it did not write ------------------------------


def test_fresh_run_keeps_foreign_files_and_refuses_foreign_folders(tmp_path):
    config = default_config("mnist-fc", **TINY)
    run = tmp_path / "run"
    train(config, run, device="cpu", progress=False)
    foreign = run / "checkpoints" / "epoch_10.pt"
    foreign.write_bytes(b"another tool's checkpoint")
    notes = run / "notes.txt"
    notes.write_text("mine")
    stale = [run / "checkpoints" / f".epoch_0001.safetensors.tmp{os.getpid()}",  # natgrad 0.1's
             run / f".metrics.jsonl.{os.getpid()}.0123abcd.natgrad-tmp"]  # fmt: skip
    for p in stale:  # what a run killed before its rename left (this pid: not alive as a writer)
        p.write_bytes(b"\0" * 1000)
    result = train(config, run, device="cpu", resume=False, progress=False)
    assert not any(p.exists() for p in stale)
    assert foreign.read_bytes() == b"another tool's checkpoint" and notes.read_text() == "mine"
    assert [r["epoch"] for r in result.metrics] == [0, 1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x\n1\n")
    with pytest.raises(
        RunDirError, match=r"other is not empty \(data\.csv.*not created by natgrad"
    ):
        train(config, other, device="cpu", progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["data.csv"]


def test_empty_run_dir_argument_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--net", "mnist-fc", "--dataset", "digits", "--epochs", "1",
                     "--run-dir", "", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 2 and "--run-dir '' is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # the grid and the plan trained into the current directory for '' (a helper's hunt)
    from natgrad.training.grid import train_grid
    from natgrad.training.plan import train_plan

    config = default_config("mnist-fc", **TINY)
    other = default_config("mnist-fc", **TINY, seed=1)
    for call in (lambda: train_grid([config, other], ["", "b"], device="cpu", progress=False),
                 lambda: train_plan([config], [""], device="cpu")):  # fmt: skip
        with pytest.raises(RunDirError, match=r"--run-dir '' is empty"):
            call()
    assert list(tmp_path.iterdir()) == []


# --- item 7: divergence stops training, named; metrics are strict JSON --------------------


@pytest.mark.parametrize("deferred", [False, True], ids=["per-step", "per-epoch(GPU)"])
def test_divergence_stops_at_the_first_non_finite_loss(tmp_path, monkeypatch, deferred):
    if deferred:  # the GPU's sync-free check, exercised on the CPU
        monkeypatch.setattr("natgrad.training.engine.DEFERRED_LOSS_CHECK", ("cpu",))
    run = tmp_path / "run"
    config = default_config("mnist-fc", **dict(TINY, epochs=3), lr=0.1)  # diverges on digits
    with pytest.raises(DivergedError) as info:
        train(config, run, device="cpu", progress=False)
    msg = str(info.value)
    assert f"run {run}" in msg and "epoch 1, step" in msg and "epoch_0000.json (epoch 0)" in msg
    rows = _strict_lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0]
    tensors, _ = read_checkpoint(run)  # the last good checkpoint loads and is finite
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
