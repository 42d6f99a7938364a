r"""Lemmas 1–2 and Theorems 1–2 of Clevert et al. (ICLR 2016), batched over units.

Theorem 1 is the unit-wise natural gradient of Ollivier ("Riemannian metrics for neural
networks I: feedforward networks", 2015, arXiv 1303.0818) — each unit's (w, w0)
preconditioned by the inverse of its own Fisher block — written out with Lemma 1 so that
the weight–bias coupling b and the incoming mean appear explicitly; Theorem 2 follows from
it (``docs/theory.md``, "Theorem 1" and "Theorem 2").

Pure functions on tensors. Shapes: U units, d fan-in; bias LAST, so a unit Fisher block is

.. math::

    F = \begin{pmatrix} A & b \\ b^\top & c \end{pmatrix},\quad
    A\ [U, d, d],\; b\ [U, d],\; c\ [U],

with q-moments E_q(a) = b/c ``[U, d]``, Var_q(a) = A/c − E_q(a)E_q(a)ᵀ ``[U, d, d]`` and
Cov_p(δ̄², a) = b − c E_p(a) ``[U, d]``; E_p(a) is ``[d]`` (shared by the layer) or ``[U, d]``.
Every function computes in float64 (Cholesky solves from :mod:`natgrad.linalg`, never an
explicit inverse except in :func:`lemma1_inverse`) and returns the promoted dtype of its
inputs; keyword ``context`` (``layer=``, ``units=``) names failing units in errors. The
examples below are the hand-checkable case of ``docs/theory.md``: F = [[2, 1], [1, 1]],
E_p(a) = 1, g = 1, g0 = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from natgrad import linalg
from natgrad.errors import InputError, SingularBlockError
from natgrad.linalg import float64_of as _f64
from natgrad.linalg import rowdot as _dot


def _inv_schur(
    A: torch.Tensor, b: torch.Tensor, c: torch.Tensor, Ainv_b: torch.Tensor, context
) -> torch.Tensor:
    """1 / (c − bᵀA⁻¹b) in float64, raising if F is not positive definite."""
    denom = c - _dot(b, Ainv_b)  # [U]
    bad = ~(denom > 0)
    if bad.any():
        pos = bad.nonzero().flatten()
        cond = linalg.condition_number(linalg.bordered(A, b, c)[pos])
        details = [
            f"c − bᵀA⁻¹b = {v:.3g}, condition number {k:.3g}"
            for v, k in zip(denom[pos].tolist(), cond.tolist(), strict=True)
        ]
        names = linalg._names(pos, context.get("units"), details)
        err = SingularBlockError(
            f"{linalg.layer_prefix(context.get('layer'))}unit Fisher block is not positive definite "
            f"(its Schur complement is <= 0) for {names}. Pass damping > 0."
        )
        err.positions, err.condition_numbers = pos, cond
        raise err
    s = 1.0 / denom
    # S = F scaled to a unit diagonal (linalg.COND_WARN): κ(S) >= max_j S_jj · (S⁻¹)_dd =
    # c · s, a rigorous lower bound that sees an ill-conditioned Schur complement, which A's
    # own Cholesky cannot.
    bound = c * s
    if (bound > (warn := context.get("warn_cond", linalg.COND_WARN))).any():
        linalg.warn_nearly_singular(bound, linalg.bordered(A, b, c), warn_cond=warn,
                                    **_names_only(context))  # fmt: skip
    return s


def _names_only(context) -> dict:
    return {"layer": context.get("layer"), "units": context.get("units")}


def _warn_from_moments(mean_q: torch.Tensor, var_q: torch.Tensor, x: torch.Tensor, context):
    r"""Warn for the routes through Var_q(a): with x = Var_q(a)⁻¹E_q(a), s·c = 1 + E_q(a)ᵀx,
    and κ(S) >= (S⁻¹)_dd = s·c for F scaled to a unit diagonal, S (:func:`_inv_schur`)."""
    bound = 1.0 + _dot(mean_q, x)
    if (bound > (warn := context.get("warn_cond", linalg.COND_WARN))).any():
        linalg.warn_nearly_singular(bound, warn_cond=warn, **_names_only(context))


def schur_complement(A: torch.Tensor, b: torch.Tensor, c: torch.Tensor, **context) -> torch.Tensor:
    r"""``[U]`` s = 1 / (c − bᵀA⁻¹b), the bias entry of F⁻¹ (Lemma 1, Theorem 1). s > 0.

    Example:
        >>> schur_complement(torch.tensor([[[2.0]]]), torch.tensor([[1.0]]), torch.tensor([1.0]))
        tensor([2.])
    """
    out, (A, b, c) = _f64(A, b, c)
    Ainv_b = linalg.solve(A, b, what="weight block A", **context)
    return _inv_schur(A, b, c, Ainv_b, context).to(out)


def schur_complement_paper(
    c: torch.Tensor, mean_q: torch.Tensor, var_q: torch.Tensor, **context
) -> torch.Tensor:
    r"""``[U]`` s = E_p(δ̄²)⁻¹ (1 + E_q(a)ᵀ Var_q(a)⁻¹ E_q(a)), the paper's form of s
    (Theorem 1 via Lemma 2(i)); equal to :func:`schur_complement`.

    Example:
        >>> schur_complement_paper(torch.tensor([1.0]), torch.tensor([[1.0]]), torch.tensor([[[1.0]]]))
        tensor([2.])
    """
    out, (c, m, V) = _f64(c, mean_q, var_q)
    x = linalg.solve(V, m, what="Var_q(a)", **context)
    _warn_from_moments(m, V, x, context)
    return ((1.0 + _dot(m, x)) / c).to(out)


def lemma1_inverse(A: torch.Tensor, b: torch.Tensor, c: torch.Tensor, **context) -> torch.Tensor:
    r"""``[U, d+1, d+1]`` F⁻¹ by Lemma 1 (block inverse, Appendix A; bias last):

    .. math::

        F^{-1} = \begin{pmatrix} A^{-1} + u u^\top / s & u \\ u^\top & s \end{pmatrix},\quad
        s = \frac{1}{c - b^\top A^{-1} b},\quad u = -s A^{-1} b.

    Example:
        >>> lemma1_inverse(torch.tensor([[[2.0]]]), torch.tensor([[1.0]]), torch.tensor([1.0]))
        tensor([[[ 1., -1.],
                 [-1.,  2.]]])
    """
    out, (A, b, c) = _f64(A, b, c)
    L = linalg.cholesky(A, what="weight block A", **context)
    Ainv_b = linalg.cho_solve(L, b)
    s = _inv_schur(A, b, c, Ainv_b, context)  # [U]
    u = -s.unsqueeze(-1) * Ainv_b  # [U, d]
    top = torch.cholesky_inverse(L) + u.unsqueeze(-1) * u.unsqueeze(-2) / s[:, None, None]
    return linalg.bordered(top, u, s).to(out)


def lemma2_i(mean: torch.Tensor, var: torch.Tensor, **context) -> torch.Tensor:
    r"""``[U]`` mᵀ E(aaᵀ)⁻¹ m, computed as t / (1 + t) with t = mᵀ Var(a)⁻¹ m (Lemma 2(i),
    Appendix B, Sherman–Morrison); hence it is < 1 and (1 − mᵀE(aaᵀ)⁻¹m)⁻¹ = 1 + t.

    Args: ``mean`` m = E(a) ``[U, d]``, ``var`` Var(a) ``[U, d, d]`` (positive definite).

    Example:
        >>> lemma2_i(torch.tensor([[1.0]]), torch.tensor([[[1.0]]]))  # E(a²) = 2: 1·½·1
        tensor([0.5000])
    """
    out, (m, V) = _f64(mean, var)
    t = _dot(m, linalg.solve(V, m, what="Var(a)", **context))
    return (t / (1.0 + t)).to(out)


def lemma2_ii(
    mean: torch.Tensor, mean_p: torch.Tensor, var: torch.Tensor, **context
) -> torch.Tensor:
    r"""``[U]`` (1 − m_pᵀ E(aaᵀ)⁻¹ m) / (1 − mᵀ E(aaᵀ)⁻¹ m), computed as
    1 + (m − m_p)ᵀ Var(a)⁻¹ m (Lemma 2(ii)), for m = E(a) ``[U, d]``, any m_p ``[d]`` or
    ``[U, d]``, Var(a) ``[U, d, d]``.

    Example:
        >>> lemma2_ii(torch.tensor([[1.0]]), torch.tensor([0.0]), torch.tensor([[[1.0]]]))
        tensor([2.])
    """
    out, (m, mp, V) = _f64(mean, mean_p, var)
    return (1.0 + _dot(m - mp, linalg.solve(V, m, what="Var(a)", **context))).to(out)


def k_paper(
    A: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    cov_p: torch.Tensor,
    mean_q: torch.Tensor,
    **context,
) -> torch.Tensor:
    r"""``[U]`` k = s · E_p(δ̄²) · Cov_p(δ̄², a)ᵀ A⁻¹ E_q(a), the paper's form (Theorem 2).

    Example:
        >>> k_paper(torch.tensor([[[2.0]]]), torch.tensor([1.0]), torch.tensor([2.0]),
        ...         torch.tensor([[0.0]]), torch.tensor([[1.0]]))
        tensor([0.])
    """
    out, (A, c, s, cov, m) = _f64(A, c, s, cov_p, mean_q)
    return (s * c * _dot(cov, linalg.solve(A, m, what="weight block A", **context))).to(out)


def k_closed(
    mean_p: torch.Tensor, mean_q: torch.Tensor, var_q: torch.Tensor, **context
) -> torch.Tensor:
    r"""``[U]`` k = (E_q(a) − E_p(a))ᵀ Var_q(a)⁻¹ E_q(a), the closed form (Theorem 2 via
    Lemma 2(ii)). k = 0 when δ̄² and a are uncorrelated (then E_q(a) = E_p(a)).

    Example:
        >>> k_closed(torch.tensor([1.0]), torch.tensor([[1.0]]), torch.tensor([[[1.0]]]))
        tensor([0.])
    """
    out, (mp, m, V) = _f64(mean_p, mean_q, var_q)
    x = linalg.solve(V, m, what="Var_q(a)", **context)
    _warn_from_moments(m, V, x, context)
    return _dot(m - mp, x).to(out)


def natural_gradient(
    A: torch.Tensor, b: torch.Tensor, c: torch.Tensor, g: torch.Tensor, g0: torch.Tensor, **context
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Unit natural gradient (Δw ``[U, d]``, Δw0 ``[U]``) = F⁻¹ (g, g0) by Theorem 1 (Ollivier's
    unit-wise natural gradient, arXiv 1303.0818, for one unit's (w, w0) block):

    .. math::

        \Delta w_0 = s\,(g_0 - b^\top A^{-1} g),\qquad
        \Delta w = A^{-1}(g - \Delta w_0\, b),\qquad s = 1/(c - b^\top A^{-1} b),

    with one batched Cholesky of A solving for A⁻¹g and A⁻¹b together (never a solve of the
    full block).

    Example:
        >>> natural_gradient(torch.tensor([[[2.0]]]), torch.tensor([[1.0]]), torch.tensor([1.0]),
        ...                  torch.tensor([[1.0]]), torch.tensor([0.0]))
        (tensor([[1.]]), tensor([-1.]))
    """
    out, (A, b, c, g, g0) = _f64(A, b, c, g, g0)
    Ainv_g, Ainv_b, s = _solve_pair(A, b, c, g, context)
    dw, dw0 = theorem1_from_solves(g0, b, s, Ainv_g, Ainv_b)
    return dw.to(out), dw0.to(out)


