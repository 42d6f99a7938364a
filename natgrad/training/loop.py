r"""The sequential runner: one run at a time, on the training core of
:mod:`natgrad.training.engine` (set-up, data order, schedule, evaluation, metrics row,
checkpoints and resume are written there once), seeded, resumable bit-for-bit on CPU,
recording as it goes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from natgrad._atomic import (
    append_jsonl,
    write_json,
)
from natgrad.training import _owner
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig
from natgrad.training.engine import (
    DEFERRED_LOSS_CHECK,
    TrainResult,
    check_held_out,
    checkpoint_due,
    describe_device,
    diverged_error,
    epoch_generator,
    epoch_zero,
    git_commit,
    held_out_data,
    held_out_metrics,
    loss_function,
    metrics_row,
    resolve_device,
    resume_run,
    save_checkpoint,
    schedule_step,
    setup,
)
from natgrad.training.recording import probe_indices, record_activations, save_activations
from natgrad.training.rundir import RunDir, default_run_dir

__all__ = [
    "TrainResult",
    "default_run_dir",
    "describe_device",
    "git_commit",
    "resolve_device",
    "train",
]


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

    The run directory is owned by this call while it runs (an OS lock,
    :class:`natgrad._lock.DirLock`: a second process gets a :class:`~natgrad.errors.RunDirError`
    naming this one's pid); a non-empty folder that natgrad did not create is refused, never
    emptied. Training stops at the first non-finite loss with a
    :class:`~natgrad.errors.DivergedError` naming the run, epoch, step and the last good
    checkpoint.
    """
    dev = resolve_device(device)
    if run_dir is not None:
        _owner.check_usable(run_dir)
    run = Path(run_dir) if run_dir is not None else default_run_dir(config)
    _owner.check_usable(run)
    ds, model, optimizer = setup(config, dev)  # data errors before any output is written
    with _owner.claim(run):
        return _train(config, run, dev, ds, model, optimizer, resume, progress)


def _train(config, run, dev, ds, model, optimizer, resume, progress) -> TrainResult:
    from tqdm.auto import tqdm

    rd = RunDir(run)
    loss_fn = loss_function(config)
    train_x, train_y = ds.train_x.to(dev), ds.train_y.to(dev)
    held = held_out_data(ds, dev)
    probe = probe_indices(train_x.shape[0], config.probe_size, config.seed)
    n, bs = train_x.shape[0], config.batch_size
    per_epoch = math.ceil(n / bs)
    start = ckpt.latest_epoch(run) if resume else None
    fresh = start is None
    if start is not None:
        history = resume_run(config, run, model, optimizer, start)
    else:
        _owner.remove_own_outputs(run)
        start, history = 0, []
    meta = {"config": config.to_dict(), "device": describe_device(dev),
            "git_commit": git_commit(), "torch_version": torch.__version__}  # fmt: skip
    write_json(rd.config_path, meta)
    if fresh:
        history = epoch_zero(config, run, model, optimizer, (train_x, train_y, held), probe, meta)
    bar = tqdm(total=(config.epochs - start) * per_epoch, disable=not progress, unit="it",
               desc=f"{config.net}/{config.unit}", dynamic_ncols=True)  # fmt: skip
    model.train()
    dropout_mode = None
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=epoch_generator(config.seed, epoch, 0)).to(dev)
        aug = epoch_generator(config.seed, epoch, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        bad_step = torch.full((), -1, dtype=torch.long, device=dev)  # first non-finite (GPU)
        for b in range(per_epoch):
            it = (epoch - 1) * per_epoch + b
            lr, dropout_mode = schedule_step(config, model, optimizer, it, epoch, dropout_mode)
            idx = perm[b * bs : (b + 1) * bs]
            xb, yb = train_x[idx], train_y[idx]
            if config.augment:
                from natgrad.data import random_crop_flip

                xb = random_crop_flip(xb, aug)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), xb, yb)
            finite = torch.isfinite(loss.detach())
            if dev.type not in DEFERRED_LOSS_CHECK:  # per step on the CPU, where it is free
                if not finite:
                    raise diverged_error(
                        run, epoch, b + 1, per_epoch, lr, "training loss", loss.item()
                    )
            else:
                bad_step = torch.where((bad_step < 0) & ~finite, b, bad_step)
            loss.backward()
            if config.optimizer == "sgd":
                optimizer.step()
            else:  # the natural-gradient optimizers refresh their Fisher from the batch
                optimizer.step(xb, yb if config.loss == "cross_entropy" else xb.flatten(1))
            if config.centre:
                from natgrad.optim import update_centres

                update_centres(model, rate=config.centre_rate)
            loss_sum += loss.detach().double() * idx.shape[0]
            bar.update(1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_train = time.perf_counter() - t0
        if int(bad_step) >= 0:
            step = int(bad_step) + 1
            raise diverged_error(run, epoch, step, per_epoch, lr, "training loss", float("nan"))
        evals = held_out_metrics(model, held, loss_fn, config)
        check_held_out(run, evals, epoch, per_epoch, per_epoch, lr)
        if epoch % config.record_every == 0 or epoch == config.epochs:
            save_activations(run, epoch, record_activations(model, train_x[probe.to(dev)]))
        row = metrics_row(epoch, per_epoch, lr, float(loss_sum) / n, evals,
                          time.perf_counter() - t0, t_train)  # fmt: skip
        history.append(row)
        append_jsonl(rd.metrics_path, row)
        bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}",
                        test_loss=f"{evals['test_loss']:.4f}")  # fmt: skip
        if checkpoint_due(config, epoch):
            info = dict(meta, iteration=epoch * per_epoch, metrics=history)
            save_checkpoint(config, run, epoch, model, optimizer, info)
    bar.close()
    return TrainResult(run_dir=run, model=model, metrics=history)
