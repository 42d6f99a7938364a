r"""Run directories (written by :func:`natgrad.training.train`) → tidy tables.

Every table has the run's identity columns ``run`` (the folder name), ``net``,
``unit_type``, ``dataset``, ``seed`` and then one row per:

===========================  ===========================================================
function                     rows × columns
===========================  ===========================================================
:func:`curve_table`          run × epoch: ``train_loss``, ``test_loss``, ``test_error``
                             (metrics.jsonl; epoch 0 is before training) and
                             ``median_all``, the median over all hidden units of each
                             unit's mean activation on the probe set (Fig 2a)
:func:`activation_table`     run × epoch × layer: ``median``, ``mean``,
                             ``frac_negative``, ``frac_zero`` of the layer's activations
:func:`unit_table`           run × epoch × layer × unit: the columns of
                             :data:`natgrad.analysis.unitstats.COLUMNS` (Theorems 1–2 per unit)
===========================  ===========================================================

Notes on what is read:

- ``train_loss`` of epoch e ≥ 1 is the running mean of the mini-batch losses during epoch e
  (epoch 0: the loss of the initial net on the whole training set); ``test_loss`` is the
  loss on the held-out split, the paper's "validation" curve.
- The unit table is computed on the run's own probe set (``activations/probe.safetensors``:
  ``probe_size`` training inputs drawn by the run's seed, so all unit types of one seed
  share it) from the checkpoints. Epoch 0 is the run's ``epoch_0000`` checkpoint (written
  when ``checkpoint_initial``, the default); runs without one (older runs) rebuild it from
  ``config.json`` (the initial weights depend only on net, seed and input shape).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from natgrad.analysis.tables import Table, concat
from natgrad.analysis.unitstats import COND_LIMIT, DAMPING, unit_statistics
from natgrad.errors import CheckpointError
from natgrad.training.rundir import RunDir, find_runs

__all__ = [
    "activation_table",
    "checkpoint_epochs",
    "curve_table",
    "find_runs",
    "load_model",
    "probe_set",
    "run_config",
    "unit_table",
]

PathLike = str | os.PathLike


def run_config(run_dir: PathLike) -> dict:
    """The ``config`` dict of the run's ``config.json``."""
    return RunDir(run_dir).read_config()


def _identity(run_dir: Path) -> dict:
    return RunDir(run_dir).identity()


def checkpoint_epochs(run_dir: PathLike, *, include_initial: bool = True) -> list[int]:
    """Sorted epochs with a checkpoint in ``<run_dir>/checkpoints`` (plus 0 when
    ``include_initial``: its checkpoint, or without one rebuilt from the config)."""
    epochs = set(RunDir(run_dir).checkpoint_epochs())
    if include_initial:
        epochs.add(0)
    return sorted(epochs)


def load_model(run_dir: PathLike, epoch: int) -> torch.nn.Module:
    """The run's model at ``epoch`` (eval mode): its checkpoint, or for epoch 0 without one
    the initial weights rebuilt from ``config.json``."""
    from natgrad.training import load_checkpoint

    run_dir = Path(run_dir)
    if RunDir(run_dir).checkpoint_paths(epoch)[1].is_file() or epoch != 0:
        return load_checkpoint(run_dir, epoch)[0]
    from natgrad.models import build_model

    cfg = run_config(run_dir)
    ds = _dataset(run_dir)
    extra = {} if cfg.get("dropout") is None else {"dropout": tuple(cfg["dropout"])}
    model = build_model(
        cfg["net"], cfg["unit"], alpha=cfg.get("alpha"), batch_norm=cfg.get("batch_norm", False),
        num_classes=ds.num_classes, in_shape=ds.input_shape, seed=cfg["seed"],
        dtype=getattr(torch, cfg.get("dtype", "float32")), **extra,
    )  # fmt: skip
    return model.eval()


_DATASETS: dict = {}


