"""The paper's networks: shapes, parameter counts computed by hand from docs/paper.md, init."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from natgrad import models
from natgrad.errors import InputError
from natgrad.models import NETWORKS, build_model, count_parameters, weight_layers
from natgrad.testing import assert_close
from natgrad.units import CATALOGUE, UNIT_NAMES, hidden_units


def fc(a, b):
    return a * b + b


def conv(cin, cout, k):
    return cin * cout * k * k + cout


def conv_stacks(cin, stacks):
    """Parameters of the conv layers of a stack list [(layers, units, field), …]."""
    total = 0
    for n, cout, k in (layer for stack in stacks for layer in stack):
        for _ in range(n):
            total, cin = total + conv(cin, cout, k), cout
    return total, cin


CIFAR11 = [[(1, 192, 5)], [(1, 192, 1), (1, 240, 3)], [(1, 240, 1), (1, 260, 2)],
           [(1, 260, 1), (1, 280, 2)], [(1, 280, 1), (1, 300, 2)], [(1, 300, 1)]]  # fmt: skip
CIFAR18 = [[(1, 384, 3)], [(1, 384, 1), (1, 384, 2), (2, 640, 2)], [(1, 640, 1), (3, 768, 2)],
           [(1, 768, 1), (2, 896, 2)], [(1, 896, 3), (2, 1024, 2)],
           [(1, 1024, 1), (1, 1152, 2)], [(1, 1152, 1)]]  # fmt: skip
IMAGENET = [[(1, 96, 6)], [(3, 512, 3)], [(5, 768, 3)], [(3, 1024, 3)]]


def expected(name, classes):
    """(parameters, weight layers) by hand from docs/paper.md's table."""
    if name == "mnist-fc":
        return fc(784, 128) + 7 * fc(128, 128) + fc(128, classes), 9
    if name == "mnist-ae":
        sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
        return sum(fc(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)), 8
    if name in ("cifar-11", "cifar-18"):
        stacks = CIFAR11 if name == "cifar-11" else CIFAR18
        p, c = conv_stacks(3, stacks)
        return p + conv(c, classes, 1), sum(n for s in stacks for n, _, _ in s) + 1
    p, c = conv_stacks(3, IMAGENET)
    spp = c * (1 + 4 + 16)
    return p + fc(spp, 4096) + fc(4096, 4096) + fc(4096, classes), 15


COUNT_CASES = [(name, None) for name in NETWORKS] + [
    (name, 10)
    for name in NETWORKS
    if name != "mnist-ae"  # the autoencoder has no classes
]


@pytest.mark.parametrize("name, classes", COUNT_CASES, ids=lambda v: str(v))
def test_parameter_and_layer_counts(name, classes):
    net = build_model(name, "relu", num_classes=classes, device="meta")
    params, layers = expected(name, classes or NETWORKS[name].num_classes)
    assert count_parameters(net) == params
    assert len(weight_layers(net)) == layers
    assert len(hidden_units(net)) == layers - 1 - (name == "mnist-ae")  # the code is linear
    assert all(m.bias is not None for _, m in weight_layers(net))


