r"""natgrad.optim: the optimizers' steps against direct per-unit solves, Ollivier's closed
form, invariance under x → 1 − x, centring's T Tᵀ g, and ASDL's unit-wise natural gradient.

Ground truth is the brute-force Fisher (:func:`natgrad.reference.reference_unit_fisher`,
per-sample per-label autograd) and a dense ``torch.linalg.solve`` per unit, in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from natgrad.errors import (
    DivergedError,
    InputError,
    LayerUseError,
    NatgradWarning,
    SingularBlockError,
)
from natgrad.measures import arrowhead_solve
from natgrad.optim import UnitNaturalGradient, centre, solves, uncentre, update_centres
from natgrad.reference import reference_unit_fisher
from natgrad.testing import assert_close
from tests.cases import CASES, case_id

# These tests check each step's mathematics on tiny nets at rates chosen for it, not for
# training: their steps are large on purpose (the warning has its own test below).
pytestmark = pytest.mark.filterwarnings("ignore::natgrad.errors.LargeStepWarning")

STEP_CASES = [
    c
    for c in CASES
    if c.name
    in ("mlp-elu-categorical", "mlp-relu-gaussian", "cnn-categorical", "tokens-categorical",
        "mlp-elu-bernoulli")
]  # fmt: skip
STRUCTURES = ("unit", "quasidiagonal", "diagonal", "blockdiag")
LR, LAMBDA, LAYER_LAMBDA = 0.3, 0.05, 0.2


def _loss(likelihood: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""−(1/N) Σ_n ln p(y_n | z_n) up to a constant: the loss whose gradient is −g."""
    if likelihood == "categorical":
        return F.cross_entropy(out, y)
    o = out.reshape(out.shape[0], -1)
    t = y.reshape(o.shape)
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(o, t, reduction="sum") / o.shape[0]
    return 0.5 * (o - t).square().sum() / o.shape[0]


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _direct_direction(structure: str, matrix, g, lam: float, layer_lam: float = 0.0):
    r"""[U, d+1] by one dense solve per unit (a Python loop: the slow, obvious route), of
    F + (λ tr F + λ_layer mean_units tr F)/(d+1)·I."""
    out = []
    mean_trace = torch.diagonal(matrix, dim1=-2, dim2=-1).sum(-1).mean()
    for F_u, g_u in zip(matrix, g, strict=True):
        d1 = F_u.shape[0]
        M = F_u + (lam * torch.trace(F_u) + layer_lam * mean_trace) / d1 * torch.eye(d1)
        if structure == "blockdiag":  # A and c apart: two solves, no weight–bias coupling
            u_w = torch.linalg.solve(M[:-1, :-1], g_u[:-1])
            out.append(torch.cat([u_w, (g_u[-1] / M[-1, -1]).reshape(1)]))
        elif structure == "unit":
            out.append(torch.linalg.solve(M, g_u))
        elif structure == "diagonal":
            out.append(torch.linalg.solve(torch.diag(torch.diagonal(M)), g_u))
        else:  # Ollivier: a 2×2 solve of (w_i, w0) per input i, then the bias absorbs
            u_w = torch.stack([
                torch.linalg.solve(M[[i, -1]][:, [i, -1]], g_u[[i, -1]])[0] for i in range(d1 - 1)
            ])  # fmt: skip
            u_0 = (g_u[-1] - M[:-1, -1] @ u_w) / M[-1, -1]
            out.append(torch.cat([u_w, u_0.reshape(1)]))
    return torch.stack(out)


@pytest.mark.parametrize("layer_lam", (0.0, LAYER_LAMBDA), ids=("unit-damping", "layer-damping"))
@pytest.mark.parametrize("structure", (*STRUCTURES, "unit-window"))
@pytest.mark.parametrize("case", STEP_CASES, ids=case_id)
def test_step_equals_direct_solve(case, structure, layer_lam):
    r"""One step moves every unit by −lr·P_λ⁻¹∇ with P from the brute-force Fisher
    (``unit-window``: ``window=1``, the Woodbury route on the batch's factor rows; Linear
    layers share their rows, Conv2d units have their own)."""
    window = 1 if structure == "unit-window" else None
    structure = structure.removesuffix("-window")
    model, x, y = case.make()
    layers = _layers(model)
    ref = {n: reference_unit_fisher(model, n, x, kind="exact", likelihood=case.likelihood)
           for n in layers}  # fmt: skip
    _loss(case.likelihood, model(x), y).backward()
    before = {n: (m.weight.detach().clone(), m.bias.detach().clone()) for n, m in layers.items()}
    grads = {n: torch.cat([m.weight.grad.reshape(m.weight.shape[0], -1), m.bias.grad[:, None]], 1)
             for n, m in layers.items()}  # fmt: skip
    opt = UnitNaturalGradient(model, LR, structure=structure, kind="exact",
                              likelihood=case.likelihood, rel_damping=LAMBDA, ema=0.0,
                              layer_damping=layer_lam, window=window)  # fmt: skip
    opt.step(x)
    for n, m in layers.items():
        u = _direct_direction(structure, ref[n].matrix, grads[n], LAMBDA, layer_lam)
        w0, b0 = before[n]
        assert_close(m.weight.reshape(w0.shape[0], -1), w0.reshape(w0.shape[0], -1) - LR * u[:, :-1],
                     what=f"{case.name}/{n} weights ({structure})")  # fmt: skip
        assert_close(m.bias, b0 - LR * u[:, -1], what=f"{case.name}/{n} bias ({structure})")


