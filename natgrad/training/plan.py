r"""One runner for the runs of any study: train (or resume) a list of run configs, each in its
own run directory, batching what can share a model and recording what diverges.

Every study (``natgrad demo``, ``natgrad compare``, the scripts in ``analysis/``) states its
runs as ``(TrainConfig, run directory)`` pairs and hands them to :func:`train_plan`:

- runs that can be stacked (:func:`~natgrad.training.grid.grid_key`) are split between
  ``workers`` processes and trained as one batched model per worker and architecture
  (:func:`~natgrad.training.grid.train_grid`); every other run (natural-gradient, QD,
  PReLU) trains alone with the sequential trainer, as a job of its own;
- a run whose metrics already hold every epoch is not touched (with ``resume``; a finished
  run carried without its checkpoints counts as finished), an interrupted one resumes from
  its last checkpoint;
- a run that stops on a non-finite loss (:class:`~natgrad.errors.DivergedError`) gets
  ``diverged.json`` in its directory (:meth:`~natgrad.training.rundir.RunDir.diverged_path`)
  and is not retried; the other runs of its job go on from their checkpoints.

Example:
    >>> from natgrad.training import default_config
    >>> cfg = default_config("mnist-fc", dataset="digits", epochs=0)
    >>> complete("/nonexistent/run", cfg.epochs)
    False
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from natgrad.errors import DivergedError
from natgrad.training import _owner
from natgrad.training.rundir import check_same_run

__all__ = ["complete", "default_workers", "per_worker_threads", "train_plan"]


def complete(run: str | Path, epochs: int, config=None) -> bool:
    r"""Whether ``run``'s metrics hold every epoch 0..``epochs`` and, where it keeps
    checkpoints, one at ``epochs`` or later (a run killed between an epoch's metrics row and
    its checkpoint is not complete: it resumes); with ``config`` (a
    :class:`~natgrad.training.config.TrainConfig`), a run of another config is refused
    (:func:`check_same_run`), never taken for this one's."""
    from natgrad.training.rundir import RunDir

    rd = RunDir(Path(run))
    if not rd.metrics_path.is_file():
        return False
    if config is not None:
        check_same_run(run, config)
    latest = rd.latest_epoch()
    if latest is not None and latest < epochs:
        return False
    return {int(r["epoch"]) for r in rd.read_metrics()} >= set(range(epochs + 1))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def per_worker_threads(workers: int) -> int:
    """Torch threads for each of ``workers`` processes: with several, this process's CPUs
    shared out between them (at least one each; a spawned worker would otherwise take every
    core as its own and oversubscribe them); with one, 0 (left as is)."""
    return max(1, _cpus() // workers) if workers > 1 else 0


def default_workers() -> int:
    """The CPUs this process may use, at most 2 (one batched model per worker)."""
    return max(1, min(2, _cpus()))


def _job(job) -> dict[str, str]:
    """Train one job's runs (in a worker process or here); returns its diverged runs."""
    import torch

    from natgrad._atomic import write_json
    from natgrad.training import _owner
    from natgrad.training.grid import train_grid
    from natgrad.training.rundir import RunDir

    cfgs, dirs, device, resume, threads = job
    if threads:
        torch.set_num_threads(threads)
    if not resume:  # a retry after a divergence resumes from this call's checkpoints only
        for d in dirs:
            rd = RunDir(d)
            if not rd.config_path.is_file():
                continue
            with _owner.claim(d):  # natgrad's run, not in use: its older checkpoints go
                for e in rd.checkpoint_epochs():
                    for path in rd.checkpoint_paths(e):
                        path.unlink(missing_ok=True)
    diverged: dict[str, str] = {}
    while True:
        todo = [(c, d) for c, d in zip(cfgs, dirs, strict=True) if d.name not in diverged]
        if not todo:
            return diverged
        try:
            train_grid([c for c, _ in todo], [d for _, d in todo], device=device,
                       resume=resume, progress=False)  # fmt: skip
            return diverged
        except DivergedError as exc:
            if exc.run is None or Path(exc.run).name in diverged:
                raise
            diverged[Path(exc.run).name] = str(exc)
            write_json(RunDir(exc.run).diverged_path, {"message": str(exc)})
            resume = True  # the others go on from their checkpoints


def train_plan(
    configs: Sequence,
    run_dirs: Sequence[str | Path],
    *,
    workers: int = 1,
    device: str = "auto",
    resume: bool = True,
    threads: int = 0,
    batched: bool = True,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, str]:
    r"""Train (or resume) every run; returns ``{run directory name: divergence message}``
    of the runs that stopped on a non-finite loss, now or in an earlier call.

    Args:
        configs, run_dirs: the runs, one directory each (names unique).
        workers: processes (spawned) that share the stackable runs; 1 trains here.
        device: passed to the trainers; on a GPU every run trains in this process.
        resume: reuse finished runs and resume interrupted ones; ``False`` retrains all.
        threads: torch threads per worker (0: when the jobs go to several spawned workers,
            this process's CPUs shared out between them, at least one each, so that they do not
            oversubscribe the cores; when they train here, left as is).
        batched: ``False`` trains every run alone with the sequential trainer.
        progress: a bar counting finished jobs' runs; ``say``: one line per divergence.
    """
    from tqdm.auto import tqdm

    from natgrad.training.grid import grid_key
    from natgrad.training.rundir import RunDir

    for d in run_dirs:  # as train checks it: Path('') would be the current directory (a
        if isinstance(d, str) and not d.strip():  # finished run on read-only storage is fine)
            _owner.check_usable(d)
    dirs = [Path(d) for d in run_dirs]
    if len({d.name for d in dirs}) != len(dirs):
        raise ValueError("train_plan: two runs share a directory name")
    diverged: dict[str, str] = {}
    todo = []
    for i, (cfg, d) in enumerate(zip(configs, dirs, strict=True)):
        if resume and (msg := RunDir(d).read_diverged()) is not None:
            diverged[d.name] = msg
        elif not (resume and complete(d, cfg.epochs, cfg)):
            todo.append(i)
    workers = max(1, workers) if device in ("cpu", "auto") else 1
    stacked = [i for i in todo if batched and grid_key(configs[i]) is not None]
    groups = [g for g in (stacked[w::workers] for w in range(workers)) if g]
    groups += [[i] for i in todo if i not in set(stacked)]
    pooled = workers > 1 and len(groups) > 1  # else every job trains here
    threads = threads or (per_worker_threads(min(workers, len(groups))) if pooled else 0)
    jobs = [([configs[i] for i in g], [dirs[i] for i in g], device, resume, threads)
            for g in groups]  # fmt: skip
    bar = tqdm(total=len(todo), desc="training", unit="run", disable=not progress,
               dynamic_ncols=True)  # fmt: skip

    def done(g, result):
        for name, msg in result.items():
            diverged[name] = msg
            if say:
                say(f"{name} diverged; the other runs go on")
        bar.update(len(g))

    if pooled:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for g, result in zip(groups, pool.map(_job, jobs), strict=True):
                done(g, result)
    else:
        for g, job in zip(groups, jobs, strict=True):
            done(g, _job(job))
    bar.close()
    return diverged
