r"""The unit natural gradient from a window of factor rows, by Woodbury: O(R) per unit, not O(d).

A unit's Fisher from one batch of N inputs is a sum of N outer products (Linear layers: one
row √(δ̄²_nu)·ã_n per input, the labels summed first; :mod:`natgrad.woodbury`), so its rank
is at most N. The optimizer's windowed metric of unit u keeps the factor rows of the last
K refresh batches, weighted ∝ ema^age (newest first, weights summing to 1):

.. math::

    F_u = V_u^\top V_u,\qquad V_u = [\sqrt{w_0} V_{u,0}; \dots; \sqrt{w_{K-1}} V_{u,K-1}]
    \in \mathbb{R}^{R\times(d+1)},\quad R = \sum_k R_k,

and the step preconditions with F_λ = F + μ_u I, μ_u from the same rule as the dense blocks
(:func:`natgrad.damping.mu`; a unit whose block is zero gets the peers'
scale, :mod:`natgrad.optim.solves`). With K_u = I_R + V_u V_uᵀ/μ_u (eigenvalues ≥ 1, so its
Cholesky factor exists for every μ_u > 0) the Woodbury identity gives the exact solve

.. math::

    F_\lambda^{-1} g = \frac{g}{\mu_u} - V_u^\top Q_u V_u g,\qquad
    Q_u = \frac{K_u^{-1}}{\mu_u^2}.

Per refresh: one R×R Gram matrix per layer (Linear layers share the rows ã, so
V_u V_uᵀ = diag(s_u) Ã Ãᵀ diag(s_u)), one batched Cholesky and inverse of U R×R matrices in
float64. Per step: two GEMMs of the layer's gradients with the R rows and one batched R×R
matrix–vector product in the weights' dtype, U·R·(d+1) work instead of the dense route's
U·(d+1)² (the input layer of mnist-fc: R = 64 against d+1 = 785). The metric is the windowed
one, not the dense route's unbounded running average: the two agree when K covers the
average's memory (ema^K small) and for ``ema = 0`` with K = 1 exactly.

Accuracy: g/μ − VᵀQVg subtracts two terms of size ‖g‖/μ where g lies in the rows' span (a
refresh batch's gradient does), so the step carries a relative error of about ε·σ₁²/μ, ε the
weights' dtype's and σ₁² the largest eigenvalue of F_u. Measured on mnist-fc's input layer in
float32 (2026-12-07): 1.6e-4 at the defaults (rel_damping 0.1, layer_damping 0.3; ρ of the
step 1 − 6e-6), 1.4e-2 at rel_damping 1e-3 without layer damping (ρ 0.61). For small
dampings train in float64 or use the dense route (no ``window``).

Example:
    >>> import torch
    >>> rows = torch.randn(1, 8, 5, dtype=torch.float64)        # 8 shared rows, d + 1 = 5
    >>> scales = torch.rand(3, 8, dtype=torch.float64)          # 3 units
    >>> f = lowrank_factor([rows], [scales], [1.0], rel_damping=0.1)
    >>> g = torch.randn(3, 5, dtype=torch.float64)
    >>> V = rows[0] * scales.unsqueeze(-1)                      # [3, 8, 5]
    >>> F = V.transpose(1, 2) @ V
    >>> mu = 0.1 * torch.diagonal(F, dim1=1, dim2=2).sum(-1) / 5
    >>> dense = torch.linalg.solve(F + mu[:, None, None] * torch.eye(5, dtype=F.dtype), g)
    >>> torch.allclose(lowrank_apply(f, g), dense)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from natgrad import linalg
from natgrad.damping import mu as damping_mu
from natgrad.errors import InputError
from natgrad.optim.solves import peer_filled_traces

__all__ = ["LowRankFactor", "lowrank_apply", "lowrank_factor", "window_weights"]


class LowRankFactor(NamedTuple):
    r"""A layer's windowed metric, ready to apply: ``rows`` ``[R, d+1]`` (shared, with
    per-unit ``scales`` folded into ``Q``) or ``[U, R, d+1]`` (per unit); ``Q`` ``[U, R, R]``;
    ``inv_mu`` ``[U]`` = 1/μ_u, all in the weights' dtype."""

    rows: torch.Tensor
    Q: torch.Tensor
    inv_mu: torch.Tensor
    shared: bool


