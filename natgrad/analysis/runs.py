r"""Run directories (written by :func:`natgrad.training.train`) → tidy pandas tables.

Every table starts with the run's identity columns ``run`` (the folder name), ``net``,
``unit_type`` (``"relu"``, ``"relu-bn"``, …), ``dataset`` and ``seed``; then one row per run
× epoch (:func:`curve_table`), run × epoch × layer (:func:`activation_table`) or run × epoch
× layer × unit (:func:`unit_table`, the columns of :mod:`natgrad.analysis.unitstats`).

The unit table's probe is held out (:func:`held_out_split`) and each (run, epoch)'s table is
cached in the run directory, keyed by the SHA-256 of the checkpoint and the analysis
settings (``docs/bias_shift_report.md``, "What is computed" and "Rebuilding tables").
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from natgrad._atomic import remove_table
from natgrad.analysis.csvtables import read_csv, write_csv
from natgrad.analysis.study import _CURVES, _num
from natgrad.analysis.unitstats import unit_statistics
from natgrad.damping import MEASURE_DAMPING
from natgrad.data.preprocess import eval_view
from natgrad.errors import CheckpointError, DataFileError, InputError
from natgrad.training.plan import per_worker_threads
from natgrad.training.rundir import RunDir, find_runs

__all__ = [
    "activation_table",
    "checkpoint_epochs",
    "curve_table",
    "find_runs",
    "load_model",
    "held_out_split",
    "hidden_layers",
    "probe_set",
    "run_config",
    "training_set",
    "unit_table",
]

PathLike = str | os.PathLike


def run_config(run_dir: PathLike) -> dict:
    """The ``config`` dict of the run's ``config.json``."""
    return RunDir(run_dir).read_config()


def checkpoint_epochs(run_dir: PathLike, *, include_initial: bool = True) -> list[int]:
    """Sorted epochs with a checkpoint in ``<run_dir>/checkpoints`` (plus 0 when
    ``include_initial``: its checkpoint, or without one rebuilt from the config)."""
    return sorted({*RunDir(run_dir).checkpoint_epochs(), *([0] if include_initial else [])})


def load_model(run_dir: PathLike, epoch: int) -> torch.nn.Module:
    """The run's model at ``epoch`` (eval mode): its checkpoint, or for epoch 0 without one
    the initial weights rebuilt from ``config.json``."""
    from natgrad.training import load_checkpoint

    run_dir = Path(run_dir)
    if RunDir(run_dir).checkpoint_paths(epoch)[1].is_file() or epoch != 0:
        return load_checkpoint(run_dir, epoch)[0]
    from natgrad.training.config import TrainConfig
    from natgrad.training.engine import initial_model

    return initial_model(TrainConfig.from_dict(run_config(run_dir)), _dataset(run_dir)).eval()


def hidden_layers(run_dir: PathLike) -> list[str]:
    """The run's Linear/Conv2d layers fed by hidden units (all but the first, whose incoming
    activations are the data, the same for every unit type)."""
    from natgrad.models import weight_layers

    return [name for name, _ in weight_layers(load_model(run_dir, 0))][1:]


_DATASETS: dict = {}


#: The config fields that decide what data a run sees (``training.engine.run_data``).
_DATA_FIELDS = ("dataset", "data_dir", "seed", "dtype", "train_split", "train_size", "preprocess")


def _dataset(run_dir: Path):
    """The data the run saw (its training split and preprocessing), one set in memory;
    refused when it is not the data the run recorded (its fingerprints, ``data_sha256`` and
    ``held_out_sha256``)."""
    from natgrad.training.config import TrainConfig
    from natgrad.training.engine import other_data, run_data

    meta = RunDir(run_dir).read_meta()
    config = TrainConfig.from_dict(meta["config"])
    key = tuple(getattr(config, f) for f in _DATA_FIELDS)
    if key not in _DATASETS:
        _DATASETS.clear()  # keep one data set in memory
        _DATASETS[key] = run_data(config)
    ds = _DATASETS[key]
    if differ := other_data(meta, ds.meta["fingerprints"]):  # runs before 2026-12-07 recorded none
        raise DataFileError(f"{run_dir}: it was trained and evaluated on other data than natgrad "
                            f"loads for it now ({differ}; dataset {config.dataset!r}, data_dir "
                            f"{config.data_dir!r}); analyse it with the data it trained on")  # fmt: skip
    return ds


