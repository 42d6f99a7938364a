"""The direction audit (``natgrad.analysis.directions``): each direction checked by a second
route (the unit natural gradient against natgrad's own unit Fisher solve, centred SGD against
autograd through the centred parametrisation, Adam's v against a loop over inputs), and the
measures' invariances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from natgrad.analysis.directions import METHODS, audit, directions
from natgrad.errors import InputError
from natgrad.models import build_model
from natgrad.network import loglik_gradient, network_fisher
from natgrad.testing import assert_close


@pytest.fixture(scope="module")
def setup():
    net = build_model("mnist-fc", "elu", in_features=6, width=5, depth=2, num_classes=3,
                      seed=1, dtype=torch.float64).eval()  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    probe = (torch.randn(30, 6, generator=gen, dtype=torch.float64),
             torch.randint(0, 3, (30,), generator=gen))  # fmt: skip
    F = network_fisher(net, probe[0])
    return net, F, loglik_gradient(net, x, y), (x, y), probe


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_method_and_the_measures(setup):
    net, F, g, train, probe = setup
    rows = {r["method"]: r for r in audit(net, F, g, train, probe)}
    assert list(rows) == list(METHODS)
    assert rows["full"]["rho_full"] == pytest.approx(1.0, abs=1e-10)
    assert rows["unit"]["rho_unit"] == pytest.approx(1.0, abs=1e-10)
    for r in rows.values():
        assert -1.0 <= r["rho_full"] <= 1.0 + 1e-12 and -1.0 <= r["rho_unit"] <= 1.0 + 1e-12
    # the natural gradient has the largest decrease per unit of KL, among these directions
    best = max(r["decrease_per_kl"] for r in rows.values())
    assert rows["full"]["decrease_per_kl"] >= best * (1 - 1e-3)  # damped F_λ⁻¹g: near the top
    # invariant to the direction's scale
    u = directions(net, F, g, train, probe, methods=("plain",))["plain"]
    scaled = audit(net, F, 3.0 * g, train, probe, methods=("plain",))[0]
    assert scaled["rho_full"] == pytest.approx(rows["plain"]["rho_full"], rel=1e-12)
    assert torch.equal(u, g)


def test_unit_direction_is_natgrads_unit_natural_gradient(setup):
    net, F, g, train, probe = setup
    u = directions(net, F, g, train, probe, methods=("unit",))["unit"]
    D = F.damping(1e-3)
    offsets = dict(zip(F.names, F.offsets, strict=True))
    for name, m in net.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        B = F.unit_blocks(name)
        idx = torch.stack([i for layer, _, i in F.units if layer == name])
        mu = D[idx[:, 0]]
        w0, b0 = offsets[f"{name}.weight"], offsets[f"{name}.bias"]
        U, d = m.weight.shape
        gu = torch.cat([g[w0 : w0 + U * d].reshape(U, d), g[b0 : b0 + U, None]], 1)
        want = torch.linalg.solve(B + mu[:, None, None] * torch.eye(d + 1, dtype=B.dtype), gu)
        got = torch.cat([u[w0 : w0 + U * d].reshape(U, d), u[b0 : b0 + U, None]], 1)
        assert_close(got, want, what=name)


def test_centred_direction_is_the_gradient_step_of_the_centred_parametrisation(setup):
    net, F, g, train, probe = setup
    u = directions(net, F, g, train, probe, methods=("centred",))["centred"]
    # second route: one Linear layer at a time, b = v0 − w·m with m the layer's mean input;
    # the SGD step in (w, v0) mapped back to (w, b)
    x, y = train
    offsets = dict(zip(F.names, F.offsets, strict=True))
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: inputs.__setitem__(n, a[0]))
             for n, m in net.named_modules() if isinstance(m, nn.Linear)]  # fmt: skip
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for name, m in net.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        mean = inputs[name].mean(0)
        w = m.weight.detach().clone().requires_grad_(True)
        v0 = (m.bias.detach() + m.weight.detach() @ mean).requires_grad_(True)
        orig_w, orig_b = m.weight, m.bias

        def loglik(w=w, v0=v0, m=m, mean=mean, orig_w=orig_w, orig_b=orig_b):
            del m.weight, m.bias
            m.weight, m.bias = w, v0 - w @ mean
            try:
                return -nn.functional.cross_entropy(net(x), y)
            finally:
                del m.weight, m.bias
                m.weight, m.bias = orig_w, orig_b

        gw, gv0 = torch.autograd.grad(loglik(), (w, v0))
        w0, b0 = offsets[f"{name}.weight"], offsets[f"{name}.bias"]
        U, d = m.weight.shape
        assert_close(u[w0 : w0 + U * d].reshape(U, d), gw, what=f"{name} weights")
        assert_close(u[b0 : b0 + U], gv0 - gw @ mean, what=f"{name} bias")


def test_adam_direction_from_per_input_gradients(setup):
    net, F, g, train, probe = setup
    u = directions(net, F, g, train, probe, methods=("adam",))["adam"]
    x, y = train
    sq = torch.zeros_like(g)
    for i in range(x.shape[0]):
        sq += loglik_gradient(net, x[i : i + 1], y[i : i + 1]).square()
    assert_close(u, g / ((sq / x.shape[0]).sqrt() + 1e-8))


def test_unknown_method(setup):
    net, F, g, train, probe = setup
    with pytest.raises(InputError, match="unknown methods"):
        directions(net, F, g, train, probe, methods=("lbfgs",))
