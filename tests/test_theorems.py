"""Lemmas 1–2 and Theorems 1–2 (natgrad.theorems, UnitFisher methods) against direct solves.

Ground truth is the obvious route: ``torch.linalg.solve`` / ``inv`` of the full block in
float64. Random blocks come from synthetic populations (activations a, weights δ̄² > 0), so
they are exactly unit Fisher blocks F = E_p[δ̄² ã ãᵀ] with known E_p(a).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natgrad import theorems
from natgrad.errors import InputError
from natgrad.testing import assert_close
from natgrad.unitfisher import UnitFisher

# The autouse float64 fixture is idempotent across examples, so sharing it is safe.
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass(frozen=True)
class Population:
    fisher: UnitFisher
    g: torch.Tensor  # [U, d]
    g0: torch.Tensor  # [U]
    damping: float


@st.composite
def populations(draw, *, centred_q: bool = False) -> Population:
    """U units over N samples of a ∈ R^d with mean shift `shift` and weights δ̄² correlated
    with a; optionally reweighted so that E_q(a) = 0 exactly (b = 0)."""
    seed = draw(st.integers(0, 2**31 - 1))
    U, d = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    shift = draw(st.floats(-2.0, 2.0))
    corr = draw(st.floats(-1.0, 1.0))
    damping = draw(st.sampled_from([0.0, 0.1]))
    gen = torch.Generator().manual_seed(seed)
    N = 4 * (d + 1)
    a = torch.randn(N, d, generator=gen, dtype=torch.float64) + shift  # [N, d]
    z = torch.randn(U, N, generator=gen, dtype=torch.float64) + corr * a.sum(-1) / math.sqrt(d)
    w = torch.nn.functional.softplus(z) + 0.05  # [U, N], δ̄² > 0
    if centred_q:  # E_q(a) = 0: shift a per unit so its δ̄²-weighted mean vanishes
        a = a - (w @ a / w.sum(-1, keepdim=True)).unsqueeze(1)  # [U, N, d]
    else:
        a = a.expand(U, N, d)
    at = torch.cat([a, torch.ones(U, N, 1, dtype=torch.float64)], -1)  # [U, N, d+1]
    F = torch.einsum("un,uni,unj->uij", w, at, at) / N  # [U, d+1, d+1]
    F = (F + F.transpose(-1, -2)) / 2
    mean_p = a[0].mean(0)
    g = torch.randn(U, d, generator=gen, dtype=torch.float64)
    g0 = torch.randn(U, generator=gen, dtype=torch.float64)
    return Population(UnitFisher.from_matrix(F, mean_p, layer="synthetic"), g, g0, damping)


def _direct(pop: Population) -> torch.Tensor:
    """[U, d+1] (F + λI)⁻¹ (g, g0) by a generic solve of the full block."""
    F = pop.fisher.matrix + pop.damping * torch.eye(pop.fisher.fan_in + 1)
    return torch.linalg.solve(F, torch.cat([pop.g, pop.g0.unsqueeze(-1)], -1))


# --- the hand-checkable case of docs/theory.md ----------------------------------------------
HAND = UnitFisher.from_matrix(
    torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64),
    torch.tensor([1.0], dtype=torch.float64),
)
HAND_G, HAND_G0 = (
    torch.tensor([[1.0]], dtype=torch.float64),
    torch.tensor([0.0], dtype=torch.float64),
)

HAND_CASES = {
    "s_schur": (lambda: HAND.s("schur"), [2.0]),
    "s_paper": (lambda: HAND.s("paper"), [2.0]),
    "k_closed": (lambda: HAND.k("closed"), [0.0]),
    "k_paper": (lambda: HAND.k("paper"), [0.0]),
    "inverse_lemma1": (lambda: HAND.inverse(), [[[1.0, -1.0], [-1.0, 2.0]]]),
    "natural_dw": (lambda: HAND.natural_gradient(HAND_G, HAND_G0)[0], [[1.0]]),
    "natural_dw0": (lambda: HAND.natural_gradient(HAND_G, HAND_G0)[1], [-1.0]),
    "shift_natural": (lambda: HAND.bias_shift(HAND_G, HAND_G0).shift_natural, [0.0]),
    "shift_blockdiag": (lambda: HAND.bias_shift(HAND_G, HAND_G0).shift_blockdiag, [0.5]),
    "shift_plain": (lambda: HAND.bias_shift(HAND_G, HAND_G0).shift_plain, [1.0]),
    "corrected_mean": (lambda: HAND.bias_shift(HAND_G, HAND_G0).corrected_mean, [[0.0]]),
    "cosine": (lambda: HAND.cosine(HAND_G, HAND_G0), [1 / math.sqrt(2)]),
    "lemma2_i": (lambda: theorems.lemma2_i(HAND.mean_q, HAND.var_q), [0.5]),
    "lemma2_ii": (lambda: theorems.lemma2_ii(HAND.mean_q, HAND.mean_p, HAND.var_q), [1.0]),
}


@pytest.mark.parametrize("name", list(HAND_CASES))
def test_hand_case(name):
    compute, expected = HAND_CASES[name]
    assert_close(compute(), torch.tensor(expected, dtype=torch.float64), what=name)


# --- properties on random blocks ------------------------------------------------------------
@SETTINGS
@given(populations())
def test_theorem1_equals_direct_solve(pop):
    dw, dw0 = pop.fisher.natural_gradient(pop.g, pop.g0, damping=pop.damping)
    assert_close(torch.cat([dw, dw0.unsqueeze(-1)], -1), _direct(pop), what="Theorem 1")


@SETTINGS
@given(populations())
def test_lemma1_equals_inverse(pop):
    F = pop.fisher.matrix + pop.damping * torch.eye(pop.fisher.fan_in + 1)
    assert_close(pop.fisher.inverse(damping=pop.damping), torch.linalg.inv(F), what="Lemma 1")


@SETTINGS
@given(populations())
def test_lemma2_equals_direct(pop):
    m, V, mp = pop.fisher.mean_q, pop.fisher.var_q, pop.fisher.mean_p
    second = V + m.unsqueeze(-1) * m.unsqueeze(-2)  # E_q(a aᵀ)
    quad_m = (m * torch.linalg.solve(second, m)).sum(-1)
    quad_mp = (mp * torch.linalg.solve(second, m)).sum(-1)
    assert_close(theorems.lemma2_i(m, V), quad_m, what="Lemma 2(i)")
    assert_close(theorems.lemma2_ii(m, mp, V), (1 - quad_mp) / (1 - quad_m), what="Lemma 2(ii)")
    assert (quad_m < 1).all()


@SETTINGS
@given(populations())
def test_forms_of_s_agree_and_s_positive(pop):
    s = pop.fisher.s("schur", damping=pop.damping)
    assert_close(pop.fisher.s("paper", damping=pop.damping), s, what="s paper vs Schur")
    assert (s > 0).all()


@SETTINGS
@given(populations())
def test_forms_of_k_agree(pop):
    k = pop.fisher.k("closed", damping=pop.damping)
    assert_close(pop.fisher.k("paper", damping=pop.damping), k, what="k paper vs closed")
    assert_close(pop.fisher.bias_shift(pop.g, pop.g0, damping=pop.damping).k, k, what="BiasShift.k")


@SETTINGS
@given(populations())
def test_theorem2_shift_identity(pop):
    x = _direct(pop)  # natural gradient (Δw, Δw0)
    shift = pop.fisher.bias_shift(pop.g, pop.g0, damping=pop.damping)
    expected = (pop.fisher.mean_p * x[:, :-1]).sum(-1) + x[:, -1]  # E_p(a)ᵀΔw + Δw0
    assert_close(shift.shift_natural, expected, what="Theorem 2")


@SETTINGS
@given(populations())
def test_reference_shifts(pop):
    F = pop.fisher.matrix.clone()
    F[:, :-1, -1] = 0  # the coupling b := 0
    F[:, -1, :-1] = 0
    x = torch.linalg.solve(F, torch.cat([pop.g, pop.g0.unsqueeze(-1)], -1))
    shift = pop.fisher.bias_shift(pop.g, pop.g0)
    mp = pop.fisher.mean_p
    assert_close(shift.shift_blockdiag, (mp * x[:, :-1]).sum(-1) + x[:, -1], what="blockdiag")
    assert_close(shift.shift_plain, (mp * pop.g).sum(-1) + pop.g0, what="plain")


@SETTINGS
@given(populations(centred_q=True))
def test_centred_q_gives_s_one_over_c_and_k_zero(pop):
    f = pop.fisher
    assert_close(f.b, torch.zeros_like(f.b), atol=1e-12, what="b (E_q(a) = 0 by construction)")
    assert_close(f.s("schur"), 1 / f.c, what="s = 1/c")
    assert_close(f.k("closed"), torch.zeros_like(f.c), what="k = 0")
    dw, dw0 = f.natural_gradient(pop.g, pop.g0)
    assert_close(dw0, pop.g0 / f.c, what="Δw0 = g0 / c")


@SETTINGS
@given(populations())
def test_uncorrelated_weights_correct_mean_to_zero(pop):
    f = pop.fisher
    same = UnitFisher.from_matrix(f.matrix[:1], f.mean_q[0])  # E_p(a) := E_q(a): q = p
    shift = same.bias_shift(pop.g[:1], pop.g0[:1])
    assert_close(shift.k, torch.zeros(1), what="k")
    assert_close(shift.corrected_mean, torch.zeros(1, f.fan_in), what="corrected mean")


@SETTINGS
@given(populations())
def test_cosine_matches_direct(pop):
    x, y = torch.cat([pop.g, pop.g0.unsqueeze(-1)], -1), _direct(pop)
    expected = torch.nn.functional.cosine_similarity(x, y, dim=-1)
    cos = pop.fisher.cosine(pop.g, pop.g0, damping=pop.damping)
    assert_close(cos, expected, what="cosine")
    assert ((cos > 0) & (cos <= 1 + 1e-12)).all()


# --- gradient shapes ---------------------------------------------------------------------------
def _conv_fisher(units=None) -> UnitFisher:
    d = 2 * 2 * 2  # C_in · kh · kw
    X = torch.randn(3, 40, d + 1)
    X[..., -1] = 1
    F = X.transpose(-1, -2) @ X / 40
    units = torch.arange(3) if units is None else units
    return UnitFisher(
        matrix=F,
        mean_p=X[0, :, :-1].mean(0),
        n=40,
        kind="given",
        likelihood="given",
        layer="conv1",
        units=units,
    )


def test_conv_weight_shape_is_flattened():
    f = _conv_fisher()
    gw, gb = torch.randn(3, 2, 2, 2), torch.randn(3)
    dw, dw0 = f.natural_gradient(gw, gb)
    dw_flat, dw0_flat = f.natural_gradient(gw.reshape(3, -1), gb)
    assert_close(dw, dw_flat, what="dw")
    assert_close(dw0, dw0_flat, what="dw0")


def test_whole_layer_grads_are_sliced_by_units():
    f = _conv_fisher(units=torch.tensor([4, 1, 6]))
    gw, gb = torch.randn(8, 2, 2, 2), torch.randn(8)
    dw, dw0 = f.natural_gradient(gw, gb)
    dw_sel, dw0_sel = f.natural_gradient(gw[[4, 1, 6]], gb[[4, 1, 6]])
    assert_close(dw, dw_sel, what="dw")
    assert_close(dw0, dw0_sel, what="dw0")


def test_a_wider_gradient_is_refused_where_its_rows_are_ambiguous():
    """A result of units 0..U−1 (the whole layer, or its first U units) cannot tell the
    layer's rows from another layer's wider gradient, so it takes U rows only and says how;
    a result of other units still slices the whole layer's rows (a review found the first
    U rows taken silently)."""
    gw, gb = torch.randn(8, 2, 2, 2), torch.randn(8)
    for units in (None, torch.tensor([0, 1, 2])):
        with pytest.raises(InputError, match=r"holds units 0\.\.2.*grad_weight\[:3\]"):
            _conv_fisher(units=units).natural_gradient(gw, gb)
    dw, _ = _conv_fisher(units=torch.tensor([0, 1, 2])).natural_gradient(gw[:3], gb[:3])
    assert dw.shape == (3, 8)


BAD_GRADS = {
    "wrong_fan_in": ((3, 5), (3,)),
    "bias_rows_differ": ((3, 8), (4,)),
    "too_few_rows": ((2, 8), (2,)),
    "weight_1d": ((8,), (3,)),
}


@pytest.mark.parametrize("name", list(BAD_GRADS))
def test_grad_shape_error_names_layer_and_shape(name):
    gw_shape, gb_shape = BAD_GRADS[name]
    with pytest.raises(InputError, match=r"layer 'conv1'.*\[U, d\] = \[3, 8\]"):
        _conv_fisher().natural_gradient(torch.randn(gw_shape), torch.randn(gb_shape))


@pytest.mark.parametrize("method", ["s", "k"])
def test_unknown_form_is_refused(method):
    with pytest.raises(InputError, match="form must be"):
        getattr(HAND, method)("nonsense")


def test_float32_in_float32_out():
    f32 = UnitFisher.from_matrix(HAND.matrix.float(), HAND.mean_p.float())
    dw, dw0 = f32.natural_gradient(HAND_G.float(), HAND_G0.float())
    assert dw.dtype == dw0.dtype == torch.float32
    assert_close(dw0, torch.tensor([-1.0]), what="dw0 float32")


def test_a_dead_unit_is_a_singular_block_on_every_route_of_s_and_k():
    """A dead unit's block is zero (c = 0): s() and k("paper") raised SingularBlockError, but
    k() and s("paper"), through q's moments (0/0), raised InputError blaming the input for
    NaN entries (a helper's hunt). Every route now raises SingularBlockError naming the unit;
    damped, the dead unit has s = 1/λ and k = 0."""
    from natgrad import unit_fisher
    from natgrad.errors import SingularBlockError

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    net = net.double()
    with torch.no_grad():
        net[0].bias[0] = -100.0  # unit 0 never fires
    F = unit_fisher(net, "0", torch.randn(30, 3, dtype=torch.float64))
    assert bool((F.matrix[0] == 0).all())
    for call in (F.s, F.k, lambda: F.s("paper"), lambda: F.k("paper")):
        with pytest.raises(SingularBlockError, match=r"layer '0'.*unit 0"):
            call()
    assert float(F.s(damping=0.5)[0]) == pytest.approx(2.0)
    assert float(F.k(damping=0.5)[0]) == 0.0
