"""The fast engine (:mod:`natgrad.fisher`) against the brute-force reference, and its
consistency properties: all layers at once, streaming, unit subsets, dtypes, fields."""

from __future__ import annotations

import copy

import pytest
import torch
from cases import CASES, LAYER_CASES, case_id, layer_case_id
from torch.utils.data import DataLoader, TensorDataset

from natgrad.errors import InputError
from natgrad.fisher import unit_fisher, unit_fishers
from natgrad.reference import reference_unit_fisher
from natgrad.testing import assert_close

KINDS = ("exact", "mc", "empirical")
MC_SAMPLES = 3


def _fisher(fn, case, model, layer, x, y, kind, **kw):
    return fn(
        model,
        layer,
        x,
        y,
        kind=kind,
        likelihood=case.likelihood,
        mc_samples=MC_SAMPLES,
        generator=case.generator(),
        **kw,
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case_layer", LAYER_CASES, ids=layer_case_id)
def test_engine_matches_reference(case_layer, kind):
    case, layer = case_layer
    model, x, y = case.make()
    got = _fisher(unit_fisher, case, model, layer, x, y, kind)
    ref = _fisher(reference_unit_fisher, case, model, layer, x, y, kind)
    assert_close(got.matrix, ref.matrix, what=f"{case.name}/{layer} {kind} matrix")
    assert_close(got.mean_p, ref.mean_p, what=f"{case.name}/{layer} mean_p")
    assert got.matrix.dtype == torch.float64
    assert (got.n, got.kind, got.likelihood, got.layer) == (case.n, kind, case.likelihood, layer)
    assert torch.equal(got.units, torch.arange(ref.matrix.shape[0]))
    assert got.mc_samples == (MC_SAMPLES if kind == "mc" else None)


@pytest.mark.parametrize("case_layer", LAYER_CASES, ids=layer_case_id)
def test_blocks_symmetric_psd_and_shaped(case_layer):
    case, layer = case_layer
    model, x, _ = case.make()
    module = dict(model.named_modules())[layer]
    got = unit_fisher(model, module, x, likelihood=case.likelihood)
    d = module.weight[0].numel()
    assert got.matrix.shape == (module.weight.shape[0], d + 1, d + 1)
    assert got.mean_p.shape == (d,)
    assert got.layer == layer  # the module was resolved to its name
    assert_close(got.matrix, got.matrix.transpose(-1, -2), what="symmetry")
    scale = got.matrix.abs().amax()
    assert (torch.linalg.eigvalsh(got.matrix) >= -1e-12 * scale).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_unit_fishers_equal_per_layer_calls(case, kind):
    model, x, y = case.make()
    everything = unit_fishers(
        model,
        x,
        y,
        kind=kind,
        likelihood=case.likelihood,
        mc_samples=MC_SAMPLES,
        generator=case.generator(),
    )
    expected = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    assert list(everything) == expected
    for name in case.layers:  # the layers the case exercises; the rest ride along
        one = _fisher(unit_fisher, case, model, name, x, y, kind)
        assert_close(everything[name].matrix, one.matrix, what=f"{name} {kind}")
        assert_close(everything[name].mean_p, one.mean_p, what=f"{name} mean_p")
        assert everything[name].layer == name


def _batches(form: str, x: torch.Tensor, y: torch.Tensor):
    if form == "list":
        sizes = [5, 1, x.shape[0] - 6]  # uneven batches, one of size 1
        return list(zip(x.split(sizes), y.split(sizes), strict=True)), {}
    if form == "dataloader":
        return DataLoader(TensorDataset(x, y), batch_size=7, shuffle=False), {}
    return x, {"batch_size": 6}  # a tensor split by the engine


@pytest.mark.parametrize("form", ["list", "dataloader", "batch_size"])
@pytest.mark.parametrize("kind", ["exact", "empirical"])
@pytest.mark.parametrize("case_layer", LAYER_CASES[::2], ids=layer_case_id)
def test_streaming_equals_one_batch(case_layer, kind, form):
    case, layer = case_layer
    model, x, y = case.make()
    whole = unit_fisher(model, layer, x, y, kind=kind, likelihood=case.likelihood)
    data, kw = _batches(form, x, y)
    targets = y if form == "batch_size" else None
    streamed = unit_fisher(model, layer, data, targets, kind=kind, likelihood=case.likelihood, **kw)
    assert_close(streamed.matrix, whole.matrix, what=f"{form} {kind}")
    assert_close(streamed.mean_p, whole.mean_p, what=f"{form} mean_p")
    assert streamed.n == whole.n == case.n
    if form != "batch_size":  # the reference reads the same batches (natgrad._batches)
        ref = reference_unit_fisher(model, layer, data, kind=kind, likelihood=case.likelihood)
        assert_close(ref.matrix, whole.matrix, what=f"reference over the {form}")
        with pytest.raises(InputError, match=r"tuple of two tensors"):  # (x, y): not batches
            reference_unit_fisher(model, layer, (x, x), likelihood=case.likelihood)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case_layer", LAYER_CASES[1::2], ids=layer_case_id)
def test_unit_subset_equals_slice(case_layer, kind):
    case, layer = case_layer
    model, x, y = case.make()
    full = _fisher(unit_fisher, case, model, layer, x, y, kind)
    units = [full.num_units - 1, 0]  # out of order on purpose
    if len(units) == full.num_units:  # the whole layer out of order is refused (ambiguous)
        units = [0] if full.num_units == 1 else units[::-1]
    sub = _fisher(unit_fisher, case, model, layer, x, y, kind, units=units)
    assert_close(sub.matrix, full.matrix[units], what=f"units={units}")
    assert_close(sub.mean_p, full.mean_p)
    assert sub.units.tolist() == units


@pytest.mark.parametrize("case_layer", LAYER_CASES[::3], ids=layer_case_id)
def test_float32_in_float32_out(case_layer):
    case, layer = case_layer
    model, x, y = case.make()
    f64 = unit_fisher(model, layer, x, likelihood=case.likelihood)
    f32 = unit_fisher(model.float(), layer, x.float(), likelihood=case.likelihood)
    assert f32.matrix.dtype == f32.mean_p.dtype == torch.float32
    # float32 round-off relative to the block's scale (small entries carry absolute error)
    scale = f64.matrix.abs().amax().item()
    assert_close(f32.matrix, f64.matrix, rtol=1e-4, atol=1e-5 * scale, what="float32 vs float64")
    assert_close(f32.mean_p, f64.mean_p, rtol=1e-4, atol=1e-5)


def test_model_left_as_found():
    """No hooks, gradients or requires_grad changes survive a call; weights unchanged."""
    case = CASES[0]
    model, x, y = case.make()
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    unit_fishers(model, x, y, kind="empirical")
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_mc_deterministic_given_generator():
    case = CASES[0]
    model, x, _ = case.make()
    a = unit_fisher(model, "2", x, kind="mc", mc_samples=4, generator=case.generator())
    b = unit_fisher(model, "2", x, kind="mc", mc_samples=4, generator=case.generator())
    assert torch.equal(a.matrix, b.matrix)
    assert a.mc_samples == 4


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_mc_labels_do_not_depend_on_the_batching(case):
    """kind="mc" draws each input's labels before the next input's, so a pass in batches (or
    sub-batches split by the memory budget) draws the labels of one pass over the whole set,
    which the reference draws in one go: Bernoulli with several samples and Gaussian noise
    were assigned by batch before. A float32 model draws them too (in float64; its Bernoulli
    and Gaussian labels were drawn in float32, 58–81 % off the reference's)."""
    model, x, y = case.make()
    one = _fisher(unit_fisher, case, model, case.layers[0], x, y, "mc")
    ref = _fisher(reference_unit_fisher, case, model, case.layers[0], x, y, "mc")
    for kw in ({"batch_size": 3}, {"batch_size": 1}, {"max_memory": 2**14}):
        split = _fisher(unit_fisher, case, model, case.layers[0], x, y, "mc", **kw)
        assert_close(split.matrix, one.matrix, what=f"{case.name} mc {kw}")
    assert_close(one.matrix, ref.matrix, what=f"{case.name} mc against the reference")
    low = _fisher(unit_fisher, case, copy.deepcopy(model).float(), case.layers[0], x.float(), y,
                  "mc")  # fmt: skip
    assert low.matrix.dtype == torch.float32
    assert_close(low.matrix, ref.matrix, normwise=True, what=f"{case.name} float32 model, mc")


@pytest.mark.parametrize("budget", [2**25, 2**13])
def test_packed_and_row_block_routes_agree_with_einsum(budget):
    """Both routes of the weighted outer product (the packed-triangle GEMM for wide layers, the
    row blocks otherwise, chosen by the memory budget) equal Σ_n w_nu ã_n ãₙᵀ; the budget of
    2**13 forces the row blocks and several chunks of inputs."""
    from natgrad.accumulate import _PACKED_MIN_UNITS, _add_weighted_outer, _mirror_upper

    g = torch.Generator().manual_seed(0)
    n, u, d1 = 300, _PACKED_MIN_UNITS + 3, 70
    w = torch.rand(n, u, generator=g, dtype=torch.float64)
    at = torch.randn(n, d1, generator=g, dtype=torch.float64)
    total = torch.zeros(u, d1, d1, dtype=torch.float64)
    _add_weighted_outer(total, w, at, budget)
    _add_weighted_outer(total, w[:7], at[:7], budget)  # a second batch adds on
    _mirror_upper(total)
    want = torch.einsum("nu,ni,nj->uij", w, at, at) + torch.einsum(
        "nu,ni,nj->uij", w[:7], at[:7], at[:7]
    )
    assert_close(total, want, what=f"weighted outer, budget {budget}")


def test_wide_layer_matches_reference():
    """A layer with enough units for the packed route, against the per-sample reference."""
    from natgrad.accumulate import _PACKED_MIN_UNITS

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, _PACKED_MIN_UNITS + 8), torch.nn.ELU(),
        torch.nn.Linear(_PACKED_MIN_UNITS + 8, 3),
    ).double()  # fmt: skip
    x = torch.randn(40, 6, dtype=torch.float64)
    got = unit_fisher(net, "0", x)
    ref = reference_unit_fisher(net, "0", x)
    assert_close(got.matrix, ref.matrix, what="packed route vs reference")