def _data_block(shift: float, n: int = 40, d: int = 4, seed: int = 0):
    r"""A Linear unit's Fisher E[w ã ãᵀ] from inputs with mean ``shift``, and a gradient."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=gen) + shift
    w = torch.rand(n, generator=gen)
    at = torch.cat([a, torch.ones(n, 1)], 1)
    return a, w, (w[:, None, None] * at[:, :, None] * at[:, None, :]).mean(0, keepdim=True)


def _affine_map(d: int) -> torch.Tensor:
    r"""T with θ = Tθ′ for a′ = 1 − a: w = −w′, w0 = w0′ + Σ w′ (bias last)."""
    T = torch.eye(d + 1)
    T[:-1, :-1] *= -1.0
    T[-1, :-1] = 1.0
    return T


def test_quasidiagonal_is_ollivier_not_arrowhead_inverse():
    r"""Ollivier's quasi-diagonal inverse is invariant under a′ = 1 − a (T u′ = u); the
    inverse of the arrowhead matrix (diag + bias row/column) is a different direction and
    is not invariant."""
    _, _, F1 = _data_block(1.5)
    g = torch.randn(1, 5)
    T = _affine_map(4)
    F2, g2 = T.T @ F1 @ T, g @ T  # the same unit seeing 1 − a: F′ = TᵀFT, g′ = Tᵀg
    qd = solves.quasidiagonal_direction(*solves.quasidiagonal_parts(F1), g, 0.0)
    qd2 = solves.quasidiagonal_direction(*solves.quasidiagonal_parts(F2), g2, 0.0)
    assert_close(qd2 @ T.T, qd, what="quasi-diagonal step mapped back")

    def arrowhead(F, g):  # M⁻¹g, M = diag(F) plus the bias row and column (natgrad.measures)
        u, u0 = arrowhead_solve(torch.diagonal(F, dim1=-2, dim2=-1)[:, :-1], F[:, :-1, -1],
                                F[:, -1, -1], g[:, :-1], g[:, -1])  # fmt: skip
        return torch.cat([u, u0[:, None]], 1)

    u_arrow = arrowhead(F1, g)
    assert (u_arrow - qd).abs().max() > 0.1 * qd.abs().max()
    u_arrow2 = arrowhead(F2, g2) @ T.T
    assert (u_arrow2 - u_arrow).abs().max() > 0.1 * u_arrow.abs().max()


def test_quasidiagonal_equals_unit_for_one_input():
    r"""d = 1: the quasi-diagonal metric is the whole block (hand-checkable case of docs/theory.md)."""
    F1 = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]])
    g = torch.tensor([[1.0, 0.0]])
    assert_close(solves.quasidiagonal_direction(*solves.quasidiagonal_parts(F1), g, 0.0),
                 torch.tensor([[1.0, -1.0]]))  # fmt: skip


@pytest.mark.parametrize("structure", ("unit", "quasidiagonal"))
def test_step_invariant_to_input_flip(structure):
    r"""Training on x or on 1 − x (first layer compensated: w′ = −w, w0′ = w0 + Σw) gives the
    same function after one step, for the unit natural gradient and Ollivier's QD."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ELU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.rand(48, 4), torch.randint(0, 3, (48,))
    flip = copy.deepcopy(net)
    with torch.no_grad():
        flip[0].bias.add_(net[0].weight.sum(1))
        flip[0].weight.neg_()
    assert_close(flip(1 - x), net(x), what="compensated net")
    for model, inputs in ((net, x), (flip, 1 - x)):
        opt = UnitNaturalGradient(model, 0.5, structure=structure, kind="exact",
                                  rel_damping=0.0, layer_damping=0.0, ema=0.0)  # fmt: skip
        F.cross_entropy(model(inputs), y).backward()
        opt.step(inputs)
    probe = torch.rand(10, 4)
    assert (net(probe) - probe.new_zeros(1)).abs().max() > 0  # the step did something
    assert_close(flip(1 - probe), net(probe), what=f"function after one {structure} step")


