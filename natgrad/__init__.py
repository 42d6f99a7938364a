# ruff: noqa: I001  -- imports are grouped by topic (the public API), not alphabetically
"""natgrad: unit Fisher information, unit natural gradient and bias-shift correction.

Computes the quantities of Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep
Network Learning by Exponential Linear Units (ELUs)", ICLR 2016, Section 2, on real
networks. The public API is listed here once; submodules (``natgrad.linalg``,
``natgrad.theorems``, ``natgrad.symbolic``, ``natgrad.data``, ``natgrad.training``) hold
the rest. Importing natgrad never imports matplotlib, jupyter or scikit-learn.
"""

from __future__ import annotations

import os as _os

# MKL (torch's CPU BLAS/LAPACK) may round differently with the memory alignment of its
# operands unless told not to; natgrad promises that a resumed run ends bit-identical to an
# uninterrupted one, so its numbers must not depend on where a tensor was allocated. Read by
# MKL at its first call (after ``import torch`` too); a value the user set is kept.
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# --- errors and warnings ----------------------------------------------------------------
from natgrad.errors import (
    CheckpointError,
    DataFileError,
    InputError,
    LargeStepWarning,
    LayerUseError,
    MemoryBudgetError,
    NatgradError,
    NatgradWarning,
    NearlySingularWarning,
    SingularBlockError,
    StructureError,
    UnsupportedLayerError,
)

# --- unit Fisher: the engine, its result, the brute-force reference ---------------------
from natgrad.fisher import unit_fisher, unit_fishers
from natgrad.reference import reference_natural_gradient, reference_unit_fisher
from natgrad.unitfisher import UnitFisher, UnitFisherLike
from natgrad.structures import StructuredUnitFisher
from natgrad.woodbury import WoodburyUnitFisher, woodbury_unit_fisher, woodbury_unit_fishers
from natgrad.planner import ShardedUnitFisher
from natgrad.normfisher import NormUnitFisher, norm_unit_fishers

# --- Lemmas 1-2 and Theorems 1-2 on raw blocks ------------------------------------------
from natgrad.theorems import BiasShift, bias_shift, lemma1_inverse, natural_gradient

# --- units and the paper's networks -----------------------------------------------------
from natgrad.units import SReLU, make_unit
from natgrad.models import NETWORKS, build_model, count_parameters

# --- data and training ------------------------------------------------------------------
from natgrad.data import Dataset, load_dataset
from natgrad.training import TrainConfig, default_config, load_checkpoint, train

__version__ = "0.1.0"

__all__ = [
    # errors and warnings
    "CheckpointError", "DataFileError", "InputError", "LargeStepWarning", "LayerUseError",
    "MemoryBudgetError",
    "NatgradError", "NatgradWarning", "NearlySingularWarning", "SingularBlockError",
    "StructureError", "UnsupportedLayerError",
    # unit Fisher
    "UnitFisher", "UnitFisherLike", "StructuredUnitFisher", "WoodburyUnitFisher",
    "ShardedUnitFisher", "NormUnitFisher", "norm_unit_fishers", "woodbury_unit_fisher",
    "woodbury_unit_fishers", "reference_natural_gradient", "reference_unit_fisher",
    "unit_fisher", "unit_fishers",
    # theorems
    "BiasShift", "bias_shift", "lemma1_inverse", "natural_gradient",
    # units and networks
    "NETWORKS", "SReLU", "build_model", "count_parameters", "make_unit",
    # data and training
    "Dataset", "TrainConfig", "default_config", "load_checkpoint", "load_dataset", "train",
    "__version__",
]  # fmt: skip
