"""(γ, β) unit blocks of normalisation layers: the engine's pass equals the per-input,
per-label brute force (float64) for BatchNorm1d/2d (eval and training mode), LayerNorm and
GroupNorm, for every kind and likelihood; bad layers get named errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from natgrad.errors import InputError, LayerUseError, UnsupportedLayerError
from natgrad.normfisher import norm_layers, norm_unit_fishers
from natgrad.reference import reference_unit_fisher
from natgrad.testing import assert_close


def _init(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model


def _conv(norm):
    return _init(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, nn.ELU(), nn.Flatten(),
                               nn.Linear(4 * 3 * 3, 3)).double())  # fmt: skip


def _fc(norm, out=3):
    return _init(nn.Sequential(nn.Linear(5, 4), norm, nn.ReLU(), nn.Linear(4, out)).double())


CASES = {
    "bn2d": lambda: (_conv(nn.BatchNorm2d(4)), torch.randn(9, 2, 3, 3, dtype=torch.float64)),
    "gn": lambda: (_conv(nn.GroupNorm(2, 4)), torch.randn(9, 2, 3, 3, dtype=torch.float64)),
    "bn1d": lambda: (_fc(nn.BatchNorm1d(4)), torch.randn(9, 5, dtype=torch.float64)),
    "ln": lambda: (_fc(nn.LayerNorm(4)), torch.randn(9, 5, dtype=torch.float64)),
}


@pytest.mark.parametrize("kind", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_brute_force(case, kind):
    torch.manual_seed(0)
    model, x = CASES[case]()
    model.eval()
    y = torch.randint(0, 3, (x.shape[0],))
    kw = dict(kind=kind, mc_samples=2) if kind == "mc" else dict(kind=kind)
    got = norm_unit_fishers(model, x, y, generator=torch.Generator().manual_seed(5), **kw)["1"]
    ref = reference_unit_fisher(model, "1", x, y, generator=torch.Generator().manual_seed(5),
                                **kw)  # fmt: skip
    assert got.matrix.shape == (4, 2, 2)
    assert_close(got.matrix, ref.matrix, what=f"{case} {kind}")
    assert_close(got.mean_xhat, ref.mean_xhat, what=f"{case} mean x̂")
    assert_close(got.n_eff, ref.n_eff, what=f"{case} n_eff")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_other_likelihoods_match_brute_force(likelihood):
    model = _fc(nn.LayerNorm(4), out=2).eval()
    x = torch.randn(7, 5, dtype=torch.float64)
    got = norm_unit_fishers(model, x, likelihood=likelihood)["1"]
    ref = reference_unit_fisher(model, "1", x, likelihood=likelihood)
    assert_close(got.matrix, ref.matrix, what=likelihood)


def test_batchnorm_in_training_mode_uses_the_batch_statistics_and_keeps_buffers():
    model, x = CASES["bn1d"]()
    model.train()
    before = model[1].running_mean.clone()
    with pytest.warns(UserWarning):
        got = norm_unit_fishers(model, x)["1"]
    assert torch.equal(model[1].running_mean, before)
    assert_close(got.mean_xhat, torch.zeros(4, dtype=torch.float64), atol=1e-12)  # batch x̂


def test_natural_gradient_solves_each_block():
    model, x = CASES["ln"]()
    F = norm_unit_fishers(model.eval(), x)["1"]
    gw, gb = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    uw, ub = F.natural_gradient(gw, gb, damping=1e-3)
    lhs = (F.matrix + 1e-3 * torch.eye(2, dtype=torch.float64)) @ torch.stack([uw, ub], -1)[
        ..., None
    ]
    assert_close(lhs[..., 0], torch.stack([gw, gb], -1))
    assert "units=4" in repr(F)


def test_errors_name_the_layer():
    model, x = CASES["bn1d"]()
    assert list(norm_layers(model)) == ["1"]
    with pytest.raises(UnsupportedLayerError, match="layer '0' is a Linear"):
        norm_unit_fishers(model, x, layers=["0"])
    plain = _fc(nn.LayerNorm(4, elementwise_affine=False))
    with pytest.raises(UnsupportedLayerError, match="no affine BatchNorm1d/2d"):
        norm_unit_fishers(plain, x)
    with pytest.raises(UnsupportedLayerError, match=r"layers=\[\] names no layer"):
        norm_unit_fishers(model, x, layers=[])  # it said the model had no norm layer
    with pytest.raises(UnsupportedLayerError, match="layer '1' has no affine parameters"):
        norm_unit_fishers(plain, x, layers=["1"])
    with pytest.raises(InputError, match="empirical"):
        norm_unit_fishers(model.eval(), x, kind="empirical")
    # (a helper's finds) a LayerNorm without β was told to set elementwise_affine=True; an
    # unknown name listed the Linear layers only; a wrong-sized gradient gave a torch error
    no_shift = _fc(nn.LayerNorm(4, bias=False))
    with pytest.raises(UnsupportedLayerError, match=r"'1' has a scale γ but no shift β"):
        norm_unit_fishers(no_shift, x, layers=["1"])
    with pytest.raises(UnsupportedLayerError, match=r"'zz' is not in.*normalisation layers: '1'"):
        norm_unit_fishers(model, x, layers=["zz"])
    F = norm_unit_fishers(model.eval(), x)["1"]
    with pytest.raises(InputError, match=r"'1': grad_weight and grad_bias must hold one entry"):
        F.natural_gradient(torch.ones(5), torch.ones(4))


def test_the_reference_reads_a_frozen_layer_and_refuses_one_used_twice():
    """As the engine: a frozen layer's blocks (the reference raised a torch error), and a layer
    applied twice refused (the reference answered with the Fisher of a shared parameter)."""
    model, x = CASES["bn1d"]()
    model.eval()
    want = {layer: reference_unit_fisher(model, layer, x).matrix for layer in ("0", "1")}
    model.requires_grad_(False)
    for layer in ("0", "1"):  # a Linear layer and a norm layer, frozen
        assert_close(reference_unit_fisher(model, layer, x).matrix, want[layer],
                     what=f"frozen layer {layer}")  # fmt: skip

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.ln, self.head = nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.ln(torch.tanh(self.ln(self.fc(x)))))

    for fn in (reference_unit_fisher, lambda m, layer, x: norm_unit_fishers(m, x, layers=[layer])):
        with pytest.raises(LayerUseError, match=r"'ln' is called more than once"):
            fn(Twice().double(), "ln", x)


def test_layers_may_be_modules_as_for_unit_fishers():
    """``layers=`` takes the normalisation modules themselves, as ``unit_fishers`` does, with
    the same result as their names; a module from another model is refused by kind."""
    model, x = CASES["gn"]()
    by_name = norm_unit_fishers(model, x, layers=["1"])
    by_module = norm_unit_fishers(model, x, layers=[model[1]])
    assert list(by_module) == ["1"]
    assert torch.equal(by_module["1"].matrix, by_name["1"].matrix)
    with pytest.raises(UnsupportedLayerError, match="not a submodule of the model"):
        norm_unit_fishers(model, x, layers=[nn.GroupNorm(2, 4)])
    with pytest.raises(UnsupportedLayerError, match="layer '0' is a Conv2d"):
        norm_unit_fishers(model, x, layers=[model[0]])
    with pytest.raises(UnsupportedLayerError, match="an nn.Module inside the model or its name"):
        norm_unit_fishers(model, x, layers=[1])


def test_a_bfloat16_norm_layer_sums_its_blocks_in_float32():
    """The (γ, β) blocks of a bfloat16 model were summed in bfloat16: 20 % off, c 18-43 % low
    (a reviewer's find; the other routes had moved to float32)."""
    import copy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.ELU(), nn.Linear(3, 2))
    x = torch.randn(2000, 4) + 1.0
    low = copy.deepcopy(net).to(torch.bfloat16)
    got = norm_unit_fishers(low, x.to(torch.bfloat16), layers=["1"], batch_size=4,
                            likelihood="gaussian")["1"]  # fmt: skip
    want = norm_unit_fishers(copy.deepcopy(low).double(), x.to(torch.bfloat16).double(),
                             layers=["1"], likelihood="gaussian")["1"]  # fmt: skip
    assert got.matrix.dtype == torch.float32
    assert_close(got.matrix, want.matrix, rtol=1e-2, atol=0, normwise=True)
