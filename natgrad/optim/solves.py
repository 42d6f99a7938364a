r"""Per-unit preconditioners of the optimizers: unit, quasi-diagonal and diagonal solves.

Each function works on all U units of a layer at once (no loop over units), on the
relatively damped unit Fisher F_λ = F + μI, μ = λ·tr F/(d+1) (docs/theory.md, "Damping"),
with one stated λ for every unit and unit type. Bias last: F = [[A, b], [bᵀ, c]].

- ``unit``: u = F_λ⁻¹ g by batched Cholesky (:mod:`natgrad.linalg`).
- ``quasidiagonal``: Ollivier's quasi-diagonal update (Ollivier 2015, Section 3;
  Marceau-Caron & Ollivier 2016) from the diagonal of F_λ and its bias column only, O(d)
  per unit, by :func:`natgrad.measures.quasidiagonal_solve`: its formula, and why it is NOT
  the inverse of the arrowhead matrix, in docs/theory.md ("Measures";
  ``tests/test_optim.py`` shows both facts).
- ``diagonal``: u = diag(F_λ)⁻¹ g.

A unit whose block is zero (a ReLU unit dead on every input of the batches averaged) has no
curvature to precondition with: its block is taken as s·I, s the mean of the layer's other
units' tr F/(d+1) (the scale of its peers), so a gradient it receives later gets a step of
the layer's usual size instead of a division by zero; where every unit of the layer is dead,
s = 1 (no scale to borrow: the step is the plain gradient, damped as I + μ).

Shapes: U units, d fan-in; ``g`` is ``[U, d+1]`` (bias last).

Example:
    >>> import torch
    >>> F = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    >>> u = unit_direction(unit_factor(F, 0.0), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    >>> u.round(decimals=12)
    tensor([[ 1., -1.]], dtype=torch.float64)
    >>> diag, col = quasidiagonal_parts(F)
    >>> quasidiagonal_direction(diag, col, torch.tensor([[1.0, 0.0]], dtype=torch.float64), 0.0)
    tensor([[ 1., -1.]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

from natgrad import damping, linalg
from natgrad.errors import DivergedError, SingularBlockError
from natgrad.measures import quasidiagonal_solve

__all__ = [
    "without_coupling",
    "diagonal_coefficients",
    "peer_filled_traces",
    "diagonal_direction",
    "quasidiagonal_direction",
    "quasidiagonal_metric",
    "quasidiagonal_parts",
    "relative_shift",
    "unit_apply",
    "unit_direction",
    "unit_factor",
    "unit_inverse",
]


def relative_shift(
    diag: torch.Tensor, rel_damping: float, layer_damping: float = 0.0
) -> torch.Tensor:
    r"""``[U]`` μ = λ·tr F/(d+1) + λ_layer·mean_units(tr F)/(d+1) from the diagonals
    ``[U, d+1]`` of a layer's blocks (λ_layer = 0: docs/theory.md's F_λ exactly)."""
    return damping.mu(diag.sum(-1), diag.shape[-1], rel_damping, layer_damping)


#: What a singular damped block of the optimizer's metric asks for (every structure alike).
STEP_HINT = ("raise rel_damping or layer_damping (μ = (λ·tr F + λ_layer·mean tr F)/(d+1) is "
             "added to each diagonal)")  # fmt: skip


def peer_filled_traces(
    trace: torch.Tensor, d1: int, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(traces with zero blocks filled [U], dead [U] bool, s)``: a unit whose block is zero
    is taken as s·I, s = the other units' mean tr F/(d+1) (module docstring). A trace that is
    not finite is a :class:`~natgrad.errors.DivergedError` naming the units (it is no dead
    unit: taken as one, its NaN would stay in the running Fisher for good)."""
    bad = ~torch.isfinite(trace)
    if bad.any():
        raise DivergedError(
            f"{linalg.layer_prefix(layer)}the unit Fisher of {linalg._names(bad.nonzero().flatten(), None)} "
            "holds NaN or Inf: the net's weights or activations are not finite (training "
            "diverged). Lower the learning rate, or resume from an earlier checkpoint"
        )  # fmt: skip
    dead = trace <= 0
    alive = trace[~dead]
    s = (
        alive.mean() / d1
        if alive.numel()
        else torch.ones((), dtype=trace.dtype, device=trace.device)
    )
    return torch.where(dead, s * d1, trace), dead, s


