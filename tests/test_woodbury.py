"""The Woodbury route (factor rows, R×R solves) against the dense route and the reference:
float64, Linear and Conv2d, three likelihoods, damped (λ > 0 is required)."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, LAYER_CASES, layer_case_id
from torch import nn

from natgrad.errors import InputError
from natgrad.fisher import unit_fisher
from natgrad.reference import reference_natural_gradient, reference_unit_fisher
from natgrad.testing import assert_close, conditioned
from natgrad.woodbury import WoodburyAccumulator, woodbury_unit_fisher


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


@pytest.mark.parametrize("bad,why", [(0.0, "damping > 0.*rank"), (-1.0, "finite number >= 0"),
                                     (float("nan"), "finite number >= 0")])  # fmt: skip
def test_damping_required(bad, why):
    """λ = 0 is refused for the rank of VᵀV; a negative or NaN λ as not a damping at all."""
    mlp = next(c for c in CASES if c.name == "mlp-elu-categorical")
    model, x, _ = mlp.make()
    W = woodbury_unit_fisher(model, "0", x)
    with pytest.raises(InputError, match=why):
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
    with pytest.raises(InputError, match="needs rel_damping > 0"):
        W.measures(g, g0, 0.0)


@pytest.mark.parametrize("avail", [77_935, 92_681, 155_871])
def test_column_chunks_that_split_the_units_unlike_each_other_still_give_the_factor(
    monkeypatch, avail
):
    """With little memory a conv layer's output columns come in chunks of unequal size, each
    split into its own unit chunks; the factor rows were joined as if every column chunk split
    the units alike (a RuntimeError, e.g. a conv net with a 100-class head)."""
    import natgrad.memory

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ELU(), nn.Flatten(),
                        nn.Linear(6 * 16 * 16, 7)).double()  # fmt: skip
    x = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    dense = unit_fisher(net, "0", x)
    monkeypatch.setattr(natgrad.memory, "available_memory", lambda: avail)
    # the rows (1 MiB) pass this simulated budget, which would refuse them: the chunking alone
    monkeypatch.setattr(WoodburyAccumulator, "_check_size", lambda self: None)  # is under test
    assert_close(woodbury_unit_fisher(net, "0", x).matrix, dense.matrix)


def test_theorem_1_from_woodbury_rows_is_as_accurate_as_their_solve():
    """b = V_aᵀv0 lies in the rows' span, where (x − V_aᵀ(λI+G)⁻¹V_a x)/λ cancels: Theorem 1
    through solve_A(b) disagreed with the same result's full solve by 2.6e-3 at λ = 1e-8
    (κ 2e7). With the push-through forms it agrees within the conditioning."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 4), nn.ELU(), nn.Linear(4, 10)).double()
    x = (torch.rand(20, 100, dtype=torch.float64) < 0.2).double() * torch.rand(
        20, 100, dtype=torch.float64
    )
    W = woodbury_unit_fisher(net, "0", x)
    g, g0 = torch.randn(4, 100, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    lam = 1e-8
    full = W.solve(torch.cat([g, g0[:, None]], 1), lam)
    dw, dw0 = W.natural_gradient(g, g0, lam)
    M = W.matrix.double() + lam * torch.eye(101, dtype=torch.float64)
    tol = conditioned(torch.linalg.cond(M), 101)
    assert_close(torch.cat([dw, dw0[:, None]], 1), full, **tol, normwise=True)
    r = W.measures(g, g0, rel_damping=1e-6)
    assert (r["rho_natural"] <= 1 + 1e-9).all(), r["rho_natural"]


def test_units_keyed_by_a_layer_not_computed_are_refused():
    """``units={"O": …}`` (a typo for "0") computed every unit silently; as for dense blocks
    it is an error naming the computed layers."""
    from natgrad.woodbury import woodbury_unit_fishers

    net = nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    with pytest.raises(InputError, match=r"units= names layers that are not computed: \['O'\]"):
        woodbury_unit_fishers(net, x, layers=["0"], units={"O": [1, 2]})


def test_damping_of_any_number_type_and_the_relative_dampings_name():
    """numpy and 0-d tensor dampings are numbers here as in the dense route (they were
    refused as "needs damping > 0, got np.float32(0.1)"); an undamped measure names
    rel_damping, its own argument."""
    import numpy as np

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2)).double()
    W = woodbury_unit_fisher(net, "2", torch.randn(8, 3, dtype=torch.float64))
    g, g0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    want = W.natural_gradient(g, g0, 0.1)
    for lam in (np.float32(0.1), torch.tensor(0.1, dtype=torch.float64)):
        for a, b in zip(W.natural_gradient(g, g0, lam), want, strict=True):
            assert_close(a, b, rtol=1e-6)
    with pytest.raises(InputError, match="needs rel_damping > 0"):
        W.measures(g, g0, 0.0)