def _dataset(run_dir: Path):
    from natgrad.data import load_dataset

    cfg = run_config(run_dir)
    key = (cfg["dataset"], cfg.get("data_dir"), int(cfg["seed"]), cfg.get("dtype", "float32"))
    if key not in _DATASETS:
        _DATASETS.clear()  # keep one data set in memory
        _DATASETS[key] = load_dataset(
            cfg["dataset"], cfg.get("data_dir"), seed=int(cfg["seed"]), dtype=getattr(torch, key[3])
        )
    return _DATASETS[key]


def probe_set(run_dir: PathLike, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs [n, ...], labels [n])``: the run's probe set (its first ``size`` entries)."""
    run_dir = Path(run_dir)
    idx = RunDir(run_dir).read_probe_indices()
    if size is not None:
        idx = idx[:size]
    ds = _dataset(run_dir)
    return ds.train_x[idx], ds.train_y[idx]


def curve_table(run_dirs: Iterable[PathLike]) -> Table:
    """Per run × epoch: losses, test error and ``median_all`` (Fig 2); see the module doc."""
    tables = []
    for run in map(Path, run_dirs):
        metrics = {r["epoch"]: r for r in RunDir(run).read_metrics()}
        acts = {r["epoch"]: r for r in RunDir(run).read_activation_summary()}
        epochs = sorted(metrics)
        nan = float("nan")
        tables.append(
            Table({
                **{k: np.full(len(epochs), v) for k, v in _identity(run).items()},
                "epoch": epochs,
                "train_loss": [metrics[e]["train_loss"] for e in epochs],
                "test_loss": [metrics[e]["test_loss"] for e in epochs],
                "test_error": [_num(metrics[e].get("test_error")) for e in epochs],
                "median_all": [acts[e]["median_all"] if e in acts else nan for e in epochs],
            })
        )  # fmt: skip
    return concat(tables)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def activation_table(run_dirs: Iterable[PathLike]) -> Table:
    """Per run × epoch × hidden layer: the activation summary of ``activations/summary.jsonl``."""
    rows: list[dict] = []
    for run in map(Path, run_dirs):
        ident = _identity(run)
        for rec in RunDir(run).read_activation_summary():
            for layer, s in rec["layers"].items():
                rows.append({**ident, "epoch": rec["epoch"], "layer": layer,
                             **{k: s[k] for k in ("units", "median", "mean", "frac_negative", "frac_zero")}})  # fmt: skip
    if not rows:
        return Table()
    return Table({k: [r[k] for r in rows] for k in rows[0]})


def unit_table(
    run_dirs: Iterable[PathLike],
    *,
    epochs: Sequence[int] | None = None,
    probe_size: int | None = None,
    damping: float = DAMPING,
    cond_limit: float = COND_LIMIT,
    progress: bool = False,
) -> Table:
    r"""Per run × epoch × layer × unit: Theorems 1–2 from the run's checkpoints.

    Args:
        run_dirs: run directories.
        epochs: which epochs (default: every checkpoint, plus 0); epochs without a
            checkpoint raise :class:`~natgrad.errors.CheckpointError` naming the run.
        probe_size: use the first ``probe_size`` inputs of each run's probe set (default all).
        damping, cond_limit: see :mod:`natgrad.analysis.unitstats`.
        progress: show a tqdm bar over (run, epoch).
    """
    from tqdm.auto import tqdm

    jobs = []
    for run in map(Path, run_dirs):
        have = checkpoint_epochs(run)
        chosen = have if epochs is None else list(epochs)
        missing = sorted(set(chosen) - set(have))
        if missing:
            raise CheckpointError(
                f"{run}: no checkpoint for epochs {missing}; it has {have} "
                "(set checkpoint_every so the epochs you ask for are written)"
            )
        jobs += [(run, e) for e in chosen]
    tables = []
    for run, epoch in tqdm(jobs, disable=not progress, desc="unit Fishers", unit="ckpt"):
        x, y = probe_set(run, probe_size)
        stats = unit_statistics(
            load_model(run, epoch), x, y, damping=damping, cond_limit=cond_limit
        )
        head = {**_identity(run), "epoch": epoch}
        tables.append(Table({**{k: np.full(len(stats), v) for k, v in head.items()},
                             **{c: stats[c] for c in stats.columns}}))  # fmt: skip
    return concat(tables)
