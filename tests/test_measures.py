"""Directions, Fisher efficiency, bias-shift error, n_eff and condition numbers
(natgrad.measures, UnitFisher methods) against the brute-force reference, hand cases and
reparametrisation invariance on real nets.

Two independent routes are compared: the engine's blocks with natgrad.measures' batched
float64 solves, and natgrad.reference's per-sample autograd blocks with explicit dense
matrices (F_λ, M, D, T) and torch.linalg.solve, unit by unit. Tolerances follow the
conditioning of F_λ (natgrad.testing.conditioned).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from cases import CASES, layer_case_id
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from natgrad import measures as M
from natgrad.errors import InputError, NearlySingularWarning, SingularBlockError
from natgrad.fisher import unit_fisher
from natgrad.reference import (
    reference_bias_shift_error,
    reference_direction,
    reference_efficiency,
    reference_unit_fisher,
)
from natgrad.testing import assert_close, conditioned
from natgrad.unitfisher import UnitFisher

SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
KINDS = M.DIRECTIONS
HAND = UnitFisher.from_matrix(
    torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64), torch.tensor([1.0])
)
HAND_G, HAND_G0 = torch.tensor([[1.0]]), torch.tensor([0.0])


def _flat(u: torch.Tensor, u0: torch.Tensor) -> torch.Tensor:
    return torch.cat([u, u0.unsqueeze(-1)], -1)


def _cond(matrix: torch.Tensor, rel_damping: float) -> torch.Tensor:
    return torch.linalg.cond(M.relative_damped(matrix, rel_damping))


# --- synthetic unit Fisher blocks --------------------------------------------------------------
@st.composite
def blocks(draw, d_max: int = 6):
    """U blocks E_p[δ̄² ã ãᵀ] of a population with shifted, correlated activations, a gradient
    and a relative damping."""
    seed = draw(st.integers(0, 2**31 - 1))
    U, d = draw(st.integers(1, 4)), draw(st.integers(1, d_max))
    shift = draw(st.floats(-2.0, 2.0))
    lam = draw(st.sampled_from([0.0, 1e-3, 0.1]))
    gen = torch.Generator().manual_seed(seed)
    N = 4 * (d + 1)
    a = torch.randn(N, d, generator=gen) * (0.2 + torch.rand(d, generator=gen)) + shift
    w = nn.functional.softplus(torch.randn(U, N, generator=gen) + a.sum(-1) / d) + 0.05
    at = torch.cat([a, torch.ones(N, 1)], -1)
    F = torch.einsum("un,ni,nj->uij", w, at, at) / N
    F = (F + F.transpose(-1, -2)) / 2
    g, g0 = torch.randn(U, d, generator=gen), torch.randn(U, generator=gen)
    return UnitFisher.from_matrix(F, a.mean(0), layer="synthetic"), g, g0, lam


@SETTINGS
@given(blocks(), st.sampled_from(KINDS))
def test_direction_matches_dense_reference(data, kind):
    F, g, g0, lam = data
    u, u0 = F.direction(g, g0, kind, rel_damping=lam)
    expected = reference_direction(F, F.mean_p, _flat(g, g0), kind, lam)
    assert_close(
        _flat(u, u0), expected, **conditioned(_cond(F.matrix, lam), F.fan_in + 1), what=kind
    )


@SETTINGS
@given(blocks())
def test_measures_match_dense_reference_and_single_methods(data):
    F, g, g0, lam = data
    tol = conditioned(_cond(F.matrix, lam), F.fan_in + 1)
    r = F.measures(g, g0, rel_damping=lam)
    G = _flat(g, g0)
    for kind in KINDS:
        u = reference_direction(F, F.mean_p, G, kind, lam)
        assert_close(r[f"rho_{kind}"], reference_efficiency(F, G, u, lam), **tol, what=kind)
        assert_close(F.efficiency(g, g0, kind, lam), r[f"rho_{kind}"], **tol, what=kind)
        if kind != "natural":
            err = reference_bias_shift_error(F, F.mean_p, G, u, lam)
            assert_close(r[f"shift_error_{kind}"], err, **tol, what=f"shift error {kind}")
            single = F.bias_shift_error(g, g0, kind, lam)
            assert_close(single, r[f"shift_error_{kind}"], **tol, what=f"shift error {kind}")
    assert_close(r["rho_natural"], torch.ones(F.num_units), **tol, what="ρ(natural) = 1")
    assert (r["rho_quasidiagonal"] > 0).all()  # Ollivier's metric is positive definite
    assert_close(r["damping"], lam * torch.diagonal(F.matrix, dim1=-2, dim2=-1).mean(-1))
    assert not r["dead"].any()


@SETTINGS
@given(blocks())
def test_efficiency_and_shift_error_accept_a_pair(data):
    F, g, g0, lam = data
    u, u0 = F.direction(g, g0, "quasidiagonal", lam)
    tol = conditioned(_cond(F.matrix, lam), F.fan_in + 1)
    assert_close(
        F.efficiency(g, g0, (u, u0), lam), F.efficiency(g, g0, "quasidiagonal", lam), **tol
    )
    assert_close(
        F.bias_shift_error(g, g0, (u, u0), lam),
        F.bias_shift_error(g, g0, "quasidiagonal", lam),
        **tol,
    )


# --- hand cases ------------------------------------------------------------------------------
HAND_CASES = {
    # docs/theory.md, hand case: F = [[2, 1], [1, 1]], E_p(a) = 1, g = (1, 0): F⁻¹g = (1, −1), shift 0
    "natural": (lambda: _flat(*HAND.direction(HAND_G, HAND_G0, "natural")), [[1.0, -1.0]]),
    "blockdiag": (lambda: _flat(*HAND.direction(HAND_G, HAND_G0, "blockdiag")), [[0.5, 0.0]]),
    "diagonal": (lambda: _flat(*HAND.direction(HAND_G, HAND_G0, "diagonal")), [[0.5, 0.0]]),
    "centred": (lambda: _flat(*HAND.direction(HAND_G, HAND_G0, "centred")), [[1.0, -1.0]]),
    "quasidiagonal": (
        lambda: _flat(*HAND.direction(HAND_G, HAND_G0, "quasidiagonal")),
        [[1.0, -1.0]],
    ),
    "arrowhead": (lambda: _flat(*HAND.direction(HAND_G, HAND_G0, "arrowhead")), [[1.0, -1.0]]),
    "rho_plain": (lambda: HAND.efficiency(HAND_G, HAND_G0, "plain"), [1 / math.sqrt(2)]),
    "rho_blockdiag": (lambda: HAND.efficiency(HAND_G, HAND_G0, "blockdiag"), [1 / math.sqrt(2)]),
    "rho_centred": (lambda: HAND.efficiency(HAND_G, HAND_G0, "centred"), [1.0]),
    "shift_natural": (lambda: HAND.measures(HAND_G, HAND_G0)["shift_natural"], [0.0]),
    "shift_blockdiag": (lambda: HAND.measures(HAND_G, HAND_G0)["shift_blockdiag"], [0.5]),
    "shift_plain": (lambda: HAND.measures(HAND_G, HAND_G0)["shift_plain"], [1.0]),
    "shift_error_blockdiag": (
        lambda: HAND.bias_shift_error(HAND_G, HAND_G0, "blockdiag"),
        [math.inf],
    ),
    # rel_damping 1: μ = tr F/2 = 1.5, F_λ = [[3.5, 1], [1, 2.5]], F_λ⁻¹(1, 0) = (2.5, −1)/7.75
    "damped_natural": (
        lambda: _flat(*HAND.direction(HAND_G, HAND_G0, "natural", rel_damping=1.0)),
        [[2.5 / 7.75, -1.0 / 7.75]],
    ),
}


@pytest.mark.parametrize("name", list(HAND_CASES))
def test_hand_case(name):
    compute, expected = HAND_CASES[name]
    assert_close(compute(), torch.tensor(expected), what=name)


@SETTINGS
@given(blocks(), st.floats(0.1, 10.0))
def test_plain_is_natural_when_fisher_is_proportional_to_identity(data, scale):
    F, g, g0, lam = data
    iso = UnitFisher.from_matrix(scale * torch.eye(F.fan_in + 1).expand_as(F.matrix), F.mean_p)
    r = iso.measures(g, g0, rel_damping=lam)
    for kind in ("plain", "diagonal", "quasidiagonal", "blockdiag", "natural"):
        assert_close(r[f"rho_{kind}"], torch.ones(F.num_units), what=kind)


@SETTINGS
@given(blocks(d_max=1))
def test_quasidiagonal_and_arrowhead_are_natural_for_fan_in_one(data):
    F, g, g0, lam = data
    natural = _flat(*F.direction(g, g0, "natural", lam))
    tol = conditioned(_cond(F.matrix, lam), 2)
    for kind in ("quasidiagonal", "arrowhead"):
        assert_close(_flat(*F.direction(g, g0, kind, lam)), natural, **tol, what=kind)


@SETTINGS
@given(blocks())
def test_centred_is_plain_when_incoming_mean_is_zero(data):
    F, g, g0, lam = data
    zero = UnitFisher.from_matrix(F.matrix, torch.zeros(F.fan_in))
    assert_close(_flat(*zero.direction(g, g0, "centred")), _flat(g, g0), what="centred")


# --- reparametrisation invariance on real nets --------------------------------------------------
def _pair_of_nets(P: torch.Tensor, t: torch.Tensor):
    """Net A: Linear(4,5) → ELU → Linear(5,3) ["2"] → ELU → Linear(3,4). Net B computes the
    same function, but the layer ["3"] sees a' = P a + t (a fixed Linear in between) and its
    weights compensate: W' = W P⁻¹, w0' = w0 − W P⁻¹ t."""
    torch.manual_seed(3)
    a = nn.Sequential(nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 3), nn.ELU(), nn.Linear(3, 4))
    with torch.no_grad():
        a[0].bias.add_(0.7)  # incoming activations of "2" far from centred
    affine = nn.Linear(5, 5)
    Pinv = torch.linalg.inv(P)
    layer = nn.Linear(5, 3)
    with torch.no_grad():
        affine.weight.copy_(P)
        affine.bias.copy_(t)
        layer.weight.copy_(a[2].weight @ Pinv)
        layer.bias.copy_(a[2].bias - a[2].weight @ Pinv @ t)
    affine.requires_grad_(False)
    b = nn.Sequential(a[0], nn.ELU(), affine, layer, nn.ELU(), a[4])
    return a, b


def _mean_loglik_grad(model, layer, x, y):
    module = dict(model.named_modules())[layer]
    ll = -nn.functional.cross_entropy(model(x), y)
    return torch.autograd.grad(ll, (module.weight, module.bias))


def _per_sample_net_change(model, layer, x, u, u0):
    """Δnet_n = uᵀa_n + u_0 for every input n, a_n the layer's input."""
    seen = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0] @ u.T + u0


