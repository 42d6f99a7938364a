r"""Batched Cholesky solves, inverses and condition numbers for stacks of SPD blocks.

Every function takes a stack ``[U, n, n]`` of symmetric positive definite blocks (one per
unit; n = d+1 for a full unit Fisher block, n = d for its weight block A) and works on all U
units in one batched call. Blocks are factorised in float64 and results cast back to the
promoted dtype of the inputs, so a float32 Fisher loses no digits in the solve itself.
``damping = λ >= 0`` adds λ to every diagonal entry, the bias entry included
(``docs/theory.md``, "Damping"). Failures are loud: :func:`cholesky` raises
:class:`~natgrad.errors.SingularBlockError` naming the layer and each failing unit, and
warns (:class:`~natgrad.errors.NearlySingularWarning`) above :data:`COND_WARN`, or
:func:`cond_warn` of the dtype the blocks were stored in (the result classes pass it).

Example:
    >>> import torch
    >>> F = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]])
    >>> solve(F, torch.tensor([[1.0, 0.0]]))
    tensor([[ 1., -1.]])
    >>> inverse(F)
    tensor([[[ 1., -1.],
             [-1.,  2.]]])
    >>> condition_number(torch.diag_embed(torch.tensor([[1.0, 4.0]])))
    tensor([4.], dtype=torch.float64)
"""

from __future__ import annotations

import math
import warnings

import torch

from natgrad import damping as _damping
from natgrad.errors import InputError, NearlySingularWarning, SingularBlockError

COND_WARN = 1e12
"""Condition number (2-norm, of the block scaled to a unit diagonal, estimated from the
Cholesky factor) above which a block is reported as nearly singular: a float64 solve then
keeps only about 16 − 12 = 4 digits. Scaled, because a block's rounding errors (of its
storage, its float sums and its Cholesky) are relative to √(F_ii F_jj) and so is what they
cost (van der Sluis; Demmel 1989): a block spread only by its features' scales, raw 0-255
pixels or a feature at 1e-9, solves to full precision whatever its unscaled κ."""


def cond_warn(dtype: torch.dtype) -> float:
    """The :data:`COND_WARN` of blocks stored in ``dtype``: a block's entries carry only its
    dtype's precision, so a solve keeps fewer than 2 digits once κ·ε ≥ 0.01 (float32:
    κ ≈ 8e4), whatever dtype it is solved in.

    Example:
        >>> cond_warn(torch.float64), round(cond_warn(torch.float32))
        (1000000000000.0, 83886)
    """
    return min(COND_WARN, 0.01 / torch.finfo(dtype).eps)


_SHOW = 5  # failing units listed by name in a message


