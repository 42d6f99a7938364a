"""``natgrad.training.carry``: what a study's result folder keeps of its runs. The records of
finished (or diverged) runs read again as the runs did; a run saved with ``resume`` and
restored in a "later session" trains on bit for bit as if it had never stopped."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from natgrad.analysis.csvtables import write_csv
from natgrad.analysis.runs import curve_table
from natgrad.errors import DataFileError, InputError
from natgrad.training import default_config, read_checkpoint, train
from natgrad.training.carry import copy_runs, finished
from natgrad.training.plan import train_plan
from natgrad.training.rundir import RunDir


def _cfg(epochs: int, **kw):
    settings = dict(dataset="digits", unit="elu", seed=0, epochs=epochs, train_size=256,
                    probe_size=32, dtype="float64", checkpoint_every=1)  # fmt: skip
    settings.update(kw)
    return default_config("mnist-fc", **settings)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_the_records_of_finished_and_diverged_runs_travel_and_read_again(tmp_path):
    src = tmp_path / "runs"
    assert train_plan([_cfg(2), _cfg(2, unit="relu", lr=1e6)],
                      [src / "done", src / "bad"], device="cpu") != {}  # fmt: skip
    train(_cfg(2, seed=1), src / "killed", device="cpu", progress=False)
    metrics = RunDir(src / "killed").metrics_path  # killed before its last metrics row
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    write_csv(pd.DataFrame({"x": [1.0]}), RunDir(src / "done").analysis_path("t.csv"))
    assert [finished(src / n) for n in ("done", "bad", "killed", "missing")] == [
        True, True, False, False]  # fmt: skip

    dest = tmp_path / "record" / "runs"
    n = copy_runs(src, dest, finished_only=True, analysis=("t.csv", "absent.csv"))
    assert _files(dest) == ["bad/config.json", "bad/diverged.json", "bad/metrics.jsonl",
                            "done/analysis/t.csv", "done/analysis/t.csv.sha256",
                            "done/config.json", "done/metrics.jsonl"]  # fmt: skip
    assert n == 7
    pd.testing.assert_frame_equal(curve_table([dest / "done"], activations=False),
                                  curve_table([src / "done"], activations=False))  # fmt: skip


def test_a_run_saved_with_resume_continues_in_a_later_session_bit_for_bit(tmp_path):
    first = train(_cfg(1), tmp_path / "session1" / "r", device="cpu", progress=False)
    saved = tmp_path / "results" / "resume_state"
    copy_runs(first.run_dir.parent, saved, resume=True)
    assert "r/checkpoints/epoch_0001.safetensors" in _files(saved)

    later = tmp_path / "session2"  # a fresh disk: only what was saved
    copy_runs(saved, later, resume=True, replace=False)
    train(_cfg(3), later / "r", device="cpu", progress=False)
    resumed = RunDir(later / "r").read_metrics()  # epochs 0-1 are session 1's rows, timings too
    assert resumed[:2] == first.metrics and len(resumed) == 4
    whole = train(_cfg(3), tmp_path / "whole", device="cpu", progress=False)
    a, _ = read_checkpoint(later / "r", 3)
    b, _ = read_checkpoint(whole.run_dir, 3)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in b)

    copy_runs(later, saved, resume=True)  # saving again replaces the older checkpoint
    kept = [p for p in _files(saved) if "/checkpoints/" in p]
    assert kept == ["r/checkpoints/epoch_0003.json", "r/checkpoints/epoch_0003.safetensors"]
    for path in RunDir(later / "r").checkpoint_files():  # a run that lost its checkpoints
        path.unlink()
    copy_runs(later, saved, resume=True)  # does not take the saved one with it
    assert [p for p in _files(saved) if "/checkpoints/" in p] == kept


def test_a_destination_inside_the_runs_or_around_them_is_refused(tmp_path):
    run = train(_cfg(1), tmp_path / "runs" / "r", device="cpu", progress=False).run_dir
    for src, dest in ((run.parent, run.parent / "saved"), (run.parent, tmp_path),
                      (run.parent, run.parent)):  # fmt: skip
        with pytest.raises(InputError, match="one folder holds the other"):
            copy_runs(src, dest)
    with pytest.raises(InputError, match="is not below"):
        copy_runs(tmp_path / "runs", tmp_path / "elsewhere", runs=[tmp_path / "other" / "r"])
    with pytest.raises(DataFileError, match="no run directory"):
        copy_runs(tmp_path / "runs" / "r" / "checkpoints", tmp_path / "elsewhere")


def test_restoring_keeps_what_the_destination_has(tmp_path):
    run = train(_cfg(1), tmp_path / "src" / "r", device="cpu", progress=False).run_dir
    dest = tmp_path / "dest"
    (dest / "r").mkdir(parents=True)
    (dest / "r" / "metrics.jsonl").write_text("newer\n")
    n = copy_runs(run.parent, dest, replace=False)
    assert n == 1 and (dest / "r" / "metrics.jsonl").read_text() == "newer\n"
    assert (dest / "r" / "config.json").read_bytes() == RunDir(run).config_path.read_bytes()


def test_a_run_killed_before_its_last_checkpoint_is_not_finished(tmp_path):
    """A kill between the last epoch's metrics row and its checkpoint leaves every metrics
    row but no final checkpoint: the run is not finished, copy_runs(finished_only=True) does
    not carry it, and train_plan resumes it (it was taken as finished, and its last
    checkpoint never came)."""
    import dataclasses

    cfg = dataclasses.replace(default_config("mnist-fc"), dataset="digits", width=8, depth=2,
                              epochs=2, train_size=64, probe_size=16)  # fmt: skip
    run = tmp_path / "src" / "r"
    train(cfg, run, device="cpu", progress=False)
    for p in RunDir(run).checkpoint_paths(2):
        p.unlink()
    assert not finished(run)
    assert copy_runs(tmp_path / "src", tmp_path / "dest", finished_only=True, resume=True) == 0
    assert train_plan([cfg], [run], device="cpu") == {}
    assert RunDir(run).latest_epoch() == 2 and finished(run)


def test_restoring_a_later_state_over_an_earlier_copy_moves_the_whole_run(tmp_path):
    """``replace=False`` with ``resume``: a saved state further along than the copy in the
    runs folder replaces it whole, records with checkpoint (the newer checkpoint had joined
    the older records, and the resumed run's curves lost the epochs between); a copy as far
    along is kept."""
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    train(_cfg(1), run, device="cpu", progress=False)
    copy_runs(runs, tmp_path / "state1", resume=True)
    train(_cfg(3), run, device="cpu", progress=False)
    copy_runs(runs, tmp_path / "state3", resume=True)
    shutil.rmtree(runs)
    copy_runs(tmp_path / "state1", runs, resume=True)
    (run / "diverged.json").write_text('{"message": "an earlier try"}')  # dest's own, stale
    kept = run / "activations" / "epoch_0001.safetensors"  # records a copy does not carry
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(b"an activation record")
    copy_runs(tmp_path / "state3", runs, resume=True, replace=False)
    assert not (run / "diverged.json").exists() and finished(run)
    assert kept.read_bytes() == b"an activation record"  # nothing is lost
    rd = RunDir(run)
    assert rd.checkpoint_epochs() == [3]
    assert [r["epoch"] for r in rd.read_metrics()] == [0, 1, 2, 3]
    assert [r["epoch"] for r in rd.read_activation_summary()] == [0, 1, 2, 3]
    assert copy_runs(tmp_path / "state1", runs, resume=True, replace=False) == 0  # kept
    assert rd.checkpoint_epochs() == [3]


def test_a_resume_on_other_data_is_refused(tmp_path, monkeypatch):
    """A run records a fingerprint of its training data; resuming it on other data (another
    data_dir, other files under the same one) is refused, naming both fingerprints (it trained
    on, and its config.json said the new data_dir)."""
    import natgrad.data

    run = tmp_path / "r"
    train(_cfg(1), run, device="cpu", progress=False)
    real = natgrad.data.load_dataset

    def other(*args, **kw):  # the files under data_dir changed
        ds = real(*args, **kw)
        return ds.with_(train_x=ds.train_x + 0.25)

    def other_test(*args, **kw):  # the held-out splits changed: curves would mix two test sets
        ds = real(*args, **kw)
        return ds.with_(test_x=1.0 - ds.test_x)

    monkeypatch.setattr(natgrad.data, "load_dataset", other)
    with pytest.raises(
        InputError, match=r"trained or evaluated on other data \(data_sha256 \w+ → \w+;"
    ):
        train(_cfg(2), run, device="cpu", progress=False)
    monkeypatch.setattr(natgrad.data, "load_dataset", other_test)
    with pytest.raises(InputError, match=r"other data \(held_out_sha256 \w+ → \w+;"):
        train(_cfg(2), run, device="cpu", progress=False)
    monkeypatch.setattr(natgrad.data, "load_dataset", real)
    assert train(_cfg(2), run, device="cpu", progress=False).metrics[-1]["epoch"] == 2


def test_the_data_fingerprint_is_of_the_data_before_its_preprocessing():
    """A run's fingerprints identify its data, not the float noise of its preprocessing: ZCA's
    BLAS sums change with the thread count, and a gcn-zca run trained with one thread was
    refused (as other data) by a resume or an analysis with two. The preprocessing itself is a
    setting of the config, compared with it."""
    import torch

    from natgrad.training.engine import data_fingerprints, run_data

    plain = run_data(_cfg(1, preprocess="none"))
    assert plain.meta["fingerprints"] == data_fingerprints(plain)
    threads = torch.get_num_threads()
    try:
        for preprocess in ("standardise", "gcn-zca"):
            for n in (1, 2):
                torch.set_num_threads(n)
                got = run_data(_cfg(1, preprocess=preprocess)).meta["fingerprints"]
                assert got == plain.meta["fingerprints"], (preprocess, n)
    finally:
        torch.set_num_threads(threads)


def test_a_diverged_run_trained_again_is_no_longer_marked_diverged(tmp_path):
    """Resuming a run that has ``diverged.json`` (trained again by hand) drops the note, so a
    run that then finishes is not counted as diverged (finished() and the studies read it)."""
    from natgrad._atomic import write_json

    run = tmp_path / "r"
    train(_cfg(1), run, device="cpu", progress=False)
    write_json(RunDir(run).diverged_path, {"message": "diverged at epoch 2 (an earlier try)"})
    train(_cfg(2), run, device="cpu", progress=False)
    assert not RunDir(run).diverged_path.exists() and RunDir(run).read_diverged() is None