def test_a_parametrised_layers_blocks_are_those_of_its_effective_weight():
    """Weight norm: the engine's blocks are over the weight that multiplies the layer's input,
    equal to the reference's on a plain conv holding that weight; the reference, which
    differentiates module.weight, refuses the parametrised layer instead of answering for
    another parameter."""
    torch.manual_seed(0)
    tail = [torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(48, 4)]
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(2, 3, 3))
    model = torch.nn.Sequential(conv, *tail).double()
    plain = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), *tail).double()
    with torch.no_grad():
        plain[0].weight.copy_(model[0].weight)  # the effective weight g·v/‖v‖
        plain[0].bias.copy_(model[0].bias)
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    want = reference_unit_fisher(plain, "0", x)
    assert_close(unit_fisher(model, "0", x).matrix, want.matrix, what="weight-norm conv")
    with pytest.raises(InputError, match=r"'0' computes its output from a transformed weight"):
        reference_unit_fisher(model, "0", x)


def test_half_precision_models_sum_their_blocks_in_float32():
    """A bfloat16 model's blocks were summed over batches in bfloat16, whose 8 bits rounded a
    batch's share away once the sum was large (c 39 % low, silently); a float16 model's sum of
    incoming activations overflowed (mean_p inf, then NaN shifts). Both now sum in float32
    and return float32 blocks, within the half dtype's own rounding of the float64 pass."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ELU(), torch.nn.Linear(3, 2))
    x = torch.randn(40_000, 4) + 2.0  # Σ_n a_n ≈ 8e4 > 65,504
    for dtype, n, batch_size in ((torch.bfloat16, 2_000, 4), (torch.float16, 40_000, None)):
        low = copy.deepcopy(net).to(dtype)
        xs = x[:n].to(dtype)
        got = unit_fisher(low, "0", xs, batch_size=batch_size, likelihood="gaussian")
        want = unit_fisher(copy.deepcopy(low).double(), "0", xs.double(), likelihood="gaussian")
        assert got.matrix.dtype == got.mean_p.dtype == torch.float32, dtype
        rtol = 1e-2  # the half model's own forward and backward round its signals
        assert_close(got.matrix, want.matrix, rtol=rtol, atol=0, normwise=True, what=str(dtype))
        assert_close(got.mean_p, want.mean_p, rtol=rtol, atol=0, what=f"{dtype} mean_p")
