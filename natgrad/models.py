r"""The ELU paper's networks (:data:`NETWORKS`), built for any unit.

The architectures, and natgrad's reading of the paper wherever it leaves room (padding,
pooling, dropout placement, the output layer, SPP, batch norm, initialisation: **the initial
weights depend only on (net, seed, input shape)**), are listed in ``docs/paper.md``,
"Networks"; each reading is a keyword argument of :func:`build_model`. For cifar-18's
dropout phases (``docs/run_layout.md``) every layer but the last of a stack with dropout is
followed by a ``drop<i>`` module with p=0, which :func:`set_dropout_mode` switches on; p=0
dropout is the identity and draws no random numbers, so weights, outputs and the RNG stream
are those of the net without these modules.

Example:
    >>> net = build_model("mnist-fc", "elu", in_features=64, seed=0)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> count_parameters(build_model("mnist-fc", device="meta"))
    217354
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from natgrad._layers import SUPPORTED, supported_layers
from natgrad.argtypes import positive_int
from natgrad.errors import InputError
from natgrad.units import CATALOGUE, UNIT_NAMES, UNIT_TYPES, make_unit

__all__ = ["DROPOUT_MODES", "NETWORKS", "NetSpec", "PaperNet", "SpatialPyramidPool", "build_model",
           "count_parameters", "set_dropout_mode", "weight_layers"]  # fmt: skip

Stack = Sequence[tuple[int, int, int]]  # (layers, units, receptive field)

CIFAR11: tuple[Stack, ...] = (
    ((1, 192, 5),),
    ((1, 192, 1), (1, 240, 3)),
    ((1, 240, 1), (1, 260, 2)),
    ((1, 260, 1), (1, 280, 2)),
    ((1, 280, 1), (1, 300, 2)),
    ((1, 300, 1),),
)
CIFAR11_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0)
CIFAR18: tuple[Stack, ...] = (
    ((1, 384, 3),),
    ((1, 384, 1), (1, 384, 2), (2, 640, 2)),
    ((1, 640, 1), (3, 768, 2)),
    ((1, 768, 1), (2, 896, 2)),
    ((1, 896, 3), (2, 1024, 2)),
    ((1, 1024, 1), (1, 1152, 2)),
    ((1, 1152, 1),),
)
CIFAR18_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.0)
IMAGENET15: tuple[Stack, ...] = (((1, 96, 6),), ((3, 512, 3),), ((5, 768, 3),), ((3, 1024, 3),))
SPP_LEVELS = (1, 2, 4)


class SpatialPyramidPool(nn.Module):
    r"""Spatial pyramid pooling: adaptive max pooling to l×l for each level l, concatenated.

    ``[N, C, H, W] → [N, C·Σ l²]`` (level-major, then channel, then row-major position).

    Example:
        >>> SpatialPyramidPool((1, 2, 4))(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 63])
    """

    def __init__(self, levels: Sequence[int] = SPP_LEVELS) -> None:
        super().__init__()
        self.levels = tuple(int(level) for level in levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [nn.functional.adaptive_max_pool2d(x, lv).flatten(1) for lv in self.levels]
        return torch.cat(pooled, dim=1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class PaperNet(nn.Sequential):
    """An ``nn.Sequential`` that remembers how it was built (``net``, ``unit``, ``build_kwargs``)
    so a checkpoint can rebuild it: ``build_model(net, unit, **build_kwargs)``."""

    def __init__(self, layers: OrderedDict, *, net: str, unit: str, build_kwargs: dict) -> None:
        super().__init__(layers)
        self.net = net
        self.unit = unit
        self.build_kwargs = dict(build_kwargs)


def _hidden(kind: str, i: int, layer: nn.Module, unit: str, alpha, bn: bool,
            ln: bool = False) -> list:  # fmt: skip
    """``[(name, module)]`` for hidden layer ``<kind><i>``: the layer, optional batch or layer
    norm, the unit ``act<i>``."""
    width = layer.weight.shape[0]
    out = [(f"{kind}{i}", layer)]
    if bn:
        out.append((f"bn{i}", nn.BatchNorm2d(width) if kind == "conv" else nn.BatchNorm1d(width)))
    if ln:
        out.append((f"ln{i}", nn.LayerNorm(width)))
    return out + [(f"act{i}", make_unit(unit, alpha))]


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    """A stride-``stride`` conv with ``same`` padding: ``[conv]``, or ``[pad, conv]`` with an
    explicit pad for even ``k``."""
    if k % 2:
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)]
    lo, hi = (k - 1) // 2, k // 2
    return [nn.ZeroPad2d((lo, hi, lo, hi)), nn.Conv2d(cin, cout, k, stride)]


def _conv_stacks(stacks, dropout, in_shape, unit, alpha, bn, *, stem_stride=1, pool_last=True):
    """Named conv stacks; returns (OrderedDict of stacks, channels, spatial size)."""
    c, h, w = in_shape
    out: OrderedDict = OrderedDict()
    for s, stack in enumerate(stacks, start=1):
        mods: list = []
        i, n_stack = 0, sum(n for n, _, _ in stack)
        for n_layers, width, k in stack:
            for _ in range(n_layers):
                i += 1
                stride = stem_stride if (s == 1 and i == 1) else 1
                *pad, conv = _conv(c, width, k, stride)
                mods += [(f"pad{i}", p) for p in pad] + _hidden("conv", i, conv, unit, alpha, bn)
                h, w = -(-h // stride), -(-w // stride)
                if dropout[s - 1] > 0 and i < n_stack:  # p=0 until a dropout phase sets it
                    mods.append((f"drop{i}", nn.Dropout(0.0)))
                c = width
        if (pool_last or s < len(stacks)) and h >= 2 and w >= 2:
            mods.append(("pool", nn.MaxPool2d(2, 2)))
            h, w = h // 2, w // 2
        if dropout[s - 1] > 0:
            mods.append(("drop", nn.Dropout(dropout[s - 1])))
        out[f"stack{s}"] = nn.Sequential(OrderedDict(mods))
    return out, c, (h, w)


def _mlp(sizes, unit, alpha, bn, ln: bool = False, dropout: float = 0.0) -> list:
    """``fc1, act1, …`` for consecutive ``sizes``; the last layer has no unit. ``dropout`` > 0:
    ``drop<i>`` with that rate after every hidden unit ``act<i>``."""
    mods: list = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes[:-1]), start=1):
        mods += _hidden("fc", i, nn.Linear(a, b), unit, alpha, bn, ln)
        if dropout > 0:
            mods.append((f"drop{i}", nn.Dropout(dropout)))
    return mods + [(f"fc{len(sizes) - 1}", nn.Linear(*sizes[-2:]))]


def _mnist_fc(unit, alpha, bn, in_shape, num_classes, **kw) -> OrderedDict:
    d = math.prod(in_shape)
    sizes = [d] + [kw.get("width", 128)] * kw.get("depth", 8) + [num_classes]
    if kw.get("layer_norm") and bn:
        raise InputError("mnist-fc: batch norm or layer norm, not both")
    rates = tuple(kw.get("dropout", (0.0,)))  # not in the paper; off by default
    if len(rates) != 1:
        raise InputError(f"mnist-fc: dropout takes one rate, for every hidden layer; got {rates}")
    p = float(rates[0])
    mods = _mlp(sizes, unit, alpha, bn, ln=bool(kw.get("layer_norm")), dropout=p)
    return OrderedDict([("flatten", nn.Flatten())] + mods)


def _no_dropout(net: str, kw: dict) -> None:
    if kw.get("dropout") is not None:
        raise InputError(f"{net}: its dropout is not a setting (the paper's net), got "
                         f"dropout={tuple(kw['dropout'])}; drop the option")  # fmt: skip


def _mnist_ae(unit, alpha, bn, in_shape, num_classes, **kw) -> OrderedDict:
    _no_dropout("mnist-ae", kw)
    d = math.prod(in_shape)
    code = kw.get("code", (1000, 500, 250, 30))
    enc = nn.Sequential(OrderedDict(_mlp([d, *code], unit, alpha, bn)))
    dec = nn.Sequential(OrderedDict(_mlp([*code[::-1], d], unit, alpha, bn)))
    return OrderedDict([("flatten", nn.Flatten()), ("encoder", enc), ("decoder", dec)])


def scaled_stacks(stacks, scale: float) -> tuple:
    r"""``stacks`` with every conv width multiplied by ``scale`` (rounded, at least 1): the
    paper's recipe at reduced width (``channel_scale``).

    Example:
        >>> scaled_stacks(CIFAR11, 0.125)[:2]
        (((1, 24, 5),), ((1, 24, 1), (1, 30, 3)))
    """
    if not scale > 0:
        raise InputError(f"channel_scale must be > 0, got {scale!r}")
    return tuple(tuple((n, max(1, round(w * scale)), k) for n, w, k in stack) for stack in stacks)


def _cifar(stacks, default_dropout):
    def build(unit, alpha, bn, in_shape, num_classes, **kw) -> OrderedDict:
        stacks_ = scaled_stacks(stacks, kw.get("channel_scale", 1.0))
        dropout = tuple(kw.get("dropout", default_dropout))
        if len(dropout) != len(stacks) + 1:
            raise InputError(
                f"dropout needs {len(stacks) + 1} rates (one per stack), got {dropout}"
            )
        layers, c, _ = _conv_stacks(stacks_, dropout, in_shape, unit, alpha, bn)
        head = [("conv1", nn.Conv2d(c, num_classes, 1))]
        layers[f"stack{len(stacks_) + 1}"] = nn.Sequential(OrderedDict(head))
        layers["gap"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return layers

    return build


def _imagenet(unit, alpha, bn, in_shape, num_classes, **kw) -> OrderedDict:
    _no_dropout("imagenet-15", kw)
    levels = tuple(kw.get("spp_levels", SPP_LEVELS))
    drop = (0.0,) * len(IMAGENET15)
    layers, c, _ = _conv_stacks(
        IMAGENET15, drop, in_shape, unit, alpha, bn, stem_stride=kw.get("stem_stride", 1)
    )
    layers["spp"] = SpatialPyramidPool(levels)
    sizes = [c * sum(lv * lv for lv in levels), 4096, 4096, num_classes]
    fc = _mlp(sizes, unit, alpha, bn, dropout=0.5)  # after each 4096-unit hidden layer
    layers["classifier"] = nn.Sequential(OrderedDict(fc))
    return layers


@dataclass(frozen=True)
class NetSpec:
    """A registered network: its builder, default input shape and number of outputs."""

    name: str
    description: str
    in_shape: tuple[int, int, int]
    num_classes: int
    builder: Callable[..., OrderedDict]


NETWORKS: dict[str, NetSpec] = {
    s.name: s
    for s in (
        NetSpec("mnist-fc", "784 → 8×128 → 10 fully connected (Fig 2)", (1, 28, 28), 10, _mnist_fc),
        NetSpec("mnist-ae", "784-1000-500-250-30 autoencoder, logits out (Fig 3)", (1, 28, 28), 784, _mnist_ae),
        NetSpec("cifar-11", "11 conv layers, 7 stacks (Fig 4, 5)", (3, 32, 32), 100, _cifar(CIFAR11, CIFAR11_DROPOUT)),
        NetSpec("cifar-18", "18(19) conv layers, 8 stacks (Table 1)", (3, 32, 32), 100, _cifar(CIFAR18, CIFAR18_DROPOUT)),
        NetSpec("imagenet-15", "15 layers, SPP before the FC layers (Fig 6)", (3, 224, 224), 1000, _imagenet),
    )
}  # fmt: skip


def build_model(
    name: str,
    unit: str = "elu",
    *,
    alpha: float | None = None,
    batch_norm: bool = False,
    num_classes: int | None = None,
    in_shape: Sequence[int] | None = None,
    in_features: int | None = None,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    **options,
) -> PaperNet:
    r"""Build the paper's network ``name`` with unit ``unit``, He-initialised from ``seed``.

    Args:
        name: a key of :data:`NETWORKS`.
        unit, alpha: see :func:`natgrad.units.make_unit`.
        batch_norm: batch norm after every hidden Linear/Conv2d, before the unit (Fig 5).
        num_classes: outputs C (default: the net's; ``mnist-ae`` outputs its input size).
        in_shape: input ``(channels, height, width)``; for ``mnist-*`` only the product
            matters, or give ``in_features`` (64 for the 8×8 digits).
        seed: weight seed; ``None`` draws one from torch's global generator.
        dtype: parameter dtype (default: torch's default dtype).
        device: where the parameters live; ``"meta"`` builds without memory or init
            (parameter counting).
        options: per-net extras: ``width``, ``depth``, ``dropout=(p,)`` after every hidden
            unit, ``layer_norm=True`` (layer norm after every hidden Linear, before the
            unit) (mnist-fc; not in the paper, off by default); ``dropout`` (cifar-*, one
            rate per stack; ``channel_scale``, every conv width × this, rounded:
            the recipe at reduced width); ``stem_stride``, ``spp_levels`` (imagenet-15).

    Returns:
        A :class:`PaperNet` mapping ``[N, *in_shape]`` (or ``[N, d]``) to ``[N, C]``.

    Raises:
        InputError: unknown net or unit, or inconsistent options.
    """
    if name not in NETWORKS:
        raise InputError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    spec = NETWORKS[name]
    if in_features is not None:
        if in_shape is not None:
            raise InputError("give in_shape or in_features, not both")
        in_shape = (1, 1, int(in_features))
    shape = tuple(int(v) for v in (in_shape or spec.in_shape))
    if len(shape) != 3 and not name.startswith("mnist"):
        raise InputError(f"{name} needs in_shape=(channels, height, width), got {shape}")
    if name == "mnist-ae" and num_classes is not None:
        raise InputError("mnist-ae reconstructs its input; num_classes is not an option")
    classes = int(num_classes or (math.prod(shape) if name == "mnist-ae" else spec.num_classes))
    kwargs = dict(
        alpha=alpha, batch_norm=batch_norm, num_classes=num_classes, in_shape=shape, seed=seed
    )
    kwargs.update(options)
    with torch.device("meta"):
        layers = spec.builder(unit, alpha, batch_norm, shape, classes, **options)
    model = PaperNet(layers, net=name, unit=unit.lower(), build_kwargs=kwargs)
    if torch.device(device).type == "meta":
        return model.to(dtype=dtype or torch.get_default_dtype())
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        model.build_kwargs["seed"] = seed
    model.to_empty(device="cpu").to(dtype=dtype or torch.get_default_dtype())
    _he_init(
        model, torch.Generator().manual_seed(int(seed)), alpha, CATALOGUE[unit.lower()].init_gain
    )
    return model.to(device)


@torch.no_grad()
def _he_init(model: nn.Module, gen: torch.Generator, alpha: float | None, gain: float) -> None:
    """Kaiming-normal (fan_in) weights with ``gain`` (√2: He; 1: LeCun normal, for SELU) from
    ``gen`` in module order, zero biases; batch and layer norm to (γ=1, β=0, running stats
    reset); PReLU slopes to their initial α. The same normal draws for every gain."""
    for mod in model.modules():
        if isinstance(mod, SUPPORTED):
            nn.init.normal_(mod.weight, 0.0, 1.0, generator=gen)
            mod.weight.mul_(gain / math.sqrt(mod.weight[0].numel()))
            nn.init.zeros_(mod.bias)
        elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            mod.reset_parameters()
        elif isinstance(mod, nn.PReLU):
            mod.weight.fill_(0.25 if alpha is None else alpha)
        elif isinstance(mod, UNIT_TYPES) or not any(True for _ in mod.parameters(recurse=False)):
            continue
        else:  # pragma: no cover - a builder added a layer type this function does not know
            raise TypeError(f"no initialisation rule for {type(mod).__name__}")


STACK_DROPOUT = {"cifar-11": CIFAR11_DROPOUT, "cifar-18": CIFAR18_DROPOUT}
DROPOUT_MODES = ("per_stack", "every_layer", "every_layer_x1.5")
DROPOUT_CAP = 0.9  # the x1.5 phase scales p to min(1.5 p, 0.9) (never below p)


def set_dropout_mode(model: PaperNet, mode: str) -> dict[str, float]:
    r"""Set the ``p`` of every dropout module of a cifar net for a dropout phase ``mode``
    (:data:`DROPOUT_MODES`, ``docs/run_layout.md``, "Dropout phases") from the stack rates
    p_s (``build_kwargs["dropout"]`` or the net's default): ``per_stack`` p_s on ``drop``
    (after the pooling) only, ``every_layer`` also on each ``drop<i>``, ``every_layer_x1.5``
    with ``max(p_s, min(1.5 p_s, 0.9))``. Returns ``{module name: p}`` of the dropout modules.

    Example:
        >>> net = build_model("cifar-11", device="meta")
        >>> set_dropout_mode(net, "every_layer_x1.5")["stack6.drop"]
        0.75
    """
    if mode not in DROPOUT_MODES:
        raise InputError(f"dropout mode {mode!r}: choose one of {', '.join(DROPOUT_MODES)}")
    if model.net not in STACK_DROPOUT:
        raise InputError(f"{model.net}: dropout phases exist for {', '.join(STACK_DROPOUT)} only")
    rates = tuple(model.build_kwargs.get("dropout", STACK_DROPOUT[model.net]))
    out = {}
    for s, rate in enumerate(rates, start=1):
        if mode == "every_layer_x1.5":
            rate = max(rate, min(1.5 * rate, DROPOUT_CAP))
        for name, mod in getattr(model, f"stack{s}").named_children():
            if isinstance(mod, nn.Dropout):
                mod.p = rate if (name == "drop" or mode != "per_stack") else 0.0
                out[f"stack{s}.{name}"] = mod.p
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv2d layer, in order (the unit-Fisher layers)."""
    return list(supported_layers(model).items())


# --- `natgrad models` -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unit", default="elu", choices=UNIT_NAMES, help="unit of the hidden layers (default elu)"
    )
    parser.add_argument("--batch-norm", action="store_true", help="add batch norm (Fig 5)")
    parser.add_argument(
        "--num-classes", type=positive_int, default=None, help="override the outputs C"
    )


def run(args: argparse.Namespace) -> int:
    """Print every registered net with its weight layers, unit layers and parameters."""
    from natgrad.units import hidden_units

    print(
        f"{'net':<12} {'input':<12} {'out':>5} {'layers':>6} {'units':>5} {'params':>12}  description"
    )
    for name, spec in NETWORKS.items():
        nc = None if name == "mnist-ae" else args.num_classes
        net = build_model(
            name, args.unit, batch_norm=args.batch_norm, num_classes=nc, device="meta"
        )
        out = nc or spec.num_classes
        shape = "×".join(map(str, spec.in_shape))
        print(
            f"{name:<12} {shape:<12} {out:>5} {len(weight_layers(net)):>6} "
            f"{len(hidden_units(net)):>5} {count_parameters(net):>12,}  {spec.description}"
        )
    return 0
