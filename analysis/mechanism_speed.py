r"""Study: does a nearer plain gradient make training faster? The third mechanism confirmation's
runs, resumed from epoch 3 to epoch 10, and its replication on the paper's 8×128 net.

The declarations are :mod:`natgrad.studies.mechanism_speed` (committed before the runs).

    python analysis/mechanism_speed.py --from-runs RUNS_OF_THE_CONFIRMATION --runs R
        [--workers 2] [--record paper_figures/results/mechanism_speed_mnist]
    python analysis/mechanism_speed.py --paper --runs R8 [--workers 2]
        [--record paper_figures/results/mechanism_speed_mnist_8x128]
    python analysis/mechanism_speed.py --readme RECORD

``--from-runs`` is the confirmation's runs folder (``analysis/mechanism_dashboard.py
--confirm none --runs ...``); its runs are copied with their latest checkpoints into ``R``
(nothing there is overwritten) and resumed there; ρ is read from the confirmation's record.
``--paper`` trains the replication's runs from scratch and measures ρ on their epoch-3
checkpoints (cached in each run directory, ``natgrad.analysis.runs.unit_table``).
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
    PAPER_LAYERS,
    PAPER_PROBE,
    PAPER_SEEDS,
    PERMUTATIONS,
    RESAMPLES,
    RHO,
    RHO_EST,
    SECONDARY_DIFFS,
    SEEDS,
    paper_study,
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
    RHO: f"ρ(plain) over live units, epoch {FROM_EPOCH}",
    RHO_EST: f"ρ(plain) over estimable units, epoch {FROM_EPOCH}",
    "estimable": f"share of estimable units, epoch {FROM_EPOCH}",
    "mean_act": f"median absolute mean activation, epoch {FROM_EPOCH}",
}
DECLARED = {"small": "7558a62", "paper": "e200087"}  # the commits of the two declarations
LABELS |= {  # the correlations, named as endpoints() names them
    f"link: Δ{RHO} vs Δ{FALL}": "ELU − ReLU in ρ over live units vs ELU − ReLU in the fall",
    f"link: Δ{RHO_EST} vs Δ{FALL}": "ELU − ReLU in ρ over estimable units vs ELU − ReLU in the fall",
    f"elu: {RHO} vs {FALL}": "ELU: its ρ over live units vs its fall",
    f"relu: {RHO} vs {FALL}": "ReLU: its ρ over live units vs its fall",
}
PAPER_SECONDARY = ("estimable", "mean_act")  # the replication's further secondary differences
# ρ over estimable units, "reported beside" the replication's first endpoint (its declared
# limit) but not in its declared secondary list: added after the results, in a family of its own
ADDED = "added after the results"


def per_run(curves, rho):
    """One row per (arm, seed): the losses the endpoints use, and the measures at epoch 3 of
    ``rho`` (one row per arm, seed and epoch: :func:`confirmation_rho`, or the replication's
    :func:`measure` table), every column of it."""
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
    at = rho[rho["epoch"] == FROM_EPOCH].drop(columns="epoch")
    return pd.DataFrame(rows).merge(at, on=["arm", "seed"], how="left", validate="1:1")


def confirmation_rho():
    """The first study's ρ: the third confirmation's per-run ρ over live and over estimable
    units (its committed ``dashboard.csv``)."""
    from natgrad.analysis.csvtables import read_csv

    return read_csv(CONFIRMATION / "dashboard.csv")[["arm", "seed", "epoch", RHO, RHO_EST]]


def measure(runs, workers: int):
    """The replication's per-run measures at epoch 3 (the dashboard's, on this net's layers
    and probe): the medians over live and over estimable units of the jackknifed ρ(plain),
    the share of estimable units, and the median |mean activation| of the hidden units on
    the same images. The per-unit tables are cached in the runs
    (:func:`natgrad.analysis.runs.unit_table`)."""
    import pandas as pd

    from natgrad.analysis.runs import load_model, probe_set, unit_table
    from natgrad.analysis.stats import unit_medians
    from natgrad.training.recording import median_abs_mean

    units = unit_table([r.path for r in runs], epochs=[FROM_EPOCH], probe_size=PAPER_PROBE,
                       layers=PAPER_LAYERS, workers=workers, grad="train", jackknife=True,
                       progress=True)  # fmt: skip
    rows = []
    for r in runs:  # as the dashboard measures a run (unit_medians, median_abs_mean, float64)
        x, _ = probe_set(r.path, PAPER_PROBE)
        model = load_model(r.path, FROM_EPOCH).double().eval()
        rows.append(dict(arm=r.arm, seed=r.seed, epoch=FROM_EPOCH,
                         **unit_medians(units[units["run"] == r.path.name]),
                         mean_act=median_abs_mean(model, x.double())))  # fmt: skip
    return pd.DataFrame(rows)


def endpoints(table, nearer: bool = False):
    """The declared endpoints, one row each: ``family`` (primary, secondary), ``endpoint``,
    ``kind`` (ELU − ReLU difference, or Spearman correlation), ``value``, ``lo``, ``hi``,
    ``ci_method``, ``p``, ``n``, ``p_at_floor`` (the p is a bound: no random sign pattern or
    pairing drawn was as extreme), ``p_holm`` (Holm within the family). ``nearer``: the
    replication's, whose first primary is ELU − ReLU in ρ and whose secondary differences
    add :data:`PAPER_SECONDARY`, and ELU − ReLU in ρ over estimable units in a family of its
    own (:data:`ADDED`: not declared as a secondary, so not in their Holm family)."""
    import pandas as pd

    from natgrad.analysis.endpoints import Endpoint, evaluate, with_holm
    from natgrad.analysis.stats import rank_correlation, sign_flip_at_floor

    wide = table.pivot(index="seed", columns="arm")
    delta = {m: wide[m]["elu"] - wide[m]["relu"] for m in (FALL, RHO, RHO_EST)}

    def corr(family, name, x, y):
        r = rank_correlation(x, y, resamples=RESAMPLES, permutations=PERMUTATIONS)
        return dict(family=family, endpoint=name, kind="Spearman", value=r["r"], lo=r["lo"],
                    hi=r["hi"], ci_method=r["ci_method"], p=r["p"], n=r["n"],
                    p_at_floor=r["p_at_floor"])  # fmt: skip

    def diff(family, metric):
        r = evaluate(table, [Endpoint(metric, "elu", "relu")], group="arm").iloc[0]
        return dict(family=family, endpoint=metric, kind="ELU − ReLU", value=r["diff"],
                    lo=r["lo"], hi=r["hi"], ci_method=r["ci_method"], p=r["p"], n=r["n"],
                    p_at_floor=sign_flip_at_floor(r["p"], int(r["n"])))  # fmt: skip

    rows = [*([diff("primary", RHO)] if nearer else []),
            diff("primary", FALL),
            corr("primary", f"link: Δ{RHO} vs Δ{FALL}", delta[RHO], delta[FALL]),
            *(corr("secondary", f"{arm}: {RHO} vs {FALL}", wide[RHO][arm], wide[FALL][arm])
              for arm in ("elu", "relu")),
            corr("secondary", f"link: Δ{RHO_EST} vs Δ{FALL}", delta[RHO_EST], delta[FALL]),
            *(diff("secondary", m) for m in SECONDARY_DIFFS),
            *(diff("secondary", m) for m in (PAPER_SECONDARY if nearer else ())),
            *([diff(ADDED, RHO_EST)] if nearer else [])]  # fmt: skip
    return with_holm(pd.DataFrame(rows))


def figure(table, curves, out: Path) -> list[Path]:
    """Left: ELU − ReLU in ρ at epoch 3 against ELU − ReLU in the fall, one point per seed;
    right: each arm's mean log10 training loss over epochs 1–10 with its 95 % CI band."""
    import numpy as np

    from natgrad.analysis.plots import file_subplots, save_figure
    from natgrad.analysis.stats import mean_ci, mean_ci_name
    from natgrad.units import unit_type_colour, unit_type_label

    wide = table.pivot(index="seed", columns="arm")
    fig, (a, b) = file_subplots(1, 2, figsize=(9.5, 3.6))
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
    return save_figure(fig, out / "speed", dpi=120)


