r"""``natgrad compare``: test the ELU paper's mechanism by training.

If ELU speeds learning *because* near-zero incoming means bring plain SGD closer to the unit
natural gradient, the corrections the argument says ELU gets for free should recover ReLU's
gap. ``mnist-fc`` is trained with the arms of :data:`ARMS` (unit × optimizer: SGD, SGD on
the centred net, Ollivier's quasi-diagonal NG, the unit NG of Theorem 1, the block-diagonal
NG without Theorem 2's weight–bias coupling, SGD with batch norm), which share their initial
weights per seed. Every (arm, seed) is a run directory ``<arm>-s<seed>`` under ``--runs``,
trained, resumed and recorded as diverged by the one runner (:func:`study`,
``docs/architecture.md``).

**Measures** (:mod:`natgrad.analysis.stats`): AUC_e = :func:`~natgrad.analysis.stats.loss_auc`
over epochs 1..e; validation error of the last ``last_epochs`` epochs; test error at the
epoch of lowest validation error (without a validation split: of the last epochs, said so).
Effects are reference − arm paired by seed (ReLU+SGD for every arm, and :data:`PAIRED_WITH`),
t CIs over seeds (the gap fraction, a ratio of means: Fieller's), exact sign-flip p, Holm
within each metric (:func:`natgrad.analysis.endpoints.evaluate`). **The question**: what fraction of the gap
between ReLU+SGD and ReLU+unit-NG does ELU+SGD close, per epoch budget e?

.. math::

    f_e = \frac{\overline{AUC_e(\text{relu-sgd}) - AUC_e(\text{elu-sgd})}}
               {\overline{AUC_e(\text{relu-sgd}) - AUC_e(\text{relu-unit-ng})}}

(means over seeds; its CI Fieller's, from the paired numerator and denominator; undefined
when unit-NG does not beat SGD).

Outputs in ``--out``: ``curves.csv``, ``summary.csv``, ``effects.csv``, ``gap.csv`` (f_e and
its CI), ``shares.csv`` (every arm's share of the gap), ``answer.md``, ``run.json``
(``--tables-from DIR`` rebuilds the rest from it and ``curves.csv``), ``curves.png``/``.pdf``.

Example::

    natgrad compare                                    # digits, small: < 10 min on one CPU
    natgrad compare --dataset mnist --seeds 10 --epochs 10 --plain-first-layer
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from natgrad.analysis.endpoints import Endpoint, evaluate
from natgrad.analysis.stats import (
    SIGN_FLIP_EXACT_UP_TO,
    bootstrap_ci,
    current_mean_ci,
    interval_text,
    loss_auc,
    mean_ci_name,
    outward,
    ratio_ci,
    sentence,
    sign_flip_method,
    sign_flip_p_min,
)
from natgrad.argtypes import data_folder, nonnegative_int, positive_float, positive_int
from natgrad.damping import LAYER_DAMPING, STEP_DAMPING, check
from natgrad.errors import InputError
from natgrad.training.engine import TRAIN_LOSS

__all__ = ["ARMS", "Arm", "CompareConfig", "add_arguments", "arm_config", "read_curves",
           "rewrite_outputs", "run", "run_compare", "study", "summarise", "train_runs",
           "write_outputs"]  # fmt: skip


class Arm(NamedTuple):
    unit: str
    optimizer: str  # a TrainConfig optimizer
    centre: bool = False
    batch_norm: bool = False

    @property
    def natural(self) -> bool:
        return self.optimizer != "sgd"


ARMS: dict[str, Arm] = {
    "relu-sgd": Arm("relu", "sgd"),
    "elu-sgd": Arm("elu", "sgd"),
    "relu-centred": Arm("relu", "sgd", centre=True),
    "elu-centred": Arm("elu", "sgd", centre=True),
    "relu-qd": Arm("relu", "qd-ng"),
    "relu-unit-ng": Arm("relu", "unit-ng"),
    "elu-unit-ng": Arm("elu", "unit-ng"),
    "relu-blockdiag-ng": Arm("relu", "blockdiag-ng"),
    "relu-bn": Arm("relu", "sgd", batch_norm=True),
}
BASELINE, CLOSER, TARGET = "relu-sgd", "elu-sgd", "relu-unit-ng"
#: The arms of the small default run (the newer controls are asked for with --arms).
DEFAULT_ARMS = ("relu-sgd", "elu-sgd", "relu-centred", "relu-qd", "relu-unit-ng",
                "elu-unit-ng", "relu-bn")  # fmt: skip
#: Each arm's reference for its paired effects besides ReLU+SGD: the same optimizer on ReLU.
PAIRED_WITH = {"elu-unit-ng": TARGET, "elu-centred": "relu-centred"}


@dataclass(frozen=True)
class CompareConfig:
    r"""Settings of one comparison (the defaults are the small digits mode).

    The default learning rates come from a one-epoch pilot on digits, seed 0 (SGD: the best
    of 0.01/0.03/0.1 for ReLU, 0.1 diverges for ELU; natural gradients: the largest stable of
    1e-4..1e-2; digits has no validation split, and seed 0 is also the default comparison's
    first seed, so the defaults are a smoke setting, not a selection a study may report),
    except unit-NG's: 1e-3 diverged for ReLU on 2 of 5 seeds within 12 digits
    epochs and on Fashion-MNIST, so the default is 3e-4. ``lrs`` overrides them per arm
    (``(("elu-sgd", 0.01), …)``): a comparison a referee accepts chooses every arm's rate on
    the validation split alike. ``layer_damping`` (λ_layer, see
    :class:`~natgrad.optim.UnitNaturalGradient`) keeps the Fisher refreshed every
    ``refresh_every`` = 10 steps from diverging.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    seeds: int = 5
    first_seed: int = (
        0  # seeds first_seed .. first_seed + seeds − 1 (a study's pilot seeds: others)
    )
    only_seeds: tuple[int, ...] = ()  # of those, only these (an interim look at finished seeds)
    epochs: int = 12
    batch_size: int = 64
    train_size: int | None = None  # first n training images (stratification: none)
    lr_sgd: float = 0.03
    lr_ng: float = 3e-4
    lr_qd: float = 3e-4
    lrs: tuple[tuple[str, float], ...] = ()  # per-arm learning rates (override the three)
    rel_damping: float = STEP_DAMPING  # the preconditioner's (natgrad.damping), not the
    layer_damping: float = LAYER_DAMPING  # analysis λ of the measures
    refresh_every: int = 10
    ema: float = 0.9
    window: int = 0  # unit-NG arms: 0 the dense running Fisher; K the last K refresh batches
    memory_budget: int | None = None  # unit-NG arms: larger dense layers take the QD step
    centre_rate: float = 0.1
    plain_first_layer: bool = False  # the pixel-fed layer takes plain SGD in every arm
    preprocess: str = "none"  # or "standardise" (pixels centred and scaled)
    last_epochs: int = 3
    arms: tuple[str, ...] = DEFAULT_ARMS

    def __post_init__(self) -> None:
        if not self.arms:
            raise InputError(f"compare: no arms given; choose from {', '.join(ARMS)}")
        unknown = [a for a in (*self.arms, *(a for a, _ in self.lrs)) if a not in ARMS]
        if unknown:
            raise InputError(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
        for key in ("seeds", "epochs", "batch_size", "last_epochs", "refresh_every"):
            if getattr(self, key) < 1:
                raise InputError(f"compare: {key}={getattr(self, key)} must be >= 1")
        if self.window < 0:
            raise InputError(f"compare: window={self.window} must be >= 0 (0: the dense Fisher)")
        if self.first_seed < 0:
            raise InputError(f"compare: first_seed={self.first_seed} must be >= 0")
        for arm, lr in self.lrs:
            if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
                raise InputError(f"compare: the learning rate of {arm} must be > 0, got {lr!r}")
        # the settings handed on to every arm's TrainConfig, named by compare's own flags
        # (that config's errors would point at natgrad train's --set)
        for flag in ("--rel-damping", "--layer-damping"):
            check(getattr(self, flag[2:].replace("-", "_")), f"compare: {flag}")
        for key, flag in (("lr_sgd", "--lr-sgd"), ("lr_ng", "--lr-ng"), ("lr_qd", "--lr-qd"),
                          ("centre_rate", "centre_rate")):  # fmt: skip
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise InputError(f"compare: {flag} must be a finite number > 0, got {v!r}")
        ema = self.ema
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
            raise InputError(f"compare: --ema must be in [0, 1), got {ema!r}")

    @property
    def seed_list(self) -> list[int]:
        seeds = range(self.first_seed, self.first_seed + self.seeds)
        return [s for s in seeds if not self.only_seeds or s in self.only_seeds]

    def lr(self, arm: str) -> float:
        """The learning rate of ``arm``: its ``lrs`` entry, else its family's default."""
        given = dict(self.lrs)
        default = {"sgd": self.lr_sgd, "qd-ng": self.lr_qd}.get(ARMS[arm].optimizer, self.lr_ng)
        return float(given[arm]) if arm in given else default

    def sgd_lr(self, unit: str) -> float:
        """The plain-SGD rate of ``unit``'s SGD arm (that of a natural-gradient arm's plain
        first layer)."""
        return self.lr(f"{unit}-sgd")


# --- the runs ----------------------------------------------------------------------------


def arm_config(config: CompareConfig, arm: str, seed: int):
    r"""The :class:`~natgrad.training.TrainConfig` of ``arm`` for ``seed``: every arm's net has
    the same initial Linear weights per seed (:mod:`natgrad.models`)."""
    from natgrad.training.config import TrainConfig

    a = ARMS[arm]
    return TrainConfig(
        net="mnist-fc", unit=a.unit, batch_norm=a.batch_norm, dataset=config.dataset,
        data_dir=config.data_dir, seed=seed, epochs=config.epochs,
        batch_size=config.batch_size, optimizer=a.optimizer, centre=a.centre,
        centre_rate=config.centre_rate, rel_damping=config.rel_damping,
        layer_damping=config.layer_damping, refresh_every=config.refresh_every,
        fisher_ema=config.ema, fisher_window=config.window if a.optimizer == "unit-ng" else 0,
        ng_memory_budget=config.memory_budget if a.optimizer == "unit-ng" else None,
        plain_first_layer=config.plain_first_layer,
        plain_lr=config.sgd_lr(a.unit) if config.plain_first_layer and a.natural else None,
        lr=config.lr(arm), preprocess=config.preprocess, train_size=config.train_size,
        checkpoint_every=1, keep_checkpoints=1, record_every=1,
        probe_size=64, notes=f"natgrad compare arm {arm}",
    )  # fmt: skip


def study(config: CompareConfig):
    r"""The comparison as a :class:`~natgrad.analysis.study.Study`: its arms × seeds, each
    run's :func:`arm_config`, run directories ``<arm>-s<seed>``."""
    from natgrad.analysis.study import Study

    return Study("natgrad compare", config.arms, tuple(config.seed_list),
                 lambda arm, seed: arm_config(config, arm, seed))  # fmt: skip


def train_runs(config: CompareConfig, root: Path, *, progress=None) -> dict[str, str]:
    r"""Train (or resume) every (arm, seed) of ``config`` in ``root`` (:meth:`Study.train
    <natgrad.analysis.study.Study.train>`); returns ``{run name: divergence message}`` of the
    runs that stopped on a non-finite loss (the others go on)."""
    return study(config).train(root, say=progress)


def read_curves(config: CompareConfig, root: Path):
    r"""The curves of every (arm, seed), in ``config.arms`` order (:meth:`Study.curves
    <natgrad.analysis.study.Study.curves>`; ``seconds``: a batched run's share)."""
    return study(config).curves(root)


def run_compare(config: CompareConfig, root: Path, *, progress=None):
    r"""Train (or resume) every run and return ``(curves, diverged)``."""
    diverged = train_runs(config, root, progress=progress)
    return read_curves(config, root), diverged


def structures(config: CompareConfig) -> dict[str, str]:
    r"""Layer → what the unit-NG arms precondition it with (from the optimizer's own
    choice on a net built without data)."""
    from natgrad.models import build_model
    from natgrad.optim import UnitNaturalGradient

    if not any(ARMS[a].optimizer == "unit-ng" for a in config.arms):
        return {}
    shape = {"digits": (1, 8, 8)}.get(config.dataset, (1, 28, 28))
    net = build_model("mnist-fc", "relu", in_shape=shape, num_classes=10, device="meta")
    plain = ("fc1",) if config.plain_first_layer else ()
    budget = {} if config.memory_budget is None else {"memory_budget": config.memory_budget}
    with warnings.catch_warnings():  # the layers sent to QD are listed in answer.md instead
        warnings.simplefilter("ignore")
        opt = UnitNaturalGradient(net, 1e-3, window=config.window or None, plain_layers=plain,
                                  **budget)  # fmt: skip
    return {**dict.fromkeys(plain, "plain"), **opt.structures}  # fc1 first: named in net order


# --- statistics ------------------------------------------------------------------------------


def _auc(curves):
    r"""AUC_e per (seed, arm, epoch e >= 1): :func:`~natgrad.analysis.stats.loss_auc` of
    epochs 1..e (NaN once a run has diverged)."""
    import pandas as pd

    out = []
    for (seed, arm), g in curves.sort_values("epoch").groupby(["seed", "arm"], sort=False):
        loss = g["train_loss"].to_numpy()
        for e in range(1, len(loss)):
            out.append(dict(seed=seed, arm=arm, epoch=e, auc=loss_auc(loss[1 : e + 1])))
    return pd.DataFrame(out)


def _gap_fraction(a, b, c) -> float:
    if len(a) == 0:  # no seed where all three arms finished (e.g. an arm diverged on all)
        return math.nan
    den = np.mean(a) - np.mean(c)
    return float((np.mean(a) - np.mean(b)) / den) if den > 0 else math.nan


def gap_ci(a, b, c, fraction=_gap_fraction) -> tuple[float, float, str]:
    r"""``(lo, hi, method)``: the 95 % CI of the gap fraction (ā − b̄)/(ā − c̄), the arms' AUCs
    ``a``, ``b``, ``c`` paired by seed: Fieller's interval of the ratio of the paired
    differences a − b and a − c (:func:`~natgrad.analysis.stats.ratio_ci`). Under
    ``stats.mean_ci_method("bootstrap")``, the BCa bootstrap of ``fraction`` over the three
    arms that the records before 2026-12-06 used (a rebuild of them repeats it to the last
    digit). Where ``fraction`` is undefined there is no interval either: for
    :func:`_gap_fraction`, where ReLU+unit-NG is not ahead (ā − c̄ ≤ 0, no gap to close);
    the fair comparison passes its own fraction, which keeps a negative gap's sign."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)  # seeds where all three finished
    a, b, c = a[ok], b[ok], c[ok]
    if current_mean_ci() == "bootstrap":
        return bootstrap_ci((a, b, c), fraction)
    if not math.isfinite(fraction(a, b, c)):
        return (math.nan, math.nan, "none")
    return ratio_ci(a - b, a - c)


def _per_seed(curves, config: CompareConfig):
    r"""One row per (seed, arm): the measures of the module docstring and seconds per epoch,
    from :func:`~natgrad.analysis.stats.claims_per_seed` (every study's per-seed values)."""
    from natgrad.analysis.stats import claims_per_seed

    claims, _ = claims_per_seed(curves, last=config.last_epochs, group="arm")
    has_val = bool(claims["val_error_last"].notna().any())
    keep = ["val_error_last", "test_error_at_best_val"] if has_val else ["test_error"]
    out = claims[["seed", "arm", "train_loss_auc", *keep]].rename(
        columns={"train_loss_auc": "auc", "test_error": "test_error_last"}
    )
    last = curves.sort_values("epoch").groupby(["seed", "arm"])["seconds"].agg(lambda t: t.iloc[-1])
    seconds = last.rename("seconds_per_epoch") / config.epochs  # NaN for a run that diverged
    return out.merge(seconds.reset_index(), on=["seed", "arm"], how="left", sort=False)


def _metrics(per_seed) -> list[str]:
    return [m for m in ("auc", "val_error_last", "test_error_at_best_val", "test_error_last")
            if m in per_seed]  # fmt: skip


def summarise(curves, config: CompareConfig) -> dict:
    r"""``{"summary", "effects", "gap", "shares", "diverged"}`` from the curves (module
    docstring). ``effects``: reference − arm, paired by seed (t CI, sign-flip p, Holm);
    ``shares``: the fraction of the ReLU+SGD → ReLU+unit-NG AUC gap each arm closes, per
    epoch budget (``gap`` is ELU+SGD's row, the question)."""
    import pandas as pd

    per_seed = _per_seed(curves, config)
    metrics = _metrics(per_seed)
    agg = {m: (m, "mean") for m in metrics}
    agg.update({f"{m}_sd": (m, "std") for m in metrics})
    agg["seconds_per_epoch"] = ("seconds_per_epoch", "mean")
    summary = per_seed.groupby("arm").agg(**agg).reindex(list(config.arms))
    pairs = [(BASELINE, arm) for arm in config.arms if arm != BASELINE and BASELINE in config.arms]
    pairs += [(ref, arm) for arm, ref in PAIRED_WITH.items() if {arm, ref} <= set(config.arms)]
    endpoints = [Endpoint(m, ref, arm, family=m) for ref, arm in pairs for m in metrics]
    effects = evaluate(per_seed, endpoints, group="arm") if endpoints else pd.DataFrame()
    if len(effects):  # every compare metric is better lower (registered or not)
        effects = effects[["metric", "reference", "other", "n", "diff", "lo", "hi", "ci_method",
                           "p", "p_holm"]].assign(better="lower")  # fmt: skip
        effects["text"] = [sentence(r) for r in effects.to_dict("records")]
    gap, shares = [], []
    if {BASELINE, TARGET} <= set(config.arms):
        auc = _auc(curves)
        aw = auc.pivot_table(index=["epoch", "seed"], columns="arm", values="auc",
                             dropna=False).reindex(columns=list(config.arms))  # fmt: skip
        for e, g in aw.groupby(level="epoch"):
            a, c = g[BASELINE].to_numpy(), g[TARGET].to_numpy()
            for arm in (x for x in config.arms if x not in (BASELINE, TARGET)):
                b = g[arm].to_numpy()
                ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
                lo, hi, method = gap_ci(a[ok], b[ok], c[ok])
                row = dict(epoch=int(e), fraction_closed=_gap_fraction(a[ok], b[ok], c[ok]),
                           ci_low=lo, ci_high=hi, ci_method=method, seeds=int(ok.sum()))  # fmt: skip
                shares.append(dict(arm=arm, **row))
                if arm == CLOSER:
                    gap.append(dict(epoch=int(e), relu_sgd=a[ok].mean(), elu_sgd=b[ok].mean(),
                                    relu_unit_ng=c[ok].mean(), gap=float(a[ok].mean() - c[ok].mean()),
                                    **{k: v for k, v in row.items() if k != "epoch"}))  # fmt: skip
    bad = curves[curves["train_loss"].isna()]
    return {
        "diverged": sorted({f"{r.arm} (seed {r.seed})" for r in bad.itertuples()}),
        "summary": summary.reset_index(),
        "effects": pd.DataFrame(effects),
        "gap": pd.DataFrame(gap),
        "shares": pd.DataFrame(shares),
    }


# --- report ----------------------------------------------------------------------------------


def _answer(tables: dict, config: CompareConfig, train_loss: str = TRAIN_LOSS) -> str:
    """The question and the answer; ``train_loss``: what the curves' training loss is (the
    record's own wording: :data:`natgrad.training.engine.TRAIN_LOSS` for today's runs)."""
    gap = tables["gap"]
    lines = [
        "## Question",
        "",
        "What fraction of the gap between ReLU+SGD and ReLU+unit-NG does ELU+SGD close, per "
        "epoch budget e? The gap's unit: the training-loss AUC (mean over epochs 1..e of "
        f"{train_loss}).",
        "",
        "## Answer",
        "",
    ]
    diverged = sorted(tables.get("diverged", ()))
    if diverged:
        lines += [f"Diverged (NaN loss; lower their learning rate): {', '.join(diverged)}", ""]
    if gap.empty:
        lines.append("Not computed: the arms relu-sgd, elu-sgd and relu-unit-ng are all needed.")
        return "\n".join(lines)
    for row in gap.itertuples():
        if math.isnan(row.gap):
            text = "nothing: ReLU+SGD or ReLU+unit-NG diverged on every seed"
        elif math.isnan(row.fraction_closed):
            text = f"undefined: ReLU+unit-NG does not beat ReLU+SGD (gap {row.gap:+.4f})"
        else:
            ci = ("" if math.isnan(row.ci_low) else
                  f" (95 % {row.ci_method} CI over {row.seeds} seeds: "
                  f"{interval_text(row.ci_low, row.ci_high, signed=False)})")  # fmt: skip
            text = f"{row.fraction_closed:.2f} of the gap {row.gap:.4f}{ci}"
        lines.append(f"- epoch budget {row.epoch}: ELU+SGD closes {text} (training-loss AUC)")
    return "\n".join(lines)


def _figure(curves, tables: dict, out: Path) -> list[Path]:
    from matplotlib.ticker import MaxNLocator

    from natgrad.analysis.plots import file_subplots, mark_last_before_gap, save_figure, seed_means

    fig, axes = file_subplots(1, 4, figsize=(17, 3.8))
    split = "val" if curves["val_error"].notna().any() else "test"
    for arm in curves["arm"].unique():
        sub = curves[(curves["arm"] == arm) & (curves["epoch"] >= 1)]  # epoch 0 would flatten
        # means over every seed only (plots.seed_means): a line ends, marked, where seeds
        # were lost, never a mean of the survivors
        g = seed_means(sub, "epoch", ["train_loss", f"{split}_error", "seconds"])
        finite = g["train_loss"].notna()
        lost = not finite.all() and finite.any()
        last = g.index[int(np.argmin(finite.to_numpy())) - 1] if lost else None
        label = f"{arm} (seeds lost after epoch {last})" if lost else arm
        (line,) = axes[0].plot(g.index, g["train_loss"], label=label)
        axes[1].plot(g.index, 100 * g[f"{split}_error"], marker=".", color=line.get_color())
        axes[3].plot(g["seconds"], g["train_loss"], marker=".", color=line.get_color())
        mark_last_before_gap(axes[0], g["train_loss"], color=line.get_color())
        mark_last_before_gap(axes[1], 100 * g[f"{split}_error"], color=line.get_color())
    axes[0].set(yscale="log", xlabel="epoch", ylabel="training loss (mean over all seeds)")
    axes[1].set(xlabel="epoch", ylabel=f"{'validation' if split == 'val' else 'test'} error % "
                "(mean over seeds)")  # fmt: skip
    axes[3].set(xscale="log", yscale="log", xlabel="training seconds per run (mean over seeds)",
                ylabel="training loss", title="what each correction costs")  # fmt: skip
    for ax in axes[:3]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    gap = tables["gap"]
    if gap.empty or gap["fraction_closed"].isna().all():
        axes[2].text(0.5, 0.5, "not defined here: no ReLU+unit-NG arm,\nor the gap it should "
                     "close is not positive", ha="center", va="center",
                     transform=axes[2].transAxes, fontsize=9, color="0.3")  # fmt: skip
        axes[2].set_xticks([])
        axes[2].set_yticks([])
    else:
        axes[2].errorbar(gap["epoch"], gap["fraction_closed"],
                         yerr=[(gap["fraction_closed"] - gap["ci_low"]).abs(),
                               (gap["ci_high"] - gap["fraction_closed"]).abs()], marker="o")  # fmt: skip
        axes[2].axhline(0, color="grey", lw=0.5)
        axes[2].axhline(1, color="grey", lw=0.5, ls="--")
    axes[2].set(xlabel="epoch budget", ylabel="fraction of the gap ELU+SGD closes")
    fig.tight_layout()
    return save_figure(fig, out / "curves", formats=("png", "pdf"), dpi=120)


def _markdown(table) -> str:
    r"""A pipe table of a DataFrame, numbers to 4 significant digits; a CI's ends (columns
    ``lo``/``*_lo``/``ci_low`` and ``hi``/``*_hi``/``ci_high``) rounded outward."""
    ends = {c: c in ("hi", "ci_high") or str(c).endswith("_hi") for c in table.columns
            if c in ("lo", "hi", "ci_low", "ci_high") or str(c).endswith(("_lo", "_hi"))}  # fmt: skip

    def cell(v, column) -> str:
        if not isinstance(v, (float, np.floating)):
            return str(v)
        if column in ends and math.isfinite(v):
            return outward(v, ends[column], digits=4, signed=False)
        return f"{v:.4g}"

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(cell(v, c) for v, c in zip(row, table.columns, strict=True)) + " |"
            for row in table.itertuples(index=False)]  # fmt: skip
    return "\n".join([head, rule, *body])


def write_outputs(
    curves, config: CompareConfig, out: Path, meta: dict, structures: dict | None = None
) -> dict:
    r"""Write the CSV tables, ``answer.md``, ``run.json`` and the figure into ``out``; return
    the tables. ``structures``: layer → structure of the unit-NG arms (:func:`structures`)."""
    from natgrad._atomic import write_json, write_text
    from natgrad.analysis.csvtables import staged, write_csv

    # curves of a data set without a validation split (or of an older run) get NaN ones
    curves = curves.assign(**{c: math.nan for c in ("val_loss", "val_error") if c not in curves})
    structures = structures or {}
    with staged(out) as stage:  # a new folder next to ``out``, which then replaces it whole
        tables = summarise(curves, config)
        write_csv(curves, stage / "curves.csv")
        for name in ("summary", "effects", "gap", "shares"):
            write_csv(tables[name], stage / f"{name}.csv")
        _figure(curves, tables, stage)
        write_text(stage / "answer.md", _report(curves, tables, config, meta, structures))
        write_json(stage / "run.json", dict(config=dataclasses.asdict(config), meta=meta,
                                            unit_ng_structures=structures))  # fmt: skip
    return tables


def _report(curves, tables: dict, config: CompareConfig, meta: dict, structures: dict) -> str:
    """The text of ``answer.md``."""
    lrs = ", ".join(f"{a} {config.lr(a):g}" for a in config.arms)
    has_val = curves["val_error"].notna().any()
    effects = tables["effects"]
    text = [
        "# natgrad compare: does ELU + SGD recover the unit natural gradient's speed?",
        "",
        _answer(tables, config, meta.get("train_loss", TRAIN_LOSS)),
        "",
        "## Per arm",
        "",
        "auc: mean training loss over epochs 1..E (mean over seeds); "
        + (f"val_error_last: validation error, mean of the last {config.last_epochs} epochs; "
           "test_error_at_best_val: test error at the epoch of lowest validation error"
           if has_val else
           f"test_error_last: test error, mean of the last {config.last_epochs} epochs (these "
           "curves have no validation split)")
        + "; seconds per training epoch.",
        "",
        _markdown(tables["summary"]),
        "",
        f"Learning rates: {lrs}. Damping of every natural-gradient arm: rel_damping "
        f"{config.rel_damping:g}, layer_damping {config.layer_damping:g}; refreshed every "
        f"{config.refresh_every} steps (ema {config.ema:g}).",
        *(["The first (pixel-fed) layer takes plain SGD in every arm, at its unit type's SGD "
           "rate."] if config.plain_first_layer else []),
        *([f"Inputs: {config.preprocess}."] if config.preprocess != "none" else []),
        "",
        f"## Effects paired by seed (reference − arm, 95 % {mean_ci_name()} CI over seeds)",
        "",
        f"p: {sign_flip_method(config.seeds)} over seeds ("
        + ("with n seeds it cannot go below 2/2^n = " if config.seeds <= SIGN_FLIP_EXACT_UP_TO
           else "it cannot go below ") + f"{sign_flip_p_min(config.seeds):.3g}); "
        "p_holm: Holm-adjusted within each metric's rows (natgrad.analysis.endpoints).",
        "",
        *([f"- {t}" for t in effects["text"]] if not effects.empty else ["(no baseline arm)"]),
        "",
        _markdown(effects.drop(columns=["text"])) if not effects.empty else "",
        "",
        "## Fraction of the gap closed, per epoch budget",
        "",
        _markdown(tables["gap"]) if not tables["gap"].empty else "(not computed)",
        "",
        "## Share of the same gap that every arm closes",
        "",
        _markdown(tables["shares"]) if not tables["shares"].empty else "(not computed)",
        "",
        "## Run",
        "",
        f"- command: `{meta.get('command', '')}`",
        *_structure_lines(structures, config),
        *([f"- run directories: `{meta['runs']}/<arm>-s<seed>` (natgrad.training.train_grid: "
           "the SGD arms of all seeds batched, the others one run at a time; a rerun resumes "
           "them)"] if meta.get("runs") else []),
        f"- commit: {meta.get('commit')}",
        f"- wall time: {meta.get('wall_seconds', math.nan):.0f} s, {meta.get('device', '')}",
        "",
        "```json",
        json.dumps(dataclasses.asdict(config), indent=1),
        "```",
    ]  # fmt: skip
    return "\n".join(text) + "\n"


def rewrite_outputs(out: Path) -> dict:
    r"""Rebuild the tables, figure and ``answer.md`` of an earlier comparison in ``out`` from
    its ``curves.csv`` and ``run.json`` (no training): what a change of the statistics
    needs."""
    import pandas as pd

    from natgrad.analysis.csvtables import read_csv

    out = Path(out)
    try:
        if (out / "run.json").stat().st_size > 10_000_000:
            raise ValueError("run.json is larger than 10 MB")
        record = json.loads((out / "run.json").read_text())
        if (out / "curves.csv.sha256").is_file():  # written with a checksum: checked
            curves = read_csv(out / "curves.csv")
        else:  # older outputs: checked for completeness below
            curves = pd.read_csv(out / "curves.csv")
    except (OSError, ValueError, RecursionError, pd.errors.ParserError) as exc:
        raise InputError(f"{out}: not a natgrad compare output folder with curves.csv and "
                         f"run.json ({exc})") from None  # fmt: skip
    config = _validated_config(record, out)
    _check_complete(curves, config, out)
    meta, structures = record.get("meta"), record.get("unit_ng_structures")
    return write_outputs(curves, config, out, meta if isinstance(meta, dict) else {},
                         structures if isinstance(structures, dict) else {})  # fmt: skip


#: Bounds on a ``run.json`` that ``--tables-from`` accepts (nothing larger is a real run).
_BOUNDS = {"seeds": 10_000, "first_seed": 2**31, "epochs": 100_000, "batch_size": 10_000_000,
           "last_epochs": 100_000, "refresh_every": 10_000_000, "window": 100_000}  # fmt: skip


def _validated_config(record, out: Path) -> CompareConfig:
    """The :class:`CompareConfig` of a ``run.json``, checked against a schema: known keys,
    integer sizes within :data:`_BOUNDS`, lists of known arms and of (arm, rate) pairs."""
    where = f"{out / 'run.json'}"
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise InputError(f"{where}: not a natgrad compare record (no 'config' object)")
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    settings = {k: v for k, v in record["config"].items() if k in fields}
    for key, hi in _BOUNDS.items():
        v = settings.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi):
            raise InputError(f"{where}: config {key}={v!r} must be an integer in [0, {hi}]")
    arms, lrs = settings.get("arms", list(DEFAULT_ARMS)), settings.get("lrs", [])
    if not isinstance(arms, list) or not all(isinstance(a, str) for a in arms):
        raise InputError(f"{where}: config arms must be a list of arm names")
    pairs = isinstance(lrs, list) and all(isinstance(p, list) and len(p) == 2 for p in lrs)
    if not pairs or not all(isinstance(arm, str) for arm, _ in lrs):
        raise InputError(f"{where}: config lrs must be a list of [arm, rate] pairs")
    settings.update(arms=tuple(arms), lrs=tuple(map(tuple, lrs)))
    only = settings.get("only_seeds", [])
    if not isinstance(only, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                             for x in only):  # fmt: skip
        raise InputError(f"{where}: config only_seeds must be a list of seeds")
    settings["only_seeds"] = tuple(only)
    try:  # CompareConfig checks its numbers itself
        return CompareConfig(**settings)
    except (TypeError, ValueError, InputError) as exc:
        raise InputError(f"{where}: config does not fit natgrad compare ({exc})") from None


