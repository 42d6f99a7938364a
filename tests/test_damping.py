"""``natgrad.damping``: the one definition of μ and its named defaults — every route that damps
a unit block (the measures, the structured blocks, the whole-network metric, the
preconditioner) gives the μ of :func:`natgrad.damping.mu`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natgrad import damping
from natgrad.errors import InputError
from natgrad.testing import assert_close


def _blocks(u=4, d1=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(u, 3 * d1, d1, generator=g, dtype=torch.float64)
    return x.transpose(1, 2) @ x / (3 * d1)


def test_every_route_damps_by_mu():
    from natgrad.measures import damping_of
    from natgrad.optim.solves import relative_shift
    from natgrad.structures import StructuredUnitFisher

    M = _blocks()
    trace = torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)
    want = damping.mu(trace, M.shape[-1], 1e-3)
    assert_close(want, 1e-3 * trace / M.shape[-1])
    assert_close(damping_of(M, 1e-3), want)
    diag = torch.diagonal(M, dim1=-2, dim2=-1)
    assert_close(relative_shift(diag, 1e-3), want)
    assert_close(relative_shift(diag, 0.1, 0.3), damping.mu(trace, M.shape[-1], 0.1, 0.3))
    s = StructuredUnitFisher.from_dense(M, torch.zeros(M.shape[-1] - 1, dtype=torch.float64),
                                        "quasidiagonal")  # fmt: skip
    assert_close(s._damping_of(1e-3), want)


def test_whole_network_metric_uses_each_units_mu():
    from natgrad.network import network_fisher

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
    nf = network_fisher(net, torch.randn(20, 3))
    D = nf.damping(1e-3)
    w = net[0].weight.numel()
    diag = nf.matrix.diagonal()
    first = torch.cat([diag[:w].view(4, 3), diag[w : w + 4, None]], 1)  # unit i: (w_i, b_i)
    want = damping.mu(first.sum(-1), 4, 1e-3)
    assert_close(D[:w].view(4, 3)[:, 0], want)


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf"), "x", None, "0.1", True,
                                 np.True_, torch.tensor(True)])  # fmt: skip
def test_bad_damping_is_refused_by_name(bad):
    """One rule for a damping, everywhere (the optimizer had its own, which refused what
    damping.check took: a bool or a numeric string, now refused by both, and a NumPy float32
    or 0-d tensor, now taken by both). NumPy's and torch's booleans were taken as 1.0."""
    from natgrad.optim import UnitNaturalGradient

    with pytest.raises(InputError, match="layer_damping must be a finite number"):
        damping.mu(torch.ones(2), 2, 0.1, layer_damping=bad)
    with pytest.raises(InputError, match="rel_damping must be a finite number"):
        damping.check(bad)
    net = torch.nn.Linear(2, 2)
    with pytest.raises(InputError, match="rel_damping must be a finite number"):
        UnitNaturalGradient(net, 0.1, rel_damping=bad)
    with pytest.raises(InputError, match="layer_damping must be a finite number"):
        UnitNaturalGradient(net, 0.1, layer_damping=bad)


def test_a_damping_may_be_any_real_number_type():
    import numpy as np

    from natgrad.optim import UnitNaturalGradient

    for value in (np.float32(0.25), torch.tensor(0.25), 1):
        assert damping.check(value) == float(value)
        assert UnitNaturalGradient(
            torch.nn.Linear(2, 2), 0.1, rel_damping=value
        ).rel_damping == float(value)


def test_the_named_defaults():
    assert (damping.MEASURE_DAMPING, damping.STEP_DAMPING, damping.LAYER_DAMPING) == (
        1e-3,
        0.1,
        0.3,
    )