def held_out_split(run_dir: PathLike) -> str:
    """``"val"`` where the run's data set has a validation split (and the run did not train
    on it), else ``"test"``: the split the unit table's probe is drawn from."""
    return "val" if _dataset(Path(run_dir)).val_x is not None else "test"


def probe_set(
    run_dir: PathLike, size: int | None = None, *, split: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs [n, ...], labels [n])``: the run's held-out probe (the first ``size`` inputs
    of ``split="val"`` or ``"test"``, all by default; ``None``: :func:`held_out_split`), its
    recorded training probe (``split="train"``), or the first ``size`` of the inputs it
    trained on (``split="train-all"``, :func:`training_set`: the exact Fisher needs inputs
    only, and the Fisher of the training objective is the one over them)."""
    run_dir = Path(run_dir)
    ds = _dataset(run_dir)
    split = held_out_split(run_dir) if split is None else split
    if split == "train":
        idx = RunDir(run_dir).read_probe_indices()
        if size is not None:
            idx = idx[:size]
        return eval_view(ds.train_x[idx], ds.name), ds.train_y[idx]
    if split != "train-all" and (split not in ("val", "test") or getattr(ds, f"{split}_x") is None):
        raise InputError(f"{run_dir}: probe split {split!r} is not one of this data set's "
                         f"held-out splits ({', '.join(ds.splits[1:])}), 'train' or "
                         "'train-all'")  # fmt: skip
    if size is not None and (isinstance(size, bool) or int(size) < 1):
        raise InputError(f"probe size {size!r}: must be a positive integer (or None: all)")
    x, y = training_set(run_dir) if split == "train-all" else (getattr(ds, f"{split}_x"),
                                                               getattr(ds, f"{split}_y"))  # fmt: skip
    n = x.shape[0] if size is None else min(int(size), x.shape[0])
    return eval_view(x[:n], ds.name), y[:n]  # the window the net is evaluated on (ImageNet)


def curve_table(run_dirs: Iterable[PathLike], *, activations: bool = True):
    """Per run × epoch: losses, test error and ``median_all`` (Fig 2); see the module doc.
    ``activations=False`` reads only ``config.json`` and ``metrics.jsonl`` (a study's
    committed records), ``median_all`` NaN."""
    import pandas as pd

    frames = []
    for run in map(Path, run_dirs):
        rd = RunDir(run)
        metrics = {r["epoch"]: r for r in rd.read_metrics()}
        acts = {r["epoch"]: r for r in rd.read_activation_summary()} if activations else {}
        epochs = sorted(metrics)
        values = {k: [_num(metrics[e].get(k)) for e in epochs]
                  for k in (*_CURVES, "seconds_per_iteration")}  # fmt: skip
        median = [_num(acts[e]["median_all"]) if e in acts else np.nan for e in epochs]
        frame = pd.DataFrame({"epoch": epochs, **values, "median_all": median})
        frames.append(_prepend(frame, rd.identity()))
    return pd.concat(frames, ignore_index=True)


def activation_table(run_dirs: Iterable[PathLike]):
    """Per run × epoch × hidden layer: the activation summary the run recorded."""
    import pandas as pd

    rows: list[dict] = []
    for run in map(Path, run_dirs):
        rd = RunDir(run)
        ident = rd.identity()
        for rec in rd.read_activation_summary():
            for layer, s in rec["layers"].items():
                rows.append({**ident, "epoch": rec["epoch"], "layer": layer,
                             **{k: s[k] for k in ("units", "median", "mean", "frac_negative", "frac_zero")}})  # fmt: skip
    return pd.DataFrame(rows)


def _settings(probe, probe_size, rel_damping, sweep, layers, grad="probe", jackknife=False,
              probe_sizes=None) -> dict:  # fmt: skip
    out = {"probe": probe, "probe_size": probe_size, "rel_damping": rel_damping,
           "sweep": list(sweep or ()), "layers": layers, "version": 2}  # fmt: skip
    # keys of earlier caches stay valid: a setting enters the key only when it is not the default
    if grad != "probe":
        out["grad"] = grad
    if jackknife:
        out["jackknife"] = True
    if probe_sizes:
        out["probe_sizes"] = sorted(int(m) for m in probe_sizes)
    return out


def training_set(run_dir: PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and labels the run trained on (its ``train_split``, ``train_size`` and
    preprocessing: ``training.engine.run_data``)."""
    ds = _dataset(Path(run_dir))
    return eval_view(ds.train_x, ds.name), ds.train_y


