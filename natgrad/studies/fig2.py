r"""The paper's Fig 2 protocol plus SReLU: mnist-fc (784 → 8×128 → 10), ELU, ReLU, LReLU (the
paper's Fig 2 units) and SReLU (its Fig 1 and 4 unit; added here), SGD lr 0.01, batch 64,
300 epochs, 10 seeds (the paper: 5), trained as one grid (stages:
``analysis/fig2_protocol.py``).

Declared (committed then in ``analysis/fig2_protocol.py``; moved here unchanged): the runs
(:data:`UNITS` × the seeds of :data:`SETTINGS`, checkpoints every 25 epochs and at the
epochs the mechanism analyses), the mechanism's analysis (:data:`MECHANISM`), and the MNIST
protocol's endpoints (:data:`PRIMARY`, :data:`SECONDARY`, :func:`mnist_endpoints`), declared
before the MNIST runs were analysed.

**The mechanism at a common n_eff (declared 2026-12-06, after the MNIST record, before this
check was computed; post hoc, secondary, a robustness check of the mechanism endpoint):**
ELU's blocks rest on fewer effective samples than ReLU's, and the estimate of ρ depends on
n_eff; in the MNIST demo ELU's ρ lead over ReLU at epoch 1 was not resolved once adjusted
for it. So at every mechanism epoch whose blocks are estimable (:data:`ESTIMABLE_EPOCHS`,
median n_eff/(d+1) ≥ 2), from the committed per-run, per-layer medians
(``mechanism_layers.csv``), ELU − each other unit type in ρ(plain) is compared at a common
n_eff: per seed, ρ = α_type + β·log(n_eff/(d+1)) over the (unit type, layer) medians, the
seed's difference α_ELU − α_other, and those differences over the 10 seeds with their t CI
and exact sign-flip p (``natgrad.analysis.stats.neff_adjusted``); one Holm family
(``neff-adjusted``) over the epochs and the other unit types. Read from the CIs beside the
unadjusted ones; the declared endpoints stand as they are.

**The mechanism at epoch 300 on the training inputs (declared 2026-12-07, after the MNIST
record, before this analysis; post hoc, secondary):** on the validation probe (10,000
images) the median n_eff/(d+1) is 1.2 and below from epoch 25 on (0.5–0.7 at 300), so the
record's mechanism rows there compare blocks that are not estimable (n_eff ≥ 2(d+1)). The
exact unit Fisher needs inputs only (the labels are the model's), and the Fisher of the
training objective is the one over the training inputs; so the blocks of epoch 300 (the only
checkpoints kept: the record's ``resume_state/``) are computed again on the 50,000 training
images (:data:`TRAIN_PROBE`: the run's ``training_set``; g, λ = 1e-3 and the layers fc2–fc9
as in :data:`MECHANISM`; jackknifed ρ). Per run: the median over its live units of fc2–fc9
whose block is estimable of each jackknifed ρ (``<rho>_jk_est``), the median over all live
units (``rho_plain_jk``), the estimable share and the median n_eff/(d+1)
(:func:`train_probe_values` in the stage). Endpoints (:func:`train_probe_endpoints`): ELU −
ReLU, ELU − LReLU and ELU − SReLU in ``rho_plain_jk_est``, paired by seed over the 10 seeds
(t CI, exact sign-flip p), Holm over the three (family ``train-probe``), read by
``stats.declared_sign``; the others secondary, Holm within each metric over the three unit
types. Seen before this declaration: the record (its epoch-300 rows on the validation probe)
and, to decide whether the training inputs make the blocks estimable, the median
n_eff/(d+1) per layer of runs elu-s0 and relu-s0 at epoch 300 on both probes (training
images: ELU 4.5–4.9 in fc2–fc8, 2.9 in fc9; ReLU 3.2–3.4 in fc2–fc3, 2.4 in fc9, its other
layers' medians undefined for dead units; validation: 0.35–0.57 and 0.32–0.43), no ρ on the
training inputs. Limits: one epoch, at which every net fits its training set, so the Fisher
over its inputs may differ from the held-out one; it says where ρ stands at the end of
training, not along it; a seed whose run has no estimable unit drops out of that pair.
"""

from __future__ import annotations

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
#: The mechanism at epoch 300 on the training inputs (declared 2026-12-07; module docstring).
TRAIN_PROBE = dict(MECHANISM, epochs=(300,), probe_split="train-all", jackknife=True)
TRAIN_PROBE_RHO = tuple(f"{m}_jk" for m in RHO)
#: The mechanism epochs whose blocks are estimable on the probe (median n_eff/(d+1) ≥ 2; the
#: MNIST record: 44, 9, 5.5, 2.5 at epochs 0, 1, 3, 10, then 1.2 and below).
ESTIMABLE_EPOCHS = (0, 1, 3, 10)


