"""natgrad.symbolic: every SymPy proof holds, and a deliberately wrong formula fails each kind."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
import sympy as sp

from natgrad import symbolic
from natgrad.symbolic import blocks, gaussian, units
from natgrad.symbolic.result import ProofResult

# --- every proof, one test each (the cases are data) ----------------------------------------
PROOFS = {
    f"{proof.__name__}-d{d}-{param}": (lambda proof=proof, d=d, param=param: proof(d, param))
    for d in (1, 2, 3)
    for param in blocks.PARAMS
    for proof in blocks.BLOCK_PROOFS
    if not (proof is blocks.lemma1 and param == "moments" and d == 3)
}
PROOFS |= {
    f"{lemma.__name__}-d{d}": (lambda lemma=lemma, d=d: lemma(d))
    for d in (1, 2, 3)
    for lemma in (blocks.lemma2_i, blocks.lemma2_ii)
}
PROOFS |= {f"facts-{unit}": (lambda unit=unit: units.unit_facts(unit)) for unit in units.UNITS}
PROOFS |= {
    f"gaussian-{unit}": (lambda unit=unit: gaussian.gaussian_mean_fact(unit))
    for unit in units.UNITS
}


@pytest.mark.parametrize("name", list(PROOFS))
def test_proof_holds(name):
    out = PROOFS[name]()
    results = out if isinstance(out, list) else [out]
    assert results
    failed = [f"{r.name} [{r.case}]: residual {r.residual}" for r in results if not r.holds]
    assert not failed, failed


# --- a wrong formula makes each kind of check fail -------------------------------------------
def _wrong_update(B):
    dw, dw0 = blocks.theorem1_formula(B)
    return dw, -dw0


def _wrong_elu_unit():
    return dataclasses.replace(
        units.UNITS["ELU"], derivative=(units.alpha * (sp.exp(units.x) - 1),)
    )


WRONG = {
    "lemma1-F-is-not-its-inverse": lambda: blocks.lemma1(2, formula=lambda B: B.F),
    "theorem1-sign-of-dw0": lambda: blocks.theorem1_update(2, formula=_wrong_update),
    "theorem1-s-without-1+t": lambda: blocks.theorem1_s(2, formula=lambda B: 1 / B.c),
    "theorem2-shift-blockdiag": lambda: blocks.theorem2_shift(
        2, formula=lambda B: B.dot(B.mean_p, B.Ainv * B.g) + B.g0 / B.c
    ),
    "theorem2-k-sign": lambda: blocks.theorem2_k(2, formula=lambda B: -blocks.k_closed_formula(B)),
    "lemma2_i-t": lambda: blocks.lemma2_i(
        2, formula=lambda B: B.dot(B.mean_q, B.var_q_inv * B.mean_q)
    ),
    "lemma2_ii-plus-m_p": lambda: blocks.lemma2_ii(
        2, formula=lambda B: 1 + B.dot(B.mean_q + B.mean_p, B.var_q_inv * B.mean_q)
    ),
    "elu-derivative-is-f": lambda: units.derivative_fact(_wrong_elu_unit()),
    "elu-no-jump": lambda: units.jumps_fact(
        dataclasses.replace(units.UNITS["ELU"], jumps={0: sp.S.Zero})
    ),
    "elu-continuous-iff-alpha-2": lambda: units.continuity_fact(
        dataclasses.replace(units.UNITS["ELU"], continuous_iff=sp.FiniteSet(2))
    ),
    "srelu-saturates-to-0": lambda: units.saturation_fact(
        dataclasses.replace(units.UNITS["SReLU"], saturation=sp.S.Zero)
    ),
    "lrelu-saturates": lambda: units.saturation_fact(
        dataclasses.replace(units.UNITS["LReLU"], saturation=sp.S.Zero)
    ),
    "elu-mean-without-alpha-term": lambda: gaussian.gaussian_mean_fact(
        "ELU", formula=gaussian.mean_map("ReLU")
    ),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_wrong_formula_fails(name):
    result = WRONG[name]()
    assert isinstance(result, ProofResult)
    assert result.holds is False
    assert result.residual != 0


# --- results render and the CLI ------------------------------------------------------------------
def test_result_renders_as_latex():
    result = blocks.lemma1(1)
    assert result._repr_latex_().startswith("$") and r"\checkmark" in result._repr_latex_()
    sp.sympify(result.residual)  # a SymPy object


def test_run_returns_nonzero_if_a_proof_fails(monkeypatch, capsys):
    bad = ProofResult("made up", "x", "0 = 1", False, sp.S.One)
    monkeypatch.setattr(symbolic, "verify_all", lambda quick=False: [blocks.lemma1(1), bad])
    assert symbolic.run(argparse.Namespace(quick=True)) == 1
    out = capsys.readouterr().out
    assert "made up" in out and "NO" in out and "1 of 2 hold" in out


def test_cli_verify_exits_zero():
    # --quick skips d = 3, whose proofs the parametrized tests above already run.
    proc = subprocess.run(
        [sys.executable, "-m", "natgrad", "verify", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hold" in proc.stdout and " NO " not in proc.stdout
