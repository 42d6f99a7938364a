r"""Does a nearer plain gradient make training faster? The third mechanism confirmation's runs,
resumed from epoch 3 to epoch 10 (stages: ``analysis/mechanism_speed.py``).

Declared 2026-12-07, committed before any of its training, and before any training loss of
these runs was read, except the epoch-0 and epoch-1 rows of one run (ELU, seed 25), seen
while checking the runs' format. The ρ values were read: they are the confirmation's record.

- **Why.** The paper's mechanism has two steps: ELU brings the plain gradient nearer the unit
  natural gradient, and a nearer gradient learns faster. The third confirmation
  (``paper_figures/results/mechanism_dashboard_mnist_confirm_none``) resolved the first step
  on 100 seeds without normalisation at epoch 3: ELU − ReLU in ρ(plain) +0.048 [0.038,
  0.058] over live units and +0.013 [0.003, 0.024] over estimable ones. It did not test the
  second.
- **Runs.** The confirmation's 200 runs (:data:`SOURCE`: ELU and ReLU without normalisation,
  seeds 25–124, ``mnist-fc`` 3×64 on MNIST, SGD lr 0.01, batch 64), copied with their
  epoch-3 checkpoints (:func:`natgrad.training.carry.copy_runs`, ``resume=True``) into a
  folder of their own and resumed by the same trainer to epoch :data:`EPOCHS` (10), nothing
  else changed: the same data order, the same rate.
- **Per run.** L_e, the training loss of epoch e (the trainer's running mean over that
  epoch's steps, natgrad's one definition); the **fall after the measure**,
  log10 L_3 − log10 L_10 (the measure of the Fig 2 protocol's relation table); ρ, the
  median over the live units of fc2–fc4 of the jackknifed ρ(plain) at epoch 3 (λ = 1e-3,
  exact unit Fishers on 5,000 validation images), read from the confirmation's
  ``dashboard.csv``, not measured again.
- **Primary endpoints (2).** Holm over the two; resolved where the Holm p is < 0.05 and the
  95 % CI excludes 0.

  1. *Speed*: ELU − ReLU in the fall, paired by seed; Student t CI; two-sided sign-flip p
     (100,000 random sign patterns of a fixed generator, ``stats.sign_flip_p``). Above 0:
     ELU's training loss falls further after epoch 3.
  2. *Link*: the Spearman correlation over the 100 seeds between ELU − ReLU in ρ at epoch 3
     and ELU − ReLU in the fall (``stats.rank_correlation``): 95 % BCa bootstrap CI over
     seeds (10,000 resamples), two-sided permutation p (100,000 permutations), fixed
     generators. The mechanism predicts it above 0: seeds where ELU's plain gradient is
     relatively nearer are those where ELU's loss falls relatively further.

- **Secondary (descriptive), Holm within the family:** per unit type, the Spearman
  correlation of a run's ρ with its own fall; the link (2) with ρ over estimable units
  (``rho_plain_jk_est``); ELU − ReLU in the log10 training-loss AUC over epochs 1–10
  (``stats.loss_auc``), in the training loss at epochs 3 and 10 (log10), and in the
  validation loss and error at epoch 10.
- **Size.** 100 seeds give the t CI of the fall a half-width of about 0.2 standard
  deviations of its per-seed differences; a Spearman correlation of 0.3 is resolved at
  Holm's 0.025 with probability about 0.75.
- **Known limits, before the run.** (2) and the per-unit correlations are associations over
  seeds, not causes: a seed's initial weights shape both its ρ and its later course. The
  fall depends on where the loss stands at epoch 3 (a lower loss may have less far to
  fall), so the levels are reported beside it. One net, one data set, one rate; speed in
  epochs, not seconds.
- **Record:** ``paper_figures/results/mechanism_speed_mnist``, its text written by
  ``analysis/mechanism_speed.py`` from its tables.

Replication on the paper's net (declared 2026-12-07, after the record above was seen,
committed before its own runs):

- **Why.** The record above is one small net (3×64), where ELU's plain gradient is nearer
  yet ReLU's loss falls further. On the paper's Fig 2 net (``mnist-fc`` 8×128) the demo
  record (``paper_figures/results/mnist_demo``, 8 seeds, 3 epochs) found ELU both nearer
  (ρ(plain) at epoch 1, +0.067 [0.003, 0.13]) and faster (log10 training-loss AUC over
  epochs 1–3, −0.156 [−0.165, −0.147]); whether the two go together over seeds was not
  asked there, and 8 seeds could not answer it.
- **Runs** (:func:`paper_study`): ``mnist-fc`` 8×128 (the demo's net) on MNIST, ELU and ReLU
  without normalisation, SGD lr 0.01, batch 64, :data:`EPOCHS` (10) epochs with a checkpoint
  at every epoch, trained from scratch on 100 *new* seeds, :data:`PAPER_SEEDS` (1000–1099;
  a seed's two arms from the same initial weights), otherwise the dashboard's config.
- **Per run:** ρ at epoch 3 measured as the dashboard measures it (median over the live
  units of the layers fed by hidden units, :data:`PAPER_LAYERS` fc2–fc9, of the jackknifed
  ρ(plain); exact unit Fishers, λ = 1e-3, g the training set's mean gradient) but on all
  :data:`PAPER_PROBE` (10,000) validation images, as the demo; also over estimable units,
  the share of estimable units and the median |mean activation| of the hidden units on the
  same images. The losses as above. No whole-network (Gram) measures: they do not fit this
  net on this machine.
- **Primary endpoints (3),** Holm over the three, resolved by the same rule: (0) *nearer*:
  ELU − ReLU in ρ at epoch 3, paired by seed, t CI, sign-flip p (the mechanism's first
  step on this net); (1) *speed* and (2) *link*, as above.
- **Secondary (descriptive), Holm within the family:** those above, and ELU − ReLU in the
  share of estimable units and in the median |mean activation| at epoch 3.
- **Known limits, before the run:** those above; and n_eff on this net: the demo's median
  n_eff/(d+1) was 8–11 at epoch 1 on the same 10,000 images, with 79 % of ReLU's units
  estimable against 99.6 % of ELU's, so the live-unit median (0) may again differ from the
  estimable-unit one (reported beside it).
- **Record:** ``paper_figures/results/mechanism_speed_mnist_8x128``.
"""

