r"""Unit Fisher blocks of normalisation layers: the (γ_c, β_c) block of every unit.

A batch-norm, layer-norm or group-norm layer with an affine map computes, for unit c (a
channel of ``BatchNorm1d/2d`` and ``GroupNorm``, an element of ``LayerNorm``'s normalised
shape) at every position p of input n,

.. math::

    y_{npc} = \gamma_c\, \hat x_{npc} + \beta_c ,

with x̂ the normalised input. Unit c is then a unit in the paper's sense with ONE incoming
activation, its own x̂_c, weight γ_c and bias β_c, and its Fisher block is 2×2 (bias last):

.. math::

    F_c = \frac{1}{N}\sum_n \sum_k g_{nkc}\, g_{nkc}^\top,\qquad
    g_{nkc} = \Big(\sum_p v_{nkpc}\, \hat x_{npc},\ \sum_p v_{nkpc}\Big),

with v the error signals of the output columns, from the engine's pass (batch norm as the
caller left it: :func:`natgrad._layers.batchnorm_guard`). Each unit has its own input, so the
result carries E[x̂_c] per unit (``mean_xhat``), not one shared E_p(a).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.ELU(), nn.Linear(4, 2)).double()
    >>> F = norm_unit_fishers(net, torch.randn(8, 3, dtype=torch.float64))["1"]
    >>> F.matrix.shape, F.num_units
    (torch.Size([4, 2, 2]), 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as Fn
from torch import nn

from natgrad import linalg
from natgrad._layers import NORM_LAYERS, check_signals, find_layer
from natgrad.accumulate import block_dtype
from natgrad.errors import InputError, UnsupportedLayerError

__all__ = ["NORM_LAYERS", "NormUnitFisher", "norm_layers", "norm_unit_fishers", "normalised"]


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every normalisation layer with an affine map, by name, in ``named_modules()`` order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, NORM_LAYERS) and _affine(m)}


def _affine(m: nn.Module) -> bool:
    return getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None


def check_norm_layer(name: str, m: nn.Module) -> None:
    if not isinstance(m, NORM_LAYERS):
        raise UnsupportedLayerError(
            f"layer {name!r} is a {type(m).__name__}; normalisation unit blocks cover "
            "BatchNorm1d/2d, LayerNorm and GroupNorm (Linear/Conv2d: natgrad.unit_fishers)"
        )
    if getattr(m, "weight", None) is None:
        raise UnsupportedLayerError(
            f"layer {name!r} has no affine parameters (γ, β); build it with affine=True "
            "(elementwise_affine=True for LayerNorm)"
        )
    if getattr(m, "bias", None) is None:
        raise UnsupportedLayerError(
            f"layer {name!r} has a scale γ but no shift β (LayerNorm(..., bias=False)); a "
            "normalisation unit is the pair (γ, β): build it with bias=True"
        )


def normalised(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""x̂ of every unit at every position, ``[N, P, U]``, as the layer computes it (batch
    norm: running statistics in eval mode, the batch's in training mode)."""
    n = x.shape[0]
    if isinstance(m, nn.LayerNorm):
        xh = Fn.layer_norm(x, m.normalized_shape, None, None, m.eps)
        return xh.reshape(n, -1, m.weight.numel())
    if isinstance(m, nn.GroupNorm):
        xh = Fn.group_norm(x, m.num_groups, None, None, m.eps)
    else:
        use_batch = m.training or m.running_mean is None
        xh = Fn.batch_norm(x, m.running_mean, m.running_var, None, None,
                           training=use_batch, momentum=0.0, eps=m.eps)  # fmt: skip
    return _channels_last(xh)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, *spatial]`` (or ``[N, C]``) as ``[N, P, C]``."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


class NormAccumulator:
    r"""The engine's accumulator for one normalisation layer: Σ_n Σ_k g gᵀ ``[U, 2, 2]``,
    Σ x̂ ``[U]`` and, for n_eff, Σ_n c_n, Σ_n c_n² (c_n the β entry of input n's block)."""

    def __init__(self, name: str, module: nn.Module, units, **_):
        check_norm_layer(name, module)
        if units is not None:
            raise InputError(f"layer {name!r}: units= is not supported for normalisation layers")
        self.name, self.module = name, module
        self.n_units = module.weight.numel()
        self.fan_in = 1
        self.width = self.n_units
        self.conv_moments = "shared"
        self.budget = 1 << 24
        self.total = self.sum_a = self.c_sum = self.c_sq_sum = None
        self.count = 0

    def begin_batch(self, x: torch.Tensor) -> None:
        xh = normalised(self.module, x)  # [N, P, U], summed in at least float32
        self.xh = xh.to(block_dtype(xh.dtype))
        n, p, u = self.xh.shape
        self.width = p * u
        if self.total is None:
            self.total = torch.zeros(u, 2, 2, dtype=self.xh.dtype, device=x.device)
            self.sum_a, self.c_sum, self.c_sq_sum = (
                torch.zeros(u, dtype=torch.float64, device=x.device) for _ in range(3)
            )
        self.sum_a += self.xh.sum((0, 1)).to(torch.float64)
        self.count += n * p
        self.c_n = torch.zeros(n, u, dtype=self.xh.dtype, device=x.device)

    def add_columns(self, g: torch.Tensor | None) -> None:
        check_signals(self.name, g)
        g = g.to(block_dtype(g.dtype))
        k, n = g.shape[:2]
        if isinstance(self.module, nn.LayerNorm):
            v = g.reshape(k, n, -1, self.n_units)  # [K, N, P, U]
        else:
            v = _channels_last(g.reshape(k * n, *g.shape[2:])).reshape(k, n, -1, self.n_units)
        gg = torch.stack([(v * self.xh).sum(2), v.sum(2)], dim=-1)  # [K, N, U, 2]
        self.c_n += gg[..., 1].square().sum(0)
        flat = gg.reshape(k * n, self.n_units, 2).transpose(0, 1)  # [U, K·N, 2]
        self.total.baddbmm_(flat.transpose(1, 2), flat)

    def end_batch(self) -> None:
        c_n = self.c_n.to(torch.float64)
        self.c_sum += c_n.sum(0)
        self.c_sq_sum += c_n.square().sum(0)
        self.xh = self.c_n = None

    def result(self, n_total: int, kind: str, likelihood: str, mc: int | None):
        matrix = self.total / n_total
        matrix = 0.5 * (matrix + matrix.transpose(1, 2))
        return NormUnitFisher(matrix=matrix, mean_xhat=(self.sum_a / self.count).to(matrix.dtype),
                              n=n_total, kind=kind, likelihood=likelihood, layer=self.name,
                              mc_samples=mc, c_sum=self.c_sum, c_sq_sum=self.c_sq_sum)  # fmt: skip