# map families: which directions' ρ (and per-input net change) each must leave unchanged
MAPS = {
    "affine": ("natural",),
    "linear": ("natural", "blockdiag"),
    "per-coordinate": ("natural", "quasidiagonal"),
    "scaling": ("natural", "quasidiagonal", "diagonal", "arrowhead", "blockdiag"),
    "translation": ("natural", "centred"),
}


def _draw_map(family: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    d = 5
    alpha = (0.3 + 2 * torch.rand(d, generator=gen)) * torch.sign(torch.randn(d, generator=gen))
    beta = 2 * torch.randn(d, generator=gen)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    dense = Q @ torch.diag(alpha)  # invertible, condition number <= 7.7
    P = {"affine": dense, "linear": dense, "per-coordinate": torch.diag(alpha)}.get(
        family, torch.diag(alpha) if family == "scaling" else torch.eye(d)
    )
    t = beta if family in ("affine", "per-coordinate", "translation") else torch.zeros(d)
    return P, t


@pytest.mark.parametrize("family", list(MAPS))
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31 - 1))
def test_measures_invariant_under_maps_of_incoming_activations(family, seed):
    P, t = _draw_map(family, seed)
    net_a, net_b = _pair_of_nets(P, t)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 4, generator=gen)
    y = torch.randint(0, 4, (40,), generator=gen)
    assert_close(net_b(x), net_a(x), what="the two nets compute the same function")
    Fa, Fb = unit_fisher(net_a, "2", x), unit_fisher(net_b, "3", x)
    ga, gb = _mean_loglik_grad(net_a, "2", x, y), _mean_loglik_grad(net_b, "3", x, y)
    ra, rb = Fa.measures(*ga), Fb.measures(*gb)
    tol = conditioned(torch.maximum(_cond(Fa.matrix, 0), _cond(Fb.matrix, 0)), 6)
    for kind in MAPS[family]:
        assert_close(rb[f"rho_{kind}"], ra[f"rho_{kind}"], **tol, what=f"{family}: ρ({kind})")
        # equivariance: the update changes every input's net input by the same amount
        da = _per_sample_net_change(net_a, "2", x, *Fa.direction(*ga, kind))
        db = _per_sample_net_change(net_b, "3", x, *Fb.direction(*gb, kind))
        assert_close(db, da, **tol, what=f"{family}: Δnet of {kind}")
    assert_close(rb["shift_natural"], ra["shift_natural"], **tol, what="Theorem 2's shift")
    if family == "affine":  # the plain gradient is not invariant: the test can fail
        assert not torch.allclose(rb["rho_plain"], ra["rho_plain"], rtol=1e-3)