from __future__ import annotations

from natgrad.studies.mechanism_dashboard import CONFIRM_UNITS, CONFIRMATIONS
from natgrad.studies.mechanism_dashboard import EPOCHS as FROM_EPOCH
from natgrad.studies.mechanism_dashboard import study as dashboard_study

EPOCHS = 10
SOURCE = "none"  # the confirmation (``CONFIRMATIONS`` key) whose runs and ρ are taken on
SEEDS = CONFIRMATIONS[SOURCE].seeds
RHO, RHO_EST = "rho_plain_jk", "rho_plain_jk_est"
PERMUTATIONS, RESAMPLES = 100_000, 10_000
SECONDARY_DIFFS = ("log_train_loss_auc", "log_train_loss_e3", "log_train_loss_e10",
                   "val_loss_e10", "val_error_e10")  # fmt: skip

PAPER_SEEDS = range(1000, 1100)
PAPER_WIDTH, PAPER_DEPTH, PAPER_PROBE = 128, 8, 10_000
PAPER_LAYERS = tuple(f"fc{i}" for i in range(2, PAPER_DEPTH + 2))

__all__ = ["EPOCHS", "FROM_EPOCH", "PAPER_LAYERS", "PAPER_PROBE", "PAPER_SEEDS", "RHO",
           "RHO_EST", "SEEDS", "SOURCE", "paper_study", "study"]  # fmt: skip


def study():
    """The declared runs: the source confirmation's arms and seeds, to :data:`EPOCHS`."""
    return dashboard_study(SEEDS, CONFIRM_UNITS, CONFIRMATIONS[SOURCE].norms, epochs=EPOCHS)


def paper_config(arm: str, seed: int):
    """The replication's run of ``arm`` and ``seed``: the dashboard's config on the paper's
    8×128 net, to :data:`EPOCHS`."""
    import dataclasses

    from natgrad.studies.mechanism_dashboard import config

    return dataclasses.replace(config(arm, seed, EPOCHS), width=PAPER_WIDTH, depth=PAPER_DEPTH,
                               notes=f"mechanism speed replication, mnist-fc 8x128, {arm}")  # fmt: skip


def paper_study():
    """The replication's declared runs (:func:`paper_config`), ELU and ReLU on
    :data:`PAPER_SEEDS`."""
    from natgrad.analysis.study import Study

    return Study("mechanism speed, mnist-fc 8x128", CONFIRM_UNITS, PAPER_SEEDS, paper_config)
