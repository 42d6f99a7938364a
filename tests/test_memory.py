"""Memory budgets: the up-front size check names bytes and fixes; sub-batches and unit chunks
chosen for a small budget give the same blocks."""

from __future__ import annotations

import pytest
import torch
from cases import CASES

from natgrad import memory
from natgrad.errors import InputError, MemoryBudgetError, NatgradError
from natgrad.fisher import unit_fisher, unit_fishers
from natgrad.testing import assert_close

CNN = next(c for c in CASES if c.name == "cnn-categorical")
MLP = next(c for c in CASES if c.name == "mlp-elu-categorical")


def test_error_names_bytes_units_and_structure():
    model, x, _ = CNN.make()
    # conv "2": 4 units, fan-in 27, dense block 4·28²·8 = 25088 bytes
    with pytest.raises(MemoryBudgetError) as err:
        unit_fisher(model, "2", x, max_memory=20_000)
    msg = str(err.value)
    assert isinstance(err.value, NatgradError)
    assert "25088 bytes" in msg and "layer '2'" in msg
    assert "units= with at most" in msg and "structure='quasidiagonal'" in msg
    assert "unit_fisher(..., out_dir=...)" in msg
    with pytest.raises(
        MemoryBudgetError, match=r"compute one layer with unit_fisher\(\.\.\., out_dir"
    ):
        unit_fishers(
            model, x, max_memory=20_000
        )  # which takes no out_dir (it said "pass out_dir=")


def test_units_named_in_the_error_fit():
    model, x, _ = CNN.make()
    budget = 20_000
    msg = str(pytest.raises(MemoryBudgetError, unit_fisher, model, "2", x, max_memory=budget).value)
    fit = int(msg.split("units= with at most ")[1].split()[0])
    assert fit >= 1
    F = unit_fisher(model, "2", x, units=list(range(fit)), max_memory=budget)
    assert F.num_units == fit


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "1GB"])
def test_bad_max_memory(bad):
    model, x, _ = MLP.make()
    with pytest.raises(InputError, match="max_memory"):
        unit_fisher(model, "0", x, max_memory=bad)


@pytest.mark.parametrize("case", [CNN, MLP], ids=lambda c: c.name)
def test_small_budget_same_blocks(case):
    """A budget so small that batches split into single inputs and units into chunks of one."""
    model, x, _ = case.make()
    big = unit_fishers(model, x, likelihood=case.likelihood)
    need = sum(F.matrix.numel() * 8 for F in big.values())
    small = unit_fishers(model, x, likelihood=case.likelihood, max_memory=int(1.5 * need))
    for name in big:
        assert_close(small[name].matrix, big[name].matrix, what=name)
        assert_close(small[name].mean_p, big[name].mean_p, what=name)


def test_temp_budget_bounds():
    mib = 2**20
    assert memory.temp_budget(4000 * mib, 64000 * mib) == 1000 * mib  # a quarter of the result
    assert memory.temp_budget(1 * mib, 64000 * mib) == memory.TEMP_FLOOR
    assert memory.temp_budget(100 * mib, 128 * mib) == 28 * mib  # what is left
    # a structured result without an explicit max_memory: the smaller streaming floor
    assert memory.temp_budget(1 * mib, 64000 * mib, "quasidiagonal", explicit=False) == (
        memory.STRUCTURED_TEMP
    )
    assert memory.temp_budget(1 * mib, 64000 * mib, "quasidiagonal") == memory.TEMP_FLOOR


