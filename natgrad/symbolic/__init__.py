r"""SymPy proofs of the ELU paper's lemmas, theorems and unit facts (``natgrad verify``).

:mod:`~natgrad.symbolic.blocks` (Lemmas 1–2, Theorems 1–2 for symbolic blocks of fan-in
d = 1, 2, 3), :mod:`~natgrad.symbolic.units` (f′ = f + α and the other unit facts),
:mod:`~natgrad.symbolic.gaussian` (E[f(x)], x ~ N(μ, σ²), against numerical integration).
Every proof returns a :class:`ProofResult` and accepts the formula under test as an override.

Example:
    >>> results = verify_all(quick=True)
    >>> all(r.holds for r in results)
    True
"""

from __future__ import annotations

import argparse

import sympy as sp

from natgrad.symbolic.blocks import (
    SymbolicBlock,
    all_block_proofs,
    lemma1,
    lemma2_i,
    lemma2_ii,
    symbolic_block,
    theorem1_s,
    theorem1_update,
    theorem2_k,
    theorem2_shift,
)
from natgrad.symbolic.gaussian import gaussian_mean_fact, mean_map
from natgrad.symbolic.result import ProofResult
from natgrad.symbolic.units import (
    UNITS,
    UnitSpec,
    continuity_fact,
    derivative_fact,
    jumps_fact,
    saturation_fact,
    unit_facts,
)

__all__ = [
    "UNITS",
    "ProofResult",
    "SymbolicBlock",
    "UnitSpec",
    "add_arguments",
    "continuity_fact",
    "derivative_fact",
    "format_table",
    "gaussian_mean_fact",
    "jumps_fact",
    "lemma1",
    "lemma2_i",
    "lemma2_ii",
    "mean_map",
    "run",
    "saturation_fact",
    "symbolic_block",
    "theorem1_s",
    "theorem1_update",
    "theorem2_k",
    "theorem2_shift",
    "unit_facts",
    "verify_all",
]


def verify_all(quick: bool = False) -> list[ProofResult]:
    """Run every proof: blocks for d = 1, 2, 3 (d = 1, 2 if ``quick``), unit facts, mean maps."""
    dims = (1, 2) if quick else (1, 2, 3)
    results = all_block_proofs(dims)
    results += [fact for unit in UNITS for fact in unit_facts(unit)]
    return results + [gaussian_mean_fact(unit) for unit in UNITS]


def format_table(results: list[ProofResult]) -> str:
    """A plain-text table: name, case, holds, residual, seconds."""
    rows = [("proof", "case", "holds", "residual", "s")]
    for r in results:
        zero = r.holds and (isinstance(r.residual, sp.MatrixBase) or r.residual == 0)
        res = "0" if zero else str(r.residual).replace("\n", " ")
        res = res if len(res) <= 40 else res[:37] + "..."
        rows.append((r.name, r.case, "yes" if r.holds else "NO", res, f"{r.seconds:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``natgrad verify``."""
    parser.add_argument(
        "--quick", action="store_true", help="skip the d = 3 block proofs (about 3x faster)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the table of every proof; exit status 0 iff all hold."""
    results = verify_all(quick=args.quick)
    print(format_table(results))
    failed = [r for r in results if not r.holds]
    total = sum(r.seconds for r in results)
    print(f"\n{len(results) - len(failed)} of {len(results)} hold ({total:.1f} s)")
    return 1 if failed else 0
