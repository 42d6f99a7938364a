r"""From run directories to the tables of a study (CSV), summarised with seeds as replicates.

:func:`write_tables` writes the tables of :data:`TABLES` and ``context.json`` (how they were
made: command, device, damping, threshold, …; strict JSON, so that a report rebuilt from them
keeps its header) into one folder; what each table holds: ``docs/bias_shift_report.md``.
The folder is replaced whole (:func:`save_tables`) and each CSV carries a checksum file
``<name>.csv.sha256`` that :func:`read_tables` checks, so a cut or edited table is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from natgrad._atomic import dumps_json, write_json
from natgrad.analysis import metrics as mt
from natgrad.analysis import stats
from natgrad.analysis.csvtables import read_csv, staged, write_csv
from natgrad.analysis.unitstats import JACKKNIFED, SWEEP
from natgrad.damping import MEASURE_DAMPING

__all__ = ["COMPARED", "UNIT_METRICS", "read_csv", "read_tables", "resummarise", "save_tables",
           "write_csv", "one_run_per_replicate", "write_tables", "NOT_THE_ARM", "TABLE_SETTINGS"]  # fmt: skip

#: Unit-level metrics summarised per seed.
UNIT_METRICS = [
    "rho_plain", "rho_centred", "rho_quasidiagonal", "rho_diagonal", "rho_blockdiag",
    "coupling_cost", "shift_error_plain", "shift_error_blockdiag", "n_eff", "cond",
    "mean_q_norm", "s_c", "k", "corrected_mean_norm",
]  # fmt: skip

#: Metrics compared between unit types (paired by seed) in ``comparison.csv``.
COMPARED = [
    "rho_plain", "rho_centred", "rho_quasidiagonal", "rho_blockdiag", "shift_error_plain",
    "abs_median_activation", "train_loss_auc", "log_train_loss_auc", "epochs_to_loss",
    "median_activation_var", "test_error", "test_error_at_best_val",
]  # fmt: skip

#: The columns of the jackknifed efficiencies (unit tables made with ``jackknife=True``).
JK_COLUMNS = [f"rho_{k}_jk" for k in JACKKNIFED]

TABLES = ("units", "sweep", "curves", "activations", "seeds", "seed_epochs", "sweep_seeds",
          "summary", "comparison", "endpoints", "probe_sizes", "sizes", "neff_adjusted")  # fmt: skip


def headline_rho(units) -> str:
    """The ρ(plain) column a study reports: the jackknifed one where the tables have it."""
    return "rho_plain_jk" if "rho_plain_jk" in units.columns else "rho_plain"


def save_tables(frames: dict, out_dir: str | os.PathLike, context: dict | None = None) -> dict:
    r"""Write ``{name: DataFrame}`` as ``<out_dir>/<name>.csv`` (each with its checksum
    file) and ``context`` as ``context.json``, in one atomic step
    (:func:`natgrad.analysis.csvtables.staged`). Returns ``{name: path}``."""
    out = Path(out_dir)
    with staged(out) as stage:
        for name, frame in frames.items():
            write_csv(frame, stage / f"{name}.csv")
        if context is not None:
            write_json(stage / "context.json", context)
    paths = {name: out / f"{name}.csv" for name in frames}
    if context is not None:
        paths["context"] = out / "context.json"
    return paths


def summary_metrics(unit_metrics: list[str]) -> list[str]:
    """The columns of ``summary.csv``: the per-unit medians, the dead and estimable shares,
    n_eff/(d+1) and the paper's claims per run."""
    return [
        *unit_metrics,
        "dead",
        "estimable",
        "n_eff_over_d1",
        *(m.name for m in mt.paper_claims()),
    ]


