r"""A direction audit: how close is each optimizer's update direction to the natural gradient,
measured in the whole-network Fisher of a net small enough to hold it.

For a checkpoint, its exact Fisher F (:func:`natgrad.network.network_fisher`, on a held-out
probe) and g, the gradient of the mean log-likelihood on the training data, every method
gives a direction u; all share one damping, the diagonal D of F_λ = F + D that puts each
unit's μ_u = λ·tr F_uu/(d+1) on its entries (:meth:`~natgrad.network.NetworkFisher.damping`,
λ = ``rel_damping``), so that the comparison is of curvature models, not of dampings:

============== =====================================================================
``plain``      u = g (SGD)
``centred``    centred SGD in the original parameters: u_w = g_w − ā g_b,
               u_b = g_b − āᵀu_w (ā each layer's mean incoming activation on the training
               data; Raiko et al. 2012, the reparametrisation of ``natgrad.optim.centre``;
               Linear layers, other parameters keep the plain step)
``diagonal``   u = diag(F_λ)⁻¹ g
``qd``         Ollivier's quasi-diagonal: per unit, diag(A_λ), the bias column and c_λ
``blockdiag``  per unit, diag-block(A_λ, c_λ)⁻¹ g (the weight–bias coupling dropped)
``unit``       per unit, (F_uu + μ_u I)⁻¹ g_u: the unit natural gradient (Theorem 1)
``kfac``       (K + D)⁻¹ g, K curvlinops' K-FAC of the exact Fisher (type-2) on the probe
``ekfac``      (E + D)⁻¹ g, E curvlinops' eigenvalue-corrected K-FAC, same data
``adam``       u = g / (√v + ε), v the mean per-input squared gradient on the training
               data: Adam's step once its moments have settled (β₁ averaging to g)
``full``       u = F_λ⁻¹ g, the natural gradient
============== =====================================================================

Measures (all invariant to rescaling u; ``docs/theory.md``):

- ``rho_full`` = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g), the Fisher efficiency against the full natural
  gradient (1 for ``full``);
- ``rho_unit`` the same in the unit-block metric U_λ (F_λ restricted to its unit blocks):
  the efficiency against the unit natural gradient (1 for ``unit``);
- ``decrease_per_kl`` = gᵀu / √(uᵀFu): the first-order gain in log-likelihood per unit of
  √(2·KL) moved, in the undamped F (its largest value, √(gᵀF⁺g), is the natural
  gradient's).
"""

from __future__ import annotations

import torch
from torch import nn

from natgrad.errors import InputError
from natgrad.network import efficiency

__all__ = ["METHODS", "audit", "directions", "efficiency"]

METHODS = ("plain", "centred", "diagonal", "qd", "blockdiag", "unit", "kfac", "ekfac", "adam",
           "full")  # fmt: skip


def _qd(B: torch.Tensor, gu: torch.Tensor) -> torch.Tensor:
    from natgrad.measures import quasidiagonal_solve

    diag = B.diagonal(dim1=-2, dim2=-1)
    w, w0 = quasidiagonal_solve(diag[:, :-1], B[:, :-1, -1], diag[:, -1], gu[:, :-1], gu[:, -1])
    return torch.cat([w, w0.unsqueeze(-1)], dim=-1)


def _kfac(model: nn.Module, probe: tuple, D: torch.Tensor, g: torch.Tensor, eigen: bool):
    r"""(K + D)⁻¹ g, K curvlinops' K-FAC (``eigen``: eigenvalue-corrected) of the exact type-2
    Fisher on ``probe``, dense and symmetrised."""
    from curvlinops import EKFACLinearOperator, FisherType, KFACLinearOperator

    cls = EKFACLinearOperator if eigen else KFACLinearOperator
    op = cls(model, nn.CrossEntropyLoss(), list(model.parameters()), [probe],
             fisher_type=FisherType.TYPE2, check_deterministic=False)  # fmt: skip
    K = op @ torch.eye(D.numel(), dtype=torch.float64)
    return torch.linalg.solve(0.5 * (K + K.T) + torch.diag(D), g)


