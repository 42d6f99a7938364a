r"""SymPy proofs of Lemmas 1–2 and Theorems 1–2 for fully symbolic blocks (bias last).

Each identity is checked as an identity of rational functions: all quantities live in the
field K = ℚ(symbols) (``sympy.polys.matrices.DomainMatrix`` over ``QQ.frac_field``), where
every element is kept in lowest terms, so a residual is zero iff the identity holds wherever
F is invertible. Two parametrisations of a d×d block:

- ``"general"``: symmetric A = (A_ij), arbitrary b, c (d+1 + d(d+1)/2 free symbols);
- ``"moments"``: from symbolic q-moments, c, m = E_q(a), V = Var_q(a) symmetric, with
  A = c(V + m mᵀ), b = c m.

Every proof takes ``formula``: a callable on the :class:`SymbolicBlock` that returns the
formula under test (default: the paper's), so a deliberately wrong formula shows
``holds == False``.

Example:
    >>> lemma1(1).holds, theorem1_update(2, "moments").holds
    (True, True)
    >>> lemma1(1, formula=lambda B: B.F).holds   # F is not its own inverse
    False
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import sympy as sp
from sympy.polys.matrices import DomainMatrix

from natgrad.symbolic.result import ProofResult, is_zero

PARAMS = ("general", "moments")


@dataclass(frozen=True)
class SymbolicBlock:
    r"""A symbolic unit Fisher block F = [[A, b], [bᵀ, c]] with its moments, over the field K.

    Matrices are ``DomainMatrix`` (columns ``d×1``); scalars are elements of K. Operations:
    ``+ - *``, ``M * x`` for a scalar x, ``.transpose()``, ``.inv()``, and :meth:`dot`.
    """

    d: int
    param: str
    K: object
    A: DomainMatrix
    b: DomainMatrix
    c: object
    F: DomainMatrix
    Ainv: DomainMatrix
    g: DomainMatrix  # gradient w.r.t. w
    g0: object  # gradient w.r.t. the bias
    mean_p: DomainMatrix  # E_p(a), free symbols p_i
    mean_q: DomainMatrix  # b / c
    var_q: DomainMatrix  # A / c − E_q(a) E_q(a)ᵀ
    var_q_inv: DomainMatrix
    cov_p: DomainMatrix  # b − c E_p(a)

    @staticmethod
    def dot(x: DomainMatrix, y: DomainMatrix):
        """xᵀy for columns x, y, as a scalar of K."""
        return (x.transpose() * y).to_list()[0][0]

    def s_schur(self):
        """s = 1/(c − bᵀA⁻¹b)."""
        return 1 / (self.c - self.dot(self.b, self.Ainv * self.b))

    def sympy(self, x) -> sp.Basic:
        """A scalar of K or a DomainMatrix as a SymPy expression / immutable matrix."""
        if isinstance(x, DomainMatrix):
            return sp.ImmutableMatrix(x.to_Matrix())
        return self.K.to_sympy(x)


def _symmetric(name: str, d: int) -> list[list[sp.Symbol]]:
    return [  # entry (j, i) is the same Symbol as (i, j): equal name and assumptions
        [sp.Symbol(f"{name}_{{{min(i, j) + 1}{max(i, j) + 1}}}", real=True) for j in range(d)]
        for i in range(d)
    ]


def _vector(name: str, d: int) -> list[sp.Symbol]:
    return [sp.Symbol(f"{name}_{i + 1}", real=True) for i in range(d)]


@cache
def symbolic_block(d: int, param: str = "general") -> SymbolicBlock:
    r"""The symbolic block of fan-in ``d`` in parametrisation ``"general"`` or ``"moments"``."""
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got {param!r}")
    c, g0 = sp.Symbol("c", positive=True), sp.Symbol("g_0", real=True)
    g, p = _vector("g", d), _vector("p", d)
    names = ("A", "b") if param == "general" else ("V", "m")  # F's blocks, or the moments
    main = (_symmetric(names[0], d), _vector(names[1], d))
    symbols = [c, g0, *g, *p, *sorted({x for row in main[0] for x in row}, key=str), *main[1]]
    K = sp.QQ.frac_field(*symbols)

    def mat(rows):
        return DomainMatrix(
            [[K.from_sympy(x) for x in row] for row in rows], (len(rows), len(rows[0])), K
        )

    kc = K.from_sympy(c)
    M, v = mat(main[0]), mat([[x] for x in main[1]])  # (A, b), or (V, m) with A = c(V + mmᵀ)
    A, b = (M, v) if param == "general" else ((M + v * v.transpose()) * kc, v * kc)
    F = DomainMatrix.vstack(
        DomainMatrix.hstack(A, b), DomainMatrix.hstack(b.transpose(), mat([[c]]))
    )
    mean_p = mat([[x] for x in p])
    mean_q = b * (1 / kc)
    var_q = A * (1 / kc) - mean_q * mean_q.transpose()
    return SymbolicBlock(
        d=d, param=param, K=K, A=A, b=b, c=kc, F=F, Ainv=A.inv(), g=mat([[x] for x in g]),
        g0=K.from_sympy(g0), mean_p=mean_p, mean_q=mean_q, var_q=var_q, var_q_inv=var_q.inv(),
        cov_p=b - mean_p * kc,
    )  # fmt: skip


def _result(
    name: str, B: SymbolicBlock, statement: str, residual, t0: float, case: str = ""
) -> ProofResult:
    res = B.sympy(residual)
    case = f"d={B.d}, " + (case or ("general A" if B.param == "general" else "A=c(V+mmᵀ)"))
    return ProofResult(name, case, statement, is_zero(res), res, time.perf_counter() - t0)


# --- the formulas under test (defaults) ---------------------------------------------------
def lemma1_formula(B: SymbolicBlock) -> DomainMatrix:
    r"""F⁻¹ = [[A⁻¹ + uuᵀ/s, u], [uᵀ, s]], s = 1/(c − bᵀA⁻¹b), u = −sA⁻¹b."""
    s = B.s_schur()
    w = B.Ainv * B.b  # u = −s w, so u uᵀ / s = s w wᵀ (the form that stays small in K)
    u = w * (-s)
    top = B.Ainv + (w * w.transpose()) * s
    return DomainMatrix.vstack(
        DomainMatrix.hstack(top, u), DomainMatrix.hstack(u.transpose(), _scalar(B, s))
    )


def theorem1_formula(B: SymbolicBlock) -> tuple[DomainMatrix, object]:
    r"""Δw0 = s(g0 − bᵀA⁻¹g), Δw = A⁻¹(g − Δw0 b)."""
    dw0 = B.s_schur() * (B.g0 - B.dot(B.b, B.Ainv * B.g))
    return B.Ainv * (B.g - B.b * dw0), dw0


def s_paper_formula(B: SymbolicBlock):
    r"""s = E_p(δ̄²)⁻¹(1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a))."""
    return (1 + B.dot(B.mean_q, B.var_q_inv * B.mean_q)) / B.c


def k_paper_formula(B: SymbolicBlock):
    r"""k = s·E_p(δ̄²)·Cov_p(δ̄², a)ᵀA⁻¹E_q(a)."""
    return B.s_schur() * B.c * B.dot(B.cov_p, B.Ainv * B.mean_q)


def k_closed_formula(B: SymbolicBlock):
    r"""k = (E_q(a) − E_p(a))ᵀVar_q(a)⁻¹E_q(a)."""
    return B.dot(B.mean_q - B.mean_p, B.var_q_inv * B.mean_q)


def shift_formula(B: SymbolicBlock):
    r"""shift_natural = (E_p(a) − (1+k)E_q(a))ᵀA⁻¹g + (1+k)g0/c, k in the paper's form."""
    k1 = 1 + k_paper_formula(B)
    return B.dot(B.mean_p - B.mean_q * k1, B.Ainv * B.g) + k1 * B.g0 / B.c


