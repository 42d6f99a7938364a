"""Study (issue 26, item 3): a mechanism dashboard over training — unit × normalisation on MNIST.

The declaration is :mod:`natgrad.studies.mechanism_dashboard` (committed before the runs).

    python analysis/mechanism_dashboard.py [--runs runs/mechanism_dashboard] [--workers 2]
        [--record paper_figures/results/mechanism_dashboard_mnist]

The declared confirmatory runs of ρ(plain) (ELU and ReLU, epoch 3): over live units on 10 new
seeds 5–14, and over estimable units only on 10 more, 15–24:

    python analysis/mechanism_dashboard.py --confirm --runs runs/mechanism_dashboard_confirm
        --record paper_figures/results/mechanism_dashboard_mnist_confirm
    python analysis/mechanism_dashboard.py --confirm estimable
        --runs runs/mechanism_dashboard_confirm_estimable
        --record paper_figures/results/mechanism_dashboard_mnist_confirm_estimable
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

from natgrad._atomic import write_text
from natgrad.analysis.report import ci_text, p_text
from natgrad.analysis.stats import mean_ci_name, sign_flip_at_floor, sign_flip_method
from natgrad.damping import MEASURE_DAMPING
from natgrad.studies.mechanism_dashboard import (  # noqa: F401 (the declaration, re-exported)
    BATCH,
    CHECKPOINTS,
    CONFIRM_CHECKPOINTS,
    CONFIRM_PRIMARY,
    CONFIRM_SEEDS,
    CONFIRM_UNITS,
    CONFIRMATIONS,
    DEPTH,
    EPOCHS,
    GRAM_PROBE,
    LAYERS,
    LR,
    METRICS,
    NORMS,
    SEEDS,
    UNIT_PROBE,
    UNITS,
    WIDTH,
    arms,
    config,
    split_arm,
    study,
)


def measure(job) -> dict:
    """One (run, epoch) of the dashboard: the declared measures, one row."""
    import numpy as np
    import torch

    from natgrad.analysis.runs import load_model, probe_set, training_set
    from natgrad.analysis.stats import unit_medians
    from natgrad.analysis.unitstats import unit_statistics
    from natgrad.network import network_fisher_gram
    from natgrad.training.recording import median_abs_mean

    run, arm, seed, epoch, unit_probe, gram_probe = job
    torch.set_num_threads(1)
    model = load_model(run, epoch).double().eval()
    x, y = probe_set(run, unit_probe)
    x = x.double()
    gx, gy = training_set(run)
    units = unit_statistics(model, x, y, layers=list(LAYERS), rel_damping=MEASURE_DAMPING,
                            grad_data=(gx.double(), gy), jackknife=True)  # fmt: skip
    est = units["estimable"] == 1
    gram = network_fisher_gram(model, x[:gram_probe])
    unit, norm = split_arm(arm)
    return dict(
        arm=arm, unit=unit, norm=norm, seed=seed, epoch=epoch,
        mean_act=median_abs_mean(model, x), **unit_medians(units),
        shift_error_plain=float(np.nanmedian(units["shift_error_plain"])),
        abs_k=float(np.nanmedian(units.loc[est, "k"].abs())) if est.any() else float("nan"),
        offblock_share=1.0 - gram.unit_block_share(),
        top_eig=float(gram.eigenvalues[0]), top_eig_over_mean=gram.top_eig_over_mean(),
    )  # fmt: skip


def measure_all(runs, workers: int, cache: Path, checkpoints=CHECKPOINTS):
    """Every (run, epoch of ``checkpoints``), from ``cache`` (a CSV of finished rows) where
    present."""
    import multiprocessing as mp

    import pandas as pd

    from natgrad.analysis.csvtables import read_csv, write_csv

    done = read_csv(cache) if cache.is_file() else pd.DataFrame()
    have = set(zip(done["arm"], done["seed"], done["epoch"], strict=True)) if len(done) else set()
    jobs = [(r.path, r.arm, r.seed, e, UNIT_PROBE, GRAM_PROBE) for r in runs for e in checkpoints
            if (r.arm, r.seed, e) not in have]  # fmt: skip
    rows = [done] if len(done) else []
    with mp.get_context("spawn").Pool(workers) as pool:
        new = []
        for i, row in enumerate(pool.imap_unordered(measure, jobs), start=1):
            new.append(row)
            if i % 8 == 0 or i == len(jobs):  # checkpoint the measures as they come
                write_csv(pd.concat(rows + [pd.DataFrame(new)], ignore_index=True), cache)
    table = pd.concat(rows + [pd.DataFrame(new)], ignore_index=True)
    return table.sort_values(["norm", "unit", "seed", "epoch"], ignore_index=True)


def summarise(table, confirm: str | None = None):
    """Mean and CI (``stats.mean_ci``) per (arm, epoch, measure); ELU − ReLU per normalisation at the last
    epoch, paired by seed, Holm over the family (with ``confirm``, a key of
    :data:`CONFIRMATIONS`, its declared families: ``primary``, its primary measures under its
    normalisations; ``secondary``, the rest)."""

    from natgrad.analysis.endpoints import Endpoint, evaluate
    from natgrad.analysis.stats import ci_summary

    conf = CONFIRMATIONS[confirm] if confirm else None
    primaries = conf.primaries if conf else ()
    metrics = tuple(METRICS) + tuple(m for m in primaries if m not in METRICS)
    norms = conf.norms if conf else NORMS
    summary = ci_summary(table, ["arm", "unit", "norm", "epoch"],  # unit, norm: from the arm
                         (*metrics, "estimable", "top_eig_over_mean"))  # fmt: skip
    last = table[table["epoch"] == CHECKPOINTS[-1]]
    arm_of = dict(zip(map(split_arm, arms()), arms(), strict=True))  # (unit, norm) -> arm

    def family(m: str) -> str:
        if not confirm:
            return "elu_vs_relu"
        return "primary" if m in primaries else "secondary"

    eps = [Endpoint(m, arm_of["elu", norm], arm_of["relu", norm], family=family(m))
           for norm in norms for m in metrics]  # fmt: skip
    t = evaluate(last, eps, group="arm")
    paired = t.assign(norm=[split_arm(a)[1] for a in t["reference"]], epoch=CHECKPOINTS[-1],
                      seeds=t["n"])[["norm", "metric", "epoch", "diff", "lo", "hi", "ci_method",
                                     "p", "seeds", "p_holm"]]  # fmt: skip
    return summary, paired


def figure(summary, out: Path) -> list[Path]:
    """One figure: a row per measure, a column per normalisation, a line per unit type (mean
    over seeds with its 95 % CI band) against the epoch."""

    from natgrad.analysis.plots import file_subplots, save_figure
    from natgrad.units import unit_type_colour, unit_type_label

    titles = {"none": "no normalisation", "centred": "centring", "bn": "batch norm",
              "ln": "layer norm"}  # fmt: skip
    fig, axes = file_subplots(len(METRICS), len(NORMS), figsize=(12, 2.0 * len(METRICS)),
                             sharex=True, sharey="row")  # fmt: skip
    for j, norm in enumerate(NORMS):
        axes[0, j].set_title(titles[norm], fontsize=10)
        for i, m in enumerate(METRICS):
            ax = axes[i, j]
            for unit in UNITS:
                s = summary[(summary["unit"] == unit) & (summary["norm"] == norm)]
                s = s.sort_values("epoch")
                c = unit_type_colour(unit)
                ax.plot(s["epoch"], s[m], "o-", color=c, ms=3, lw=1.2,
                        label=unit_type_label(unit, tex=False))  # fmt: skip
                ax.fill_between(s["epoch"], s[f"{m}_lo"], s[f"{m}_hi"], color=c, alpha=0.15, lw=0)
            if m == "top_eig":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(METRICS[m][0], fontsize=8)
        axes[-1, j].set_xlabel("epoch")
        axes[-1, j].set_xticks(CHECKPOINTS)
    fig.suptitle(f"Mechanism dashboard: mnist-fc {DEPTH}×{WIDTH} on MNIST, SGD lr {LR}, "
                 f"mean and 95 % {mean_ci_name()} band over {int(summary['seeds'].max())} seeds; unit measures on {UNIT_PROBE} "
                 f"validation images (λ = {MEASURE_DAMPING:g}), whole-network on {GRAM_PROBE}",
                 fontsize=9, y=0.995)  # fmt: skip
    # the legend above the panels, off the lines
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=len(UNITS),
               bbox_to_anchor=(0.5, 0.985), frameon=False, fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    return save_figure(fig, out / "dashboard", dpi=130)


EXPLORATORY = (Path(__file__).resolve().parents[1]
               / "paper_figures/results/mechanism_dashboard_mnist")  # fmt: skip
NORM_NAMES = {"none": "none", "centred": "centring", "bn": "batch norm", "ln": "layer norm"}


class _Text(NamedTuple):
    """What a confirmatory record's README says that differs between the confirmations."""

    title: str  # after "confirmatory run"
    declared: str  # the declaration's heading, and why it was declared
    over: str  # after "ρ(plain)" in the primary heading
    seeds_word: str  # "none of which <…> record used"
    what_note: str  # after the primary measure's name
    limit: str | None  # the declared limit (None: the estimability caveat, where shares differ)