def summarise(units, sweep, curves, *, reference: str = "elu", last: int = 3, sizes=None,
              endpoints=None) -> dict:  # fmt: skip
    """The summary tables (DataFrames) from the unit, sweep and curve tables (and the
    probe-size sweep and declared endpoints, where given)."""
    import pandas as pd

    from natgrad.analysis.endpoints import evaluate

    last_epoch = int(units["epoch"].max())
    jk = [m for m in JK_COLUMNS if m in units.columns]
    unit_metrics = UNIT_METRICS + jk
    seed_epochs = stats.seed_values(units, unit_metrics)
    per_seed = seed_epochs[seed_epochs["epoch"] == last_epoch].drop(columns="epoch")
    claims, threshold = stats.claims_per_seed(curves, last=last)
    seeds = per_seed.merge(claims.drop(columns="run"), on=["unit_type", "seed"], how="outer")
    summary = stats.group_summary(seeds, summary_metrics(unit_metrics))
    compared = jk + COMPARED + ["n_eff_over_d1"]
    comparison = pd.concat(
        [stats.paired_comparison(seeds, m, reference=reference) for m in compared],
        ignore_index=True,
    )
    at_last = units[units["epoch"] == last_epoch]
    neff_adj = pd.concat([stats.neff_adjusted(at_last, m, reference=reference)
                          for m in ("rho_plain", *jk[:1])], ignore_index=True)  # fmt: skip
    size_seeds = pd.DataFrame()
    if sizes is not None and len(sizes):
        cols = [c for c in sizes.columns if c.startswith("rho_")]
        size_seeds = stats.seed_values(sizes, cols, by=("unit_type", "seed", "epoch", "probe_size"))
    ep_table = evaluate(seeds, list(endpoints)) if endpoints else pd.DataFrame()
    sweep_seeds = pd.DataFrame()
    if sweep is not None and len(sweep):
        cols = [c for c in sweep.columns if c.startswith("rho_")]
        by = ["unit_type", "seed", "rel_damping"]
        sweep_seeds = stats.analysed_units(sweep).groupby(by)[cols].median().reset_index()
    return {"seeds": seeds, "seed_epochs": seed_epochs, "summary": summary,
            "comparison": comparison, "sweep_seeds": sweep_seeds, "neff_adjusted": neff_adj,
            "probe_sizes": size_seeds, "endpoints": ep_table,
            "threshold": threshold, "last_epoch": last_epoch}  # fmt: skip


def resummarise(tables_dir: str | os.PathLike, *, last: int = 3) -> dict:
    r"""Recompute the seed-level tables (seeds, seed_epochs, summary, comparison,
    sweep_seeds) of ``tables_dir`` from its unit, sweep and curve tables, without touching
    a checkpoint; the other tables and ``context.json`` (its threshold updated) are kept.
    For summaries made by an older natgrad. Returns ``{name: path}``."""
    t = read_tables(tables_dir)
    summ = summarise(t["units"], t.get("sweep"), t["curves"], last=last, sizes=t.get("sizes"))
    frames = {k: v for k, v in t.items() if k != "context"}
    frames.update({k: summ[k] for k in ("seeds", "seed_epochs", "summary", "comparison")})
    # the declared endpoints are kept as they are
    frames.update({k: summ[k] for k in ("neff_adjusted", "probe_sizes") if len(summ[k])})
    if "sweep" in t:
        frames["sweep_seeds"] = summ["sweep_seeds"]
    ctx = dict(t["context"])
    ctx["loss threshold (epochs_to_loss)"] = float(f"{summ['threshold']:.4g}")
    ctx["test error"] = f"mean of the last {last} epochs"
    return save_tables(frames, tables_dir, ctx)


#: Config fields in which seeds of one arm may differ (what they record or where, not what
#: they train); every other field is shared by the runs of one unit type.
NOT_THE_ARM = ("seed", "epochs", "data_dir", "notes", "probe_size", "record_every",
               "checkpoint_every", "checkpoint_epochs", "keep_checkpoints", "eval_batch_size")  # fmt: skip

#: Settings every run of a table shares, whatever its unit type: the net and data compared.
TABLE_SETTINGS = ("net", "dataset", "width", "depth", "channel_scale", "train_size",
                  "train_split", "loss")  # fmt: skip


