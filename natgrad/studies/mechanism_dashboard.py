r"""A mechanism dashboard over training: unit × normalisation on MNIST (issue 26, item 3)
(stages: ``analysis/mechanism_dashboard.py``).

Declared before its runs (committed then in ``analysis/mechanism_dashboard.py``; moved here unchanged):

- **Nets:** ``mnist-fc`` with depth 3 and width 64 (59,210 parameters; 59,594 with batch or
  layer norm) on MNIST (train 50k, the validation split for every measure), trained by
  natgrad's runner (``train_plan``) with SGD at the paper's rate 0.01, batch 64, 3 epochs,
  seeds 0–4 (every arm of a seed from the same initial Linear weights).
- **Arms:** ELU, ReLU, SELU, GELU × {none, centring (centred SGD, ``centre_rate`` 0.1), batch
  norm, layer norm} (16 arms).
- **At epochs 0, 1 and 3,** on the first validation images:
  - unit level, the layers fed by hidden units (fc2, fc3, fc4), 5,000 images, exact unit
    Fishers, λ = 1e-3, g the training set's mean gradient: the median over units of
    ρ(plain) (jackknifed), of the relative bias-shift error of the plain step (Theorem 2:
    |shift(g) − shift_natural| / |shift_natural|) and of |k| (Theorem 2's k, estimable units
    only), and the share of estimable units (n_eff ≥ 2(d+1));
  - the units' mean activations: the median over the 3 × 64 hidden units of |E_p(f(x))| on
    the same 5,000 images;
  - whole network, 128 images (the Gram route, ``natgrad.network.network_fisher_gram``):
    the share of the Fisher's Frobenius mass outside the unit blocks of the Linear layers
    (normalisation parameters count as outside), the largest eigenvalue and its ratio to the
    mean eigenvalue.
- **Caveat, known before the runs:** at epoch 0 batch norm's running statistics are the
  initial ones (mean 0, variance 1), so in eval mode a batch-norm net at epoch 0 computes the
  function of the net without it (the same initial weights).
- **Reading:** descriptive. Mean over the 5 seeds with a 95 % BCa CI; the paired ELU − ReLU
  difference per normalisation and measure at epoch 3 with BCa CI and sign-flip p, Holm over
  that family (5 seeds cannot give p below 0.0625). Amended after the record: natgrad's CIs of
  means are now Student t (BCa covers about 84 % at 5 seeds, ``bench/ci_coverage.py``); the
  committed record keeps its BCa CIs, and ``analysis/ci_amendment.py`` lists what t moves.

Confirmatory run of ρ(plain) (declared 2026-12-07, committed before its runs):

- **Why.** The paper's mechanism says ELU brings the plain gradient nearer the unit natural
  gradient. In the record above (``paper_figures/results/mechanism_dashboard_mnist``, 5 seeds,
  descriptive) ELU − ReLU in ρ(plain) at epoch 3 was +0.00005 [−0.056, +0.055] without
  normalisation, and positive on every seed with centring (+0.067), batch norm (+0.072) and
  layer norm (+0.13); 5 seeds cannot test that (p ≥ 0.0625).
- **Design:** the arms ELU and ReLU under each normalisation (none, centring, batch norm, layer
  norm: 8 arms), trained as above (``config``), on 10 *new* seeds, 5–14
  (:data:`CONFIRM_SEEDS`); the measures above at epoch 3 only (:data:`CONFIRM_CHECKPOINTS`).
- **Primary endpoints:** ELU − ReLU in the median unit's jackknifed ρ(plain) at epoch 3, one
  per normalisation (4), paired by seed, exact two-sided sign-flip test, Holm over the four
  (the smallest reachable Holm p is 4·2/2¹⁰ = 0.0078), 95 % t CIs. A difference is resolved
  where its Holm p is < 0.05 and its CI excludes 0: "ELU nearer" above 0, "ReLU nearer" below.
- **Secondary, descriptive:** the other measures (|mean activation|, bias-shift error, |k|,
  off-block share, top eigenvalue), ELU − ReLU per normalisation at epoch 3 with t CIs, Holm
  within that family; the share of estimable units beside them.
- **Record:** ``paper_figures/results/mechanism_dashboard_mnist_confirm``, its text written by
  ``analysis/mechanism_dashboard.py`` from the tables.

Confirmatory run of ρ(plain) over estimable units only (declared 2026-12-07, after the run above
was recorded, committed before its own runs):

- **Why.** The run above confirmed ELU nearer under all four normalisations, but fewer of
  ReLU's units were estimable (n_eff ≥ 2(d+1)): 81 % without normalisation, 91 % with
  centring and layer norm, against 100 % of ELU's. Its median is over live units, estimable or
  not, so part of the difference may come from ReLU's thin blocks (few effective inputs, a
  noisy F_λ) rather than the mechanism. This run asks whether the difference holds among
  units whose blocks are estimable.
- **Design:** as the run above (``config``; ELU and ReLU under the four normalisations, 8 arms;
  epoch 3 only) on 10 *new* seeds, 15–24 (``CONFIRMATIONS["estimable"]``), none of which an
  earlier record used.
- **Primary endpoints:** ELU − ReLU in the median over the *estimable* units (n_eff ≥ 2(d+1))
  of fc2, fc3 and fc4 of the jackknifed ρ(plain) (column ``rho_plain_jk_est``) at epoch 3,
  one per normalisation (4), paired by seed, exact two-sided sign-flip test, Holm over the
  four, 95 % t CIs; resolved where the Holm p is < 0.05 and the CI excludes 0, as above. A
  run with no estimable unit has no value; its seed's pair is left out (the README says how
  many seeds each endpoint has).
- **Secondary, descriptive:** the measures of the run above, the median over all live units
  of ρ(plain) among them (a replication of the first confirmation on new seeds), ELU − ReLU
  with t CIs, Holm within that family; the estimable shares beside them.
- **Known limit, before the run:** each net's estimable units are its own selection, and the
  selection differs between arms; a difference among estimable units is not a difference
  between the same units, and it does not remove every route by which dead or thin units
  could act (they still shape the other units' inputs).
- **Record:** ``paper_figures/results/mechanism_dashboard_mnist_confirm_estimable``, its text
  written by ``analysis/mechanism_dashboard.py`` from the tables.

Confirmatory run without normalisation, powered (declared 2026-12-07, after the two runs
above were recorded, committed before its own runs):

- **Why.** Without normalisation the two runs above disagree in what they resolve: over live
  units +0.049 [0.013, 0.086] (seeds 5–14, resolved) and +0.044 [−0.012, +0.100] (seeds
  15–24, not resolved); over estimable units +0.007 [−0.060, +0.074] (not resolved). Their
  per-seed differences have a standard deviation of 0.051–0.093, so 10 seeds resolve only
  differences above about 0.04–0.07. This run is sized to resolve smaller ones.
- **Design:** ELU and ReLU without normalisation only (2 arms), trained as above
  (``config``), on 100 *new* seeds, 25–124 (``CONFIRMATIONS["none"]``); the measures above at
  epoch 3 only. With a standard deviation of 0.093 the 95 % CI's half-width is about 0.018;
  a true difference of 0.03 is resolved with probability about 0.84 at Holm's 0.025.
- **Primary endpoints (2):** ELU − ReLU at epoch 3, paired by seed, in (a) the median over
  estimable units (n_eff ≥ 2(d+1)) of the jackknifed ρ(plain) (``rho_plain_jk_est``) and
  (b) the median over live units (``rho_plain_jk``, the first confirmation's measure); Holm
  over the two; 95 % t CIs; two-sided sign-flip p (with more than 20 seeds from 100,000
  random sign patterns, a fixed generator: ``stats.sign_flip_p``). Resolved where the Holm p
  is < 0.05 and the CI excludes 0, as above. A run with no estimable unit has no value for
  (a); its seed's pair is left out of (a) (the README says how many seeds each endpoint
  has). Where an endpoint is not resolved, its CI bounds the difference this design
  excludes.
- **Secondary, descriptive:** the other measures above, ELU − ReLU with t CIs, Holm within
  that family; the estimable shares beside them.
- **Known limits, before the run:** as the second run's (each net's estimable units are its
  own selection); one net, one data set, one rate, epoch 3.
- **Record:** ``paper_figures/results/mechanism_dashboard_mnist_confirm_none``, its text
  written by ``analysis/mechanism_dashboard.py`` from the tables.
"""