def test_diagonal_step_is_not_invariant_to_input_flip():
    r"""The control: the diagonal preconditioner sees the flip (else the test above is moot)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ELU(), nn.Linear(6, 3))
    x, y = torch.rand(48, 4), torch.randint(0, 3, (48,))
    flip = copy.deepcopy(net)
    with torch.no_grad():
        flip[0].bias.add_(net[0].weight.sum(1))
        flip[0].weight.neg_()
    for model, inputs in ((net, x), (flip, 1 - x)):
        opt = UnitNaturalGradient(model, 0.5, structure="diagonal", kind="exact",
                                  rel_damping=0.0, ema=0.0)  # fmt: skip
        F.cross_entropy(model(inputs), y).backward()
        opt.step(inputs)
    probe = torch.rand(10, 4)
    assert (flip(1 - probe) - net(probe)).abs().max() > 1e-3


# --- centring ------------------------------------------------------------------------------


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ELU(), nn.Conv2d(3, 2, 2, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip


CENTRE_CASES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)), (5,)),
    "cnn": (_cnn, (2, 4, 4)),
}


@pytest.mark.parametrize("name", CENTRE_CASES)
def test_centred_net_same_function_and_sgd_step_is_TTt_g(name):
    r"""centre() and update_centres() keep the function; one SGD step of the centred net moves
    (w, w0) by −lr·T Tᵀ∇, T = [[I, 0], [−mᵀ, 1]] (docs/theory.md, the ``centred`` direction)."""
    build, shape = CENTRE_CASES[name]
    torch.manual_seed(1)
    net = build()
    x, y = torch.rand(12, *shape) + 0.5, torch.randint(0, 3, (12,))
    cnet = centre(net)
    assert_close(cnet(x), net(x), what="centred net, m = 0")
    update_centres(cnet, rate=1.0)  # m := the incoming means of this batch
    assert_close(cnet(x), net(x), what="centred net after moving m")
    assert all(m.centre.abs().max() > 0 for m in cnet.modules() if hasattr(m, "centre"))
    F.cross_entropy(net(x), y).backward()
    cnet.zero_grad()
    F.cross_entropy(cnet(x), y).backward()
    torch.optim.SGD(cnet.parameters(), lr=LR).step()
    after = uncentre(cnet)
    for (n, m), m_after in zip(_layers(net).items(), _layers(after).values(), strict=True):
        mean = dict(cnet.named_modules())[n].centre  # [d]
        U = m.weight.shape[0]
        gw, g0 = m.weight.grad.reshape(U, -1), m.bias.grad
        tg_w = gw - g0[:, None] * mean  # Tᵀg: (g_w − m g0, g0)
        step_w, step_0 = tg_w, g0 - tg_w @ mean  # T(Tᵀg)
        assert_close(m_after.weight.reshape(U, -1), m.weight.reshape(U, -1) - LR * step_w,
                     what=f"{name}/{n} weights")  # fmt: skip
        assert_close(m_after.bias, m.bias - LR * step_0, what=f"{name}/{n} bias")


def test_centred_layers_rejected_by_unit_natural_gradient():
    net = centre(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(InputError, match="centred"):
        UnitNaturalGradient(net, 0.1)


# --- the peer: ASDL's unit-wise natural gradient -------------------------------------------


PEER_CASES = {  # smooth units only: undamped blocks must be positive definite
    "mlp-elu": (lambda: nn.Sequential(nn.Linear(5, 8), nn.ELU(), nn.Linear(8, 6), nn.ELU(),
                                      nn.Linear(6, 4)), (5,)),
    "cnn-elu": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ELU(),
                                      nn.Conv2d(3, 2, 3, padding=1), nn.Tanh(), nn.Flatten(),
                                      nn.Linear(18, 4)), (2, 6, 6)),
}  # fmt: skip


def _peer_case(name: str):
    build, shape = PEER_CASES[name]
    torch.manual_seed(2)
    n = 40  # > d+1 of every layer: positive definite blocks without damping
    return build(), torch.randn(n, *shape), torch.randint(0, 4, (n,))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # ASDL's non-full backward hooks
@pytest.mark.parametrize("name", PEER_CASES)
def test_unit_fisher_blocks_agree_with_asdl(name):
    r"""ASDL's unit-wise exact Fisher (``fisher_shapes=["unit_wise"]``, bias last, the batch
    sum over ``data_size``) equals natgrad's blocks, Conv2d (weight-shared) included."""
    pytest.importorskip("asdl")
    from asdl.fisher import FisherConfig, get_fisher_maker

    model, x, y = _peer_case(name)
    cfg = FisherConfig(fisher_type="fisher_exact", fisher_shapes=["unit_wise"],
                       data_size=x.shape[0], loss_type="cross_entropy")  # fmt: skip
    maker = get_fisher_maker(model, cfg)
    dummy = maker.setup_model_call(model, x)
    maker.setup_loss_call(F.cross_entropy, dummy, y)
    maker.forward_and_backward()
    from natgrad.fisher import unit_fishers

    ours = unit_fishers(model, x, kind="exact")
    for n, m in _layers(model).items():
        assert_close(maker.get_fisher_tensor(m, "unit", "data"), ours[n].matrix, what=n)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # ASDL's non-full backward hooks
def test_unit_step_agrees_with_asdl():
    r"""ASDL (``asdfghjkl``) ``UnitWiseNaturalGradientMaker`` with the exact Fisher: its
    preconditioned gradient equals natgrad's unit step where the definitions match —
    no damping (ASDL adds an ABSOLUTE λI, natgrad λ·tr F/(d+1)·I per unit), ASDL's
    ``data_size`` = batch size (its Fisher is the batch SUM divided by data_size; natgrad's
    is the mean), and a mean-reduced loss. Both order the bias last (ASDL appends a ones
    column to the input) and refresh every step without an average (ema = 0 here). ASDL's
    unit-wise step fails on Conv2d (``UnitWise.mvp`` hstacks the 4-d weight gradient with the
    bias), so conv layers are compared on the blocks above."""
    pytest.importorskip("asdl")
    from asdl.precondition import PreconditioningConfig
    from asdl.precondition.natural_gradient import UnitWiseNaturalGradientMaker

    name = "mlp-elu"
    model, x, y = _peer_case(name)
    cfg = PreconditioningConfig(damping=0.0, data_size=x.shape[0])
    maker = UnitWiseNaturalGradientMaker(model, cfg, fisher_type="fisher_exact")
    dummy = maker.setup_model_call(model, x)
    maker.setup_loss_call(F.cross_entropy, dummy, y)
    maker.forward_and_backward()
    peer = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    UnitNaturalGradient(model, 1.0, kind="exact", rel_damping=0.0, layer_damping=0.0,
                        ema=0.0).step(x)  # fmt: skip
    for k, p in model.named_parameters():
        assert_close(before[k] - p.detach(), peer[k], rtol=1e-7, atol=1e-9, what=f"{name}/{k}")


# --- the optimizer's bookkeeping -----------------------------------------------------------


def _tiny(bn: bool = False):
    torch.manual_seed(0)
    mods = [nn.Linear(4, 6)] + ([nn.BatchNorm1d(6)] if bn else []) + [nn.ELU(), nn.Linear(6, 3)]
    return nn.Sequential(*mods), torch.randn(20, 4), torch.randint(0, 3, (20,))


def _train(model, opt, x, y, steps, start=0):
    for t in range(start, start + steps):
        xb, yb = x[(t * 5) % 20 :][:10], y[(t * 5) % 20 :][:10]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step(xb)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("structure", (*STRUCTURES, "unit-window"))