def _check_complete(curves, config: CompareConfig, out: Path) -> None:
    """``curves.csv`` holds exactly one row per (seed, arm, epoch 0..E) of ``config``: a
    truncated or edited table is refused, never summarised."""
    import pandas as pd

    need = {"seed", "arm", "epoch", "train_loss", "test_loss", "test_error", "seconds"}
    missing = need - set(curves.columns)
    if missing:
        raise InputError(f"{out / 'curves.csv'}: columns {sorted(missing)} missing")
    expected = {(s, a, e) for s in config.seed_list for a in config.arms
                for e in range(config.epochs + 1)}  # fmt: skip
    try:
        got = list(zip(curves["seed"].astype(int), curves["arm"].astype(str),
                       curves["epoch"].astype(int), strict=True))  # fmt: skip
    except (ValueError, TypeError):
        got = []
    values = [c for c in ("train_loss", "test_loss", "test_error", "seconds")
              if not pd.api.types.is_numeric_dtype(curves[c])]  # fmt: skip
    if values:
        raise InputError(f"{out / 'curves.csv'}: columns {values} hold values that are not "
                         "numbers; the table was edited. Rerun natgrad compare")  # fmt: skip
    if len(got) != len(expected) or set(got) != expected:
        raise InputError(
            f"{out / 'curves.csv'}: {len(got)} rows, expected one per seed × arm × epoch 0..E "
            f"= {len(expected)} for run.json's config; the table is truncated, edited or from "
            "another run. Rerun natgrad compare"
        )


