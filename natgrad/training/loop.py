r"""The training loop: seeded, resumable bit-for-bit on CPU, recording as it goes.

The run directory's layout is owned by :mod:`natgrad.training.rundir` (``docs/run_layout.md``).
``metrics.jsonl`` holds one JSON line per epoch (epoch 0 = before training): epoch,
iterations, lr, train_loss, test_loss, test_error, seconds, train_seconds,
seconds_per_iteration. Epoch 0's checkpoint holds the initial weights (``checkpoint_initial``).

Reproducibility: the epoch-e data order and augmentation come from generators seeded by
``(seed, e)``; dropout draws from torch's global generator, whose state is checkpointed
with numpy's and Python's. A run killed at any moment resumes from its last checkpoint
(metrics and activation summaries past it are dropped) and ends, on CPU with the same
thread count, bit-identical to an uninterrupted run. Dropout phases
(``config.dropout_phases``) set the dropout rates from the iteration count before each step.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn

from natgrad.errors import InputError
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig, dropout_mode_at, lr_at
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


@dataclass
class TrainResult:
    """What :func:`train` returns: the run dir, the trained model and every metrics row."""

    run_dir: Path
    model: nn.Module
    metrics: list[dict]


def describe_device(device: torch.device) -> str:
    """The GPU name, or the CPU model from ``/proc/cpuinfo``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:  # pragma: no cover
        pass
    return "cpu"