def damped(matrix: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    r"""``[U, n, n]`` F + λI: λ = ``damping`` added to every diagonal entry (bias included)."""
    if _damping.check(damping, "damping") == 0.0:
        return matrix
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return matrix + damping * eye


def unit_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    r"""``[U, n, n]`` S = D^{-1/2} F D^{-1/2}, D = diag F: each block scaled to a unit
    diagonal, whose condition number is what a solve's accuracy follows (:data:`COND_WARN`)."""
    r = torch.diagonal(matrix, dim1=-2, dim2=-1).rsqrt()
    return matrix * r.unsqueeze(-1) * r.unsqueeze(-2)


def condition_number(matrix: torch.Tensor) -> torch.Tensor:
    r"""``[U]`` exact 2-norm condition number λ_max / λ_min of each symmetric block, in float64.

    Computed from ``eigvalsh`` (cost ≈ a few Choleskys); ``inf`` where λ_min <= 0 (the block
    is not positive definite).
    """
    eig = torch.linalg.eigvalsh(matrix.to(torch.float64))  # [U, n], ascending
    lo, hi = eig[..., 0], eig[..., -1]
    return torch.where(lo > 0, hi / lo.clamp_min(torch.finfo(torch.float64).tiny), math.inf)


def cholesky(
    matrix: torch.Tensor,
    *,
    damping: float = 0.0,
    layer: str | None = None,
    units: torch.Tensor | None = None,
    what: str = "unit Fisher block",
    warn_cond: float = COND_WARN,
    hint: str = "Pass damping > 0 (it adds λ to the diagonal), or drop these units.",
) -> torch.Tensor:
    r"""``[U, n, n]`` float64 lower Cholesky factors L (L Lᵀ = F + λI) of a stack of blocks.

    Args:
        matrix: ``[U, n, n]`` symmetric blocks (any float dtype).
        damping: λ >= 0 added to every diagonal entry.
        layer, units: the layer's name and the ``[U]`` indices of the units within it, used
            only to name failing units in errors and warnings.
        what: what the blocks are ("unit Fisher block", "weight block A"), for messages.
        warn_cond: warn (:class:`NearlySingularWarning`) when the estimate
            (max_i L_ii / min_i L_ii)² of the block scaled to a unit diagonal, a cheap lower
            bound of its 2-norm condition number, exceeds it (:data:`COND_WARN`);
            ``math.inf`` disables the warning.
        hint: what a singular block's message tells the caller to do (a caller that damps
            the blocks itself names its own damping).

    Raises:
        SingularBlockError: some block is not numerically positive definite; the message
            names each such unit with its smallest eigenvalue and condition number. The
            exception has attributes ``positions`` (``[k]`` positions in the stack) and
            ``condition_numbers`` (``[k]``).
        InputError: NaN/Inf entries (naming the units) or a negative damping.
    """
    if matrix.ndim != 3 or matrix.shape[-1] != matrix.shape[-2]:
        raise InputError(
            f"{layer_prefix(layer)}{what}s must have shape [U, n, n], got {tuple(matrix.shape)}"
        )
    m64 = damped(matrix.to(torch.float64), damping)
    # One sum is a cheap pass (NaN/Inf propagate; ~20x faster than isfinite on [128, 130,
    # 130] float64); the exact per-unit check runs only when it is not finite.
    bad = torch.zeros(m64.shape[0], dtype=torch.bool, device=m64.device)
    if not torch.isfinite(m64.sum()):
        bad = ~torch.isfinite(m64).flatten(1).all(dim=1)
    if bad.any():
        pos = bad.nonzero().flatten()
        raise InputError(
            f"{layer_prefix(layer)}{what} has NaN/Inf entries for {_names(pos, units)}"
        )
    L, info = torch.linalg.cholesky_ex(m64)
    failed = (info > 0).nonzero().flatten()
    if failed.numel():
        sub = m64[failed]
        cond = condition_number(sub)
        low = torch.linalg.eigvalsh(sub)[:, 0]
        details = [
            f"smallest eigenvalue {lo:.3g}, condition number {k:.3g}"
            for lo, k in zip(low.tolist(), cond.tolist(), strict=True)
        ]
        damped_by = f" (damping {damping:g})" if damping else ""  # a caller's own λ: its `what`
        err = SingularBlockError(
            f"{layer_prefix(layer)}{what} is not positive definite{damped_by} for "
            f"{failed.numel()} of {m64.shape[0]} units — {_names(failed, units, details)}. " + hint
        )
        err.positions = failed
        err.condition_numbers = cond
        raise err
    warn_nearly_singular(
        condition_estimate(L, scaled_by=m64),
        m64,
        layer=layer,
        units=units,
        what=what,
        damping=damping,
        warn_cond=warn_cond,
        stacklevel=3,
    )
    return L


def condition_estimate(L: torch.Tensor, scaled_by: torch.Tensor | None = None) -> torch.Tensor:
    r"""``[U]`` (max_j L_jj / min_j L_jj)² from Cholesky factors ``L [U, n, n]``: a cheap
    lower bound of the 2-norm condition number of L Lᵀ (it can run ~100× low on unit Fisher
    blocks; :func:`condition_number` is exact). ``inf`` where a diagonal entry is 0 or NaN.
    With ``scaled_by`` = L Lᵀ, the estimate of the block scaled to a unit diagonal
    (:func:`unit_diagonal`), whose factor's diagonal is L_jj / √F_jj (no copy of L is made:
    a [U, n, n] copy per solve slowed the optimizer's refresh 2×).

    Example:
        >>> condition_estimate(torch.linalg.cholesky(torch.diag_embed(torch.tensor([[1.0, 4.0]]))))
        tensor([4.])
    """
    diag = torch.diagonal(L, dim1=-2, dim2=-1).abs()  # [U, n]
    if scaled_by is not None:
        diag = diag / torch.diagonal(scaled_by, dim1=-2, dim2=-1).sqrt()
    est = (diag.max(dim=-1).values / diag.min(dim=-1).values) ** 2
    return torch.where(torch.isfinite(est), est, math.inf)


def warn_nearly_singular(
    estimate: torch.Tensor,
    blocks: torch.Tensor | None = None,
    *,
    layer: str | None = None,
    units: torch.Tensor | None = None,
    what: str = "unit Fisher block",
    damping: float | None = None,
    warn_cond: float = COND_WARN,
    stacklevel: int = 2,
) -> None:
    r"""Issue one :class:`~natgrad.errors.NearlySingularWarning` naming every unit whose
    ``estimate`` ``[U]`` (a lower bound of the condition number of its block scaled to a
    unit diagonal, :data:`COND_WARN`) exceeds ``warn_cond``; with ``blocks`` ``[U, n, n]``
    the message quotes the exact condition numbers of their unit-diagonal scalings, and
    ``damping`` (if given) is quoted. Nothing happens when ``warn_cond`` is ``inf``.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     warn_nearly_singular(torch.tensor([1.0, 1e15]), layer="fc1")
        >>> print(w[0].message)  # doctest: +ELLIPSIS
        layer 'fc1': unit Fisher block is nearly singular (scaled to a unit diagonal, condition number > 1e+12) for 1 of 2 units — unit 1: condition number >= 1e+15. ...
    """
    if not math.isfinite(warn_cond):
        return
    ill = (~(estimate <= warn_cond)).nonzero().flatten()
    if not ill.numel():
        return
    if blocks is not None:
        cond, sign = condition_number(unit_diagonal(blocks[ill].to(torch.float64))), ""
    else:
        cond, sign = estimate[ill], ">= "
    details = [f"condition number {sign}{k:.3g}" for k in cond.tolist()]
    damped_by = "" if damping is None else f", damping {damping:g}"
    warnings.warn(
        f"{layer_prefix(layer)}{what} is nearly singular (scaled to a unit diagonal, "
        f"condition number > {warn_cond:g}"
        f"{damped_by}) for {ill.numel()} of {estimate.shape[0]} units — "
        f"{_names(ill, units, details)}. Solves keep few digits; consider damping > 0.",
        NearlySingularWarning,
        stacklevel=stacklevel,
    )


def cho_solve(L: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    r"""Solve (L Lᵀ) x = rhs for factors ``L [U, n, n]`` from :func:`cholesky`.

    ``rhs`` is ``[U, n]`` (one right-hand side per unit) or ``[U, n, k]``; the result has the
    same shape, in float64.
    """
    r = rhs.to(torch.float64)
    vector = r.ndim == L.ndim - 1
    if vector:
        r = r.unsqueeze(-1)
    # Two triangular solves, not torch.cholesky_solve: on CPU the latter copies the whole
    # factor stack into column-major order on every call (128 blocks of 785²: 0.30 s against
    # 0.05 s per solve; the results agree to the last bit; bench/ng_cost_split.py).
    y = torch.linalg.solve_triangular(L, r, upper=False)
    x = torch.linalg.solve_triangular(L.mT, y, upper=True)
    return x.squeeze(-1) if vector else x


def solve(
    matrix: torch.Tensor, rhs: torch.Tensor, *, damping: float = 0.0, **context
) -> torch.Tensor:
    r"""x = (F + λI)⁻¹ rhs for ``matrix [U, n, n]`` and ``rhs [U, n]`` or ``[U, n, k]``.

    Factorised by :func:`cholesky` in float64 (``context``: ``layer``, ``units``, ``what``,
    ``warn_cond`` as there); the result is in the promoted dtype of ``matrix`` and ``rhs``.
    """
    out = torch.promote_types(matrix.dtype, rhs.dtype)
    return cho_solve(cholesky(matrix, damping=damping, **context), rhs).to(out)


def inverse(matrix: torch.Tensor, *, damping: float = 0.0, **context) -> torch.Tensor:
    r"""``[U, n, n]`` (F + λI)⁻¹ by Cholesky in float64, cast back to ``matrix.dtype``."""
    L = cholesky(matrix, damping=damping, **context)
    return torch.cholesky_inverse(L).to(matrix.dtype)


def float64_of(*xs: torch.Tensor) -> tuple[torch.dtype, list[torch.Tensor]]:
    """``(promoted dtype of xs, [x in float64 for x in xs])``: compute in float64, return in the
    inputs' own precision."""
    out = xs[0].dtype
    for x in xs[1:]:
        out = torch.promote_types(out, x.dtype)
    return out, [x.to(torch.float64) for x in xs]


def rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[U]`` the dot products of matching rows of ``x``, ``y`` ``[U, n]``."""
    return (x * y).sum(-1)


def layer_prefix(layer: str | None) -> str:
    """``"layer 'fc3': "`` (or ``""``): how messages name a layer."""
    return f"layer {layer!r}: " if layer is not None else ""


def unit_name(position: int, units: torch.Tensor | None) -> str:
    """``"unit 7 (UnitFisher.units[2])"``: how messages name the unit at ``position``."""
    if units is None:
        return f"unit {position}"
    return f"unit {int(units[position])} (UnitFisher.units[{position}])"


def _names(positions: torch.Tensor, units: torch.Tensor | None, details=None) -> str:
    """The first units at ``positions`` by :func:`unit_name` (each with its ``details[i]``), then
    how many more."""
    names = ", ".join(
        unit_name(int(p), units) + (f": {details[i]}" if details else "")
        for i, p in enumerate(positions[:_SHOW].tolist())
    )
    more = f" and {positions.numel() - _SHOW} more" if positions.numel() > _SHOW else ""
    return names + more


def bordered(A: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``[U, n+1, n+1]`` the block [[A, b], [bᵀ, c]] from ``A [U, n, n]``, ``b [U, n]``, ``c [U]``."""
    top = torch.cat([A, b.unsqueeze(-1)], -1)
    return torch.cat([top, torch.cat([b, c.unsqueeze(-1)], -1).unsqueeze(-2)], -2)
