r"""A direction audit of the optimizers people use, in the whole-network Fisher (issue 26)
(stages: ``analysis/direction_audit.py``).

Declared before its runs (committed then in ``analysis/direction_audit.py``; moved here unchanged):

- **Nets:** ``mnist-fc`` with depth 3 and width 32 (4,522 parameters) on scikit-learn's 8×8
  digits (1,437 training images), ELU, ReLU and SELU, seeds 0–4 (run j of every unit type
  from the same initial weights), trained by natgrad's trainer (``train_plan``) with SGD,
  lr 0.05, batch 64, 20 epochs; checkpoints at epochs 0 (initialisation) and 20.
- **At each checkpoint:** the exact whole-network Fisher F on the 360 held-out test digits
  (no selection is made on them), g the gradient of the mean log-likelihood on the training
  images, and the directions of :mod:`natgrad.analysis.directions` (plain SGD, centred SGD,
  diagonal, QD, block-diagonal NG, unit NG, K-FAC and EKFAC from curvlinops, Adam's settled
  step, the full NG), all with one damping: λ = 1e-3 per unit (μ_u = λ·tr F_uu/(d+1)).
  Shampoo: no maintained implementation installs here. Also the Frobenius share of F inside
  the unit blocks and λ_max / mean λ.
- **Measures:** ρ against the full NG (``rho_full``), against the unit NG (``rho_unit``), and
  the log-likelihood gain per unit of √(2 KL) (``decrease_per_kl``).
- **Primary endpoints** (epoch 20, every unit type; Holm over the 6): unit NG − K-FAC and
  unit NG − EKFAC in ``rho_full``, paired by seed. Everything else is descriptive, with BCa
  CIs over seeds (seeds are the replicates). Amended after the record: natgrad's CIs of means
  are now Student t (``docs/theory.md``, "Statistics"); the committed record keeps its BCa
  CIs, and ``analysis/ci_amendment.py`` shows that no reading of it moves under t.

Confirmatory run (declared 2026-12-07, committed before its runs):

- **Why.** The record above (``paper_figures/results/direction_audit_digits``) found all six
  primary differences positive on every seed, but 5 seeds cannot reach p < 0.05 under the
  declared test (every Holm p 0.375); its README says a confirmatory run needs at least 8 seeds.
- **Design:** the same nets, training, checkpoints, probe, directions, damping (λ = 1e-3) and
  measures as above, on 10 *new* seeds, 5–14 (:data:`CONFIRM_SEEDS`), so that the seeds that
  suggested the hypothesis play no part in testing it.
- **Primary endpoints:** the same six (unit NG − K-FAC and unit NG − EKFAC in ``rho_full`` at
  epoch 20, for ELU, ReLU and SELU), paired by seed, exact two-sided sign-flip test, Holm over
  the six (the smallest reachable Holm p is 6·2/2¹⁰ = 0.012). The hypothesis, from the
  exploratory record: each difference is positive. A difference is confirmed where its Holm p
  is < 0.05 and its 95 % t CI lies above 0; one of the six not confirmed is reported as such.
- **Everything else is descriptive** (the other methods' ρ, the ranking, the unit-block share
  and λ_max / mean λ), with 95 % t CIs over the 10 seeds.
- **Record:** ``paper_figures/results/direction_audit_digits_confirm``, its text written by
  ``analysis/direction_audit.py`` from the tables.
"""

from __future__ import annotations

UNITS = ("elu", "relu", "selu")
EPOCHS, LR, WIDTH, DEPTH, SEEDS = 20, 0.05, 32, 3, 5
CHECKPOINTS = (0, EPOCHS)
PRIMARY = (("unit", "kfac"), ("unit", "ekfac"))
CONFIRM_SEEDS = range(5, 15)
"""The confirmatory run's seeds: 10 new ones, none of the exploratory record's 0–4."""


def study(seeds: int | range):
    """The declared runs as a :class:`~natgrad.analysis.study.Study`: seeds ``0..seeds-1``
    (the exploratory record) or a ``range`` of them (:data:`CONFIRM_SEEDS`)."""
    from natgrad.analysis.study import Study
    from natgrad.training import default_config

    def config(unit: str, seed: int):
        return default_config("mnist-fc", dataset="digits", unit=unit, seed=seed, epochs=EPOCHS,
                              lr=LR, width=WIDTH, depth=DEPTH, dtype="float64",
                              checkpoint_every=EPOCHS, probe_size=64)  # fmt: skip

    return Study("direction audit", UNITS, seeds, config)
