"""The memory planner: unit chunks that fit max_memory, one pass each, safetensors shards,
a lazily loading result equal to the in-memory one; errors that name bytes and fixes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from cases import CASES

from natgrad.errors import CheckpointError, InputError, MemoryBudgetError, RunDirError
from natgrad.fisher import unit_fisher
from natgrad.planner import ShardedUnitFisher
from natgrad.testing import assert_close, conditioned

CNN = next(c for c in CASES if c.name == "cnn-categorical")
MLP = next(c for c in CASES if c.name == "mlp-relu-gaussian")


def _budget_for(units_per_shard: int, d: int, per=None) -> int:
    # room = 3/4 of max_memory (tiny budgets), chunks use 80 % of it
    per = per or (d + 1) ** 2 * 8
    return int((units_per_shard * per + 1) / 0.8 / 0.75) + 1


@pytest.mark.parametrize("case,layer", [(CNN, "2"), (MLP, "0")], ids=["conv", "linear"])
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_shards_equal_the_in_memory_result(tmp_path, case, layer, kind):
    model, x, y = case.make()
    kw = dict(kind=kind, likelihood=case.likelihood)
    dense = unit_fisher(model, layer, x, y, **kw)
    budget = _budget_for(2, dense.fan_in)
    S = unit_fisher(model, layer, x, y, out_dir=tmp_path, max_memory=budget, **kw)
    assert isinstance(S, ShardedUnitFisher)
    assert len(S) == -(-dense.num_units // 2) and len(S) > 1
    assert_close(S.matrix, dense.matrix)
    assert_close(S.mean_p, dense.mean_p)
    assert torch.equal(S.units, dense.units)
    lam = 1e-2 * float(dense.c.mean())
    tol = conditioned(dense.condition_number(lam), dense.fan_in + 1)
    g, g0 = torch.randn(dense.num_units, dense.fan_in), torch.randn(dense.num_units)
    for a, b in zip(
        S.natural_gradient(g, g0, lam), dense.natural_gradient(g, g0, lam), strict=True
    ):
        assert_close(a, b, **tol)
    assert_close(S.s("schur", lam), dense.s("schur", lam), **tol)
    assert_close(S.k("closed", lam), dense.k("closed", lam), **tol)
    assert_close(
        S.bias_shift(g, g0, lam).shift_natural,
        dense.bias_shift(g, g0, lam).shift_natural,
        **tol,
    )
    assert_close(S.c, dense.c)
    # the measures every result type offers (UnitFisherLike), shard by shard
    mtol = conditioned(dense.condition_number(1e-3), dense.fan_in + 1)
    for kind in ("plain", "natural"):
        assert_close(S.efficiency(g, g0, kind, 1e-3), dense.efficiency(g, g0, kind, 1e-3), **mtol)
        assert_close(S.bias_shift_error(g, g0, kind, 1e-3),
                     dense.bias_shift_error(g, g0, kind, 1e-3), **mtol)  # fmt: skip
        for a, b in zip(S.direction(g, g0, kind, 1e-3), dense.direction(g, g0, kind, 1e-3),
                        strict=True):  # fmt: skip
            assert_close(a, b, **mtol, normwise=True)
    assert_close(S.efficiency(g, g0, (g, g0), 1e-3), dense.efficiency(g, g0, (g, g0), 1e-3), **mtol)
    again = ShardedUnitFisher.load(tmp_path)
    assert_close(again.matrix, dense.matrix)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["layer"] == layer and index["n"] == case.n and index["structure"] == "dense"


def test_structured_shards_and_units(tmp_path):
    model, x, _ = CNN.make()
    Q = unit_fisher(model, "2", x, structure="quasidiagonal", units=[3, 0, 2])
    S = unit_fisher(
        model,
        "2",
        x,
        structure="quasidiagonal",
        units=[3, 0, 2],
        out_dir=tmp_path,
        max_memory=_budget_for(1, 27, per=(2 * 27 + 1) * 8),
    )
    assert len(S) == 3 and torch.equal(S.units, torch.tensor([3, 0, 2]))
    assert_close(torch.cat([F.diagonal for F in S]), Q.diagonal)
    assert_close(S.mean_q, Q.mean_q)
    gw, gb = torch.randn(4, 3, 3, 3), torch.randn(4)  # the whole layer's gradients
    lam = float(Q.bias_column.norm(dim=-1).max())
    for a, b in zip(S.natural_gradient(gw, gb, lam), Q.natural_gradient(gw, gb, lam), strict=True):
        assert_close(a, b)
    assert_close(S.matrix, Q.matrix)  # the structure's metric, materialised (it refused)
    # the measures of a unit subset, gradients and an update given as whole-layer rows
    uw, u0 = 2 * gw - 1, gb + 1
    assert_close(S.efficiency(gw, gb, (uw, u0), 1e-3), Q.efficiency(gw, gb, (uw, u0), 1e-3))
    assert_close(S.bias_shift_error(gw, gb, "diagonal", 1e-3),
                 Q.bias_shift_error(gw, gb, "diagonal", 1e-3))  # fmt: skip
    with pytest.raises(InputError, match="a kind name or a pair"):
        S.efficiency(gw, gb, uw, 1e-3)


def test_one_shot_iterator_refused(tmp_path):
    model, x, _ = CNN.make()
    batches = iter([x[:8], x[8:]])
    with pytest.raises(InputError, match="one-shot iterator"):
        unit_fisher(model, "2", batches, out_dir=tmp_path, max_memory=_budget_for(2, 27))


def test_not_one_unit_fits(tmp_path):
    model, x, _ = CNN.make()
    with pytest.raises(
        MemoryBudgetError, match=r"not even one unit fits.*structure='quasidiagonal'"
    ):
        unit_fisher(model, "2", x, out_dir=tmp_path, max_memory=2000)


def test_broken_folder_is_named(tmp_path):
    model, x, _ = MLP.make()
    S = unit_fisher(
        model, "0", x, likelihood="gaussian", out_dir=tmp_path, max_memory=_budget_for(3, 5)
    )
    (tmp_path / S.shards[0]["file"]).unlink()
    with pytest.raises(CheckpointError, match="shards missing"):
        ShardedUnitFisher.load(tmp_path)
    with pytest.raises(CheckpointError, match="index"):
        ShardedUnitFisher.load(tmp_path / "nowhere")


def _sharded(out_dir, model=None, layer="0"):
    model = model or torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                         torch.nn.Linear(4, 2))  # fmt: skip
    x = torch.randn(6, 3)
    return unit_fisher(model, layer, x, out_dir=out_dir, max_memory=_budget_for(2, 3))


def test_a_foreign_index_or_file_is_refused_not_overwritten(tmp_path):
    from natgrad.errors import RunDirError

    (tmp_path / "index.json").write_text('{"mine": true}')
    with pytest.raises(RunDirError, match="did not write"):
        _sharded(tmp_path)
    assert (tmp_path / "index.json").read_text() == '{"mine": true}'
    other = tmp_path / "b"
    other.mkdir()
    shard_name = other / "0.units_000000-000001.safetensors"
    shard_name.write_bytes(b"user data")
    with pytest.raises(RunDirError, match="did not write"):
        _sharded(other)
    assert shard_name.read_bytes() == b"user data"
    S = _sharded(tmp_path / "c")  # a folder of its own is rewritten freely, also a second time
    assert len(S) == 2 and len(_sharded(tmp_path / "c")) == 2


def test_shards_stay_inside_out_dir_whatever_the_layer_name(tmp_path, monkeypatch):
    from natgrad.errors import RunDirError

    outside = tmp_path / "outside"
    model = torch.nn.Sequential()
    model.add_module(str(outside), torch.nn.Linear(3, 4))  # a layer named by an absolute path
    model.add_module("act", torch.nn.Tanh())
    model.add_module("out", torch.nn.Linear(4, 2))
    S = _sharded(tmp_path / "d", model, layer=str(outside))
    assert not outside.exists() and len(S) == 2
    assert all("/" not in s["file"] for s in S.shards)
    assert {p.parent for p in (tmp_path / "d").iterdir()} == {tmp_path / "d"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="out_dir"):
        _sharded("")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "d")
    with pytest.raises(RunDirError, match="symlink"):
        _sharded(link)


@pytest.mark.parametrize("bad", [{"file": "/etc/passwd", "units": [0]},
                                 {"file": "../x.units_000000-000001.safetensors", "units": [0]},
                                 {"file": "0.units_000000-000001.safetensors", "units": [-1]},
                                 {"file": "0.units_000000-000001.safetensors", "units": []}],
                         ids=["absolute", "parent", "negative", "empty"])  # fmt: skip
def test_an_index_naming_paths_elsewhere_is_refused(tmp_path, bad):
    S = _sharded(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    index["shards"][0] = bad
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="invalid shard index"):
        ShardedUnitFisher.load(tmp_path)
    index["shards"] = S.shards
    index["n"] = -3
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="n"):
        ShardedUnitFisher.load(tmp_path)
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "index.json").write_text(deep)
    with pytest.raises(CheckpointError, match="no readable"):
        ShardedUnitFisher.load(tmp_path)


def test_every_result_type_is_a_unit_fisher_like(tmp_path):
    r"""The four result types declare one protocol (``natgrad.unitfisher.UnitFisherLike``),
    and the methods written once (cosine, n_eff, unit_grads) agree across them where their
    metrics coincide: dense blocks, their sharded copy, and Woodbury rows of the same data."""
    from natgrad import woodbury_unit_fisher
    from natgrad.structures import StructuredUnitFisher
    from natgrad.unitfisher import UnitFisherLike

    model, x, y = MLP.make()
    dense = unit_fisher(model, "0", x, y, kind="empirical", likelihood=MLP.likelihood)
    sharded = unit_fisher(model, "0", x, y, kind="empirical", likelihood=MLP.likelihood,
                          out_dir=tmp_path, max_memory=_budget_for(2, dense.fan_in))  # fmt: skip
    rows = woodbury_unit_fisher(model, "0", x, y, kind="empirical", likelihood=MLP.likelihood)
    quasi = StructuredUnitFisher.from_dense(dense, dense.mean_p, "quasidiagonal")
    for F in (dense, sharded, rows, quasi):
        assert isinstance(F, UnitFisherLike), type(F).__name__
    g = torch.randn(dense.num_units, dense.fan_in, dtype=dense.matrix.dtype)
    g0 = torch.randn(dense.num_units, dtype=dense.matrix.dtype)
    lam = 1e-2 * float(dense.c.mean())
    want = dense.cosine(g, g0, lam)
    for F in (sharded, rows):
        assert_close(F.cosine(g, g0, lam), want, rtol=1e-6, what=type(F).__name__)
    assert_close(rows.n_eff, dense.n_eff, what="n_eff")
    assert repr(rows).startswith("WoodburyUnitFisher(layer='0', kind='empirical'")
    assert "structure='quasidiagonal'" in repr(quasi)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_rewriting_a_folder_with_other_settings_removes_the_old_shards(tmp_path):
    """A folder rewritten with other settings (other chunks) holds the new index and only its
    shards once written: the old index's shards are natgrad's and go, so a third call (the same
    settings, or another layer into the same folder) is not refused as 'foreign files'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = torch.randn(6, 3)
    dense = unit_fisher(model, "0", x)
    two = unit_fisher(model, "0", x, out_dir=tmp_path, max_memory=_budget_for(2, 3))
    assert len(two) == 2
    one = unit_fisher(model, "0", x, out_dir=tmp_path, max_memory=10**6)
    assert len(one) == 1
    assert _files(tmp_path) == sorted(["index.json", one.shards[0]["file"]])
    again = unit_fisher(model, "0", x, out_dir=tmp_path, max_memory=10**6)
    assert_close(again.matrix, dense.matrix)
    other = unit_fisher(model, "2", x, out_dir=tmp_path)  # another layer into the same folder
    assert _files(tmp_path) == sorted(["index.json", other.shards[0]["file"]])
    assert_close(unit_fisher(model, "2", x, out_dir=tmp_path).matrix, other.matrix)


