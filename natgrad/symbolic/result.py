r"""``ProofResult``: what every SymPy proof returns (rendered by notebooks, asserted by tests)."""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class ProofResult:
    r"""One checked identity or fact.

    Attributes:
        name: short name, e.g. ``"Theorem 1: update"``.
        case: the instance checked, e.g. ``"d=3, general A"`` or ``"μ=0, σ=1"``.
        statement: the claim as a LaTeX string (no surrounding ``$``).
        holds: whether the check succeeded.
        residual: the simplified difference of the two sides (SymPy; ``0`` or a zero matrix
            when an identity holds exactly; a ``Float`` error for numerical checks).
        seconds: wall time of the check.
    """

    name: str
    case: str
    statement: str
    holds: bool
    residual: sp.Basic
    seconds: float = 0.0

    def _repr_latex_(self) -> str:
        mark = r"\checkmark" if self.holds else r"\times"
        return rf"$\text{{{self.name} [{self.case}]}}:\quad {self.statement}\quad {mark}$"


def is_zero(residual: sp.Basic) -> bool:
    """True iff a (matrix) residual is identically zero."""
    if isinstance(residual, sp.MatrixBase):
        return all(sp.sympify(e) == 0 for e in residual)
    return sp.sympify(residual) == 0