def _per_input_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""``[N, P]`` gradients of each input's log-likelihood (``torch.func``)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loglik(p, xi, yi):
        out = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        return -nn.functional.cross_entropy(out, yi.unsqueeze(0))

    grads = torch.func.vmap(torch.func.grad(loglik), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[k].reshape(x.shape[0], -1) for k in params], dim=1)


def _mean_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    means, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: means.__setitem__(
                    name, args[0].reshape(-1, args[0].shape[-1]).mean(0))))  # fmt: skip
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return means


def _centred(model, F, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    u = g.clone()
    means = _mean_inputs(model, x)
    offsets = dict(zip(F.names, F.offsets, strict=True))
    for name, m in model.named_modules():
        if name not in means:
            continue
        a = means[name].to(g)
        w0, b0 = offsets[f"{name}.weight"], offsets[f"{name}.bias"]
        U, d = m.weight.shape
        gw, gb = g[w0 : w0 + U * d].reshape(U, d), g[b0 : b0 + U]
        uw = gw - gb.unsqueeze(1) * a
        u[w0 : w0 + U * d] = uw.reshape(-1)
        u[b0 : b0 + U] = gb - uw @ a
    return u


def directions(model: nn.Module, F, g: torch.Tensor, train: tuple, probe: tuple, *,
               rel_damping: float = 1e-3, adam_eps: float = 1e-8,
               methods=METHODS) -> dict[str, torch.Tensor]:  # fmt: skip
    r"""``{method: u [P]}`` for the :data:`METHODS` asked for (module docstring).

    ``model`` (float64, eval mode; Linear layers with bias for ``centred``), ``F`` its
    :class:`~natgrad.network.NetworkFisher` on ``probe = (x, y)``, ``g`` ``[P]`` the gradient
    of the mean log-likelihood on ``train = (x, y)``, in ``named_parameters()`` order.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise InputError(f"unknown methods {sorted(unknown)}: choose from {', '.join(METHODS)}")
    from natgrad.optim.solves import without_coupling

    D = F.damping(rel_damping)
    f_lam = F.matrix + torch.diag(D)
    solve = lambda B, gu: torch.linalg.solve(B, gu.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    make = {
        "plain": lambda: g.clone(),
        "centred": lambda: _centred(model, F, g, train[0].reshape(train[0].shape[0], -1)),
        "diagonal": lambda: g / f_lam.diagonal(),
        "qd": lambda: F.per_unit(g, f_lam, _qd),
        "blockdiag": lambda: F.per_unit(g, f_lam, lambda B, gu: solve(without_coupling(B), gu)),
        "unit": lambda: F.per_unit(g, f_lam),
        "kfac": lambda: _kfac(model, probe, D, g, eigen=False),
        "ekfac": lambda: _kfac(model, probe, D, g, eigen=True),
        "adam": lambda: g / (_per_input_grads(model, *train).square().mean(0).sqrt() + adam_eps),
        "full": lambda: torch.linalg.solve(f_lam, g),
    }
    return {name: make[name]() for name in methods}


def audit(model: nn.Module, F, g: torch.Tensor, train: tuple, probe: tuple, *,
          rel_damping: float = 1e-3, methods=METHODS) -> list[dict]:  # fmt: skip
    r"""One row per method: ``rho_full``, ``rho_unit``, ``decrease_per_kl`` (module
    docstring) of its direction, with the damping λ that every method shares."""
    f_lam = F.damped(rel_damping)
    unit_metric = F.unit_metric(f_lam)
    full_nat = torch.linalg.solve(f_lam, g)
    unit_nat = torch.linalg.solve(unit_metric, g)
    rows = []
    for name, u in directions(model, F, g, train, probe, rel_damping=rel_damping,
                              methods=methods).items():  # fmt: skip
        fu = float(u @ F.matrix @ u)
        rows.append(dict(method=name, rho_full=efficiency(g, u, f_lam, full_nat),
                         rho_unit=efficiency(g, u, unit_metric, unit_nat),
                         decrease_per_kl=float(g @ u) / fu**0.5 if fu > 0 else float("nan"),
                         rel_damping=rel_damping))  # fmt: skip
    return rows
