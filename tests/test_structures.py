"""Structured unit Fishers (quasi-diagonal, diagonal) and the two conv q-moment definitions,
against the dense route, natgrad.reference and a per-sample, per-position autograd loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cases import CASES, LAYER_CASES, layer_case_id
from torch.nn import functional as F

from natgrad import UnitFisher
from natgrad.errors import InputError, StructureError
from natgrad.fisher import unit_fisher, unit_fishers
from natgrad.measures import quasidiagonal_solve
from natgrad.reference import _patches, reference_unit_fisher
from natgrad.structures import StructuredUnitFisher
from natgrad.testing import assert_close, conditioned

MOMENTS = ("shared", "positions")
CONV_CASES = [c for c in CASES if c.name.startswith("cnn")]


def _diag(m: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(m, dim1=-2, dim2=-1)


@pytest.mark.parametrize("case_layer", LAYER_CASES, ids=layer_case_id)
def test_structures_are_the_dense_blocks_entries(case_layer):
    case, layer = case_layer
    model, x, y = case.make()
    for kind in ("exact", "empirical"):
        kw = dict(kind=kind, likelihood=case.likelihood)
        ref = reference_unit_fisher(model, layer, x, y, **kw)
        for moments in MOMENTS:
            dense = unit_fisher(model, layer, x, y, conv_moments=moments, **kw)
            Q = unit_fisher(
                model, layer, x, y, structure="quasidiagonal", conv_moments=moments, **kw
            )
            D = unit_fisher(model, layer, x, y, structure="diagonal", conv_moments=moments, **kw)
            assert (Q.structure, D.structure, dense.structure) == (
                "quasidiagonal",
                "diagonal",
                "dense",
            )
            assert_close(Q.diagonal, _diag(dense.matrix), what=f"{layer} {moments} diag")
            assert_close(Q.bias_column, dense.b, what=f"{layer} {moments} b")
            assert_close(D.diagonal, Q.diagonal, what=f"{layer} {moments} diagonal")
            assert_close(Q.mean_p, dense.mean_p)
            assert D.bias_column is None
        ref_q = StructuredUnitFisher.from_dense(ref, ref.mean_p, "quasidiagonal")
        Q = unit_fisher(model, layer, x, y, structure="quasidiagonal", **kw)
        assert_close(Q.diagonal, ref_q.diagonal, what=f"{layer} {kind} vs reference")
        assert_close(Q.bias_column, ref_q.bias_column, what=f"{layer} {kind} b vs reference")
        assert (Q.n, Q.kind, Q.layer) == (case.n, kind, layer)


def test_unit_fishers_structure_and_units():
    case = CONV_CASES[0]
    model, x, _ = case.make()
    allq = unit_fishers(model, x, structure="quasidiagonal", units={"2": [3, 1]})
    dense = unit_fisher(model, "2", x, units=[3, 1])
    assert torch.equal(allq["2"].units, torch.tensor([3, 1]))
    assert_close(allq["2"].diagonal, _diag(dense.matrix))
    assert_close(allq["2"].bias_column, dense.b)


@pytest.mark.parametrize("structure", ("quasidiagonal", "diagonal"))
@pytest.mark.parametrize("case_layer", LAYER_CASES, ids=layer_case_id)
def test_theorems_exact_in_the_structures_metric(case_layer, structure):
    """The O(d) routes equal the dense theorems on the materialised metric Q(F + λI)."""
    case, layer = case_layer
    model, x, y = case.make()
    S = unit_fisher(model, layer, x, likelihood=case.likelihood, structure=structure)
    torch.manual_seed(1)
    g, g0 = torch.randn(S.num_units, S.fan_in), torch.randn(S.num_units)
    damping = 1e-3 * float(S.diagonal.mean())
    M = S.to_unit_fisher(damping)  # dense Q(F + λI)
    assert_close(M.matrix.diagonal(dim1=-2, dim2=-1), S.diagonal + damping)
    tol = conditioned(M.condition_number(), S.fan_in + 1)
    for what, got, want in _theorem_pairs(S, M, g, g0, damping):
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for a, b in zip(got, want, strict=True):
            assert_close(a, b, what=f"{layer} {structure} {what}", **tol)


def _theorem_pairs(S, M: UnitFisher, g, g0, damping):
    yield "natural_gradient", S.natural_gradient(g, g0, damping), M.natural_gradient(g, g0)
    for form in ("schur", "paper"):
        yield f"s[{form}]", S.s(form, damping), M.s(form)
    for form in ("closed", "paper"):
        yield f"k[{form}]", S.k(form, damping), M.k(form)
    a, b = S.bias_shift(g, g0, damping), M.bias_shift(g, g0)
    for f in ("shift_natural", "shift_blockdiag", "shift_plain", "k", "corrected_mean"):
        yield f, getattr(a, f), getattr(b, f)
    yield "cosine", S.cosine(g, g0, damping), M.cosine(g, g0)


@pytest.mark.parametrize("structure", ("quasidiagonal", "diagonal"))
@pytest.mark.parametrize("case_layer", LAYER_CASES[::3], ids=layer_case_id)
def test_measures_in_the_structures_metric(case_layer, structure):
    """direction / efficiency / bias_shift_error / measures equal natgrad.measures on the dense
    metric Q(F_λ), F_λ = F + λ·tr(F)/(d+1)·I."""
    case, layer = case_layer
    model, x, y = case.make()
    S = unit_fisher(model, layer, x, likelihood=case.likelihood, structure=structure)
    rel = 1e-3
    mu = rel * S.diagonal.sum(-1) / (S.fan_in + 1)
    M = dataclasses.replace(S, diagonal=S.diagonal + mu[:, None]).to_unit_fisher()  # Q(F_λ)
    torch.manual_seed(3)
    g, g0 = torch.randn(S.num_units, S.fan_in), torch.randn(S.num_units)
    tol = conditioned(M.condition_number(), S.fan_in + 1)
    got = S.measures(g, g0, rel)
    for kind in ("plain", "centred", "diagonal", "quasidiagonal", "blockdiag", "natural"):
        u = S.direction(g, g0, kind, rel)
        want = M.direction(g, g0, kind)
        for a, b in zip(u, want, strict=True):
            assert_close(a, b, what=f"{layer} {structure} {kind}", **tol)
        assert_close(S.efficiency(g, g0, kind, rel), M.efficiency(g, g0, want), **tol)
        assert_close(got[f"rho_{kind}"], M.efficiency(g, g0, want), **tol)
        if kind != "natural":  # its own error is 0 by definition, a key of no result type
            assert_close(got[f"shift_error_{kind}"], M.bias_shift_error(g, g0, want), **tol)
        else:  # still asked of the result: 0, as the dense route gives it
            assert_close(
                S.bias_shift_error(g, g0, kind, rel),
                M.bias_shift_error(g, g0, want),
                what=f"{layer} {structure} natural shift error",
                **tol,
            )
    assert_close(got["rho_natural"], torch.ones(S.num_units), **tol)
    assert_close(S.n_eff, unit_fisher(model, layer, x, likelihood=case.likelihood).n_eff)


def test_quasidiagonal_is_ollivier_and_positive_definite():
    """Q⁻¹g is Ollivier's update (natgrad.measures.quasidiagonal_solve) and Q is positive
    definite even where the arrowhead [[diag(A), b], [bᵀ, c]] is indefinite."""
    case = CASES[0]
    model, x, _ = case.make()
    Q = unit_fisher(model, "0", x, structure="quasidiagonal")
    arrow_schur = Q.c - (Q.b**2 / Q.diag_A).sum(-1)
    assert (arrow_schur < 0).any()  # this case has an indefinite arrowhead
    assert (torch.linalg.eigvalsh(Q.matrix) > 0).all()
    g, g0 = torch.randn(8, 5), torch.randn(8)
    want = quasidiagonal_solve(Q.diag_A, Q.b, Q.c, g, g0)
    for a, b in zip(Q.natural_gradient(g, g0), want, strict=True):
        assert_close(a, b)
    assert_close(Q.var_q_diagonal, Q.diag_A / Q.c[:, None] - Q.mean_q**2)
    u, u0 = Q.direction(g, g0, "arrowhead")  # M⁻¹g exists (M indefinite, not singular)
    assert torch.isfinite(u).all() and torch.isfinite(u0).all()


def test_diagonal_structure_refuses_q_moments():
    case = CONV_CASES[0]
    model, x, _ = case.make()
    D = unit_fisher(model, "2", x, structure="diagonal")
    for attr in ("mean_q", "cov_p", "b", "var_q"):
        with pytest.raises(StructureError, match="quasidiagonal|dense"):
            getattr(D, attr)
    assert_close(D.s(), 1.0 / D.c)
    assert_close(D.k(), torch.zeros(D.num_units))
    Q = unit_fisher(model, "2", x, structure="quasidiagonal")
    with pytest.raises(StructureError, match="Var_q"):
        _ = Q.var_q
    assert_close(Q.mean_q, unit_fisher(model, "2", x).mean_q)


def test_bad_structure_and_moments():
    case = CONV_CASES[0]
    model, x, _ = case.make()
    with pytest.raises(InputError, match="structure"):
        unit_fisher(model, "2", x, structure="kfac")
    with pytest.raises(InputError, match="conv_moments"):
        unit_fisher(model, "2", x, conv_moments="pixels")


# --- the "positions" definition against a per-sample, per-position loop ----------------------


def _log_lik(likelihood, o, y):
    if likelihood == "categorical":
        return torch.log_softmax(o, -1)[0, y]
    o, y = o.flatten(), y.flatten()
    if likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(o, y, reduction="sum")
    return -0.5 * (y - o).square().sum()


def _positions_loop(model, layer, x, y, likelihood, kind):
    r"""(1/N) Σ_n Σ_p E_y[δ_np²] ã_np ã_npᵀ, one input and one label at a time."""
    module = dict(model.named_modules())[layer]
    seen = {}
    h = module.register_forward_hook(lambda m, a, out: seen.update(a=a[0], net=out))
    total = 0
    for n in range(x.shape[0]):
        o = model(x[n : n + 1])
        labels = (
            [(y[n], 1.0)]
            if kind == "empirical"
            else [(c, p) for c, p in enumerate(torch.softmax(o, -1)[0].tolist())]
        )
        at = _patches(module, seen["a"].detach())[0]  # [P, d]: the reference's own patches
        at = torch.cat([at, torch.ones(at.shape[0], 1)], -1)  # [P, d+1]
        for label, prob in labels:
            (delta,) = torch.autograd.grad(
                _log_lik(likelihood, o, label), seen["net"], retain_graph=True
            )
            d2 = delta[0].reshape(delta.shape[1], -1).square()  # [U, P]
            total = total + float(prob) * torch.einsum("up,pi,pj->uij", d2, at, at)
    h.remove()
    return total / x.shape[0]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_positions_moments_match_the_loop(case):
    model, x, y = case.make()
    kinds = ("empirical", "exact") if case.likelihood == "categorical" else ("empirical",)
    for layer in case.layers:
        if not isinstance(dict(model.named_modules())[layer], torch.nn.Conv2d):
            continue
        for kind in kinds:
            got = unit_fisher(
                model, layer, x, y, kind=kind, likelihood=case.likelihood, conv_moments="positions"
            )
            want = _positions_loop(model, layer, x, y, case.likelihood, kind)
            assert_close(got.matrix, want, what=f"{case.name}/{layer} {kind} positions")
            shared = unit_fisher(model, layer, x, y, kind=kind, likelihood=case.likelihood)
            assert not torch.allclose(got.matrix, shared.matrix)  # the definitions differ


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name.startswith("mlp-")][:3], ids=lambda c: c.name
)
def test_positions_equal_shared_for_one_position(case):
    model, x, y = case.make()
    a = unit_fisher(model, case.layers[0], x, likelihood=case.likelihood, conv_moments="positions")
    b = unit_fisher(model, case.layers[0], x, likelihood=case.likelihood)
    assert_close(a.matrix, b.matrix)


def _net_with_a_dead_unit():
    """A ReLU net whose layer '2' has a dead unit 1, 20 inputs and a gradient of that layer."""
    from torch import nn

    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(),
                      nn.Linear(5, 3)).double()  # fmt: skip
    with torch.no_grad():
        m[2].bias[1] = -100.0  # unit 1 of layer '2' never fires: dead
    x = torch.randn(20, 3, dtype=torch.float64)
    return m, x, torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)


def test_structured_measures_mark_a_dead_unit_as_the_dense_and_woodbury_routes_do():
    """``measures`` of a quasi-diagonal or diagonal result at λ > 0: a dead unit (c = 0, so
    μ = λ·tr F/(d+1) = 0) is NaN and ``dead`` = 1 beside the live units' values, as for the
    dense and Woodbury results, not a SingularBlockError."""

    from natgrad.woodbury import woodbury_unit_fisher

    m, x, gw, gb = _net_with_a_dead_unit()
    dense = unit_fisher(m, "2", x).measures(gw, gb, rel_damping=1e-3)
    wood = woodbury_unit_fisher(m, "2", x).measures(gw, gb, rel_damping=1e-3)
    assert dense["dead"].tolist() == wood["dead"].tolist() == [0, 1, 0, 0, 0]
    for structure in ("quasidiagonal", "diagonal"):
        S = unit_fisher(m, "2", x, structure=structure)
        got = S.measures(gw, gb, rel_damping=1e-3)
        assert got["dead"].tolist() == [0, 1, 0, 0, 0]
        assert torch.isnan(got["rho_plain"][1]) and torch.isfinite(got["rho_plain"][[0, 2]]).all()
        alive = unit_fisher(m, "2", x, structure=structure, units=[0, 2, 3, 4])
        again = alive.measures(gw[[0, 2, 3, 4]], gb[[0, 2, 3, 4]], rel_damping=1e-3)
        assert_close(got["rho_plain"][[0, 2, 3, 4]], again["rho_plain"], what=structure)


def test_units_listing_the_whole_layer_out_of_order_or_twice_are_refused():
    """A gradient of U rows pairs with the layer's units when ``units=`` lists all of them, so
    ``units=`` in another order (whose pairing would be ambiguous) and repeats are refused;
    the whole layer in its own order pairs with the layer's ``weight.grad`` row by row."""
    from torch import nn

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, (2, 3), padding=1)
    m = nn.Sequential(conv, nn.ELU(), nn.Flatten(), nn.Linear(3 * 5 * 4, 4)).double()
    x = torch.randn(40, 2, 4, 4, dtype=torch.float64)
    nn.functional.cross_entropy(m(x), torch.randint(0, 4, (40,))).backward()
    whole = unit_fisher(m, "0", x).natural_gradient(conv.weight.grad, conv.bias.grad, 1e-3)
    F = unit_fisher(m, "0", x, units=[0, 1, 2])
    for a, b in zip(F.natural_gradient(conv.weight.grad, conv.bias.grad, 1e-3), whole,
                    strict=True):  # fmt: skip
        assert_close(a, b, what="the whole layer")
    with pytest.raises(InputError, match="in another order"):
        unit_fisher(m, "0", x, units=[2, 0, 1])
    with pytest.raises(InputError, match=r"repeats indices \(\[1\]\)"):
        unit_fisher(m, "0", x, units=[1, 1, 2])


