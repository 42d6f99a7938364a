r"""Study (issue 23, part 1): the paper's Fig 3 autoencoder on MNIST, declared before its runs.

    python analysis/fig3_autoencoder.py --lr 0.01 --seeds 0:1 [--runs runs/fig3]
    python analysis/fig3_autoencoder.py --lr 0.001 --seeds 0:1 ...      # one piece: a seed
    python analysis/fig3_autoencoder.py --analyse [--lr 0.01] [--seeds 0:3] --runs ... # the unit analysis
    python analysis/fig3_autoencoder.py --record paper_figures/results/fig3_autoencoder_mnist
    python analysis/fig3_autoencoder.py --restore paper_figures/results/fig3_autoencoder_mnist
    # the declared extension: copies of the 1e-5 runs (natgrad.training.carry.copy_runs,
    # resume=True) in their own folder, resumed to 50 epochs, analysed and recorded apart
    python analysis/fig3_autoencoder.py --lr 1e-05 --epochs 50 --seeds 0:3 --runs R_EXT
    python analysis/fig3_autoencoder.py --analyse --runs R_EXT --record \
        paper_figures/results/fig3_autoencoder_mnist_lr1e-5_e50
    # the same for lr 1e-4 over seeds 0-9: copy_runs(R_10 / "lr0.0001", R_EXT4 / "lr0.0001",
    # resume=True) (checkpoints, not the epoch-25 analysis tables), then a seed a piece
    python analysis/fig3_autoencoder.py --lr 1e-04 --epochs 50 --seeds 0:1 --runs R_EXT4
    python analysis/fig3_autoencoder.py --analyse --runs R_EXT4 --record \
        paper_figures/results/fig3_autoencoder_mnist_lr1e-4_e50
    # the declared seed extension: seeds 5-9 of every rate beside seeds 0-4, one piece each,
    # then the unit analysis of seeds 5-9 and the record over seeds 0-9
    python analysis/fig3_autoencoder.py --lr 0.01 --seeds 5:1 --runs R_10
    python analysis/fig3_autoencoder.py --analyse --seeds 5:5 --runs R_10
    python analysis/fig3_autoencoder.py --runs R_10 --record \
        paper_figures/results/fig3_autoencoder_mnist_10seeds

A piece is the three unit types of one seed at one rate, trained as one grid (about 10 min on
one core for 25 epochs); ``--record`` copies the finished runs' small records (config,
metrics, the unit analysis) into the results folder, ``--restore`` brings them back into a
runs folder in a later session (a finished run is read, not trained again), and the report
is written once every declared run has finished.

The declaration (net, data, loss, rates, seeds, endpoints, the unit analysis) is
:mod:`natgrad.studies.fig3`, committed before any run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from natgrad.analysis.endpoints import evaluate
from natgrad.analysis.stats import (
    ci_changes,
    ci_sign,
    current_mean_ci,
    mean_ci_method,
    mean_ci_name,
)
from natgrad.argtypes import seed_range
from natgrad.studies.fig3 import (  # noqa: F401 (the declaration, re-exported)
    ANALYSED,
    AT_EPOCHS,
    ESTIMABLE_ENDPOINTS,
    ESTIMABLE_MEASURES,
    ESTIMABLE_RESULTS,
    EXTENDED_SEEDS,
    EXTENSIONS,
    GRAD_IMAGES,
    MIN_EPOCHS,
    PROBE,
    RATES,
    RESULTS,
    SEEDS,
    UNIT_ENDPOINTS,
    UNIT_MEASURES,
    UNIT_ROWS,
    UNITS,
    endpoints,
    study,
)
from natgrad.training.carry import copy_runs, finished

KEPT = (RESULTS, ESTIMABLE_RESULTS)  # the analysis tables a record keeps of each run


def train(root: Path, lr: float, epochs: int, *, seeds=range(SEEDS), train_size=None) -> float:
    t0 = time.perf_counter()
    diverged = study(lr, epochs, seeds=seeds, train_size=train_size).train(
        root / f"lr{lr:g}", say=print
    )
    if diverged:  # recorded in the run (diverged.json), not retried; the report names them
        print(f"lr {lr:g}: diverged {sorted(diverged)}")
    return time.perf_counter() - t0


def comparisons(curves, epochs: int):
    """Per rate, the declared endpoints (:func:`natgrad.studies.fig3.endpoints`) on each run's
    AUCs over epochs 1..E and its losses at :data:`AT_EPOCHS` (≤ E) and E."""
    import pandas as pd

    from natgrad.analysis.stats import loss_auc

    per_run = []
    runs = curves.sort_values(["lr", "epoch"]).groupby(["lr", "unit_type", "seed"])
    for (lr, unit, seed), g in runs:
        trained = g[(g["epoch"] >= 1) & (g["epoch"] <= epochs)]
        row = {"lr": lr, "unit_type": unit, "seed": seed,
               "train_loss_auc": loss_auc(trained["train_loss"]),
               "log_train_loss_auc": loss_auc(trained["train_loss"], log=True),
               "test_loss_last": float(trained["test_loss"].iloc[-1])}  # fmt: skip
        for e in (e for e in AT_EPOCHS if e <= epochs):
            at = g[g["epoch"] == e]
            row.update({f"train_loss_e{e}": float(at["train_loss"].iloc[0]),
                        f"val_loss_e{e}": float(at["val_loss"].iloc[0])})  # fmt: skip
        per_run.append(row)
    return evaluate(pd.DataFrame(per_run), endpoints(epochs), by="lr")


def _unit_rows(run: Path):
    r"""The declared unit analysis's per-unit table of one finished run's last checkpoint
    (:func:`~natgrad.analysis.unitstats.unit_statistics`, with the run's epoch, the probe size
    and the pass's seconds), cached as ``analysis/`` :data:`UNIT_ROWS` in its run directory."""
    import pandas as pd

    from natgrad.analysis.csvtables import read_csv, write_csv
    from natgrad.analysis.runs import load_model, probe_set, training_set
    from natgrad.analysis.unitstats import unit_statistics
    from natgrad.damping import MEASURE_DAMPING
    from natgrad.training.rundir import RunDir

    rd = RunDir(run)
    cached = rd.analysis_path(UNIT_ROWS)
    epoch = rd.latest_epoch()
    if _cached_at(cached, epoch):
        return read_csv(cached)
    model = load_model(run, epoch).double().eval()
    x, _ = probe_set(run, PROBE)
    gx, _ = training_set(run)
    gx = gx[:GRAD_IMAGES].double()
    x = x.double()
    t0 = time.perf_counter()
    units = unit_statistics(model, x, x.flatten(1), layers=list(ANALYSED),
                            rel_damping=MEASURE_DAMPING, likelihood="bernoulli",
                            grad_data=(gx, gx.flatten(1)), jackknife=True)  # fmt: skip
    ident = rd.identity()
    units = pd.DataFrame(units).assign(
        unit_type=ident["unit_type"], seed=int(ident["seed"]), epoch=epoch, probe=len(x),
        rel_damping=MEASURE_DAMPING, seconds=time.perf_counter() - t0,
    )  # fmt: skip
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_csv(units, cached)
    return units


def _layer_rows(units, estimable_only: bool) -> list[dict]:
    r"""Per layer, the declared medians of one run's per-unit table: over live units (ρ, the
    bias-shift error) and estimable units (|k|, ‖E_q(a)‖), or, ``estimable_only``, the
    estimable-only re-analysis's :data:`ESTIMABLE_MEASURES` over estimable units."""
    import numpy as np

    rows = []
    for layer, g in units.groupby("layer", sort=False):
        live, est = g[g["dead"] == 0], g[(g["dead"] == 0) & (g["estimable"] == 1)]
        first = g.iloc[0]
        row = dict(unit_type=first["unit_type"], seed=int(first["seed"]),
                   epoch=int(first["epoch"]), layer=layer, units=len(g), live=len(live))  # fmt: skip
        if estimable_only:
            row.update(estimable_units=len(est), **{m: float(est[m].median()) if len(est)
                                                    else float("nan")
                                                    for m in ESTIMABLE_MEASURES})  # fmt: skip
        else:
            row.update(
                fan_in=int(first["fan_in"]),
                n_eff_over_d1=float(np.median(live["n_eff"] / (live["fan_in"] + 1))),
                estimable=float(len(est) / max(len(live), 1)),
                rho_plain_jk=float(live["rho_plain_jk"].median()),
                rho_plain=float(live["rho_plain"].median()),
                shift_error_plain=float(live["shift_error_plain"].median()),
                abs_k=float(est["k"].abs().median()) if len(est) else float("nan"),
                mean_q_norm=float(est["mean_q_norm"].median()) if len(est) else float("nan"),
            )  # fmt: skip
        rows.append(dict(row, rel_damping=float(first["rel_damping"]), probe=int(first["probe"]),
                         seconds=float(first["seconds"])))  # fmt: skip
    return rows


def _cached_at(path: Path, epoch: int | None) -> bool:
    """Whether the cached table ``path`` exists and is of checkpoint ``epoch`` (a run
    extended since, e.g. 25 → 50 epochs, has its last checkpoint analysed again)."""
    from natgrad.analysis.csvtables import read_csv

    if not path.is_file():
        return False
    epochs = set(read_csv(path)["epoch"].astype(int))
    return epochs == {epoch}


def analyse_run(run: Path) -> Path:
    r"""The declared unit analysis of one finished run's last checkpoint (module docstring),
    cached as ``analysis/fig3-units.csv`` in its run directory (one row per analysed layer),
    and the estimable-only re-analysis's ``analysis/fig3-units-estimable.csv``: each written
    once from :func:`_unit_rows`."""
    import pandas as pd

    from natgrad.analysis.csvtables import write_csv
    from natgrad.training.rundir import RunDir

    rd = RunDir(run)
    epoch = rd.latest_epoch()
    missing = [(rd.analysis_path(name), only) for name, only in
               ((RESULTS, False), (ESTIMABLE_RESULTS, True))
               if not _cached_at(rd.analysis_path(name), epoch)]  # fmt: skip
    if missing:
        units = _unit_rows(run)
        for path, estimable_only in missing:
            write_csv(pd.DataFrame(_layer_rows(units, estimable_only)), path)
    return rd.analysis_path(RESULTS)


def _finished(root: Path):
    """``(lr, run directory)`` of every finished run under ``root`` (folders ``lr<rate>``)."""
    from natgrad.training.rundir import RunDir

    for folder in sorted(root.glob("lr*")):
        for cfg in sorted(folder.glob("*/config.json")):
            if finished(cfg.parent) and not RunDir(cfg.parent).diverged_path.is_file():
                yield float(folder.name[2:]), cfg.parent


def _diverged(root: Path) -> list[Path]:
    from natgrad.training.rundir import RunDir

    return [p.parent for p in sorted(root.glob("lr*/*/config.json"))
            if RunDir(p.parent).diverged_path.is_file()]  # fmt: skip


def unit_comparisons(units):
    """Per rate and layer, the declared unit-analysis endpoints
    (:data:`~natgrad.studies.fig3.UNIT_ENDPOINTS`: ELU − ReLU and ELU − LReLU on
    :data:`UNIT_MEASURES`, paired by seed, one Holm family)."""

    return evaluate(units, list(UNIT_ENDPOINTS), by=["lr", "layer"])


def figure(curves):
    r"""Fig 3's layout: one panel per rate, training (solid) and validation (dotted)
    reconstruction error per epoch, mean ± sd over seeds."""

    from natgrad.analysis.plots import file_subplots, plot_curves

    rates = sorted(curves["lr"].unique(), reverse=True)
    fig, axes = file_subplots(1, len(rates), figsize=(4.2 * len(rates), 3.4), squeeze=False)
    for ax, lr in zip(axes[0], rates, strict=True):
        c = curves[(curves["lr"] == lr) & (curves["epoch"] >= 1)]
        plot_curves(c, "train_loss", ax=ax, label_suffix=" train", log=True)
        plot_curves(c, "val_loss", ax=ax, style=":", label_suffix=" validation", log=True,
                    ylabel="BCE per pixel (geom. mean ×/÷ sd)", title=f"lr {lr:g}")  # fmt: skip
        ax.legend(frameon=False, fontsize="x-small")
    fig.tight_layout()
    return fig


#: How the unit analysis's CIs are read: (measure, what, reading when ELU − other > 0, < 0).
UNIT_READING = (
    ("rho_plain_jk", "ρ(plain) (the plain gradient's Fisher efficiency)",
     "closer to the unit natural gradient", "farther from it"),
    ("shift_error_plain", "bias-shift error of the plain step (Theorem 2)", "larger", "smaller"),
    ("abs_k", "|k| (Theorem 2's correction of the incoming mean)", "larger", "smaller"),
    ("mean_q_norm", "‖E_q(a)‖ (the incoming mean the unit Fisher sees)", "larger", "smaller"),
)  # fmt: skip


def _crossings(curves, epochs: int) -> list[str]:
    """Where the nets start (epoch 0: the same weights at every rate) and, per rate, the first
    epoch at which ELU's mean validation error is below each other unit type's and how far
    each unit type's fell from epoch 0 to epoch ``epochs`` (means over seeds, ``stats.mean_ci``)."""
    from natgrad.analysis.stats import mean_ci
    from natgrad.units import unit_type_label

    def name(u):
        return unit_type_label(u, tex=False)

    def per_seed(values) -> str:  # "unit mean [lo, hi]" over the seeds, per unit type
        parts = []
        for u in (u for u in UNITS if u in values.index.get_level_values(0)):
            v = values.loc[u].to_numpy()
            lo, hi, _ = mean_ci(v)
            parts.append(f"{name(u)} {v.mean():.4f} [{lo:.4f}, {hi:.4f}]")
        return ", ".join(parts)

    val = curves.pivot_table(index=["unit_type", "seed"], columns=["lr", "epoch"],
                             values="val_loss", aggfunc="first")  # fmt: skip
    start = val.xs(0, axis=1, level="epoch").iloc[:, 0]  # the same at every rate
    lines = ["- The initial nets (epoch 0, the same weights at every rate), validation error, "
             "mean over seeds [95 % CI]: " + per_seed(start) + "."]  # fmt: skip
    for lr, sub in curves.groupby("lr"):
        means = sub[sub["epoch"] >= 1].groupby(["epoch", "unit_type"])["val_loss"].mean().unstack()
        when = []
        for other in (u for u in UNITS[1:] if u in means):
            below = means.index[means["elu"] < means[other]]
            when.append(f"{name(other)}'s first at epoch {below[0]}" if len(below)
                        else f"{name(other)}'s at no epoch up to {epochs}")  # fmt: skip
        fell = (val[(lr, 0)] - val[(lr, epochs)]).dropna()
        lines.append(f"- lr {lr:g}: ELU's mean validation error falls below " + "; below "
                     .join(when) + f". From epoch 0 to {epochs} the validation error fell by "
                     "(mean over seeds [95 % CI]): " + per_seed(fell) + " (descriptive, not an "
                     "endpoint).")  # fmt: skip
    return lines


def _extension_text(lr: float) -> str:
    ext = EXTENSIONS[lr]
    return (f"**Extension (declared in `natgrad/studies/fig3.py` before its runs):** at lr "
            f"{lr:g} {ext.why}, so the {len(UNITS) * len(ext.seeds)} runs of that rate (seeds "
            f"{ext.seeds[0]}–{ext.seeds[-1]}) were copied with their epoch-{MIN_EPOCHS} "
            f"checkpoints and resumed to epoch {ext.epochs} (epochs 1–{MIN_EPOCHS} are the same "
            f"runs as in `{ext.source}`, trained at that record's commits; the runs' commit "
            "above is the resume's; the shorter record and its primary endpoints stand as they "
            "are). Every comparison here is secondary: one Holm family, `extension`; the unit "
            f"analysis is on the epoch-{ext.epochs} checkpoints, in its own family."
            + (f" {ext.caveat}" if ext.caveat else ""))  # fmt: skip


def _seed_extension_text(seeds: list[int]) -> str:
    return (f"**Seed extension (declared in `natgrad/studies/fig3.py` before its runs):** with "
            f"{SEEDS} seeds the declared sign-flip test cannot resolve a primary endpoint "
            f"(its smallest p is {2 / 2**SEEDS:g}; Holm over the primary family makes it "
            f"{min(1.0, len(UNITS[1:]) * len(RATES) * 2 / 2**SEEDS):g}), so seeds {EXTENDED_SEEDS[0]}–{EXTENDED_SEEDS[-1]} "
            "of every rate were trained with the same protocol, beside the runs of seeds "
            f"0–{SEEDS - 1} (the same runs as in `fig3_autoencoder_mnist`, at that record's "
            f"commits). Every table here is over seeds {seeds[0]}–{seeds[-1]}; the primary "
            "family is read from its Holm p and its t CI together. The 5-seed record stands "
            "as it is.")  # fmt: skip


def _majority(closer: int, farther: int, total: int) -> int:
    """+1 where ELU's ρ is closer in most (over half) of the ``total`` comparisons, −1 where it
    is farther in most, 0 where neither: a lean of 9 to 8 of 24 is not one."""
    return 1 if 2 * closer > total else -1 if 2 * farther > total else 0


def _lean(closer: int, farther: int, total: int) -> str:
    word = {
        1: "closer to the unit natural gradient under ELU in most comparisons",
        -1: "farther from the unit natural gradient under ELU in most comparisons",
        0: "in neither direction in most comparisons",
    }[_majority(closer, farther, total)]
    return (f"{word} (ELU closer in {closer}, farther in {farther}, not resolved in "
            f"{total - closer - farther} of {total})")  # fmt: skip


def _lean_ending(live_c: int, live_f: int, est_c: int, est_f: int, total: int) -> str:
    live, est = _majority(live_c, live_f, total), _majority(est_c, est_f, total)
    if live == est:
        return ("the same reading." if live else "neither set of units gives ELU's ρ a "
                "direction in most comparisons, so no direction is a finding.")  # fmt: skip
    if live:
        return ("so the live-unit reading rests on units whose blocks are not estimable and "
                "is not a finding.")  # fmt: skip
    return "the readings differ; neither is a finding."


def _unit_reading(rho_up: int, mean_up: int) -> str:
    """The live-unit analysis's reading from :func:`_majority` of ρ(plain) (+1: ELU nearer
    the unit natural gradient in most comparisons) and of ‖E_q(a)‖ (+1: larger in most)."""
    near = {
        1: "nearer the unit natural gradient",
        -1: "farther from the unit natural gradient",
        0: "neither nearer the unit natural gradient nor farther from it",
    }
    means = {1: "larger in most, not smaller as the paper's mechanism has them",
             -1: "smaller in most, as the paper's mechanism has them",
             0: "neither smaller nor larger in most"}  # fmt: skip
    return (f"ELU's plain gradient is {near[rho_up]} in most comparisons; its incoming "
            f"means are {means[mean_up]} (counts of CIs, not tests)"
            + (": in this autoencoder ELU's advantage in ρ does not come through the "
               "paper's mechanism (incoming means pushed towards zero)."
               if (rho_up, mean_up) == (1, 1) else "."))  # fmt: skip


def _estimable_lines(est_table, est_units, unit_table, before_runs: bool = False) -> list[str]:
    """The estimable-only re-analysis's section (:data:`ESTIMABLE_ENDPOINTS`): its table, how
    many units each median is over, its counts and where its reading of ρ differs from the
    live-unit one, from the CIs. ``before_runs``: every run of the record was declared after
    the re-analysis (the lr 1e-4 extension), so it was declared before them."""
    from natgrad.units import unit_type_label

    share = est_units["estimable_units"] / est_units["live"].clip(lower=1)
    med = share.groupby([est_units["layer"], est_units["unit_type"]], sort=False).median()
    counts = "; ".join(
        f"{layer} " + ", ".join(f"{unit_type_label(u, tex=False)} {100 * med[layer, u]:.0f} %"
                                for u in UNITS if (layer, u) in med.index)
        for layer in est_units["layer"].unique()
    )  # fmt: skip
    when = "before these runs" if before_runs else "after the tables above"
    then = "the runs of this record" if before_runs else "this re-analysis"
    lines = ["", f"## ρ over estimable units only (secondary; declared {when})",
             "", "Declared in `natgrad/studies/fig3.py` after the 25- and 50-epoch records "
             f"and before {then}: "
             "the same checkpoints, probe, g, λ = 1e-3 and jackknife, "
             "but per run and layer ρ(plain) and the bias-shift error are medians over the "
             "units whose blocks are estimable on the probe (n_eff ≥ 2(d+1)) instead of over "
             "every live unit. Estimable share of the live units (median over runs): "
             f"{counts}. The unit types' estimable subsets differ, so this checks the "
             "live-unit reading rather than replacing it. ELU − other, paired by seed, Holm "
             "over this family (`units-estimable`):", "",
             "| rate | layer | measure | other | seeds | ELU − other | 95 % CI | Holm p |",
             "| --- | --- | --- | --- | ---: | ---: | --- | ---: |"]  # fmt: skip
    for r in est_table.to_dict("records"):
        lines.append(f"| {r['lr']:g} | {r['layer']} | {r['metric']} | "
                     f"{unit_type_label(r['other'], tex=False)} | {r['n']} | {r['diff']:+.4g} | "
                     f"[{r['lo']:+.4g}, {r['hi']:+.4g}] | {r['p_holm']:.3g} |")  # fmt: skip
    both = ci_changes(unit_table, est_table, ["lr", "layer", "metric", "other"])  # live → est.
    lines.append("")
    for metric, what, up, down in UNIT_READING:
        if metric not in ESTIMABLE_MEASURES:
            continue
        rows = both[both["metric"] == metric]
        est, live = rows["after"].to_numpy(), rows["before"].to_numpy()
        changed = [f"lr {r['lr']:g} {r['layer']} vs {unit_type_label(r['other'], tex=False)}"
                   for r in rows[est != live].to_dict("records")]  # fmt: skip
        n = {k: (int((est == k).sum()), int((live == k).sum())) for k in (1, -1, 0)}
        lines.append(f"- {what}, estimable units: {up} under ELU in {n[1][0]}, {down} in "
                     f"{n[-1][0]}, not resolved in {n[0][0]} of {len(est)} (over live units: "
                     f"{n[1][1]}, {n[-1][1]}, {n[0][1]}); the reading differs in {len(changed)}"
                     + (f": {', '.join(changed)}." if changed else "."))  # fmt: skip
        if metric == "rho_plain_jk":  # which way ρ leans, counted, over each set of units
            lines += [
                "",
                "Reading: over live units ρ(plain) is "
                f"{_lean(n[1][1], n[-1][1], len(est))}; over estimable units it is "
                f"{_lean(n[1][0], n[-1][0], len(est))}: "
                f"{_lean_ending(n[1][1], n[-1][1], n[1][0], n[-1][0], len(est))}",
            ]
    return lines


def _interval_lines(changes: dict) -> list[str]:
    """What the amendment to the CIs (:mod:`natgrad.studies.fig3`) changed: per table, the
    CIs that exclude 0 under the declared BCa intervals and under the t intervals used above,
    and every comparison whose reading changed (``changes``: table name → its
    :func:`~natgrad.analysis.stats.ci_changes`, BCa before, t after)."""
    from natgrad.units import unit_type_label

    word = {1: "ELU higher", -1: "ELU lower", 0: "not resolved"}
    lines = [
        "",
        "## t intervals instead of the declared BCa (an amendment)",
        "",
        "The declaration named BCa bootstrap CIs of the mean over seeds; at 5 seeds they "
        "cover the true mean about 84 % of the time, not 95 % (`bench/ci_coverage.py`; "
        '`docs/theory.md`, "Statistics"), so every CI above is Student\'s t interval. '
        "Per-seed values, endpoints, p and Holm p are unchanged. CIs that exclude 0:",
        "",
    ]
    changed = []
    for name, c in changes.items():
        lines.append(f"- {name}: {int((c['before'] != 0).sum())} of {len(c)} under BCa, "
                     f"{int((c['after'] != 0).sum())} under t.")  # fmt: skip
        keys = [k for k in ("lr", "layer", "metric") if k in c]
        for r in c[c["before"] != c["after"]].to_dict("records"):
            where = " ".join(f"{r[k]:g}" if k == "lr" else str(r[k]) for k in keys)
            changed.append(f"{name}, lr {where} vs {unit_type_label(r['other'], tex=False)}: "
                           f"{word[r['before']]} → {word[r['after']]}")  # fmt: skip
    lines += [
        "",
        f"Readings that changed ({len(changed)}):" if changed else "No reading changed.",
        *([""] + [f"- {c}" for c in changed] if changed else []),
    ]
    return lines


def readme(
    table, unit_table, curves, meta: dict, est_table=None, est_units=None, changes=None
) -> str:
    """The results' text, from the CIs (whichever way they point)."""
    from natgrad.units import unit_type_label

    def ci(r):
        return f"{r['diff']:+.4f} ({r['lo']:+.4f} to {r['hi']:+.4f})"

    def word(r, neg: str, pos: str) -> str:
        return {-1: neg, 0: "no difference resolved", 1: pos}[int(ci_sign(r["lo"], r["hi"]))]

    epochs = int(curves["epoch"].max())
    seeds = sorted({int(s) for s in curves["seed"]})
    extended = seeds[-1] >= SEEDS  # the seed extension (natgrad.studies.fig3)
    extension = bool((table["family"] == "extension").any())  # natgrad.studies.fig3.endpoints
    rate = float(curves["lr"].iloc[0])  # an extension record holds one rate
    seeds_declared = (
        len(EXTENSIONS[rate].seeds) if extension else SEEDS + len(EXTENDED_SEEDS) * extended
    )
    declared = len(UNITS) * seeds_declared * curves["lr"].nunique()
    declared_t = EXTENSIONS[rate].declared_t if extension else extended  # else BCa, amended
    interim = (f"**Interim: {meta['runs']} of the {declared} declared runs of these rates have "
               "finished; the CIs are over the seeds so far.**") if meta["runs"] < declared else ""  # fmt: skip
    title = (f"# Fig 3, the autoencoder, on MNIST: lr {rate:g} extended to "
             f"{EXTENSIONS[rate].epochs} epochs (secondary)" if extension
             else f"# Fig 3, the autoencoder, on MNIST: {len(seeds)} seeds (the seed extension)"
             if extended else "# Fig 3, the autoencoder, on MNIST (issue 23)")  # fmt: skip
    lines = [title, "", *([interim, ""] if interim else []),
             f"Command: `{meta['command']}`  ", f"Commit of this report: `{meta['commit']}`; "
             f"of the runs: `{meta['run_commit']}`  ",
             f"Training: {meta['runs']} runs, {meta['train_seconds']:.0f} s of training summed; "
             f"unit analysis {meta['analysis_seconds']:.0f} s (one torch thread per process). "
             f"Diverged (not in the tables): {', '.join(meta['diverged']) or 'none'}.", "",
             *([_extension_text(rate), ""] if extension else
               [_seed_extension_text(seeds), ""] if extended else []),
             f"**Scale:** {epochs} epochs of MNIST's 50,000 training images per run (the "
             f"paper: 500), SGD batch 64, no momentum, seeds {seeds[0]}–{seeds[-1]} with shared "
             "initial weights; "
             "loss: binary cross-entropy on the logits per pixel (declared in "
             "`natgrad/studies/fig3.py`, with why; committed before any run). Curves on the validation split; the "
             "test set only for the last epoch's number. \"Error\" below (training, validation, "
             "test) is this reconstruction loss on that split, not a classification error.", "",
             f"## Reconstruction error (ELU − other, paired by seed, {mean_ci_name()} 95 % CI)", "",
             "| rate | metric | other | ELU − other | 95 % CI | p | Holm p (family) |",
             "| --- | --- | --- | ---: | --- | ---: | ---: |"]  # fmt: skip
    for r in table.to_dict("records"):
        lines.append(f"| {r['lr']:g} | {r['metric']} | {unit_type_label(r['other'], tex=False)} | "
                     f"{r['diff']:+.4g} | [{r['lo']:+.4g}, {r['hi']:+.4g}] | {r['p']:.3g} | "
                     f"{r['p_holm']:.3g} ({r['family']}) |")  # fmt: skip
    lines += ["", "## Reading (from the CIs)", ""]
    auc = table[table["metric"] == "log_train_loss_auc"]
    role = "secondary, family extension" if extension else "primary"
    n = int(auc["n"].max()) if len(auc) else 0
    m = int((table["family"] == auc["family"].iloc[0]).sum()) if len(auc) else 0
    p_min = 2 / 2**n if n else 1.0
    testable = m * p_min < 0.05  # the family's Holm p can reach 0.05: read it with the CI
    for r in auc.to_dict("records"):
        other = unit_type_label(r["other"], tex=False)
        said = (word(r, f"lower under ELU over epochs 1..{epochs}", f"higher under ELU over "
                     f"epochs 1..{epochs}") if extension  # not learning speed: see the caveat
                else word(r, "ELU learns faster", "ELU learns slower"))  # fmt: skip
        # the records declared with t read the test and the CI together, interim ones too
        if (testable or declared_t) and said != "no difference resolved" and r["p_holm"] >= 0.05:
            said = "the CI excludes 0 but the declared test does not resolve it (Holm p ≥ 0.05)"
        lines.append(f"- lr {r['lr']:g}, log10 training-loss AUC over epochs 1..{epochs} "
                     f"({role}), ELU − {other}: {ci(r)}, Holm p {r['p_holm']:.3g}: {said}.")  # fmt: skip
    if len(auc) and testable:
        lines.append(f"- With {n} seeds the smallest two-sided sign-flip p is {p_min:.3g}, and "
                     f"Holm over the {m} comparisons of the family makes it at most "
                     f"{m * p_min:.3g}: the declared test can resolve each of them, and a "
                     "direction is read only where it does and the CI agrees.")  # fmt: skip
    elif len(auc):
        floor = "all at" if bool((auc["p"] <= p_min * (1 + 1e-9)).all()) else "not all at"
        lines.append(f"- With {n} seeds the smallest two-sided sign-flip p is {p_min:.3g} (every "
                     f"seed's difference of one sign), and Holm over the {m} comparisons of "
                     f"the family makes it {min(1.0, m * p_min):.3g}: these seeds cannot reach "
                     f"0.05 whatever the effect. The AUC's p values are {floor} that floor; read "
                     "the size of each effect from its CI.")  # fmt: skip
    at = max((e for e in AT_EPOCHS if e <= epochs), default=None)
    last = table[table["metric"] == f"val_loss_e{at}"]
    for r in last.to_dict("records"):
        other = unit_type_label(r["other"], tex=False)
        lines.append(f"- lr {r['lr']:g}, validation error at the last reported epoch, ELU − "
                     f"{other}: {ci(r)}: " + word(r, "ELU lower", "ELU higher") + ".")  # fmt: skip
    lines += _crossings(curves, epochs)
    analysed = meta.get("analysed", meta["runs"])
    if extension and analysed < declared:  # declared: all of them, or none
        lines += ["", f"The unit analysis (declared, secondary) is reported once all {declared} "
                  f"runs are analysed; {analysed} are so far."]  # fmt: skip
        unit_table = est_table = None
    if unit_table is not None and len(unit_table):
        lines += ["", "## Natgrad's analysis of the trained autoencoders (secondary)", ""]
        if analysed < meta["runs"]:
            lines += [f"**Interim: {analysed} of the {meta['runs']} finished runs analysed so "
                      "far (seed-major, so that the seeds compared are complete across unit "
                      "types); the CIs are over those seeds.**", ""]  # fmt: skip
        lines += [
                  "Exact unit Fishers of the Bernoulli model of the 784 outputs on 1,000 "
                  "validation images, g from 10,000 training images, λ = 1e-3, last epoch; "
                  "per run the median over live units (|k|, ‖E_q(a)‖ over estimable units). "
                  "ELU − other, paired by seed, Holm over the whole family:", "",
                  "| rate | layer | measure | other | ELU − other | 95 % CI | Holm p |",
                  "| --- | --- | --- | --- | ---: | --- | ---: |"]  # fmt: skip
        for r in unit_table.to_dict("records"):
            lines.append(f"| {r['lr']:g} | {r['layer']} | {r['metric']} | "
                         f"{unit_type_label(r['other'], tex=False)} | {r['diff']:+.4g} | "
                         f"[{r['lo']:+.4g}, {r['hi']:+.4g}] | {r['p_holm']:.3g} |")  # fmt: skip
        rho = unit_table[unit_table["metric"] == "rho_plain_jk"]
        lines += [""] + [f"- lr {r['lr']:g}, {r['layer']}, ρ(plain) ELU − "
                         f"{unit_type_label(r['other'], tex=False)}: {ci(r)}: "
                         + word(r, "the plain gradient is farther from the unit natural "
                                "gradient under ELU", "the plain gradient is closer to the "
                                "unit natural gradient under ELU") + "."
                         for r in rho.to_dict("records")]  # fmt: skip
        lines += ["", "**In a net whose loss is not a classifier's** (every CI of the table, "
                  "counted; a count is not a test):", ""]  # fmt: skip
        sign = {}  # per measure: +1 if ELU is higher in most CIs, -1 lower in most, else 0
        for metric, what, up, down in UNIT_READING:
            rows = unit_table[unit_table["metric"] == metric]
            signs = ci_sign(rows["lo"], rows["hi"])
            hi, lo = int((signs == 1).sum()), int((signs == -1).sum())
            sign[metric] = _majority(hi, lo, len(rows))
            lines.append(f"- {what}: {up} under ELU in {hi}, {down} in {lo}, not resolved in "
                         f"{len(rows) - hi - lo} of {len(rows)} (rate × layer × other unit).")  # fmt: skip

        rho_up, mean_up = sign["rho_plain_jk"], sign["mean_q_norm"]
        n = int(unit_table["n"].max())
        reading = _unit_reading(rho_up, mean_up)
        dead = ", ".join(f"lr {lr:g} {unit_type_label(u, tex=False)} {100 * f:.0f} %"
                         for lr, u, f in meta.get("dead", []))  # fmt: skip
        lines += ["", f"Reading: {reading} Caveats: each run's value is a median over its "
                  "live units (a dead unit passes no gradient and is left out; dead share of "
                  f"the analysed units: {dead or 'not recorded'}), and with {n} seeds the smallest "
                  f"sign-flip p is {2 / 2**n:.3g}, which Holm multiplies by up to "
                  f"{len(unit_table)}: this family is descriptive, read from its CIs."]  # fmt: skip
    if est_table is not None and len(est_table) and unit_table is not None:
        lines[-1] += (" The medians of ρ and the bias-shift error include live units whose "
                      "blocks are not estimable; the next section checks them over estimable "
                      "units only.")  # fmt: skip
        # declared before the runs: an extension declared after it (seeds 0-4 of the seed
        # extension's record were analysed before it was declared)
        lines += _estimable_lines(est_table, est_units, unit_table, extension and declared_t)
    if changes and not declared_t:  # the BCa records say what the t intervals changed
        lines += _interval_lines(changes)
    lines += ["", "## Side by side with the paper", "",
              "| claim | paper (500 epochs) | here |", "| --- | --- | --- |",
              "| ELU has the lowest reconstruction error at every rate | Fig 3: ELU lowest "
              "training and test error at lr 1e-2, 1e-3, 1e-4, 1e-5 | "
              + "; ".join(f"lr {r['lr']:g}, ELU − {unit_type_label(r['other'], tex=False)}: "
                          f"{name} {ci(r)}" for name, metric in (("training", f"train_loss_e{at}"),
                                                                 ("test", "test_loss_last"))
                          for r in table[table["metric"] == metric].to_dict("records"))
              + f" (training error at epoch {at}; test error at the last epoch"
              + (f"; this record: lr {rate:g} only" if extension else "") + ") |", "",
              "Files: `curves.csv` (every run, every epoch), `comparisons.csv`, `units.csv` "
              "and `unit_comparisons.csv` (the analysis), `units_estimable.csv` and "
              "`unit_comparisons_estimable.csv` (its estimable-only re-analysis), `fig3.png`, "
              "`runs/` (each run's config, metrics and unit analyses)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def report(root: Path, dest: Path | None, argv) -> int:
    """Comparisons, figure and text from every finished run under ``root``."""

    import pandas as pd

    from natgrad.analysis.csvtables import read_csv
    from natgrad.analysis.runs import curve_table

    done = list(_finished(root))
    if not done:
        print(f"no finished runs under {root}")
        return 1
    frames = [curve_table([run], activations=False).assign(lr=lr) for lr, run in done]
    curves = pd.concat(frames, ignore_index=True)
    epochs = int(curves.groupby(["lr", "run"])["epoch"].max().min())

    def analysed(name):  # every finished run's analysis table ``name``, and how many had one
        rows = [read_csv(run / "analysis" / name).assign(lr=lr) for lr, run in done
                if (run / "analysis" / name).is_file()]  # fmt: skip
        return (pd.concat(rows, ignore_index=True) if rows else None), len(rows)

    (units, n_units), (est_units, _) = analysed(RESULTS), analysed(ESTIMABLE_RESULTS)

    def compared() -> dict:  # the three comparison tables (None: no unit analysis yet)
        return {"reconstruction": comparisons(curves, epochs),
                "unit analysis": None if units is None else unit_comparisons(units),
                "estimable units": None if est_units is None else
                evaluate(est_units, list(ESTIMABLE_ENDPOINTS), by=["lr", "layer"])}  # fmt: skip

    tables_now = compared()
    table, unit_table, est_table = tables_now.values()
    print(table[["lr", "metric", "other", "diff", "lo", "hi", "p"]].to_string(index=False))
    if dest is None:
        return 0
    changes = None
    if current_mean_ci() == "t":  # the declaration named BCa: say what the t intervals changed
        with mean_ci_method("bootstrap"):
            bca = compared()
        changes = {name: ci_changes(bca[name], new, [k for k in ("lr", "layer", "metric", "other")
                                                     if k in new])
                   for name, new in tables_now.items() if new is not None}  # fmt: skip
    from natgrad._atomic import write_text
    from natgrad.analysis.plots import save_figure
    from natgrad.analysis.record import read_meta, record_tables, run_provenance

    meta = dict(run_provenance([run for _, run in done]),
                diverged=[f"{p.parent.name}/{p.name}" for p in _diverged(root)],
                analysis_seconds=float(units.groupby(["lr", "unit_type", "seed"])["seconds"]
                                       .first().sum()) if units is not None else 0.0,
                analysed=n_units,
                dead=[] if units is None else  # [rate, unit type, dead share] (JSON: a list)
                [[lr, u, float(f)] for (lr, u), f in (1 - units.groupby(["lr", "unit_type"])["live"].sum()
                 / units.groupby(["lr", "unit_type"])["units"].sum()).items()])  # fmt: skip
    tables = dict(curves=curves, comparisons=table)
    if units is not None:
        tables.update(units=units, unit_comparisons=unit_table)
    if est_units is not None:
        tables.update(units_estimable=est_units, unit_comparisons_estimable=est_table)
    record_tables(dest, tables, argv=argv, script="analysis/fig3_autoencoder.py", **meta)
    save_figure(figure(curves), dest / "fig3", formats=("png",), dpi=110)
    write_text(dest / "README.md",
               readme(table, unit_table, curves, read_meta(dest), est_table, est_units, changes))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, choices=RATES, default=None)
    parser.add_argument("--epochs", type=int, default=MIN_EPOCHS)
    parser.add_argument("--seeds", type=seed_range, default=range(SEEDS),
                        help="FIRST:COUNT (a piece) or COUNT (seeds 0..COUNT-1)")  # fmt: skip
    parser.add_argument("--train-size", type=int, default=None, help="smoke runs only")
    parser.add_argument("--runs", type=Path, default=Path("runs/fig3"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--analyse", action="store_true", help="the unit analysis of every "
                        "finished run (of --lr's rate and --seeds' seeds), seed by seed")  # fmt: skip
    parser.add_argument("--restore", type=Path, default=None,
                        help="bring a results folder's run records back into --runs first")  # fmt: skip
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--record", type=Path, default=None,
                        help="copy the finished runs' records here and write the report")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    from natgrad.training.rundir import RunDir

    torch.set_num_threads(args.threads)
    if args.restore:
        n = copy_runs(args.restore / "runs", args.runs, analysis=KEPT, replace=False)
        print(f"restored {n} files into {args.runs}")
    if args.lr is not None and not args.analyse:  # --analyse --lr R: analyse R only
        wall = train(args.runs, args.lr, args.epochs, seeds=args.seeds, train_size=args.train_size)
        print(f"lr {args.lr:g}: epochs 1..{args.epochs} of {len(UNITS) * len(args.seeds)} runs "
              f"in {wall:.0f} s")  # fmt: skip
    if args.analyse:  # seed-major, so that a cut-off analysis leaves complete seeds
        done = [(lr, run) for lr, run in _finished(args.runs) if args.lr in (None, lr)]
        seed = {run: RunDir(run).identity()["seed"] for _, run in done}
        done = [(lr, run) for lr, run in done if seed[run] in args.seeds]  # a piece: --seeds
        for lr, run in sorted(done, key=lambda t: (seed[t[1]], t[1].name)):
            t0 = time.perf_counter()
            analyse_run(run)
            print(f"analysed lr {lr:g} {run.name} in {time.perf_counter() - t0:.0f} s")
    if args.record:
        n = copy_runs(args.runs, args.record / "runs", finished_only=True, analysis=KEPT)
        print(f"recorded {n} files")
    if args.report or args.record:
        return report(args.runs, args.record, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