def _scalar(B: SymbolicBlock, x) -> DomainMatrix:
    return DomainMatrix([[x]], (1, 1), B.K)


def _stack(B: SymbolicBlock, col: DomainMatrix, x) -> DomainMatrix:
    """The column ``(col, x)`` for a column ``col`` and a scalar ``x`` of K."""
    return DomainMatrix.vstack(col, _scalar(B, x))


Formula = Callable[[SymbolicBlock], object]


# --- the proofs ---------------------------------------------------------------------------
def lemma1(d: int, param: str = "general", formula: Formula = lemma1_formula) -> ProofResult:
    r"""Lemma 1: F · (formula) = I."""
    t0, B = time.perf_counter(), symbolic_block(d, param)
    statement = (
        r"F^{-1} = \begin{pmatrix} A^{-1} + uu^\top/s & u \\ u^\top & s \end{pmatrix},\;"
        r"s = (c - b^\top A^{-1} b)^{-1},\; u = -sA^{-1}b"
    )
    return _result("Lemma 1", B, statement, B.F * formula(B) - DomainMatrix.eye(d + 1, B.K), t0)


def theorem1_update(
    d: int, param: str = "general", formula: Formula = theorem1_formula
) -> ProofResult:
    r"""Theorem 1: F (Δw, Δw0) = (g, g0) for the Theorem-1 update (so it equals F⁻¹(g, g0))."""
    t0, B = time.perf_counter(), symbolic_block(d, param)
    dw, dw0 = formula(B)
    residual = B.F * _stack(B, dw, dw0) - _stack(B, B.g, B.g0)
    statement = (
        r"F\begin{pmatrix}\Delta w\\ \Delta w_0\end{pmatrix} = \begin{pmatrix}g\\ g_0\end{pmatrix}"
        r"\text{ for }\Delta w_0 = s(g_0 - b^\top A^{-1}g),\;\Delta w = A^{-1}(g - \Delta w_0 b)"
    )
    return _result("Theorem 1: update", B, statement, residual, t0)