def one_run_per_replicate(run_dirs, last_epoch: int | None = None) -> None:
    r"""Refuse runs that the tables would pool or pair wrongly. The tables group runs by unit
    type, seeds are the replicates and the claims come from each run's curves, so:

    - two runs with the same unit type and seed (e.g. ``natgrad compare``'s ReLU+SGD and
      ReLU+unit-NG, or one Fig 3 net at two rates) must be tabled apart;
    - every run must share :data:`TABLE_SETTINGS` (the net and data compared), and the runs
      of one unit type every config field but :data:`NOT_THE_ARM` (a run at another rate or
      schedule is another arm, not a replicate);
    - every run must have trained the same epochs, up to ``last_epoch`` where the tables stop
      there (a training-loss AUC or a last epoch over other spans compares nothing; a
      diverged or unfinished run is named as such; what happened past ``last_epoch`` is not
      read).

    The errors name the runs and the settings in which they differ."""
    from natgrad.errors import InputError
    from natgrad.training.rundir import RunDir

    seen: dict = {}
    first_of_type: dict = {}
    trained: dict = {}
    for run in run_dirs:
        rd = RunDir(run)
        ident, cfg = rd.identity(), rd.read_config()
        key = (ident["unit_type"], ident["seed"])
        if key in seen:
            first = seen[key]
            a = RunDir(first).read_config()
            differ = [k for k in dict.fromkeys([*a, *cfg]) if k not in NOT_THE_ARM
                      and a.get(k) != cfg.get(k)] or ["(no setting: the same run twice?)"]  # fmt: skip
            raise InputError(f"{first} and {run} are both {key[0]} seed {key[1]}, and would be "
                             f"pooled as one replicate; they differ in {', '.join(differ)}. "
                             "Table the runs of one setting together, e.g. natgrad tables "
                             f"{Path(first).parent}/{Path(first).name.rsplit('-s', 1)[0]}-s* "
                             "… (run directories may be named one by one).")  # fmt: skip
        seen[key] = run
        base, base_cfg = first_of_type.setdefault(None, (run, cfg))
        differ = [k for k in TABLE_SETTINGS if base_cfg.get(k) != cfg.get(k)]
        if differ:
            raise InputError(
                f"{base} and {run} differ in {', '.join(differ)} "
                f"({', '.join(f'{k}: {base_cfg.get(k)!r} vs {cfg.get(k)!r}' for k in differ)}): "
                "the tables compare unit types on one net and data set. Table them apart."
            )
        other, other_cfg = first_of_type.setdefault(ident["unit_type"], (run, cfg))
        differ = [k for k in sorted(set(cfg) | set(other_cfg))
                  if k not in NOT_THE_ARM and other_cfg.get(k) != cfg.get(k)]  # fmt: skip
        if differ:
            raise InputError(
                f"{other} and {run} are both {ident['unit_type']} runs, pooled over seeds as "
                f"replicates of one arm, but differ in {', '.join(differ)} "
                f"({', '.join(f'{k}: {other_cfg.get(k)!r} vs {cfg.get(k)!r}' for k in differ)}). "
                "Table the runs of one setting together."
            )
        epochs = [r["epoch"] for r in rd.read_metrics()]
        trained[run] = max(epochs, default=0)
        cut = last_epoch is not None and trained[run] >= last_epoch
        if cut:
            trained[run] = last_epoch  # its records past the study's length are not read
        if rd.diverged_path.is_file() and not cut:
            trained[run] = f"{trained[run]} (diverged)"
    if len(set(trained.values())) > 1:
        spans: dict = {}
        for run, e in trained.items():
            spans.setdefault(e, []).append(Path(run).name)
        listed = "; ".join(f"{e} epochs: {', '.join(names[:4])}{' …' if len(names) > 4 else ''}"
                           for e, names in spans.items())  # fmt: skip
        raise InputError(
            f"the runs trained different spans ({listed}): their claims (training-loss AUC, "
            "epochs to loss, test error) and units at the last epoch would compare unequal "
            "spans. Table runs of one length: resume the shorter ones to the same epochs "
            "(natgrad train … --epochs N), or leave out the diverged or unfinished ones."
        )