def _ci(r) -> str:
    from natgrad.analysis.report import ci_text

    return ci_text(r["value"], r["lo"], r["hi"])


def _p(r, p: float) -> str:
    """``p`` (the row's p or its Holm value) as printed: a bound where the row's raw p sits at
    the floor of the random sign patterns or pairings drawn (``p_at_floor``)."""
    from natgrad.analysis.report import p_text

    return p_text(p, r["p_at_floor"])


def _reading(r) -> str:
    """The declared rule: resolved where the Holm p is < 0.05 and the CI excludes 0."""
    from natgrad.analysis.stats import declared_sign

    sign = declared_sign(r)
    if r["kind"] == "Spearman":
        return {1: "positive", -1: "negative", 0: "not resolved"}[sign]
    if r["endpoint"] in (RHO, RHO_EST):
        return {1: "ELU nearer", -1: "ReLU nearer", 0: "not resolved"}[sign]
    return {1: "ELU's falls further", -1: "ReLU's falls further", 0: "not resolved"}[sign]


def _label(r) -> str:
    """How the README names an endpoint row of ``endpoints.csv``."""
    if r["kind"] == "Spearman":
        return f"{LABELS[r['endpoint']]} (Spearman)"
    return f"ELU − ReLU in {LABELS[r['endpoint']]}"


