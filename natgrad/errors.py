"""Errors natgrad raises. Each message names the layer, unit or file and says what to do."""

from __future__ import annotations


class NatgradError(Exception):
    """Base class of every error natgrad raises on purpose."""


class InputError(NatgradError, ValueError):
    """Bad user input: wrong shapes, empty data, NaN/Inf, missing targets."""


class LayerUseError(InputError):
    """A supported layer the model uses in a way its unit Fisher cannot be formed for: not
    called, called twice, off the path to the output, or rows that are not one per input
    (leave it out: ``layers=`` of the analysis, ``plain_layers=`` of the optimizer)."""


class UnsupportedLayerError(NatgradError, TypeError):
    """A layer natgrad cannot compute unit Fishers for (not Linear/Conv2d, or without bias)."""


class SingularBlockError(NatgradError, ArithmeticError):
    """A unit Fisher block is singular or too ill-conditioned to invert."""


class DataFileError(NatgradError, OSError):
    """A data file is missing, corrupt or not in the expected format."""


class CheckpointError(NatgradError, OSError):
    """A checkpoint is missing, corrupt, or is a pickle (refused)."""


class RunDirError(NatgradError, OSError):
    """A run or output directory cannot be used: another process holds it (the message names
    its pid), it holds files natgrad did not write, it is a file, or it is read-only."""


class DivergedError(NatgradError, ArithmeticError):
    """Training produced a non-finite loss; the message names the run, epoch and step and
    the last good checkpoint. ``run`` is the run directory where the trainer knows it."""

    def __init__(self, *args, run=None) -> None:
        super().__init__(*args)
        self.run = run


class NatgradWarning(UserWarning):
    """Base class of every warning natgrad issues on purpose."""


class NearlySingularWarning(NatgradWarning):
    """A unit Fisher block is positive definite but so ill-conditioned that its solves lose
    most of their digits: the condition number of the block scaled to a unit diagonal passes
    ``natgrad.linalg.cond_warn`` (1e12 for float64 blocks, about 8.4e4 for float32); the
    message names the units."""


class MemoryBudgetError(NatgradError, MemoryError):
    """A requested result (or its temporaries) cannot fit in the memory budget; the message
    names the bytes needed and the budget, and the ``units=``/``structure=``/``out_dir=``
    that would fit."""


class StructureError(NatgradError, ValueError):
    """A quantity is not defined for a structured (non-dense) unit Fisher; the message says
    why and which structure provides it."""


class TrainModeWarning(NatgradWarning):
    """A model with batch-norm layers in training mode was passed where natgrad evaluates
    per-input quantities; the message says which layers and what natgrad did."""


class LargeStepWarning(NatgradWarning):
    """A preconditioned update would move a layer's weights by more than their own size in one
    step (a step that diverges a few steps later); the message names the layers, the ratio,
    the learning rate and the damping."""
