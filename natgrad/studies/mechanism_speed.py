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

__all__ = ["EPOCHS", "FROM_EPOCH", "RHO", "RHO_EST", "SEEDS", "SOURCE", "study"]


def study():
    """The declared runs: the source confirmation's arms and seeds, to :data:`EPOCHS`."""
    return dashboard_study(SEEDS, CONFIRM_UNITS, CONFIRMATIONS[SOURCE].norms, epochs=EPOCHS)