def _primary_name(r) -> str:
    if r["kind"] == "Spearman":
        return "link: " + LABELS[r["endpoint"]]
    return "nearer: ELU − ReLU in ρ" if r["endpoint"] == RHO else "speed: ELU − ReLU in the fall"


def readme(record: Path) -> str:
    """The record's README, every number read from its own tables; ``run.json``'s
    ``variant`` (``"paper"``: the replication; absent: the resumed confirmation's runs) says
    which declaration it answers."""

    from natgrad.analysis.csvtables import read_csv
    from natgrad.analysis.record import read_meta, rebuilt_by
    from natgrad.analysis.stats import mean_ci_name, sign_flip_method

    meta = read_meta(record)
    paper = meta.get("variant") == "paper"
    eps = read_csv(record / "endpoints.csv")
    table = read_csv(record / "per_run.csv")
    n = int(eps["n"].max())
    means = table.groupby("arm")[FALL].mean()
    wide = table.pivot(index="seed", columns="arm")
    ahead = int((wide[FALL]["elu"] > wide[FALL]["relu"]).sum())
    rows = eps.to_dict("records")
    prim = [r for r in rows if r["family"] == "primary"]
    by = {r["endpoint"]: r for r in rows}
    speed, link = by[FALL], prim[-1]
    count = {2: "two", 3: "three"}[len(prim)]
    if paper:
        title = (
            "# Does a nearer plain gradient make training faster? The replication on the "
            f"paper's net (`mnist-fc` 8×128), {len(PAPER_SEEDS)} seeds"
        )
        cost = (
            f"{meta['train_seconds']:.0f} s training and {meta['measure_seconds']:.0f} s "
            f"measuring {meta['runs']} runs"
        )
        what = (
            f"(committed at `{meta['declared']}`), the replication: `mnist-fc` 8×128 on "
            f"MNIST, ELU and ReLU without normalisation, SGD lr 0.01, batch 64, {EPOCHS} "
            f"epochs, trained from scratch on new seeds {min(PAPER_SEEDS)}–"
            f"{max(PAPER_SEEDS)}. ρ is the median over the live units of "
            f"{PAPER_LAYERS[0]}–{PAPER_LAYERS[-1]} of the jackknifed ρ(plain) at epoch "
            f"{FROM_EPOCH} (exact unit Fishers on all {PAPER_PROBE:,} validation images, "
            "λ = 1e-3, g the training set's mean gradient), measured here; "
        )
        tables = "`per_run.csv`, `rho.csv`, `endpoints.csv`, `curves.csv`"
        seen = "No training loss or measure of these runs was read before the declaration."
    else:
        title = (
            "# Does a nearer plain gradient make training faster? The third mechanism "
            f"confirmation's runs, resumed from epoch {FROM_EPOCH} to {EPOCHS}"
        )
        cost = f"{meta['train_seconds']:.0f} s resuming {meta['runs']} runs"
        what = (
            f"(committed at `{meta['declared']}`): the {meta['runs']} runs of the third "
            "confirmation ([mechanism_dashboard_mnist_confirm_none]"
            "(../mechanism_dashboard_mnist_confirm_none/README.md): ELU and ReLU without "
            f"normalisation, seeds {min(SEEDS)}–{max(SEEDS)}, `mnist-fc` 3×64 on MNIST, SGD "
            f"lr 0.01, batch 64), copied with their epoch-{FROM_EPOCH} checkpoints and "
            f"resumed by the same trainer to epoch {EPOCHS}, nothing else changed. ρ is the "
            "median over the live units of fc2–fc4 of the jackknifed ρ(plain) at epoch "
            f"{FROM_EPOCH} (exact unit Fishers on 5,000 validation images, λ = 1e-3, g the "
            "training set's mean gradient), read from that record; "
        )
        tables = "`per_run.csv`, `endpoints.csv`, `curves.csv`"
        seen = (
            "Before the declaration the epoch-0 and epoch-1 rows of one run (ELU, seed 25) "
            "had been seen while checking the runs' format, and its epoch-2 and epoch-3 "
            "rows at the launch; no other training loss of these runs."
        )
    lines = [
        title, "",
        f"- **Command:** `{meta['command']}` at `{meta['commit']}`; {cost} (wall) on "
        f"{meta['device']}." + rebuilt_by(record, __file__, meta),
        "- **Declared before its runs** in `natgrad/studies/mechanism_speed.py` " + what +
        f"the fall is log10 L{FROM_EPOCH} − log10 L{EPOCHS}, L the training loss of an epoch (the "
        f"trainer's running mean). Tables: {tables}; figure `speed.png`.", "",
        f"## Primary endpoints (Holm over the {count})", "",
        f"The {'differences' if paper else 'speed endpoint'}: {mean_ci_name()} 95 % CI over {n} seeds, "
        f"{sign_flip_method(n)}. The link: Spearman's correlation over seeds, BCa bootstrap "
        f"CI ({RESAMPLES:,} resamples), two-sided permutation p ({PERMUTATIONS:,} random "
        "pairings). The declared rule: resolved where the Holm p is < 0.05 and the CI "
        "excludes 0.", "",
        "| endpoint | value [95 % CI] | p | Holm p | reading |",
        "| --- | --- | ---: | ---: | --- |",
        *(f"| {_primary_name(r)} | {_ci(r)} | {_p(r, r['p'])} | {_p(r, r['p_holm'])} | "
          f"{_reading(r)} |" for r in prim),
        "",
        f"Mean fall: ELU {means['elu']:.3f}, ReLU {means['relu']:.3f} (log10 units); ELU's "
        f"falls further on {ahead} of {n} seeds.", "",
        "**Reading.** " + _capital("; ".join(f"{_primary_name(r).split(':')[0]}: "
                                             f"{_reading(r)}" for r in prim)) + ". "
        + _text(speed, link, by[f"log_train_loss_e{FROM_EPOCH}"], by["log_train_loss_auc"],
                by.get(RHO), paper) + (_estimable_text(by[RHO_EST], by["estimable"], by[RHO]) if paper else ""),
        "", "## Secondary (descriptive), Holm within the family", "",
        "| measure | value [95 % CI] | seeds | Holm p |", "| --- | --- | ---: | ---: |",
        *(f"| {_label(r)} | {_ci(r)} | {int(r['n'])} | {_p(r, r['p_holm'])} |"
          for r in rows if r["family"] == "secondary"),
        *(["", "## Added after the results were seen (not in a Holm family)", "",
           "Reported beside the first endpoint, as the declared limit below says, but not "
           "declared as a secondary endpoint; its p is unadjusted.", "",
           "| measure | value [95 % CI] | seeds | p |", "| --- | --- | ---: | ---: |",
           *(f"| {_label(r)} | {_ci(r)} | {int(r['n'])} | "
             f"{_p(r, r['p'])} |" for r in rows if r["family"] == ADDED)]
          if paper else []),
        "", "## Limits (declared before the run)", "",
        "The link and the per-unit correlations are associations over seeds, not causes: a "
        "seed's initial weights shape both its ρ and its later course. The fall depends on "
        f"where the loss stands at epoch {FROM_EPOCH} (a lower loss may have less far to fall), "
        "so the levels are reported beside it. One net, one data set, one rate; speed in "
        "epochs, not seconds." + (
            " On this net fewer of ReLU's units may be estimable, so the live-unit median of the "
            "first endpoint may differ from the estimable-unit one (reported beside it)."
            if paper else ""), "", "## What was seen before the declaration", "", seen, "",
    ]  # fmt: skip
    return "\n".join(lines)


