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


def test_torch_theorems_evaluate_the_proved_formulas():
    """The proofs are about SymPy's formulas; ``natgrad.theorems`` and ``UnitFisher`` are the
    code users call. Evaluate each proved formula at random numbers (d = 3, a random SPD
    block) and compare with the torch route in float64, so a regression in the code fails
    here even though ``natgrad verify`` (which proves the formulas) would still pass."""
    import torch

    from natgrad import UnitFisher, theorems
    from natgrad.testing import assert_close, conditioned

    d = 3
    B = blocks.symbolic_block(d)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, d + 1, generator=gen, dtype=torch.float64)
    x[:, -1] = 1.0
    F = x.T @ (x * torch.rand(50, 1, generator=gen, dtype=torch.float64)) / 50
    g, g0 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    p = torch.randn(d, generator=gen, dtype=torch.float64)
    A, b, c = F[:d, :d], F[:d, d], F[d, d]
    values = {"c": c, "g_0": g0[0], **{f"g_{i + 1}": g[i] for i in range(d)},
              **{f"p_{i + 1}": p[i] for i in range(d)}, **{f"b_{i + 1}": b[i] for i in range(d)},
              **{f"A_{{{i + 1}{j + 1}}}": A[i, j] for i in range(d) for j in range(i, d)}}  # fmt: skip

    def num(expr):
        e = B.sympy(expr)
        subs = {s: float(values[s.name]) for s in e.free_symbols}
        out = e.subs(subs)
        return torch.tensor(
            [float(v) for v in out] if isinstance(out, sp.MatrixBase) else float(out),
            dtype=torch.float64,
        )

    tol = conditioned(float(torch.linalg.cond(F)), d + 1)
    one = dict(A=A[None], b=b[None], c=c[None])
    mean_q = (b / c)[None]
    var_q = (A / c - torch.outer(b / c, b / c))[None]
    s = theorems.schur_complement(**one)
    assert_close(theorems.lemma1_inverse(**one)[0].flatten(), num(blocks.lemma1_formula(B)), **tol)
    dw, dw0 = theorems.natural_gradient(**one, g=g[None], g0=g0)
    sym_dw, sym_dw0 = blocks.theorem1_formula(B)
    assert_close(torch.cat([dw[0], dw0]), torch.cat([num(sym_dw), num(sym_dw0)[None]]), **tol)
    assert_close(theorems.schur_complement_paper(c[None], mean_q, var_q)[0],
                 num(blocks.s_paper_formula(B)), **tol)  # fmt: skip
    k = theorems.k_paper(A[None], c[None], s, (b - c * p)[None], mean_q)[0]
    assert_close(k, num(blocks.k_paper_formula(B)), **tol)
    assert_close(theorems.k_closed(p, mean_q, var_q)[0], num(blocks.k_closed_formula(B)), **tol)
    shift = UnitFisher.from_matrix(F[None], p).bias_shift(g[None], g0)
    assert_close(shift.shift_natural[0], num(blocks.shift_formula(B)), **tol)


@pytest.mark.parametrize("name", list(units.UNITS))
def test_torch_units_are_the_specs_the_facts_prove(name):
    """The unit facts are proved about :data:`natgrad.symbolic.units.UNITS`; the nets run
    :func:`natgrad.make_unit`. Their values and autograd slopes agree on a grid of x ≤ 0 that
    includes the kinks, each kink taking its left piece's slope (lo < x ≤ hi), THEORY's
    convention (SReLU: f′(−1) = 0; ReLU: f′(0) = 0; ELU: f′(0) = α)."""
    import torch

    from natgrad import make_unit

    spec = units.UNITS[name]
    xs = torch.tensor([-30.0, -3.0, -1.5, -1.0, -0.5, -1e-3, 0.0], dtype=torch.float64)
    for value in spec.alpha_values or (None,):
        module = make_unit(name.lower(), alpha=value if name in ("ELU", "PReLU") else None)
        t = xs.clone().requires_grad_(True)
        module(t).sum().backward()
        subs = {} if value is None else {units.alpha: value}
        slopes = [sp.lambdify(units.x, d.subs(subs), "math") for d in spec.derivative]
        for v, out, grad in zip(xs.tolist(), module(xs).tolist(), t.grad.tolist(), strict=True):
            piece = next(i for i, (_, lo, hi) in enumerate(spec.pieces) if lo < v <= hi)
            assert out == pytest.approx(spec.f_neg(value)(v), abs=1e-15), (name, value, v)
            assert grad == pytest.approx(slopes[piece](v), abs=1e-15), (name, value, v)