def test_state_dict_resume_is_bit_identical(structure, dtype):
    r"""EMA Fisher (or the window of factor rows), momentum, step count and the MC label
    generator survive state_dict(): 3 + 4 steps from a reloaded optimizer equal 7
    uninterrupted steps bit for bit. A bfloat16 net's Fisher is float32 and stays so (torch
    cast it to the parameter's bfloat16 on loading: a resumed run stepped with a rounded
    Fisher, 2.7 % off the uninterrupted one; a helper's hunt)."""
    window = 3 if structure == "unit-window" else None
    kw = dict(structure=structure.removesuffix("-window"), kind="mc", refresh_every=2, ema=0.8,
              momentum=0.9, window=window)  # fmt: skip
    model, x, y = _tiny()
    model, x = model.to(dtype), x.to(dtype)
    twin = copy.deepcopy(model)
    opt = UnitNaturalGradient(model, 0.1, **kw)
    _train(model, opt, x, y, 7)
    opt2 = UnitNaturalGradient(twin, 0.1, **kw)
    _train(twin, opt2, x, y, 3)
    state = copy.deepcopy(opt2.state_dict())
    opt3 = UnitNaturalGradient(twin, 0.1, **dict(kw, seed=99))
    opt3.load_state_dict(state)
    for p in twin.parameters():
        for k, v in opt2.state[p].items():
            if torch.is_tensor(v) and k.startswith(("fisher", "window_")):
                assert (
                    opt3.state[p][k].dtype == v.dtype == torch.promote_types(dtype, torch.float32)
                )
    _train(twin, opt3, x, y, 4, start=3)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_ema_averages_refreshed_fishers():
    r"""F ← ema·F + (1 − ema)·F_batch across refreshes (kind exact: no sampling)."""
    model, x, y = _tiny()
    opt = UnitNaturalGradient(model, 0.0, kind="exact", refresh_every=1, ema=0.25)
    expected = None
    for xb in (x[:10], x[10:]):
        batch = reference_unit_fisher(model, "0", xb).matrix
        expected = batch if expected is None else 0.25 * expected + 0.75 * batch
        opt.zero_grad()
        F.cross_entropy(model(xb), y[:10]).backward()
        opt.step(xb)
    assert_close(opt.state[model[0].weight]["fisher"], expected)


def test_batch_norm_gets_plain_step_and_keeps_running_stats():
    model, x, y = _tiny(bn=True)
    bn = model[1]
    F.cross_entropy(model(x), y).backward()
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    w, g = bn.weight.detach().clone(), bn.weight.grad.clone()
    UnitNaturalGradient(model, 0.1, kind="exact", rel_damping=0.1).step(x)
    assert_close(bn.weight, w - 0.1 * g)
    for before, now in zip(stats, (bn.running_mean, bn.running_var, bn.num_batches_tracked),
                           strict=True):  # fmt: skip
        assert torch.equal(before, now)


def test_refresh_step_needs_inputs_and_bad_settings_are_named():
    model, x, y = _tiny()
    opt = UnitNaturalGradient(model, 0.1)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(InputError, match="opt.step\\(inputs\\)"):
        opt.step()
    for bad in (dict(structure="kfac"), dict(ema=1.0), dict(refresh_every=0),
                dict(refresh_every=True), dict(rel_damping=-1.0), dict(kind="fisher")):  # fmt: skip
        with pytest.raises(InputError):
            UnitNaturalGradient(model, 0.1, **bad)


def test_memory_budget_falls_back_to_quasidiagonal_with_a_warning():
    model, x, y = _tiny()
    with pytest.warns(NatgradWarning, match="layers 0 "):
        opt = UnitNaturalGradient(model, 0.1, memory_budget=6 * 5**2 - 1)
    assert opt.structures == {"0": "quasidiagonal", "2": "unit"}
    F.cross_entropy(model(x), y).backward()
    opt.step(x)
    assert set(opt.state[model[0].weight]) >= {"fisher_diag", "fisher_bias"}


def test_memory_budget_holds_for_blockdiag_too():
    r"""``blockdiag`` keeps dense blocks as ``unit`` does, so a layer over the budget takes the
    O(U·d) structure without weight–bias coupling, ``diagonal`` (blockdiag ignored the budget
    and kept the dense blocks)."""
    model, x, y = _tiny()
    with pytest.warns(NatgradWarning, match="layers 0 .*the diagonal structure"):
        opt = UnitNaturalGradient(model, 0.1, structure="blockdiag", memory_budget=6 * 5**2 - 1)
    assert opt.structures == {"0": "diagonal", "2": "blockdiag"}
    F.cross_entropy(model(x), y).backward()
    opt.step(x)
    assert "fisher" not in opt.state[model[0].weight]


def test_a_grouped_conv_is_refused_unless_it_is_a_plain_layer():
    r"""A grouped Conv2d has no unit Fisher in natgrad: the optimizer names it and the way
    out (it gave the layer plain SGD silently, at the natural gradient's learning rate)."""
    from natgrad.errors import UnsupportedLayerError

    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ELU(), nn.Flatten(), nn.Linear(36, 3))
    with pytest.raises(UnsupportedLayerError, match="layer '0' is a grouped Conv2d.*plain_layers"):
        UnitNaturalGradient(net, 0.1)
    assert UnitNaturalGradient(net, 0.1, plain_layers=["0"]).structures == {"3": "unit"}


def test_undamped_constant_input_is_named():
    r"""An always-zero input (an MNIST border pixel) makes the QD minors zero at λ = 0."""
    model, x, y = _tiny()
    x[:, 1] = 0.0
    F.cross_entropy(model(x), y).backward()
    opt = UnitNaturalGradient(model, 0.1, structure="quasidiagonal", kind="exact",
                              rel_damping=0.0, layer_damping=0.0)  # fmt: skip
    with pytest.raises(SingularBlockError, match="layer '0'.*raise rel_damping or layer_damping"):
        opt.step(x)
    assert torch.isfinite(model[0].weight).all()  # the failed step changed nothing


