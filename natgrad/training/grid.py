r"""Train a grid of runs (unit types × seeds × settings) as ONE batched model
(``docs/distributed.md``, "Grids": what is batched, speed, float32 against float64).

:func:`train_grid` stacks the R runs' parameters along a leading run axis
(:class:`~natgrad.training.stacked.StackedNets`) and takes every step of every run at once,
one batched GEMM per layer. Each run keeps its seed (set up by
:func:`~natgrad.training.engine.open_run` as a sequential run), its data order, its unit type
(runs are ordered by unit: one kernel per unit type and layer) and its SGD settings, and
writes the run directory of a sequential run with its own model, momentum buffers and global
RNG states: after each epoch a per-run ``PaperNet`` receives its slice and is evaluated,
recorded and checkpointed by the sequential trainer's own functions, so either trainer
resumes the other's runs. Only ``seconds``, ``train_seconds`` and ``seconds_per_iteration``
(the grid's wall time divided by R) and ``config.json``'s
``trainer: {"name": "grid", "runs": R}`` differ; results equal the sequential trainer's up to
float round-off (batched and single GEMMs sum in different orders), not bit for bit.

What is batched: the training steps of the runs of one :func:`grid_key`, grouped also by
the epoch each run resumes from. Any other config, and any group of one, is trained by
:func:`~natgrad.training.train`.

Example:
    >>> from natgrad.training import default_config
    >>> cfgs = [default_config("mnist-fc", dataset="digits", unit=u) for u in ("elu", "relu")]
    >>> [grid_key(c) is not None for c in cfgs]
    [True, True]
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from natgrad._atomic import append_jsonl
from natgrad.data.preprocess import CROPS
from natgrad.errors import InputError
from natgrad.training import _owner, engine
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig, lr_at
from natgrad.training.engine import Run, TrainResult
from natgrad.training.loop import train
from natgrad.training.recording import save_activations
from natgrad.training.rundir import RunDir, default_run_dir
from natgrad.training.stacked import BATCHED_UNITS, StackedNets, unit_order
from natgrad.units import CATALOGUE

__all__ = ["grid_key", "train_grid"]


def grid_key(config: TrainConfig) -> tuple | None:
    """What runs must share to train as one batched model, or ``None`` when ``config`` is
    trained sequentially (conv nets, PReLU, layer norm, dropout, augmentation or cropped
    data, natgrad.optim).
    Runs with and without batch norm form separate grids."""
    dropout_off = config.dropout is None or all(p == 0 for p in config.dropout)
    if (
        not config.net.startswith("mnist-")
        or config.optimizer != "sgd"
        or config.centre
        or CATALOGUE[config.unit].module not in BATCHED_UNITS  # e.g. PReLU: learned slopes
        or config.augment
        or config.dataset in CROPS  # the trainer's windows of each image (ImageNet's 224)
        or config.layer_norm
        or config.dropout_phases
        or not dropout_off
    ):
        return None
    return (config.net, config.dataset, config.data_dir, config.preprocess, config.dtype,
            config.batch_size, config.epochs, config.loss, config.eval_batch_size,
            config.batch_norm, config.train_split, config.train_size, config.width,
            config.depth)  # fmt: skip


def train_grid(
    configs: Sequence[TrainConfig],
    run_dirs: Sequence[str | Path | None] | None = None,
    *,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
) -> list[TrainResult]:
    r"""Train every config, batching those that share an architecture; same contract as
    ``[train(c, d, device=device, resume=resume, progress=progress) for c, d in …]``.

    Args:
        configs: the runs.
        run_dirs: one output folder per config (``None`` entries or no list:
            :func:`~natgrad.training.default_run_dir`); they must differ.
        device, resume, progress: as for :func:`~natgrad.training.train`.

    Returns:
        One :class:`~natgrad.training.TrainResult` per config, in the order given.

    Raises:
        InputError: two configs share a run dir, or a run dir holds checkpoints of a
            different config (with ``resume``).
    """
    configs = list(configs)
    dirs = list(run_dirs) if run_dirs is not None else [None] * len(configs)
    if len(dirs) != len(configs):
        raise InputError(f"train_grid: {len(configs)} configs but {len(dirs)} run dirs")
    for d in dirs:  # as train checks it: Path('') would be the current directory
        if d is not None:
            _owner.check_usable(d)
    runs = [
        default_run_dir(c) if d is None else Path(d) for c, d in zip(configs, dirs, strict=True)
    ]
    seen: dict[Path, int] = {}
    for i, run in enumerate(runs):
        j = seen.setdefault(run.resolve(), i)
        if j != i:
            raise InputError(
                f"train_grid: configs {j} and {i} both write {run}; give each its own run dir"
            )
    dev = engine.resolve_device(device)
    starts = [ckpt.latest_epoch(run) if resume else None for run in runs]
    cohorts: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        key = grid_key(config)
        cohorts.setdefault((i,) if key is None else (key, starts[i]), []).append(i)
    results: list[TrainResult | None] = [None] * len(configs)
    for members in cohorts.values():
        if len(members) == 1:
            i = members[0]
            results[i] = train(configs[i], runs[i], device=device, resume=resume, progress=progress)
            continue
        trainer = {"name": "grid", "runs": len(members)}
        opened, unique = [], []
        with contextlib.ExitStack() as owned:  # every run dir of the cohort, as train() does
            for i in members:
                owned.enter_context(_owner.claim(runs[i]))
            for i in members:
                ds, model, optimizer = engine.setup(configs[i], dev)
                run = engine.open_run(
                    configs[i],
                    runs[i],
                    dev,
                    ds,
                    model,
                    optimizer,
                    starts[i],
                    trainer,
                    resume=resume,
                )
                run.data = tuple(_dedupe(t, unique) for t in run.data)  # one copy of shared data
                opened.append(run)
            grid = _Grid(opened, dev)
            for pos, res in zip(grid.order, grid.train(progress), strict=True):
                results[members[pos]] = res
    return results  # type: ignore[return-value]


def _dedupe(t: torch.Tensor, unique: list[torch.Tensor]) -> torch.Tensor:
    """An equal tensor already in ``unique`` (appending ``t`` if none is); ``None`` stays."""
    if t is None:
        return t
    for u in unique:
        if u.shape == t.shape and u.dtype == t.dtype and torch.equal(u, t):
            return u
    unique.append(t)
    return t


def _runs_axis(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``[R, ...]``: a view of one tensor if every run has the same data, else the stack."""
    if all(t is tensors[0] for t in tensors[1:]):
        return tensors[0].expand(len(tensors), *tensors[0].shape)
    return torch.stack(tensors)