def test_arrowhead_is_not_shift_invariant_but_quasidiagonal_is():
    """Why ``quasidiagonal`` is Ollivier's reduction and not the arrowhead inverse."""
    P, t = torch.eye(5), torch.tensor([3.0, -2.0, 1.0, 2.5, -1.5])
    net_a, net_b = _pair_of_nets(P, t)
    x = torch.randn(40, 4)
    y = torch.randint(0, 4, (40,))
    Fa, Fb = unit_fisher(net_a, "2", x), unit_fisher(net_b, "3", x)
    ra = Fa.measures(*_mean_loglik_grad(net_a, "2", x, y))
    rb = Fb.measures(*_mean_loglik_grad(net_b, "3", x, y))
    assert_close(rb["rho_quasidiagonal"], ra["rho_quasidiagonal"], rtol=1e-8, atol=1e-10)
    assert not torch.allclose(rb["rho_arrowhead"], ra["rho_arrowhead"], rtol=1e-3)


# --- real nets against the brute-force reference ----------------------------------------------
REAL = [
    (c, layer)
    for c in CASES
    for layer in c.layers
    if (c.name, layer)
    in {
        ("mlp-elu-categorical", "0"),
        ("mlp-relu-gaussian", "2"),
        ("mlp-elu-bernoulli", "4"),
        ("cnn-categorical", "0"),
        ("cnn-categorical", "2"),
        ("cnn-odd-categorical", "conv2"),
        ("tokens-categorical", "embed"),
    }
]