def git_commit() -> str | None:
    """The checkout's ``HEAD`` commit, or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch) * 4 + salt)


def _setup(config: TrainConfig, device: torch.device):
    from natgrad.data import gcn_zca, load_dataset
    from natgrad.models import build_model

    dtype = getattr(torch, config.dtype)
    ds = load_dataset(config.dataset, config.data_dir, seed=config.seed, dtype=dtype)
    if config.preprocess == "gcn-zca":
        ds = gcn_zca(ds)
    extra = {} if config.dropout is None else {"dropout": config.dropout}
    ae = config.loss == "bce_logits"
    model = build_model(
        config.net, config.unit, alpha=config.alpha, batch_norm=config.batch_norm,
        num_classes=None if ae else ds.num_classes, in_shape=ds.input_shape,
        seed=config.seed, dtype=dtype, **extra,
    ).to(device)  # fmt: skip
    decay = [
        p for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) for p in [m.weight]
    ]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return ds, model, optimizer


def _loss_fn(config: TrainConfig):
    if config.loss == "bce_logits":
        return lambda out, x, y: nn.functional.binary_cross_entropy_with_logits(out, x.flatten(1))
    return lambda out, x, y: nn.functional.cross_entropy(out, y)


@torch.no_grad()
def _evaluate(model, x, y, loss_fn, config: TrainConfig) -> tuple[float, float | None]:
    """Mean loss and error rate (``None`` for the autoencoder) over ``x`` in eval mode."""
    was = model.training
    model.eval()
    total, wrong = torch.zeros((), dtype=torch.float64, device=x.device), 0
    for s in range(0, x.shape[0], config.eval_batch_size):
        xb, yb = x[s : s + config.eval_batch_size], y[s : s + config.eval_batch_size]
        out = model(xb)
        total += loss_fn(out, xb, yb).double() * xb.shape[0]
        if config.loss == "cross_entropy":
            wrong += int((out.argmax(1) != yb).sum())
    model.train(was)
    n = max(x.shape[0], 1)
    return float(total) / n, (wrong / n if config.loss == "cross_entropy" else None)


def _rewrite_jsonl(path: Path, max_epoch: int) -> None:
    """Keep only the complete lines with ``epoch <= max_epoch`` (a killed run's tail)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= max_epoch:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    ckpt.atomic_write(path, "".join(k + "\n" for k in keep).encode())


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA if torch sees a GPU, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for but torch sees no GPU; use --device cpu or auto")
    return torch.device(device)


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
            up to ``epochs``); ``False`` starts over and replaces earlier outputs.
        progress: show a tqdm bar on stderr.
    """
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    run = Path(run_dir) if run_dir is not None else default_run_dir(config)
    rd = RunDir(run)
    ds, model, optimizer = _setup(config, dev)  # data errors before any output is written
    run.mkdir(parents=True, exist_ok=True)
    loss_fn = _loss_fn(config)
    train_x, train_y = ds.train_x.to(dev), ds.train_y.to(dev)
    test_x, test_y = ds.test_x.to(dev), ds.test_y.to(dev)
    probe = probe_indices(train_x.shape[0], config.probe_size, config.seed)
    n, bs = train_x.shape[0], config.batch_size
    per_epoch = math.ceil(n / bs)
    start = ckpt.latest_epoch(run) if resume else None
    fresh = start is None
    if start is not None:
        tensors, info = ckpt.read_checkpoint(run, start)
        saved = TrainConfig.from_dict(dict(info["config"], epochs=config.epochs)).to_dict()
        if saved != config.to_dict():
            diff = sorted(k for k, v in config.to_dict().items() if saved[k] != v)
            raise InputError(f"{run}: its checkpoints were made with a different config ({diff}); "
                             "pick another --run-dir or pass --no-resume")  # fmt: skip
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ckpt.restore_state(tensors, info, optimizer)
        history = info["metrics"]
        _rewrite_jsonl(rd.metrics_path, start)
        _rewrite_jsonl(rd.activation_summary_path, start)
    else:
        for p in [rd.metrics_path, rd.activation_summary_path]:
            p.unlink(missing_ok=True)
        for p in rd.checkpoint_files():
            p.unlink()
        start, history = 0, []
    meta = {"config": config.to_dict(), "device": describe_device(dev),
            "git_commit": git_commit(), "torch_version": torch.__version__}  # fmt: skip
    ckpt.atomic_write(rd.config_path, json.dumps(meta, indent=1).encode())
    if fresh:
        rd.activations_dir.mkdir(exist_ok=True)
        ckpt.atomic_write(rd.probe_path, st_save({"indices": probe}))
        save_activations(run, 0, record_activations(model, train_x[probe.to(dev)]))
        tr_loss, _ = _evaluate(model, train_x, train_y, loss_fn, config)
        te_loss, te_err = _evaluate(model, test_x, test_y, loss_fn, config)
        row = dict(epoch=0, iterations=0, lr=lr_at(config, iteration=0, epoch=0), train_loss=tr_loss,
                   test_loss=te_loss, test_error=te_err, seconds=0.0, train_seconds=0.0,
                   seconds_per_iteration=None)  # fmt: skip
        history.append(row)
        _append(rd.metrics_path, row)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)  # noqa: NPY002 - seed the legacy global state
        random.seed(config.seed)
        if config.checkpoint_initial:  # after seeding: resuming from it is exact
            ckpt.write_checkpoint(
                run, 0, model, optimizer, dict(meta, iteration=0, metrics=history)
            )
    bar = tqdm(total=(config.epochs - start) * per_epoch, disable=not progress, unit="it",
               desc=f"{config.net}/{config.unit}", dynamic_ncols=True)  # fmt: skip
    model.train()
    dropout_mode = None
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=_epoch_generator(config.seed, epoch, 0)).to(dev)
        aug = _epoch_generator(config.seed, epoch, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        for b in range(per_epoch):
            it = (epoch - 1) * per_epoch + b
            lr = lr_at(config, iteration=it, epoch=epoch - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if config.dropout_phases and dropout_mode != dropout_mode_at(config, it):
                from natgrad.models import set_dropout_mode

                dropout_mode = dropout_mode_at(config, it)
                set_dropout_mode(model, dropout_mode)
            idx = perm[b * bs : (b + 1) * bs]
            xb, yb = train_x[idx], train_y[idx]
            if config.augment:
                from natgrad.data import random_crop_flip

                xb = random_crop_flip(xb, aug)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), xb, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * idx.shape[0]
            bar.update(1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_train = time.perf_counter() - t0
        te_loss, te_err = _evaluate(model, test_x, test_y, loss_fn, config)
        if epoch % config.record_every == 0 or epoch == config.epochs:
            save_activations(run, epoch, record_activations(model, train_x[probe.to(dev)]))
        row = dict(epoch=epoch, iterations=epoch * per_epoch, lr=lr, train_loss=float(loss_sum) / n,
                   test_loss=te_loss, test_error=te_err, seconds=time.perf_counter() - t0,
                   train_seconds=t_train, seconds_per_iteration=t_train / per_epoch)  # fmt: skip
        history.append(row)
        _append(rd.metrics_path, row)
        bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}", test_loss=f"{te_loss:.4f}")
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
            info = dict(meta, iteration=epoch * per_epoch, metrics=history)
            ckpt.write_checkpoint(run, epoch, model, optimizer, info)
    bar.close()
    return TrainResult(run_dir=run, model=model, metrics=history)
