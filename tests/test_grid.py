"""The grid trainer: R runs as one batched model equal R sequential runs, and resume.

A small grid on the real 8×8 digits, float64: 2 unit types × 2 seeds × 2 epochs, with
momentum, weight decay and a per-run learning rate, so every path of the batched SGD runs.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from natgrad.errors import InputError
from natgrad.testing import assert_close
from natgrad.training import default_config, load_activations, read_checkpoint, train
from natgrad.training.grid import grid_key, train_grid

UNITS = ("elu", "srelu", "gelu")  # gelu: a unit added to the batched forward later
SEEDS = (0, 1)
SMALL = dict(dataset="digits", epochs=2, probe_size=64, checkpoint_every=1, dtype="float64",
             momentum=0.5, weight_decay=1e-3)  # fmt: skip


def _configs(**changes):
    return [
        default_config("mnist-fc", unit=u, seed=s, lr=0.005 * (1 + s), **{**SMALL, **changes})
        for s in SEEDS
        for u in UNITS
    ]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def both(tmp_path_factory, _one_thread):
    """The same runs trained one by one and as one grid."""
    root = tmp_path_factory.mktemp("grid")
    configs = _configs()
    seq = [train(c, root / f"seq{i}", device="cpu", progress=False) for i, c in enumerate(configs)]
    grid = train_grid(configs, [root / f"grid{i}" for i in range(len(configs))], device="cpu",
                      progress=False)  # fmt: skip
    return configs, seq, grid


def _assert_runs_close(a, b, what):
    """Metrics, checkpoints (weights, momentum), activation records of two run dirs."""
    assert [m["epoch"] for m in a.metrics] == [m["epoch"] for m in b.metrics]
    for ma, mb in zip(a.metrics, b.metrics, strict=True):
        assert (ma["lr"], ma["iterations"]) == (mb["lr"], mb["iterations"]), what
        for key in ("train_loss", "test_loss", "test_error"):
            if ma[key] is None:  # the autoencoder's test error
                assert mb[key] is None, what
                continue
            assert_close(torch.tensor(mb[key]), torch.tensor(ma[key]), what=f"{what} {key}")
    for epoch in range(a.metrics[-1]["epoch"] + 1):
        ta, ia = read_checkpoint(a.run_dir, epoch)
        tb, ib = read_checkpoint(b.run_dir, epoch)
        assert sorted(ta) == sorted(tb), f"{what}: checkpoint {epoch} tensors differ in names"
        for key in ta:
            if ta[key].is_floating_point():
                assert_close(tb[key], ta[key], what=f"{what} checkpoint {epoch} {key}")
            else:  # RNG states
                assert torch.equal(tb[key], ta[key]), f"{what} checkpoint {epoch} {key}"
        same = {k for k in ia if k not in ("metrics", "safetensors_sha256", "trainer", "config")}
        assert {k: ia[k] for k in same} == {k: ib[k] for k in same}, what
        # a run first trained to fewer epochs and then resumed has the shorter config here
        assert dict(ia["config"], epochs=0) == dict(ib["config"], epochs=0), what
    for name in ("metrics.jsonl", "activations/summary.jsonl"):
        rows = [[json.loads(line) for line in (r.run_dir / name).read_text().splitlines()]
                for r in (a, b)]  # fmt: skip
        assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]], f"{what} {name}"
    summaries = [[json.loads(line) for line in (r.run_dir / "activations/summary.jsonl")
                  .read_text().splitlines()] for r in (a, b)]  # fmt: skip
    for sa, sb in zip(*summaries, strict=True):
        values = [(sa["median_all"], sb["median_all"])] + [
            (la[k], sb["layers"][layer][k])
            for layer, la in sa["layers"].items()
            for k in ("median", "mean", "frac_negative", "frac_zero", "units")
        ]
        va, vb = torch.tensor(values, dtype=torch.float64).T
        assert_close(vb, va, what=f"{what} activation summary, epoch {sa['epoch']}")
        means = [load_activations(r.run_dir, sa["epoch"]) for r in (a, b)]
        for layer, m in means[0].items():
            assert_close(means[1][layer], m, what=f"{what} {layer} means, epoch {sa['epoch']}")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for key in sa:
        if sa[key].is_floating_point():
            assert_close(sb[key], sa[key], what=f"{what} final {key}")
        else:  # batch norm's step count
            assert torch.equal(sb[key], sa[key]), f"{what} final {key}"


def test_grid_equals_sequential(both):
    configs, seq, grid = both
    for c, a, b in zip(configs, seq, grid, strict=True):
        assert b.model.unit == c.unit and b.model.build_kwargs["seed"] == c.seed
        _assert_runs_close(a, b, f"{c.unit}/s{c.seed}")
    meta = json.loads((grid[0].run_dir / "config.json").read_text())
    assert meta["trainer"] == {"name": "grid", "runs": len(configs)}


def test_grid_runs_resume_sequentially_and_in_a_grid(both, tmp_path):
    """Interrupted after epoch 1 (a half-written metrics line and an orphan activation file
    past the checkpoint): one run is resumed by the sequential trainer, the others as a
    grid; the second grid run of the interrupted runs is bit-identical to the uninterrupted
    grid, and everything equals the sequential runs."""
    configs, seq, grid = both
    dirs = [tmp_path / f"g{i}" for i in range(len(configs))]
    train_grid(_configs(epochs=1), dirs, device="cpu", progress=False)
    for d in dirs:
        with open(d / "metrics.jsonl", "a") as fh:
            fh.write('{"epoch": 2, "train_lo')
        (d / "activations" / "epoch_0002.safetensors").write_bytes(b"partial")
    (dirs[0] / "checkpoints" / "epoch_0001.json").unlink()  # run 0 restarts from epoch 0
    first = train(configs[0], dirs[0], device="cpu", progress=False)
    rest = train_grid(configs[1:], dirs[1:], device="cpu", progress=False)
    for c, a, b in zip(configs, seq, [first, *rest], strict=True):
        _assert_runs_close(a, b, f"resumed {c.unit}/s{c.seed}")
    for full, resumed in zip(grid[1:], rest, strict=True):
        for key, value in full.model.state_dict().items():
            assert torch.equal(resumed.model.state_dict()[key], value), key


def test_unbatchable_configs_train_sequentially_in_order(tmp_path):
    configs = [
        default_config("mnist-fc", unit="prelu", **{**SMALL, "epochs": 1}),
        default_config("mnist-fc", unit="elu", **{**SMALL, "epochs": 1}),
    ]
    assert grid_key(configs[0]) is None and grid_key(configs[1]) is not None
    out = train_grid(configs, [tmp_path / "a", tmp_path / "b"], device="cpu", progress=False)
    assert [r.model.unit for r in out] == ["prelu", "elu"]
    assert "trainer" not in json.loads((tmp_path / "a" / "config.json").read_text())
    assert grid_key(dataclasses.replace(configs[1], augment=True)) is None


def test_grid_refuses_shared_run_dirs(tmp_path):
    configs = _configs()[:2]
    with pytest.raises(InputError, match="both write"):
        train_grid(configs, [tmp_path / "x", tmp_path / "x"], device="cpu", progress=False)


@pytest.mark.slow
def test_autoencoder_grid_equals_sequential(tmp_path):
    """mnist-ae (nested encoder/decoder, a linear code layer, Bernoulli loss on pixels)."""
    small = {**SMALL, "epochs": 1, "checkpoint_every": 1}
    configs = [default_config("mnist-ae", unit=u, **small) for u in ("elu", "relu")]
    seq = [
        train(c, tmp_path / f"s{i}", device="cpu", progress=False) for i, c in enumerate(configs)
    ]
    grid = train_grid(configs, [tmp_path / f"g{i}" for i in range(2)], device="cpu", progress=False)
    for c, a, b in zip(configs, seq, grid, strict=True):
        assert a.metrics[-1]["test_error"] is None
        _assert_runs_close(a, b, f"mnist-ae {c.unit}")


def test_batch_norm_grid_equals_sequential(tmp_path):
    r"""Batch norm in the grid (per-run γ, β, running mean and variance, step counts): equal to
    the sequential runs in float64, checkpoints (buffers included) and records too; runs
    with and without batch norm given together train as two grids."""
    configs = _configs(batch_norm=True, epochs=1)[:3] + _configs(epochs=1)[:1]
    assert grid_key(configs[0]) != grid_key(configs[3]) is not None
    seq = [train(c, tmp_path / f"s{i}", device="cpu", progress=False)
           for i, c in enumerate(configs)]  # fmt: skip
    grid = train_grid(configs, [tmp_path / f"g{i}" for i in range(4)], device="cpu",
                      progress=False)  # fmt: skip
    for c, a, b in zip(configs, seq, grid, strict=True):
        _assert_runs_close(a, b, f"bn={c.batch_norm} {c.unit}/s{c.seed}")
    tensors, _ = read_checkpoint(grid[0].run_dir, 1)
    assert int(tensors["model.bn1.num_batches_tracked"]) == grid[0].metrics[-1]["iterations"]
    trainers = [json.loads((g.run_dir / "config.json").read_text()).get("trainer") for g in grid]
    assert trainers[:3] == [{"name": "grid", "runs": 3}] * 3, trainers  # the 4th: train()


def test_stacked_nets_refuse_what_they_cannot_batch():
    r"""PReLU (a parameter per net), different widths and per-net settings of the wrong
    length are named errors, not a wrong batched model."""
    from natgrad.models import build_model
    from natgrad.training.stacked import StackedNets, batched_plan

    def net(unit, **kw):
        return build_model("mnist-fc", unit, in_features=64, seed=0, **kw)

    assert batched_plan(net("prelu")) is None and batched_plan(net("elu")) is not None
    with pytest.raises(InputError, match="batchable architecture"):
        StackedNets([net("elu"), net("prelu")])
    with pytest.raises(InputError, match="batchable architecture"):
        StackedNets([net("elu"), net("elu", batch_norm=True)])
    with pytest.raises(InputError, match="2 values of momentum for 3 nets"):
        StackedNets([net("elu")] * 3, momentum=[0.9, 0.9])