def _loglik_grads(case, model, layer, x, y):
    module = dict(model.named_modules())[layer]
    o = model(x).reshape(x.shape[0], -1)
    if case.likelihood == "categorical":
        ll = -nn.functional.cross_entropy(o, y)
    elif case.likelihood == "bernoulli":
        ll = -nn.functional.binary_cross_entropy_with_logits(o, y.reshape(o.shape), reduction="sum")
        ll = ll / x.shape[0]
    else:
        ll = -0.5 * (y.reshape(o.shape) - o).square().sum() / x.shape[0]
    return torch.autograd.grad(ll, (module.weight, module.bias))


@pytest.mark.parametrize("rel_damping", [0.0, 1e-2])
@pytest.mark.parametrize("case_layer", REAL, ids=layer_case_id)
def test_measures_of_real_nets_match_reference(case_layer, rel_damping):
    case, layer = case_layer
    model, x, y = case.make()
    F = unit_fisher(model, layer, x, likelihood=case.likelihood)
    ref = reference_unit_fisher(model, layer, x, likelihood=case.likelihood)
    kappa = _cond(ref.matrix, rel_damping)
    if rel_damping == 0.0 and kappa.max() > 1e10:
        pytest.skip(f"undamped blocks singular here (condition number {kappa.max():.2g})")
    gw, gb = _loglik_grads(case, model, layer, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NearlySingularWarning)
        r = F.measures(gw, gb, rel_damping=rel_damping)
    G = _flat(gw.reshape(gw.shape[0], -1), gb)
    tol = conditioned(kappa, F.fan_in + 1)
    for kind in KINDS:
        u = reference_direction(ref, ref.mean_p, G, kind, rel_damping)
        assert_close(
            r[f"rho_{kind}"], reference_efficiency(ref, G, u, rel_damping), **tol, what=kind
        )
        if kind in ("plain", "blockdiag"):
            err = reference_bias_shift_error(ref, ref.mean_p, G, u, rel_damping)
            assert_close(r[f"shift_error_{kind}"], err, **tol, what=f"shift error {kind}")
    assert_close(F.n_eff, ref.n_eff, what="n_eff")