def theorem1_from_solves(g0, b, s, Ainv_g, Ainv_b, bAg=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δw ``[U, d]``, Δw0 ``[U]``) from the A-solves A⁻¹g, A⁻¹b and s (float64): every
    route's Theorem 1, whatever solves with A it has. ``bAg``: bᵀA⁻¹g where the route has a
    more accurate one than ``b·A⁻¹g`` (the solved results: (A⁻¹b)ᵀg, A⁻¹b by a closed form)."""
    dw0 = s * (g0 - (_dot(b, Ainv_g) if bAg is None else bAg))  # [U]
    return Ainv_g - dw0.unsqueeze(-1) * Ainv_b, dw0  # [U, d] = A⁻¹(g − Δw0 b)


def k_from_solves(s, b, c, mean_p, Ainv_b) -> torch.Tensor:
    """``[U]`` k = s·(b − c·E_p(a))ᵀA⁻¹b = s·c·Cov_pᵀA⁻¹E_q(a) from A⁻¹b (float64)."""
    return s * _dot(b - c.unsqueeze(-1) * mean_p, Ainv_b)


def _solve_pair(A, b, c, g, context):
    """A⁻¹g, A⁻¹b (one Cholesky, two right-hand sides) and s, in float64."""
    if g.shape != b.shape:
        raise InputError(
            f"{linalg.layer_prefix(context.get('layer'))}g must have shape {tuple(b.shape)}, got {tuple(g.shape)}"
        )
    x = linalg.solve(A, torch.stack([g, b], -1), what="weight block A", **context)  # [U, d, 2]
    Ainv_g, Ainv_b = x[..., 0], x[..., 1]
    return Ainv_g, Ainv_b, _inv_schur(A, b, c, Ainv_b, context)


@dataclass(frozen=True)
class BiasShift:
    r"""Theorem 2's bias shifts of one layer's units, each ``[U]`` (``corrected_mean`` ``[U, d]``).

    Attributes:
        shift_natural: (E_p(a) − (1+k)E_q(a))ᵀA⁻¹g + (1+k)g0/c = E_p(a)ᵀΔw + Δw0, the shift
            of the unit natural gradient.
        shift_blockdiag: E_p(a)ᵀA⁻¹g + g0/c, the shift with the coupling b set to 0.
        shift_plain: E_p(a)ᵀg + g0, the shift of the plain gradient step.
        k: (E_q(a) − E_p(a))ᵀVar_q(a)⁻¹E_q(a).
        corrected_mean: E_p(a) − (1+k)E_q(a), the incoming mean the natural gradient acts on.
    """

    shift_natural: torch.Tensor
    shift_blockdiag: torch.Tensor
    shift_plain: torch.Tensor
    k: torch.Tensor
    corrected_mean: torch.Tensor


def bias_shift(
    A: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    mean_p: torch.Tensor,
    g: torch.Tensor,
    g0: torch.Tensor,
    **context,
) -> BiasShift:
    r"""Theorem 2: the bias shift E_p(a)ᵀΔw + Δw0 of the unit natural gradient is

    .. math::

        \text{shift}_\text{natural} = (E_p(a) - (1+k)E_q(a))^\top A^{-1} g + (1+k)\,g_0/c,\quad
        k = s\,E_p(\bar\delta^2)\,\mathrm{Cov}_p(\bar\delta^2, a)^\top A^{-1} E_q(a),

    returned with the block-diagonal and plain shifts (see :class:`BiasShift`). k is computed
    by the paper's form, reusing the one Cholesky of A.

    Example:
        >>> r = bias_shift(torch.tensor([[[2.0]]]), torch.tensor([[1.0]]), torch.tensor([1.0]),
        ...                torch.tensor([1.0]), torch.tensor([[1.0]]), torch.tensor([0.0]))
        >>> r.shift_natural, r.shift_blockdiag, r.shift_plain, r.k, r.corrected_mean
        (tensor([0.]), tensor([0.5000]), tensor([1.]), tensor([0.]), tensor([[0.]]))
    """
    out, (A, b, c, mp, g, g0) = _f64(A, b, c, mean_p, g, g0)
    return bias_shift_from_solves(mp, g, g0, b, c, *_solve_pair(A, b, c, g, context), out)


def bias_shift_from_solves(mp, g, g0, b, c, Ainv_g, Ainv_b, s, out: torch.dtype,
                           bAg=None) -> BiasShift:  # fmt: skip
    """Theorem 2's :class:`BiasShift` from the A-solves A⁻¹g, A⁻¹b and s (float64), in ``out``;
    ``bAg`` as in :func:`theorem1_from_solves` (then shift_natural = E_pᵀA⁻¹g + (1+k)(g0 −
    bᵀA⁻¹g)/c, the same number without the cancellation of (E_p − (1+k)E_q)ᵀA⁻¹g)."""
    k = k_from_solves(s, b, c, mp, Ainv_b)
    corrected = mp - (1.0 + k).unsqueeze(-1) * (b / c.unsqueeze(-1))  # [U, d]
    natural = (_dot(corrected, Ainv_g) + (1.0 + k) * g0 / c if bAg is None
               else _dot(mp, Ainv_g) + (1.0 + k) * (g0 - bAg) / c)  # fmt: skip
    return BiasShift(
        shift_natural=natural.to(out),
        shift_blockdiag=(_dot(mp, Ainv_g) + g0 / c).to(out),
        shift_plain=(_dot(mp, g) + g0).to(out),
        k=k.to(out),
        corrected_mean=corrected.to(out),
    )


def cosine(g: torch.Tensor, g0: torch.Tensor, dw: torch.Tensor, dw0: torch.Tensor) -> torch.Tensor:
    r"""``[U]`` cos∠((g, g0), (Δw, Δw0)) per unit, ∈ (0, 1] for a natural gradient
    (F⁻¹ is positive definite). A unit with a zero gradient gets 1 (both steps are zero).

    Example:
        >>> cosine(torch.tensor([[1.0]]), torch.tensor([0.0]), torch.tensor([[1.0]]), torch.tensor([-1.0]))
        tensor([0.7071])
    """
    out, (g, g0, dw, dw0) = _f64(g, g0, dw, dw0)
    x = torch.cat([g, g0.unsqueeze(-1)], -1)
    y = torch.cat([dw, dw0.unsqueeze(-1)], -1)
    norm = x.norm(dim=-1) * y.norm(dim=-1)
    return torch.where(norm > 0, _dot(x, y) / torch.where(norm > 0, norm, 1.0), 1.0).to(out)