@pytest.mark.parametrize("structure", STRUCTURES)
def test_dead_unit_block_uses_the_peers_scale(structure):
    r"""A zero block (a dead ReLU unit) is preconditioned by s·I, s = the other units' mean
    tr F/(d+1): finite, and g/(s(1 + λ)) exactly."""
    _, _, F1 = _data_block(0.5)
    matrix = torch.cat([F1, torch.zeros_like(F1)])  # [2, 5, 5]: unit 1 is dead
    g = torch.randn(2, 5)
    s = torch.trace(F1[0]) / 5
    diag, col = solves.quasidiagonal_parts(matrix)
    u = {
        "unit": lambda: solves.unit_direction(solves.unit_factor(matrix, LAMBDA), g),
        "blockdiag": lambda: solves.unit_direction(
            solves.unit_factor(solves.without_coupling(matrix), LAMBDA), g
        ),
        "quasidiagonal": lambda: solves.quasidiagonal_direction(diag, col, g, LAMBDA),
        "diagonal": lambda: solves.diagonal_direction(diag, g, LAMBDA),
    }[structure]()
    assert_close(u[1], g[1] / (s * (1 + LAMBDA)), what="dead unit")


def test_a_dead_unit_does_not_lower_its_peers_layer_damping():
    r"""The layer term λ_layer·mean tr F counts a dead unit at its peers' mean (its zero
    block is taken as s·I first), so the live unit's μ is (λ + λ_layer)·tr F₁/(d+1), not
    λ·tr F₁/(d+1) + λ_layer·(tr F₁ + 0)/(2(d+1)) (a helper read damping.py's definition
    that way: 12 % apart; now documented in natgrad.damping and the optimizer)."""
    _, _, F1 = _data_block(0.5)
    matrix = torch.cat([F1, torch.zeros_like(F1)]).double()  # unit 1 is dead
    g = torch.randn(2, 5, dtype=torch.float64)
    u = solves.unit_direction(solves.unit_factor(matrix, 0.1, layer_damping=0.3), g)
    mu = (0.1 + 0.3) * torch.trace(matrix[0]) / 5
    want = torch.linalg.solve(matrix[0] + mu * torch.eye(5, dtype=torch.float64), g[0])
    assert_close(u[0], want, what="live unit beside a dead one")


@pytest.mark.parametrize("structure", STRUCTURES)
def test_a_non_finite_block_is_a_divergence_not_a_dead_unit(structure):
    r"""A unit whose running Fisher went NaN is named as a divergence; it was taken for a dead
    unit (its trace fails ``> 0``) and stepped with the peers' scale, the NaN kept for good."""
    from natgrad.errors import DivergedError

    model, x, y = _tiny()
    opt = UnitNaturalGradient(model, 0.01, structure=structure, kind="exact", refresh_every=100)
    F.cross_entropy(model(x), y).backward()
    opt.step(x)
    state = opt.state[model[0].weight]
    state["fisher" if "fisher" in state else "fisher_diag"][1] = float("nan")
    opt._factors = {}  # the next step rebuilds its solves from the running Fisher
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(DivergedError, match="layer '0': the unit Fisher of unit 1 holds NaN"):
        opt.step(x)


def test_a_singular_block_in_the_optimizer_names_its_own_damping():
    r"""The optimizer's singular-block error names rel_damping and layer_damping (it had
    said "pass damping > 0 … or drop these units", which the optimizer has no way to do)."""
    model, x, y = _tiny()
    x = x[:3]
    F.cross_entropy(model(x), y[:3]).backward()
    opt = UnitNaturalGradient(model, 0.1, kind="exact", rel_damping=0.0, layer_damping=0.0)
    with pytest.raises(SingularBlockError, match="Raise rel_damping or layer_damping") as e:
        opt.step(x)
    assert "drop these units" not in str(e.value)
    for structure in ("quasidiagonal", "diagonal"):  # every structure names them alike
        x0 = x.clone()
        x0[:, 1] = 0.0  # a constant input: a zero entry on the diagonal, singular at λ = 0
        model.zero_grad()
        F.cross_entropy(model(x0), y[:3]).backward()
        opt = UnitNaturalGradient(model, 0.1, structure=structure, kind="exact",
                                  rel_damping=0.0, layer_damping=0.0)  # fmt: skip
        with pytest.raises(SingularBlockError, match="raise rel_damping or layer_damping") as e:
            opt.step(x0)
        assert "drop these units" not in str(e.value), structure


# --- the windowed unit natural gradient (Woodbury on the factor rows) ----------------------


def test_window_weights_the_last_batches_by_ema():
    r"""``window=2``, ema = 0.5: the metric is (F_new + 0.5·F_old)/1.5, and a third refresh
    drops the oldest batch."""
    model, x, y = _tiny()
    model.double()
    x = x.double()
    opt = UnitNaturalGradient(model, 0.0, kind="exact", refresh_every=1, ema=0.5, window=2,
                              rel_damping=LAMBDA, layer_damping=0.0)  # fmt: skip
    batches = (x[:7], x[7:14], x[14:])
    for t, xb in enumerate(batches):
        opt.zero_grad()
        F.cross_entropy(model(xb), y[: xb.shape[0]]).backward()
        if t == 2:  # lr = 0 so far: the blocks of batches 1 and 2 are those of these weights
            old, new = (reference_unit_fisher(model, "0", b).matrix for b in batches[1:])
            opt.param_groups[0]["lr"] = LR
            w0 = model[0].weight.detach().clone()
            g = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], 1)
        opt.step(xb)
    metric = (new + 0.5 * old) / 1.5
    u = _direct_direction("unit", metric, g, LAMBDA)
    assert_close(model[0].weight, w0 - LR * u[:, :-1], what="windowed metric")
    assert "window_rows_2" not in opt.state[model[0].weight]


