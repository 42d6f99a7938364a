"""natgrad: unit Fisher information, unit natural gradient and bias-shift correction.

Computes the quantities of Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep
Network Learning by Exponential Linear Units (ELUs)", ICLR 2016, Section 2, on real
networks. The public API is listed here once.
"""

from __future__ import annotations

# --- errors -----------------------------------------------------------------------------
from natgrad.errors import (
    CheckpointError,
    DataFileError,
    InputError,
    NatgradError,
    SingularBlockError,
    UnsupportedLayerError,
)

# --- unit Fisher ------------------------------------------------------------------------
from natgrad.unitfisher import UnitFisher

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataFileError",
    "InputError",
    "NatgradError",
    "SingularBlockError",
    "UnitFisher",
    "UnsupportedLayerError",
    "__version__",
]
