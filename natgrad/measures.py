r"""How close is an update to the unit natural gradient: directions, Fisher efficiency and
bias-shift error, batched over units (``docs/theory.md``, "Measures").

Every quantity lives in ONE metric per unit, the relatively damped block

.. math::

    F_\lambda = F + \mu I,\qquad \mu = \lambda\,\frac{\operatorname{tr} F}{d+1}
    = \begin{pmatrix} A_\lambda & b \\ b^\top & c_\lambda \end{pmatrix}

(λ = ``rel_damping``, the same for every unit; μ per unit; bias last). The update
directions u of the gradient g = (g_w, g0) (:data:`DIRECTIONS`: plain, centred, diagonal,
quasidiagonal, arrowhead, blockdiag, natural), the **Fisher efficiency**
ρ(u) = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g) ∈ [−1, 1] and the **relative bias-shift error**
|shift(u) − shift_natural| / |shift_natural|, shift(u) = E_p(a)ᵀu_w + u_0, are defined in
``docs/theory.md``, "Measures" (with why they, and not the Euclidean cosine).

Shapes: U units, d fan-in; ``matrix`` ``[U, d+1, d+1]``, ``mean_p`` ``[d]`` or ``[U, d]``,
``g`` ``[U, d]``, ``g0`` ``[U]``. Everything is computed in float64 and returned in the
promoted dtype of the inputs.

Example (the hand-checkable case of ``docs/theory.md``, F = [[2, 1], [1, 1]], E_p(a) = 1, g = (1, 0)):
    >>> import torch
    >>> F, m = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]]), torch.tensor([1.0])
    >>> g, g0 = torch.tensor([[1.0]]), torch.tensor([0.0])
    >>> r = measures(F, m, g, g0)
    >>> [round(float(r["rho_" + k]), 4) for k in ("plain", "blockdiag", "natural")]
    [0.7071, 0.7071, 1.0]
    >>> float(r["shift_natural"]), float(r["shift_error_plain"])
    (0.0, inf)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from natgrad import damping, linalg
from natgrad.errors import InputError, SingularBlockError
from natgrad.linalg import float64_of as _f64
from natgrad.linalg import rowdot as _dot

DIRECTIONS = ("plain", "centred", "diagonal", "quasidiagonal", "arrowhead", "blockdiag", "natural")
"""The update directions :func:`direction` and :func:`measures` know, cheapest first."""


def damping_of(matrix: torch.Tensor, rel_damping: float) -> torch.Tensor:
    r"""``[U]`` the absolute damping μ = λ · tr(F)/(d+1) of each block (its mean diagonal
    entry times λ = ``rel_damping``), float64.

    Example:
        >>> damping_of(torch.tensor([[[2.0, 1.0], [1.0, 1.0]]]), 0.1)
        tensor([0.1500], dtype=torch.float64)
    """
    diag = torch.diagonal(matrix.to(torch.float64), dim1=-2, dim2=-1)
    return damping.mu(diag.sum(-1), diag.shape[-1], rel_damping)


def relative_damped(matrix: torch.Tensor, rel_damping: float) -> torch.Tensor:
    r"""``[U, d+1, d+1]`` F_λ = F + λ·(tr F/(d+1))·I per unit, in float64.

    Example:
        >>> relative_damped(torch.tensor([[[2.0, 1.0], [1.0, 1.0]]]), 0.1)
        tensor([[[2.1500, 1.0000],
                 [1.0000, 1.1500]]], dtype=torch.float64)
    """
    mu = damping_of(matrix, rel_damping)
    m64 = matrix.to(torch.float64)
    if not bool((mu != 0).any()):
        return m64
    eye = torch.eye(m64.shape[-1], dtype=torch.float64, device=m64.device)
    return m64 + mu[:, None, None] * eye


def _dead(matrix: torch.Tensor) -> torch.Tensor:
    r"""``[U]`` bool: the dead units, whose block is zero (tr F = 0; for a ``Linear`` unit
    exactly where c = E_p(δ̄²) = 0): no metric, so every measure of theirs is NaN
    (:func:`measures`), as in the structured and Woodbury results."""
    return matrix.diagonal(dim1=-2, dim2=-1).sum(-1) == 0  # NaN is not dead: it is refused


def _over_live(fn, rel_damping, per_unit: tuple, mean_p=None, **context):
    r"""``None`` where every unit of ``per_unit[0]`` (the blocks) lives; else ``fn`` with each
    dead unit's zero block replaced by the identity (a stand-in, so that the stack solves),
    its outputs NaN at the dead units: a dead unit's block is never solved with, as in
    :func:`measures` and the structured results. Every other unit is computed as without the
    stand-in, and errors name units by their positions in the whole stack;
    ``rel_damping`` is checked as the live path checks it."""
    M = per_unit[0]
    dead = _dead(M)
    if not dead.any():
        return None
    damping.check(rel_damping)  # also where every unit is dead
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    args = [torch.where(dead[:, None, None], eye, M), *per_unit[1:]]
    if mean_p is not None:
        args.insert(1, mean_p)
    got = fn(*args, **context)
    nan = lambda x: torch.where(dead.view(-1, *[1] * (x.ndim - 1)), math.nan, x)  # noqa: E731
    return tuple(map(nan, got)) if isinstance(got, tuple) else nan(got)


def _hinted(context: dict) -> dict:
    """``context`` with the hint a singular block's message gives here (the measures' damping
    is the relative ``rel_damping``), unless the caller gave its own."""
    return {"hint": "Pass rel_damping > 0 (μ = λ·tr F/(d+1) on each unit's diagonal), or drop "
                    "these units.", **context}  # fmt: skip


def _singular(what: str, bad: torch.Tensor, context) -> SingularBlockError:
    pos = bad.nonzero().flatten()
    err = SingularBlockError(
        f"{linalg.layer_prefix(context.get('layer'))}{what} for {pos.numel()} of {bad.numel()} "
        f"units ({linalg._names(pos, context.get('units'))}); the block is not positive "
        f"definite there: {context.get('hint') or 'pass rel_damping > 0 or drop these units'}"
    )
    err.positions = pos
    return err


def quasidiagonal_solve(
    diag_A: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    g: torch.Tensor,
    g0: torch.Tensor,
    **context,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Ollivier's quasi-diagonal update (u_w ``[U, d]``, u_0 ``[U]``) from the diagonal of
    the weight block ``diag_A`` ``[U, d]``, the weight–bias coupling ``b`` ``[U, d]``, the bias
    entry ``c`` ``[U]`` and the gradient (``g`` ``[U, d]``, ``g0`` ``[U]``):

    .. math::

        u_j = \frac{c\,g_j - b_j\,g_0}{c\,A_{jj} - b_j^2},\qquad
        u_0 = \frac{g_0 - \sum_j b_j u_j}{c}

    Each u_j solves the 2×2 system of the pair (w_j, w0) exactly; u_0 then corrects the bias
    for every weight's move. Cost O(U·d), reading only diag(A), b and c; its properties
    (invariance, F⁻¹g for d = 1, positive definite): ``docs/theory.md``, "Measures".

    Raises:
        SingularBlockError: c ≤ 0 or c·A_jj − b_j² ≤ 0 for some unit (named via
            ``layer=``, ``units=`` in ``context``).

    Example:
        >>> quasidiagonal_solve(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([1.0]),
        ...                     torch.tensor([[1.0]]), torch.tensor([0.0]))  # = F⁻¹g for d = 1
        (tensor([[1.]]), tensor([-1.]))
    """
    out, (a, b, c, g, g0) = _f64(diag_A, b, c, g, g0)
    u, u0 = quasidiagonal_apply(quasidiagonal_factor(a, b, c, **context), g, g0)
    return u.to(out), u0.to(out)


