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


def test_every_numeric_route_of_a_proved_identity_evaluates_the_proved_formula():
    """The link above covered six functions at one undamped unit; a dropped (1+k) in the
    solved route's bias shift, a flipped Lemma 2(ii) or cov_p sign passed it (an audit's
    find; other tests caught them). Here every numeric route of a proved formula (the dense
    UnitFisher's forms of s and k, its bias shift and corrected mean, Lemma 2, and the solved
    route's forms through Woodbury rows) is the proved formula evaluated at each unit of a
    damped stack: three units, λ = 0.05 on every diagonal entry."""
    import torch

    from natgrad import UnitFisher, theorems
    from natgrad.testing import assert_close, conditioned
    from natgrad.woodbury import WoodburyUnitFisher

    d, U, lam = 3, 3, 0.05
    B = blocks.symbolic_block(d)
    Bm = blocks.symbolic_block(d, "moments")
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(U, 40, d + 1, generator=gen, dtype=torch.float64)
    rows[..., -1] = 1.0 + 0.3 * torch.rand(U, 40, generator=gen, dtype=torch.float64)
    rows = rows / 40**0.5
    F = rows.transpose(1, 2) @ rows  # [U, d+1, d+1]
    Fl = F + lam * torch.eye(d + 1, dtype=torch.float64)
    p = torch.randn(d, generator=gen, dtype=torch.float64)  # E_p(a): one per layer
    g, g0 = torch.randn(U, d, generator=gen, dtype=torch.float64), torch.randn(U, generator=gen,
                                                                              dtype=torch.float64)  # fmt: skip
    dense = UnitFisher.from_matrix(F, p)
    solved = WoodburyUnitFisher(rows=rows, scales=None, mean_p=p, n=40, kind="exact",
                                likelihood="categorical", layer="w")  # fmt: skip

    def num(block, expr, u):
        A, b, c = Fl[u, :d, :d], Fl[u, :d, d], Fl[u, d, d]
        mq = b / c
        vals = {"c": c, "g_0": g0[u], **{f"g_{i + 1}": g[u, i] for i in range(d)},
                **{f"p_{i + 1}": p[i] for i in range(d)},
                **{f"b_{i + 1}": b[i] for i in range(d)},
                **{f"A_{{{i + 1}{j + 1}}}": A[i, j] for i in range(d) for j in range(i, d)},
                **{f"m_{i + 1}": mq[i] for i in range(d)},
                **{f"V_{{{i + 1}{j + 1}}}": (A / c - torch.outer(mq, mq))[i, j]
                   for i in range(d) for j in range(i, d)}}  # fmt: skip
        e = block.sympy(expr)
        return float(e.subs({s: float(vals[s.name]) for s in e.free_symbols}))

    def want(block, expr):
        return torch.tensor([num(block, expr, u) for u in range(U)], dtype=torch.float64)

    tol = conditioned(float(torch.linalg.cond(Fl).max()), d + 1)
    s, k = want(B, blocks.s_paper_formula(B)), want(B, blocks.k_closed_formula(B))
    assert_close(want(B, blocks.k_paper_formula(B)), k, **tol, what="the two proved k")
    for route in (dense, solved):
        name = type(route).__name__
        for form in ("schur", "paper"):
            assert_close(route.s(form, damping=lam), s, **tol, what=f"{name}.s({form!r})")
        for form in ("closed", "paper"):
            assert_close(route.k(form, damping=lam), k, **tol, what=f"{name}.k({form!r})")
        shift = route.bias_shift(g, g0, damping=lam)
        assert_close(shift.k, k, **tol, what=f"{name} BiasShift.k")
        assert_close(shift.shift_natural, want(B, blocks.shift_formula(B)), **tol,
                     what=f"{name} shift_natural")  # fmt: skip
        mq = Fl[:, :d, d] / Fl[:, d, d, None]
        assert_close(shift.corrected_mean, p - (1 + k)[:, None] * mq, **tol,
                     what=f"{name} corrected_mean")  # fmt: skip
    mq = Fl[:, :d, d] / Fl[:, d, d, None]
    var_q = Fl[:, :d, :d] / Fl[:, d, d, None, None] - mq[:, :, None] * mq[:, None, :]
    assert_close(theorems.lemma2_i(mq, var_q), want(Bm, blocks.lemma2_i_formula(Bm)), **tol,
                 what="Lemma 2 (i)")  # fmt: skip
    assert_close(theorems.lemma2_ii(mq, p, var_q), want(Bm, blocks.lemma2_ii_formula(Bm)),
                 **tol, what="Lemma 2 (ii)")  # fmt: skip
