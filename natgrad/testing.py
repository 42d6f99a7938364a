r"""The one tolerance helper natgrad's tests, notebooks and benchmarks share.

Tolerances live here and nowhere else: ``tolerances(dtype)`` gives ``(rtol, atol)`` for a
comparison of two routes that should agree up to round-off, and :func:`assert_close`
reports the worst entries when they do not.

Example:
    >>> import torch
    >>> assert_close(torch.tensor([1.0, 2.0], dtype=torch.float64),
    ...              torch.tensor([1.0, 2.0 + 1e-13], dtype=torch.float64))
"""

from __future__ import annotations

import torch

# Round-off agreement between two exact routes (different summation orders, solves).
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (1e-4, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


COND_CONSTANT = 100.0
r"""C in the tolerance C·κ·ε of two routes through a solve with a block of condition number κ.

A backward-stable solve of F x = g has relative error up to about κ(F)·ε; two routes
(Cholesky of F vs Theorem 1's route through A⁻¹ and the Schur complement, or through
Var_q(a)⁻¹) each carry such an error, amplified by a small factor from the extra products
and from cancellation in scalar results such as k. C = 100 covers that factor with room:
on the demo's damped ReLU blocks (κ ≈ 1e10) the worst observed ratio error / (κ·ε) was ≈ 4."""


def conditioned_rtol(
    cond, dtype: torch.dtype = torch.float64, *, constant: float = COND_CONSTANT
) -> torch.Tensor:
    r"""Per-entry relative tolerance max(C·κ·ε, rtol(dtype)) for results of solves with blocks
    of condition numbers ``cond`` (``[U]``, exact, e.g. from ``UnitFisher.condition_number``).

    Use it as ``assert_close(a, b, rtol=conditioned_rtol(kappa))``: a well-conditioned unit
    keeps the round-off tolerance of :func:`tolerances`, an ill-conditioned one is allowed
    the error its conditioning implies — never a blindly loosened fixed number.

    Example:
        >>> conditioned_rtol(torch.tensor([1.0, 1e10])).tolist()
        [1e-09, 0.0002220446049250313]
    """
    eps = torch.finfo(dtype).eps
    kappa = torch.as_tensor(cond, dtype=torch.float64)
    return torch.clamp_min(constant * kappa * eps, tolerances(dtype)[0])


COND_FACTOR = 10.0
"""The constant C of :func:`conditioned`: the forward error of a backward-stable solve of an
n×n system with condition number κ is bounded by about n·κ·ε (Higham, *Accuracy and
Stability of Numerical Algorithms*, Thm 10.4 with 7.2); C = 10 absorbs the few solves and
products a measure chains."""


def conditioned(cond, n: int, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    r"""``{"rtol", "atol"}`` for comparing two routes through solves of n×n blocks whose
    (largest) condition number is ``cond``: C·n·κ·ε with C = :data:`COND_FACTOR` and ε the
    machine epsilon of ``dtype``, never tighter than :func:`tolerances`.

    Example:
        >>> conditioned(1e6, 10)  # doctest: +ELLIPSIS
        {'rtol': 2.2...e-08, 'atol': 2.2...e-08}
    """
    kappa = float(torch.as_tensor(cond, dtype=torch.float64).max())
    rtol, atol = tolerances(dtype)
    err = COND_FACTOR * n * kappa * torch.finfo(dtype).eps
    return {"rtol": max(rtol, err), "atol": max(atol, err)}


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing two exact routes computed in ``dtype``."""
    return _TOLERANCES.get(dtype, _TOLERANCES[torch.float32])


def assert_close(
    actual,
    expected,
    *,
    rtol: float | torch.Tensor | None = None,
    atol: float | None = None,
    what: str = "",
    show: int = 5,
    normwise: bool = False,
) -> None:
    """Assert ``|actual − expected| <= atol + rtol·|expected|`` elementwise.

    Defaults come from :func:`tolerances` of the less precise dtype of the two; ``rtol`` may
    be a tensor broadcastable to the entries (:func:`conditioned_rtol`). With ``normwise``
    every entry is held to ``rtol`` times the largest ``|expected|`` of its row (last
    dimension) instead of its own: the forward error of a solve is bounded normwise, ‖Δx‖ ≤
    C·n·κ·ε·‖x‖ (Higham, Thm 7.2), so a small component of a large solution may carry an error
    of the solution's size times κ·ε. Use it for solutions (one unit's direction per row),
    not for scalars per unit. On failure the message lists the ``show`` worst entries (index,
    actual, expected, error) and the largest absolute and relative errors.

    Example:
        >>> x = torch.tensor([[2e4, -2.953875317]], dtype=torch.float64)
        >>> assert_close(x + torch.tensor([[0.0, 1e-8]], dtype=torch.float64), x, normwise=True)
    """
    a = torch.as_tensor(actual)
    e = torch.as_tensor(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    dtype = a.dtype if torch.finfo(a.dtype).eps >= torch.finfo(e.dtype).eps else e.dtype
    default_rtol, default_atol = tolerances(dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    a64 = a.detach().to("cpu", torch.float64)
    e64 = e.detach().to("cpu", torch.float64)
    both_nan = torch.isnan(a64) & torch.isnan(e64)
    same_inf = torch.isinf(a64) & (a64 == e64)
    if not (torch.isfinite(a64) | both_nan | same_inf).all():
        raise AssertionError(f"{what}: actual has NaN/Inf where expected does not")
    err = (a64 - e64).abs()
    rtol_t = torch.as_tensor(rtol, dtype=torch.float64)
    scale = e64.abs().amax(-1, keepdim=True) if normwise and e64.dim() else e64.abs()
    bound = atol + rtol_t * scale
    bad = ~(err <= bound) & ~both_nan & ~same_inf
    if not bad.any():
        return
    excess = torch.where(bad, err - bound, torch.zeros_like(err)).flatten()
    worst = torch.argsort(excess, descending=True)[:show]
    lines = []
    for flat in worst.tolist():
        if excess[flat] <= 0:
            break
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a64.shape))
        lines.append(
            f"  at {idx}: actual {a64[idx].item():.10g}, expected {e64[idx].item():.10g}, "
            f"|err| {err[idx].item():.3g}"
        )
    rel = (err / e64.abs().clamp_min(torch.finfo(torch.float64).tiny)).max().item()
    raise AssertionError(
        f"{what or 'tensors'} not close (rtol={_fmt(rtol_t)}, atol={atol:g}): "
        f"{int(bad.sum())} of {bad.numel()} entries off; max |err| {err.max().item():.3g}, "
        f"max rel err {rel:.3g}\n" + "\n".join(lines)
    )


def _fmt(rtol: torch.Tensor) -> str:
    if rtol.numel() == 1:
        return f"{float(rtol):g}"
    return f"per entry {float(rtol.min()):.3g}..{float(rtol.max()):.3g}"
