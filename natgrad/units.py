r"""The activation functions ("units") of the ELU paper, Fig 1.

=========  ==============================================  ===========================
name       f(x)                                            module
=========  ==============================================  ===========================
``elu``    x if x > 0, else α (exp(x) − 1); α = 1          :class:`torch.nn.ELU`
``relu``   max(0, x)                                       :class:`torch.nn.ReLU`
``lrelu``  x if x > 0, else α x; α = 0.1 (the paper's)     :class:`torch.nn.LeakyReLU`
``srelu``  max(−1, x): x if x > −1, else −1                :class:`SReLU`
``prelu``  x if x > 0, else a x; a learned, init α = 0.25  :class:`torch.nn.PReLU`
=========  ==============================================  ===========================

Every unit acts elementwise, so shapes are unchanged: ``[N, U]`` for a fully connected
layer, ``[N, C, H, W]`` for a conv layer. Each call of :func:`make_unit` returns a new
module, so forward hooks (activation recording, :mod:`natgrad.training.recording`) see one
module per layer.

Example:
    >>> import torch
    >>> x = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    >>> make_unit("srelu")(x)
    tensor([-1.0000, -0.5000,  0.0000,  2.0000])
    >>> make_unit("lrelu")(x)
    tensor([-0.3000, -0.0500,  0.0000,  2.0000])
"""

from __future__ import annotations

import torch
from torch import nn

from natgrad.errors import InputError

__all__ = ["DEFAULT_ALPHA", "SReLU", "UNIT_NAMES", "UNIT_TYPES", "hidden_units", "make_unit"]

#: The default α of each unit that has one (ELU: saturation value −α; LReLU: slope; PReLU:
#: initial slope, torch's default).
DEFAULT_ALPHA: dict[str, float] = {"elu": 1.0, "lrelu": 0.1, "prelu": 0.25}

UNIT_NAMES: tuple[str, ...] = ("elu", "relu", "lrelu", "srelu", "prelu")


class SReLU(nn.Module):
    r"""Shifted ReLU, f(x) = max(−1, x) = ReLU(x + 1) − 1 (the paper's SReLU, Fig 1).

    Like ELU it can output negative values (down to −1), but it has a kink at −1 instead
    of a smooth saturation. Shape: any, elementwise.

    Example:
        >>> import torch
        >>> SReLU()(torch.tensor([-2.0, -1.0, 0.5]))
        tensor([-1.0000, -1.0000,  0.5000])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp_min(x, -1.0)

    def extra_repr(self) -> str:
        return "f(x) = max(-1, x)"


#: Module classes that :func:`make_unit` can return; used to find the hidden units of a net.
UNIT_TYPES: tuple[type[nn.Module], ...] = (nn.ELU, nn.ReLU, nn.LeakyReLU, SReLU, nn.PReLU)


def make_unit(name: str, alpha: float | None = None) -> nn.Module:
    r"""A fresh activation module for the unit ``name`` (see the module table).

    Args:
        name: one of ``elu``, ``relu``, ``lrelu``, ``srelu``, ``prelu`` (case-insensitive).
        alpha: ELU's α (saturation −α, default 1), LReLU's negative slope (default 0.1) or
            PReLU's initial slope (default 0.25). Refused for ``relu`` and ``srelu``.

    Raises:
        InputError: unknown name, or an α for a unit that has none.

    Example:
        >>> make_unit("elu", alpha=0.5)
        ELU(alpha=0.5)
    """
    key = name.lower()
    if key not in UNIT_NAMES:
        raise InputError(f"unknown unit {name!r}; choose one of {', '.join(UNIT_NAMES)}")
    if alpha is not None and key not in DEFAULT_ALPHA:
        raise InputError(f"unit {key!r} has no alpha parameter (got alpha={alpha}); drop it")
    a = float(DEFAULT_ALPHA.get(key, 0.0) if alpha is None else alpha)
    if key == "elu":
        return nn.ELU(alpha=a)
    if key == "relu":
        return nn.ReLU()
    if key == "lrelu":
        return nn.LeakyReLU(negative_slope=a)
    if key == "srelu":
        return SReLU()
    return nn.PReLU(num_parameters=1, init=a)


def hidden_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    r"""The ``(qualified name, module)`` of every activation module of ``model``, in order.

    These are the hidden units whose outputs :mod:`natgrad.training.recording` records.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), make_unit("elu"), nn.Linear(3, 1))
        >>> [name for name, _ in hidden_units(net)]
        ['1']
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, UNIT_TYPES)]