@pytest.mark.parametrize("structure", ["quasidiagonal", "diagonal"])
def test_undamped_structured_measures_equal_the_dense_measures_of_their_metric(structure):
    """At ``rel_damping=0`` a structured result's measures are those of its metric Q(F) as a
    dense block (``to_unit_fisher``): no damping slips in (a review caught μ = 1 there)."""
    from torch import nn

    torch.manual_seed(3)
    m = nn.Sequential(
        nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 3), nn.ELU(), nn.Linear(3, 3)
    ).double()
    x = torch.randn(64, 3, dtype=torch.float64)
    gw, gb = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    S = unit_fisher(m, "2", x, structure=structure)
    got, want = S.measures(gw, gb), S.to_unit_fisher().measures(gw, gb)
    for key in ("rho_plain", "rho_centred", "shift_error_plain"):
        assert_close(got[key], want[key], rtol=1e-8, what=f"{structure} {key}")
    assert (got["damping"] == 0).all() and all(v.shape == (3,) for v in got.values())


def test_a_dead_unit_is_nan_in_every_result_types_measures_as_in_measures():
    """At λ > 0 a dead unit (a zero block) has no metric: ``efficiency``, ``bias_shift_error``
    and the directions that read the metric are NaN there, as ``measures`` gives, for the
    dense, quasi-diagonal, diagonal and Woodbury results alike (not a SingularBlockError for
    the whole layer, nor ρ = 1 / error 0 / u = g made up from the solves' stand-in μ), and the
    live units get what they get without the dead one. The results agree with each other on
    the live units where their metrics coincide (dense and Woodbury: the same F_λ; the
    structures' natural gradient is the dense blocks' quasidiagonal / diagonal direction)."""

    from natgrad.measures import DIRECTIONS
    from natgrad.woodbury import woodbury_unit_fisher

    m, x, gw, gb = _net_with_a_dead_unit()
    live, lam = [0, 2, 3, 4], 1e-3

    def results(units=None):
        return {
            "dense": unit_fisher(m, "2", x, units=units),
            "woodbury": woodbury_unit_fisher(m, "2", x, units=units),
            **{s: unit_fisher(m, "2", x, structure=s, units=units)
               for s in ("quasidiagonal", "diagonal")},
        }  # fmt: skip

    alive, got = results(live), {}
    for name, res in results().items():
        assert not res.matrix[1].any(), name  # the dead unit's block is zero
        r = res.measures(gw, gb, rel_damping=lam)
        assert r["dead"].tolist() == [0, 1, 0, 0, 0], name
        for kind in DIRECTIONS:
            what = f"{name} {kind}"
            u, u0 = res.direction(gw, gb, kind, rel_damping=lam)
            metric_free = kind in ("plain", "centred")
            assert (
                torch.isfinite(u0[1]) == metric_free and torch.isfinite(u[1]).all() == metric_free
            ), what
            want = alive[name].direction(gw[live], gb[live], kind, rel_damping=lam)
            assert_close(u[live], want[0], what=what, normwise=True)
            assert_close(u0[live], want[1], what=what)
            got[name, kind] = u[live], u0[live]
            for measure, key in (("efficiency", "rho"), ("bias_shift_error", "shift_error")):
                val = getattr(res, measure)(gw, gb, kind, rel_damping=lam)
                assert torch.isnan(val[1]), f"{what} {measure}: {val[1]} for the dead unit"
                want = getattr(alive[name], measure)(gw[live], gb[live], kind, rel_damping=lam)
                assert_close(val[live], want, what=f"{what} {measure}")
                if kind != "natural" or key == "rho":
                    assert_close(val, r[f"{key}_{kind}"], rtol=1e-8, what=f"{what} {measure}")
    for kind in DIRECTIONS:
        for a, b in zip(got["woodbury", kind], got["dense", kind], strict=True):
            assert_close(a, b, rtol=1e-8, what=f"woodbury vs dense {kind}")
    for structure in ("quasidiagonal", "diagonal"):
        for a, b in zip(got[structure, "natural"], got["dense", structure], strict=True):
            assert_close(a, b, rtol=1e-8, what=f"{structure} natural vs dense {structure}")