def window_weights(count: int, ema: float) -> list[float]:
    r"""Weights ∝ ema^age of ``count`` refresh batches, newest first, summing to 1."""
    raw = [ema**k for k in range(count)]
    total = sum(raw)
    return [w / total for w in raw]


def lowrank_factor(
    rows: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor | None],
    weights: Sequence[float],
    rel_damping: float,
    *,
    layer_damping: float = 0.0,
    layer: str | None = None,
    dtype: torch.dtype | None = None,
) -> LowRankFactor:
    r"""The per-refresh part of the windowed unit natural gradient (module docstring).

    Args:
        rows: per refresh batch, ``[1, R_k, d+1]`` rows shared by all units (Linear) or
            ``[U, R_k, d+1]`` per-unit rows (Conv2d), as held by
            :class:`natgrad.WoodburyUnitFisher` (already divided by √N).
        scales: per batch ``[U, R_k]`` row scales of shared rows, ``None`` for per-unit rows.
        weights: per batch, the weight w_k of its Fisher (:func:`window_weights`).
        rel_damping, layer_damping: λ and λ_layer of F_λ (at least one must be > 0: the
            windowed Fisher has rank ≤ R and is singular when R < d+1).
        dtype: dtype of the returned factor (default: that of ``rows``).
    """
    if not (rel_damping > 0 or layer_damping > 0):
        raise InputError(
            f"{linalg.layer_prefix(layer)}the windowed unit Fisher has rank <= R (rows of the "
            "window) and is singular when R < d+1: pass rel_damping > 0 or layer_damping > 0"
        )
    dtype = dtype or rows[0].dtype
    shared = scales[0] is not None
    if shared:
        A = torch.cat([r[0] for r in rows], 0).to(torch.float64)  # [R, d+1]
        S = torch.cat(
            [s.to(torch.float64) * w**0.5 for s, w in zip(scales, weights, strict=True)], 1
        )
        trace = S.square() @ A.square().sum(-1)  # [U] tr F_u = Σ_r s_ur² ‖ã_r‖²
        kernel = (A @ A.T).unsqueeze(0) * S.unsqueeze(-1) * S.unsqueeze(1)  # [U, R, R] V Vᵀ
    else:
        V = torch.cat([r.to(torch.float64) * w**0.5 for r, w in zip(rows, weights, strict=True)], 1)
        trace = V.square().sum((1, 2))
        kernel = V @ V.transpose(1, 2)
    d1 = rows[0].shape[-1]
    filled, dead, s = peer_filled_traces(trace, d1, layer)
    mu = damping_mu(filled, d1, rel_damping, layer_damping) + torch.where(dead, s, 0.0)
    kernel.div_(mu[:, None, None]).diagonal(dim1=-2, dim2=-1).add_(1.0)  # K_u = I + VVᵀ/μ
    L = linalg.cholesky(kernel, layer=layer, what="Woodbury kernel I + VVᵀ/μ of the windowed "
                        "unit Fisher")  # fmt: skip
    Q = torch.cholesky_inverse(L).div_(mu.square()[:, None, None])  # [U, R, R]
    if shared:  # fold diag(s_u) into Q: V_u = diag(s_u) Ã
        Q.mul_(S.unsqueeze(-1)).mul_(S.unsqueeze(1))
        base = A
    else:
        base = V
    return LowRankFactor(base.to(dtype), Q.to(dtype), (1.0 / mu).to(dtype), shared)


def lowrank_apply(factor: LowRankFactor, g: torch.Tensor) -> torch.Tensor:
    r"""``[U, d+1]`` F_λ⁻¹g = g/μ − Vᵀ Q V g for ``g`` ``[U, d+1]``, in the factor's dtype."""
    rows, Q, inv_mu, shared = factor
    if shared:
        t = g @ rows.T  # [U, R] = Ã g_u for every unit, one GEMM
        z = (Q * t.unsqueeze(1)).sum(-1)  # U matrix-vector products (faster than bmm with k=1)
        return g * inv_mu.unsqueeze(-1) - z @ rows
    t = torch.bmm(rows, g.unsqueeze(-1))  # [U, R, 1]
    z = torch.bmm(Q, t)
    return g * inv_mu.unsqueeze(-1) - torch.bmm(rows.transpose(1, 2), z).squeeze(-1)
