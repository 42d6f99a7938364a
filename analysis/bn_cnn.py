"""Study (issue 23, item 2): the paper's batch-norm question (Fig 5, Table 1) on a CNN that fits
this CPU — does ELU have the lowest test error of the four units, and does batch norm help
ReLU but not ELU?

The declaration (net, arms, recipe, endpoints) is :mod:`natgrad.studies.bn_cnn`, committed
before any run.

    python analysis/bn_cnn.py train [--runs runs/bn_cnn] [--seeds F:C] [--arms a,b]
    python analysis/bn_cnn.py report [--runs runs/bn_cnn] --record paper_figures/results/bn_cnn_mnist
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from natgrad.analysis.stats import mean_ci_name
from natgrad.argtypes import seed_range
from natgrad.studies.bn_cnn import (  # noqa: F401 (the declaration, re-exported)
    ARMS,
    BATCH,
    CHANNEL_SCALE,
    EPOCHS,
    LR,
    SEEDS,
    STEPS,
    config,
    study,
)


def per_run(root: Path, seeds: range, arms=ARMS):
    r"""One row per finished run: test error at the best-validation epoch, the median time
    per iteration, the validation curve's minimum."""
    import pandas as pd

    from natgrad.training.rundir import RunDir

    rows = []
    for _, _, cfg, run in study(seeds, arms).finished(root):
        metrics = [r for r in RunDir(run).read_metrics() if 1 <= r["epoch"] <= cfg.epochs]
        best = min(metrics, key=_selection_key)
        times = sorted(r["seconds_per_iteration"] for r in metrics)
        rows.append(dict(unit_type=run.name.rsplit("-s", 1)[0], seed=cfg.seed,
                         best_val_epoch=best["epoch"], val_loss=best["val_loss"],
                         val_error=best.get("val_error"), test_error_at_best_val=best["test_error"],
                         train_loss_last=metrics[-1]["train_loss"],
                         seconds_per_iteration=times[len(times) // 2]))  # fmt: skip
    return pd.DataFrame(rows)


def _selection_key(row: dict) -> tuple[float, float, int]:
    """The declared selection: lowest validation *error*; ties (errors are multiples of
    1e-4 on 10,000 images) go to the lower validation loss, then the earlier epoch."""
    import math

    def num(v):
        return math.inf if v is None or not math.isfinite(v) else float(v)

    return num(row.get("val_error")), num(row.get("val_loss")), int(row["epoch"])


def primaries(values):
    r"""The declared endpoints (:data:`natgrad.studies.bn_cnn.ENDPOINTS`: the four primaries,
    Holm together, and the secondary BN effects, Holm together), one row each."""
    t = study().evaluate(values, group="unit_type")
    t = t.assign(endpoint=t["description"], seeds=t["n"])
    return t[["endpoint", "role", "seeds", "diff", "lo", "hi", "ci_method", "p", "p_holm"]]


PAPER_CLAIMS = (  # (claim, the paper's numbers: CIFAR-100, cifar-11 full width, 165k iterations)
    (
        "ELU has the lowest test error of the four units",
        "ELU 28.75 ± 0.24 %, SReLU 29.35 ± 0.29, LReLU 30.59 ± 0.29, ReLU 31.56 ± 0.37 (Fig 4; "
        "Wilcoxon p < 0.001)",
    ),
    ("batch norm helps ReLU more than ELU", "BN helps ReLU and LReLU, not ELU or SReLU (Fig 5)"),
    ("ELU beats ReLU+BN", "ELU below ReLU+BN (Fig 5)"),
    ("ELU/ReLU time per iteration", "1.058 (ImageNet, 12.15 h vs 11.48 h per 10k iterations)"),
)


def time_ratio(values):
    r"""ELU/ReLU time per iteration, paired by seed (the two runs of a seed ran one after the
    other in the same process): the geometric mean of the per-seed ratios with its CI (``stats.geometric_mean_ci``)."""
    from natgrad.analysis.stats import geometric_mean_ci

    wide = values.pivot(index="seed", columns="unit_type", values="seconds_per_iteration")
    ratio, lo, hi, seeds = geometric_mean_ci((wide["elu"] / wide["relu"]).to_numpy(dtype=float))
    return dict(ratio=ratio, lo=lo, hi=hi, seeds=seeds)


def figure(curves):
    r"""Fig 4 / Fig 5 of the paper on this study: (a) training loss and (b) validation error of
    the four units; (c) validation error of ReLU and ELU with and without batch norm. Mean ±
    sd over seeds; validation error from epoch 1 (the test set is not drawn)."""

    from natgrad.analysis.plots import file_subplots, plot_curves

    c = curves.rename(columns={"arm": "unit_type"})
    c = c[c["epoch"] >= 1].assign(val_error=lambda d: 100 * d["val_error"])
    four = c[c["unit_type"].isin(("elu", "relu", "lrelu", "srelu"))]
    bn = c[c["unit_type"].isin(("elu", "elu-bn", "relu", "relu-bn"))]
    fig, axes = file_subplots(1, 3, figsize=(12.0, 3.5))
    plot_curves(four, "train_loss", ax=axes[0], ylabel="training loss (running mean; geom. mean ×/÷ sd)",
                title="(a) training loss", log=True)  # fmt: skip
    plot_curves(four, "val_error", ax=axes[1], ylabel="validation error (%; geom. mean ×/÷ sd)",
                title="(b) validation error", log=True)  # fmt: skip
    plot_curves(bn, "val_error", ax=axes[2], ylabel="validation error (%; geom. mean ×/÷ sd)",
                title="(c) with and without batch norm", log=True)  # fmt: skip
    for ax in axes:
        ax.legend(frameon=False, fontsize="x-small")
    fig.tight_layout()
    return fig


def readme(values, table, ratio: dict, meta: dict) -> str:
    r"""The results' text, written from the CIs (whichever way they point)."""
    from natgrad.units import unit_type_label

    def pct(x):
        return f"{100 * x:+.3f}"

    def ci(row):
        return f"{pct(row['diff'])} ({pct(row['lo'])} to {pct(row['hi'])}) points"

    def verdict(row, lower_good: str, higher_good: str):
        if not (row["lo"] > 0 or row["hi"] < 0):
            return "no difference resolved"
        said = lower_good if row["hi"] < 0 else higher_good
        if row["role"] == "primary" and not row["p_holm"] < 0.05:
            return f"{said} by the CI, but not significant after Holm"
        return said

    by = {r["endpoint"]: r for r in table.to_dict("records")}
    stats = values.groupby("unit_type")["test_error_at_best_val"].agg(["mean", "std", "count"])
    stats["loss"] = values.groupby("unit_type")["train_loss_last"].median()
    stats["best"] = values.groupby("unit_type")["best_val_epoch"].median()
    stats = stats.reindex([a for a in ARMS if a in stats.index])
    lines = [
        "# Batch norm on a CNN (MNIST): the paper's Fig 4/5 question at a scale that fits",
        "",
        f"Command: `{meta['command']}`  ",
        f"Commit of the runs: `{meta['run_commit']}`; of this report: `{meta['commit']}`  ",
        f"Training: {meta['runs']} runs, {meta['train_seconds']:.0f} s of training summed "
        f"(one torch thread per process, two processes on a 2-core CPU, over two sessions).",
        "",
        "**Scale (declared in `analysis/bn_cnn.py` before any run):** the paper's cifar-11 "
        f"recipe at {CHANNEL_SCALE:g} of its widths (24–38 channels, 26,597 parameters) on MNIST "
        f"(50,000 training, 10,000 validation, 10,000 test images), {EPOCHS} epochs of batch "
        f"{BATCH} (the paper: 165k iterations on CIFAR-100), SGD momentum 0.9, L2 5e-4, the "
        "per-stack dropout and the step schedule scaled (0.01, ÷2 at 21 %, then ÷10 at 52 % "
        "and 82 % of the run); seeds 0–9, run j of every arm from the same initial weights; "
        "every arm at the paper's one recipe (no arm tuned, as in the paper). "
        "Endpoint: test error at the epoch of lowest validation error.",
        "",
        "## Test error at the best-validation epoch (%, mean ± sd over seeds)",
        "",
        "| arm | mean | sd | seeds | training loss, last epoch (median) | best-val. epoch "
        "(median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, r in stats.iterrows():
        lines.append(f"| {unit_type_label(arm, tex=False)} | {100 * r['mean']:.3f} | "
                     f"{100 * r['std']:.3f} | {int(r['count'])} | {r['loss']:.3f} | "
                     f"{r['best']:g} |")  # fmt: skip
    slow = stats["loss"].max() / stats["loss"].min()
    lines += ["", f"After {EPOCHS} epochs the arms stand at very different points of training "
              f"(the last epoch's training loss — the running mean over its steps, dropout on — "
              f"differs {slow:.1f}-fold between arms): at this scale the test error at the "
              "best-validation epoch measures what the scaled recipe reaches in "
              f"{EPOCHS} epochs, much of it speed of learning, not converged nets."]  # fmt: skip
    lines += ["", f"## Declared comparisons (paired by seed; {mean_ci_name()} 95 % CI; exact sign-flip p; "
              "Holm over the four primaries)", "",
              "| endpoint | role | difference (points) | 95 % CI | p | Holm p |",
              "| --- | --- | ---: | --- | ---: | ---: |"]  # fmt: skip
    for r in table.to_dict("records"):
        holm = "" if r["role"] != "primary" else f"{r['p_holm']:.3g}"
        lines.append(f"| {r['endpoint']} | {r['role']} | {pct(r['diff'])} | "
                     f"[{pct(r['lo'])}, {pct(r['hi'])}] | {r['p']:.3g} | {holm} |")  # fmt: skip
    four = [by[f"elu - {o}"] for o in ("relu", "lrelu", "srelu")]
    lowest = all(r["hi"] < 0 and r["p_holm"] < 0.05 for r in four)
    inter = by["(relu - relu-bn) - (elu - elu-bn)"]
    elu_bn, relu_bn = by["elu - elu-bn"], by["relu - relu-bn"]
    vs_relu_bn = by.get("elu - relu-bn")
    lines += ["", "## Reading (from the CIs)", ""]
    lines.append(
        "- **Is ELU's test error the lowest of the four?** "
        + "; ".join(f"ELU − {unit_type_label(o, tex=False)} {ci(r)}, Holm p {r['p_holm']:.3g}: "
                    + verdict(r, "ELU lower", "ELU higher")
                    for o, r in zip(("relu", "lrelu", "srelu"), four, strict=True))
        + (". ELU is lower than each of the three." if lowest else
           ". So ELU is not shown to be the lowest of the four at this scale.")
    )  # fmt: skip
    lines.append(
        f"- **Does batch norm help ReLU more than ELU?** (ReLU − ReLU+BN) − (ELU − ELU+BN) = "
        f"{ci(inter)}, Holm p {inter['p_holm']:.3g}: "
        + verdict(inter, "batch norm helps ELU more than ReLU",
                  "batch norm helps ReLU more than ELU")
        + f". Separately (secondary): batch norm changes ReLU's error by {ci(relu_bn)} "
        f"(ReLU − ReLU+BN; positive = BN helps) — {verdict(relu_bn, 'BN hurts ReLU', 'BN helps ReLU')}"
        f" — and ELU's by {ci(elu_bn)} — {verdict(elu_bn, 'BN hurts ELU', 'BN helps ELU')}."
    )  # fmt: skip
    if vs_relu_bn is not None:
        lines.append(f"- **Does ELU beat ReLU+BN?** (secondary) ELU − ReLU+BN {ci(vs_relu_bn)}: "
                     + verdict(vs_relu_bn, "ELU lower", "ELU higher") + ".")  # fmt: skip
    lines.append(
        f"- **Time per iteration:** ELU/ReLU {ratio['ratio']:.3f} ({ratio['lo']:.3f} to "
        f"{ratio['hi']:.3f}; geometric mean of {ratio['seeds']} per-seed ratios of the median "
        "seconds per iteration, the two runs of a seed in one process). The runs shared the "
        "CPU with a second study process and other work, so this ratio is noisy; "
        "`bench/unit_time.py` measures it on a quiet CPU (`bench/results/unit_time_cpu.txt`)."
    )  # fmt: skip
    lines += ["", "## Side by side with the paper", "",
              "| claim | paper (CIFAR-100, cifar-11, full width) | here (MNIST, 1/8 width, "
              f"{EPOCHS} epochs) |", "| --- | --- | --- |"]  # fmt: skip
    here = {
        PAPER_CLAIMS[0][0]: "; ".join(f"ELU − {unit_type_label(o, tex=False)} {ci(r)}"
                                      for o, r in zip(("relu", "lrelu", "srelu"), four, strict=True)),
        PAPER_CLAIMS[1][0]: f"interaction {ci(inter)}; ReLU − ReLU+BN {ci(relu_bn)}; "
                            f"ELU − ELU+BN {ci(elu_bn)}",
        PAPER_CLAIMS[2][0]: ci(vs_relu_bn) if vs_relu_bn is not None else "not compared",
        PAPER_CLAIMS[3][0]: f"{ratio['ratio']:.3f} ({ratio['lo']:.3f} to {ratio['hi']:.3f})",
    }  # fmt: skip
    for claim, paper in PAPER_CLAIMS:
        lines.append(f"| {claim} | {paper} | {here[claim]} |")
    lines += ["", f"ELU's error here is about {100 * stats.loc['elu', 'mean']:.1f} %, CIFAR-100's "
              "about 30 %: differences of a tenth of a point here are large relative to ELU's "
              "error. CIFAR is not obtainable on "
              "this machine (`natgrad train --dataset cifar100 --data-dir D` runs the paper's "
              "recipe unchanged for a user who has it).", "",
              "Files: `runs.csv` (one row per run), `primary.csv` (the comparisons), "
              "`curves.csv` (every run's metrics per epoch), `fig5.png`, `runs/` (each run's "
              "`config.json` and `metrics.jsonl`)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("train", "report"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bn_cnn"))
    parser.add_argument("--seeds", type=seed_range, default=range(SEEDS),
                        help="FIRST:COUNT of seeds 0-9")  # fmt: skip
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    seeds, arms = args.seeds, tuple(args.arms.split(","))
    if args.stage == "train":
        t0 = time.perf_counter()
        diverged = study(seeds, arms).train(args.runs, say=print)
        print(f"trained {len(seeds) * len(arms)} runs in {time.perf_counter() - t0:.0f} s; diverged "
              f"{sorted(diverged) or 'none'}")  # fmt: skip
        return 0
    values = per_run(args.runs, seeds, arms)
    table = primaries(values)
    ratio = time_ratio(values)
    print(values.groupby("unit_type")["test_error_at_best_val"].agg(["mean", "count"]))
    print(table.round(5).to_string(index=False))
    print(f"ELU/ReLU time per iteration: {ratio['ratio']:.3f} ({ratio['lo']:.3f} to "
          f"{ratio['hi']:.3f})")  # fmt: skip
    if args.record:
        from natgrad._atomic import write_text
        from natgrad.analysis.plots import save_figure
        from natgrad.analysis.record import read_meta, record_tables, run_provenance
        from natgrad.training.carry import copy_runs

        curves = study(seeds, arms).curves(args.runs)
        run_dirs = [r.path for r in study(seeds, arms).finished(args.runs)]
        meta = dict(run_provenance(run_dirs), time_ratio=ratio)
        record_tables(args.record, dict(runs=values, primary=table, curves=curves), argv=argv,
                      script="analysis/bn_cnn.py", **meta)  # fmt: skip
        save_figure(figure(curves), args.record / "fig5", formats=("png",), dpi=110)
        # the small records, so the report rebuilds from the repository
        copy_runs(args.runs, args.record / "runs", runs=run_dirs)
        write_text(args.record / "README.md", readme(values, table, ratio, read_meta(args.record)))
    return 0


if __name__ == "__main__":
    sys.exit(run())