def _estimable_text(est, share, nearer) -> str:
    """The replication's first endpoint beside its declared limit: ELU − ReLU in ρ over
    estimable units (added after the results) and in their share (secondary)."""
    from natgrad.analysis.report import ci_text
    from natgrad.analysis.stats import declared_sign

    said = {"ELU nearer": "ELU is nearer there too", "ReLU nearer": "ReLU is nearer there",
            "not resolved": "the difference is not resolved there"}[_reading(est)]  # fmt: skip
    text = (" (Added after the results were seen.) Over estimable units only (n_eff ≥ 2(d+1)) "
            f"ELU − ReLU in ρ at epoch {FROM_EPOCH} is {ci_text(est['value'], est['lo'], est['hi'])}: "
            f"{said}; ELU − ReLU in the share of estimable units is "
            f"{ci_text(share['value'], share['lo'], share['hi'])} (secondary).")  # fmt: skip
    more = declared_sign(share) == 1
    if _reading(nearer) == "ELU nearer" and _reading(est) != "ELU nearer" and more:
        text += (" So the live-unit difference of the first endpoint may rest on ReLU's units "
                 "whose blocks are not estimable, as the declared limit foresaw.")  # fmt: skip
    return text


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _text(speed, link, level, auc, nearer, paper: bool) -> str:
    """What the readings say together, in the terms of the paper's mechanism (``level``: the
    secondary row of ELU − ReLU in the loss at the measure, ``auc`` its row of the log10
    training-loss AUC over every epoch; ``nearer``: the replication's primary row of ELU −
    ReLU in ρ, else the third confirmation's reading holds). The first record's wording was
    written after its results were seen, and the replication's AUC sentence after its own:
    each says so."""
    from natgrad.analysis.report import ci_text, outward
    from natgrad.analysis.stats import declared_sign

    s, k = _reading(speed), _reading(link)
    near = _reading(nearer) == "ELU nearer" if paper else True
    who = "by the first endpoint" if paper else "by the third confirmation"
    faster = {"ELU's falls further": ("ELU", "ReLU", "also fell faster"),
              "ReLU's falls further": ("ReLU", "ELU", "did not fall faster")}  # fmt: skip
    if s in faster:
        a, b, verb = faster[s]
        said = f"{a}'s training loss falls further than {b}'s after epoch {FROM_EPOCH}" + (
            f": the loss of ELU, whose plain gradient is the nearer ({who}), {verb} after the "
            "measure here" if near else "")  # fmt: skip
    else:
        said = (f"the design does not resolve which loss falls further after epoch {FROM_EPOCH} "
                "(read the size from the CI)")  # fmt: skip
    hi, lo = outward(link["hi"], True), outward(link["lo"], False)
    tied = {"positive": "seeds where ELU's plain gradient is relatively nearer are those where "
                        "its loss falls relatively further, as the mechanism predicts (an "
                        "association)",
            "negative": "seeds where ELU's plain gradient is relatively nearer are those where "
                        "its loss falls relatively less, against the mechanism's prediction",
            "not resolved": "over seeds no association between the relative nearness at epoch "
                            f"{FROM_EPOCH} and the relative fall is resolved: the CI leaves out "
                            f"correlations above {hi} and below {lo}"
                            + (", among them the 0.3 the design was sized to find"
                               if link["hi"] < 0.3 else "")}[k]  # fmt: skip
    text = f"{_capital(said)}; {tied}."
    stood = declared_sign(level)
    lead = {"ReLU's falls further": 1, "ELU's falls further": -1}.get(s, 0)  # who stood lower
    if lead and stood == lead:
        text += (f" {'ELU' if stood == 1 else 'ReLU'}'s training loss stood higher at epoch "
                 f"{FROM_EPOCH} (secondary table), so the declared limit that a lower loss may "
                 f"have less far to fall does not explain the larger fall.")  # fmt: skip
    elif lead and stood == -lead:
        text += (f" {'ELU' if stood == 1 else 'ReLU'}'s training loss stood higher at epoch "
                 f"{FROM_EPOCH} (secondary table): by the declared limit a lower loss may have "
                 "less far to fall, so part of the difference in the fall may follow where the "
                 "two stood.")  # fmt: skip
    sign = declared_sign(auc)
    whole = {-1: "lower than ReLU's: ELU learned faster over the run as a whole",
             1: "higher than ReLU's: ELU learned slower over the run as a whole",
             0: "not resolved from ReLU's"}[sign]  # fmt: skip
    text += (f"{' (Added after the results were seen.)' if paper else ''} Over epochs "
             f"1–{EPOCHS} ELU's log10 training-loss AUC is {whole} (secondary, "
             f"{ci_text(auc['value'], auc['lo'], auc['hi'])}).")  # fmt: skip
    if not paper:
        text = (
            "(Worded after the results were seen; the readings follow the declared rule.) " + text
        )
    return text