# --- n_eff -----------------------------------------------------------------------------------
N_EFF_CASES = [
    (c, c.layers[0]) for c in CASES if c.name in ("mlp-elu-categorical", "cnn-odd-categorical")
]


@pytest.mark.parametrize("kind", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("case_layer", N_EFF_CASES, ids=layer_case_id)
def test_n_eff_matches_reference_and_streams(case_layer, kind):
    case, layer = case_layer
    model, x, y = case.make()
    args = {"kind": kind, "likelihood": case.likelihood, "mc_samples": 3}
    F = unit_fisher(model, layer, x, y, generator=case.generator(), **args)
    ref = reference_unit_fisher(model, layer, x, y, generator=case.generator(), **args)
    assert_close(F.n_eff, ref.n_eff, what="n_eff")
    assert ((F.n_eff >= 1 - 1e-12) & (F.n_eff <= x.shape[0] + 1e-9)).all()
    streamed = unit_fisher(model, layer, x, y, batch_size=5, generator=case.generator(), **args)
    assert_close(streamed.c_sum, F.c_sum, what="Σ c_n streamed")
    assert_close(streamed.c_sq_sum, F.c_sq_sum, what="Σ c_n² streamed")


def test_n_eff_of_linear_unit_is_that_of_its_delta_bar_squared():
    """For a Linear unit c_n = δ̄²_n, so Σ_n c_n = N·c; a gaussian output layer has δ̄² ≡ 1,
    so n_eff = N."""
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(12, 3)
    F = unit_fisher(model, "0", x, likelihood="gaussian")
    assert_close(F.c_sum, 12 * F.c, what="Σ c_n = N·c")
    assert_close(F.n_eff, torch.full((2,), 12.0), what="n_eff = N")
    assert UnitFisher.from_matrix(F.matrix, F.mean_p).n_eff is None


# --- condition numbers, warnings, errors --------------------------------------------------------
def test_condition_number_exact_and_estimate():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(3, 12, 4, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 1.0])
    mats = X.transpose(-1, -2) @ X / 12
    F = UnitFisher.from_matrix(mats, torch.zeros(3))
    assert_close(F.condition_number(), torch.linalg.cond(mats), what="exact")
    assert_close(F.condition_number(exact=True, rel_damping=0.1), _cond(mats, 0.1), what="rel")
    assert_close(F.condition_number(0.5), torch.linalg.cond(mats + 0.5 * torch.eye(4)), what="abs")
    est = F.condition_number(exact=False)
    assert (est <= F.condition_number() * (1 + 1e-12)).all() and (est >= 1).all()


