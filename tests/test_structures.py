"""Structured unit Fishers (quasi-diagonal, diagonal) and the two conv q-moment definitions,
against the dense route, natgrad.reference and a per-sample, per-position autograd loop."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, LAYER_CASES, layer_case_id
from torch.nn import functional as F

from natgrad import UnitFisher
from natgrad._layers import incoming
from natgrad.errors import InputError, StructureError
from natgrad.fisher import unit_fisher, unit_fishers
from natgrad.reference import reference_unit_fisher
from natgrad.structures import StructuredUnitFisher
from natgrad.testing import SOLVE_ROUTES, assert_close

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


def _theorem_pairs(S, M: UnitFisher, g, g0, damping):
    yield "natural_gradient", S.natural_gradient(g, g0, damping), M.natural_gradient(g, g0, damping)
    for form in ("schur", "paper"):
        yield f"s[{form}]", S.s(form, damping), M.s(form, damping)
    for form in ("closed", "paper"):
        yield f"k[{form}]", S.k(form, damping), M.k(form, damping)
    a, b = S.bias_shift(g, g0, damping), M.bias_shift(g, g0, damping)
    for f in ("shift_natural", "shift_blockdiag", "shift_plain", "k", "corrected_mean"):
        yield f, getattr(a, f), getattr(b, f)
    yield "cosine", S.cosine(g, g0, damping), M.cosine(g, g0, damping)


@pytest.mark.parametrize("structure", ("quasidiagonal", "diagonal"))
@pytest.mark.parametrize("case_layer", LAYER_CASES, ids=layer_case_id)
def test_theorems_exact_in_the_structures_metric(case_layer, structure):
    """The O(d) arrowhead/diagonal routes equal the dense theorems on the materialised M."""
    case, layer = case_layer
    model, x, y = case.make()
    S = unit_fisher(model, layer, x, likelihood=case.likelihood, structure=structure)
    M = S.to_unit_fisher()
    assert_close(M.matrix, S.matrix)
    torch.manual_seed(1)
    g, g0 = torch.randn(S.num_units, S.fan_in), torch.randn(S.num_units)
    # The arrowhead M can be indefinite (bᵀdiag(A)⁻¹b > c); λ >= max ‖b‖ makes M + λI
    # positive definite (‖b‖²/(D+λ) < λ < c + λ) and keeps the dense route's solve well posed.
    bnorm = 0.0 if S.bias_column is None else float(S.bias_column.norm(dim=-1).max())
    damping = max(bnorm, float(S.diagonal.mean()))
    for what, got, want in _theorem_pairs(S, M, g, g0, damping):
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for a, b in zip(got, want, strict=True):
            assert_close(a, b, what=f"{layer} {structure} {what}", **SOLVE_ROUTES)


def test_indefinite_arrowhead_raises_named_error():
    from natgrad.errors import SingularBlockError

    case = CASES[0]
    model, x, _ = case.make()
    Q = unit_fisher(model, "0", x, structure="quasidiagonal")
    schur = Q.c - (Q.b**2 / Q.diag_A).sum(-1)
    assert (schur < 0).any()  # this case has an indefinite quasi-diagonal block
    with pytest.raises(SingularBlockError, match="layer '0'.*indefinite"):
        Q.s()
    with pytest.raises(SingularBlockError, match="damping"):
        Q.natural_gradient(torch.zeros(8, 5), torch.zeros(8))


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
        at = incoming(module, seen["a"].detach())[0]  # [P, d]
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
