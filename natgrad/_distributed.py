r"""Data-parallel unit Fisher: sum the accumulators over a ``torch.distributed`` group.

Every accumulator of the engine (:mod:`natgrad.fisher`) is a plain sum over inputs, so a
pass split across R processes ("ranks"), rank r seeing the inputs n ∈ S_r, gives the same
blocks as one pass over all the data once the sums are added across ranks:

.. math::

    F_i = \frac{1}{N}\sum_{r}\sum_{n\in S_r}\sum_k g_{nki} g_{nki}^\top,\qquad
    E_p(a) = \frac{\sum_r \sum_{n \in S_r} \sum_p a_{np}}{\sum_r |S_r|\, P},\qquad
    N = \sum_r |S_r|

:func:`~natgrad.unit_fishers` all-reduces (``SUM``) these sums and counts layer by layer when
``torch.distributed`` runs several processes: ``docs/distributed.md``, "The unit Fisher over
several processes" (usage, shards, ``kind="mc"`` seeding, backends).

Example:
    >>> import torch
    >>> process_group() is None  # no torch.distributed group in this process
    True
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

import torch

from natgrad.errors import InputError

__all__ = ["all_reduce_accumulators", "exit_rank", "process_group", "rank_and_world"]

#: Attributes of an accumulator that are sums over inputs (reduced with SUM): the blocks'
#: Σ g gᵀ (dense) or their diagonal and bias column (structured), Σ a, and n_eff's Σ c_n,
#: Σ c_n² (float64). A tensor held under two names is reduced once.
SUMMED = ("total", "diag", "cross", "sum_a", "c_sum", "c_sq_sum")


def process_group():
    """The default process group if ``torch.distributed`` is initialised with more than one
    process, else ``None`` (a single process: nothing to reduce)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.group.WORLD if dist.get_world_size() > 1 else None


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside ``torch.distributed``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _count_device(accs: list) -> torch.device:
    """NCCL reduces CUDA tensors only: counts live where the accumulators do."""
    for acc in accs:
        if isinstance(getattr(acc, "total", None), torch.Tensor):
            return acc.total.device
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_accumulators(accs: Iterable, n_local: int) -> int:
    r"""Sum the accumulators of every layer over the process group, in place, and return N,
    the number of inputs over all ranks (``n_local``, this rank's, without a group).

    ``accs`` (the same order on every rank): their :data:`SUMMED` tensors, any named in their
    ``summed`` attribute, and their integer ``count`` are replaced by the sums over ranks.
    Raises :class:`~natgrad.errors.InputError` on every rank when some rank passed no inputs,
    or for accumulators that keep factor rows instead of sums (``woodbury_unit_fisher``).
    """
    group = process_group()
    if group is None:
        return n_local
    dist = torch.distributed
    accs = list(accs)
    device = _count_device(accs)
    # One MIN all-reduce first, so that every rank raises the same error or none does: a
    # rank without inputs never allocated its sums (their shapes come from the data), and an
    # accumulator that keeps per-input factor rows (Woodbury: total is True) has no sums to add.
    rows = [acc.name for acc in accs if getattr(acc, "total", None) is True]
    flags = torch.tensor([n_local, -int(bool(rows))], dtype=torch.int64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=group)
    if int(flags[1]) < 0:
        raise InputError(
            f"distributed unit Fisher: the accumulator of layer(s) {rows or '(on another rank)'} "
            "keeps per-input factor rows, not sums, so ranks cannot add them; compute it on one "
            "process (outside torch.distributed, or before init_process_group)"
        )
    if int(flags[0]) == 0:
        raise InputError(
            f"distributed unit Fisher: some rank passed no inputs (this is rank "
            f"{dist.get_rank()} of {dist.get_world_size()}, with {n_local}); give every rank "
            "a non-empty shard of the data"
        )
    counts = torch.tensor([n_local] + [acc.count for acc in accs], dtype=torch.int64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    for acc, count in zip(accs, counts[1:].tolist(), strict=True):
        acc.count = int(count)
        seen: set[int] = set()
        for name in SUMMED + tuple(getattr(acc, "summed", ())):
            tensor = getattr(acc, name, None)
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return int(counts[0])


def exit_rank(code: int) -> None:
    """End a ``torchrun`` rank now, after its process group is destroyed: flush logging and
    the standard streams and leave with ``os._exit``, skipping the interpreter's teardown.

    Even after ``destroy_process_group`` a rank occasionally aborts in C++ static destructors
    at interpreter exit ("terminate called without an active exception", SIGABRT; about one
    exit in 40 with torch 2.13 and gloo), and torchrun then reports the whole job failed
    although every file was written. Call it only once every output is written and closed.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
