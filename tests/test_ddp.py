"""``natgrad train`` under ``torchrun --nproc-per-node=2`` (gloo, CPU): DistributedDataParallel
with the global batch split between the ranks equals one process with the whole batch, and
an interrupted run resumes (float64, digits, 2 epochs of 23 steps; the last batch of 29
splits 15/14)."""

from __future__ import annotations

import json

import pytest
import torch
from _torchrun import torchrun

from natgrad.testing import assert_close
from natgrad.training import default_config, read_checkpoint, train
from natgrad.training.ddp import shard_rows

SETTINGS = ["dtype=float64", "probe_size=64", "checkpoint_every=1", "momentum=0.5",
            "weight_decay=1e-3"]  # fmt: skip


def _cli(run_dir, epochs: int) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return ["-m", "natgrad", "train", "--net", "mnist-fc", "--dataset", "digits",
            "--epochs", str(epochs), "--run-dir", str(run_dir), "--no-progress",
            "--device", "cpu", "--threads", "1", *sets]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-rank run stopped after epoch 1 and resumed to epoch 2, and one process."""
    root = tmp_path_factory.mktemp("ddp")
    torchrun(*_cli(root / "ddp", 1))
    with open(root / "ddp" / "metrics.jsonl", "a") as fh:  # a line cut by the interruption
        fh.write('{"epoch": 2, "train_lo')
    proc = torchrun(*_cli(root / "ddp", 2))
    config = default_config("mnist-fc", dataset="digits", epochs=2, probe_size=64,
                            checkpoint_every=1, dtype="float64", momentum=0.5,
                            weight_decay=1e-3)  # fmt: skip
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(config, root / "one", device="cpu", progress=False)
    finally:
        torch.set_num_threads(old)
    return root / "ddp", single, proc.stdout


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_whole_batch(runs):
    ddp, single, stdout = runs
    assert stdout.count("mnist-fc/elu on digits") == 1  # rank 0 alone reports
    for epoch in (1, 2):
        a, ia = read_checkpoint(ddp, epoch)
        b, _ = read_checkpoint(single.run_dir, epoch)
        for key, value in b.items():
            if key.startswith(("model.", "optim.")):
                assert_close(a[key], value, what=f"epoch {epoch} {key}")
        assert ia["trainer"] == {"name": "ddp", "world_size": 2, "backend": "gloo"}
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # resumed: the cut line is gone
    for got, want in zip(rows, single.metrics, strict=True):
        assert got["iterations"] == want["iterations"]
        for key in ("train_loss", "test_loss", "test_error"):
            assert_close(torch.tensor(got[key]), torch.tensor(want[key]), what=key)


def test_shards_cover_the_batch_once():
    rows = torch.arange(29)
    parts = [rows[shard_rows(29, r, 2)] for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == list(range(29))
    assert [len(p) for p in parts] == [15, 14]


@pytest.mark.parametrize("change", [dict(centre=True), dict(optimizer="unit-ng", lr=1e-3)])
def test_data_parallel_training_refuses_what_each_rank_would_estimate_alone(tmp_path, change):
    """Centring and the unit natural gradient estimate from the batch; under torchrun each rank
    would do it on its own shard. ``train_ddp`` refuses them, naming the setting, before any
    process group or output exists."""
    import dataclasses

    from natgrad.errors import InputError
    from natgrad.training.ddp import train_ddp

    config = dataclasses.replace(default_config("mnist-fc", dataset="digits", epochs=1), **change)
    with pytest.raises(InputError, match="centre=true|optimizer='unit-ng'"):
        train_ddp(config, tmp_path / "r", device="cpu")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_resumed_two_rank_run_with_dropout_repeats_the_uninterrupted_one(tmp_path):
    """Rank 1's dropout stream is seeded per epoch, so a run stopped after epoch 1 and resumed
    ends bit for bit where the uninterrupted run does (it was seeded once at the start epoch:
    a resumed rank 1 drew other masks than the uninterrupted one)."""
    drop = ["--set", "dropout=0.3"]
    torchrun(*_cli(tmp_path / "whole", 2), *drop)
    torchrun(*_cli(tmp_path / "cut", 1), *drop)
    torchrun(*_cli(tmp_path / "cut", 2), *drop)
    a, _ = read_checkpoint(tmp_path / "whole", 2)
    b, _ = read_checkpoint(tmp_path / "cut", 2)
    for key, value in a.items():
        if key.startswith(("model.", "optim.")):
            assert torch.equal(value, b[key]), key


@pytest.mark.slow
def test_data_parallel_training_owns_its_run_directory_and_stops_at_a_divergence(tmp_path):
    """Under torchrun the run took no lock and made none of train's checks: it replaced the
    records of a folder natgrad did not create, trained into the current directory for
    --run-dir '' (train's check_usable now runs on every rank), and wrote checkpoints of NaN weights to the end of a diverging run, exit 0
    (a helper's hunt). Every rank now stops with train's one-line error."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "metrics.jsonl").write_text('{"mine": 1}\n')
    proc = torchrun(*_cli(foreign, 1), ok=False)
    assert proc.returncode != 0
    assert proc.stderr.count("natgrad train: error: run directory") == 2  # one line per rank
    assert "was not created by natgrad" in proc.stderr
    assert (foreign / "metrics.jsonl").read_text() == '{"mine": 1}\n'
    diverging = tmp_path / "diverging"
    proc = torchrun(*_cli(diverging, 2), "--lr", "1e6", ok=False)
    assert proc.returncode != 0 and proc.stderr.count("training diverged at epoch 1") == 2
    assert [p.name for p in (diverging / "checkpoints").glob("*.json")] == ["epoch_0000.json"]