#: Config fields that do not change what a checkpoint holds (kept out of the cache key).
_NOT_IN_KEY = ("epochs", "keep_checkpoints")


def _cache_key(run: Path, epoch: int, settings: dict) -> str:
    rd = RunDir(run)
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    # The run's config (unit, data, …; not the device or commit of the last resume, nor the
    # number of epochs to train, which a run resumed in pieces raises each time without
    # touching the checkpoints already written) and the checkpoint's bytes (an epoch-0 net
    # without one is rebuilt from the config).
    config = {k: v for k, v in rd.read_config().items() if k not in _NOT_IN_KEY}
    h.update(json.dumps(config, sort_keys=True).encode())
    if config.get("train_size") is not None or config.get("preprocess", "none") != "none":
        h.update(b"run_data")  # analysed on the run's own data since 2026-12-07 (not before)
    if config.get("dataset") == "imagenet":
        h.update(b"class-mixed")  # its splits' order since 2026-12-07: probes of other images
    st_path = rd.checkpoint_paths(epoch)[0]
    if st_path.is_file():
        h.update(st_path.read_bytes())
    return h.hexdigest()[:16]


def _analyse(job) -> tuple:
    """One (run, epoch): ``(units, sweep, cached, sizes)`` (``None`` for a table not asked
    for), from the cache when it is current."""
    run, epoch, settings, threads = job
    if threads:
        torch.set_num_threads(threads)
    rd = RunDir(run)
    key = _cache_key(run, epoch, settings)
    asked = {"units": True, "sweep": settings["sweep"], "sizes": settings.get("probe_sizes")}
    # a probe other than the held-out one names its entries apart, so that analysing a run on
    # both probes keeps both caches (each replaces only its own stale entries)
    tag = "" if settings["probe"] in ("val", "test") else "_" + settings["probe"].replace("-", "")
    kinds = {f"{k}{tag}" for k in asked}
    paths = {k: rd.analysis_path(f"{k}{tag}-e{epoch:04d}-{key}.csv")
             for k, on in asked.items() if on}  # fmt: skip
    if all(p.is_file() for p in paths.values()):
        try:  # a cache entry that does not match its checksum is recomputed
            got = {k: read_csv(p) for k, p in paths.items()}
            head = rd.identity()  # the run's name now (a run folder may have been renamed)
            got = {k: v.assign(**{c: head[c] for c in head if c in v}) for k, v in got.items()}
            return got["units"], got.get("sweep"), True, got.get("sizes")
        except DataFileError:
            pass
    x, y = probe_set(run, settings["probe_size"], split=settings["probe"])
    grad_data = training_set(run) if settings.get("grad") == "train" else None
    likelihood = "categorical"
    if run_config(run).get("loss") == "bce_logits":  # an autoencoder: its inputs are its targets
        likelihood, y = "bernoulli", x.flatten(1)
        grad_data = None if grad_data is None else (grad_data[0], grad_data[0].flatten(1))
    out = unit_statistics(load_model(run, epoch), x, y, layers=settings["layers"],
                          likelihood=likelihood,
                          rel_damping=settings["rel_damping"],
                          sweep=tuple(settings["sweep"]) or None, grad_data=grad_data,
                          jackknife=settings.get("jackknife", False),
                          probe_sizes=settings.get("probe_sizes"))  # fmt: skip
    out = out if isinstance(out, tuple) else [out]  # units, then sweep and sizes if asked
    head = {**rd.identity(), "epoch": epoch}
    got = {k: _prepend(v, head) for k, v in zip(paths, out, strict=True)}
    rd.check_no_links()  # the cache is never written through a symlinked analysis/
    stale = rd.analysis_dir.glob(f"*-e{epoch:04d}-*.csv") if rd.analysis_dir.is_dir() else []
    for old in stale:  # cache entries of this epoch (of any kind) under another key
        if old.name.split("-")[0] in kinds and key not in old.name:
            remove_table(old)  # and its checksum
    for k, frame in got.items():
        write_csv(frame, paths[k])
    return got["units"], got.get("sweep"), False, got.get("sizes")


def _prepend(frame, head: dict):
    for i, (k, v) in enumerate(head.items()):
        frame.insert(i, k, v)
    return frame