def test_windowed_dead_unit_uses_the_peers_scale():
    from natgrad.optim.lowrank import lowrank_apply, lowrank_factor

    rows = torch.randn(1, 6, 5, dtype=torch.float64)
    scales = torch.rand(2, 6, dtype=torch.float64)
    scales[1] = 0.0  # unit 1 is dead on every row
    g = torch.randn(2, 5, dtype=torch.float64)
    u = lowrank_apply(lowrank_factor([rows], [scales], [1.0], LAMBDA), g)
    V = rows[0] * scales[0, :, None]
    s = V.square().sum() / 5
    assert_close(u[1], g[1] / (s * (1 + LAMBDA)), what="dead unit (window)")


def test_window_settings_are_checked():
    model, _, _ = _tiny()
    for bad in (dict(window=0), dict(window=2.0), dict(window=2, structure="diagonal"),
                dict(window=2, rel_damping=0.0, layer_damping=0.0)):  # fmt: skip
        with pytest.raises(InputError, match="window"):
            UnitNaturalGradient(model, 0.1, **bad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_explicit_inverse_step_equals_the_cholesky_solve(dtype):
    """The per-refresh F_λ⁻¹ applied by one matmul gives the Cholesky solve's direction, to
    the tolerance the block's conditioning allows in the step's dtype."""
    from natgrad.linalg import condition_number
    from natgrad.testing import conditioned

    torch.manual_seed(0)
    U, d1, N = 6, 9, 40
    rows = torch.randn(U, N, d1, dtype=torch.float64)
    matrix = rows.transpose(1, 2) @ rows / N  # [U, d+1, d+1]
    g = torch.randn(U, d1, dtype=torch.float64)
    ref = solves.unit_direction(solves.unit_factor(matrix, LAMBDA), g)
    inv = solves.unit_inverse(matrix, LAMBDA, dtype=dtype)
    assert inv.dtype == dtype
    got = solves.unit_apply(inv, g.to(dtype))
    damped = matrix + torch.diag_embed(
        solves.relative_shift(torch.diagonal(matrix, dim1=-2, dim2=-1), LAMBDA, 0.0)
        .unsqueeze(-1).expand(U, d1))  # fmt: skip
    kappa = float(condition_number(damped).max())
    assert_close(got.double(), ref, **conditioned(kappa, d1, dtype))


def test_default_damping_keeps_a_fresh_mnist_fc_finite():
    """The preconditioner's defaults (natgrad.damping.STEP_DAMPING, LAYER_DAMPING) on the
    case that diverged with layer_damping = 0: a freshly initialised mnist-fc on real MNIST
    batches, dense unit natural gradient refreshed every 10 steps."""
    from natgrad.damping import LAYER_DAMPING, STEP_DAMPING
    from natgrad.data import load_dataset
    from natgrad.models import build_model
    from natgrad.optim import UnitNaturalGradient

    ds = load_dataset("mnist", None, seed=0)
    batches = [(ds.train_x[i * 64 : (i + 1) * 64].float().view(64, -1),
                ds.train_y[i * 64 : (i + 1) * 64]) for i in range(6)]  # fmt: skip

    def train(**kw):
        torch.manual_seed(0)
        net = build_model("mnist-fc", unit="elu", seed=0).float()
        opt = UnitNaturalGradient(net, lr=1e-3, **kw)
        for xb, yb in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step(xb)
        return net

    assert (STEP_DAMPING, LAYER_DAMPING) == (0.1, 0.3)
    net = train()  # with layer_damping = 0 the largest weight reached 3.5e25 in float32
    assert max(p.abs().max().item() for p in net.parameters()) < 10.0


def test_plain_layers_take_the_sgd_step_at_their_own_rate():
    r"""``plain_layers``: the named layer moves by −lr·scale·∇ (no preconditioning), the
    others by their natural step; the scale follows a schedule that sets the group's lr."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ELU(), nn.Linear(4, 3))
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    ref = copy.deepcopy(net)
    for m in (net, ref):
        F.cross_entropy(m(x), y).backward()
    w0, g0 = net[0].weight.detach().clone(), net[0].weight.grad.clone()
    opt = UnitNaturalGradient(net, 0.01, kind="exact", plain_layers=("0",), plain_lr_scale=30.0)
    full = UnitNaturalGradient(ref, 0.01, kind="exact")
    opt.step(x)
    full.step(x)
    assert_close(net[0].weight, w0 - 0.3 * g0, what="plain layer")
    assert_close(net[2].weight, ref[2].weight, what="preconditioned layer")
    assert sorted(opt.structures) == ["2"]
    assert {g.get("lr_scale", 1.0) for g in opt.param_groups} == {1.0, 30.0}
    with pytest.raises(InputError, match="not Linear/Conv2d"):
        UnitNaturalGradient(net, 0.01, plain_layers=("1",))
    with pytest.raises(InputError, match="plain_lr_scale"):
        UnitNaturalGradient(net, 0.01, plain_lr_scale=0.0)


def test_centre_skips_the_named_layers():
    net = nn.Sequential(nn.Linear(5, 4), nn.ELU(), nn.Linear(4, 3))
    out = centre(net, skip=("0",))
    assert type(out[0]) is nn.Linear and type(out[2]).__name__ == "CentredLinear"
    with pytest.raises(InputError, match="names no layer"):
        centre(net, skip=("9",))


def test_centre_and_uncentre_keep_a_frozen_layer_frozen():
    net = nn.Sequential(nn.Linear(5, 4), nn.ELU(), nn.Linear(4, 3), nn.ELU(), nn.Linear(3, 2))
    net[0].requires_grad_(False)
    net[2].bias.requires_grad_(False)
    flags = lambda m: [p.requires_grad for p in m.parameters()]  # noqa: E731
    want = [False, False, True, False, True, True]
    assert flags(centre(net)) == want  # the centre is a buffer; (v, v0) as (w, w0) were
    assert flags(uncentre(centre(net))) == want


def _ng_steps(layer_damping: float, lr: float, steps: int = 20):
    import warnings

    from natgrad.data import load_dataset
    from natgrad.errors import DivergedError
    from natgrad.models import build_model
    from natgrad.optim import UnitNaturalGradient

    ds = load_dataset("mnist", None, seed=0)
    net = build_model("mnist-fc", "relu", seed=0, dtype=torch.float32)
    opt = UnitNaturalGradient(net, lr=lr, rel_damping=0.1, layer_damping=layer_damping)
    diverged = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for i in range(steps):
                xb, yb = ds.train_x[i * 64 : (i + 1) * 64], ds.train_y[i * 64 : (i + 1) * 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xb), yb).backward()
                opt.step(xb)
        except DivergedError:
            diverged = opt.steps
    from natgrad.errors import LargeStepWarning

    return diverged, [w for w in caught if issubclass(w.category, LargeStepWarning)]


@pytest.mark.slow
def test_a_step_that_would_blow_up_is_named_before_the_nan():
    # issue 24: without the layer damping the dense unit NG diverges within 5 steps on a
    # fresh mnist-fc even at lr 1e-5; the warning names the layer steps before the NaN
    diverged, warned = _ng_steps(layer_damping=0.0, lr=1e-5)
    assert diverged is not None and warned
    first = int(str(warned[0].message).split("step ")[1].split(":")[0])
    assert first < diverged and "lower lr or raise the damping" in str(warned[0].message)
    # the defaults (layer_damping 0.3) at the README's rate: no warning, no divergence
    diverged, warned = _ng_steps(layer_damping=0.3, lr=1e-4)
    assert diverged is None and not warned


def test_undamped_zero_diagonal_names_its_units():
    r"""The diagonal preconditioner at λ = 0 with zero Fisher entries (constant inputs) names
    the units as every other singular-block message does (``linalg._names``)."""
    from natgrad.optim.solves import diagonal_coefficients

    diag = torch.ones(7, 4, dtype=torch.float64)
    diag[2:5, 1] = 0.0
    with pytest.raises(SingularBlockError, match=r"layer 'fc2'.*for unit 2, unit 3, unit 4 \("):
        diagonal_coefficients(diag, 0.0, layer="fc2")
    assert torch.isfinite(diagonal_coefficients(diag, 1e-3, layer="fc2")).all()


def test_centring_keeps_a_layer_held_twice_one_layer():
    r"""A Linear registered under two parents (weight tying) stays one layer through
    ``centre`` and ``uncentre``, computing the same function (each parent got its own copy)."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4), nn.ELU())
            self.shared = self.block[0]
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.shared(self.block(x)))

    torch.manual_seed(0)
    net, x = Tied(), torch.randn(5, 4)
    c = centre(net)
    assert c.block[0] is c.shared and sum(p.numel() for p in c.parameters()) == 30
    c(x)  # a training-mode forward records the batch mean
    update_centres(c, rate=1.0)
    u = uncentre(c)
    assert u.block[0] is u.shared and type(u.shared) is nn.Linear
    assert_close(u(x), net(x), what="uncentred tied net")
    twice = nn.Sequential(nn.Linear(4, 4), nn.ELU())
    twice.append(twice[0])  # one parent holding the layer in two slots
    c = centre(twice)
    assert c[0] is c[2] and sum(p.numel() for p in c.parameters()) == 20
    u2 = uncentre(c)
    assert u2[0] is u2[2] and type(u2[2]) is nn.Linear
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # a shared parameter in two layers: refused, never untied
    with pytest.raises(InputError, match="share a parameter"):
        centre(nn.Sequential(a, nn.ELU(), b))


