r"""Which layers natgrad handles, and how their units see the data.

A *unit* is one output feature of an ``nn.Linear`` or one output channel of an ``nn.Conv2d``.
Its incoming activations at position p are a_p ∈ R^d and its net input is
net_p = wᵀ a_p + w0 (bias ordered last). Linear layers have P = 1 position per input unless
their input has extra leading dimensions ([N, *, d]: P = ∏*); a Conv2d unit has one position
per output pixel and a_p is the unfolded input patch, ``d = C_in·kh·kw`` in
``weight.view(U, -1)`` order.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from natgrad.errors import InputError, LayerUseError, TrainModeWarning, UnsupportedLayerError

SUPPORTED = (nn.Linear, nn.Conv2d)
#: The affine normalisation layers whose (γ, β) units natgrad.normfisher covers.
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def supported_layers(model: nn.Module) -> dict[str, nn.Module]:
    """All Linear/Conv2d layers of ``model`` by name, in ``named_modules()`` order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SUPPORTED)}


def is_unit_layer(module: nn.Module) -> bool:
    """Whether ``module`` has unit blocks: a Linear/Conv2d layer with a bias."""
    return isinstance(module, SUPPORTED) and module.bias is not None


def unit_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every Linear/Conv2d layer, in order: the parameters that weight decay
    acts on (biases, norm and PReLU parameters are not decayed)."""
    return [m.weight for m in supported_layers(model).values()]


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer`` (a module inside ``model`` or its name), checked to be
    a Linear/Conv2d layer with a bias (:func:`check_layer`)."""
    name, module = find_layer(model, layer)
    check_layer(name, module)
    return name, module


def find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer`` (a module inside ``model`` or its name), whatever its
    type; errors name what is wrong."""
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            known = ", ".join(repr(n) for n in supported_layers(model)) or "none"
            norms = [n for n, m in modules.items() if isinstance(m, NORM_LAYERS)]
            raise UnsupportedLayerError(
                f"layer {layer!r} is not in the model; its Linear/Conv2d layers are: {known}"
                + (f"; its normalisation layers: {', '.join(map(repr, norms))}" if norms else "")
            )
        name, module = layer, modules[layer]
    elif isinstance(layer, nn.Module):
        matches = [n for n, m in model.named_modules() if m is layer]
        if not matches:
            raise UnsupportedLayerError(
                f"the given {type(layer).__name__} is not a submodule of the model; pass a layer "
                "taken from the model itself (e.g. model[2] or its name from named_modules())"
            )
        name, module = matches[0], layer
    else:
        raise UnsupportedLayerError(
            f"layer must be an nn.Module inside the model or its name, got {type(layer).__name__}"
        )
    return name, module


def check_layer(name: str, module: nn.Module) -> None:
    """Raise a clear error unless ``module`` is a Linear/Conv2d with a bias."""
    if not isinstance(module, SUPPORTED):
        raise UnsupportedLayerError(
            f"layer {name!r} is a {type(module).__name__}; natgrad computes unit Fishers of "
            "nn.Linear and nn.Conv2d layers only"
        )
    if module.bias is None:
        raise UnsupportedLayerError(
            f"layer {name!r} has no bias; the unit Fisher of Theorems 1-2 is the block of "
            "(weights, bias) of a unit, so the theory needs one. Build the layer with bias=True."
        )
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise UnsupportedLayerError(
            f"layer {name!r} is a grouped Conv2d (groups={module.groups}); natgrad supports "
            "groups=1 only"
        )


def layer_input(name: str, module: nn.Module, args: tuple, kwargs: dict, n_inputs: int | None
                ) -> torch.Tensor:  # fmt: skip
    r"""The input a hooked layer was called with (positional or ``input=``), refused unless
    it holds one row per model input (``n_inputs``; ``None``: not checked) and, for a Conv2d,
    is batched ``[N, C, H, W]``: the unit Fisher is an average over inputs of each input's
    own block, which rows shared between inputs or one input spread over several rows do
    not give."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor):
        raise InputError(f"layer {name!r} was called without a tensor input (positional or "
                         "input=); natgrad reads the layer's input to form its unit Fisher")  # fmt: skip
    if isinstance(module, nn.Conv2d) and x.ndim != 4:
        raise InputError(f"layer {name!r} is a Conv2d called on a {x.ndim}-d input "
                         f"{tuple(x.shape)}; natgrad needs it batched, [N, C, H, W] with one "
                         "row per model input")  # fmt: skip
    if n_inputs is not None and (x.ndim == 0 or x.shape[0] != n_inputs):
        batch = "one model input" if n_inputs == 1 else f"a batch of {n_inputs} model inputs"
        raise LayerUseError(
            f"layer {name!r} sees {x.shape[0] if x.ndim else 0} rows for {batch}: its rows are not one per input (inputs folded into the batch, e.g. "
            "frames or tokens reshaped to [N·T, ...], a concatenated batch, or an input shared "
            "by all), so no input's own block can be formed; keep the extra axis apart (a "
            "Linear layer takes [N, T, d], T as positions) or leave the layer out"
        )
    return x