def write_tables(run_dirs, out_dir: str | os.PathLike, *, epochs=None, probe_size=None,
                 rel_damping: float = MEASURE_DAMPING, sweep=SWEEP, layers=None, workers: int = 1,
                 progress: bool = False, context: dict | None = None, last: int = 3,
                 grad: str = "probe", jackknife: bool = False, probe_sizes=None, size_runs=None,
                 endpoints=None, probe_split: str | None = None,
                 last_epoch: int | None = None) -> dict[str, Path]:  # fmt: skip
    r"""Build every table from ``run_dirs`` and write them (see the module docstring) into
    ``out_dir``. ``epochs`` are the checkpoints whose units are analysed; the curves and the
    claims from them (training-loss AUC, epochs to loss, test error) cover every trained
    epoch up to ``last_epoch`` (a study's declared length: a run trained further by an
    earlier, longer call is read only that far; ``None``: all). ``context`` (command, device, …) is stored in ``context.json`` together with
    the settings. ``grad``, ``jackknife``, ``probe_sizes``, ``size_runs`` and ``probe_split`` are those of
    :func:`~natgrad.analysis.runs.unit_table`; ``endpoints`` the study's declared
    :class:`~natgrad.analysis.endpoints.Endpoint` list. Returns ``{name: path}``."""
    from natgrad.analysis.runs import (
        activation_table,
        curve_table,
        held_out_split,
        hidden_layers,
        probe_set,
        unit_table,
    )
    from natgrad.errors import InputError

    run_dirs = [Path(r) for r in run_dirs]
    one_run_per_replicate(run_dirs, last_epoch)  # before minutes of unit Fishers
    if last_epoch is not None and epochs is not None and max(epochs, default=0) > last_epoch:
        raise InputError(f"epochs {list(epochs)}: a checkpoint past last_epoch={last_epoch}, "
                         "where these tables stop; analyse checkpoints up to it")  # fmt: skip
    if layers is not None and run_dirs and not set(layers) & set(fed := hidden_layers(run_dirs[0])):
        raise InputError(f"layers {list(layers)}: none is fed by hidden units, and the summaries "
                         "are over those (the first layer's inputs are the data, the same for "
                         f"every unit type), so every summary would be empty; add one of {fed}")  # fmt: skip
    out = Path(out_dir)
    counts: dict = {}
    res = unit_table(run_dirs, epochs=epochs, probe_size=probe_size, rel_damping=rel_damping,
                     sweep=sweep or None, layers=layers, workers=workers, progress=progress,
                     stats=counts, grad=grad, jackknife=jackknife, probe_sizes=probe_sizes,
                     size_runs=size_runs, probe_split=probe_split)  # fmt: skip
    res = list(res) if isinstance(res, tuple) else [res]
    units = res.pop(0)
    sw = res.pop(0) if sweep else None
    sizes = res.pop(0) if probe_sizes else None
    curves = curve_table(run_dirs)  # every trained epoch: ``epochs`` picks the analysed ones
    acts = activation_table(run_dirs)
    if last_epoch is not None:
        curves = curves[curves["epoch"] <= last_epoch].reset_index(drop=True)
        acts = acts[acts["epoch"] <= last_epoch].reset_index(drop=True) if len(acts) else acts
    summ = summarise(units, sw, curves, last=last, sizes=sizes, endpoints=endpoints)
    frames = {"units": units, "curves": curves, "activations": acts}
    frames.update({k: summ[k] for k in ("seeds", "seed_epochs", "summary", "comparison")})
    frames.update(
        {k: summ[k] for k in ("neff_adjusted", "probe_sizes", "endpoints") if len(summ[k])}
    )
    if sizes is not None and len(sizes):
        frames["sizes"] = sizes
    if sw is not None:
        frames["sweep"] = sw
        frames["sweep_seeds"] = summ["sweep_seeds"]
    ctx = dict(context or {})
    split = probe_split or (held_out_split(run_dirs[0]) if run_dirs else "test")
    where = ("the inputs the runs trained on" if split == "train-all" else
             f"held-out inputs of the {split} split")  # fmt: skip
    size = "all" if probe_size is None else probe_size
    if run_dirs and probe_size is not None:  # a size beyond the split takes all of it: say so
        used = int(probe_set(run_dirs[0], probe_size, split=split)[1].shape[0])
        size = size if used == probe_size else f"all {used}; {probe_size} were asked for"
    ctx.update({
        "relative damping λ": rel_damping,
        "damping sweep": list(sweep or ()),
        "probe": f"{where} ({size})",
        "g (the gradient judged)": "the training set's mean loss gradient" if grad == "train"
                                   else "the probe's mean loss gradient",
        "ρ estimate": "jackknifed (2ρ(probe) − mean ρ(halves))" if jackknife else "plain",
        "analysed epochs": sorted(int(e) for e in units["epoch"].unique()),
        **({"curves read to epoch": last_epoch} if last_epoch is not None else {}),
        "loss threshold (epochs_to_loss)": float(f"{summ['threshold']:.4g}"),
        "test error": f"mean of the last {last} epochs",
        "unit tables": f"{counts.get('computed', 0)} computed, {counts.get('cached', 0)} reused",
    })  # fmt: skip
    return save_tables(frames, out, {k: _jsonable(v) for k, v in ctx.items()})


def _jsonable(value):
    """``value`` if strict JSON can hold it (non-finite numbers become null), else its text."""
    try:
        dumps_json(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def read_tables(tables_dir: str | os.PathLike) -> dict:
    """``{name: DataFrame}`` of the tables in ``tables_dir`` (missing ones skipped) and
    ``"context"``: the dict of ``context.json`` (empty if absent)."""
    from natgrad.errors import DataFileError

    folder = Path(tables_dir)
    out: dict = {}
    for name in TABLES:
        path = folder / f"{name}.csv"
        if path.is_file():
            out[name] = read_csv(path)
    if "units" not in out and "summary" not in out:
        raise DataFileError(f"{folder}: no natgrad tables (summary.csv, units.csv) in it")
    ctx = folder / "context.json"
    out["context"] = json.loads(ctx.read_text()) if ctx.is_file() else {}
    return out
