"""``natgrad.training.plan.train_plan``, the runner of every study: stacked runs batch, a
finished run is not touched, an interrupted one resumes, a diverged one is recorded and the
others go on; the result equals training each run alone."""

from __future__ import annotations

import json

import pytest
import torch

from natgrad.testing import assert_close
from natgrad.training import default_config, read_checkpoint, train
from natgrad.training.plan import complete, train_plan
from natgrad.training.rundir import RunDir


def _cfg(unit: str, seed: int, **kw):
    settings = dict(dataset="digits", unit=unit, seed=seed, epochs=2, train_size=256,
                    probe_size=32, dtype="float64", checkpoint_every=1)  # fmt: skip
    settings.update(kw)
    return default_config("mnist-fc", **settings)


@pytest.mark.slow
def test_plan_equals_each_run_alone_and_skips_finished_runs(tmp_path):
    cfgs = [_cfg("elu", 0), _cfg("relu", 0), _cfg("relu", 1, optimizer="unit-ng", lr=1e-3)]
    dirs = [tmp_path / "plan" / f"run{i}" for i in range(len(cfgs))]
    assert train_plan(cfgs, dirs) == {}
    assert all(complete(d, 2) for d in dirs)
    for cfg, d in zip(cfgs, dirs, strict=True):
        alone = train(cfg, tmp_path / "alone" / d.name, device="cpu", progress=False)
        a, _ = read_checkpoint(d, 2)
        b, _ = read_checkpoint(alone.run_dir, 2)
        assert a.keys() == b.keys()
        for key in b:
            if b[key].is_floating_point():
                assert_close(a[key], b[key], what=f"{d.name} {key}")
            else:
                assert a[key].equal(b[key]), f"{d.name} {key}"
    before = [RunDir(d).metrics_path.stat().st_mtime_ns for d in dirs]
    assert train_plan(cfgs, dirs) == {}  # finished: nothing is trained again
    assert [RunDir(d).metrics_path.stat().st_mtime_ns for d in dirs] == before


@pytest.mark.slow
def test_a_diverged_run_is_recorded_and_the_others_finish(tmp_path):
    cfgs = [_cfg("relu", 0, lr=1e6), _cfg("elu", 0)]
    dirs = [tmp_path / "bad", tmp_path / "good"]
    said = []
    diverged = train_plan(cfgs, dirs, say=said.append)
    assert list(diverged) == ["bad"] and "bad diverged" in said[0]
    assert "message" in json.loads(RunDir(dirs[0]).diverged_path.read_text())
    assert complete(dirs[1], 2) and not complete(dirs[0], 2)
    assert train_plan(cfgs, dirs) == diverged  # recorded: not retried


def test_run_names_must_differ(tmp_path):
    with pytest.raises(ValueError, match="share a directory name"):
        train_plan([_cfg("elu", 0)] * 2, [tmp_path / "a" / "x", tmp_path / "b" / "x"])


def test_width_and_depth_build_the_net_and_split_grids(tmp_path):
    from natgrad.errors import InputError
    from natgrad.training import load_checkpoint
    from natgrad.training.grid import grid_key

    small = _cfg("elu", 0, epochs=1, width=16, depth=3)
    assert grid_key(small) != grid_key(_cfg("elu", 0, epochs=1))
    train_plan([small], [tmp_path / "small"])
    model, _ = load_checkpoint(tmp_path / "small")
    sizes = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [16, 16, 16, 10]
    with pytest.raises(InputError, match="width=16: a positive size, for mnist-fc only"):
        default_config("mnist-ae", dataset="digits", width=16)


def test_workers_share_the_cpus_out_between_them(monkeypatch):
    """Several spawned workers each get this process's CPUs divided between them (at least
    one): left at torch's default, each took every core, and two workers on two cores ran a
    centred-SGD study 40 times slower; one worker leaves the thread count as it is."""
    from natgrad.training import plan

    monkeypatch.setattr(plan, "_cpus", lambda: 4)
    assert [plan.per_worker_threads(w) for w in (1, 2, 3, 4, 8)] == [0, 2, 1, 1, 1]


def test_a_plan_trained_here_leaves_the_thread_count(tmp_path, monkeypatch):
    """With several workers but one job, the job trains in this process: the caller's torch
    thread count is left as it was (shared out only between spawned workers)."""
    from natgrad.training import plan

    monkeypatch.setattr(plan, "_cpus", lambda: 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert train_plan([_cfg("elu", 0, epochs=1)], [tmp_path / "one"], workers=2) == {}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_unit_tables_computed_here_leave_the_thread_count(tmp_path, monkeypatch):
    """The unit-statistics pool follows the same rule: with several workers but one
    (run, epoch), it computes in this process and leaves the caller's torch threads."""
    from natgrad.analysis.runs import unit_table
    from natgrad.training import plan

    run = train(_cfg("elu", 0, epochs=1), tmp_path / "run", device="cpu", progress=False).run_dir
    monkeypatch.setattr(plan, "_cpus", lambda: 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert len(unit_table([run], epochs=[1], probe_size=32, workers=2))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def _tiny(**kw):
    base = dict(unit="relu", dataset="digits", width=8, depth=2, probe_size=16, batch_size=256,
                checkpoint_every=1)  # fmt: skip
    return default_config("mnist-fc", **{**base, **kw})


def test_a_finished_run_made_with_another_config_is_refused_not_reused(tmp_path):
    """A run directory that holds a finished run of another config (here the rate and
    momentum) is an error naming the fields, for the plan and for a study's curves; a run
    resumed for more epochs is the same run."""
    from natgrad.analysis.study import Study
    from natgrad.errors import InputError

    run = tmp_path / "relu-s0"
    train_plan([_tiny(epochs=1, lr=0.01)], [run])
    with pytest.raises(InputError, match="lr, momentum"):
        train_plan([_tiny(epochs=1, lr=0.5, momentum=0.9)], [run])
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.01
    assert train_plan([_tiny(epochs=2, lr=0.01)], [run]) == {} and complete(run, 2)
    study = Study("t", ("relu",), (0,), lambda arm, seed: _tiny(epochs=2, lr=0.5))
    with pytest.raises(InputError, match="lr"):
        study.curves(tmp_path)


def test_no_resume_retrains_every_run_even_after_another_diverges(tmp_path):
    """``resume=False`` starts every run over, also those the plan reaches after a divergence
    (it retries the others from this call's checkpoints, not from older ones)."""
    a = tmp_path / "A"
    train_plan([_tiny(epochs=1)], [a])
    first = [json.loads(line)["seconds"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    bad = _tiny(epochs=2, width=9, unit="elu", lr=1e30)
    diverged = train_plan([bad, _tiny(epochs=2)], [tmp_path / "B", a], resume=False)
    assert list(diverged) == ["B"]
    again = [json.loads(line)["seconds"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert len(again) == 3 and again[1] != first[1]  # epoch 1 trained anew


def test_no_resume_leaves_a_run_in_use_untouched(tmp_path, lock_holder):
    """train_plan(resume=False) deleted a live run's checkpoints (epochs 0-729 of a running
    job, a helper's find) before the lock refused it; the deletion now happens under the
    run's own lock."""
    from natgrad.errors import RunDirError

    a = tmp_path / "A"
    train_plan([_tiny(epochs=1)], [a])
    before = sorted(p.name for p in (a / "checkpoints").iterdir())
    with lock_holder(a) as holder:
        with pytest.raises(RunDirError, match=f"in use .*held by pid {holder.pid}"):
            train_plan([_tiny(epochs=1)], [a], resume=False)
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == before