def incoming(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""Incoming activations of every unit: ``[N, P, d]`` from the layer input ``x``."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])  # [N, P, d]
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    patches = F.unfold(
        x, module.kernel_size, dilation=module.dilation, padding=0, stride=module.stride
    )  # [N, d, P]
    return patches.transpose(1, 2)  # [N, P, d]


def net_positions(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    r"""Gradients w.r.t. the layer output, ``[K, N, *out]``, as ``[K, N, P, U]``."""
    k, n = g.shape[:2]
    if isinstance(module, nn.Linear):
        return g.reshape(k, n, -1, g.shape[-1])  # [K, N, P, U]
    return g.reshape(k, n, g.shape[2], -1).transpose(-1, -2)  # [K, N, P, U]


def called_twice(name: str) -> LayerUseError:
    """The error for layer ``name`` applied more than once in one forward pass."""
    return LayerUseError(f"layer {name!r} is called more than once in one forward pass; "
                         "natgrad's unit Fisher needs each layer to be applied once per input")  # fmt: skip


def check_signals(name: str, g: torch.Tensor | None) -> torch.Tensor:
    """The back-propagated columns ``g`` of layer ``name``, refused when the layer does not
    reach the output (``None``) or they hold NaN/Inf."""
    if g is None:
        raise LayerUseError(
            f"layer {name!r} does not influence the model output, so its unit Fisher is zero; "
            "leave it out (layers=[...] of unit_fishers or norm_unit_fishers takes the layers "
            "to compute)"
        )
    if not torch.isfinite(g.sum()) and not torch.isfinite(g).all():  # sum: one cheap pass
        raise InputError(
            f"the back-propagated error signals of layer {name!r} contain NaN/Inf; check the "
            "layers above it and the output scale"
        )
    return g


def check_units(name: str, units, n_units: int) -> torch.Tensor:
    r"""``units=`` of layer ``name`` as int64 indices ``[U]``: distinct integers in
    ``[0, n_units)``, in the order given. Floats (``[0.7, 2.9]`` is not silently ``[0, 2]``),
    bools, repeats, empty lists and every unit of the layer in another order are errors (the
    last because a gradient of U rows could then be the layer's or the list's: either
    pairing would be silently wrong for someone).

    Example:
        >>> check_units("fc1", [2, 0], 4), check_units("fc1", [0, 1], 2)
        (tensor([2, 0]), tensor([0, 1]))
    """
    try:
        u = torch.as_tensor(units)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"units= for layer {name!r} must be a list of integer indices ({exc})"
        ) from None
    if u.dtype.is_floating_point or u.dtype.is_complex or u.dtype == torch.bool:
        raise InputError(
            f"units= for layer {name!r} must be integer indices, got "
            f"{units if isinstance(units, (list, tuple)) and len(units) <= 10 else u.dtype}; "
            "pass e.g. units=[0, 2]"
        )
    u = u.to(torch.long).reshape(-1)
    if u.numel() == 0 or u.min() < 0 or u.max() >= n_units:
        raise InputError(
            f"units= for layer {name!r} must be indices in [0, {n_units - 1}], got "
            f"{u.tolist() if u.numel() <= 10 else 'values out of range'}"
        )
    values, counts = u.unique(return_counts=True)
    if (counts > 1).any():
        raise InputError(f"units= for layer {name!r} repeats indices "
                         f"({values[counts > 1][:10].tolist()}); give each unit once")  # fmt: skip
    if u.numel() == n_units and not bool((u == torch.arange(n_units)).all()):
        raise InputError(f"units= for layer {name!r} lists all {n_units} units in another "
                         "order; pass units=None (or the layer's order) and reorder the result "
                         "if you need to")  # fmt: skip
    return u


def batch_statistics_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the batch-norm layers of ``model`` that normalise with the
    batch's statistics: in training mode, or without running statistics
    (``track_running_stats=False``), which they use even in eval mode."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and (m.training or m.running_mean is None)]  # fmt: skip


@contextlib.contextmanager
def batchnorm_guard(model: nn.Module) -> Iterator[None]:
    r"""Run ``model`` as given, but warn (:class:`TrainModeWarning`) if batch-norm or dropout
    layers are in training mode, and restore the running statistics afterwards.

    In training mode a batch-norm layer normalises with the statistics of the current
    batch, so the outputs of one input depend on the others in its batch (the per-input
    Fisher then depends on how the data are batched) and every forward pass updates the
    running statistics. natgrad keeps the mode the caller chose (call ``model.eval()``
    first for the usual per-input Fisher) but never lets its own passes change the
    model's buffers.
    """
    bns = batch_statistics_layers(model)
    if bns:
        names = [n for n, _ in bns]
        warnings.warn(
            f"batch-norm layers {names[:5]}{' ...' if len(names) > 5 else ''} are in training "
            "mode or have track_running_stats=False: they normalise with each batch's "
            "statistics, so each input's output depends "
            "on the whole batch and the columns back-propagated to a layer before them mix "
            "the inputs (as K-FAC's per-example gradients do): the unit Fisher of such a layer "
            "is not the Fisher of any model and depends on the batching (a bias right before "
            "batch norm, which has no effect, gets a positive bias entry c). For the per-input "
            "Fisher of the running-statistics model call model.eval() first, and build batch "
            "norm with track_running_stats=True (natgrad restores the running statistics "
            "afterwards)",
            TrainModeWarning,
            stacklevel=4,
        )
    drops = [n for n, m in model.named_modules()
             if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0]  # fmt: skip
    if drops:
        warnings.warn(
            f"dropout layers {drops[:5]}{' ...' if len(drops) > 5 else ''} are in training "
            "mode: every pass draws new masks, so the unit Fisher is of one random thinned "
            "net and changes from call to call; call model.eval() first for the Fisher of the "
            "net itself",
            TrainModeWarning,
            stacklevel=4,
        )
    saved = [
        (buf, buf.detach().clone())
        for _, m in bns
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