def test_a_saturated_unit_keeps_s_k_and_theorem_1_of_its_quasidiagonal_metric():
    """A saturated ELU unit (output ≈ −1 on every input) makes t = bᵀΔ⁻¹b ≫ c: s = 1/(c −
    bᵀA_Q⁻¹b) by subtraction lost every digit (ρ(natural) near 100); the closed forms
    s = (c+t)/c² and A_Q⁻¹b = Δ⁻¹b·c/(c+t) agree with the dense route on the same metric
    within its conditioning."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(10, 6), torch.nn.ELU(), torch.nn.Linear(6, 4)
    ).double()
    with torch.no_grad():
        net[0].bias[3] = -12.0
    x = torch.randn(200, 10, dtype=torch.float64)
    Q = unit_fisher(net, "2", x, structure="quasidiagonal")
    dense = UnitFisher(matrix=Q.matrix.double(), **Q._fields())  # the same metric, dense
    kappa = dense.condition_number()
    tol = conditioned(kappa, 7)
    assert float(kappa.max()) > 1e10  # the case: ill-conditioned, yet well inside float64
    assert_close(Q.s(), dense.s(), **tol, what="s")
    assert_close(Q.k(), dense.k(), **tol, what="k")
    g, g0 = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    for got, want in zip(Q.natural_gradient(g, g0), dense.natural_gradient(g, g0), strict=True):
        assert_close(got, want, **tol, normwise=True, what="Theorem 1")
    rho = Q.measures(g, g0, rel_damping=1e-6)["rho_natural"]
    assert ((rho - 1).abs() < 1e-6).all(), rho


def test_every_route_calls_the_same_units_dead_and_a_dead_unit_is_nan_undamped_too():
    """A zero block is dead (NaN measures) in the dense and the structured routes alike,
    damped or not (the structured route raised undamped); a block with c = 0 but A ≠ 0 is
    not dead in either (the dense route called it dead, the structured one did not)."""
    one = torch.ones(1, dtype=torch.float64)
    blocks = torch.tensor([[[2.0, 0.5], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]],
                           [[2.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)  # fmt: skip
    g, g0 = torch.ones(3, 1, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    d = UnitFisher.from_matrix(blocks, one).measures(g, g0, 1e-3)
    q = StructuredUnitFisher.from_dense(blocks, one, "quasidiagonal").measures(g, g0, 1e-3)
    assert d["dead"].tolist() == q["dead"].tolist() == [0.0, 1.0, 0.0]
    for key in ("rho_plain", "rho_natural", "shift_natural"):  # d = 1: Q(F) is F itself
        assert_close(q[key], d[key], what=key)
    undamped = [r.measures(g[:2], g0[:2], 0.0) for r in (
        UnitFisher.from_matrix(blocks[:2], one),
        StructuredUnitFisher.from_dense(blocks[:2], one, "quasidiagonal"))]  # fmt: skip
    for r in undamped:
        assert r["dead"].tolist() == [0.0, 1.0] and torch.isnan(r["rho_plain"][1])
        assert r["rho_natural"][0] == pytest.approx(1.0)


def test_every_result_type_gives_the_measures_under_the_same_keys():
    from natgrad.woodbury import woodbury_unit_fisher

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    g, g0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    keys = set(unit_fisher(net, "2", x).measures(g, g0, 1e-3))
    for other in (
        unit_fisher(net, "2", x, structure="quasidiagonal"),
        woodbury_unit_fisher(net, "2", x),
    ):
        assert set(other.measures(g, g0, 1e-3)) == keys, type(other).__name__


@pytest.mark.parametrize("structure", ["quasidiagonal"])
def test_a_structure_warns_of_its_nearly_singular_metric(structure):
    """An input feature that hardly varies about a constant makes the unit's metric Q nearly
    singular (the feature and the bias input are nearly one): the dense route warns, the
    structures returned s ≈ 1e17 and a natural gradient of that size silently (a helper's
    hunt, with a constant feature under the quasi-diagonal). They now warn from a rigorous
    lower bound of κ of Q scaled to a unit diagonal, naming the unit; a damped metric does
    not. A feature that is merely small (1e-9, about 0) warned too: its large step is exact
    (it equals the solve of the unit-diagonal Q, κ ≈ 2), and it no longer warns."""
    from natgrad.errors import NearlySingularWarning

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ELU(), torch.nn.Linear(5, 3))
    x = torch.randn(50, 4, dtype=torch.float64)
    g, g0 = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    small = x.clone()
    small[:, 2] = 1e-9 * x[:, 2]
    Q = unit_fisher(net.double(), "0", small, units=[3], structure=structure)
    dw, db = Q.natural_gradient(g, g0)  # warnings are errors in the suite
    D, b, c = Q.diag_A[0], Q.bias_column[0], Q.c[0]
    M = torch.diag(torch.cat([D - b.square() / c, c[None]]))
    M[:4, :4] += torch.outer(b, b) / c  # Q = [[diag(Δ) + bbᵀ/c, b], [bᵀ, c]]
    M[:4, 4], M[4, :4] = b, b
    r = torch.diagonal(M).rsqrt()
    want = r * torch.linalg.solve(M * r[:, None] * r, r * torch.cat([g[0], g0]))
    got, y = torch.cat([dw[0], db]) / r, want / r  # in the unit-diagonal coordinates
    assert_close(got, y, atol=1e-12 * float(y.norm()), what="a small feature's exact step")
    x[:, 2] = 1.0 + 1e-7 * x[:, 2]
    Q = unit_fisher(net.double(), "0", x, units=[3], structure=structure)
    with pytest.warns(NearlySingularWarning, match=rf"layer '0': {structure} unit Fisher.*unit 3"):
        Q.natural_gradient(g, g0)
    Q.natural_gradient(g, g0, damping=1e-3)
    D = unit_fisher(net, "0", x, units=[3], structure="diagonal")
    D.natural_gradient(g, g0)  # elementwise, exact whatever the spread: no warning
