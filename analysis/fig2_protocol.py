"""Study: the paper's Fig 2 protocol — mnist-fc (784 → 8×128 → 10) on Fashion-MNIST, ELU,
ReLU, LReLU and SReLU × 5 seeds, SGD lr 0.01, batch 64, 300 epochs — trained as one grid.

    python analysis/fig2_protocol.py [--epochs 300] [--runs runs/fig2] [--record DIR]

The 20 runs train as one batched model (:func:`natgrad.training.grid.train_grid`, one run
directory each). ``--epochs E`` stops at epoch E; the same command with a larger ``--epochs``
resumes every run from its last checkpoint (every 25 epochs and the last), so the protocol
can be run in pieces. ``--record DIR`` writes what to commit: ``curves.csv`` (per run and
epoch: losses, test error, median unit mean activation), ``claims.csv`` (per run: the paper's
claims from :func:`natgrad.analysis.stats.claims_per_seed`), ``paired.csv`` (ELU against each
other unit, paired by seed: mean difference, 95 % bootstrap CI, exact sign-flip p), the
Fig 2 figure and ``README.md`` (command, commit, wall time, the answer from the CIs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

UNITS = ("elu", "relu", "lrelu", "srelu")
#: Per data set: seeds, and the epochs besides every 25th whose checkpoints are kept for the
#: mechanism's analysis (ρ along training; MNIST only, declared before the run).
SETTINGS = {
    "fashion-mnist": dict(seeds=5, checkpoint_epochs=()),
    "mnist": dict(seeds=10, checkpoint_epochs=(1, 3, 10)),
}
METRICS = ("train_loss_auc", "abs_median_activation", "median_activation_var", "test_error")

#: The mechanism along the protocol (MNIST; declared before its runs were analysed): at these
#: epochs, for every unit of the layers fed by hidden units, the exact unit Fisher on the
#: whole validation split (10,000 held-out images; median n_eff/(d+1) ≈ 10 at epoch 1) and
#: g = the training set's mean loss gradient (the direction plain SGD follows in
#: expectation), one relative damping λ = 1e-3 for every unit type.
MECHANISM = dict(
    epochs=(0, 1, 3, 10, 25, 50, 100, 150, 200, 300),
    layers=tuple(f"fc{i}" for i in range(2, 10)),
    probe_size=None,
    grad="train",
    rel_damping=1e-3,
)
RHO = ("rho_plain", "rho_centred", "rho_quasidiagonal", "rho_blockdiag")


def mechanism_tables(runs: list[Path], *, workers: int = 1, units=UNITS, progress=True):
    """Per run × epoch × layer (``layers``) and per run × epoch (``seeds``, the replicate
    values: medians over the run's analysed units) of ρ, n_eff/(d+1) and the estimable
    fraction, at the :data:`MECHANISM` epochs each run has a checkpoint for. Unit tables
    are cached in the run directories, so a later call computes only new checkpoints."""
    import pandas as pd

    from natgrad.analysis.runs import checkpoint_epochs, unit_table
    from natgrad.analysis.stats import seed_values

    chosen = [r for r in runs if r.name.split("-s")[0] in units]
    frames = []
    for run in chosen:
        have = [e for e in MECHANISM["epochs"] if e in checkpoint_epochs(run)]
        if have:
            frames.append((run, have))
    tables = []
    for run, have in frames:  # one run at a time: its cache entries are written as it goes
        tables.append(unit_table([run], epochs=have, probe_size=MECHANISM["probe_size"],
                                 rel_damping=MECHANISM["rel_damping"],
                                 layers=list(MECHANISM["layers"]), grad=MECHANISM["grad"],
                                 workers=workers, progress=progress))  # fmt: skip
    units_t = pd.concat(tables, ignore_index=True)
    units_t["n_eff_over_d1"] = units_t["n_eff"] / (units_t["fan_in"] + 1)
    live = units_t[units_t["dead"] == 0]
    keys = ["run", "unit_type", "seed", "epoch", "layer"]
    layers = live.groupby(keys)[[*RHO, "n_eff_over_d1", "estimable"]].median().reset_index()
    layers["dead"] = units_t.groupby(keys)["dead"].mean().to_numpy()
    seeds = seed_values(units_t, list(RHO), by=("unit_type", "seed", "epoch"))
    return layers, seeds


def configs(epochs: int, data_dir: str | None, dataset: str = "fashion-mnist"):
    from natgrad.training import default_config

    setting = SETTINGS[dataset]
    return [
        default_config("mnist-fc", dataset=dataset, data_dir=data_dir, unit=u, seed=s,
                       epochs=epochs, lr=0.01, batch_size=64, checkpoint_every=25,
                       checkpoint_epochs=setting["checkpoint_epochs"])
        for s in range(setting["seeds"]) for u in UNITS
    ]  # fmt: skip


def record(runs: list[Path], out: Path, meta: dict) -> str:
    """Write the tables, figure and README of the runs into ``out``; returns the README."""
    import pandas as pd

    from natgrad.analysis.runs import curve_table
    from natgrad.analysis.stats import claims_per_seed, paired_comparison

    out.mkdir(parents=True, exist_ok=True)
    curves = curve_table(runs)
    curves.to_csv(out / "curves.csv", index=False)
    claims, threshold = claims_per_seed(curves)
    claims.to_csv(out / "claims.csv", index=False)
    paired = pd.concat([paired_comparison(claims, m) for m in METRICS], ignore_index=True)
    paired.to_csv(out / "paired.csv", index=False)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "paper_figures"))
    import fig2_mean_activation

    fig2_mean_activation.main(["--runs", str(meta["runs"]), "--out", str(out)])
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
        "diff = mean over 5 seeds of (ELU − other); 95 % percentile bootstrap CI over seeds; "
        "p: exact two-sided sign-flip test (5 seeds cannot go below p = 0.0625). "
        f"train_loss_auc: mean training loss over epochs 1..{epochs}; abs_median_activation: "
        f"|median over hidden units of their mean activation| at epoch {epochs}; "
        "median_activation_var: its variance over epochs 1..E (the paper's Appendix C); "
        "test_error: mean of the last 3 epochs.",
        "",
        "| metric | other | diff (ELU − other) | 95 % CI | p | reading |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in paired.itertuples():
        lines.append(f"| {r.metric} | {r.other} | {r.diff:+.4g} | {r.lo:+.4g} to {r.hi:+.4g} "
                     f"| {r.p:.3g} | {r.text} |")  # fmt: skip
    lines += ["", f"## Epoch {epochs}, mean (sd) over seeds", "",
              "| unit | train loss | test loss | test error | median activation |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for unit, row in final.iterrows():
        cells = [f"{row[(c, 'mean')]:.4g} ({row[(c, 'std')]:.2g})"
                 for c in ("train_loss", "test_loss", "test_error", "median_all")]  # fmt: skip
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    lines += ["", "![Fig 2](fig2_mean_activation.png)", ""]
    text = "\n".join(lines)
    (out / "README.md").write_text(text)
    (out / "run.json").write_text(json.dumps(dict(meta, threshold=threshold), indent=1) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    from natgrad.training import git_commit
    from natgrad.training.checkpoint import latest_epoch
    from natgrad.training.grid import train_grid
    from natgrad.training.loop import describe_device, resolve_device

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
    parser.add_argument("--mechanism", action="store_true",
                        help="MNIST: also compute ρ along training at the declared epochs")
    parser.add_argument("--mechanism-units", default=",".join(UNITS),
                        help="unit types whose runs the mechanism analyses (comma-separated)")
    parser.add_argument("--no-train", action="store_true", help="skip training (analyse only)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the mechanism")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfgs = configs(args.epochs, args.data_dir, args.dataset)
    dirs = [args.runs / f"{c.unit}-s{c.seed}" for c in cfgs]
    start = min((latest_epoch(d) or 0) if d.exists() else 0 for d in dirs)
    commit, t0 = git_commit(), time.perf_counter()
    if not args.no_train:
        train_grid(cfgs, dirs, device=args.device)
    wall = time.perf_counter() - t0
    print(f"trained epochs {start + 1}..{args.epochs} of {len(cfgs)} runs in {wall:.0f} s")
    if args.mechanism:
        t1 = time.perf_counter()
        layers, seeds = mechanism_tables(dirs, workers=args.workers,
                                         units=tuple(args.mechanism_units.split(",")))  # fmt: skip
        print(f"mechanism: {len(seeds)} run-epochs in {time.perf_counter() - t1:.0f} s")
        print(seeds.groupby(["unit_type", "epoch"])[["rho_plain", "n_eff_over_d1"]].mean())
    if args.record:
        meta = dict(command="python analysis/fig2_protocol.py " + " ".join(sys.argv[1:]),
                    commit=commit, wall_seconds=wall, epochs_this_call=args.epochs - start,
                    threads=torch.get_num_threads(), runs=str(args.runs),
                    device=describe_device(resolve_device(args.device)))  # fmt: skip
        print(record(dirs, args.record, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