class QuasidiagonalFactor(NamedTuple):
    r"""What :func:`quasidiagonal_apply` needs of a quasi-diagonal metric, computed once:
    α = c/det ``[U, d]``, β = b/det ``[U, d]``, b ``[U, d]`` and 1/c ``[U]``, with
    det_j = c·A_jj − b_j² (so u_j = α_j g_j − β_j g0 and u_0 = (g0 − Σ_j b_j u_j)/c)."""

    alpha: torch.Tensor
    beta: torch.Tensor
    b: torch.Tensor
    inv_c: torch.Tensor

    def to(self, dtype: torch.dtype) -> QuasidiagonalFactor:
        return QuasidiagonalFactor(*(t.to(dtype) for t in self))


def quasidiagonal_factor(
    diag_A: torch.Tensor, b: torch.Tensor, c: torch.Tensor, **context
) -> QuasidiagonalFactor:
    r"""The per-metric part of :func:`quasidiagonal_solve` (float64), with its singularity
    check: an optimizer computes it once per Fisher refresh and applies it every step."""
    _, (a, b, c) = _f64(diag_A, b, c)
    det = c.unsqueeze(-1) * a - b.square()  # [U, d]
    bad = ~(c > 0) | ~(det > 0).all(-1)
    if bad.any():
        raise _singular(
            "quasi-diagonal 2×2 blocks [[A_jj, b_j], [b_j, c]] are singular", bad, context
        )
    return QuasidiagonalFactor(c.unsqueeze(-1) / det, b / det, b, 1.0 / c)


