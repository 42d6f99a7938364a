"""natgrad.linalg: batched Cholesky solves, damping, condition numbers, loud failures."""

from __future__ import annotations

import math
import re

import pytest
import torch

from natgrad import linalg
from natgrad.errors import InputError, NearlySingularWarning, SingularBlockError
from natgrad.testing import assert_close
from natgrad.unitfisher import UnitFisher


def _spd(U: int = 3, n: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(U, 3 * n, n, generator=gen, dtype=torch.float64)
    return X.transpose(-1, -2) @ X / (3 * n)  # [U, n, n]


def _with_singular(position: int) -> torch.Tensor:
    F = _spd()
    v = torch.arange(1.0, 5.0, dtype=torch.float64)
    F[position] = v.outer(v)  # rank one
    return F


RHS_SHAPES = {"vector": (3, 4), "matrix": (3, 4, 2)}


@pytest.mark.parametrize("name", list(RHS_SHAPES))
def test_solve_matches_torch(name):
    F, rhs = _spd(), torch.randn(RHS_SHAPES[name])
    expected = torch.linalg.solve(F, rhs.unsqueeze(-1) if rhs.ndim == 2 else rhs)
    assert_close(linalg.solve(F, rhs), expected.reshape(rhs.shape), what="solve")


def test_inverse_matches_torch():
    F = _spd()
    assert_close(linalg.inverse(F), torch.linalg.inv(F), what="inverse")


def test_damping_is_added_to_every_diagonal_entry_bias_included():
    F = _spd()
    assert_close(
        linalg.inverse(F, damping=0.5), torch.linalg.inv(F + 0.5 * torch.eye(4)), what="damped"
    )
    assert_close(linalg.damped(F, 0.5)[:, -1, -1], F[:, -1, -1] + 0.5, what="bias entry")


def test_float32_is_solved_in_float64_and_cast_back():
    F = _spd()
    rhs = torch.randn(3, 4)
    x32 = linalg.solve(F.float(), rhs.float())
    assert x32.dtype == torch.float32
    # The only float32 error is the input rounding, amplified by the condition number.
    x_from_rounded = torch.linalg.solve(
        F.float().double(), rhs.float().double().unsqueeze(-1)
    ).squeeze(-1)
    assert_close(x32, x_from_rounded.float(), what="float32 solve")


def test_condition_number_matches_torch():
    F = _spd()
    assert_close(linalg.condition_number(F), torch.linalg.cond(F), what="cond")
    assert linalg.condition_number(_with_singular(1))[1] > 1e15


@pytest.mark.parametrize("position", [0, 2])
def test_singular_block_error_names_unit_layer_and_condition(position):
    units = torch.tensor([10, 11, 12])
    with pytest.raises(SingularBlockError) as info:
        linalg.cholesky(_with_singular(position), layer="fc2", units=units)
    msg = str(info.value)
    assert "layer 'fc2'" in msg
    assert f"unit {10 + position} (UnitFisher.units[{position}])" in msg
    assert re.search(r"condition number (inf|\d[\d.e+]*)", msg)
    assert "1 of 3 units" in msg
    assert info.value.positions.tolist() == [position]


def test_unit_fisher_error_names_unit():
    F = _with_singular(1)
    fisher = UnitFisher(
        matrix=F,
        mean_p=torch.zeros(3),
        n=1,
        kind="given",
        likelihood="given",
        layer="fc2",
        units=torch.tensor([5, 6, 7]),
    )
    with pytest.raises(
        SingularBlockError,
        match=r"layer 'fc2'.*unit 6 \(UnitFisher\.units\[1\]\).*condition number",
    ):
        fisher.natural_gradient(torch.randn(3, 3), torch.randn(3))


def test_damping_rescues_a_singular_block():
    L = linalg.cholesky(_with_singular(0), damping=1e-3)
    assert torch.isfinite(L).all()


def test_nonpositive_schur_complement_is_named():
    F = _spd()
    F[2, -1, -1] = 0.0  # A positive definite, c − bᵀA⁻¹b < 0
    fisher = UnitFisher.from_matrix(F, torch.zeros(3), layer="fc3")
    with pytest.raises(SingularBlockError, match=r"layer 'fc3'.*unit 2.*c − bᵀA⁻¹b = -"):
        fisher.s()


def test_nearly_singular_warns_with_unit_and_condition():
    F = _spd()
    scale = torch.tensor([1.0, 1e3, 1e-3, 10.0], dtype=torch.float64)  # a scale, whatever it is,
    F[1] = (torch.ones(4, 4) + 1e-13 * torch.eye(4)) * scale[:, None] * scale  # and κ(S) = 4e13
    with pytest.warns(
        NearlySingularWarning, match=r"layer 'fc4'.*unit 1.*condition number 4(\.0\d*)?e\+13"
    ):
        linalg.cholesky(F, layer="fc4")
    linalg.cholesky(
        F, layer="fc4", warn_cond=math.inf
    )  # disabled: no warning (warnings are errors)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_block_spread_only_by_scale_solves_exactly_and_does_not_warn(dtype):
    """A block whose spread is its features' scales (raw 0-255 pixels, a feature at 1e-9)
    warned: the estimate was of κ(F) = 1e14 here, and a float32 block of raw pixels warned
    at 8.4e4 though its solve agreed with float64's to 1e-6 (a reviewer's find). Rounding
    errors are relative to √(F_ii F_jj), so the warning now follows the unit-diagonal κ."""
    S = _spd(U=2, n=4)
    scale = torch.tensor([1e-7, 1.0, 255.0, 1e3], dtype=torch.float64)
    F = S * scale[:, None] * scale
    assert linalg.condition_number(F).min() > 1e12 > 1e3 > linalg.condition_number(S).max()
    rhs = torch.randn(2, 4, dtype=torch.float64)
    want = torch.linalg.solve(S, (rhs / scale).unsqueeze(-1)).squeeze(-1) / scale
    got = linalg.solve(F.to(dtype), rhs.to(dtype), warn_cond=linalg.cond_warn(dtype))
    assert_close(got.double() * scale, want * scale, rtol=1e3 * torch.finfo(dtype).eps,
                 what="unit-diagonal-conditioned solve")  # fmt: skip


def test_nan_is_refused_with_unit():
    F = _spd()
    F[2, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN/Inf entries for unit 2"):
        linalg.cholesky(F)


@pytest.mark.parametrize("damping", [-1.0, float("nan")])
def test_bad_damping_is_refused(damping):
    with pytest.raises(InputError, match="damping"):
        linalg.damped(_spd(), damping)


def test_a_float32_block_warns_at_its_own_precision():
    """A float32 net's blocks hold float32's 7 digits: with κ ≈ 4e7 (two nearly collinear
    inputs; the hunt's case) F⁻¹g kept no correct digit (5–87 % off the float64 reference), ρ(plain) moved
    from 0.936 to 0.961, with no warning, the threshold being float64's 1e12 (a helper's hunt).
    The warning now follows the stored dtype (linalg.cond_warn: κ·ε ≥ 0.01)."""
    from natgrad import unit_fisher

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ELU(), torch.nn.Linear(5, 3)).float()
    x = torch.randn(500, 4, dtype=torch.float32)
    x[:, 1] = x[:, 0] + 3e-3 * torch.randn(500, dtype=torch.float32)
    g, g0 = torch.randn(5, 4, dtype=torch.float32), torch.randn(5, dtype=torch.float32)
    F32 = unit_fisher(net, "0", x)
    assert F32.matrix.dtype == torch.float32
    with pytest.warns(NearlySingularWarning, match=r"condition number > 83886\.1"):  # κ ≈ 4e5
        F32.natural_gradient(g, g0)
    with pytest.warns(NearlySingularWarning):
        F32.measures(g, g0)
    F64 = unit_fisher(net.double(), "0", x.double())  # the same κ is fine in float64
    F64.natural_gradient(g.double(), g0.double())
    assert linalg.cond_warn(torch.float64) == linalg.COND_WARN
