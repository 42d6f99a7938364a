r"""Study: does a nearer plain gradient make training faster? The third mechanism confirmation's
runs, resumed from epoch 3 to epoch 10.

The declaration is :mod:`natgrad.studies.mechanism_speed` (committed before the runs).

    python analysis/mechanism_speed.py --from-runs RUNS_OF_THE_CONFIRMATION --runs R
        [--workers 2] [--record paper_figures/results/mechanism_speed_mnist]
    python analysis/mechanism_speed.py --readme paper_figures/results/mechanism_speed_mnist

``--from-runs`` is the confirmation's runs folder (``analysis/mechanism_dashboard.py
--confirm none --runs ...``); its runs are copied with their latest checkpoints into ``R``
(nothing there is overwritten) and resumed there. ρ is read from the confirmation's record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from natgrad._atomic import write_text
from natgrad.studies.mechanism_speed import (
    EPOCHS,
    FROM_EPOCH,
    PERMUTATIONS,
    RESAMPLES,
    RHO,
    RHO_EST,
    SECONDARY_DIFFS,
    SEEDS,
    study,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIRMATION = ROOT / "paper_figures/results/mechanism_dashboard_mnist_confirm_none"
FALL = "log_fall"  # log10 L_3 − log10 L_10
LABELS = {
    FALL: f"fall of log10 training loss, epoch {FROM_EPOCH} → {EPOCHS}",
    "log_train_loss_auc": f"log10 training-loss AUC, epochs 1–{EPOCHS}",
    f"log_train_loss_e{FROM_EPOCH}": f"log10 training loss, epoch {FROM_EPOCH}",
    f"log_train_loss_e{EPOCHS}": f"log10 training loss, epoch {EPOCHS}",
    f"val_loss_e{EPOCHS}": f"validation loss, epoch {EPOCHS}",
    f"val_error_e{EPOCHS}": f"validation error, epoch {EPOCHS}",
}


def per_run(curves, dashboard):
    """One row per (arm, seed): the losses the endpoints use and ρ at epoch 3 (from the
    confirmation's ``dashboard.csv``)."""
    import numpy as np
    import pandas as pd

    from natgrad.analysis.stats import loss_auc

    rows = []
    for (arm, seed), g in curves.sort_values("epoch").groupby(["arm", "seed"]):
        loss = g.set_index("epoch")
        log = np.log10(loss["train_loss"])
        rows.append({"arm": arm, "seed": seed, FALL: log[FROM_EPOCH] - log[EPOCHS],
                     "log_train_loss_auc": loss_auc(loss.loc[1:EPOCHS, "train_loss"], log=True),
                     f"log_train_loss_e{FROM_EPOCH}": log[FROM_EPOCH],
                     f"log_train_loss_e{EPOCHS}": log[EPOCHS],
                     f"val_loss_e{EPOCHS}": loss.loc[EPOCHS, "val_loss"],
                     f"val_error_e{EPOCHS}": loss.loc[EPOCHS, "val_error"]})  # fmt: skip
    rho = dashboard[dashboard["epoch"] == FROM_EPOCH][["arm", "seed", RHO, RHO_EST]]
    return pd.DataFrame(rows).merge(rho, on=["arm", "seed"], how="left", validate="1:1")


def endpoints(table):
    """The declared endpoints, one row each: ``family`` (primary, secondary), ``endpoint``,
    ``kind`` (ELU − ReLU difference, or Spearman correlation), ``value``, ``lo``, ``hi``,
    ``ci_method``, ``p``, ``n``, ``p_holm`` (Holm within the family)."""
    import pandas as pd

    from natgrad.analysis.endpoints import Endpoint, evaluate
    from natgrad.analysis.stats import holm, rank_correlation

    wide = table.pivot(index="seed", columns="arm")
    delta = {m: wide[m]["elu"] - wide[m]["relu"] for m in (FALL, RHO, RHO_EST)}

    def corr(family, name, x, y):
        r = rank_correlation(x, y, resamples=RESAMPLES, permutations=PERMUTATIONS)
        return dict(family=family, endpoint=name, kind="Spearman", value=r["r"], lo=r["lo"],
                    hi=r["hi"], ci_method=r["ci_method"], p=r["p"], n=r["n"])  # fmt: skip

    def diff(family, metric):
        r = evaluate(table, [Endpoint(metric, "elu", "relu")], group="arm").iloc[0]
        return dict(family=family, endpoint=metric, kind="ELU − ReLU", value=r["diff"],
                    lo=r["lo"], hi=r["hi"], ci_method=r["ci_method"], p=r["p"], n=r["n"])  # fmt: skip

    rows = [diff("primary", FALL),
            corr("primary", f"link: Δ{RHO} vs Δ{FALL}", delta[RHO], delta[FALL]),
            *(corr("secondary", f"{arm}: {RHO} vs {FALL}", wide[RHO][arm], wide[FALL][arm])
              for arm in ("elu", "relu")),
            corr("secondary", f"link: Δ{RHO_EST} vs Δ{FALL}", delta[RHO_EST], delta[FALL]),
            *(diff("secondary", m) for m in SECONDARY_DIFFS)]  # fmt: skip
    out = pd.DataFrame(rows)
    out["p_holm"] = out.groupby("family")["p"].transform(lambda p: holm(p.to_numpy()))
    return out


def figure(table, curves, out: Path) -> Path:
    """Left: ELU − ReLU in ρ at epoch 3 against ELU − ReLU in the fall, one point per seed;
    right: each arm's mean log10 training loss over epochs 1–10 with its 95 % CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from natgrad.analysis.plots import save_figure
    from natgrad.analysis.stats import mean_ci, mean_ci_name
    from natgrad.units import unit_type_colour, unit_type_label

    wide = table.pivot(index="seed", columns="arm")
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    a.scatter(wide[RHO]["elu"] - wide[RHO]["relu"], wide[FALL]["elu"] - wide[FALL]["relu"],
              s=12, color="0.3")  # fmt: skip
    a.axhline(0, color="0.7", lw=0.8)
    a.axvline(0, color="0.7", lw=0.8)
    a.set(xlabel=f"ELU − ReLU in ρ(plain) at epoch {FROM_EPOCH}",
          ylabel=f"ELU − ReLU in the fall,\nlog10 L{FROM_EPOCH} − log10 L{EPOCHS}")  # fmt: skip
    log = curves[curves["epoch"] >= 1].assign(log=lambda c: np.log10(c["train_loss"]))
    for arm, g in log.groupby("arm"):
        m = g.groupby("epoch")["log"].agg(["mean", lambda x: mean_ci(x)[0],
                                           lambda x: mean_ci(x)[1]])  # fmt: skip
        m.columns = ["mean", "lo", "hi"]
        c = unit_type_colour(arm)
        b.plot(m.index, m["mean"], "o-", ms=3, color=c, label=unit_type_label(arm, tex=False))
        b.fill_between(m.index, m["lo"], m["hi"], color=c, alpha=0.2, lw=0)
    b.axvline(FROM_EPOCH, color="0.7", lw=0.8, ls=":")
    b.set(xlabel="epoch", ylabel=f"log10 training loss\n(mean, 95 % {mean_ci_name()} band)")
    b.legend(frameon=False)
    fig.tight_layout()
    path = save_figure(fig, out / "speed", dpi=120)
    plt.close(fig)
    return path


def _ci(r) -> str:
    return f"{r['value']:+.3g} [{r['lo']:+.3g}, {r['hi']:+.3g}]"


def _p(p: float, n: int, kind: str, raw: float) -> str:
    """A p (or its Holm value, given the ``raw`` p): a bound where the raw p is at the floor
    of the random patterns or pairings drawn."""
    from natgrad.analysis.stats import sign_flip_at_floor

    floor = (sign_flip_at_floor(raw, n) if kind != "Spearman"
             else abs(raw - 2 / (PERMUTATIONS + 1)) < 1e-15)  # two-sided: twice the least  # fmt: skip
    return f"≤ {p:.2g}" if floor else f"{p:.2g}"


def _reading(r) -> str:
    """The declared rule: resolved where the Holm p is < 0.05 and the CI excludes 0."""
    from natgrad.analysis.stats import ci_sign

    sign = int(ci_sign(r["lo"], r["hi"])) if r["p_holm"] < 0.05 else 0
    if r["kind"] == "Spearman":
        return {1: "positive", -1: "negative", 0: "not resolved"}[sign]
    return {1: "ELU's falls further", -1: "ReLU's falls further", 0: "not resolved"}[sign]


def readme(record: Path) -> str:
    """The record's README, every number read from its own tables."""
    import json

    from natgrad.analysis.csvtables import read_csv
    from natgrad.analysis.record import record_name
    from natgrad.analysis.stats import mean_ci_name, sign_flip_method

    meta = json.loads((record / "run.json").read_text())
    eps = read_csv(record / "endpoints.csv")
    table = read_csv(record / "per_run.csv")
    name = record_name(record, ROOT)
    n = int(eps["n"].max())
    means = table.groupby("arm")[FALL].mean()
    wide = table.pivot(index="seed", columns="arm")
    ahead = int((wide[FALL]["elu"] > wide[FALL]["relu"]).sum())

    def label(e: str) -> str:
        if not e.startswith(("link", "elu:", "relu:")):
            return LABELS[e]
        who, _, what = e.partition(": ")
        rho = "ρ over estimable units" if RHO_EST in what else "ρ over live units"
        if who == "link":
            return f"ELU − ReLU in {rho} vs ELU − ReLU in the fall"
        return f"{who.upper() if who == 'elu' else 'ReLU'}: its {rho} vs its fall"

    rows = eps.to_dict("records")
    prim = [r for r in rows if r["family"] == "primary"]
    speed, link = prim
    lines = [
        "# Does a nearer plain gradient make training faster? The third mechanism "
        f"confirmation's runs, resumed from epoch {FROM_EPOCH} to {EPOCHS}", "",
        f"- **Command:** `{meta['command']}` at `{meta['commit']}`; {meta['train_seconds']:.0f} s "
        f"resuming {meta['runs']} runs (wall) on {meta['device']}. This README is written from "
        f"the tables by `python analysis/mechanism_speed.py --readme {name}` "
        "(`tests/test_study.py` checks that it still is)."
        + (f" Note: {meta['note']}" if "note" in meta else ""),
        "- **Declared before its runs** in `natgrad/studies/mechanism_speed.py` "
        f"(committed at `{meta['declared']}`): the {meta['runs']} runs of the third "
        "confirmation ([mechanism_dashboard_mnist_confirm_none]"
        "(../mechanism_dashboard_mnist_confirm_none/README.md): ELU and ReLU without "
        f"normalisation, seeds {min(SEEDS)}–{max(SEEDS)}, `mnist-fc` 3×64 on MNIST, SGD lr 0.01, "
        f"batch 64), copied with their epoch-{FROM_EPOCH} checkpoints and resumed by the same "
        f"trainer to epoch {EPOCHS}, nothing else changed. ρ is the median over the live units "
        f"of fc2–fc4 of the jackknifed ρ(plain) at epoch {FROM_EPOCH}, read from that record; "
        f"the fall is log10 L{FROM_EPOCH} − log10 L{EPOCHS}, L the training loss of an epoch (the "
        "trainer's running mean). Tables: `per_run.csv`, `endpoints.csv`, `curves.csv`; "
        "figure `speed.png`.", "",
        "## Primary endpoints (Holm over the two)", "",
        f"The speed endpoint: {mean_ci_name()} 95 % CI over {n} seeds, "
        f"{sign_flip_method(n)}. The link: Spearman's correlation over seeds, BCa bootstrap "
        f"CI ({RESAMPLES:,} resamples), two-sided permutation p ({PERMUTATIONS:,} random "
        "pairings). The declared rule: resolved where the Holm p is < 0.05 and the CI "
        "excludes 0.", "",
        "| endpoint | value [95 % CI] | p | Holm p | reading |",
        "| --- | --- | ---: | ---: | --- |",
        *(f"| {'speed: ELU − ReLU in the fall' if r['kind'] != 'Spearman' else 'link: ' + label(r['endpoint'])}"
          f" | {_ci(r)} | {_p(r['p'], int(r['n']), r['kind'], r['p'])} | "
          f"{_p(r['p_holm'], int(r['n']), r['kind'], r['p'])} | {_reading(r)} |" for r in prim),
        "",
        f"Mean fall: ELU {means['elu']:.3f}, ReLU {means['relu']:.3f} (log10 units); ELU's "
        f"falls further on {ahead} of {n} seeds.", "",
        f"**Reading.** Speed: {_reading(speed)}; link: {_reading(link)}. "
        + _text(speed, link, eps.set_index("endpoint").loc[f"log_train_loss_e{FROM_EPOCH}"]),
        "", "## Secondary (descriptive), Holm within the family", "",
        "| measure | value [95 % CI] | seeds | Holm p |", "| --- | --- | ---: | ---: |",
        *(f"| {label(r['endpoint']) if r['kind'] == 'Spearman' else 'ELU − ReLU in ' + LABELS[r['endpoint']]}"
          f"{' (Spearman)' if r['kind'] == 'Spearman' else ''} | {_ci(r)} | {int(r['n'])} | "
          f"{_p(r['p_holm'], int(r['n']), r['kind'], r['p'])} |"
          for r in rows if r["family"] == "secondary"),
        "", "## Limits (declared before the run)", "",
        "The link and the per-unit correlations are associations over seeds, not causes: a "
        "seed's initial weights shape both its ρ and its later course. The fall depends on "
        f"where the loss stands at epoch {FROM_EPOCH} (a lower loss may have less far to fall), "
        "so the levels are reported beside it. One net, one data set, one rate; speed in "
        "epochs, not seconds. Before the declaration the epoch-0 and epoch-1 rows of one run "
        "(ELU, seed 25) had been seen while checking the runs' format, and its epoch-2 and "
        "epoch-3 rows at the launch; no other training loss of these runs.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def _text(speed, link, level) -> str:
    """What the two readings say together, in the terms of the paper's mechanism (``level``:
    the secondary row of ELU − ReLU in the loss at the measure)."""
    from natgrad.analysis.stats import ci_sign

    s, k = _reading(speed), _reading(link)
    said = {"ELU's falls further": "ELU's training loss falls further than ReLU's after "
                                   f"epoch {FROM_EPOCH}",
            "ReLU's falls further": "ReLU's training loss falls further than ELU's after "
                                    f"epoch {FROM_EPOCH}: the plain gradient nearer the unit "
                                    "natural gradient (ELU's, by the third confirmation) did "
                                    "not make training faster here",
            "not resolved": "the design does not resolve which loss falls further after "
                            f"epoch {FROM_EPOCH} (read the size from the CI)"}[s]  # fmt: skip
    tied = {"positive": "seeds where ELU's plain gradient is relatively nearer are those where "
                        "its loss falls relatively further, as the mechanism predicts (an "
                        "association)",
            "negative": "seeds where ELU's plain gradient is relatively nearer are those where "
                        "its loss falls relatively less, against the mechanism's prediction",
            "not resolved": f"over seeds the relative nearness at epoch {FROM_EPOCH} is not tied "
                            "to the relative fall (the CI leaves out correlations above "
                            f"{link['hi']:+.3g} and below {link['lo']:+.3g})"}[k]  # fmt: skip
    text = f"{said[0].upper()}{said[1:]}; {tied}."
    higher = level["p_holm"] < 0.05 and ci_sign(level["lo"], level["hi"]) == 1
    if s == "ReLU's falls further" and higher:
        text += (" (Added after the results were seen.) ELU's training loss stood higher at "
                 f"epoch {FROM_EPOCH} (secondary table), so the declared limit that a lower loss "
                 "may have less far to fall does not explain ReLU's larger fall.")  # fmt: skip
    return text


def run(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/mechanism_speed"))
    parser.add_argument("--from-runs", type=Path, default=None,
                        help="the third confirmation's runs folder, copied into --runs first")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--readme", type=Path, default=None, metavar="RECORD",
                        help="only (re)write the record's README.md from its tables")  # fmt: skip
    args = parser.parse_args(argv)
    if args.readme:
        write_text(args.readme / "README.md", readme(args.readme))
        return 0
    from natgrad.analysis.csvtables import read_csv
    from natgrad.training.carry import copy_runs

    s = study()
    if args.from_runs:
        copy_runs(args.from_runs, args.runs, resume=True, replace=False,
                  runs=[args.from_runs / r.path.name for r in s.plan(args.runs)])  # fmt: skip
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    diverged = s.train(args.runs, workers=args.workers, threads=1)
    if diverged:
        print(f"diverged: {sorted(diverged)}", file=sys.stderr)
        return 1
    t_train = time.perf_counter() - t0
    curves = s.curves(args.runs)
    table = per_run(curves, read_csv(CONFIRMATION / "dashboard.csv"))
    eps = endpoints(table)
    print(eps.round(4).to_string(index=False))
    if args.record:
        from natgrad.analysis.record import record_tables

        record_tables(args.record, {"per_run": table, "endpoints": eps, "curves": curves},
                      argv=argv, script="analysis/mechanism_speed.py", train_seconds=t_train,
                      runs=len(table), declared="7558a62",
                      device=f"cpu, {args.workers} worker process(es) of one torch thread")  # fmt: skip
        figure(table, curves, args.record)
        write_text(args.record / "README.md", readme(args.record))
    return 0


if __name__ == "__main__":
    sys.exit(run())