def test_structured_conv_pass_streams_the_batch_in_sub_batches(monkeypatch):
    """A weight-shared layer's quasi-diagonal pass over a large batch runs in sub-batches whose
    temporaries fit :data:`memory.STRUCTURED_TEMP` (so its added memory does not grow with N),
    and gives the blocks of one whole-batch pass."""
    from natgrad import engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 24, 3, padding=1), torch.nn.ELU(),
                                torch.nn.Conv2d(24, 10, 1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).double()  # fmt: skip
    x = torch.randn(400, 16, 16, 16, dtype=torch.float64)
    whole = unit_fisher(model, "0", x, structure="quasidiagonal", max_memory=2**36)
    seen = []
    real = engine._accumulate_batch
    monkeypatch.setattr(engine, "_accumulate_batch",
                        lambda capture, accs, xb, *a: (seen.append(xb.shape[0]),
                                                       real(capture, accs, xb, *a))[1])  # fmt: skip
    streamed = unit_fisher(model, "0", x, structure="quasidiagonal")
    assert sum(seen) == 400 and max(seen) < 400, seen
    per_sample = 16 * 16 * (16 * 9) * 8  # one input's unfolded patches alone, float64 bytes
    assert max(seen) * per_sample <= memory.STRUCTURED_TEMP
    assert_close(streamed.diagonal, whole.diagonal, what="diag")
    assert_close(streamed.bias_column, whole.bias_column, what="b")


def test_the_output_columns_and_their_backward_are_budgeted(monkeypatch):
    """The exact Fisher's columns [K, N, D] (K = D = C classes) and the backward of a chunk
    of K_c columns through the layers after the hooked one were not counted: C = 1000 took
    30x the budget, mc_samples=64 through wide layers 6-8x (a helper's measurement). The
    sub-batch now pays for one input's columns, the chunk for its columns' backward; the
    blocks are those of one whole pass."""
    from natgrad import engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ELU(), torch.nn.Linear(16, 300),
                                torch.nn.ELU(), torch.nn.Linear(300, 300)).double()  # fmt: skip
    x = torch.randn(64, 8, dtype=torch.float64)
    budget = 2**23  # 8 MiB: the temporaries get about 1M float64 elements
    temp = memory.temp_budget(17 * 17 * 16 * 8, budget) // 8  # elements
    seen, chunks = [], []
    real_batch, real_grad = engine._accumulate_batch, engine._batched_grad
    monkeypatch.setattr(engine, "_accumulate_batch",
                        lambda capture, accs, xb, *a: (seen.append(xb.shape[0]),
                                                       real_batch(capture, accs, xb, *a))[1])  # fmt: skip
    monkeypatch.setattr(engine, "_batched_grad",
                        lambda out, nets, g: (chunks.append(g.shape[0] * g.shape[1]),
                                              real_grad(out, nets, g))[1])  # fmt: skip
    got = unit_fisher(model, "0", x, max_memory=budget)
    assert max(seen) * 2 * 300 * 300 <= temp  # one input's 300 columns of 300 outputs
    assert max(chunks) * (16 + 2 * 300) <= temp  # signals + the widest grads in and out
    whole = unit_fisher(model, "0", x, max_memory=2**34)
    assert_close(got.matrix, whole.matrix, what="budgeted pass")


def test_the_finite_check_of_large_inputs_is_exact():
    """The inputs' NaN/Inf check sums first (no tensor of the inputs' size); a sum that
    overflows (float16) is checked exactly, and a NaN is counted."""
    from natgrad._batches import _check_finite

    big = torch.full((300, 400), 60000.0, dtype=torch.float16)  # finite, its sum is inf
    _check_finite(big, 0)
    big[7, 3], big[299, 0] = float("nan"), float("inf")
    with pytest.raises(InputError, match=r"batch 0 contain 2 NaN/Inf"):
        _check_finite(big, 0)


def test_a_pass_leaves_no_accumulator_behind():
    """Each accumulator held the tuple of all of them (for the shared Woodbury budget): a
    cycle, so every pass's accumulators and their buffers outlived the call until the
    cyclic collector ran (12 calls on a 256x256 layer: 203-461 MiB in use against a flat
    85; a reviewer's find). They now share a plain count and are freed on return."""
    import gc

    from natgrad.accumulate import LayerAccumulator
    from natgrad.woodbury import woodbury_unit_fishers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ELU(), torch.nn.Linear(5, 3))
    x = torch.randn(8, 6)
    gc.collect()
    gc.disable()
    try:
        unit_fisher(model, "0", x)
        woodbury_unit_fishers(model, x, layers=["0", "2"])
        alive = [o for o in gc.get_objects() if issubclass(type(o), LayerAccumulator)]
    finally:
        gc.enable()
    assert not alive, alive