from __future__ import annotations

from typing import NamedTuple

UNITS = ("elu", "relu", "selu", "gelu")
NORMS = ("none", "centred", "bn", "ln")
EPOCHS, LR, WIDTH, DEPTH, SEEDS, BATCH = 3, 0.01, 64, 3, 5, 64
CHECKPOINTS = (0, 1, 3)
UNIT_PROBE, GRAM_PROBE = 5000, 128
LAYERS = tuple(f"fc{i}" for i in range(2, DEPTH + 2))
METRICS = {  # column: (label, better when)
    "mean_act": ("|mean activation|\n(median unit)", "lower"),
    "rho_plain_jk": ("ρ(plain), jackknifed\n(median unit)", "higher"),
    "shift_error_plain": ("bias-shift error of\nplain SGD (median unit)", "lower"),
    "abs_k": ("|k| of Theorem 2\n(median estimable unit)", "lower"),
    "offblock_share": ("Fisher mass outside\nthe unit blocks", "lower"),
    "top_eig": ("largest Fisher\neigenvalue", "lower"),
}


class Confirmation(NamedTuple):
    """A declared confirmatory run: its new seeds, its primary endpoints' columns (ELU − ReLU
    per normalisation of ``norms`` at :data:`CONFIRM_CHECKPOINTS`, the arms of
    :data:`CONFIRM_UNITS` under ``norms``; Holm over them all)."""

    seeds: range
    primaries: tuple[str, ...]
    what: str  # how its text names the primary measures
    norms: tuple[str, ...] = NORMS

    @property
    def primary(self) -> str:
        """The first primary measure."""
        return self.primaries[0]