def _ill_block() -> UnitFisher:
    """A well-conditioned weight block A but a Schur complement c − bᵀA⁻¹b ≈ 1e-15·c:
    the full block's condition number is ~1e15 while A's own Cholesky sees nothing."""
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    b = torch.tensor([1.0, 1.0, 1.0])
    c = b @ torch.linalg.solve(A, b) * (1 + 1e-15)
    F = torch.cat([torch.cat([A, b[:, None]], 1), torch.cat([b, c[None]])[None]], 0)
    return UnitFisher.from_matrix(F, torch.zeros(3), layer="fc3")


ILL_CALLS = {
    "natural_gradient": lambda F, g, g0: F.natural_gradient(g, g0),
    "cosine": lambda F, g, g0: F.cosine(g, g0),
    "s": lambda F, g, g0: F.s(),
    "s_paper": lambda F, g, g0: F.s("paper"),
    "k": lambda F, g, g0: F.k(),
    "bias_shift": lambda F, g, g0: F.bias_shift(g, g0),
    "direction_natural": lambda F, g, g0: F.direction(g, g0, "natural"),
    "efficiency": lambda F, g, g0: F.efficiency(g, g0, "plain"),
    "bias_shift_error": lambda F, g, g0: F.bias_shift_error(g, g0, "plain"),
    "measures": lambda F, g, g0: F.measures(g, g0),
}


@pytest.mark.parametrize("name", list(ILL_CALLS))
def test_nearly_singular_block_warns(name):
    F = _ill_block()
    assert F.condition_number() > 1e14
    with pytest.warns(NearlySingularWarning, match=r"layer 'fc3'.*unit 0.*condition number"):
        ILL_CALLS[name](F, torch.ones(1, 3), torch.zeros(1))


def test_well_conditioned_block_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HAND.measures(HAND_G, HAND_G0)
        HAND.natural_gradient(HAND_G, HAND_G0)


def test_dead_units_are_marked_and_others_unchanged():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(3, 20, 4, generator=gen)
    X[..., -1] = 1.0
    mats = X.transpose(-1, -2) @ X / 20
    dead = mats.clone()
    dead[1] = 0.0
    g, g0 = torch.randn(3, 3, generator=gen), torch.randn(3, generator=gen)
    r_all = UnitFisher.from_matrix(mats, torch.zeros(3)).measures(g, g0, rel_damping=0.01)
    r = UnitFisher.from_matrix(dead, torch.zeros(3)).measures(g, g0, rel_damping=0.01)
    assert r["dead"].tolist() == [0.0, 1.0, 0.0]
    for key in ("rho_plain", "rho_natural", "shift_error_blockdiag"):
        assert torch.isnan(r[key][1])
        assert_close(r[key][[0, 2]], r_all[key][[0, 2]], what=key)