def test_an_interrupted_run_is_rerun_with_the_same_or_other_arguments(tmp_path, monkeypatch):
    """A run killed after its first shard leaves that shard and no index; the shard is the
    planner's own (its pattern for this layer, its metadata), so a rerun overwrites it, and one
    with other chunks removes it once the new index is written. A file of the same name that
    the planner did not write (test above) and another layer's leftovers stay refused."""
    import natgrad.planner as planner
    from natgrad.errors import RunDirError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = torch.randn(6, 3)
    dense = unit_fisher(model, "0", x)
    compute, calls = planner.compute, []

    def killed_on_second_pass(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return compute(*args, **kwargs)

    def interrupted(folder):
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(planner, "compute", killed_on_second_pass)
            with pytest.raises(KeyboardInterrupt):
                unit_fisher(model, "0", x, out_dir=folder, max_memory=_budget_for(2, 3))
        assert _files(folder) == ["0.units_000000-000001.safetensors"]

    interrupted(tmp_path / "same")
    S = unit_fisher(model, "0", x, out_dir=tmp_path / "same", max_memory=_budget_for(2, 3))
    assert len(S) == 2 and _files(tmp_path / "same") == sorted(
        ["index.json", *(s["file"] for s in S.shards)]
    )
    assert_close(S.matrix, dense.matrix)
    interrupted(tmp_path / "other")
    S = unit_fisher(model, "0", x, out_dir=tmp_path / "other", max_memory=10**6)
    assert _files(tmp_path / "other") == ["0.units_000000-000003.safetensors", "index.json"]
    assert_close(S.matrix, dense.matrix)
    interrupted(tmp_path / "layer")
    with pytest.raises(RunDirError, match="did not write"):  # layer "2" does not own it
        unit_fisher(model, "2", x, out_dir=tmp_path / "layer")


def test_a_layer_of_a_million_units_names_shards_the_loader_reads(tmp_path):
    """Unit ranges past six digits (a layer of >= 10**6 units) are valid shard names."""
    U = 1_000_010
    model = torch.nn.Sequential(torch.nn.Linear(1, U), torch.nn.Tanh(), torch.nn.Linear(U, 1))
    x, units = torch.randn(2, 1), [999_998, 999_999, 1_000_000, 1_000_009]
    kw = dict(likelihood="gaussian", structure="diagonal", units=units)
    want = unit_fisher(model, "0", x, **kw)
    per = 2 * model[0].weight.element_size()  # one unit's diagonal at fan_in 1: [w, bias]
    S = unit_fisher(model, "0", x, out_dir=tmp_path, max_memory=_budget_for(2, 1, per), **kw)
    assert [s["file"] for s in S.shards] == [
        "0.units_999998-999999.safetensors",
        "0.units_1000000-1000009.safetensors",
    ]
    again = ShardedUnitFisher.load(tmp_path)
    assert again.units.tolist() == units
    assert_close(torch.cat([F.diagonal for F in again]), want.diagonal)


@pytest.mark.parametrize(
    "change",
    [*({k: None} for k in ("layer", "structure", "kind", "likelihood", "dtype", "mc_samples")),
     {"dtype": "nonsense"}, {"dtype": "int64"}, {"structure": "bogus"}, {"kind": "given"}, {"mc_samples": 0},
     {"layer": 3}, {"likelihood": "poisson"}],
    ids=lambda c: next(f"{k}={v}" if v is not None else f"no-{k}" for k, v in c.items()),
)  # fmt: skip
def test_an_index_missing_or_garbling_a_field_is_refused_by_name(tmp_path, change):
    """Every field the loader reads is checked: a CheckpointError naming the index, the field
    and the way out (recompute), never a bare KeyError or AttributeError."""
    _sharded(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    (key, value), = change.items()  # fmt: skip
    if value is None:
        del index[key]
    else:
        index[key] = value
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"index\.json: invalid.*{key}.*recompute"):
        ShardedUnitFisher.load(tmp_path)


def test_an_index_disagreeing_with_its_shards_is_refused(tmp_path):
    """Units listed twice, or an index entry whose units (or fan_in) differ from what the shard
    file holds, would pair gradient rows with other units' blocks: refused by name."""
    S = _sharded(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    first, second = index["shards"]

    def load(**changes):
        (tmp_path / "index.json").write_text(json.dumps(index | changes))
        return ShardedUnitFisher.load(tmp_path)

    with pytest.raises(CheckpointError, match="more than one shard"):
        load(shards=[first, first])
    with pytest.raises(CheckpointError, match=r"more than one shard"):
        load(shards=[first, dict(second, units=[1, 2])])
    swapped = load(shards=[dict(first, units=second["units"]), dict(second, units=first["units"])])
    g, g0 = torch.randn(4, 3), torch.randn(4)
    with pytest.raises(
        CheckpointError, match=r"units_000000-000001.*holds units \[0, 1\].*\[2, 3\]"
    ):
        swapped.natural_gradient(g, g0, 0.1)
    wrong = load(shards=[dict(first, units=[7, 8]), second])
    with pytest.raises(CheckpointError, match="holds units"):
        list(wrong)
    with pytest.raises(CheckpointError, match="fan_in 3.*says 99"):
        _ = load(fan_in=99).matrix
    assert_close(load().matrix, S.matrix)


def test_a_killed_shard_write_leaves_temporaries_a_rerun_removes(tmp_path):
    """A kill -9 during a shard write leaves safetensors' own temporary (.tmpXXXXXX, its
    save_file writes through one) beside natgrad's: every rerun was refused as a folder
    holding files the planner did not write (a helper's hunt). They are the planner's now,
    and removed once the new index is in."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = torch.randn(6, 3)
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / ".tmpZUfKqe").write_bytes(b"torn")
    dead = ".0.units_000000-000001.safetensors.999999999.ab12cd34.natgrad-tmp"
    (folder / dead).write_bytes(b"")
    S = unit_fisher(model, "0", x, out_dir=folder, max_memory=_budget_for(2, 3))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["index.json", *(s["file"] for s in S.shards)]
    )
    assert_close(S.matrix, unit_fisher(model, "0", x).matrix)


def test_a_folder_a_live_process_writes_into_is_refused_and_kept(tmp_path):
    """Every natgrad temporary was adopted and deleted, a live writer's too (and with it the
    safetensors temporary it was writing through): two planners on one out_dir removed each
    other's files. A live writer's temporary now refuses the folder, naming the process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    folder = tmp_path / "shards"
    folder.mkdir()
    live = f".0.units_000000-000001.safetensors.{os.getppid()}.ab12cd34.natgrad-tmp"
    for name in (live, ".tmpZUfKqe"):
        (folder / name).write_bytes(b"half")
    with pytest.raises(RunDirError, match=rf"process {os.getppid()} is writing into it"):
        unit_fisher(model, "0", torch.randn(6, 3), out_dir=folder, max_memory=_budget_for(2, 3))
    assert sorted(p.name for p in folder.iterdir()) == sorted([live, ".tmpZUfKqe"])


def test_a_planner_holds_its_folder_for_the_whole_run(tmp_path, monkeypatch):
    """A temporary exists only while a shard is written: between writes a second planner
    was let in, took the first one's shards for leftovers and overwrote them, and the first
    returned another run's blocks (0.57 relative error; a reviewer's find). A planner now
    holds a marker for its whole run; a pid no process can have is a dead writer's."""
    from natgrad import planner

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x, folder = torch.randn(6, 3), tmp_path / "shards"
    seen = []
    real = planner.compute

    def spy(*args, **kwargs):  # what another process sees in the folder between writes
        seen.append(sorted(p.name for p in folder.iterdir()))
        return real(*args, **kwargs)

    claimed = planner._claimed

    def claim_spy(*args):  # the marker is there before the folder is read
        seen.append(sorted(p.name for p in folder.iterdir()))
        return claimed(*args)

    monkeypatch.setattr(planner, "compute", spy)
    monkeypatch.setattr(planner, "_claimed", claim_spy)
    unit_fisher(model, "0", x, out_dir=folder, max_memory=_budget_for(2, 3))
    assert len(seen) > 2 and all(any(n.startswith(".index.json.") for n in ns) for ns in seen)
    assert not any(n.startswith(".index.json.") for n in (p.name for p in folder.iterdir()))
    (folder / ".index.json.99999999999999999999.ab12cd34.natgrad-tmp").write_bytes(b"")
    unit_fisher(model, "0", x, out_dir=folder, max_memory=_budget_for(2, 3))  # adopted


def test_mc_shards_without_a_generator_share_one_label_draw(tmp_path):
    """Without generator= each chunk's pass drew its own labels from the global RNG, so units
    of different shards had different labels (6-51 % off one pass; a helper's hunt). The
    planner now seeds one generator from the global RNG and replays it for every chunk."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model = model.double()
    x = torch.randn(40, 3, dtype=torch.float64)
    torch.manual_seed(1)
    S = unit_fisher(model, "0", x, kind="mc", out_dir=tmp_path / "s", max_memory=_budget_for(2, 3))
    assert len(S) > 1
    torch.manual_seed(1)
    seed = int(torch.randint(2**62, (1,)))  # what the planner drew
    one = unit_fisher(model, "0", x, kind="mc", generator=torch.Generator().manual_seed(seed))
    assert_close(S.matrix, one.matrix)


def test_a_half_precision_model_is_planned_at_its_blocks_float32_size(tmp_path):
    """A bfloat16 model's blocks are float32: the planner budgeted 2 bytes an entry (shards
    twice max_memory) and its index said bfloat16 (a helper's hunt)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model = model.to(torch.bfloat16)
    x = torch.randn(40, 3, dtype=torch.bfloat16)
    S = unit_fisher(model, "0", x, out_dir=tmp_path / "s", max_memory=_budget_for(2, 3, per=16 * 4))
    assert json.loads((tmp_path / "s" / "index.json").read_text())["dtype"] == "float32"
    assert max(len(s["units"]) for s in S.shards) == 2 and S.matrix.dtype == torch.float32