CONFIRMATIONS = {
    "rho": Confirmation(range(5, 15), ("rho_plain_jk",), "the median unit's jackknifed ρ(plain)"),
    "estimable": Confirmation(
        range(15, 25), ("rho_plain_jk_est",), "the median estimable unit's jackknifed ρ(plain)"
    ),
    "none": Confirmation(
        range(25, 125),
        ("rho_plain_jk_est", "rho_plain_jk"),
        "the median estimable unit's and the median live unit's jackknifed ρ(plain)",
        ("none",),
    ),  # fmt: skip
}
CONFIRM_SEEDS = CONFIRMATIONS["rho"].seeds
"""The first confirmatory run's seeds: 10 new ones, none of the record's 0–4."""
CONFIRM_UNITS = ("elu", "relu")
CONFIRM_CHECKPOINTS = (EPOCHS,)
CONFIRM_PRIMARY = CONFIRMATIONS["rho"].primary


def arms(units=UNITS, norms=NORMS) -> tuple[str, ...]:
    return tuple(f"{u}-{n}" if n != "none" else u for n in norms for u in units)


def split_arm(arm: str) -> tuple[str, str]:
    unit, _, norm = arm.partition("-")
    return unit, norm or "none"


def config(arm: str, seed: int, epochs: int = EPOCHS):
    from natgrad.training import default_config

    unit, norm = split_arm(arm)
    return default_config(
        "mnist-fc", dataset="mnist", unit=unit, seed=seed, epochs=epochs, lr=LR,
        batch_size=BATCH, width=WIDTH, depth=DEPTH, centre=norm == "centred", centre_rate=0.1,
        batch_norm=norm == "bn", layer_norm=norm == "ln", checkpoint_every=1,
        keep_checkpoints=0, probe_size=64, notes=f"mechanism dashboard arm {arm}",
    )  # fmt: skip


def study(seeds: int | range = SEEDS, units=UNITS, norms=NORMS, epochs: int = EPOCHS):
    """The declared runs as a :class:`~natgrad.analysis.study.Study`: seeds ``0..seeds-1`` of
    every arm (the record), or a ``range`` of seeds of the arms of ``units`` under ``norms``
    (a confirmation's seeds and norms, :data:`CONFIRM_UNITS`: a confirmatory run); ``epochs``
    other than :data:`EPOCHS` only to resume such runs further (``natgrad.studies.mechanism_speed``)."""
    from functools import partial

    from natgrad.analysis.study import Study

    return Study("mechanism dashboard", arms(units, norms), seeds, partial(config, epochs=epochs))