def test_a_frozen_layer_is_not_preconditioned_and_the_state_saves():
    """A frozen layer joined the preconditioned layers: its Fisher was refreshed into the state
    of a weight in no parameter group, and state_dict() raised KeyError (a helper's find).
    Frozen (or half-frozen) layers take the plain step; the frozen parameters do not move."""
    model = nn.Sequential(nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 5), nn.ELU(), nn.Linear(5, 3))
    model[0].requires_grad_(False)
    model[2].weight.requires_grad_(False)  # half frozen: its bias takes plain SGD
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    frozen = [model[0].weight.clone(), model[0].bias.clone(), model[2].weight.clone()]
    bias = model[2].bias.detach().clone()
    opt = UnitNaturalGradient(model, 0.1, kind="exact")
    assert list(opt.layers) == ["4"]
    F.cross_entropy(model(x), y).backward()
    grad = model[2].bias.grad.clone()
    opt.step(x)
    state = opt.state_dict()  # raised KeyError
    assert sum("fisher" in v for v in state["state"].values()) == 1  # the one layer's
    for before, p in zip(frozen, (model[0].weight, model[0].bias, model[2].weight), strict=True):
        assert torch.equal(before, p)
    assert_close(model[2].bias.detach(), bias - 0.1 * grad, what="the half-frozen layer's bias")


