r"""Data-parallel training under ``torchrun``: DistributedDataParallel, one data shard per rank
(``docs/distributed.md``, "Training data-parallel": backends, resuming, what differs from one
process).

``natgrad train`` started by ``torchrun --nproc-per-node=W …`` (``WORLD_SIZE`` > 1) runs
:func:`train_ddp`: W processes ("ranks") with a replica of the net each split every GLOBAL
batch of ``config.batch_size`` inputs (rank r takes the rows ``r, r+W, …`` of the batch one
process draws and augments) and back-propagate

.. math::

    L_r = \frac{W}{|B_k|}\sum_{n \in B_{k,r}} \ell_n,\qquad
    \frac{1}{W}\sum_r \nabla L_r = \nabla \frac{1}{|B_k|}\sum_{n\in B_k} \ell_n

(DDP averages the ranks' gradients): the one-process step up to the order of the additions,
also for a last batch that does not split evenly. Rank 0 alone evaluates, records and writes
the run directory.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from natgrad.errors import InputError, NatgradError
from natgrad.training import _owner
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig
from natgrad.training.engine import TrainResult, open_run, resolve_device, setup, train_epochs
from natgrad.training.rundir import default_run_dir

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
        bce = nn.functional.binary_cross_entropy_with_logits
        return lambda out, x, y: bce(out, x.flatten(1), reduction="none").flatten(1).mean(1).sum()
    return lambda out, x, y: nn.functional.cross_entropy(out, y, reduction="sum")


def _together(fn):
    """``fn()`` on every rank; a :class:`NatgradError` raised on any rank is raised on every
    rank (the others would wait in the next collective, or fail inside DDP's constructor)."""
    import torch.distributed as dist

    try:
        out, err = fn(), None
    except NatgradError as exc:
        out, err = None, (type(exc), str(exc))
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, err)
    if (first := next((e for e in errors if e is not None), None)) is not None:
        raise first[0](first[1])
    return out


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

    if config.centre or config.optimizer != "sgd":  # before any output is written
        what = "centre=true" if config.centre else f"optimizer={config.optimizer!r}"
        raise InputError(f"data-parallel training takes plain SGD only, not {what}: each rank "
                         "would centre or estimate the unit Fisher on its own shard; train "
                         "this run in one process (natgrad train without torchrun)")  # fmt: skip
    dev, rank, world = _init_group(device)
    lead = rank == 0
    run = Path(run_dir) if run_dir is not None else default_run_dir(config)
    _owner.check_usable(run if run_dir is None else run_dir)  # a str: '' is refused too
    ds, model, optimizer = setup(config, dev)  # data errors before any output is written
    with contextlib.ExitStack() as owned:  # rank 0 owns the run directory, as train does
        _together(lambda: owned.enter_context(_owner.claim(run)) if lead else None)
        found = [ckpt.latest_epoch(run) if (resume and lead) else None]
        dist.broadcast_object_list(found, src=0)  # every rank resumes from rank 0's epoch
        trainer = {"name": "ddp", "world_size": world, "backend": dist.get_backend()}
        r = _together(lambda: open_run(config, run, dev, ds, model, optimizer, found[0],
                                       trainer, lead=lead, resume=resume))  # fmt: skip
        _train(config, r, model, optimizer, dev, rank, world, progress)
    shared = [r.history]
    dist.broadcast_object_list(shared, src=0)
    return TrainResult(run_dir=run, model=model, metrics=shared[0])


def _train(config, r, model, optimizer, dev, rank: int, world: int, progress: bool) -> None:
    from torch.nn.parallel import DistributedDataParallel

    def on_epoch(epoch: int) -> None:  # dropout: a stream of its own per rank and epoch
        if rank > 0:  # (rank 0's is the checkpointed one), so that a resumed run repeats it
            torch.manual_seed((config.seed * 1_000_003 + epoch) * 1024 + rank)

    wrapped = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    summed = _summed_loss(config)

    def forward(xb, yb):  # rank's rows of the global batch, scaled so that DDP's mean is exact
        mine = shard_rows(xb.shape[0], rank, world)
        xs, ys = xb[mine], yb[mine]
        local = summed(wrapped(xs), xs, ys)
        return local * (world / xb.shape[0]), local.detach().double()

    train_epochs(r, dev, desc=f"{config.net}/{config.unit} x{world}",
                 progress=progress and rank == 0, forward=forward,
                 update=lambda xb, yb: optimizer.step(), ddp=True, lead=rank == 0,
                 on_epoch=on_epoch)  # fmt: skip
