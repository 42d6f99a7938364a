r"""Data-parallel training under ``torchrun``: DistributedDataParallel, one data shard per rank.

``natgrad train`` started by ``torchrun --nproc-per-node=W …`` (``WORLD_SIZE`` > 1 in the
environment) runs :func:`train_ddp`: W processes ("ranks"), each with a replica of the net,
split every batch of ``config.batch_size`` inputs between them. ``batch_size`` stays the
GLOBAL batch, so a W-process run trains the same model as a one-process run of the same
config: for global batch k of epoch e (the rows ``perm[kB:(k+1)B]`` of the permutation
drawn from ``(seed, e)``, augmented as one batch) rank r takes the rows ``r, r+W, r+2W, …``
(``DistributedSampler``'s interleaving) and back-propagates

.. math::

    L_r = \frac{W}{|B_k|}\sum_{n \in B_{k,r}} \ell_n,\qquad
    \frac{1}{W}\sum_r \nabla L_r = \nabla \frac{1}{|B_k|}\sum_{n\in B_k} \ell_n

(DDP averages the ranks' gradients), the gradient of the one-process batch mean, also for a
last batch that does not split evenly. The optimizer steps agree up to the order of the
additions (float tolerance, not bit for bit).

Rank 0 alone evaluates, records activations and writes the run directory (the format of
:mod:`natgrad.training.loop`); the others wait at a barrier. Resume reads the last
checkpoint on every rank, so the run directory must be visible to every rank (one machine,
or a shared file system across machines). Backends: NCCL with one GPU per rank
(``cuda:<LOCAL_RANK>``) when ``device`` allows CUDA, else gloo on CPU.

Not equal to one process, by nature: dropout draws its masks on each rank from that rank's
generator (the same distribution, not the same masks), and batch norm normalises with the
statistics of each rank's shard (plain DDP; no SyncBatchNorm).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from natgrad._atomic import append_jsonl, write_json
from natgrad.training import _owner
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig
from natgrad.training.engine import (
    TrainResult,
    checkpoint_due,
    describe_device,
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

__all__ = ["launched_by_torchrun", "shard_rows", "train_ddp"]


def launched_by_torchrun() -> bool:
    """``True`` when the environment names more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def shard_rows(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s rows of a global batch of ``n``: ``rank, rank+world, …``.

    Example:
        >>> [list(range(5))[shard_rows(5, r, 2)] for r in (0, 1)]
        [[0, 2, 4], [1, 3]]
    """
    return slice(rank, n, world)


def _summed_loss(config: TrainConfig):
    """Σ_n ℓ_n over a shard, each ℓ_n as in the sequential (batch-mean) loss."""
    if config.loss == "bce_logits":

        def bce(out, x, y):
            loss = nn.functional.binary_cross_entropy_with_logits(
                out, x.flatten(1), reduction="none"
            )
            return loss.flatten(1).mean(1).sum()

        return bce
    return lambda out, x, y: nn.functional.cross_entropy(out, y, reduction="sum")


def _init_group(device: str) -> tuple[torch.device, int, int]:
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev, dist.get_rank(), dist.get_world_size()


def train_ddp(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    r"""Train like :func:`~natgrad.training.train`, split over the ranks of ``torchrun``.

    Every rank calls it with the same arguments; it initialises the default process group
    if needed (NCCL on GPUs, gloo on CPU). Returns the same :class:`TrainResult` on every
    rank (the metrics are rank 0's, broadcast).
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from tqdm.auto import tqdm

    dev, rank, world = _init_group(device)
    lead = rank == 0
    run = Path(run_dir) if run_dir is not None else default_run_dir(config)
    rd = RunDir(run)
    ds, model, optimizer = setup(config, dev)
    if lead:
        run.mkdir(parents=True, exist_ok=True)
    loss_fn, summed = loss_function(config), _summed_loss(config)
    train_x, train_y = ds.train_x.to(dev), ds.train_y.to(dev)
    held = held_out_data(ds, dev)
    probe = probe_indices(train_x.shape[0], config.probe_size, config.seed)
    n, bs = train_x.shape[0], config.batch_size
    per_epoch = math.ceil(n / bs)
    found = [ckpt.latest_epoch(run) if (resume and lead) else None]
    dist.broadcast_object_list(found, src=0)  # every rank resumes from rank 0's epoch
    start = found[0]
    fresh = start is None
    history: list[dict] = []
    if start is not None:
        history = resume_run(config, run, model, optimizer, start, records=lead)
    else:
        start = 0
        if lead:
            _owner.remove_own_outputs(run)  # natgrad's own files only (RunDir.own_files)
    meta = {"config": config.to_dict(), "device": describe_device(dev),
            "git_commit": git_commit(), "torch_version": torch.__version__,
            "trainer": {"name": "ddp", "world_size": world,
                        "backend": dist.get_backend()}}  # fmt: skip
    if lead:
        write_json(rd.config_path, meta)
    if fresh:
        history = epoch_zero(config, run, model, optimizer, (train_x, train_y, held),
                              probe, meta, write=lead)  # fmt: skip
    if rank > 0:  # dropout: a stream of its own per rank (rank 0's is the checkpointed one)
        torch.manual_seed((config.seed * 1_000_003 + start) * 1024 + rank)
    ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    bar = tqdm(total=(config.epochs - start) * per_epoch, disable=not (progress and lead),
               unit="it", desc=f"{config.net}/{config.unit} x{world}", dynamic_ncols=True)  # fmt: skip
    model.train()
    dropout_mode = None
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=epoch_generator(config.seed, epoch, 0)).to(dev)
        aug = epoch_generator(config.seed, epoch, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        for b in range(per_epoch):
            it = (epoch - 1) * per_epoch + b
            lr, dropout_mode = schedule_step(config, model, optimizer, it, epoch, dropout_mode)
            idx = perm[b * bs : (b + 1) * bs]  # the global batch
            xb, yb = train_x[idx], train_y[idx]
            if config.augment:  # the whole global batch, as one process augments it
                from natgrad.data import random_crop_flip

                xb = random_crop_flip(xb, aug)
            mine = shard_rows(idx.shape[0], rank, world)
            xb, yb = xb[mine], yb[mine]
            optimizer.zero_grad(set_to_none=True)
            local = summed(ddp(xb), xb, yb)
            (local * (world / idx.shape[0])).backward()
            optimizer.step()
            loss_sum += local.detach().double()
            bar.update(1)
        dist.all_reduce(loss_sum)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_train = time.perf_counter() - t0
        if lead:
            evals = held_out_metrics(model, held, loss_fn, config)
            if epoch % config.record_every == 0 or epoch == config.epochs:
                save_activations(run, epoch, record_activations(model, train_x[probe.to(dev)]))
            row = metrics_row(epoch, per_epoch, lr, float(loss_sum) / n, evals,
                              time.perf_counter() - t0, t_train)  # fmt: skip
            history.append(row)
            append_jsonl(rd.metrics_path, row)
            bar.set_postfix(
                epoch=epoch, loss=f"{row['train_loss']:.4f}", test_loss=f"{row['test_loss']:.4f}"
            )
            if checkpoint_due(config, epoch):
                info = dict(meta, iteration=epoch * per_epoch, metrics=history)
                save_checkpoint(config, run, epoch, model, optimizer, info)
        dist.barrier()
    bar.close()
    shared = [history]
    dist.broadcast_object_list(shared, src=0)
    return TrainResult(run_dir=run, model=model, metrics=shared[0])
