r"""Damping: its one definition, its names and their defaults (``docs/theory.md``).

Every unit block F (size d+1) is damped by adding μ·I, with μ relative to the block's own
scale, so that one number λ means the same for every unit, layer and net:

    μ = (λ · tr F + λ_layer · mean over the layer's units of tr F) / (d + 1)

(λ_layer = 0 gives the analysis metric F_λ = F + λ·(tr F/(d+1))·I exactly.) The argument is
called ``rel_damping`` (λ) and ``layer_damping`` (λ_layer) everywhere; what differs is the
default, named by what the damping is for:

- ``MEASURE_DAMPING`` = 1e-3: judging a direction (ρ, bias-shift errors, the report's
  tables); it bounds κ(F_λ) ≤ (d+1)/λ + 1 for every block (why this value:
  ``docs/theory.md``, "Damping").
- ``STEP_DAMPING`` = 0.1: taking a step, the preconditioners of :mod:`natgrad.optim`.
- ``LAYER_DAMPING`` = 0.3: the preconditioners' λ_layer (keeps a fresh mnist-fc's unit
  natural gradient finite: λ_layer = 0 let a weight go 25 → 1e6 → NaN in 5 steps,
  tests/test_optim.py). The preconditioners first take a dead unit's zero block as its
  peers' s·I (:mod:`natgrad.optim.solves`), so the layer's mean tr F is its live units'
  mean: a dead unit does not lower its peers' damping.

Example:
    >>> import torch
    >>> mu(torch.tensor([3.0, 1.0], dtype=torch.float64), 2, 0.1)   # λ·tr F/(d+1)
    tensor([0.1500, 0.0500], dtype=torch.float64)
    >>> mu(torch.tensor([3.0, 1.0], dtype=torch.float64), 2, 0.1, layer_damping=0.3)
    tensor([0.4500, 0.3500], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

from natgrad.errors import InputError

__all__ = ["LAYER_DAMPING", "MEASURE_DAMPING", "STEP_DAMPING", "check", "mu", "solvable"]

MEASURE_DAMPING = 1e-3
STEP_DAMPING = 0.1
LAYER_DAMPING = 0.3


def check(value, name: str = "rel_damping") -> float:
    """``value`` as a float, or an :class:`~natgrad.errors.InputError` naming ``name`` unless
    it is a finite number ≥ 0 (a Python, NumPy or 0-d tensor number; not a bool or a string)."""
    boolean = isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")
    try:
        lam = math.nan if boolean or isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        lam = math.nan
    if not (math.isfinite(lam) and lam >= 0.0):
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return lam


def solvable(mu: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    r"""μ for the solves: a dead unit's (``dead`` ``[U]``: a zero block, tr F = 0) becomes 1,
    so that the units solved with it do not fail, damped or not; what is returned for a dead
    unit is NaN (``SolvedUnitFisher._zero_blocks``)."""
    return torch.where(dead, 1.0, mu)


def mu(
    trace: torch.Tensor, d1: int, rel_damping: float, layer_damping: float = 0.0
) -> torch.Tensor:
    r"""``[U]`` μ = (λ·tr F + λ_layer·mean_units(tr F))/(d+1) from the blocks' traces ``[U]``
    (blocks of size ``d1`` = d+1): the one place natgrad computes a damping."""
    lam = check(rel_damping, "rel_damping")
    lam_layer = check(layer_damping, "layer_damping")
    if lam_layer == 0.0:
        return lam * trace / d1
    return (lam * trace + lam_layer * trace.mean()) / d1