BAD = {
    "unknown kind": (
        lambda: HAND.direction(HAND_G, HAND_G0, "newton"),
        InputError,
        "unknown direction",
    ),
    "negative damping": (
        lambda: HAND.efficiency(HAND_G, HAND_G0, "plain", -1.0),
        InputError,
        "rel_damping",
    ),
    "nan damping": (
        lambda: HAND.measures(HAND_G, HAND_G0, float("nan")),
        InputError,
        "rel_damping",
    ),
    "bad direction": (lambda: HAND.efficiency(HAND_G, HAND_G0, 3), InputError, "kind name"),
    "bad pair shape": (
        lambda: HAND.efficiency(HAND_G, HAND_G0, (torch.ones(1, 2), torch.ones(1))),
        InputError,
        r"\[U, d\]",
    ),
    "singular 2x2": (
        lambda: M.quasidiagonal_solve(
            torch.tensor([[1.0], [1.0]]),
            torch.tensor([[0.5], [1.0]]),
            torch.ones(2),
            torch.ones(2, 1),
            torch.ones(2),
            layer="fc1",
            units=torch.tensor([4, 7]),
        ),
        SingularBlockError,
        r"layer 'fc1'.*unit 7",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_named_error(name):
    call, error, match = BAD[name]
    with pytest.raises(error, match=match):
        call()


def test_float32_in_float32_out_computed_in_float64():
    F32 = UnitFisher.from_matrix(HAND.matrix.float(), HAND.mean_p.float())
    u, u0 = F32.direction(HAND_G.float(), HAND_G0.float(), "natural")
    assert u.dtype == torch.float32
    rho = F32.efficiency(HAND_G.float(), HAND_G0.float(), "plain")
    assert rho.dtype == torch.float32
    assert F32.measures(HAND_G.float(), HAND_G0.float())["rho_plain"].dtype == torch.float64


def test_n_eff_of_a_float32_model_is_summed_in_float64():
    case = next(c for c in CASES if c.name == "cnn-categorical")
    model, x, _ = case.make()
    F64 = unit_fisher(model, "0", x)
    F32 = unit_fisher(model.float(), "0", x.float())
    assert F32.matrix.dtype == torch.float32 and F32.c_sum.dtype == torch.float64
    assert_close(F32.n_eff, F64.n_eff, rtol=1e-4, atol=0.0, what="n_eff float32 vs float64")


def test_n_eff_refuses_sums_not_sliced_with_the_blocks():
    F = UnitFisher.from_matrix(torch.eye(3).expand(2, 3, 3), torch.zeros(2))
    bad = UnitFisher(
        matrix=F.matrix,
        mean_p=F.mean_p,
        n=4,
        kind="exact",
        likelihood="categorical",
        layer="fc1",
        c_sum=torch.ones(5),
        c_sq_sum=torch.ones(5),
    )
    with pytest.raises(InputError, match=r"layer 'fc1'.*c_sum.*\[U\] = \[2\]"):
        _ = bad.n_eff


def test_a_singular_live_unit_beside_a_dead_one_is_named_by_its_place_in_the_layer():
    """The measures ran on the live units only, so a singular unit was named by its place
    among them ("1 of 3 units", UnitFisher.units[1] for unit 2) with a hint to pass
    "damping", not the measures' rel_damping."""
    blocks = torch.stack([torch.eye(3), torch.zeros(3, 3),
                     torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]), torch.eye(3)])  # fmt: skip
    F = UnitFisher.from_matrix(blocks, torch.zeros(2))
    g, g0 = torch.ones(4, 2), torch.ones(4)
    for call in (lambda: F.measures(g, g0, 0.0), lambda: F.efficiency(g, g0, "plain", 0.0),
                 lambda: F.direction(g, g0, "natural", 0.0)):  # fmt: skip
        named = r"1 of 4 units — unit 2 \(UnitFisher\.units\[2\]\).*rel_damping > 0"
        with pytest.raises(SingularBlockError, match=named) as err:
            call()
        assert err.value.positions.tolist() == [2]
    assert F.measures(g, g0, 1e-3)["dead"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_a_nan_on_a_blocks_diagonal_is_refused_not_called_dead():
    """``~(tr F > 0)`` took a NaN trace for a dead unit (NaN measures, no error); NaN is bad
    input and gets the error naming the unit."""
    blocks = torch.stack([torch.eye(2), torch.eye(2), torch.eye(2)]).double()
    blocks[1, 0, 0] = math.nan
    g, g0 = torch.ones(3, 1, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(InputError, match=r"NaN/Inf entries for unit 1"):
        M.measures(blocks, torch.zeros(1, dtype=torch.float64), g, g0, 1e-3)