class _Grid:
    r"""R runs with one architecture and one start epoch, trained as one batched model
    (:class:`~natgrad.training.stacked.StackedNets`)."""

    def __init__(self, runs: list[Run], dev: torch.device):
        # Order the runs by unit type, so that each unit acts on one slice of the run axis.
        self.order = unit_order([r.model for r in runs])
        self.runs = [runs[i] for i in self.order]
        self.dev = dev
        self.R = len(self.runs)
        first = self.runs[0]
        self.start, self.epochs = first.start, first.config.epochs
        self.n, self.bs = first.data[0].shape[0], first.config.batch_size
        if any(r.data[0].shape[0] != self.n for r in self.runs):
            raise InputError("train_grid: runs of one grid have different training set sizes")
        self.data = [_runs_axis([r.data[k] for r in self.runs]) for k in (0, 1)]  # train x, y
        names = dict(first.model.named_parameters())
        decayed = {id(p) for p in first.optimizer.param_groups[0]["params"]}
        self.net = StackedNets(
            [r.model for r in self.runs],
            momentum=[r.config.momentum for r in self.runs],
            weight_decay=[r.config.weight_decay for r in self.runs],
            decayed=[n for n, p in names.items() if id(p) in decayed],
            loss=first.config.loss,
        )  # fmt: skip
        if self.start > 0:  # resumed: the momentum buffers the runs' optimizers hold
            self.net.load_momentum([{n: r.optimizer.state.get(p, {}).get("momentum_buffer")
                                     for n, p in r.model.named_parameters()}
                                    for r in self.runs])  # fmt: skip

    def _gather(self, which: int, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` ``[R, B]`` of data tensor ``which`` (0 train x, 1 train y) per run."""
        return self.data[which][torch.arange(self.R, device=self.dev).unsqueeze(1), idx]

    def _materialise(self, i: int, lr: float | None = None) -> None:
        """Copy run i's slice into its ``PaperNet`` and its momentum (and ``lr``) into its
        optimizer."""
        run = self.runs[i]
        self.net.copy_to(i, run.model)
        for group in run.optimizer.param_groups:
            group["lr"] = group["lr"] if lr is None else lr
        bufs = self.net.momentum_buffers(i)
        if bufs is not None:
            for n, p in run.model.named_parameters():
                run.optimizer.state[p]["momentum_buffer"] = bufs[n]

    # --- the loop -----------------------------------------------------------------------
    def train(self, progress: bool) -> list[TrainResult]:
        """Train every run to its last epoch; results in the grid's (unit) order."""
        from tqdm.auto import tqdm

        per_epoch = math.ceil(self.n / self.bs)
        bar = tqdm(total=(self.epochs - self.start) * per_epoch, disable=not progress, unit="it",
                   desc=f"grid of {self.R} runs", dynamic_ncols=True)  # fmt: skip
        with ThreadPoolExecutor(max_workers=min(self.R, 16)) as pool:
            for epoch in range(self.start + 1, self.epochs + 1):
                self._epoch(epoch, per_epoch, bar, pool)
        bar.close()
        for i in range(self.R):  # the final weights, also when no epoch was left to train
            self._materialise(i)
        return [TrainResult(run_dir=r.dir, model=r.model, metrics=r.history) for r in self.runs]

    def _epoch(self, epoch: int, per_epoch: int, bar, pool: ThreadPoolExecutor) -> None:
        t0 = time.perf_counter()
        perm = torch.stack([engine.epoch_order(r.config, self.n, epoch) for r in self.runs])
        perm = perm.to(self.dev)
        loss_sum = torch.zeros(self.R, dtype=torch.float64, device=self.dev)
        for b in range(per_epoch):
            it = (epoch - 1) * per_epoch + b
            lrs = [lr_at(r.config, iteration=it, epoch=epoch - 1) for r in self.runs]
            idx = perm[:, b * self.bs : (b + 1) * self.bs]  # [R, B]
            xb, yb = self._gather(0, idx), self._gather(1, idx)
            loss = self.net.losses(self.net.forward(xb, training=True), xb, yb)  # [R]
            self.net.step(torch.autograd.grad(loss.sum(), self.net.leaves), lrs)
            loss_sum += loss.detach().double() * idx.shape[1]
            bar.update(1)
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        t_train = time.perf_counter() - t0
        evals, records = [], [None] * self.R
        for i, run in enumerate(self.runs):  # each run's own net, evaluated as train() does
            self._materialise(i, lrs[i])
            config, loss_fn = run.config, engine.loss_function(run.config)
            evals.append(engine.held_out_metrics(run.model, run.held, loss_fn, config))
            if engine.record_due(config, epoch):
                records[i] = engine.probe_record(run.model, run.data[0], run.probe.to(self.dev),
                                                 run.config)  # fmt: skip
        seconds = (time.perf_counter() - t0) / self.R
        jobs = []
        for i, run in enumerate(self.runs):
            row = engine.metrics_row(epoch, per_epoch, lrs[i], float(loss_sum[i]) / self.n,
                                     evals[i], seconds, t_train / self.R)  # fmt: skip
            if not math.isfinite(row["train_loss"]):  # checked once per epoch, as on a GPU
                raise engine.diverged_error(run.dir, epoch, per_epoch, per_epoch, lrs[i],
                                            "training loss", row["train_loss"])  # fmt: skip
            engine.check_held_out(run.dir, row, epoch, per_epoch, per_epoch, lrs[i])
            run.history.append(row)
            jobs.append((run.dir, epoch, records[i], row))
        # Each run's files in the sequential order (activations, metrics, checkpoint); the
        # runs' writes in parallel, as their fsyncs then share the file system's commits.
        for future in [pool.submit(_write, *job) for job in jobs]:
            future.result()
        for run in self.runs:  # checkpoints read the global RNG: one by one
            if engine.checkpoint_due(run.config, epoch):
                engine.seed_globals(run.config.seed)
                engine.save_checkpoint(run, epoch, per_epoch)
        bar.set_postfix(epoch=epoch)


def _write(run_dir: Path, epoch: int, record: dict | None, row: dict) -> None:
    """An epoch's activation record (if any) and metrics row, as the sequential loop writes."""
    if record is not None:
        save_activations(run_dir, epoch, record)
    append_jsonl(RunDir(run_dir).metrics_path, row)