def theorem1_s(d: int, param: str = "general", formula: Formula = s_paper_formula) -> ProofResult:
    r"""Theorem 1: the paper's form of s equals the Schur form 1/(c − bᵀA⁻¹b)."""
    t0, B = time.perf_counter(), symbolic_block(d, param)
    statement = (
        r"\frac{1}{c - b^\top A^{-1} b} = E_p(\bar\delta^2)^{-1}"
        r"\left(1 + E_q(a)^\top \mathrm{Var}_q(a)^{-1} E_q(a)\right)"
    )
    return _result("Theorem 1: s", B, statement, formula(B) - B.s_schur(), t0)


def theorem2_shift(d: int, param: str = "general", formula: Formula = shift_formula) -> ProofResult:
    r"""Theorem 2: E_p(a)ᵀΔw + Δw0 for (Δw, Δw0) = F⁻¹(g, g0) (a direct solve) equals the formula."""
    t0, B = time.perf_counter(), symbolic_block(d, param)
    x = B.F.lu_solve(_stack(B, B.g, B.g0))  # the natural gradient, directly
    mean_1 = _stack(B, B.mean_p, B.K.one)  # (E_p(a), 1)
    statement = (
        r"E_p(a)^\top\Delta w + \Delta w_0 = (E_p(a) - (1+k)E_q(a))^\top A^{-1}g + (1+k)\,g_0/c"
    )
    return _result("Theorem 2: shift", B, statement, formula(B) - B.dot(mean_1, x), t0)


