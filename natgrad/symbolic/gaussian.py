r"""Mean activation E[f(x)] of each unit for a Gaussian pre-activation x ~ N(μ, σ²).

The closed forms (Φ, φ the standard normal cdf and pdf at r = μ/σ; LReLU at α = 0.1, PReLU
at its slope a, SReLU as −1 + ReLU(x + 1), SELU as λ·(ReLU + α·ELU's negative part)) are derived in docs/theory.md ("Mean activation for a Gaussian
pre-activation"). :func:`gaussian_mean_fact` checks one against ``scipy.integrate.quad`` on
:data:`GRID` (and the unit's α values): it holds when the largest error is below :data:`QUAD_TOL`.

Example:
    >>> gaussian_mean_fact("ReLU").holds
    True
    >>> gaussian_mean_fact("ReLU", formula=mu).holds   # E[ReLU(x)] is not μ
    False
"""

from __future__ import annotations

import math
import time

import sympy as sp

from natgrad.symbolic.result import ProofResult
from natgrad.symbolic.units import SELU_ALPHA, SELU_SCALE, UNITS, UnitSpec, alpha

mu = sp.Symbol("mu", real=True)
sigma = sp.Symbol("sigma", positive=True)

GRID = ((-1.0, 0.5), (0.0, 1.0), (0.5, 2.0), (2.0, 0.3), (-3.0, 1.5))
"""(μ, σ) pairs at which each closed form is compared with numerical integration."""

QUAD_TOL = 1e-8
"""Largest |closed form − quad| accepted (quad is asked for 1e-12 absolute and relative)."""


def _Phi(z: sp.Expr) -> sp.Expr:
    return (1 + sp.erf(z / sp.sqrt(2))) / 2


def _phi(z: sp.Expr) -> sp.Expr:
    return sp.exp(-(z**2) / 2) / sp.sqrt(2 * sp.pi)


def mean_map(unit: str) -> sp.Expr:
    r"""E[f(x)] for x ~ N(μ, σ²) as a SymPy expression in ``mu``, ``sigma`` (and ``alpha``)."""
    r = mu / sigma
    relu = mu * _Phi(r) + sigma * _phi(r)
    if unit == "ReLU":
        return relu
    if unit == "ELU":
        return relu + alpha * (sp.exp(mu + sigma**2 / 2) * _Phi(-r - sigma) - _Phi(-r))
    if unit in ("LReLU", "PReLU"):  # slope 0.1, or PReLU's free a
        a = sp.Rational(1, 10) if unit == "LReLU" else alpha
        return relu + a * (mu * _Phi(-r) - sigma * _phi(r))
    if unit == "SELU":
        negative = sp.exp(mu + sigma**2 / 2) * _Phi(-r - sigma) - _Phi(-r)
        return SELU_SCALE * (relu + SELU_ALPHA * negative)
    if unit == "SReLU":
        r1 = (mu + 1) / sigma
        return -1 + (mu + 1) * _Phi(r1) + sigma * _phi(r1)
    raise ValueError(f"no Gaussian mean map for unit {unit!r}; choose from {', '.join(UNITS)}")


def _quad_mean(spec: UnitSpec, m: float, s: float, a: float | None) -> float:
    from scipy.integrate import quad

    f = spec.f_neg(a)
    cuts = sorted({float(lo) for _, lo, _ in spec.pieces if lo != -sp.oo} | {0.0})
    edges = [-math.inf, *cuts, math.inf]

    def integrand(v: float) -> float:
        return f(v) * math.exp(-0.5 * ((v - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    return sum(
        quad(integrand, lo, hi, epsabs=1e-12, epsrel=1e-12, limit=200)[0]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    )


def gaussian_mean_fact(unit: str, formula: sp.Expr | None = None) -> ProofResult:
    r"""The closed form of E[f(x)], x ~ N(μ, σ²), agrees with numerical integration on
    :data:`GRID` × the unit's α values; ``residual`` is the largest absolute error."""
    t0, spec = time.perf_counter(), UNITS[unit]
    expr = mean_map(unit) if formula is None else sp.sympify(formula)
    closed = sp.lambdify((mu, sigma, alpha), expr, "math")
    alphas = spec.alpha_values or (None,)
    err = max(
        abs(closed(m, s, a if a is not None else 0.0) - _quad_mean(spec, m, s, a))
        for m, s in GRID
        for a in alphas
    )
    tex = rf"E_{{x\sim\mathcal N(\mu,\sigma^2)}}[\mathrm{{{unit}}}(x)] = {sp.latex(expr)}"
    case = f"numerical check (quad) at {len(GRID)} (μ, σ)" + (
        f" × α ∈ {set(spec.alpha_values)}" if spec.alpha_values else ""
    )
    seconds = time.perf_counter() - t0
    return ProofResult(
        f"{unit}: Gaussian mean", case, tex, bool(err < QUAD_TOL), sp.Float(err, 3), seconds
    )
