"""The tidy tables: agreement with direct unit Fisher calls, CSV round trip, summaries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from _demo_small import small_demo
from torch.nn import functional as F

from natgrad.analysis.runs import curve_table, find_runs, load_model, probe_set
from natgrad.analysis.tables import Table, read_csv, summarize, write_csv
from natgrad.analysis.unitstats import COND_LIMIT
from natgrad.fisher import unit_fisher
from natgrad.testing import COND_CONSTANT, assert_close, conditioned_rtol
from natgrad.training.rundir import RunDir


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


@pytest.mark.parametrize(("unit", "layer"), [("elu", "fc3"), ("relu", "fc5"), ("elu", "fc9")])
def test_table_agrees_with_direct_unit_fisher(demo_dir, unit, layer):
    run = demo_dir / "runs" / f"mnist-fc-{unit}-digits-s0"
    table = read_csv(demo_dir / "tables" / "units.csv").where(unit_type=unit, epoch=1, layer=layer)
    model = load_model(run, 1).to(torch.float64)
    x, y = probe_set(run)
    x = x.to(torch.float64)
    fisher = unit_fisher(model, layer, x)
    module = dict(model.named_modules())[layer]
    gw, gb = torch.autograd.grad(-F.cross_entropy(model(x), y), [module.weight, module.bias])

    assert_close(torch.from_numpy(table["c"]), fisher.c, what="c")
    assert_close(torch.from_numpy(table["mean_q_norm"]), fisher.mean_q.norm(dim=-1), what="|E_q|")
    assert_close(torch.from_numpy(table["mean_p_norm"]), fisher.mean_p.norm().expand(len(table)))
    plain = gw @ fisher.mean_p + gb
    assert_close(torch.from_numpy(table["shift_plain"]), plain, what="shift_plain")

    # Live units: the table's theorem terms are UnitFisher's on F + λI, λ from the table
    # (0 for most ELU units; the ReLU layers after dead units are all damped).
    live = torch.from_numpy(table["dead"] == 0).nonzero().flatten()
    lam = torch.from_numpy(table["damping"])[live]
    eye = torch.eye(fisher.fan_in + 1, dtype=torch.float64)
    sub = dataclasses.replace(
        fisher, matrix=fisher.matrix[live] + lam[:, None, None] * eye, units=fisher.units[live]
    )
    shift = sub.bias_shift(gw[live], gb[live])
    # Two float64 routes through solves with these blocks agree to C·κ·ε (exact κ). k and
    # the corrected mean go through Var_q(a)⁻¹, whose condition number is up to κ·s·c: on
    # the damped ReLU blocks that exceeds 1e14, so k is not determined to any digit there
    # (a 1e-14 relative change of F moves it by 1e-3). Those units are checked by the
    # residual of their solve instead.
    kappa = sub.condition_number()
    rtol = conditioned_rtol(kappa)
    for column, expected in (
        ("s", sub.s()),
        ("cosine", sub.cosine(gw[live], gb[live])),
        ("shift_natural", shift.shift_natural),
        ("shift_blockdiag", shift.shift_blockdiag),
    ):
        assert_close(torch.from_numpy(table[column])[live], expected, what=column, rtol=rtol)
    rtol_q = conditioned_rtol(kappa * sub.s() * sub.c)
    determined = rtol_q < 1e-2  # at least two digits
    assert determined.any(), "some live unit has a determined k (else this compares nothing)"
    for column, expected in (
        ("k", shift.k),
        ("corrected_mean_norm", shift.corrected_mean.norm(dim=-1)),
    ):
        got = torch.from_numpy(table[column])[live]
        assert_close(got[determined], expected[determined], what=column, rtol=rtol_q[determined])
    undamped = ((lam == 0) & determined).nonzero().flatten()  # k's closed form (Lemma 2(ii))
    und = dataclasses.replace(sub, matrix=sub.matrix[undamped], units=sub.units[undamped])
    assert_close(
        torch.from_numpy(table["k"])[live][undamped], und.k("closed"), rtol=rtol_q[undamped]
    )
    # The rest: the natural gradient solves F x = g to a backward-stable residual.
    rest = (~determined).nonzero().flatten()
    if rest.numel():
        bad = dataclasses.replace(sub, matrix=sub.matrix[rest], units=sub.units[rest])
        g = torch.cat([gw[live][rest], gb[live][rest, None]], -1)
        dw, dw0 = bad.natural_gradient(gw[live][rest], gb[live][rest])
        x_ = torch.cat([dw, dw0[:, None]], -1)
        residual = (bad.matrix @ x_.unsqueeze(-1)).squeeze(-1) - g
        scale = torch.linalg.matrix_norm(bad.matrix, 2) * x_.norm(dim=-1)
        assert (
            residual.norm(dim=-1) <= COND_CONSTANT * torch.finfo(torch.float64).eps * scale
        ).all()


def test_singular_and_dead_units_are_reported_not_hidden(demo_dir):
    units = read_csv(demo_dir / "tables" / "units.csv")
    damped = units.take(units["damping"] > 0)
    assert len(damped) > 0  # fc1 sees constant-zero border pixels of the digits
    assert (damped["cond"] > COND_LIMIT).all()
    assert np.isfinite(damped["cosine"]).all()
    dead = units.take(units["dead"] == 1)
    assert (dead["c"] == 0).all() and np.isnan(dead["cosine"]).all() and np.isnan(dead["k"]).all()
    live = units.take(units["dead"] == 0)
    assert np.isfinite(live["cosine"]).all() and (live["cosine"] > 0).all()


def test_curves_match_the_run_records(demo_dir):
    runs = find_runs(demo_dir / "runs")
    curves = curve_table(runs)
    assert len(curves) == 2 * len(runs)
    for run in runs:
        rows = RunDir(run).read_activation_summary()
        got = curves.where(run=run.name)["median_all"]
        assert got.tolist() == [r["median_all"] for r in rows]


def test_csv_round_trip_is_exact(tmp_path):
    t = Table({"a": ["x", "y"], "n": [1, 2], "v": [0.1 + 0.2, math.nan]})
    back = read_csv(write_csv(t, tmp_path / "t.csv"))
    assert back["a"].tolist() == ["x", "y"] and back["n"].dtype == np.int64
    assert back["v"][0] == 0.1 + 0.2 and math.isnan(back["v"][1])


def test_summarize_averages_runs_first_then_seeds():
    t = Table({"unit_type": ["elu"] * 4, "seed": [0, 0, 1, 1], "v": [1.0, 3.0, 6.0, math.nan]})
    s = summarize(t, by=("unit_type",), values=("v",))
    assert s["v_mean"][0] == 4.0  # run means 2 and 6
    assert s["v_sd"][0] == pytest.approx(math.sqrt(8.0))


def test_epoch_zero_is_rebuilt_exactly(demo_dir):
    """The epoch-0 net (its checkpoint, or the rebuild from config.json for older runs)
    reproduces the activations recorded before the first step and is shared by the unit types."""
    from natgrad.training import load_activations, record_activations

    runs = {u: demo_dir / "runs" / f"mnist-fc-{u}-digits-s0" for u in ("elu", "relu")}
    models = {u: load_model(r, 0) for u, r in runs.items()}
    for a, b in zip(models["elu"].parameters(), models["relu"].parameters(), strict=True):
        assert torch.equal(a, b)
    x, _ = probe_set(runs["elu"])
    recorded = load_activations(runs["elu"], 0)
    again = record_activations(models["elu"], x)["means"]
    for layer, mean in recorded.items():
        assert_close(again[layer], mean, what=layer)
