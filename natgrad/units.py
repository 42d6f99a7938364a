r"""The activation functions ("units") of the ELU paper, Fig 1.

=========  ==============================================  ===========================
name       f(x)                                            module
=========  ==============================================  ===========================
``elu``    x if x > 0, else α (exp(x) − 1); α = 1          :class:`torch.nn.ELU`
``relu``   max(0, x)                                       :class:`torch.nn.ReLU`
``lrelu``  x if x > 0, else α x; α = 0.1 (the paper's)     :class:`torch.nn.LeakyReLU`
``srelu``  max(−1, x): x if x > −1, else −1                :class:`SReLU`
``prelu``  x if x > 0, else a x; a learned, init α = 0.25  :class:`torch.nn.PReLU`
``selu``   λ(x if x > 0, else α(exp(x) − 1)), λ≈1.0507,    :class:`torch.nn.SELU`
           α≈1.6733 (Klambauer et al. 2017; not in the
           ELU paper; LeCun-normal init)
``gelu``   x Φ(x), Φ the standard normal CDF (Hendrycks &   :class:`torch.nn.GELU`
           Gimpel 2016; not in the ELU paper; He init)
=========  ==============================================  ===========================

:data:`CATALOGUE` is the one list of unit types natgrad reads; a study's *unit type* may add
batch norm (``"relu-bn"``) or layer norm (``"relu-ln"``). :func:`make_unit` returns a new
module per call, so forward hooks (:mod:`natgrad.training.recording`) see one per layer.

Example:
    >>> import torch
    >>> x = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    >>> make_unit("srelu")(x)
    tensor([-1.0000, -0.5000,  0.0000,  2.0000])
    >>> make_unit("lrelu")(x)
    tensor([-0.3000, -0.0500,  0.0000,  2.0000])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from natgrad.errors import InputError

__all__ = [
    "CATALOGUE",
    "DEFAULT_ALPHA",
    "SReLU",
    "UNIT_NAMES",
    "check_alpha",
    "UNIT_TYPES",
    "UnitType",
    "hidden_units",
    "make_unit",
    "unit_type_colour",
    "unit_type_key",
    "unit_type_label",
    "unit_type_order",
]

#: The default α of each unit that has one (ELU: saturation value −α; LReLU: slope; PReLU:
#: initial slope, torch's default).
DEFAULT_ALPHA: dict[str, float] = {"elu": 1.0, "lrelu": 0.1, "prelu": 0.25}


class SReLU(nn.Module):
    r"""Shifted ReLU, f(x) = max(−1, x) = ReLU(x + 1) − 1 (the paper's SReLU, Fig 1): negative
    outputs down to −1 like ELU, but a kink at −1 instead of a smooth saturation.

    Example:
        >>> import torch
        >>> SReLU()(torch.tensor([-2.0, -1.0, 0.5]))
        tensor([-1.0000, -1.0000,  0.5000])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # f′(−1) = 0 as THEORY and torch's ReLU at 0 have it (clamp_min's slope there is 1);
        # a NaN compares False, so it passes through
        return torch.where(x <= -1.0, -1.0, x)

    def extra_repr(self) -> str:
        return "f(x) = max(-1, x)"


@dataclass(frozen=True)
class UnitType:
    r"""One unit type of the catalogue: its key ``name`` (``"elu"``), ``label`` and ``colour``
    for figures and tables, the ``module`` class :func:`make_unit` returns (finds a net's
    hidden units), ``factory`` ``alpha -> nn.Module`` (``None``: the default α), ``in_paper``
    (run in the ELU paper, Fig 2/4), and ``init_gain``, the gain of the Kaiming-normal (fan_in)
    initialisation: √2 (He), 1 (LeCun normal) for SELU. All unit types draw the same normal
    numbers from a seed, so their initial weights differ only by this factor."""

    name: str
    label: str
    colour: str
    module: type[nn.Module]
    factory: Callable[[float | None], nn.Module]
    init_gain: float = 2.0**0.5
    in_paper: bool = True


def _alpha(name: str, alpha: float | None) -> float:
    return float(DEFAULT_ALPHA[name] if alpha is None else alpha)


#: The one list of unit types, in the order figures and tables show them.
CATALOGUE: dict[str, UnitType] = {
    u.name: u
    for u in (
        UnitType("elu", r"ELU ($\alpha=1$)", "#1b9e77", nn.ELU,
                 lambda a: nn.ELU(alpha=_alpha("elu", a))),
        UnitType("relu", "ReLU", "#d95f02", nn.ReLU, lambda a: nn.ReLU()),
        UnitType("lrelu", r"LReLU ($\alpha=0.1$)", "#7570b3", nn.LeakyReLU,
                 lambda a: nn.LeakyReLU(negative_slope=_alpha("lrelu", a))),
        UnitType("srelu", "SReLU", "#e7298a", SReLU, lambda a: SReLU()),
        UnitType("selu", "SELU", "#a6761d", nn.SELU, lambda a: nn.SELU(), init_gain=1.0,
                 in_paper=False),
        UnitType("prelu", "PReLU", "#66a61e", nn.PReLU,
                 lambda a: nn.PReLU(num_parameters=1, init=_alpha("prelu", a)), in_paper=False),
        UnitType("gelu", "GELU", "#e6ab02", nn.GELU, lambda a: nn.GELU(), in_paper=False),
    )
}  # fmt: skip

UNIT_NAMES: tuple[str, ...] = tuple(CATALOGUE)

#: Module classes that :func:`make_unit` can return; used to find the hidden units of a net.
UNIT_TYPES: tuple[type[nn.Module], ...] = tuple(u.module for u in CATALOGUE.values())


#: Normalisation suffixes of a unit type key, and their labels: batch norm, layer norm.
NORM_SUFFIXES = {"-bn": "+BN", "-ln": "+LN"}


def unit_type_key(unit: str, batch_norm: bool = False, layer_norm: bool = False) -> str:
    """The unit type of a run: ``"relu"``, ``"relu-bn"`` with batch norm, ``"relu-ln"`` with
    layer norm."""
    return unit + ("-bn" if batch_norm else "") + ("-ln" if layer_norm else "")


def split_unit_type(key: str) -> tuple[str, str]:
    """``(unit, suffix)`` of a unit type key: ``("relu", "-bn")``, ``("elu", "")``.

    Example:
        >>> split_unit_type("gelu-ln"), split_unit_type("relu")
        (('gelu', '-ln'), ('relu', ''))
    """
    for suffix in NORM_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def _split(key: str) -> tuple[UnitType | None, str]:
    base, suffix = split_unit_type(key)
    return CATALOGUE.get(base), suffix


def unit_type_label(key: str, *, tex: bool = True) -> str:
    r"""Label of a unit type key: ``"ReLU+BN"`` for ``"relu-bn"``, ``"ReLU+LN"`` for
    ``"relu-ln"``; ``tex=False`` drops LaTeX.

    Example:
        >>> unit_type_label("relu-bn"), unit_type_label("elu", tex=False)
        ('ReLU+BN', 'ELU (α=1)')
    """
    unit, suffix = _split(key)
    label = key if unit is None else unit.label
    if not tex:
        label = label.replace(r"$\alpha=", "α=").replace("$", "")
    return label + NORM_SUFFIXES.get(suffix, "")


def unit_type_colour(key: str) -> str | None:
    """Colour of a unit type key; a batch-norm variant gets a darker shade of the unit's
    colour, a layer-norm one a lighter shade (plots also dash them), so that ReLU, ReLU+BN and
    ReLU+LN differ where only fills show.

    Example:
        >>> unit_type_colour("relu") != unit_type_colour("relu-bn")
        True
    """
    unit, suffix = _split(key)
    if unit is None:
        return None
    if not suffix:
        return unit.colour
    rgb = [int(unit.colour[i : i + 2], 16) for i in (1, 3, 5)]
    if suffix == "-bn":
        return "#" + "".join(f"{int(c * 0.55):02x}" for c in rgb)
    return "#" + "".join(f"{int(c + (255 - c) * 0.45):02x}" for c in rgb)


def unit_type_order(keys) -> list[str]:
    """``keys`` sorted by the catalogue (each unit before its ``-bn``, then ``-ln`` variant),
    unknown last."""
    order = {k: i for i, k in enumerate(CATALOGUE)}
    norms = ["", *NORM_SUFFIXES]

    def rank(key: str):
        unit, suffix = _split(key)
        return (order.get(unit.name, len(order)) if unit else len(order), norms.index(suffix), key)

    return sorted(set(keys), key=rank)


def make_unit(name: str, alpha: float | None = None) -> nn.Module:
    r"""A fresh activation module for the unit ``name``, a key of :data:`CATALOGUE`
    (case-insensitive). ``alpha``: ELU's α, LReLU's negative slope or PReLU's initial slope
    (defaults: :data:`DEFAULT_ALPHA`); an α for another unit, or an unknown name, raises
    :class:`~natgrad.errors.InputError`.

    Example:
        >>> make_unit("elu", alpha=0.5)
        ELU(alpha=0.5)
    """
    key = name.lower()
    if key not in CATALOGUE:
        raise InputError(f"unknown unit {name!r}; choose one of {', '.join(UNIT_NAMES)}")
    check_alpha(key, alpha)
    return CATALOGUE[key].factory(alpha)


def check_alpha(unit: str, alpha: float | None) -> None:
    """An :class:`~natgrad.errors.InputError` unless ``alpha`` suits ``unit`` (a key of
    :data:`CATALOGUE`): ``None``, or for a unit with an α a finite one, ≥ 0 but for PReLU's
    learnt slope (a negative ELU or LReLU α makes the unit non-monotone)."""
    if alpha is None:
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InputError(f"unit {unit!r}: alpha={alpha!r} is not a number")
    if unit not in DEFAULT_ALPHA:
        raise InputError(f"unit {unit!r} has no alpha parameter (got alpha={alpha}); drop it")
    if not math.isfinite(alpha) or (alpha < 0 and unit != "prelu"):
        raise InputError(f"unit {unit!r}: alpha={alpha} is not allowed; pass a finite alpha "
                         f"{'' if unit == 'prelu' else '≥ 0 (a negative one makes it non-monotone)'}")  # fmt: skip


def hidden_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    r"""The ``(qualified name, module)`` of every activation module of ``model``, in order:
    the hidden units whose outputs :mod:`natgrad.training.recording` records.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), make_unit("elu"), nn.Linear(3, 1))
        >>> [name for name, _ in hidden_units(net)]
        ['1']
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, UNIT_TYPES)]