@pytest.mark.parametrize("name", ["mnist-fc", "mnist-ae", "cifar-11", "cifar-18"])
def test_forward_shapes(name):
    net = build_model(name, "elu", num_classes=None, seed=0, dtype=torch.float32).eval()
    spec = NETWORKS[name]
    out = net(torch.rand(3, *spec.in_shape, dtype=torch.float32))
    assert out.shape == (3, spec.num_classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_imagenet_forward_small_input():
    net = build_model("imagenet-15", "elu", num_classes=7, seed=0, dtype=torch.float32).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64, dtype=torch.float32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_mnist_fc_adapts_to_digits():
    net = build_model("mnist-fc", in_features=64, seed=1)
    assert net.fc1.in_features == 64
    assert net(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    assert net(torch.rand(4, 64)).shape == (4, 10)


def test_cifar_pooling_and_padding_reading():
    net = build_model("cifar-11", "elu", seed=0)
    pools = [n for n, m in net.named_modules() if isinstance(m, nn.MaxPool2d)]
    assert pools == [f"stack{s}.pool" for s in range(1, 6)]  # 32 → 1 after five pools
    drops = {n.split(".")[0]: m.p for n, m in net.named_modules() if isinstance(m, nn.Dropout)}
    assert drops == {"stack2": 0.1, "stack3": 0.2, "stack4": 0.3, "stack5": 0.4, "stack6": 0.5}
    acts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.shape))
             for n, m in hidden_units(net)]  # fmt: skip
    net(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert acts["stack1.act1"] == (1, 192, 32, 32)  # same padding, odd kernel
    assert acts["stack3.act2"] == (1, 260, 8, 8)  # same padding, even kernel


@pytest.mark.parametrize("name", list(NETWORKS)[:3])
def test_same_initial_weights_for_every_unit(name):
    """Run j of every unit type starts from the same weights; SELU's (LeCun normal, gain 1)
    are the same draws scaled by 1/√2 (He's gain is √2)."""
    ref = build_model(name, "elu", seed=3).state_dict()
    for unit in UNIT_NAMES:
        scale = CATALOGUE[unit].init_gain / CATALOGUE["elu"].init_gain
        for bn in (False, True):
            sd = build_model(name, unit, seed=3, batch_norm=bn).state_dict()
            for key, _ in weight_layers(build_model(name, unit, device="meta")):
                expected = ref[f"{key}.weight"] * scale if scale != 1 else ref[f"{key}.weight"]
                assert_close(
                    sd[f"{key}.weight"], expected, rtol=1e-6, atol=0.0, what=f"{unit} {bn} {key}"
                )
    other = build_model(name, "elu", seed=4).state_dict()
    assert not torch.equal(other[f"{key}.weight"], ref[f"{key}.weight"])


def test_he_init_statistics_and_zero_bias():
    net = build_model("mnist-ae", "relu", seed=0)
    w = net.encoder.fc1.weight  # [1000, 784]
    assert_close(w.var(), torch.tensor(2.0 / 784), rtol=0.02, atol=0.0)
    assert_close(w.mean(), torch.tensor(0.0), atol=1e-3)
    assert all((m.bias == 0).all() for _, m in weight_layers(net))


def test_prelu_alpha_and_batch_norm_placement():
    net = build_model("mnist-fc", "prelu", alpha=0.2, batch_norm=True, seed=0)
    names = [n for n, _ in net.named_children()]
    assert names[:4] == ["flatten", "fc1", "bn1", "act1"]
    assert_close(net.act1.weight, torch.tensor([0.2]))
    assert "bn9" not in names


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown network"):
        build_model("resnet")
    with pytest.raises(InputError, match="in_shape or in_features"):
        build_model("mnist-fc", in_shape=(1, 8, 8), in_features=64)
    with pytest.raises(InputError, match="one per stack"):
        build_model("cifar-11", dropout=(0.1,), device="meta")


def test_models_cli(capsys):
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    assert models.run(parser.parse_args(["--unit", "srelu"])) == 0
    out = capsys.readouterr().out
    for name in NETWORKS:
        assert name in out
    assert "217,354" in out


def test_channel_scale_builds_the_recipe_at_reduced_width():

    from natgrad.models import CIFAR11, scaled_stacks
    from natgrad.training import default_config

    net = build_model("cifar-11", "elu", in_shape=(1, 28, 28), num_classes=10,
                      channel_scale=0.125, seed=0)  # fmt: skip
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [24, 24, 30, 30, 32, 32, 35, 35, 38, 38, 10]
    assert len(widths) - 1 == sum(n for stack in CIFAR11 for n, _, _ in stack)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert scaled_stacks(CIFAR11, 1.0) == CIFAR11
    with pytest.raises(InputError, match="channel_scale must be > 0"):
        scaled_stacks(CIFAR11, 0.0)
    with pytest.raises(InputError, match="for the cifar-\\* nets only"):
        default_config("mnist-fc", channel_scale=0.5)


def test_mnist_fc_layer_norm_sits_before_every_hidden_unit_and_starts_at_identity():
    """``layer_norm=True``: a LayerNorm after every hidden Linear, before its unit (γ = 1,
    β = 0 after the He initialisation), none after the output layer; batch norm and layer
    norm together are refused."""
    import pytest as _pytest

    from natgrad.errors import InputError

    net = build_model("mnist-fc", "relu", width=8, depth=3, layer_norm=True, seed=0,
                      in_features=12)  # fmt: skip
    names = [n for n, _ in net.named_children()]
    assert names == ["flatten", "fc1", "ln1", "act1", "fc2", "ln2", "act2", "fc3", "ln3", "act3",
                     "fc4"]  # fmt: skip
    for i in (1, 2, 3):
        ln = getattr(net, f"ln{i}")
        assert torch.equal(ln.weight, torch.ones(8)) and torch.equal(ln.bias, torch.zeros(8))
    same = build_model("mnist-fc", "relu", width=8, depth=3, seed=0, in_features=12)
    assert torch.equal(net.fc2.weight, same.fc2.weight)  # the same draws as without it
    with _pytest.raises(InputError, match="not both"):
        build_model("mnist-fc", "relu", batch_norm=True, layer_norm=True, in_features=12)