_EARLIER = "confirmation ([mechanism_dashboard_mnist_confirm](../mechanism_dashboard_mnist_confirm/"
TEXT = {
    "rho": _Text("", '("Confirmatory run of ρ(plain)")', "", "that", "", None),
    "estimable": _Text(
        " over estimable units",
        '("Confirmatory run of ρ(plain) over estimable units only", declared after the first '
        f"{_EARLIER}README.md)) had found fewer of ReLU's units estimable)",
        " over estimable units only", "an earlier", " (over the units with n_eff ≥ 2(d+1))",
        " Limit (declared before the run): the median is over each net's own estimable units, a "
        "selection that differs between the arms (shares in the table); a difference among "
        "estimable units is not a difference between the same units, and dead or thin units "
        "still shape the other units' inputs."),
    "none": _Text(
        " without normalisation, powered",
        '("Confirmatory run without normalisation, powered", declared after the two earlier '
        "confirmations ([mechanism_dashboard_mnist_confirm](../mechanism_dashboard_mnist_"
        "confirm/README.md), [mechanism_dashboard_mnist_confirm_estimable](../mechanism_"
        "dashboard_mnist_confirm_estimable/README.md)) had resolved different things without "
        "normalisation)",
        " without normalisation", "an earlier", "",
        " Limit (declared before the run): the median over estimable units is over each net's "
        "own selection of units, which differs between the arms (shares in the table), and "
        "dead or thin units still shape the other units' inputs; the median over live units "
        "includes blocks with n_eff < 2(d+1). Where an endpoint is not resolved, its CI bounds "
        "the difference this design excludes."),
}  # fmt: skip
"""Each confirmation's README wording (keys of :data:`CONFIRMATIONS`)."""


