r"""The one registry of reported metrics: name, label, scale, which way is "better", meaning.

Tables, summaries, plots and the report read labels, scales and directions from here; the
report prints the meanings as its column legend. ``better`` is ``"higher"``, ``"lower"``,
``"closer_to_zero"`` (compared on the absolute value) or ``None`` (descriptive only).
``source`` says which table a metric comes from: ``"units"`` (one value per unit,
summarised per seed as the median over the analysed units) or ``"curves"`` (one value per
run, from its learning curves and activation records).

Example:
    >>> METRICS["rho_plain"].label
    'ρ(plain)'
    >>> [m.name for m in headline()][:2]
    ['rho_plain', 'rho_centred']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "Metric", "headline", "label", "paper_claims"]


@dataclass(frozen=True)
class Metric:
    """One reported metric (see the module docstring)."""

    name: str
    label: str
    meaning: str
    better: str | None = None
    scale: str = "linear"
    source: str = "units"
    estimable_only: bool = False  # needs n_eff >= 2(d+1) to be a measurement
    reached: str | None = None  # a censored time to an event: the 0/1 column "it happened"


_M = [
    Metric("rho_plain", "ρ(plain)",
           "Fisher efficiency of the plain gradient: cos∠(g, F_λ⁻¹g) in the Fisher metric F_λ "
           "(1 = the plain gradient IS the unit natural gradient; invariant to reparametrising "
           "the unit).", "higher"),
    Metric("rho_centred", "ρ(centred)",
           "Fisher efficiency of the plain step taken on centred incoming activations "
           "(Schraudolph 1998; Raiko et al. 2012): what centring buys.", "higher"),
    Metric("rho_quasidiagonal", "ρ(quasi-diag.)",
           "Fisher efficiency of Ollivier's quasi-diagonal update (diagonal and bias row of "
           "F_λ, each (w_j, w0) pair solved exactly).", "higher"),
    Metric("rho_diagonal", "ρ(diagonal)",
           "Fisher efficiency of the diagonally preconditioned gradient diag(F_λ)⁻¹g.", "higher"),
    Metric("rho_blockdiag", "ρ(block-diag.)",
           "Fisher efficiency of the update that ignores the weight–bias coupling b (Theorem 2's "
           "comparison).", "higher"),
    Metric("rho_plain_jk", "ρ(plain), jackknifed",
           "ρ(plain) with the finite-probe bias removed: 2ρ(whole probe) − mean ρ(its halves) "
           "(the plain estimate is biased low by O((d+1)/n_eff), so unit types with different "
           "n_eff would be compared with different biases); one unit's can leave [−1, 1].",
           "higher"),
    Metric("rho_centred_jk", "ρ(centred), jackknifed", "ρ(centred), jackknifed as ρ(plain).",
           "higher"),
    Metric("rho_quasidiagonal_jk", "ρ(quasi-diag.), jackknifed",
           "ρ(quasi-diag.), jackknifed as ρ(plain).", "higher"),
    Metric("rho_blockdiag_jk", "ρ(block-diag.), jackknifed",
           "ρ(block-diag.), jackknifed as ρ(plain).", "higher"),
    Metric("n_eff_over_d1", "n_eff/(d+1)",
           "Median over analysed units of n_eff/(d+1): how many probe inputs per parameter "
           "each block rests on (≥ 2 to be estimable).", "higher", "log"),
    Metric("coupling_cost", "1 − ρ(block-diag.)",
           "What ignoring the weight–bias coupling costs: 1 − ρ(block-diagonal).", "lower",
           "log"),
    Metric("shift_error_plain", "bias-shift err. (plain)",
           "|shift(g) − shift_natural| / |shift_natural|: relative error of the plain gradient's "
           "bias shift E_p(a)ᵀu_w + u_0 against the natural gradient's (Theorem 2).", "lower",
           "log"),
    Metric("shift_error_blockdiag", "bias-shift err. (block-diag.)",
           "The same for the block-diagonal update.", "lower", "log"),
    Metric("n_eff", "n_eff",
           "Effective sample size of the δ̄²-weighted probe, (Σ c_n)² / Σ c_n²; the q-moments, "
           "s, k and the corrected mean are estimable only where n_eff ≫ d+1.", "higher", "log"),
    Metric("estimable", "estimable",
           "Fraction of units with n_eff ≥ 2(d+1).", "higher"),
    Metric("cond", "κ(F)",
           "Exact condition number of the undamped block (eigvalsh); inf where singular.",
           None, "log"),
    Metric("mean_q_norm", "‖E_q(a)‖₂",
           "Norm of the δ̄²-reweighted incoming mean E_q(a) = b/c.", "closer_to_zero"),
    Metric("s_c", "s·c",
           "s·c = 1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a) ≥ 1 of F_λ (Theorem 1; 1 iff F is block diagonal).",
           "lower", "log", estimable_only=True),
    Metric("k", "k",
           "Theorem 2's k = (E_q(a) − E_p(a))ᵀVar_q(a)⁻¹E_q(a) of F_λ.", "closer_to_zero",
           estimable_only=True),
    Metric("corrected_mean_norm", "‖E_p − (1+k)E_q‖₂",
           "Norm of the incoming mean the natural gradient acts as if it saw (Theorem 2).",
           "closer_to_zero", estimable_only=True),
    Metric("dead", "dead",
           "Fraction of units whose block is zero on the probe (tr F = 0: they pass no gradient; excluded).",
           "lower"),
    Metric("abs_median_activation", "|median act.|",
           "Fig 2a: |median over all hidden units of each unit's mean activation| at the last "
           "epoch (the paper: ELU closest to 0).", "lower", source="curves"),
    Metric("train_loss_auc", "train-loss AUC",
           "Fig 2b: mean training loss over the epochs (area under the curve / epochs; the "
           "paper: ELU falls fastest).", "lower", source="curves"),
    Metric("log_train_loss_auc", "log10 train-loss AUC",
           "Fig 2b on a log scale: mean over the epochs of log10(training loss), so that late "
           "epochs, where every loss is near 0, count as much as early ones.", "lower",
           source="curves"),
    Metric("epochs_to_loss", "epochs to loss",
           "Fig 2b: first epoch whose training loss is at or below the threshold stated in the "
           "report (E + 1 if never: censored, so compared by order where a run is).", "lower",
           source="curves", reached="epochs_reached"),
    Metric("median_activation_var", "var(median act.)",
           "Appendix C: variance over epochs ≥ 1 of the median unit mean activation (the paper: "
           "much larger in ReLU nets).", "lower", "log", source="curves"),
    Metric("test_error", "test error",
           "Test error, mean of the last epochs (stated in the report).", "lower",
           source="curves"),
    Metric("test_error_at_best_val", "test error (best val.)",
           "Test error at the epoch of lowest validation error (selected on the validation "
           "split, never on test).", "lower", source="curves"),
]  # fmt: skip

METRICS: dict[str, Metric] = {m.name: m for m in _M}


def label(name: str) -> str:
    """The label of metric ``name`` (the name itself if it is not registered)."""
    return METRICS[name].label if name in METRICS else name


def headline() -> list[Metric]:
    """The measures that answer the paper's question, in report order."""
    return [METRICS[n] for n in ("rho_plain", "rho_centred", "rho_quasidiagonal", "rho_blockdiag")]


def paper_claims() -> list[Metric]:
    """The paper's own claims (Fig 2, Appendix C), per run."""
    return [m for m in METRICS.values() if m.source == "curves"]
