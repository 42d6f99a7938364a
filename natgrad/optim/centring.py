r"""Centring: reparametrise every Linear/Conv2d unit so that plain SGD takes the centred step.

Each unit's net input is written (Schraudolph 1998, "Centering neural network gradient
factors"; Raiko, Valpola & LeCun 2012, AISTATS; LeCun et al. 1998, "Efficient BackProp")

.. math::

    \mathrm{net} = w^\top (a - m) + v_0,\qquad w_0 = v_0 - w^\top m

with m a running mean of the layer's incoming activations a (a buffer, shared by the units
of a layer: the mean patch for Conv2d). The parameters are θ′ = (w, v0); the original ones
are θ = Tθ′ with T = [[I, 0], [−mᵀ, 1]], so the loss gradient in θ′ is Tᵀ∇ and a plain SGD
step in θ′ moves θ by −η·T Tᵀ∇: the ``centred`` direction of docs/theory.md. The gradient of w
is Σ δ (a − m), centred by construction.

m is updated with the function kept fixed: when m moves by Δm, v0 absorbs wᵀΔm, so the net
computes exactly what it computed before. The layers record the mean incoming activation of
their last training-mode forward; :func:`update_centres` moves m towards it
(m ← m + β·(batch mean − m)), after the optimizer step.

Example:
    >>> import torch
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> cnet = centre(net)
    >>> x = torch.randn(5, 3) + 2.0
    >>> out = cnet(x)
    >>> update_centres(cnet, rate=1.0)
    >>> torch.allclose(cnet(x), net(x), atol=1e-6), cnet[0].centre.abs().sum() > 0
    (True, tensor(True))
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
from torch import nn
from torch.nn import functional as F

from natgrad._layers import incoming
from natgrad.errors import InputError

__all__ = ["CentredConv2d", "CentredLinear", "centre", "is_centred", "uncentre", "update_centres"]


class _Centred:
    r"""Mixin: a ``centre`` buffer m ``[d]`` and the last training batch's incoming mean."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        d = self.weight[0].numel()
        self.register_buffer("centre", torch.zeros(d, dtype=self.weight.dtype,
                                                   device=self.weight.device))  # fmt: skip
        self.batch_mean: torch.Tensor | None = None

    def _effective_bias(self) -> torch.Tensor:
        r"""w0 = v0 − W m ``[U]``."""
        return self.bias - self.weight.reshape(self.weight.shape[0], -1) @ self.centre

    def _record(self, x: torch.Tensor) -> None:
        if self.training:
            with torch.no_grad():
                self.batch_mean = self._incoming_mean(x.detach())

    @torch.no_grad()
    def move_centre(self, target: torch.Tensor, rate: float = 1.0) -> None:
        r"""m ← m + rate·(target − m), with v0 += wᵀΔm so that the function is unchanged."""
        delta = rate * (target.to(self.centre.dtype) - self.centre)  # [d]
        self.bias.add_(self.weight.reshape(self.weight.shape[0], -1) @ delta)
        self.centre.add_(delta)


class CentredLinear(_Centred, nn.Linear):
    r"""``nn.Linear`` computing W(x − m) + v0 (``bias`` holds v0, ``centre`` holds m)."""

    def _incoming_mean(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1]).mean(0)  # [d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record(x)
        return F.linear(x, self.weight, self._effective_bias())


class CentredConv2d(_Centred, nn.Conv2d):
    r"""``nn.Conv2d`` computing W·(patch − m) + v0, m the mean patch ``[C_in·kh·kw]``."""

    def _incoming_mean(self, x: torch.Tensor) -> torch.Tensor:
        # unfold is linear: the mean patch of the mean image is the mean patch.
        return incoming(self, x.mean(0, keepdim=True)).mean((0, 1))  # [d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record(x)
        return self._conv_forward(x, self.weight, self._effective_bias())


def is_centred(module: nn.Module) -> bool:
    """Whether ``module`` is a centred layer made by :func:`centre`."""
    return isinstance(module, _Centred)


def centre(model: nn.Module, *, inplace: bool = False, skip: Collection[str] = ()) -> nn.Module:
    r"""A model computing the same function with every Linear/Conv2d (with a bias) replaced
    by its centred version (m = 0 at first, so v0 = w0). Returns a deep copy unless
    ``inplace``. Grouped convolutions, layers without a bias and the layers named in ``skip``
    (``model.named_modules()`` names) are left as they are."""
    out = model if inplace else copy.deepcopy(model)
    names = {id(m): n for n, m in out.named_modules()}
    unknown = set(skip) - set(names.values())
    if isinstance(skip, str) or unknown:
        raise InputError(f"centre: skip={skip!r} names no layer of the model "
                         f"({sorted(unknown) or skip!r})")  # fmt: skip
    from natgrad.network import check_untied

    check_untied(out, "centre")  # a centred copy of each would untie a shared weight
    made: dict[int, nn.Module | None] = {}  # a layer held in several places stays one layer
    for parent in list(out.modules()):
        for name, child in list(parent._modules.items()):  # every slot, repeats included
            if names.get(id(child)) in skip:
                continue
            if id(child) not in made:
                made[id(child)] = _centred_copy(child)
            if made[id(child)] is not None:
                setattr(parent, name, made[id(child)])
    return out


def _centred_copy(m: nn.Module) -> nn.Module | None:
    if is_centred(m) or getattr(m, "bias", None) is None:
        return None
    kw = dict(device=m.weight.device, dtype=m.weight.dtype)
    if type(m) is nn.Linear:
        new = CentredLinear(m.in_features, m.out_features, **kw)
    elif type(m) is nn.Conv2d and m.groups == 1:
        new = CentredConv2d(
            m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
            dilation=m.dilation, padding_mode=m.padding_mode, **kw,
        )  # fmt: skip
    else:
        return None
    with torch.no_grad():
        new.weight.copy_(m.weight)
        new.bias.copy_(m.bias)
    new.weight.requires_grad_(m.weight.requires_grad)  # a frozen layer stays frozen
    new.bias.requires_grad_(m.bias.requires_grad)
    new.train(m.training)
    return new


def update_centres(model: nn.Module, *, rate: float = 0.1) -> None:
    r"""Move every centred layer's m towards the mean incoming activation of its last
    training-mode forward: m ← m + rate·(batch mean − m), v0 absorbing wᵀΔm (the function
    is unchanged). ``rate=1`` sets m to the batch mean."""
    if not (0.0 < rate <= 1.0):
        raise InputError(f"update_centres: rate must be in (0, 1], got {rate!r}")
    for m in model.modules():
        if is_centred(m) and m.batch_mean is not None:
            m.move_centre(m.batch_mean, rate)
            m.batch_mean = None


def uncentre(model: nn.Module) -> nn.Module:
    r"""A deep copy with plain Linear/Conv2d layers holding w and w0 = v0 − wᵀm: the same
    function in the original parametrisation (for the analysis tools)."""
    out = copy.deepcopy(model)
    made: dict[int, nn.Module] = {}  # a layer held in several places stays one layer
    for parent in list(out.modules()):
        for name, child in list(parent._modules.items()):  # every slot, repeats included
            if is_centred(child) and id(child) not in made:
                plain = nn.Linear if isinstance(child, nn.Linear) else nn.Conv2d
                new = copy.copy(child)
                new.__class__ = plain
                with torch.no_grad():
                    bias = child._effective_bias().detach().clone()
                del new._buffers["centre"]
                new.bias = nn.Parameter(bias, requires_grad=child.bias.requires_grad)
                del new.batch_mean
                made[id(child)] = new
            if id(child) in made:
                setattr(parent, name, made[id(child)])
    return out