def _p(p: float, n: int, raw: float | None = None, spec: str = ".3g") -> str:
    """A sign-flip p (or its Holm-adjusted value, given the ``raw`` p); where random patterns
    (over 20 seeds) put the raw p at its floor, a bound: no drawn pattern was as extreme."""
    return p_text(p, sign_flip_at_floor(p if raw is None else raw, int(n)), spec=spec)


def confirm_readme(record: Path) -> str:
    """A confirmatory record's README, every number read from its own tables (and, for the
    side-by-side column of the first confirmation, the exploratory record's
    ``elu_vs_relu.csv``); each primary endpoint read by the declared rule (Holm p < 0.05 and
    the CI excluding 0)."""

    import pandas as pd

    from natgrad.analysis.csvtables import read_csv
    from natgrad.analysis.record import read_meta, rebuilt_by
    from natgrad.analysis.stats import declared_sign

    meta = read_meta(record)
    key = meta.get("confirmation", "rho")  # the first confirmation's run.json predates the key
    conf, text = CONFIRMATIONS[key], TEXT[key]
    primary, norms = conf.primary, conf.norms
    table = read_csv(record / "dashboard.csv")
    paired = read_csv(record / "elu_vs_relu.csv")
    if key == "rho":  # beside it: the exploratory record's value
        beside = pd.read_csv(EXPLORATORY / "elu_vs_relu.csv").set_index(["norm", "metric"])
        beside_head, beside_metric = "exploratory (seeds 0–4, BCa)", primary
    elif key == "estimable":  # beside it: this run's median over all live units (its secondary)
        beside = paired.set_index(["norm", "metric"])
        beside_head, beside_metric = "all live units (this run)", CONFIRM_PRIMARY
    else:  # beside each measure: the earlier confirmation that had it as its primary
        earlier = {m: EXPLORATORY.parent / f"mechanism_dashboard_mnist_confirm{s}" for m, s in
                   (("rho_plain_jk", ""), ("rho_plain_jk_est", "_estimable"))}  # fmt: skip
        beside = pd.concat(read_csv(f / "elu_vs_relu.csv").query("metric == @m")
                           for m, f in earlier.items()).set_index(["norm", "metric"])  # fmt: skip
        beside_head, beside_metric = "earlier confirmation (seeds 5–14; 15–24)", None
    first, last = meta["seed_range"]
    n, how = int(paired["seeds"].max()), str(paired["ci_method"].iloc[0])
    label = {m: lab.replace("\n", " ").replace("|", "\\|") for m, (lab, _) in METRICS.items()}
    row_name = {
        "rho_plain_jk": "ρ(plain) over live units",
        "rho_plain_jk_est": "ρ(plain) over estimable units",
    }
    p_how = sign_flip_method(n).capitalize()
    k = len(norms) * len(conf.primaries)
    holm_over = f"the {dict(enumerate(('none', 'one', 'two', 'three', 'four'))).get(k, k)}"
    lines = [
        f"# Mechanism dashboard, confirmatory run{text.title}: is ELU's plain gradient "
        "nearer the unit natural gradient than ReLU's?", "",
        f"- **Command:** `{meta['command']}` at `{meta['commit']}`; "
        f"{meta['train_seconds']:.0f} s training and {meta['measure_seconds']:.0f} s measuring "
        f"(wall) on {meta['device']}." + rebuilt_by(record, __file__, meta),
        "- **Declared before its runs** in `natgrad/studies/mechanism_dashboard.py` "
        + text.declared
        + (": ELU and ReLU under no normalisation, centring, batch norm and layer norm"
           if len(norms) == 4 else ": ELU and ReLU without normalisation")
        + ", trained as in the exploratory record "
        "([mechanism_dashboard_mnist](../mechanism_dashboard_mnist/README.md)): `mnist-fc` "
        f"{DEPTH}×{WIDTH} on MNIST, SGD lr {LR:g}, batch {BATCH}, {EPOCHS} epochs, on seeds "
        f"{first}–{last}, none of which {text.seeds_word} record used. At epoch {EPOCHS}: exact unit "
        f"Fishers of the layers fed by hidden units ({', '.join(LAYERS)}) on {UNIT_PROBE:,} "
        f"validation images, λ = {MEASURE_DAMPING:g}, g the training set's mean gradient; per run "
        f"{conf.what}{text.what_note}. Tables: `dashboard.csv` (per run), `summary.csv` "
        "(per arm), `elu_vs_relu.csv` (paired).", "",
        f"## Primary endpoints: ELU − ReLU in ρ(plain){text.over} at epoch {EPOCHS}, paired by seed",
        "",
        f"{p_how}, Holm over {holm_over}; {how} 95 % CIs over {n} seeds. The "
        "declared rule: resolved where the Holm p is < 0.05 and the CI excludes 0.", "",
        f"| {'normalisation' if len(conf.primaries) == 1 else 'measure'} | ELU − ReLU [95 % CI] "
        "| seeds ELU ahead | p | Holm p | reading | "
        f"ρ(plain) of ELU, ReLU (mean) | estimable units, ELU / ReLU | {beside_head} |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]  # fmt: skip
    at = table[table["epoch"] == EPOCHS]
    readings: dict[str, list[str]] = {}
    uneven = []  # normalisations whose two arms rest on different shares of estimable blocks
    rows = paired.set_index("metric", drop=False).loc[list(conf.primaries)]  # declared order
    for r in rows.to_dict("records"):
        norm, primary = r["norm"], r["metric"]
        name_ = NORM_NAMES[norm] if len(conf.primaries) == 1 else row_name[primary]
        arm_e, arm_r = arms(CONFIRM_UNITS, (norm,))
        e = at[at["arm"] == arm_e].set_index("seed")
        u = at[at["arm"] == arm_r].set_index("seed")
        ahead = int((e[primary] > u[primary]).sum())
        sign = declared_sign(r)
        said = {1: "ELU nearer", -1: "ReLU nearer", 0: "not resolved"}[sign]
        readings.setdefault(said, []).append(name_)
        if abs(e["estimable"].mean() - u["estimable"].mean()) > 0.05:
            uneven.append(f"{NORM_NAMES[norm]} ({e['estimable'].mean():.0%} of ELU's units, "
                          f"{u['estimable'].mean():.0%} of ReLU's)")  # fmt: skip
        x = beside.loc[(norm, beside_metric or primary)]
        lines.append(f"| {name_} | {ci_text(r['diff'], r['lo'], r['hi'])} | {ahead} of "
                     f"{int(r['seeds'])} | {_p(r['p'], int(r['seeds']))} | "
                     f"{_p(r['p_holm'], int(r['seeds']), r['p'])} | {said} | "
                     f"{e[primary].mean():.3f}, {u[primary].mean():.3f} | "
                     f"{e['estimable'].mean():.0%} / {u['estimable'].mean():.0%} | "
                     f"{ci_text(x['diff'], x['lo'], x['hi'])} |")  # fmt: skip
    said = "; ".join(f"{k}: {', '.join(readings[k])}"
                     for k in ("ELU nearer", "ReLU nearer", "not resolved") if k in readings)  # fmt: skip
    if text.limit is not None:
        caveat = text.limit
    elif uneven:
        caveat = (" Caveat (added to the writer after the results were seen): the two arms' "
                  "units are not equally often estimable (n_eff ≥ 2(d+1)) under "
                  f"{'; '.join(uneven)}. That share counts dead units, which have no ρ and are "
                  "left out of the median, as not estimable, so it mixes two things: which units "
                  "the median is over, and live units whose blocks rest on too few effective "
                  "inputs. ρ is a median over live units, estimable or not, as declared, so part "
                  "of such a difference may follow either rather than the mechanism; equal "
                  "shares make that less likely, not impossible.")  # fmt: skip
    else:
        caveat = ""
    lines += ["", f"**Reading** ({said}). ρ(plain) is the Fisher efficiency of the plain step "
              "in each unit's own metric F_λ: higher is nearer the unit natural gradient. "
              f"{'A normalisation' if len(conf.primaries) == 1 else 'An endpoint'} where it is "
              "not resolved is not evidence of no difference; read the size from the CI."
              + caveat, "",
              f"## Secondary (descriptive): ELU − ReLU at epoch {EPOCHS}, Holm within the family",
              "", "| measure | " + " | ".join(NORM_NAMES[k] for k in norms) + " |",
              "| --- |" + " --- |" * len(norms)]  # fmt: skip
    sec = paired[~paired["metric"].isin(conf.primaries)].set_index(["metric", "norm"])
    for m in METRICS:
        if m in conf.primaries:
            continue
        cells = [f"{ci_text(*sec.loc[(m, k), ['diff', 'lo', 'hi']])} (Holm p "
                 f"{_p(*sec.loc[(m, k), ['p_holm', 'seeds', 'p']], spec='.2g')})"
                 for k in norms]  # fmt: skip
        lines.append(f"| {label[m]} | " + " | ".join(cells) + " |")
    lines += ["", "## Limits", "",
              f"One net ({DEPTH} × {WIDTH}), one data set, one rate, {EPOCHS} epochs, one damping "
              f"(λ = {MEASURE_DAMPING:g}); ρ is a median over units of blocks estimated on "
              f"{UNIT_PROBE:,} images (the estimable share is in the table). Whether a nearer "
              "plain gradient makes training faster is not tested here.", ""]  # fmt: skip
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/mechanism_dashboard"))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--confirm", nargs="?", const="rho", choices=tuple(CONFIRMATIONS),
                        help="a declared confirmatory run (ELU, ReLU; epoch 3): 'rho' (the "
                             "default; seeds 5-14), 'estimable' (seeds 15-24) or 'none' (no "
                             "normalisation; seeds 25-124)")  # fmt: skip
    parser.add_argument("--readme", type=Path, default=None, metavar="RECORD",
                        help="only (re)write a confirmatory record's README.md from its tables")  # fmt: skip
    args = parser.parse_args(argv)
    if args.readme:
        write_text(args.readme / "README.md", confirm_readme(args.readme))
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    conf = CONFIRMATIONS[args.confirm] if args.confirm else None
    s = study(conf.seeds, CONFIRM_UNITS, conf.norms) if conf else study(args.seeds)
    diverged = s.train(args.runs, workers=args.workers, threads=1)  # as run.json says
    if diverged:
        print(f"diverged: {sorted(diverged)}", file=sys.stderr)
        return 1
    t_train = time.perf_counter() - t0
    checkpoints = CONFIRM_CHECKPOINTS if args.confirm else CHECKPOINTS
    table = measure_all(s.plan(args.runs), args.workers, args.runs / "dashboard_cache.csv",
                        checkpoints)  # fmt: skip
    t_measure = time.perf_counter() - t0 - t_train
    summary, paired = summarise(table, confirm=args.confirm)
    print(paired.round(4).to_string(index=False))
    if args.record:
        from natgrad.analysis.record import record_tables

        record_tables(args.record, {"dashboard": table, "summary": summary, "elu_vs_relu": paired},
                      argv=argv, script="analysis/mechanism_dashboard.py", train_seconds=t_train,
                      measure_seconds=t_measure, seeds=len(s.seeds),
                      **({"seed_range": [min(s.seeds), max(s.seeds)]} if args.confirm else {}),
                      **({"confirmation": args.confirm} if args.confirm else {}),
                      device=f"cpu, {args.workers} worker process(es) of one torch thread")  # fmt: skip
        if not args.confirm:  # the figure draws the measures over epochs
            figure(summary, args.record)
        else:
            write_text(args.record / "README.md", confirm_readme(args.record))
    return 0


if __name__ == "__main__":
    sys.exit(run())
