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


# Two float64 routes through solves of ill-conditioned blocks (condition number up to 1e10,
# the demo's damping limit, see natgrad.unitstats.COND_LIMIT): agreement to ~cond·eps.
SOLVE_ROUTES: dict[str, float] = {"rtol": 1e-6, "atol": 1e-9}
# Routes through Var_q(a)⁻¹ (k's closed form), whose condition number exceeds the block's by
# up to the factor s·c = 1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a).
MOMENT_ROUTES: dict[str, float] = {"rtol": 1e-5, "atol": 1e-8}


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
    rtol: float | None = None,
    atol: float | None = None,
    what: str = "",
    show: int = 5,
) -> None:
    """Assert ``|actual − expected| <= atol + rtol·|expected|`` elementwise.

    Defaults come from :func:`tolerances` of the less precise dtype of the two. On failure
    the message lists the ``show`` worst entries (index, actual, expected, error) and the
    largest absolute and relative errors.
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
    if not torch.isfinite(a64).all() or not torch.isfinite(e64).all():
        if not (torch.isfinite(a64) | both_nan | same_inf).all():
            raise AssertionError(f"{what}: actual has NaN/Inf where expected does not")
    err = (a64 - e64).abs()
    bound = atol + rtol * e64.abs()
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
        f"{what or 'tensors'} not close (rtol={rtol:g}, atol={atol:g}): "
        f"{int(bad.sum())} of {bad.numel()} entries off; max |err| {err.max().item():.3g}, "
        f"max rel err {rel:.3g}\n" + "\n".join(lines)
    )