def test_tied_weights_are_refused_unless_plain():
    """Two preconditioned layers sharing a weight kept one running Fisher, mixing both
    layers' blocks into it (a helper's find); refused, naming them, unless listed plain."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))

    with pytest.raises(InputError, match=r"a\.weight is b\.weight \(tied weights\).*plain_layers"):
        UnitNaturalGradient(Tied(), 0.1)
    assert list(UnitNaturalGradient(Tied(), 0.1, plain_layers=["a", "b"]).layers) == ["head"]


@pytest.mark.parametrize("structure", ("unit", "quasidiagonal", "unit-window"))
def test_a_failed_step_leaves_the_state_as_it_was(structure):
    """A NaN gradient on a refresh step raised DivergedError ("the weights were not changed")
    after the refresh had moved the running Fisher and the label generator, so the retried
    step counted its batch twice (37 % off, a helper's find). Now a step refreshes once: a
    retry, also after a bad lr in a later parameter group (which had moved the earlier
    groups' weights), equals never having failed, bit for bit."""
    window = 2 if structure == "unit-window" else None
    kw = dict(structure=structure.removesuffix("-window"), kind="mc", refresh_every=2, ema=0.8,
              momentum=0.9, window=window)  # fmt: skip
    model, x, y = _tiny()
    twin = copy.deepcopy(model)
    opt, opt2 = UnitNaturalGradient(model, 0.1, **kw), UnitNaturalGradient(twin, 0.1, **kw)
    _train(model, opt, x, y, 5)
    _train(twin, opt2, x, y, 2)
    twin.zero_grad()
    F.cross_entropy(twin(x[:10]), y[:10]).backward()
    twin[0].weight.grad[0, 0] = float("nan")  # step 2 refreshes
    with pytest.raises(DivergedError, match="not finite"):
        opt2.step(x[10:])
    twin.zero_grad()
    F.cross_entropy(twin(x[:10]), y[:10]).backward()
    lr = opt2.param_groups[-1]["lr"]
    opt2.param_groups[-1]["lr"] = float("nan")
    weights = [p.detach().clone() for p in twin.parameters()]
    with pytest.raises(InputError, match="lr=nan"):
        opt2.step(x[10:])
    assert all(torch.equal(a, b) for a, b in zip(weights, twin.parameters(), strict=True))
    opt2.param_groups[-1]["lr"] = lr
    _train(twin, opt2, x, y, 3, start=2)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_damping_set_between_refreshes_takes_effect_at_the_next_step():
    """The factors were cached per refresh, so opt.rel_damping = … (what the LargeStepWarning
    advises) did nothing until the next refresh (a helper's find)."""
    model, x, y = _tiny()
    twin = copy.deepcopy(model)
    opt = UnitNaturalGradient(model, 0.0, kind="exact", rel_damping=0.1, refresh_every=10)
    opt2 = UnitNaturalGradient(twin, 0.0, kind="exact", rel_damping=10.0, refresh_every=10)
    for net, o in ((model, opt), (twin, opt2)):  # lr 0: the same Fisher, the weights unmoved
        F.cross_entropy(net(x), y).backward()
        o.step(x)
    opt.rel_damping = 10.0
    before = [p.detach().clone() for p in model.parameters()]
    for o in (opt, opt2):
        o.param_groups[0]["lr"] = 0.1
        o.step()  # not a refresh step: the same gradients
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    opt.layer_damping = -1.0
    with pytest.raises(InputError, match=r"layer_damping must be a finite number >= 0, got -1\.0"):
        opt.step()


def test_a_layer_the_engine_cannot_read_names_plain_layers():
    class Aux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.aux, self.head = nn.Linear(4, 5), nn.Linear(5, 2), nn.Linear(5, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))  # aux is never called

    model, x, y = Aux(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(LayerUseError, match=r"'aux'\].*not called.*plain_layers=\[\.\.\.\]"):
        UnitNaturalGradient(model, 0.1).step(x)
    opt = UnitNaturalGradient(model, 0.1, plain_layers=["aux"])
    opt.step(x)
    assert opt.steps == 1 and list(opt.layers) == ["body", "head"]


@pytest.mark.parametrize("structure", ["unit", "quasidiagonal"])
def test_a_per_output_mean_loss_takes_the_per_example_step_with_its_loss_scale(structure):
    """The autoencoder trains on binary cross-entropy's mean over its D pixels, but the
    optimizer's Bernoulli Fisher is per example: its step was F⁻¹∇/D, 1/784 of the
    documented one on mnist-ae (a helper's hunt). ``loss_scale=1/D`` (what training gives
    it) takes the per-example step from the per-pixel gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 3), nn.ELU(), nn.Linear(3, 6)).double()
    x = torch.rand(20, 6, dtype=torch.float64)
    nets = {scale: copy.deepcopy(net) for scale in (1.0, 1 / 6)}
    for scale, model in nets.items():
        opt = UnitNaturalGradient(model, 0.1, structure=structure, kind="exact",
                                  likelihood="bernoulli", ema=0.0, refresh_every=1,
                                  loss_scale=scale)  # fmt: skip
        reduction = "sum" if scale == 1.0 else "mean"
        loss = F.binary_cross_entropy_with_logits(model(x), x, reduction=reduction)
        (loss / x.shape[0] if scale == 1.0 else loss).backward()  # per example vs per pixel
        opt.step(x)
    for (name, a), b in zip(nets[1.0].named_parameters(), nets[1 / 6].parameters(), strict=True):
        assert_close(b, a, what=name)
    with pytest.raises(InputError, match="loss_scale must be a finite number > 0"):
        UnitNaturalGradient(net, 0.1, loss_scale=0.0)


def test_training_gives_the_autoencoders_optimizer_its_loss_scale():
    from natgrad.training.config import default_config
    from natgrad.training.engine import setup

    config = default_config("mnist-ae", dataset="digits", optimizer="qd-ng", train_size=64)
    _, _, opt = setup(config, torch.device("cpu"))
    assert opt.loss_scale == 1 / 64  # digits: 8 × 8 pixels
    _, _, opt = setup(default_config("mnist-fc", dataset="digits", optimizer="qd-ng",
                                     train_size=64), torch.device("cpu"))  # fmt: skip
    assert opt.loss_scale == 1.0