@dataclass(frozen=True, repr=False)
class NormUnitFisher:
    r"""The (γ_c, β_c) blocks of a normalisation layer's U units, bias last.

    Attributes:
        matrix: ``[U, 2, 2]`` the blocks F_c over (γ_c, β_c).
        mean_xhat: ``[U]`` E[x̂_c] over inputs and positions, each unit's own incoming mean.
        n, kind, likelihood, layer, mc_samples: as for :class:`~natgrad.UnitFisher`.
        c_sum, c_sq_sum: ``[U]`` Σ_n c_n and Σ_n c_n² of the β entries (for :attr:`n_eff`).
    """

    matrix: torch.Tensor
    mean_xhat: torch.Tensor
    n: int
    kind: str
    likelihood: str
    layer: str
    mc_samples: int | None = None
    c_sum: torch.Tensor | None = None
    c_sq_sum: torch.Tensor | None = None

    @property
    def num_units(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_eff(self) -> torch.Tensor:
        r"""``[U]`` (Σ c_n)² / Σ c_n², the effective number of inputs behind each block."""
        return self.c_sum.square() / self.c_sq_sum

    def natural_gradient(self, grad_weight, grad_bias, damping: float = 0.0):
        r"""F_c⁻¹ (∂γ_c, ∂β_c) per unit (damped F_c + λI); returns ``(u_γ, u_β)`` shaped as
        the layer's γ and β."""
        if grad_weight.numel() != self.num_units or grad_bias.numel() != self.num_units:
            raise InputError(f"layer {self.layer!r}: grad_weight and grad_bias must hold one "
                             f"entry per unit ({self.num_units}, shaped as γ and β), got "
                             f"{tuple(grad_weight.shape)} and {tuple(grad_bias.shape)}")  # fmt: skip
        g = torch.stack([grad_weight.reshape(-1), grad_bias.reshape(-1)], dim=-1)
        u = linalg.solve(self.matrix, g.to(self.matrix.dtype), damping=damping,
                         layer=self.layer, what="normalisation unit block")  # fmt: skip
        return u[:, 0].reshape(grad_weight.shape), u[:, 1].reshape(grad_bias.shape)

    def __repr__(self) -> str:
        return (f"NormUnitFisher(layer={self.layer!r}, units={self.num_units}, n={self.n}, "
                f"kind={self.kind!r}, likelihood={self.likelihood!r})")  # fmt: skip


def norm_unit_fishers(
    model: nn.Module,
    inputs,
    targets: torch.Tensor | None = None,
    *,
    layers: Sequence[str | nn.Module] | None = None,
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> dict[str, NormUnitFisher]:
    r"""(γ, β) unit blocks of every affine normalisation layer (or of ``layers``) from ONE pass
    over the data; the arguments are those of :func:`natgrad.unit_fishers` (``layers``: the
    normalisation modules inside ``model`` or their names)."""
    from natgrad.engine import PassOptions, compute

    modules = dict(model.named_modules())
    names = (
        list(norm_layers(model)) if layers is None else [find_layer(model, m)[0] for m in layers]
    )
    if not names:
        raise UnsupportedLayerError(
            "layers=[] names no layer; pass the normalisation layers to analyse, or leave "
            "layers out for all of them" if layers is not None else
            "the model has no affine BatchNorm1d/2d, LayerNorm or GroupNorm layer"
        )  # fmt: skip
    spec = {}
    for name in names:
        if name not in modules:
            raise UnsupportedLayerError(f"layer {name!r} is not in the model")
        check_norm_layer(name, modules[name])
        spec[name] = (modules[name], None)
    options = PassOptions(kind=kind, likelihood=likelihood, mc_samples=mc_samples,
                          generator=generator, batch_size=batch_size)  # fmt: skip
    return compute(model, spec, inputs, targets, options, accumulator=NormAccumulator)
