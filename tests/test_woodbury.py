"""The Woodbury route (factor rows, R×R solves) against the dense route and the reference:
float64, Linear and Conv2d, three likelihoods, damped (λ > 0 is required)."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, LAYER_CASES, layer_case_id

from natgrad.errors import InputError
from natgrad.fisher import unit_fisher
from natgrad.reference import reference_natural_gradient, reference_unit_fisher
from natgrad.testing import assert_close, conditioned
from natgrad.woodbury import woodbury_unit_fisher


def _damping(F) -> float:
    return 1e-2 * float(torch.diagonal(F.matrix, dim1=-2, dim2=-1).mean())


@pytest.mark.parametrize("case_layer", LAYER_CASES, ids=layer_case_id)
def test_woodbury_matches_dense_and_reference(case_layer):
    case, layer = case_layer
    model, x, y = case.make()
    for kind in ("exact", "empirical"):
        kw = dict(kind=kind, likelihood=case.likelihood)
        W = woodbury_unit_fisher(model, layer, x, y, **kw)
        dense = unit_fisher(model, layer, x, y, **kw)
        assert_close(W.matrix, dense.matrix, what=f"{layer} {kind} VᵀV")
        lam = _damping(dense)
        tol = conditioned(dense.condition_number(lam), dense.fan_in + 1)
        torch.manual_seed(2)
        g, g0 = torch.randn(W.num_units, W.fan_in), torch.randn(W.num_units)
        got = W.natural_gradient(g, g0, lam)
        for a, b in zip(got, dense.natural_gradient(g, g0, lam), strict=True):
            assert_close(a, b, what=f"{layer} {kind} natural gradient", **tol)
        ref = reference_unit_fisher(model, layer, x, y, **kw).matrix
        eye = torch.eye(ref.shape[-1])
        want = reference_natural_gradient(ref + lam * eye, torch.cat([g, g0[:, None]], -1))
        assert_close(torch.cat([got[0], got[1][:, None]], -1), want, **tol)
        for form in ("schur", "paper"):
            assert_close(W.s(form, lam), dense.s(form, lam), what=f"s {form}", **tol)
        for form in ("closed", "paper"):
            assert_close(W.k(form, lam), dense.k(form, lam), what=f"k {form}", **tol)
        a, b = W.bias_shift(g, g0, lam), dense.bias_shift(g, g0, lam)
        for f in ("shift_natural", "shift_blockdiag", "shift_plain", "k", "corrected_mean"):
            assert_close(getattr(a, f), getattr(b, f), what=f"{layer} {f}", **tol)
        assert_close(W.cosine(g, g0, lam), dense.cosine(g, g0, lam), **tol)


def test_rank_is_n_for_linear_and_nk_for_conv():
    mlp = next(c for c in CASES if c.name == "mlp-elu-categorical")
    model, x, _ = mlp.make()
    W = woodbury_unit_fisher(model, "0", x)
    assert (W.rank, W.scales.shape) == (mlp.n, (8, mlp.n))  # rows shared, scaled per unit
    cnn = next(c for c in CASES if c.name == "cnn-categorical")
    model, x, _ = cnn.make()
    W = woodbury_unit_fisher(model, "2", x, batch_size=5)  # streaming: rows concatenated
    assert W.rank == cnn.n * 4 and W.scales is None  # N·K rows, K = 4 classes
    assert_close(W.matrix, unit_fisher(model, "2", x).matrix)
    P = woodbury_unit_fisher(model, "2", x, conv_moments="positions", units=[2, 0])
    assert P.rank == cnn.n * 9  # N·P rows
    assert_close(
        P.matrix, unit_fisher(model, "2", x, conv_moments="positions", units=[2, 0]).matrix
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_damping_required(bad):
    mlp = next(c for c in CASES if c.name == "mlp-elu-categorical")
    model, x, _ = mlp.make()
    W = woodbury_unit_fisher(model, "0", x)
    with pytest.raises(InputError, match="damping > 0.*rank"):
        W.natural_gradient(torch.zeros(8, 5), torch.zeros(8), bad)


@pytest.mark.parametrize("case_layer", LAYER_CASES[::2], ids=layer_case_id)
def test_woodbury_measures_equal_the_dense_blocks(case_layer):
    """Woodbury rows now give natgrad.measures themselves (SolvedUnitFisher, over R×R
    kernels with each unit's μ): every direction, ρ, shift and shift error equal the dense
    blocks' measures at the same relative damping, within the conditioning tolerance."""
    case, layer = case_layer
    model, x, y = case.make()
    W = woodbury_unit_fisher(model, layer, x, y, likelihood=case.likelihood)
    dense = unit_fisher(model, layer, x, y, likelihood=case.likelihood)
    rel = 1e-2
    torch.manual_seed(5)
    g, g0 = torch.randn(W.num_units, W.fan_in), torch.randn(W.num_units)
    live = dense.c > 0  # a dead unit (zero block) has no metric: NaN in both, flagged
    tol = conditioned(dense.condition_number(rel_damping=rel)[live], dense.fan_in + 1)
    got, want = W.measures(g, g0, rel), dense.measures(g, g0, rel)
    assert_close(got["dead"], want["dead"])
    for key in want:
        if key in got:
            assert_close(got[key][live], want[key][live], what=f"{layer} {key}", **tol)
    assert {f"rho_{k}" for k in ("plain", "centred", "quasidiagonal", "blockdiag")} <= set(got)
    for kind in ("quasidiagonal", "natural") if bool(live.all()) else ():  # dense: dead raise
        # a unit's direction (weights, bias) is a solution: its error is bounded normwise
        a, b = (
            torch.cat([w, w0[:, None]], -1)
            for w, w0 in (W.direction(g, g0, kind, rel), dense.direction(g, g0, kind, rel))
        )
        assert_close(a[live], b[live], what=f"{layer} {kind}", normwise=True, **tol)
        assert_close(W.efficiency(g, g0, kind, rel)[live], dense.efficiency(g, g0, kind, rel)[live],
                     **tol)  # fmt: skip
    with pytest.raises(InputError, match="needs damping > 0"):
        W.measures(g, g0, 0.0)
