r"""Optimizers that test the ELU paper's mechanism by training.

- :class:`UnitNaturalGradient`: SGD preconditioned per Linear/Conv2d unit by its damped unit
  Fisher block (``structure="unit"``, Theorem 1), Ollivier's quasi-diagonal reduction
  (``"quasidiagonal"``) or its diagonal (``"diagonal"``), from natgrad's engine.
- :func:`centre` / :func:`update_centres`: the centred reparametrisation
  net = wᵀ(a − m) + v0 (Schraudolph 1998; Raiko, Valpola & LeCun 2012) under which plain SGD
  takes the centred step.
- :mod:`natgrad.optim.solves`: the per-unit solves, batched over units.
"""

from __future__ import annotations

from natgrad.optim.centring import (
    CentredConv2d,
    CentredLinear,
    centre,
    is_centred,
    uncentre,
    update_centres,
)
from natgrad.optim.unitng import STRUCTURES, UnitNaturalGradient

__all__ = [
    "STRUCTURES",
    "CentredConv2d",
    "CentredLinear",
    "UnitNaturalGradient",
    "centre",
    "is_centred",
    "uncentre",
    "update_centres",
]