def _structure_lines(structures: dict, config: CompareConfig) -> list[str]:
    r"""What the unit-NG arms preconditioned each layer with (``--memory-budget`` sends layers
    whose dense blocks exceed it to the quasi-diagonal step; ``--window`` keeps K batches;
    ``--plain-first-layer`` leaves fc1 to plain SGD)."""
    if not structures:
        return []
    by: dict[str, list[str]] = {}
    for layer, structure in structures.items():
        by.setdefault(structure, []).append(layer)
    unit = "unit blocks" + (f" (window of {config.window} refresh batches, Woodbury)"
                            if config.window else " (dense running average)")  # fmt: skip
    names = {"unit": unit, "quasidiagonal": "Ollivier's quasi-diagonal step (over the memory "
             "budget)", "diagonal": "the diagonal", "plain": "plain SGD"}  # fmt: skip
    parts = [f"{names.get(k, k)}: {', '.join(v)}" for k, v in by.items()]
    return [f"- unit-NG arms, per layer: {'; '.join(parts)}"]


# --- CLI -------------------------------------------------------------------------------------


def _arm_rate(text: str) -> tuple[str, float]:
    arm, sep, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        value = math.nan
    if not sep or arm not in ARMS or not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give ARM=RATE with an arm of {', '.join(ARMS)} and a rate > 0"
        )
    return arm, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CompareConfig()
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter  # every default shown
    options = (  # (flag, type, help); the default: CompareConfig's field of the flag's name
        ("--dataset", str, "digits, fashion-mnist or mnist (the paper's data)"),
        ("--data-dir", data_folder, "folder with the data files (None: the shipped/installed "
         "copy)"),
        ("--seeds", positive_int, "seeds per arm; arms share their initial weights per seed"),
        ("--first-seed", nonnegative_int, "the first seed (fresh seeds after a pilot's)"),
        ("--epochs", positive_int, "epochs per run"),
        ("--batch-size", positive_int, "minibatch size of every arm"),
        ("--train-size", positive_int, "first N training images (None: all)"),
        ("--lr-sgd", positive_float, "learning rate of the SGD, centred and batch-norm arms"),
        ("--lr-ng", positive_float, "learning rate of the unit and block-diagonal "
         "natural-gradient arms"),
        ("--lr-qd", positive_float, "learning rate of the quasi-diagonal arm"),
        ("--rel-damping", float, "optimizer's relative damping λ: F + λ·tr(F)/(d+1)·I per unit"),
        ("--layer-damping", float, "optimizer's extra damping, a fraction of the layer's mean "
         "trace"),
        ("--refresh-every", positive_int, "steps between refreshes of the natural-gradient "
         "preconditioners"),
        ("--ema", float, "weight of the running Fisher's old value at each refresh"),
        ("--window", nonnegative_int, "unit-NG arms: precondition with the Fisher of the last K "
         "refresh batches, solved exactly by Woodbury (cheap when K x batch < d+1); 0: the "
         "dense running Fisher"),
        ("--memory-budget", positive_int, "unit-NG arms: largest dense unit Fisher state "
         "U*(d+1)^2 of a layer, in elements; a larger layer takes Ollivier's quasi-diagonal "
         "step (with a warning naming it). mnist-fc on 28x28 images: 10000000 keeps the 8 "
         "hidden-fed layers dense and sends the 784-input layer to QD (None: natgrad.optim's "
         "budget, every layer dense)"),
        ("--last-epochs", positive_int, "validation (test) error: mean of the last N epochs"),
    )  # fmt: skip
    for flag, kind, text in options:
        default = getattr(d, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--lr", type=_arm_rate, action="append", default=[], metavar="ARM=RATE",
                        help="one arm's learning rate (repeatable; overrides --lr-sgd/ng/qd)")  # fmt: skip
    parser.add_argument("--plain-first-layer", action="store_true",
                        help="the pixel-fed layer takes plain SGD (at its unit type's SGD rate) "
                             "in every arm: no centring or preconditioning there")  # fmt: skip
    parser.add_argument("--standardise", action="store_true",
                        help="centre and scale every pixel by the training split's statistics")  # fmt: skip
    parser.add_argument("--arms", default=",".join(d.arms),
                        help=f"comma-separated arms, of: {', '.join(ARMS)}")  # fmt: skip
    parser.add_argument("--out", default="reports/compare",
                        help="output folder (next to the demo's reports/demo)")  # fmt: skip
    parser.add_argument("--runs", default=None,
                        help="root of the run directories (default: runs/compare/<dataset>); "
                        "rerunning the command resumes them")  # fmt: skip
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    parser.add_argument(
        "--tables-from", default=None, metavar="DIR",
        help="no training: rebuild the tables, figure and answer.md of the comparison in DIR "
        "from its curves.csv and run.json",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """``natgrad compare`` (natgrad's errors: one line, exit 2, by :func:`natgrad.cli.main`)."""
    from natgrad._atomic import check_replaceable
    from natgrad.training.engine import describe_device, git_commit, resolve_device

    t0 = time.perf_counter()
    commit = git_commit()  # the code that trains, not the checkout's HEAD when it ends
    torch.set_num_threads(args.threads)
    if args.tables_from:
        out = Path(args.tables_from)
        rewrite_outputs(out)
    else:
        fields = {f.name for f in dataclasses.fields(CompareConfig)} - {"arms"}
        config = CompareConfig(**{k: v for k, v in vars(args).items() if k in fields},
                               lrs=tuple(args.lr), arms=tuple(a for a in args.arms.split(",") if a),
                               preprocess="standardise" if args.standardise else "none")  # fmt: skip
        say = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        root = Path(args.runs or f"runs/compare/{config.dataset}")
        check_replaceable(args.out)  # before any training, as the README says
        curves, _ = run_compare(config, root, progress=say)
        meta = dict(command="natgrad compare " + " ".join(sys.argv[2:]), commit=commit,
                    wall_seconds=time.perf_counter() - t0, runs=str(root), train_loss=TRAIN_LOSS,
                    device=describe_device(resolve_device("auto")))  # train_plan's device  # fmt: skip
        out = Path(args.out)
        write_outputs(curves, config, out, meta, structures(config))
    print((out / "answer.md").read_text().split("## Per arm")[0].strip())
    print(f"\noutputs in {out}")
    return 0