def quasidiagonal_apply(
    factor: QuasidiagonalFactor, g: torch.Tensor, g0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(u_w ``[U, d]``, u_0 ``[U]``) of :func:`quasidiagonal_solve` from a precomputed
    ``factor``, in the factor's dtype: O(U·d) elementwise work, no check."""
    u = factor.alpha * g - factor.beta * g0.unsqueeze(-1)
    u0 = (g0 - _dot(factor.b, u)) * factor.inv_c
    return u, u0


def arrowhead_solve(
    diag_A: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    g: torch.Tensor,
    g0: torch.Tensor,
    **context,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""u = M⁻¹g for the arrowhead matrix M = [[diag(A), b], [bᵀ, c]] (every off-diagonal
    entry of the weight block set to 0), in O(U·d):

    .. math::

        u_0 = \frac{g_0 - \sum_j b_j g_j / A_{jj}}{c - \sum_j b_j^2 / A_{jj}},\qquad
        u_j = \frac{g_j - b_j u_0}{A_{jj}}.

    M need not be positive definite (its Schur complement c − Σ_j b_j²/A_jj can be < 0)
    and u is not invariant under shifts of the incoming activations, unlike
    :func:`quasidiagonal_solve`. Computed in float64.

    Raises:
        SingularBlockError: some A_jj ≤ 0 or the Schur complement is 0 (M singular).

    Example:
        >>> arrowhead_solve(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([1.0]),
        ...                 torch.tensor([[1.0]]), torch.tensor([0.0]))
        (tensor([[1.]]), tensor([-1.]))
    """
    out, (a, b, c, g, g0) = _f64(diag_A, b, c, g, g0)
    bad = ~(a > 0).all(-1)
    if bad.any():
        raise _singular("a diagonal entry of the weight block is <= 0", bad, context)
    schur = c - _dot(b, b / a)
    bad = ~(schur != 0) | ~torch.isfinite(schur)
    if bad.any():
        raise _singular("the arrowhead matrix is singular (Schur complement 0)", bad, context)
    u0 = (g0 - _dot(b, g / a)) / schur
    u = (g - b * u0.unsqueeze(-1)) / a
    return u.to(out), u0.to(out)


def centred_direction(
    mean_p: torch.Tensor, g: torch.Tensor, g0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The plain step taken where the unit sees centred inputs: u = T Tᵀ g with
    T = [[I, 0], [−mᵀ, 1]], m = E_p(a) (θ = Tθ′ maps the centred parameters (w, v0) of
    net = wᵀ(a − m) + v0 to (w, w0)):

    .. math::

        u_w = g_w - m\,g_0,\qquad u_0 = g_0 - m^\top u_w .

    Example:
        >>> centred_direction(torch.tensor([1.0]), torch.tensor([[1.0]]), torch.tensor([0.0]))
        (tensor([[1.]]), tensor([-1.]))
    """
    out, (m, g, g0) = _f64(mean_p, g, g0)
    u = g - m * g0.unsqueeze(-1)
    return u.to(out), (g0 - _dot(m, u)).to(out)


def direction(
    matrix: torch.Tensor,
    mean_p: torch.Tensor,
    g: torch.Tensor,
    g0: torch.Tensor,
    kind: str,
    rel_damping: float = 0.0,
    **context,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The update direction (u_w ``[U, d]``, u_0 ``[U]``) of ``kind`` (one of
    :data:`DIRECTIONS`): ``plain`` g; ``centred`` (:func:`centred_direction`); ``diagonal``
    diag(F_λ)⁻¹g; ``quasidiagonal`` (:func:`quasidiagonal_solve`); ``arrowhead``
    (:func:`arrowhead_solve`); ``blockdiag`` (A_λ⁻¹g_w, g0/c_λ), the coupling b set to 0;
    ``natural`` F_λ⁻¹g (Theorem 1). Only ``blockdiag`` and ``natural`` factorise (A_λ and
    F_λ by Cholesky); the others are O(d). The kinds that need the metric are NaN for a dead
    unit (a zero block: no metric, as in :func:`measures`); the other units are unaffected.

    Example:
        >>> F, m = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]]), torch.tensor([1.0])
        >>> direction(F, m, torch.tensor([[1.0]]), torch.tensor([0.0]), "blockdiag")
        (tensor([[0.5000]]), tensor([0.]))
    """
    if kind not in DIRECTIONS:
        raise InputError(f"unknown direction {kind!r}: choose one of {', '.join(DIRECTIONS)}")
    out, (M, m, g, g0) = _f64(matrix, mean_p, g, g0)
    if kind == "plain":
        return g.to(out), g0.to(out)
    if kind == "centred":
        u, u0 = centred_direction(m, g, g0)
        return u.to(out), u0.to(out)
    again = lambda *a, **c: direction(*a, kind, rel_damping, **c)  # noqa: E731
    if (got := _over_live(again, rel_damping, (M, g, g0), m, **context)) is not None:
        return got[0].to(out), got[1].to(out)
    F = relative_damped(M, rel_damping)
    diag, b, c = torch.diagonal(F, dim1=-2, dim2=-1), F[:, :-1, -1], F[:, -1, -1]
    if kind == "diagonal":
        bad = ~(diag > 0).all(-1)
        if bad.any():
            raise _singular("a diagonal entry of F_λ is <= 0", bad, context)
        return (g / diag[:, :-1]).to(out), (g0 / diag[:, -1]).to(out)
    if kind in ("quasidiagonal", "arrowhead"):
        solve = quasidiagonal_solve if kind == "quasidiagonal" else arrowhead_solve
        u, u0 = solve(diag[:, :-1], b, c, g, g0, **context)
        return u.to(out), u0.to(out)
    if kind == "blockdiag":
        u = linalg.solve(F[:, :-1, :-1], g, what="weight block A_λ", **_hinted(context))
        bad = ~(c > 0)
        if bad.any():
            raise _singular("the bias entry c_λ is <= 0", bad, context)
        return u.to(out), (g0 / c).to(out)
    x = linalg.solve(
        F, torch.cat([g, g0.unsqueeze(-1)], -1), what="unit Fisher block F_λ", **_hinted(context)
    )
    return x[:, :-1].to(out), x[:, -1].to(out)


def efficiency(
    matrix: torch.Tensor,
    g: torch.Tensor,
    g0: torch.Tensor,
    u: torch.Tensor,
    u0: torch.Tensor,
    rel_damping: float = 0.0,
    **context,
) -> torch.Tensor:
    r"""``[U]`` Fisher efficiency ρ(u) = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g) of the update
    (``u`` ``[U, d]``, ``u0`` ``[U]``) for the gradient (``g``, ``g0``): the cosine between u
    and the natural gradient F_λ⁻¹g in the metric F_λ. NaN where g = 0 or u = 0 (no
    direction to compare) and for a dead unit (a zero block: no metric, as in :func:`measures`).

    Example:
        >>> F = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]])
        >>> efficiency(F, torch.tensor([[1.0]]), torch.tensor([0.0]), torch.tensor([[1.0]]),
        ...            torch.tensor([0.0]))  # the plain gradient: 1/√2
        tensor([0.7071])
    """
    out, (M, g, g0, u, u0) = _f64(matrix, g, g0, u, u0)
    again = lambda *a, **c: efficiency(*a, rel_damping, **c)  # noqa: E731
    if (got := _over_live(again, rel_damping, (M, g, g0, u, u0), **context)) is not None:
        return got.to(out)
    F = relative_damped(M, rel_damping)
    G = torch.cat([g, g0.unsqueeze(-1)], -1)
    V = torch.cat([u, u0.unsqueeze(-1)], -1)
    L = linalg.cholesky(F, what="unit Fisher block F_λ", **_hinted(context))
    gFg = _dot(G, linalg.cho_solve(L, G))
    uFu = _dot(V, (F @ V.unsqueeze(-1)).squeeze(-1))
    return (_dot(G, V) / torch.sqrt(uFu * gFg)).to(out)


def bias_shift_error(
    matrix: torch.Tensor,
    mean_p: torch.Tensor,
    g: torch.Tensor,
    g0: torch.Tensor,
    u: torch.Tensor,
    u0: torch.Tensor,
    rel_damping: float = 0.0,
    **context,
) -> torch.Tensor:
    r"""``[U]`` relative bias-shift error |shift(u) − shift_natural| / |shift_natural| of the
    update (``u``, ``u0``), shift(u) = E_p(a)ᵀu + u_0, shift_natural that of F_λ⁻¹g
    (inf where shift_natural = 0 ≠ shift(u), NaN where both are 0, and for a dead unit:
    a zero block, no metric, as in :func:`measures`).

    Example:
        >>> F, m = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]]), torch.tensor([1.0])
        >>> g, g0 = torch.tensor([[1.0]]), torch.tensor([0.0])
        >>> bias_shift_error(F, m, g, g0, torch.tensor([[1.0]]), torch.tensor([-0.5]))
        tensor([inf])
    """
    out, (M, m, g, g0, u, u0) = _f64(matrix, mean_p, g, g0, u, u0)
    again = lambda *a, **c: bias_shift_error(*a, rel_damping, **c)  # noqa: E731
    if (got := _over_live(again, rel_damping, (M, g, g0, u, u0), m, **context)) is not None:
        return got.to(out)
    nat, nat0 = direction(M, m, g, g0, "natural", rel_damping, **context)
    natural = _dot(m, nat) + nat0
    return (((_dot(m, u) + u0) - natural).abs() / natural.abs()).to(out)


def measures(
    matrix: torch.Tensor,
    mean_p: torch.Tensor,
    g: torch.Tensor,
    g0: torch.Tensor,
    rel_damping: float = 0.0,
    **context,
) -> dict[str, torch.Tensor]:
    r"""Every measure of every direction from ONE Cholesky factorisation of F_λ per unit.

    Returns ``{name: [U] tensor}`` (float64):

    - ``rho_<kind>`` for every kind in :data:`DIRECTIONS`: the Fisher efficiency ρ(u);
    - ``shift_<kind>``: shift(u) = E_p(a)ᵀu_w + u_0 (``shift_natural`` is Theorem 2's);
    - ``shift_error_<kind>`` for every kind but ``natural``: |shift(u) − shift_natural| /
      |shift_natural|;
    - ``damping``: the absolute damping μ = λ·tr(F)/(d+1) of each unit;
    - ``dead``: 1.0 where the block is zero (tr F = 0; c = E_p(δ̄²) = 0 for a Linear unit, one
      that never influences the output: no metric, so every other entry is NaN there), else
      0.0.

    Cost per unit: one Cholesky of F_λ, whose leading d×d block is the factor of A_λ
    (serving ``blockdiag``), one forward and one backward triangular solve (natural and
    blockdiag together) and one batched product F_λ·[u_1 … u_K]; the other directions are
    O(d). Warns (:class:`~natgrad.errors.NearlySingularWarning`) as :func:`natgrad.linalg.cholesky`.

    Example:
        >>> F, m = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]]), torch.tensor([1.0])
        >>> r = measures(F, m, torch.tensor([[1.0]]), torch.tensor([0.0]))
        >>> [round(float(r[k]), 12) for k in ("shift_blockdiag", "rho_quasidiagonal", "dead")]
        [0.5, 1.0, 0.0]
    """
    _, (M, m, g, g0) = _f64(matrix, mean_p, g, g0)
    keys = [f"rho_{k}" for k in DIRECTIONS] + [f"shift_{k}" for k in DIRECTIONS]
    keys += [f"shift_error_{k}" for k in DIRECTIONS if k != "natural"]
    live = lambda *a, **c: _live_measures(*a, rel_damping, **c)  # noqa: E731
    if (got := _over_live(live, rel_damping, (M, g, g0), m, **context)) is None:
        got = live(M, m, g, g0, **context)
    result = dict(zip(keys, got, strict=True))
    result["damping"] = damping_of(M, rel_damping)
    result["dead"] = _dead(M).to(torch.float64)
    return result


def _live_measures(M, m, g, g0, rel_damping, **context) -> tuple:
    r"""The measures of :func:`measures` in its key order, every unit live (float64)."""
    d = M.shape[-1] - 1
    F = relative_damped(M, rel_damping)
    diag = torch.diagonal(F, dim1=-2, dim2=-1)
    b, c = F[:, :-1, -1], F[:, -1, -1]
    L = linalg.cholesky(
        F, what="unit Fisher block F_λ", **_hinted(context)
    )  # the one factorisation
    G = torch.cat([g, g0.unsqueeze(-1)], -1)  # [u, d+1]

    dirs = {"plain": G}
    u, u0 = centred_direction(m, g, g0)
    dirs["centred"] = torch.cat([u, u0.unsqueeze(-1)], -1)
    dirs["diagonal"] = G / diag
    u, u0 = quasidiagonal_solve(diag[:, :-1], b, c, g, g0, **context)
    dirs["quasidiagonal"] = torch.cat([u, u0.unsqueeze(-1)], -1)
    u, u0 = arrowhead_solve(diag[:, :-1], b, c, g, g0, **context)
    dirs["arrowhead"] = torch.cat([u, u0.unsqueeze(-1)], -1)
    # One forward and one backward triangular solve serve natural and blockdiag: with
    # L = [[L_A, 0], [lᵀ, σ]] (L_A = chol(A_λ)), y = L⁻¹G has y_w = L_A⁻¹g_w, and
    # Lᵀz = (y_w, 0) gives z = (A_λ⁻¹g_w, 0).
    y = torch.linalg.solve_triangular(L, G.unsqueeze(-1), upper=False)  # [u, d+1, 1]
    rhs = torch.cat([y, torch.cat([y[:, :d], torch.zeros_like(y[:, d:])], 1)], -1)
    z = torch.linalg.solve_triangular(L.mT, rhs, upper=True)  # [u, d+1, 2]
    dirs["blockdiag"] = torch.cat([z[:, :d, 1], (g0 / c).unsqueeze(-1)], -1)
    dirs["natural"] = z[..., 0]

    V = torch.stack([dirs[k] for k in DIRECTIONS], -1)  # [u, d+1, K]
    gFg = y.squeeze(-1).square().sum(-1)  # gᵀF_λ⁻¹g = ‖L⁻¹g‖²
    uFu = (V * (F @ V)).sum(-2)  # [u, K]
    gu = (G.unsqueeze(-1) * V).sum(-2)  # [u, K]
    rho = gu / torch.sqrt(uFu * gFg.unsqueeze(-1))
    shift = (m.unsqueeze(-1) * V[:, :-1]).sum(-2) + V[:, -1]  # [u, K] E_p(a)ᵀu_w + u_0
    natural = shift[:, DIRECTIONS.index("natural")].unsqueeze(-1)
    errors = [i for i, k in enumerate(DIRECTIONS) if k != "natural"]
    err = (shift[:, errors] - natural).abs() / natural.abs()
    return torch.cat([rho, shift, err], -1).T.contiguous().unbind(0)  # each [u], contiguous