def theorem2_k(d: int, param: str = "general", formula: Formula = k_closed_formula) -> ProofResult:
    r"""Theorem 2: the closed form of k equals the paper's form."""
    t0, B = time.perf_counter(), symbolic_block(d, param)
    statement = (
        r"s\,E_p(\bar\delta^2)\,\mathrm{Cov}_p(\bar\delta^2, a)^\top A^{-1}E_q(a)"
        r" = (E_q(a) - E_p(a))^\top \mathrm{Var}_q(a)^{-1} E_q(a)"
    )
    return _result("Theorem 2: k", B, statement, formula(B) - k_paper_formula(B), t0)


# --- Lemma 2 (moments of a random vector: m = E(a), V = Var(a), any m_p) --------------------
def lemma2_i_formula(B: SymbolicBlock):
    r"""mᵀE(aaᵀ)⁻¹m = t/(1 + t), t = mᵀVar(a)⁻¹m."""
    t = B.dot(B.mean_q, B.var_q_inv * B.mean_q)
    return t / (1 + t)


def lemma2_ii_formula(B: SymbolicBlock):
    r"""(1 − m_pᵀE(aaᵀ)⁻¹m)/(1 − mᵀE(aaᵀ)⁻¹m) = 1 + (m − m_p)ᵀVar(a)⁻¹m."""
    return 1 + B.dot(B.mean_q - B.mean_p, B.var_q_inv * B.mean_q)


def _second_moment_inv(B: SymbolicBlock) -> DomainMatrix:
    """E(aaᵀ)⁻¹ = (Var(a) + m mᵀ)⁻¹, inverted directly."""
    return (B.var_q + B.mean_q * B.mean_q.transpose()).inv()


def lemma2_i(d: int, formula: Formula = lemma2_i_formula) -> ProofResult:
    r"""Lemma 2 (i) with m = E(a), V = Var(a) symbolic (free symbols of the ``"moments"`` block)."""
    t0, B = time.perf_counter(), symbolic_block(d, "moments")
    direct = B.dot(B.mean_q, _second_moment_inv(B) * B.mean_q)
    statement = r"m^\top E(aa^\top)^{-1}m = \frac{t}{1+t},\; t = m^\top \mathrm{Var}(a)^{-1} m"
    return _result("Lemma 2 (i)", B, statement, formula(B) - direct, t0, "m, V")


def lemma2_ii(d: int, formula: Formula = lemma2_ii_formula) -> ProofResult:
    r"""Lemma 2 (ii) with m = E(a), V = Var(a) and m_p symbolic."""
    t0, B = time.perf_counter(), symbolic_block(d, "moments")
    second_inv, m, mp = _second_moment_inv(B), B.mean_q, B.mean_p
    direct = (1 - B.dot(mp, second_inv * m)) / (1 - B.dot(m, second_inv * m))
    statement = (
        r"\frac{1 - m_p^\top E(aa^\top)^{-1}m}{1 - m^\top E(aa^\top)^{-1}m}"
        r" = 1 + (m - m_p)^\top \mathrm{Var}(a)^{-1} m"
    )
    return _result("Lemma 2 (ii)", B, statement, formula(B) - direct, t0, "m, V, m_p")


BLOCK_PROOFS = (lemma1, theorem1_update, theorem1_s, theorem2_shift, theorem2_k)


def all_block_proofs(dims: tuple[int, ...] = (1, 2, 3)) -> list[ProofResult]:
    """Every block proof for every d in ``dims`` and both parametrisations, and Lemma 2.

    Lemma 1 at d >= 3 is checked for general symmetric A only: the moments block is a special
    case of it, and forming its A⁻¹ + uuᵀ/s in lowest terms takes SymPy about 20 s.
    """
    out = [
        proof(d, param)
        for d in dims
        for param in PARAMS
        for proof in BLOCK_PROOFS
        if not (proof is lemma1 and param == "moments" and d >= 3)
    ]
    return out + [lemma(d) for d in dims for lemma in (lemma2_i, lemma2_ii)]