def run(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/mechanism_speed"))
    parser.add_argument("--from-runs", type=Path, default=None,
                        help="the third confirmation's runs folder, copied into --runs first")  # fmt: skip
    parser.add_argument("--paper", action="store_true",
                        help="the replication on the paper's 8x128 net (trained from scratch)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--note", default=None,
                        help="a note for run.json and the README (e.g. how the runs were "
                             "trained when not by this command)")  # fmt: skip
    parser.add_argument("--readme", type=Path, default=None, metavar="RECORD",
                        help="only (re)write the record's README.md from its tables")  # fmt: skip
    args = parser.parse_args(argv)
    if args.readme:
        write_text(args.readme / "README.md", readme(args.readme))
        return 0
    from natgrad.training.carry import copy_runs

    s = paper_study() if args.paper else study()
    if args.from_runs and not args.paper:
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
    rho = measure(s.plan(args.runs), args.workers) if args.paper else confirmation_rho()
    t_measure = time.perf_counter() - t0 - t_train
    table = per_run(curves, rho)
    eps = endpoints(table, nearer=args.paper)
    print(eps.round(4).to_string(index=False))
    if args.record:
        from natgrad.analysis.record import record_tables

        tables = {"per_run": table, "endpoints": eps, "curves": curves}
        declared = {"declared": DECLARED["paper" if args.paper else "small"],
                    **({"variant": "paper", "measure_seconds": t_measure} if args.paper else {}),
                    **({"note": args.note} if args.note else {})}  # fmt: skip
        record_tables(args.record, {**tables, **({"rho": rho} if args.paper else {})},
                      argv=argv, script="analysis/mechanism_speed.py", train_seconds=t_train,
                      runs=len(table), **declared,
                      device=f"cpu, {args.workers} worker process(es) of one torch thread")  # fmt: skip
        figure(table, curves, args.record)
        write_text(args.record / "README.md", readme(args.record))
    return 0


if __name__ == "__main__":
    sys.exit(run())
