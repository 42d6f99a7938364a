r"""Theorems 1–2 of the ELU paper, evaluated for every unit of a trained network: one table.

:func:`unit_statistics` takes a model and a fixed probe set ``(inputs [N, ...], targets
[N])``, computes the exact unit Fisher of every Linear/Conv2d layer in one pass
(:func:`natgrad.fisher.unit_fishers`, categorical likelihood) and, with the gradient

    g = ∂/∂(w, w0) (1/N) Σ_n ln p(y_n | z_n; w)      (the mean LOG-LIKELIHOOD of the probe
                                                      set = minus the mean loss gradient)

returns one row per (layer, unit) with the columns below. E_p(a) is the mean incoming
activation of the layer, E_q(a) = b/c the δ̄²-reweighted one; a "norm" is the Euclidean norm
over the d components and an "avg" the plain mean over the d components.

=====================  =============================================================
column                 meaning (Theorem / Lemma of the paper)
=====================  =============================================================
layer, layer_index     the layer's name and its position among the weight layers
input_from             ``"data"`` for the first layer (its incoming activations are the
                       inputs), ``"units"`` for layers fed by hidden units
unit, fan_in           unit index within the layer, d
c                      E_p(δ̄²), the bias entry of the block
s, s_c                 s = 1/(c − bᵀA⁻¹b) (Theorem 1) and s·c = 1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a)
                       ≥ 1 (Lemma 2(i); 1 iff E_q(a) = 0, i.e. F block-diagonal)
k                      Theorem 2's k = (E_q(a) − E_p(a))ᵀVar_q(a)⁻¹E_q(a)
mean_p_norm, _avg      ‖E_p(a)‖₂ and the mean of E_p(a)'s components (same for a layer)
mean_q_norm, _avg      ‖E_q(a)‖₂ and the mean of E_q(a)'s components
corrected_mean_norm    ‖E_p(a) − (1+k)E_q(a)‖₂, the incoming mean the natural gradient sees
shift_natural          E_p(a)ᵀΔw + Δw0 of the unit natural gradient (Theorem 2)
shift_blockdiag        E_p(a)ᵀA⁻¹g + g0/c (the Fisher with b := 0)
shift_plain            E_p(a)ᵀg + g0 (the plain gradient step)
cosine                 cos∠((g, g0), F⁻¹(g, g0)); 1 = the plain gradient is the natural one
cosine_common          the same with F + λ_i I for EVERY live unit (λ_i as below): a
                       like-for-like comparison across unit types, whose singular blocks
                       (ReLU layers after dead units) are damped while others are not
grad_norm              ‖(g, g0)‖₂
cond                   condition number estimate (max L_jj / min L_jj)² of the undamped
                       block from its Cholesky factor L (a lower bound; inf if singular)
damping                λ added to the block's diagonal for this unit (0 for most units)
dead                   1 if δ̄² ≡ 0 on the probe set (c = 0: the unit passes no gradient)
=====================  =============================================================

**Singular blocks.** A unit is *dead* when c = 0 (a ReLU unit that is off on every probe
input): its block is zero, no gradient flows, and every theorem quantity is undefined —
they are NaN in the table and counted in the report, never silently replaced. A live unit
whose block is singular or ill-conditioned (condition number above ``cond_limit``, e.g.
because a *previous* layer has dead units, which zeroes rows of A) is solved with the
damped block F + λ_i I, λ_i = ``damping`` · tr(F_i)/(d+1) (relative to the block's mean
diagonal entry), and its ``damping`` column records λ_i; its s, k, shifts, corrected mean
and cosine are those of F + λ_i I, while c, E_q(a) and ‖E_p(a)‖ are always the undamped
moments of the data. Every other unit is solved exactly.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from natgrad import theorems
from natgrad.analysis.tables import Table
from natgrad.errors import InputError
from natgrad.fisher import unit_fishers
from natgrad.unitfisher import UnitFisher

__all__ = ["COLUMNS", "COND_LIMIT", "DAMPING", "layer_statistics", "unit_statistics"]

DAMPING = 1e-6
"""Default relative damping: λ_i = DAMPING · tr(F_i)/(d+1) for units that need it."""

COND_LIMIT = 1e10
"""Blocks with a larger condition number are damped (a float64 solve keeps >= 6 digits)."""

COLUMNS = (
    "layer", "layer_index", "input_from", "unit", "fan_in", "c", "s", "s_c", "k",
    "mean_p_norm", "mean_p_avg", "mean_q_norm", "mean_q_avg", "corrected_mean_norm",
    "shift_natural", "shift_blockdiag", "shift_plain", "cosine", "cosine_common", "grad_norm", "cond",
    "damping", "dead",
)  # fmt: skip


def layer_statistics(
    fisher: UnitFisher,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    *,
    damping: float = DAMPING,
    cond_limit: float = COND_LIMIT,
) -> dict[str, np.ndarray]:
    r"""The per-unit columns of :data:`COLUMNS` (from ``unit`` on) for one layer.

    Args:
        fisher: the layer's :class:`~natgrad.UnitFisher` (U units, fan-in d).
        grad_weight: ``[U, d]`` (or the layer's weight shape) gradient g of the objective.
        grad_bias: ``[U]`` gradient g0.
        damping, cond_limit: see the module docstring.

    Returns:
        ``{column: ndarray [U]}``. No loop over units: the live units are solved in at most
        two batched calls (undamped and damped). Routes: s = 1/L_dd² and the natural gradient
        F⁻¹(g, g0) from one Cholesky of the full block; k, the shifts and the corrected mean
        by Theorem 2 (:meth:`natgrad.UnitFisher.bias_shift`). The tests check them against
        :meth:`~natgrad.UnitFisher.s` and :meth:`~natgrad.UnitFisher.cosine` (Theorem 1).

    Example:
        >>> Fi = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
        >>> cols = layer_statistics(Fi, torch.tensor([[1.0]]), torch.tensor([0.0]))
        >>> [round(float(cols[k][0]), 12) for k in ("s", "k", "shift_natural", "cosine")]
        [2.0, 0.0, 0.0, 0.707106781187]
    """
    g, g0 = fisher.unit_grads(grad_weight, grad_bias)  # [U, d], [U]
    dtype = torch.promote_types(fisher.matrix.dtype, g.dtype)
    M, g, g0 = fisher.matrix.to(dtype), g.to(dtype), g0.to(dtype)
    fisher = dataclasses.replace(fisher, matrix=M, mean_p=fisher.mean_p.to(dtype))
    U, d = fisher.num_units, fisher.fan_in
    c = fisher.c
    dead = c <= 0
    L, cond = _cholesky_and_condition(M)  # [U, d+1, d+1], [U] float64
    needs = ~dead & ~(cond <= cond_limit)
    lam = torch.where(needs, damping * torch.diagonal(M, dim1=-2, dim2=-1).sum(-1) / (d + 1), 0.0)
    g_full = torch.cat([g, g0.unsqueeze(-1)], -1).to(torch.float64)  # [U, d+1]

    nan = torch.full((U,), float("nan"), dtype=torch.float64)
    names = ("s", "k", "shift_natural", "shift_blockdiag", "cosine", "corrected_mean_norm")
    out = {k: nan.clone() for k in names}
    live = ~dead
    mean_q = fisher.b[live] / c[live].unsqueeze(-1)  # [u, d] E_q(a) of the undamped block
    out["mean_q_norm"], out["mean_q_avg"] = nan.clone(), nan.clone()
    out["mean_q_norm"][live] = mean_q.norm(dim=-1).detach().to(torch.float64)
    out["mean_q_avg"][live] = mean_q.mean(dim=-1).detach().to(torch.float64)
    for mask, is_damped in ((~dead & ~needs, False), (needs, True)):
        if not mask.any():
            continue
        idx = mask.nonzero().flatten()
        block = M[idx] + lam[idx, None, None] * torch.eye(d + 1, dtype=dtype)
        Li = torch.linalg.cholesky(block.to(torch.float64)) if is_damped else L[idx]
        sub = dataclasses.replace(fisher, matrix=block, units=fisher.units[idx])
        shift = sub.bias_shift(g[idx], g0[idx])  # Theorem 2
        natural = torch.cholesky_solve(g_full[idx].unsqueeze(-1), Li).squeeze(-1)  # F⁻¹(g, g0)
        values = {
            "s": 1.0 / torch.diagonal(Li, dim1=-2, dim2=-1)[:, -1] ** 2,  # 1/(c − bᵀA⁻¹b) = 1/L_dd²
            "k": shift.k,
            "shift_natural": shift.shift_natural,
            "shift_blockdiag": shift.shift_blockdiag,
            "cosine": theorems.cosine(g[idx], g0[idx], natural[:, :-1], natural[:, -1]),
            "corrected_mean_norm": shift.corrected_mean.norm(dim=-1),
        }
        for name, v in values.items():
            out[name][idx] = v.detach().to(torch.float64)
    # The same relative damping for every live unit: a like-for-like cosine across unit types.
    out["cosine_common"] = nan.clone()
    if live.any():
        idx = live.nonzero().flatten()
        lam_all = damping * torch.diagonal(M[idx], dim1=-2, dim2=-1).sum(-1) / (d + 1)
        block = (M[idx] + lam_all[:, None, None] * torch.eye(d + 1, dtype=dtype)).to(torch.float64)
        Lc = torch.linalg.cholesky(block)
        natural = torch.cholesky_solve(g_full[idx].unsqueeze(-1), Lc).squeeze(-1)
        cos = theorems.cosine(g[idx], g0[idx], natural[:, :-1], natural[:, -1])
        out["cosine_common"][idx] = cos.to(torch.float64)

    mean_p = fisher.mean_p.to(torch.float64)
    cols = {
        "unit": fisher.units.cpu().numpy().astype(np.int64),
        "fan_in": np.full(U, d, dtype=np.int64),
        "c": c.detach().to(torch.float64).cpu().numpy(),
        "s": out["s"].numpy(),
        "s_c": (out["s"] * c.detach().to(torch.float64)).numpy(),
        "k": out["k"].numpy(),
        "mean_p_norm": np.full(U, float(mean_p.norm())),
        "mean_p_avg": np.full(U, float(mean_p.mean())),
    }
    for name in ("mean_q_norm", "mean_q_avg", "corrected_mean_norm"):
        cols[name] = out[name].numpy()
    cols["shift_natural"] = out["shift_natural"].numpy()
    cols["shift_blockdiag"] = out["shift_blockdiag"].numpy()
    shift_plain = (g.to(torch.float64) @ mean_p) + g0.to(torch.float64)
    cols["shift_plain"] = shift_plain.detach().cpu().numpy()
    cols["cosine"] = out["cosine"].numpy()
    cols["cosine_common"] = out["cosine_common"].numpy()
    cols["grad_norm"] = torch.cat([g, g0[:, None]], -1).norm(dim=-1).to(torch.float64).numpy()
    cols["cond"] = cond.cpu().numpy()
    cols["damping"] = lam.to(torch.float64).cpu().numpy()
    cols["dead"] = dead.cpu().numpy().astype(np.int64)
    return cols


def _cholesky_and_condition(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Float64 Cholesky factors L ``[U, n, n]`` of the blocks and ``[U]`` the estimate
    (max_j L_jj / min_j L_jj)² of their condition numbers: a cheap lower bound of the 2-norm
    condition number, the estimate :func:`natgrad.linalg.cholesky` warns on; ``inf`` where a
    block is not numerically positive definite. (An exact ``eigvalsh`` costs ~30× more.)

    With the bias last, (F⁻¹)_{dd} = 1/L_dd², so Theorem 1's s = 1/(c − bᵀA⁻¹b) = 1/L_dd²."""
    L, info = torch.linalg.cholesky_ex(matrix.to(torch.float64))
    diag = torch.diagonal(L, dim1=-2, dim2=-1).abs()  # [U, n]
    est = (diag.max(dim=-1).values / diag.min(dim=-1).values) ** 2
    return L, torch.where((info == 0) & torch.isfinite(est), est, torch.inf)


def unit_statistics(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    layers: list[str] | None = None,
    damping: float = DAMPING,
    cond_limit: float = COND_LIMIT,
    dtype: torch.dtype = torch.float64,
    batch_size: int | None = None,
) -> Table:
    r"""One row per (layer, unit) of ``model``: the columns of :data:`COLUMNS`.

    Args:
        model: a classifier with logits ``[N, C]`` (categorical likelihood). It is copied,
            cast to ``dtype`` and put in eval mode; the caller's model is untouched.
        inputs: ``[N, ...]`` probe inputs; ``targets``: ``[N]`` their labels (for g only:
            the Fisher is the exact one, an expectation over the model's labels).
        layers: names of the Linear/Conv2d layers (default: all, in module order).
        damping, cond_limit: see the module docstring.
        dtype: computation dtype (float64 by default: condition numbers up to ``cond_limit``
            must be solvable).
        batch_size: stream the probe set through the Fisher engine in batches of this size.

    Returns:
        A :class:`~natgrad.analysis.tables.Table` with ``Σ_layers U`` rows.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
        >>> t = unit_statistics(net, torch.randn(16, 3), torch.randint(0, 2, (16,)))
        >>> len(t), t.unique("input_from")
        (6, ['data', 'units'])
    """
    if inputs.shape[0] != targets.shape[0]:
        raise InputError(
            f"unit_statistics: {inputs.shape[0]} probe inputs but {targets.shape[0]} targets"
        )
    model = copy.deepcopy(model).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    x = inputs.to(dtype)
    y = targets.to(torch.long)
    fishers = unit_fishers(model, x, layers=layers, batch_size=batch_size)
    modules = dict(model.named_modules())
    params = [p for name in fishers for p in (modules[name].weight, modules[name].bias)]
    loglik = -F.cross_entropy(model(x), y)  # mean log-likelihood of the probe set
    grads = torch.autograd.grad(loglik, params)
    all_layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    tables = []
    for i, (name, fisher) in enumerate(fishers.items()):
        cols = layer_statistics(
            fisher, grads[2 * i], grads[2 * i + 1], damping=damping, cond_limit=cond_limit
        )
        index = all_layers.index(name)
        head = {
            "layer": name,
            "layer_index": index,
            "input_from": "data" if index == 0 else "units",
        }
        tables.append(Table({**{k: np.full(fisher.num_units, v) for k, v in head.items()}, **cols}))
    from natgrad.analysis.tables import concat

    return concat(tables)