def unit_table(
    run_dirs: Iterable[PathLike],
    *,
    epochs: Sequence[int] | None = None,
    probe_size: int | None = None,
    rel_damping: float = MEASURE_DAMPING,
    sweep: Sequence[float] | None = None,
    sweep_epochs: Sequence[int] | None = None,
    layers: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = False,
    stats: dict | None = None,
    grad: str = "probe",
    jackknife: bool = False,
    probe_sizes: Sequence[int] | None = None,
    size_runs: Iterable[PathLike] | None = None,
    probe_split: str | None = None,
):
    r"""Per run × epoch × layer × unit: the unit statistics from the runs' checkpoints.

    Args:
        run_dirs: run directories.
        epochs: which epochs (default: every checkpoint, plus 0); a missing checkpoint raises
            :class:`~natgrad.errors.CheckpointError` naming the run.
        probe_size: the first ``probe_size`` held-out inputs (default: all of them) of the
            validation split, or of the test split where there is none.
        rel_damping: λ of F_λ for every unit (:data:`~natgrad.analysis.unitstats.MEASURE_DAMPING`).
        sweep: relative dampings of the damping sweep, computed at ``sweep_epochs``
            (default: the last epoch of each run).
        layers: layer names (default all Linear/Conv2d layers).
        workers: parallel processes (the CPUs shared out between them,
            :func:`~natgrad.training.plan.per_worker_threads`); 1 computes in this process.
        progress: show a tqdm bar over (run, epoch).
        stats: if a dict, receives ``{"computed": n, "cached": n}``.
        grad: ``"probe"``: g is the probe's mean loss gradient; ``"train"``: the training
            set's, the direction plain SGD follows in expectation (free of the probe's
            sampling noise; the Fisher still comes from the probe).
        jackknife: add the jackknifed efficiencies ``rho_<direction>_jk``
            (:func:`~natgrad.analysis.unitstats.unit_statistics`).
        probe_sizes, size_runs: the probe-size sweep at these nested sizes for the runs in
            ``size_runs`` (default: every run), at the last analysed epoch, from the same
            pass (:func:`~natgrad.analysis.unitstats.probe_size_sweep`).
        probe_split: where the probe comes from (:func:`probe_set`): default the held-out
            split (:func:`held_out_split`); ``"train-all"`` the inputs the run trained on.

    Returns:
        ``units`` (a DataFrame), or ``(units, sweep)`` when ``sweep`` is given; with
        ``probe_sizes`` the size-sweep table is appended last.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if grad not in ("probe", "train"):
        raise InputError(f"unit_table: grad={grad!r}; choose 'probe' or 'train'")
    jobs = []
    size_set = {Path(r).resolve() for r in size_runs} if size_runs is not None else None
    for run in map(Path, run_dirs):
        have = checkpoint_epochs(run)
        chosen = have if epochs is None else list(epochs)
        missing = sorted(set(chosen) - set(have))
        if missing:
            raise CheckpointError(
                f"{run}: no checkpoint for epochs {missing}; it has {have} "
                "(set checkpoint_every so the epochs you ask for are written)"
            )
        last = max(chosen)
        probe = held_out_split(run) if probe_split is None else probe_split
        sized = probe_sizes and (size_runs is None or run.resolve() in size_set)
        for e in chosen:
            at = (e == last) if sweep_epochs is None else (e in sweep_epochs)
            settings = _settings(probe, probe_size, rel_damping, sweep if (sweep and at) else None,
                                 None if layers is None else list(layers), grad, jackknife,
                                 probe_sizes if (sized and e == last) else None)  # fmt: skip
            jobs.append((run, e, settings))
    pooled = workers > 1 and len(jobs) > 1  # else every job runs here, threads left as they are
    threads = per_worker_threads(min(workers, len(jobs))) if pooled else 0
    jobs = [(*job, threads) for job in jobs]
    with ExitStack() as stack:
        done = map(_analyse, jobs)
        if pooled:
            ctx = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=ctx))
            done = pool.map(_analyse, jobs)
        bar = dict(total=len(jobs), disable=not progress, desc="unit Fishers", unit="ckpt")
        results = list(tqdm(done, **bar))
    if stats is not None:
        stats["cached"] = sum(r[2] for r in results)
        stats["computed"] = len(results) - stats["cached"]

    def joined(i: int):  # the sweep or size-sweep tables of the (run, epoch)s that have one
        parts = [r[i] for r in results if r[i] is not None]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    out = [pd.concat([r[0] for r in results], ignore_index=True)]
    out += [joined(1)] if sweep else []
    out += [joined(3)] if probe_sizes else []
    return out[0] if len(out) == 1 else tuple(out)