def mechanism_endpoints():
    """The mechanism's comparisons at each analysed epoch (``by="epoch"``): ELU against each
    other unit type on ρ of every direction and n_eff/(d+1), secondary, Holm within each
    metric over the epochs and the other unit types."""
    from natgrad.analysis.endpoints import Endpoint

    return [Endpoint(m, "elu", other, "secondary", family=m)
            for m in (*RHO, "n_eff_over_d1") for other in UNITS[1:]]  # fmt: skip


def claim_endpoints(others=UNITS[1:]):
    """The protocol's claims (:data:`METRICS`, per seed from
    :func:`~natgrad.analysis.stats.claims_per_seed`), ELU against each of ``others`` paired
    by seed: descriptive (secondary), Holm within each metric over the other unit types."""
    from natgrad.analysis.endpoints import Endpoint

    return [Endpoint(m, "elu", other, "secondary", family=m) for m in METRICS for other in others]


def study(epochs: int, data_dir: str | None, dataset: str = "fashion-mnist"):
    """The protocol's runs as a :class:`~natgrad.analysis.study.Study` (``<unit>-s<seed>``)."""
    from natgrad.analysis.study import Study
    from natgrad.training import default_config

    setting = SETTINGS[dataset]

    def config(unit: str, seed: int):
        return default_config("mnist-fc", dataset=dataset, data_dir=data_dir, unit=unit,
                              seed=seed, epochs=epochs, lr=0.01, batch_size=64,
                              checkpoint_every=25,
                              checkpoint_epochs=setting["checkpoint_epochs"])  # fmt: skip

    return Study(f"Fig 2 protocol ({dataset})", UNITS, range(setting["seeds"]), config)


#: Declared before the MNIST runs were analysed (ELU against ReLU; Holm over the three).
#: Fig 2b: epochs until the training loss first reaches 0.01 (runs that never do are
#: censored at the horizon: compared by order, a sign test); Fig 2a: |median unit mean
#: activation| at epoch 25; the mechanism: the mean over the checkpoints of epochs 1-25
#: (1, 3, 10, 25) of the run's median ρ(plain). Everything else is secondary.
LOSS_LEVEL = 0.01
EARLY = (1, 3, 10, 25)
PRIMARY = (
    ("epochs_to_loss", "epochs until the training loss first reaches 0.01 (Fig 2b)"),
    ("abs_median_e25", "|median unit mean activation| at epoch 25 (Fig 2a)"),
    ("rho_plain_early", "mean ρ(plain) over epochs 1, 3, 10, 25 (the mechanism)"),
)
SECONDARY = ("train_loss_auc", "log_train_loss_auc", "abs_median_activation",
             "median_activation_var", "test_error_at_best_val", "test_error")  # fmt: skip
#: The paper's Fig 2 claims and the student reproduction (docs/paper.md).
PAPER = {
    "fastest": "ELU's training loss falls fastest",
    "median": "ELU's median unit mean activation is nearest 0",
    "flat": "the median curves are flat after epoch ~25",
    "appC": "the median varies much more over training in ReLU nets (Appendix C)",
    "student": "student reproduction (6-layer FC, Adam, 300 epochs): test accuracy ELU "
    "0.9609, ReLU 0.9577; 798 s (ELU) / 898 s (ReLU) per run on a CPU",
}


def mnist_endpoints():
    from natgrad.analysis.endpoints import Endpoint

    eps = []
    for other in ("relu", "lrelu", "srelu"):
        for metric, text in PRIMARY:
            primary = other == "relu"
            eps.append(Endpoint(metric, "elu", other, "primary" if primary else "secondary",
                                family="primary" if primary else metric,
                                reached="epochs_reached" if metric == "epochs_to_loss" else None,
                                description=text))  # fmt: skip
        for metric in SECONDARY:
            eps.append(Endpoint(metric, "elu", other, "secondary", family=metric))
    return eps


def train_probe_endpoints():
    """The mechanism at epoch 300 on the training inputs (module docstring): ELU against each
    other unit type in ρ(plain) over estimable units (family ``train-probe``, Holm over the
    three), the rest secondary (Holm within each metric)."""
    from natgrad.analysis.endpoints import Endpoint

    text = "median over estimable live units of jackknifed ρ(plain), epoch 300, training inputs"
    eps = [Endpoint("rho_plain_jk_est", "elu", other, "primary", family="train-probe",
                    description=text) for other in UNITS[1:]]  # fmt: skip
    metrics = (*(f"{m}_est" for m in TRAIN_PROBE_RHO[1:]), "rho_plain_jk", "estimable",
               "n_eff_over_d1")  # fmt: skip
    return eps + [Endpoint(m, "elu", other, "secondary", family=m)
                  for m in metrics for other in UNITS[1:]]  # fmt: skip
