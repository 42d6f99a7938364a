r"""``natgrad compare``: test the ELU paper's mechanism by training.

The paper's argument is causal: ELU speeds learning *because* near-zero incoming means bring
plain SGD closer to the unit natural gradient. If so, the corrections the argument says ELU
gets for free should recover ReLU's gap. The experiment trains ``mnist-fc`` (784 → 8×128 → 10,
or 64 → 8×128 → 10 on digits) with seven arms that share their initial weights per seed:

==================  ======  =========================================================
arm                 unit    optimizer
==================  ======  =========================================================
``relu-sgd``        ReLU    SGD
``elu-sgd``         ELU     SGD
``relu-centred``    ReLU    SGD on the centred net (:func:`natgrad.optim.centre`)
``relu-qd``         ReLU    Ollivier's quasi-diagonal natural gradient
``relu-unit-ng``    ReLU    unit natural gradient (Theorem 1), :class:`UnitNaturalGradient`
``elu-unit-ng``     ELU     unit natural gradient
``relu-bn``         ReLU    SGD with batch norm before each unit
==================  ======  =========================================================

The SGD arms of all seeds train together as batched models (:func:`train_stacked`; ReLU+SGD
and ELU+SGD one, ReLU+BN another), the other arms one run at a time (:func:`train_arm`);
both give the curves of one run alone, to round-off (float64 ~1e-15; in float32 the deep
ReLU nets amplify round-off, so single-seed curves of the two routes can differ visibly:
seeds are the replicates). Per seed and epoch it records the training loss (on the whole training set, eval mode, with
epoch 0 = the initial net), the test loss and error, and the training wall time. Summaries:
training-loss area under the curve AUC_e = mean training loss over epochs 1..e, test error
as the mean of the last ``last_epochs`` epochs, seconds per epoch. An arm whose loss becomes
non-finite stops; its remaining epochs are NaN and ``answer.md`` names it. Effects are paired by seed
(arm − relu-sgd), with percentile bootstrap CIs over seeds (``scipy.stats.bootstrap``).

**The question.** What fraction of the gap between ReLU+SGD and ReLU+unit-NG does ELU+SGD
close, per epoch budget e?

.. math::

    f_e = \frac{\overline{AUC_e(\text{relu-sgd}) - AUC_e(\text{elu-sgd})}}
               {\overline{AUC_e(\text{relu-sgd}) - AUC_e(\text{relu-unit-ng})}}

(means over seeds; the bootstrap resamples seeds jointly). f = 1: ELU+SGD trains as fast as
the unit natural gradient; f = 0: ELU does not help; f is undefined (reported as such) when
the unit natural gradient does not beat ReLU+SGD.

Outputs in ``--out``: ``curves.csv`` (seed, arm, epoch, losses, error, seconds),
``summary.csv`` (per arm), ``effects.csv`` (paired effects vs relu-sgd, with bootstrap CIs
and exact sign-flip p-values), ``gap.csv`` (f_e with its CI), ``answer.md`` (the question,
the answer, the settings, the command, commit and wall time), ``run.json`` (settings and run
record: ``--tables-from DIR`` rebuilds every table from it and ``curves.csv``) and
``curves.png``/``.pdf``.

Example::

    natgrad compare                                    # digits, small: < 10 min on one CPU
    natgrad compare --dataset fashion-mnist --seeds 5 --epochs 6 --train-size 10000
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

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from natgrad.analysis.stats import sign_flip_p
from natgrad.argtypes import nonnegative_int, positive_float, positive_int
from natgrad.errors import InputError, NatgradError
from natgrad.optim.solves import LAYER_DAMPING, REL_DAMPING

__all__ = [
    "ARMS",
    "CompareConfig",
    "add_arguments",
    "rewrite_outputs",
    "run",
    "run_compare",
    "summarise",
    "write_outputs",
]

ARMS: dict[str, tuple[str, str, bool]] = {  # name: (unit, optimizer, batch norm)
    "relu-sgd": ("relu", "sgd", False),
    "elu-sgd": ("elu", "sgd", False),
    "relu-centred": ("relu", "centred", False),
    "relu-qd": ("relu", "qd", False),
    "relu-unit-ng": ("relu", "unit-ng", False),
    "elu-unit-ng": ("elu", "unit-ng", False),
    "relu-bn": ("relu", "sgd", True),
}
BASELINE, CLOSER, TARGET = "relu-sgd", "elu-sgd", "relu-unit-ng"


@dataclass(frozen=True)
class CompareConfig:
    r"""Settings of one comparison (the defaults are the small digits mode).

    The learning rates come from a one-epoch pilot on digits, seed 0 (SGD: the best of
    0.01/0.03/0.1 for ReLU, 0.1 diverges for ELU; natural gradients: the largest stable of
    1e-4..1e-2), except unit-NG's: 1e-3 diverged for ReLU on 2 of 5 seeds within 12 digits
    epochs and on Fashion-MNIST, so the default is 3e-4 (the Fashion-MNIST run's). The natural-gradient rates are far below SGD's: each unit takes a natural
    step of its own, and the 8×128 units of a layer add their effects on the output.
    ``layer_damping`` (λ_layer, see :class:`~natgrad.optim.UnitNaturalGradient`) keeps the
    Fisher refreshed every ``refresh_every`` = 10 steps from diverging: with λ_layer = 0
    every natural-gradient arm diverged within 4 steps in the pilot.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    seeds: int = 5
    epochs: int = 12
    batch_size: int = 64
    train_size: int | None = None  # first n training images (stratification: none)
    lr_sgd: float = 0.03
    lr_ng: float = 3e-4
    lr_qd: float = 3e-4
    rel_damping: float = REL_DAMPING  # the preconditioner's (natgrad.optim.solves), not the
    layer_damping: float = LAYER_DAMPING  # analysis λ of the measures
    refresh_every: int = 10
    ema: float = 0.9
    window: int = 0  # unit-NG arms: 0 the dense running Fisher; K the last K refresh batches
    memory_budget: int | None = None  # unit-NG arms: larger dense layers take the QD step
    centre_rate: float = 0.1
    last_epochs: int = 3
    arms: tuple[str, ...] = tuple(ARMS)
    bootstrap_resamples: int = 2000

    def __post_init__(self) -> None:
        if not self.arms:
            raise InputError(f"compare: no arms given; choose from {', '.join(ARMS)}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise InputError(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
        for key in ("seeds", "epochs", "batch_size", "last_epochs", "refresh_every"):
            if getattr(self, key) < 1:
                raise InputError(f"compare: {key}={getattr(self, key)} must be >= 1")
        if self.window < 0:
            raise InputError(f"compare: window={self.window} must be >= 0 (0: the dense Fisher)")


# --- one training run ---------------------------------------------------------------------


def _models(config: CompareConfig, ds, seed: int) -> dict[str, nn.Module]:
    r"""Every arm's net, all with the Linear weights of one He-initialised net of ``seed``."""
    from natgrad.models import build_model

    kw = dict(num_classes=ds.num_classes, in_shape=ds.input_shape, seed=seed,
              dtype=ds.train_x.dtype)  # the data's precision, whatever torch's default  # fmt: skip
    base = build_model("mnist-fc", "relu", **kw)
    base_linear = [m for m in base.modules() if isinstance(m, nn.Linear)]
    out = {}
    for arm in config.arms:
        unit, _, bn = ARMS[arm]
        model = build_model("mnist-fc", unit, batch_norm=bn, **kw)
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for dst, src in zip(linear, base_linear, strict=True):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        out[arm] = model
    return out


def _optimizer(config: CompareConfig, arm: str, model: nn.Module, seed: int):
    from natgrad.optim import UnitNaturalGradient, centre

    kind = ARMS[arm][1]
    if kind in ("sgd", "centred"):
        net = centre(model) if kind == "centred" else model
        return net, torch.optim.SGD(net.parameters(), lr=config.lr_sgd)
    structure = "unit" if kind == "unit-ng" else "quasidiagonal"
    budget = {} if config.memory_budget is None else {"memory_budget": config.memory_budget}
    lr = config.lr_ng if kind == "unit-ng" else config.lr_qd
    opt = UnitNaturalGradient(model, lr, structure=structure, kind="mc",
                              rel_damping=config.rel_damping, layer_damping=config.layer_damping,
                              refresh_every=config.refresh_every, ema=config.ema, seed=seed,
                              window=(config.window or None) if kind == "unit-ng" else None,
                              **budget)  # fmt: skip
    return model, opt


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    was = model.training
    model.eval()
    loss, wrong = 0.0, 0
    for s in range(0, x.shape[0], 2000):
        out = model(x[s : s + 2000])
        loss += float(F.cross_entropy(out, y[s : s + 2000], reduction="sum"))
        wrong += int((out.argmax(1) != y[s : s + 2000]).sum())
    model.train(was)
    return loss / x.shape[0], wrong / x.shape[0]


def train_arm(
    config: CompareConfig,
    arm: str,
    model: nn.Module,
    ds,
    seed: int,
    structures: dict | None = None,
) -> list[dict]:
    r"""Train one arm; rows ``{seed, arm, epoch, train_loss, test_loss, test_error, seconds}``
    (``seconds``: cumulative training time, evaluation excluded). Batches: the same order
    for every arm of a seed."""
    from natgrad.optim import update_centres

    net, opt = _optimizer(config, arm, model, seed)
    if structures is not None and ARMS[arm][1] == "unit-ng":
        structures.update(opt.structures)  # layer -> what the optimizer preconditions it with
    natural = ARMS[arm][1] in ("qd", "unit-ng")
    centred = ARMS[arm][1] == "centred"
    x, y = ds.train_x, ds.train_y
    rows, elapsed = [], 0.0

    def record(epoch: int) -> None:
        tr, _ = _evaluate(net, x, y)
        te, err = _evaluate(net, ds.test_x, ds.test_y)
        rows.append(dict(seed=seed, arm=arm, epoch=epoch, train_loss=tr, test_loss=te,
                         test_error=err, seconds=elapsed))  # fmt: skip

    record(0)
    net.train()
    torch.manual_seed(seed)  # batch-norm nets draw nothing; kept for any future dropout
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(
            x.shape[0], generator=torch.Generator().manual_seed(seed * 1000 + epoch)
        )
        t0 = time.perf_counter()
        for s in range(0, x.shape[0], config.batch_size):
            idx = perm[s : s + config.batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step(xb) if natural else opt.step()
            if centred:
                update_centres(net, rate=config.centre_rate)
        elapsed += time.perf_counter() - t0
        if not torch.isfinite(loss):  # diverged: the remaining epochs are NaN, said in answer.md
            nan = math.nan
            rows += [dict(seed=seed, arm=arm, epoch=e, train_loss=nan, test_loss=nan,
                          test_error=nan, seconds=nan) for e in range(epoch, config.epochs + 1)]  # fmt: skip
            return rows
        record(epoch)
    return rows


@torch.no_grad()
def _evaluate_stacked(net, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
    r"""Per net of ``net`` (:class:`~natgrad.training.stacked.StackedNets`): mean
    cross-entropy and error rate on ``x``, ``y`` in eval mode, in :func:`_evaluate`'s chunks."""
    loss = torch.zeros(net.R, dtype=torch.float64)
    wrong = torch.zeros(net.R, dtype=torch.long)
    for s in range(0, x.shape[0], 2000):
        xb, yb = x[s : s + 2000], y[s : s + 2000]
        xb, yb = xb.expand(net.R, *xb.shape), yb.expand(net.R, -1)
        out = net.forward(xb)
        loss += net.sample_losses(out, xb, yb).sum(1).double()
        wrong += (out.argmax(-1) != yb).sum(1)
    n = x.shape[0]
    return [(float(a) / n, int(w) / n) for a, w in zip(loss, wrong, strict=True)]


def train_stacked(config: CompareConfig, runs: list[tuple[int, str, nn.Module]], ds) -> list[dict]:
    r"""Train SGD arms ``[(seed, arm, model)]`` of one architecture as one batched model
    (:class:`~natgrad.training.stacked.StackedNets`); the rows of :func:`train_arm` for each.

    Each run takes its seed's batches in :func:`train_arm`'s order, and stops (NaN rows from
    that epoch on) at the batch where its loss stops being finite, as :func:`train_arm` does;
    the other runs go on. Epoch 0 is evaluated by :func:`_evaluate` on each net (the numbers
    of a sequential run, bit for bit); ``seconds`` is the batched training time divided by
    the number of runs."""
    from natgrad.training.stacked import StackedNets, unit_order

    order = unit_order([m for _, _, m in runs])
    runs = [runs[i] for i in order]
    rows: list[dict] = []
    x, y = ds.train_x, ds.train_y
    for seed, arm, model in runs:
        model.eval()
        tr, _ = _evaluate(model, x, y)
        te, err = _evaluate(model, ds.test_x, ds.test_y)
        rows.append(dict(seed=seed, arm=arm, epoch=0, train_loss=tr, test_loss=te,
                         test_error=err, seconds=0.0))  # fmt: skip
    net = StackedNets([m for _, _, m in runs])
    seeds = [seed for seed, _, _ in runs]
    lrs = [config.lr_sgd] * net.R
    stopped: dict[int, int] = {}  # run -> the epoch its loss stopped being finite
    elapsed = 0.0
    for epoch in range(1, config.epochs + 1):
        perms = {s: torch.randperm(x.shape[0],
                                   generator=torch.Generator().manual_seed(s * 1000 + epoch))
                 for s in set(seeds)}  # fmt: skip
        perm = torch.stack([perms[s] for s in seeds])  # [R, n]
        t0 = time.perf_counter()
        for s in range(0, x.shape[0], config.batch_size):
            idx = perm[:, s : s + config.batch_size]
            xb, yb = x[idx], y[idx]
            loss = net.losses(net.forward(xb, training=True), xb, yb)
            bad = (~torch.isfinite(loss)).nonzero().flatten().tolist()
            for r in bad:
                stopped.setdefault(r, epoch)
            if len(stopped) == net.R:
                break
            net.step(torch.autograd.grad(loss.sum(), net.leaves), lrs)
        elapsed += (time.perf_counter() - t0) / net.R
        metrics = None
        for r, (seed, arm, _) in enumerate(runs):
            if r in stopped:
                if stopped[r] == epoch:
                    nan = math.nan
                    rows += [dict(seed=seed, arm=arm, epoch=e, train_loss=nan, test_loss=nan,
                                  test_error=nan, seconds=nan)
                             for e in range(epoch, config.epochs + 1)]  # fmt: skip
                continue
            if metrics is None:
                metrics = list(zip(_evaluate_stacked(net, x, y),
                                   _evaluate_stacked(net, ds.test_x, ds.test_y), strict=True))  # fmt: skip
            (tr, _), (te, err) = metrics[r]
            rows.append(dict(seed=seed, arm=arm, epoch=epoch, train_loss=tr, test_loss=te,
                             test_error=err, seconds=elapsed))  # fmt: skip
        if len(stopped) == net.R:
            break
    for r, (_, _, model) in enumerate(runs):
        net.copy_to(r, model)
    return rows


def batched_groups(config: CompareConfig) -> list[list[str]]:
    r"""The arms :func:`run_compare` trains as batched models by default: the SGD arms, one
    model per architecture (without, with batch norm), all seeds together; groups of one
    run (one arm, one seed) train one run at a time."""
    groups: dict[bool, list[str]] = {}
    for arm in config.arms:
        unit, kind, bn = ARMS[arm]
        if kind == "sgd":
            groups.setdefault(bn, []).append(arm)
    return [g for g in groups.values() if len(g) * config.seeds > 1]


def run_compare(
    config: CompareConfig,
    *,
    progress=None,
    structures: dict | None = None,
    batched: bool = True,
):
    r"""Train every arm for every seed; returns the curves as a pandas DataFrame, rows by
    seed, arm (in ``config.arms`` order) and epoch. A ``structures`` dict is filled with
    layer → structure the unit-NG arms use. ``batched``: the SGD arms of all seeds train as
    batched models (:func:`batched_groups`, :func:`train_stacked`), the other arms one run
    at a time (:func:`train_arm`); ``False``: every run one at a time."""
    import pandas as pd

    from natgrad.data import load_dataset

    ds = load_dataset(config.dataset, config.data_dir, seed=0)
    if config.train_size is not None:
        n = config.train_size
        ds = ds.with_(train_x=ds.train_x[:n], train_y=ds.train_y[:n])
    groups = batched_groups(config) if batched else []
    stacked: list[list] = [[] for _ in groups]
    rows = []
    from tqdm.auto import tqdm

    bar = tqdm(total=config.seeds * len(config.arms), desc="compare", unit="run",
               disable=progress is None, dynamic_ncols=True)  # fmt: skip
    for seed in range(config.seeds):
        models = _models(config, ds, seed)
        for arm, model in models.items():
            group = next((k for k, g in enumerate(groups) if arm in g), None)
            if group is not None:
                stacked[group].append((seed, arm, model))
                continue
            t0 = time.perf_counter()
            rows += train_arm(config, arm, model, ds, seed, structures)
            bar.update(1)
            if progress:
                progress(f"seed {seed} {arm}: {time.perf_counter() - t0:.1f} s, "
                         f"final train loss {rows[-1]['train_loss']:.4f}")  # fmt: skip
    for arms, runs in zip(groups, stacked, strict=True):
        t0 = time.perf_counter()
        rows += train_stacked(config, runs, ds)
        bar.update(len(runs))
        if progress:
            progress(f"{', '.join(arms)} x {config.seeds} seeds as one batched model: "
                     f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    bar.close()
    rank = {arm: i for i, arm in enumerate(config.arms)}
    rows.sort(key=lambda r: (r["seed"], rank[r["arm"]], r["epoch"]))
    return pd.DataFrame(rows)


# --- statistics ------------------------------------------------------------------------------


def _auc(curves):
    r"""AUC_e per (seed, arm, epoch e >= 1): the mean training loss over epochs 1..e (epoch 0,
    the initial net, is left out: ELU and ReLU nets with the same weights start at different
    losses, and the question is how fast each one learns)."""
    import pandas as pd

    out = []
    for (seed, arm), g in curves.sort_values("epoch").groupby(["seed", "arm"]):
        loss = g["train_loss"].to_numpy()
        for e in range(1, len(loss)):
            out.append(dict(seed=seed, arm=arm, epoch=e, auc=float(loss[1 : e + 1].mean())))
    return pd.DataFrame(out)


def _ci(samples: tuple, statistic, config: CompareConfig) -> tuple[float, float]:
    r"""Percentile bootstrap CI (95 %) over seeds of ``statistic`` of paired samples."""
    from scipy import stats

    if len(samples[0]) < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (ties, 0/0) give NaN bounds
        res = stats.bootstrap(samples, statistic, paired=True, vectorized=False,
                              n_resamples=config.bootstrap_resamples, method="percentile",
                              rng=np.random.default_rng(0))  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _gap_fraction(a, b, c) -> float:
    den = np.mean(a) - np.mean(c)
    return float((np.mean(a) - np.mean(b)) / den) if den > 0 else math.nan


def summarise(curves, config: CompareConfig) -> dict:
    r"""``{"summary", "effects", "gap", "shares"}`` DataFrames from the curves (module docstring):
    ``effects`` are paired by seed against ``reference`` (ReLU+SGD for every arm, and
    ReLU+unit-NG for ELU+unit-NG); ``shares`` is the fraction of the ReLU+SGD → ReLU+unit-NG
    AUC gap each arm closes, per epoch budget (``gap`` is ELU+SGD's row, the question)."""
    import pandas as pd

    auc = _auc(curves)
    last = curves[curves["epoch"] > config.epochs - config.last_epochs]
    final = last.groupby(["seed", "arm"])["test_error"].mean().rename("test_error_last")
    per_epoch = curves[curves["epoch"] == config.epochs].set_index(["seed", "arm"])["seconds"]
    per_seed = pd.concat(
        [auc[auc["epoch"] == config.epochs].set_index(["seed", "arm"])["auc"], final,
         (per_epoch / config.epochs).rename("seconds_per_epoch")], axis=1,
    ).reset_index()  # fmt: skip
    summary = per_seed.groupby("arm").agg(
        auc=("auc", "mean"), auc_sd=("auc", "std"), test_error_last=("test_error_last", "mean"),
        test_error_sd=("test_error_last", "std"), seconds_per_epoch=("seconds_per_epoch", "mean"),
    ).reindex([a for a in config.arms])  # fmt: skip
    effects = []
    wide = per_seed.pivot(index="seed", columns="arm")
    # Every arm against ReLU+SGD; and ELU against ReLU under the unit natural gradient.
    pairs = [(arm, BASELINE) for arm in config.arms if arm != BASELINE and BASELINE in config.arms]
    if {"elu-unit-ng", TARGET} <= set(config.arms):
        pairs.append(("elu-unit-ng", TARGET))
    for arm, ref in pairs:
        for metric in ("auc", "test_error_last"):
            d = (wide[metric][arm] - wide[metric][ref]).to_numpy()
            lo, hi = _ci((d,), np.mean, config)
            effects.append(dict(arm=arm, reference=ref, metric=metric, effect=float(d.mean()),
                                ci_low=lo, ci_high=hi, p_value=sign_flip_p(d),
                                seeds=len(d)))  # fmt: skip
    gap, shares = [], []
    if {BASELINE, TARGET} <= set(config.arms):
        aw = auc.pivot_table(index=["epoch", "seed"], columns="arm", values="auc",
                             dropna=False).reindex(columns=list(config.arms))  # diverged: NaN  # fmt: skip
        for e, g in aw.groupby(level="epoch"):
            a, c = g[BASELINE].to_numpy(), g[TARGET].to_numpy()
            for arm in (x for x in config.arms if x not in (BASELINE, TARGET)):
                b = g[arm].to_numpy()
                lo, hi = _ci((a, b, c), _gap_fraction, config)
                row = dict(epoch=int(e), fraction_closed=_gap_fraction(a, b, c), ci_low=lo,
                           ci_high=hi, seeds=len(a))  # fmt: skip
                shares.append(dict(arm=arm, **row))
                if arm == CLOSER:
                    gap.append(dict(epoch=int(e), relu_sgd=a.mean(), elu_sgd=b.mean(),
                                    relu_unit_ng=c.mean(), gap=float(a.mean() - c.mean()),
                                    **{k: v for k, v in row.items() if k != "epoch"}))  # fmt: skip
    bad = curves[curves["train_loss"].isna()]
    return {
        "diverged": sorted(
            {f"{a} (seed {s})" for a, s in zip(bad["arm"], bad["seed"], strict=True)}
        ),
        "summary": summary.reset_index(),
        "effects": pd.DataFrame(effects),
        "gap": pd.DataFrame(gap),
        "shares": pd.DataFrame(shares),
    }


# --- report ----------------------------------------------------------------------------------


def _answer(tables: dict, config: CompareConfig) -> str:
    gap = tables["gap"]
    lines = [
        "## Question",
        "",
        "What fraction of the gap between ReLU+SGD and ReLU+unit-NG does ELU+SGD close, per "
        "epoch budget e? The gap's unit: the training-loss AUC (mean training loss over epochs "
        "1..e, in nats per example; training loss re-evaluated on the whole training set after "
        "each epoch).",
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
        if math.isnan(row.fraction_closed):
            text = f"undefined: ReLU+unit-NG does not beat ReLU+SGD (gap {row.gap:+.4f})"
        else:
            ci = (
                ""
                if math.isnan(row.ci_low)
                else f" (95 % bootstrap CI over {row.seeds} seeds: {row.ci_low:.2f} to {row.ci_high:.2f})"
            )
            text = f"{row.fraction_closed:.2f} of the gap {row.gap:.4f}{ci}"  # fmt: skip
        lines.append(f"- epoch budget {row.epoch}: ELU+SGD closes {text} (training-loss AUC)")
    return "\n".join(lines)


def _figure(curves, tables: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    mean = curves.groupby(["arm", "epoch"]).mean(numeric_only=True).reset_index()
    for arm in curves["arm"].unique():
        g = mean[mean["arm"] == arm]
        axes[0].plot(g["epoch"], g["train_loss"], label=arm)
        late = g[g["epoch"] >= 1]  # epoch 0 (~90 %) would flatten the differences
        axes[1].plot(late["epoch"], 100 * late["test_error"], marker=".", label=arm)
    axes[0].set(yscale="log", xlabel="epoch", ylabel="training loss (mean over seeds)")
    axes[1].set(xlabel="epoch", ylabel="test error % (mean over seeds)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    gap = tables["gap"]
    if not gap.empty:
        axes[2].errorbar(gap["epoch"], gap["fraction_closed"],
                         yerr=[(gap["fraction_closed"] - gap["ci_low"]).abs(),
                               (gap["ci_high"] - gap["fraction_closed"]).abs()], marker="o")  # fmt: skip
        axes[2].axhline(0, color="grey", lw=0.5)
        axes[2].axhline(1, color="grey", lw=0.5, ls="--")
    axes[2].set(xlabel="epoch budget", ylabel="fraction of the gap ELU+SGD closes")
    fig.tight_layout()
    from natgrad.analysis.plots import save_figure

    return save_figure(fig, out / "curves", formats=("png", "pdf"), dpi=120)


def _markdown(table) -> str:
    r"""A pipe table of a DataFrame, numbers to 4 significant digits."""

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def write_outputs(
    curves, config: CompareConfig, out: Path, meta: dict, structures: dict | None = None
) -> dict:
    r"""Write the CSV tables, ``answer.md``, ``run.json`` and the figure into ``out``; return
    the tables. ``structures``: layer → structure of the unit-NG arms (:func:`run_compare`)."""
    import shutil

    from natgrad._atomic import carry_over, check_replaceable, clean_stale, commit_dir, staging_dir

    structures = structures or {}
    final = Path(out)
    check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent)
    tables = summarise(curves, config)
    # Everything goes into a new folder next to ``out`` (tables with checksum files), which
    # then replaces ``out`` in one step: a kill leaves the old outputs or the new, never a mix.
    out = staging_dir(final)
    try:
        _write_all(curves, tables, config, out, meta, structures)
        carry_over(final, out)  # other files there (a README) are kept
        commit_dir(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return tables


def _write_all(curves, tables, config, out, meta, structures) -> None:
    """Every output file of :func:`write_outputs`, into the (staging) folder ``out``."""
    from natgrad._atomic import write_json, write_text
    from natgrad.analysis.csvtables import write_csv

    write_csv(curves, out / "curves.csv")
    for name in ("summary", "effects", "gap", "shares"):
        write_csv(tables[name], out / f"{name}.csv")
    _figure(curves, tables, out)
    settings = json.dumps(dataclasses.asdict(config), indent=1)
    text = [
        "# natgrad compare: does ELU + SGD recover the unit natural gradient's speed?",
        "",
        _answer(tables, config),
        "",
        "## Per arm",
        "",
        "AUC: mean training loss over epochs 1..E (mean over seeds); test "
        f"error: mean of the last {config.last_epochs} epochs; seconds per training epoch.",
        "",
        _markdown(tables["summary"]),
        "",
        f"Damping of every natural-gradient arm: rel_damping {config.rel_damping:g}, "
        f"layer_damping {config.layer_damping:g}; learning rates: SGD {config.lr_sgd:g}, "
        f"unit-NG {config.lr_ng:g}, QD {config.lr_qd:g}.",
        "",
        "## Effects paired by seed (arm − reference, 95 % percentile bootstrap CI over seeds)",
        "",
        "p_value: exact two-sided sign-flip permutation test over seeds (with n seeds it cannot "
        f"go below 2/2^n = {2 / 2 ** config.seeds:.3g}); percentile bootstrap CIs over so few "
        "seeds are narrower than they should be: read them with the p-values.",
        "",
        _markdown(tables["effects"]) if not tables["effects"].empty else "(no baseline arm)",
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
        *_trainer_lines(meta),
        f"- commit: {meta.get('commit')}",
        f"- wall time: {meta.get('wall_seconds', math.nan):.0f} s, torch threads "
        f"{torch.get_num_threads()}, {meta.get('device', '')}",
        "",
        "```json",
        settings,
        "```",
    ]  # fmt: skip
    write_text(out / "answer.md", "\n".join(text) + "\n")
    record = dict(config=dataclasses.asdict(config), meta=meta, unit_ng_structures=structures)
    write_json(out / "run.json", record)


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
    meta = record.get("meta", {})
    structures = record.get("unit_ng_structures", {})
    return write_outputs(curves, config, out, meta if isinstance(meta, dict) else {},
                         structures if isinstance(structures, dict) else {})  # fmt: skip


#: Bounds on a ``run.json`` that ``--tables-from`` accepts (nothing larger is a real run).
_BOUNDS = {"seeds": 10_000, "epochs": 100_000, "batch_size": 10_000_000, "last_epochs": 100_000,
           "refresh_every": 10_000_000, "window": 100_000, "bootstrap_resamples": 1_000_000}  # fmt: skip


def _validated_config(record, out: Path) -> CompareConfig:
    """The :class:`CompareConfig` of a ``run.json``, checked against a schema: known keys,
    integer sizes within :data:`_BOUNDS`, a list of known arms."""
    where = f"{out / 'run.json'}"
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise InputError(f"{where}: not a natgrad compare record (no 'config' object)")
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    settings = {k: v for k, v in record["config"].items() if k in fields}
    for key, hi in _BOUNDS.items():
        v = settings.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
            raise InputError(f"{where}: config {key}={v!r} must be an integer in [0, {hi}]")
    arms = settings.get("arms", list(ARMS))
    if not isinstance(arms, list) or not all(isinstance(a, str) for a in arms):
        raise InputError(f"{where}: config arms must be a list of arm names")
    settings["arms"] = tuple(arms)
    try:
        return CompareConfig(**settings)
    except TypeError as exc:
        raise InputError(f"{where}: config does not fit natgrad compare ({exc})") from None


def _check_complete(curves, config: CompareConfig, out: Path) -> None:
    """``curves.csv`` holds exactly one row per (seed, arm, epoch 0..E) of ``config``: a
    truncated or edited table is refused, never summarised."""
    need = {"seed", "arm", "epoch", "train_loss", "test_loss", "test_error", "seconds"}
    missing = need - set(curves.columns)
    if missing:
        raise InputError(f"{out / 'curves.csv'}: columns {sorted(missing)} missing")
    expected = {(s, a, e) for s in range(config.seeds) for a in config.arms
                for e in range(config.epochs + 1)}  # fmt: skip
    try:
        got = list(zip(curves["seed"].astype(int), curves["arm"].astype(str),
                       curves["epoch"].astype(int), strict=True))  # fmt: skip
    except (ValueError, TypeError):
        got = []
    if len(got) != len(expected) or set(got) != expected:
        raise InputError(
            f"{out / 'curves.csv'}: {len(got)} rows, expected one per seed × arm × epoch 0..E "
            f"= {len(expected)} for run.json's config; the table is truncated, edited or from "
            "another run. Rerun natgrad compare"
        )


def _trainer_lines(meta: dict) -> list[str]:
    r"""How the runs were trained (``meta["batched"]``: the arm groups trained as batched
    models; absent in runs made before natgrad compare batched, which trained one by one)."""
    groups = meta.get("batched")
    if not groups:
        return ["- every run trained one at a time"] if groups is not None else []
    names = "; ".join(", ".join(g) for g in groups)
    return [f"- trained as batched models, all seeds together (natgrad.training.stacked): "
            f"{names}; their seconds per epoch are the batched time divided by its runs. "
            "Every other arm: one run at a time"]  # fmt: skip


def _structure_lines(structures: dict, config: CompareConfig) -> list[str]:
    r"""What the unit-NG arms preconditioned each layer with (``--memory-budget`` sends layers
    whose dense blocks exceed it to the quasi-diagonal step; ``--window`` keeps K batches)."""
    if not structures:
        return []
    by: dict[str, list[str]] = {}
    for layer, structure in structures.items():
        by.setdefault(structure, []).append(layer)
    unit = "unit blocks" + (f" (window of {config.window} refresh batches, Woodbury)"
                            if config.window else " (dense running average)")  # fmt: skip
    names = {"unit": unit, "quasidiagonal": "Ollivier's quasi-diagonal step (over the memory "
             "budget)", "diagonal": "the diagonal"}  # fmt: skip
    parts = [f"{names.get(k, k)}: {', '.join(v)}" for k, v in by.items()]
    return [f"- unit-NG arms, per layer: {'; '.join(parts)}"]


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CompareConfig()
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter  # every default shown
    parser.add_argument("--dataset", default=d.dataset,
                        help="digits, fashion-mnist or mnist (the paper's data)")  # fmt: skip
    parser.add_argument("--data-dir", default=None,
                        help="folder with the data files (None: the shipped/installed copy)")  # fmt: skip
    parser.add_argument("--seeds", type=positive_int, default=d.seeds,
                        help="seeds per arm; arms share their initial weights per seed")  # fmt: skip
    parser.add_argument("--epochs", type=positive_int, default=d.epochs, help="epochs per run")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                        help="minibatch size of every arm")  # fmt: skip
    parser.add_argument("--train-size", type=positive_int, default=None,
                        help="first N training images (None: all)")  # fmt: skip
    parser.add_argument("--lr-sgd", type=positive_float, default=d.lr_sgd,
                        help="learning rate of the SGD, centred and batch-norm arms")  # fmt: skip
    parser.add_argument("--lr-ng", type=positive_float, default=d.lr_ng,
                        help="learning rate of the unit natural-gradient arms")  # fmt: skip
    parser.add_argument("--lr-qd", type=positive_float, default=d.lr_qd,
                        help="learning rate of the quasi-diagonal arm")  # fmt: skip
    parser.add_argument("--rel-damping", type=float, default=d.rel_damping,
                        help="optimizer's relative damping λ: F + λ·tr(F)/(d+1)·I per unit")  # fmt: skip
    parser.add_argument("--layer-damping", type=float, default=d.layer_damping,
                        help="optimizer's extra damping, a fraction of the layer's mean trace")  # fmt: skip
    parser.add_argument("--refresh-every", type=positive_int, default=d.refresh_every,
                        help="steps between refreshes of the unit-NG/QD preconditioner")  # fmt: skip
    parser.add_argument("--ema", type=float, default=d.ema,
                        help="weight of the running Fisher's old value at each refresh")  # fmt: skip
    parser.add_argument(
        "--window", type=nonnegative_int, default=d.window,
        help="unit-NG arms: precondition with the Fisher of the last K refresh batches, solved "
        "exactly by Woodbury (cheap when K x batch < d+1); 0: the dense running Fisher",
    )  # fmt: skip
    parser.add_argument(
        "--memory-budget", type=positive_int, default=None,
        help="unit-NG arms: largest dense unit Fisher state U*(d+1)^2 of a layer, in elements; "
        "a larger layer takes Ollivier's quasi-diagonal step (with a warning naming it). "
        "mnist-fc on 28x28 images: 10000000 keeps the 8 hidden-fed layers dense and sends the "
        "784-input layer to QD (None: natgrad.optim's budget, every layer dense)",
    )  # fmt: skip
    parser.add_argument("--last-epochs", type=positive_int, default=d.last_epochs,
                        help="test error: mean of the last N epochs")  # fmt: skip
    parser.add_argument("--arms", default=",".join(d.arms), help="comma-separated subset of arms")
    parser.add_argument("--out", default="reports/compare",
                        help="output folder (next to the demo's reports/demo)")  # fmt: skip
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    parser.add_argument(
        "--sequential", action="store_true",
        help="train every run one at a time (otherwise the SGD arms of all seeds as batched "
        "models, one per architecture; same curves up to float round-off)",
    )  # fmt: skip
    parser.add_argument(
        "--tables-from", default=None, metavar="DIR",
        help="no training: rebuild the tables, figure and answer.md of the comparison in DIR "
        "from its curves.csv and run.json",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from natgrad.training.loop import describe_device, git_commit

    t0 = time.perf_counter()
    commit = git_commit()  # the code that trains, not the checkout's HEAD when it ends
    torch.set_num_threads(args.threads)
    if args.tables_from:
        try:
            rewrite_outputs(Path(args.tables_from))
        except NatgradError as exc:
            print(f"natgrad compare: error: {exc}", file=sys.stderr)
            return 2
        out = Path(args.tables_from)
        print((out / "answer.md").read_text().split("## Per arm")[0].strip())
        print(f"\noutputs in {out}")
        return 0
    try:
        config = CompareConfig(
            dataset=args.dataset, data_dir=args.data_dir, seeds=args.seeds, epochs=args.epochs,
            batch_size=args.batch_size, train_size=args.train_size, lr_sgd=args.lr_sgd,
            lr_ng=args.lr_ng, lr_qd=args.lr_qd, rel_damping=args.rel_damping, layer_damping=args.layer_damping,
            refresh_every=args.refresh_every, ema=args.ema, window=args.window, memory_budget=args.memory_budget, last_epochs=args.last_epochs,
            arms=tuple(a for a in args.arms.split(",") if a),
        )  # fmt: skip
        say = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        structures: dict = {}
        batched = not args.sequential
        curves = run_compare(config, progress=say, structures=structures, batched=batched)
    except NatgradError as exc:
        print(f"natgrad compare: error: {exc}", file=sys.stderr)
        return 2
    meta = dict(command="natgrad compare " + " ".join(sys.argv[2:]), commit=commit,
                wall_seconds=time.perf_counter() - t0,
                device=describe_device(torch.device("cpu")),
                batched=batched_groups(config) if batched else [])  # fmt: skip
    out = Path(args.out)
    write_outputs(curves, config, out, meta, structures)
    print((out / "answer.md").read_text().split("## Per arm")[0].strip())
    print(f"\noutputs in {out}")
    return 0
