r"""Training the paper's networks: typed configs, the loop, activation recording and
safetensors checkpoints. See :mod:`natgrad.training.loop` for the run-directory layout.
"""

from __future__ import annotations

from natgrad.training.checkpoint import load_checkpoint, read_checkpoint
from natgrad.training.config import TrainConfig, apply_overrides, default_config, lr_at
from natgrad.training.loop import TrainResult, default_run_dir, train
from natgrad.training.recording import load_activations, probe_indices, record_activations

__all__ = [
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "default_config",
    "default_run_dir",
    "load_activations",
    "load_checkpoint",
    "lr_at",
    "probe_indices",
    "read_checkpoint",
    "record_activations",
    "train",
]
