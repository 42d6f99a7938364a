r"""The sequential runner: one run at a time, on the training core of
:mod:`natgrad.training.engine` (set-up, data order, schedule, evaluation, metrics row,
checkpoints and resume are written there once), seeded, resumable bit-for-bit on CPU,
recording as it goes.
"""

from __future__ import annotations

from pathlib import Path

from natgrad.training import _owner
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig
from natgrad.training.engine import TrainResult, open_run, resolve_device, setup, train_epochs
from natgrad.training.rundir import default_run_dir

__all__ = ["train"]


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    r"""Train ``config.net`` on ``config.dataset``; write metrics, activations, checkpoints.

    Args:
        config: the experiment's settings.
        run_dir: output folder (default :func:`default_run_dir`).
        device: ``"auto"`` (GPU if any), ``"cpu"`` or ``"cuda"``.
        resume: continue from the last checkpoint in ``run_dir`` (its config must match,
            up to ``epochs``); ``False`` starts over and replaces natgrad's earlier outputs
            there (only files named as natgrad names them, see
            :func:`natgrad.training._owner.remove_own_outputs`).
        progress: show a tqdm bar on stderr.

    The run directory is owned by this call while it runs (``docs/run_layout.md``,
    "Ownership, safe writes, divergence"): a second process gets a
    :class:`~natgrad.errors.RunDirError`; a non-finite loss stops training with a
    :class:`~natgrad.errors.DivergedError`.
    """
    dev = resolve_device(device)
    run = Path(run_dir) if run_dir is not None else default_run_dir(config)
    _owner.check_usable(run if run_dir is None else run_dir)  # a str: '' is refused too
    ds, model, optimizer = setup(config, dev)  # data errors before any output is written
    with _owner.claim(run):
        r = open_run(config, run, dev, ds, model, optimizer,
                     ckpt.latest_epoch(run) if resume else None, resume=resume)  # fmt: skip
        train_epochs(r, dev, desc=f"{config.net}/{config.unit}", progress=progress)
    return TrainResult(run_dir=run, model=model, metrics=r.history)
