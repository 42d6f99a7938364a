r"""SymPy facts about the units compared in the paper (Section 3), for x ≤ 0 (f(x) = x above).

| unit | f(x), x ≤ 0 | f′(x), x ≤ 0 | jumps of f′ | lim_{x→−∞} f |
| --- | --- | --- | --- | --- |
| ELU(α) | α(eˣ − 1) | f(x) + α | 1 − α at 0 (continuous iff α = 1) | −α |
| ReLU | 0 | 0 | 1 at 0 | 0 |
| LReLU(0.1) | 0.1x | 0.1 | 0.9 at 0 | −∞ (no saturation) |
| SReLU | max(−1, x) | 1{x > −1} | 1 at −1, none at 0 | −1 |
| PReLU(a) | a x | a | 1 − a at 0 (continuous iff a = 1) | −∞ (a > 0) |
| SELU | λα(eˣ − 1) (λx above 0) | f(x) + λα | λ(1 − α) at 0 | −λα |

(PReLU's learned slope a is the free symbol α here; SELU's λ and α are torch's constants.)

A unit is a :class:`UnitSpec` (its pieces on x ≤ 0 and the claims); each fact function
checks one claim of a spec, so passing a spec with a wrong claim gives ``holds == False``.

Example:
    >>> [r.holds for r in unit_facts("ELU")]
    [True, True, True, True]
    >>> import dataclasses
    >>> wrong = dataclasses.replace(UNITS["ELU"], saturation=-1)   # saturates to −α, not −1
    >>> saturation_fact(wrong).holds
    False
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sympy as sp

from natgrad.symbolic.result import ProofResult, is_zero

x = sp.Symbol("x", real=True)
alpha = sp.Symbol("alpha", positive=True)
#: torch.nn.SELU's constants (Klambauer et al. 2017), as exact rationals of their 32 digits.
SELU_ALPHA = sp.Rational("1.6732632423543772848170429916717")
SELU_SCALE = sp.Rational("1.0507009873554804934193349852946")


@dataclass(frozen=True)
class UnitSpec:
    r"""A unit's negative part and the claims about it: ``pieces`` ``((f, lo, hi), …)``, f(x)
    on lo < x ≤ hi left to right covering x ≤ 0; the claimed f′ on each piece (``derivative``,
    stated by ``derivative_tex``), ``jumps`` f′(pt⁺) − f′(pt⁻) at each boundary pt (0 included;
    f′ = ``slope`` above 0), ``saturation`` lim_{x→−∞} f (``-sp.oo``: none), ``continuous_iff`` the α
    set where f′ is continuous at 0 (None: no α), ``alpha_values`` for the numerical checks,
    ``slope`` f′ on x > 0 (f = slope·x there; 1 but for SELU's λ)."""

    name: str
    pieces: tuple[tuple[sp.Expr, sp.Expr, sp.Expr], ...]
    derivative: tuple[sp.Expr, ...]
    derivative_tex: str
    jumps: dict
    saturation: sp.Expr
    continuous_iff: sp.Set | None = None
    alpha_values: tuple[float, ...] = ()
    slope: sp.Expr = sp.S.One

    def f_neg(self, value: float | None = None):
        """Numeric f (α := ``value`` where f has a free α); its pieces on x ≤ 0."""
        subs = {} if value is None else {alpha: value}
        funcs = [
            (sp.lambdify(x, e.subs(subs), "math"), float(lo), float(hi))
            for e, lo, hi in self.pieces
        ]

        slope = float(self.slope)

        def f(v: float) -> float:
            if v > 0:
                return slope * v
            return next(fn(v) for fn, lo, hi in funcs if lo < v <= hi)

        return f


UNITS: dict[str, UnitSpec] = {
    "ELU": UnitSpec(
        "ELU", ((alpha * (sp.exp(x) - 1), -sp.oo, 0),), (alpha * (sp.exp(x) - 1) + alpha,),
        r"f'(x) = f(x) + \alpha", {0: 1 - alpha}, -alpha, sp.FiniteSet(1), (1.0, 0.5, 2.0),
    ),
    "ReLU": UnitSpec("ReLU", ((sp.S.Zero, -sp.oo, 0),), (sp.S.Zero,), r"f'(x) = 0", {0: sp.S.One}, sp.S.Zero),
    "LReLU": UnitSpec(
        "LReLU", ((x / 10, -sp.oo, 0),), (sp.Rational(1, 10),), r"f'(x) = \alpha = 0.1",
        {0: sp.Rational(9, 10)}, -sp.oo,
    ),
    "SReLU": UnitSpec(
        "SReLU", ((sp.S.NegativeOne, -sp.oo, -1), (x, -1, 0)), (sp.S.Zero, sp.S.One),
        r"f'(x) = \mathbb{1}\{x > -1\}", {-1: sp.S.One, 0: sp.S.Zero}, sp.S.NegativeOne,
    ),
    "PReLU": UnitSpec(
        "PReLU", ((alpha * x, -sp.oo, 0),), (alpha,), r"f'(x) = a", {0: 1 - alpha}, -sp.oo,
        sp.FiniteSet(1), (0.25, 0.1, 2.0),
    ),
    "SELU": UnitSpec(
        "SELU", ((SELU_SCALE * SELU_ALPHA * (sp.exp(x) - 1), -sp.oo, 0),),
        (SELU_SCALE * SELU_ALPHA * (sp.exp(x) - 1) + SELU_SCALE * SELU_ALPHA,),
        r"f'(x) = f(x) + \lambda\alpha", {0: SELU_SCALE * (1 - SELU_ALPHA)},
        -SELU_SCALE * SELU_ALPHA, slope=SELU_SCALE,
    ),
}  # fmt: skip


def _spec(unit: str | UnitSpec) -> UnitSpec:
    return unit if isinstance(unit, UnitSpec) else UNITS[unit]


def _fact(u: UnitSpec, name: str, tex: str, res: sp.Basic, t0: float) -> ProofResult:
    """The result of fact ``name`` of unit ``u``: it holds iff ``res`` is zero."""
    return ProofResult(
        f"{u.name}: {name}", u.name, tex, is_zero(res), res, time.perf_counter() - t0
    )


def derivative_fact(unit: str | UnitSpec) -> ProofResult:
    r"""f′(x) on each piece of x ≤ 0 equals the claimed derivative."""
    t0, u = time.perf_counter(), _spec(unit)
    diffs = [sp.diff(f, x) - d for (f, _, _), d in zip(u.pieces, u.derivative, strict=True)]
    res = sp.ImmutableMatrix([sp.simplify(e) for e in diffs])
    return _fact(u, "f′ on x ≤ 0", u.derivative_tex + r"\quad (x \le 0)", res, t0)


def _jump(u: UnitSpec, point) -> sp.Expr:
    """f′(pt⁺) − f′(pt⁻) from the pieces (f′ = ``slope`` on x > 0)."""
    slopes = [sp.diff(f, x) for f, _, _ in u.pieces] + [u.slope]
    right = next(i for i, (_, lo, hi) in enumerate(u.pieces) if sp.Eq(hi, point)) + 1
    return sp.simplify(slopes[right].subs(x, point) - slopes[right - 1].subs(x, point))


def jumps_fact(unit: str | UnitSpec) -> ProofResult:
    r"""The jumps of f′ at the piece boundaries (0 included) equal the claimed ones."""
    t0, u = time.perf_counter(), _spec(unit)
    res = sp.ImmutableMatrix([sp.simplify(_jump(u, pt) - j) for pt, j in u.jumps.items()])
    tex = r",\; ".join(
        rf"f'({sp.latex(pt)}^+) - f'({sp.latex(pt)}^-) = {sp.latex(j)}" for pt, j in u.jumps.items()
    )
    return _fact(u, "jumps of f′", tex, res, t0)


def continuity_fact(unit: str | UnitSpec = "ELU") -> ProofResult:
    r"""f′ is continuous at 0 exactly for the claimed α (ELU: iff α = 1), solving jump = 0 for
    α > 0. The jump f′(0⁺) − f′(0⁻) (1 − α for ELU) is named in the case; ``residual`` is 0
    when the solution set is the claimed one, else the jump (a row that holds prints 0)."""
    t0, u = time.perf_counter(), _spec(unit)
    jump = _jump(u, 0)
    solutions = sp.solveset(sp.Eq(jump, 0), alpha, domain=sp.Interval.open(0, sp.oo))
    holds = u.continuous_iff is not None and solutions == u.continuous_iff
    tex = rf"f'(0^-) = f'(0^+) \iff \alpha \in {sp.latex(u.continuous_iff)}"
    residual = sp.S.Zero if holds else jump
    return ProofResult(f"{u.name}: f′ continuous at 0", f"{u.name}, jump {jump}", tex, holds,
                       residual, time.perf_counter() - t0)  # fmt: skip


def saturation_fact(unit: str | UnitSpec) -> ProofResult:
    r"""lim_{x→−∞} f(x) equals the claimed value (−α for ELU; −∞ means no saturation)."""
    t0, u = time.perf_counter(), _spec(unit)
    lim = sp.limit(u.pieces[0][0], x, -sp.oo)
    res = sp.S.Zero if lim == u.saturation else sp.simplify(lim - u.saturation)
    tex = rf"\lim_{{x \to -\infty}} f(x) = {sp.latex(u.saturation)}"
    return _fact(u, "saturation", tex, res, t0)


def unit_facts(unit: str | UnitSpec) -> list[ProofResult]:
    """Every fact of one unit (the α-continuity fact only for units with a free α)."""
    u = _spec(unit)
    facts = [derivative_fact(u), jumps_fact(u), saturation_fact(u)]
    return facts + ([continuity_fact(u)] if u.continuous_iff is not None else [])