def test_theorem_1_of_saturated_inputs_keeps_its_digits_at_small_damping():
    """g along the dominant direction (mean δ·ã of saturated inputs) makes g0 − bᵀA⁻¹g a second
    cancellation when bᵀA⁻¹g is taken through A⁻¹g: ρ(natural) fell to 0.76 at λ = 1e-10 and
    the natural gradient was off by 6× at λ = 1e-9. (A⁻¹b)ᵀg keeps it at the dense level."""
    torch.manual_seed(0)
    d, R = 20, 15
    a = 0.7 + 1e-3 * torch.randn(R, d, dtype=torch.float64)  # saturated, nearly constant inputs
    delta = torch.rand(R, 3, dtype=torch.float64)  # three units' error signals
    at = torch.cat([a, torch.ones(R, 1, dtype=torch.float64)], 1)
    V = (delta.T.unsqueeze(-1) * at.unsqueeze(0)) / R**0.5  # [U, R, d+1]
    from natgrad.woodbury import WoodburyUnitFisher

    W = WoodburyUnitFisher(rows=V, scales=None, mean_p=a.mean(0), n=R, kind="given",
                           likelihood="given", layer="l")  # fmt: skip
    G = (delta.T.unsqueeze(-1) * at.unsqueeze(0)).mean(1)  # mean δ·ã per unit
    g, g0 = G[:, :-1], G[:, -1]
    lam = 1e-9
    F = W.matrix + lam * torch.eye(d + 1, dtype=torch.float64)
    want = torch.linalg.solve(F, G.unsqueeze(-1)).squeeze(-1)
    dw, dw0 = W.natural_gradient(g, g0, lam)
    assert_close(torch.cat([dw, dw0[:, None]], 1), want, **conditioned(torch.linalg.cond(F), d + 1),
                 normwise=True)  # fmt: skip
    assert_close(W.measures(g, g0, 1e-10)["rho_natural"], torch.ones(3), rtol=1e-4)  # κ ~ 1e10


def test_a_damping_too_small_for_the_kernel_says_so():
    """With a positive but tiny damping (1e-300) the kernel λI + VVᵀ (R = 50 > d+1) does not
    factor: the message said "(damping 0)" and asked for damping > 0, which was given (a
    helper's hunt). It now says the λ is too small and names the dense route."""
    from natgrad.errors import SingularBlockError

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ELU(), torch.nn.Linear(5, 3))
    W = woodbury_unit_fisher(net.double(), "0", torch.randn(50, 4, dtype=torch.float64))
    g, g0 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    for call in (lambda: W.natural_gradient(g, g0, damping=1e-300),
                 lambda: W.measures(g, g0, rel_damping=1e-300)):  # fmt: skip
        with pytest.raises(SingularBlockError, match=r"too small against VVᵀ") as info:
            call()
        assert "damping 0" not in str(info.value)


def test_factor_rows_beyond_the_memory_budget_are_refused(monkeypatch):
    """The rows grow with the data, and no size check saw them: a conv factor of 725 MiB was
    built under a 191 MiB budget (peak 2 GiB; a helper's hunt). The pass now refuses rows
    that, joined, would pass its budget, naming the dense route."""
    from natgrad import memory
    from natgrad.errors import MemoryBudgetError

    monkeypatch.setattr(memory, "resolve_max_memory", lambda max_memory: 2**20)  # 1 MiB
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(MemoryBudgetError, match=r"layer '0': the Woodbury factor rows.*dense"):
        woodbury_unit_fisher(model, "0", torch.randn(400, 3, 8, 8))
    woodbury_unit_fisher(model, "0", torch.randn(4, 3, 8, 8))  # small: fits


def test_factor_rows_of_several_layers_share_one_budget(monkeypatch):
    """Each layer's rows were checked against the whole pass's budget on their own, so L
    layers could hold L times it (a reviewer's find). The rows of all the pass's layers now
    count together."""
    from natgrad import memory
    from natgrad.errors import MemoryBudgetError
    from natgrad.woodbury import woodbury_unit_fishers

    monkeypatch.setattr(memory, "resolve_max_memory", lambda max_memory: 2**20)  # 1 MiB
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ELU(), nn.Conv2d(4, 4, 3), nn.ELU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2))  # fmt: skip
    x = torch.randn(180, 3, 8, 8)
    for layer in ("0", "2"):  # each alone fits, twice its rows under 1 MiB
        woodbury_unit_fisher(model, layer, x)
    with pytest.raises(MemoryBudgetError, match=r"Woodbury factor rows .* other layers'"):
        woodbury_unit_fishers(model, x, layers=["0", "2"])