def _damped_diagonal(
    diag, rel_damping, layer_damping, layer=None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(diag(F_λ) [U, d+1] float64, dead [U])`` from ``diag`` ``[U, d+1]`` of F, zero
    blocks filled by the peers' scale."""
    d64 = diag.to(torch.float64)
    _, dead, s = peer_filled_traces(d64.sum(-1), d64.shape[-1], layer)
    d64 = torch.where(dead[:, None], s, d64)
    return d64 + relative_shift(d64, rel_damping, layer_damping).unsqueeze(-1), dead


def quasidiagonal_parts(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(diag [U, d+1], bias column [U, d])`` of dense blocks ``[U, d+1, d+1]``: all that
    the quasi-diagonal and diagonal preconditioners read."""
    return torch.diagonal(matrix, dim1=-2, dim2=-1), matrix[:, :-1, -1]


def without_coupling(matrix: torch.Tensor) -> torch.Tensor:
    r"""A copy of unit blocks ``[U, d+1, d+1]`` with the weight–bias coupling b (the last
    row and column, less their diagonal entry c) set to 0: the block-diagonal metric
    diag(A, c), whose step ignores what Theorem 2 corrects.

    Example:
        >>> F = torch.tensor([[[2.0, 0.5], [0.5, 1.0]]])
        >>> without_coupling(F).tolist()
        [[[2.0, 0.0], [0.0, 1.0]]]
    """
    out = matrix.clone()
    out[..., :-1, -1] = 0.0
    out[..., -1, :-1] = 0.0
    return out


def unit_factor(
    matrix: torch.Tensor,
    rel_damping: float,
    *,
    layer_damping: float = 0.0,
    layer: str | None = None,
) -> torch.Tensor:
    r"""``[U, d+1, d+1]`` float64 Cholesky factors of F_λ = F + μI (μ per unit, see above).

    Raises :class:`~natgrad.errors.SingularBlockError` naming the layer and units whose
    damped block is not positive definite.
    """
    m64 = matrix.to(torch.float64, copy=True)  # modified in place below
    diag = torch.diagonal(m64, dim1=-2, dim2=-1)  # a view
    _, dead, s = peer_filled_traces(diag.sum(-1), diag.shape[-1], layer)
    if dead.any():
        m64[dead] = 0.0
        diag[dead] = s
    diag.add_(relative_shift(diag, rel_damping, layer_damping).unsqueeze(-1))
    return linalg.cholesky(m64, layer=layer, warn_cond=math.inf,
                           what=f"unit Fisher block (relative damping {rel_damping:g}, layer "
                                f"damping {layer_damping:g})",
                           hint=STEP_HINT.capitalize() + ".")  # fmt: skip


def unit_direction(factor: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    r"""``[U, d+1]`` u = F_λ⁻¹ g from the factors of :func:`unit_factor`, in ``g``'s dtype."""
    return linalg.cho_solve(factor, g).to(g.dtype)


def unit_inverse(
    matrix: torch.Tensor,
    rel_damping: float,
    *,
    layer_damping: float = 0.0,
    layer: str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""``[U, d+1, d+1]`` F_λ⁻¹, formed once per refresh: Cholesky and inverse in float64
    (:func:`unit_factor`'s checks), symmetrised, then cast to ``dtype`` (the weights'), so that
    every step until the next refresh is one batched matmul (:func:`unit_apply`). With
    κ(F_λ) ≤ (d+1)/λ + 1 a float32 product keeps about 7 − log10 κ digits of the step.

    Example:
        >>> F = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
        >>> u = unit_apply(unit_inverse(F, 0.0), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
        >>> u.round(decimals=12).tolist()
        [[1.0, -1.0]]
    """
    factor = unit_factor(matrix, rel_damping, layer_damping=layer_damping, layer=layer)
    inv = torch.cholesky_inverse(factor)
    inv = 0.5 * (inv + inv.transpose(-1, -2))
    return inv.to(dtype or matrix.dtype)


def unit_apply(inverse: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    r"""``[U, d+1]`` u = F_λ⁻¹ g with the inverse of :func:`unit_inverse`: one batched matmul in
    the inverse's dtype, returned in ``g``'s."""
    return torch.bmm(inverse, g.to(inverse.dtype).unsqueeze(-1)).squeeze(-1).to(g.dtype)


def quasidiagonal_metric(
    diag: torch.Tensor,
    bias_column: torch.Tensor,
    rel_damping: float,
    *,
    layer_damping: float = 0.0,
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(diag(A_λ) [U, d], b [U, d], c_λ [U])`` in float64: what Ollivier's quasi-diagonal
    solve (:func:`natgrad.measures.quasidiagonal_solve`) reads of F_λ, from ``diag``
    ``[U, d+1]`` and ``bias_column`` ``[U, d]`` of F (zero blocks filled, see above)."""
    m, dead = _damped_diagonal(diag, rel_damping, layer_damping, layer)  # [U, d+1]
    b64 = torch.where(dead[:, None], 0.0, bias_column.to(torch.float64))
    return m[:, :-1], b64, m[:, -1]


def quasidiagonal_direction(
    diag: torch.Tensor,
    bias_column: torch.Tensor,
    g: torch.Tensor,
    rel_damping: float,
    *,
    layer_damping: float = 0.0,
    layer: str | None = None,
) -> torch.Tensor:
    r"""``[U, d+1]`` Ollivier's quasi-diagonal inverse of F_λ applied to ``g`` ``[U, d+1]``
    (module docstring), by :func:`natgrad.measures.quasidiagonal_solve`; ``g``'s dtype out."""
    metric = quasidiagonal_metric(
        diag, bias_column, rel_damping, layer_damping=layer_damping, layer=layer
    )
    u, u0 = quasidiagonal_solve(*metric, g[:, :-1], g[:, -1], layer=layer)
    return torch.cat([u, u0.unsqueeze(-1)], dim=-1).to(g.dtype)


def diagonal_coefficients(
    diag: torch.Tensor, rel_damping: float, *, layer_damping: float = 0.0, layer: str | None = None
) -> torch.Tensor:
    r"""``[U, d+1]`` 1 / diag(F_λ), float64 (u = g∘coefficients)."""
    m, _ = _damped_diagonal(diag, rel_damping, layer_damping, layer)
    bad = ~(m > 0).all(-1) | ~torch.isfinite(m).all(-1)
    if bad.any():
        raise SingularBlockError(
            f"{linalg.layer_prefix(layer)}the diagonal entries of the damped unit Fisher are not "
            f"positive for {linalg._names(bad.nonzero().flatten(), None)} (an input that is constant, e.g. an always-zero "
            f"pixel, has a zero Fisher entry): {STEP_HINT}."
        )
    return 1.0 / m


def diagonal_direction(
    diag: torch.Tensor, g: torch.Tensor, rel_damping: float, *, layer: str | None = None
) -> torch.Tensor:
    r"""``[U, d+1]`` u = diag(F_λ)⁻¹ g from ``diag`` ``[U, d+1]``; ``g``'s dtype out."""
    return (g.to(torch.float64) * diagonal_coefficients(diag, rel_damping, layer=layer)).to(g.dtype)
