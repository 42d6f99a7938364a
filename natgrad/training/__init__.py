r"""Training the paper's networks: typed configs, the loop, activation recording and
safetensors checkpoints. The run directory's layout is owned by
:mod:`natgrad.training.rundir`.
"""

from __future__ import annotations

from natgrad.training.checkpoint import load_checkpoint, read_checkpoint
from natgrad.training.config import TrainConfig, apply_overrides, default_config, lr_at
from natgrad.training.engine import TrainResult, describe_device, git_commit, resolve_device
from natgrad.training.loop import train
from natgrad.training.plan import train_plan
from natgrad.training.recording import load_activations, probe_indices, record_activations
from natgrad.training.rundir import RunDir, default_run_dir, find_runs, run_name

__all__ = [
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "default_config",
    "default_run_dir",
    "describe_device",
    "find_runs",
    "git_commit",
    "load_activations",
    "load_checkpoint",
    "lr_at",
    "probe_indices",
    "read_checkpoint",
    "record_activations",
    "resolve_device",
    "run_name",
    "train",
    "train_plan",
]
