r"""The unit Fisher API: :func:`unit_fisher` (one layer) and :func:`unit_fishers` (every layer,
one pass). The pass over the data is :func:`natgrad.engine.compute` (how it is computed: the
docstring of :mod:`natgrad.engine`); ``out_dir=`` goes to :mod:`natgrad.planner`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from natgrad._layers import check_layer, resolve_layer, supported_layers
from natgrad.engine import PassOptions, compute, layer_spec
from natgrad.errors import UnsupportedLayerError
from natgrad.planner import sharded_unit_fisher
from natgrad.unitfisher import UnitFisher


def unit_fisher(
    model: nn.Module,
    layer: str | nn.Module,
    inputs: torch.Tensor | Iterable,
    targets: torch.Tensor | None = None,
    *,
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    units: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    structure: str = "dense",
    conv_moments: str = "shared",
    max_memory: int | None = None,
    out_dir: str | None = None,
) -> UnitFisher:
    r"""Unit Fisher information matrices of every unit of one Linear/Conv2d layer.

    .. math::

        F_i = E_p\big[E_y[(\textstyle\sum_p \delta_p \tilde a_p)
              (\textstyle\sum_p \delta_p \tilde a_p)^\top]\big]
            = \begin{pmatrix} A & b \\ b^\top & c \end{pmatrix}

    which for a Linear unit is E_p[δ̄² ã ãᵀ] with δ̄² = E_y[δ²] (ELU paper, Section 2).

    Args:
        model: any ``nn.Module``; its output is the logits ``[N, C]`` (categorical), logits
            ``[N, *]`` (bernoulli) or unit-variance means ``[N, *]`` (gaussian). It is run as
            given: call ``model.eval()`` first for dropout or batch-norm nets (batch-norm
            layers in training mode get a :class:`~natgrad.errors.TrainModeWarning`; their
            running statistics are restored afterwards).
        layer: an ``nn.Linear``/``nn.Conv2d`` inside ``model`` (with a bias), or its name,
            applied once per forward pass to ``[N, ...]`` rows, one per input (a layer whose
            rows are not is refused by their count, for the batch and for one input alone,
            which cannot tell N rows shared by all inputs, e.g. N learned prototypes, from N
            inputs' own; a layer that sees a data-dependent subset of the inputs, an expert
            of a routed mixture, is refused too: :func:`natgrad.reference.reference_unit_fisher`
            computes it, one input at a time). The blocks
            are over the weight that multiplies the layer's input: for a parametrised layer
            (weight norm, weight standardisation) the effective weight.
        inputs: ``[N, ...]`` tensor, or an iterable of ``(inputs, targets)`` batches (e.g. a
            DataLoader, not one batch of it: a list ``[x, y]`` is two batches of inputs; a
            tuple ``(x, y)`` of equal rows is refused). Streaming gives the same matrix as one
            big batch (for ``kind="mc"`` see ``batch_size``).
        targets: observed labels, needed for ``kind="empirical"``: ``[N]`` class indices or
            ``[N, *]`` floats shaped like the output.
        kind: ``"exact"`` (expectation over the model's y ~ p(y|z)), ``"mc"`` (``mc_samples``
            labels drawn from the model per input, with ``generator``) or ``"empirical"``
            (observed labels; the biased "empirical Fisher").
        likelihood: ``"categorical"``, ``"bernoulli"`` or ``"gaussian"``.
        units: integer indices of the units to compute (default all); the backward pass is
            shared.
        batch_size: split a tensor ``inputs`` into batches of this size (default: all at once;
            a batch whose temporaries would exceed the memory budget is split further, which
            gives the same matrix; ``kind="mc"`` with a CPU generator draws the same labels
            however the inputs are batched, as it takes them input by input).
        structure: ``"dense"``, ``"quasidiagonal"`` (diag(A), b, c) or ``"diagonal"``
            (diag(F)); the last two, O(U·d) memory, return a
            :class:`~natgrad.structures.StructuredUnitFisher` (``docs/scale.md``).
        conv_moments: ``"shared"`` (the true weight-shared block) or ``"positions"``
            (positions as separate samples; ``docs/scale.md``, "Conv q-moments").
        max_memory: bytes the result and its temporaries may use (default
            :data:`natgrad.memory.DEFAULT_FRACTION` of the available memory); a result that
            does not fit raises :class:`~natgrad.errors.MemoryBudgetError`.
        out_dir: a folder: stream the units in chunks that fit ``max_memory`` to safetensors
            shards there and return a lazily loading :class:`~natgrad.planner.ShardedUnitFisher`.

    Returns:
        :class:`~natgrad.UnitFisher` with ``matrix`` ``[U, d+1, d+1]`` (bias last; Conv2d:
        d = C_in·kh·kw in ``weight.view(U, -1)`` order), ``mean_p`` ``[d]`` and the moments.
        The device is the model's, the dtype the model's but at least float32 (a
        half-precision model's blocks are summed and returned in float32).

    Example:
        >>> import torch
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
        >>> F = unit_fisher(net, net[0], torch.randn(8, 3))
        >>> F.matrix.shape, F.mean_q.shape
        (torch.Size([4, 4, 4]), torch.Size([4, 3]))
    """
    name, module = resolve_layer(model, layer)
    options = PassOptions(kind=kind, likelihood=likelihood, mc_samples=mc_samples,
                          generator=generator, batch_size=batch_size, structure=structure,
                          conv_moments=conv_moments, max_memory=max_memory)  # fmt: skip
    if out_dir is not None:
        return sharded_unit_fisher(model, name, module, units, inputs, targets, out_dir, options)
    return compute(model, {name: (module, units)}, inputs, targets, options)[name]


def unit_fishers(
    model: nn.Module,
    inputs: torch.Tensor | Iterable,
    targets: torch.Tensor | None = None,
    *,
    layers: Sequence[str | nn.Module] | None = None,
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    units: dict[str, Sequence[int] | torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    structure: str = "dense",
    conv_moments: str = "shared",
    max_memory: int | None = None,
) -> dict[str, UnitFisher]:
    r"""Unit Fishers of every Linear/Conv2d layer (or of ``layers``) from ONE pass over the
    data: one forward and one batched backward per batch serve all layers.

    Arguments are those of :func:`unit_fisher`; ``units`` maps layer names to unit indices
    (``out_dir=`` streaming is per layer: call :func:`unit_fisher` for each).
    Returns ``{name: UnitFisher}`` in ``named_modules()`` order.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> {k: v.matrix.shape for k, v in unit_fishers(net, torch.randn(8, 3)).items()}
        {'0': torch.Size([4, 4, 4]), '2': torch.Size([2, 5, 5])}
    """
    if layers is None:
        chosen = supported_layers(model)
        if not chosen:
            raise UnsupportedLayerError("the model has no nn.Linear or nn.Conv2d layer")
        no_bias = [n for n, m in chosen.items() if m.bias is None]
        if no_bias:
            raise UnsupportedLayerError(
                f"layers {no_bias} have no bias, which the unit Fisher of Theorems 1-2 needs; "
                "pass layers=[...] naming only layers with a bias"
            )
        for n, m in chosen.items():
            try:
                check_layer(n, m)
            except UnsupportedLayerError as exc:  # e.g. a grouped conv: the way out
                raise UnsupportedLayerError(f"{exc}; pass layers=[...] leaving it out") from None
    else:
        chosen = dict(resolve_layer(model, layer) for layer in layers)
    spec = layer_spec(chosen, units)
    options = PassOptions(kind=kind, likelihood=likelihood, mc_samples=mc_samples,
                          generator=generator, batch_size=batch_size, structure=structure,
                          conv_moments=conv_moments, max_memory=max_memory)  # fmt: skip
    return compute(model, spec, inputs, targets, options)
