r"""The paper's batch-norm question (Fig 5, Table 1) on a CNN that fits this CPU (issue 23,
item 2): does ELU have the lowest test error of the four units, and does batch norm help
ReLU but not ELU? (stages: ``analysis/bn_cnn.py``)

Declared before any run (committed then in ``analysis/bn_cnn.py``; moved here unchanged):

- **Net:** the paper's ``cifar-11`` recipe (7 stacks, 11 conv layers, 2×2 max-pool after the
  stacks while the map is ≥ 2×2, per-stack dropout 0, .1, .2, .3, .4, .5, 0, a 1×1 conv head
  and global average pooling) at ``CHANNEL_SCALE`` = 1/8 of its widths (24, 24-30, 30-32,
  32-35, 35-38, 38 channels; 26,597 parameters), on MNIST 1×28×28, 10 classes.
- **Arms:** ELU, ReLU, LReLU (α 0.1), SReLU, ReLU+BN, ELU+BN (batch norm after every conv
  but the head, before the unit); seeds 0–9, run j of every arm from the same initial
  weights.
- **Recipe (the paper's, scaled):** SGD, momentum 0.9, L2 5e-4, batch 100, no augmentation
  (MNIST), pixels in [0, 1]; ``EPOCHS`` epochs of MNIST's 50,000 training images (500
  iterations each); learning rate 0.01, halved at 21 % of the run and then ÷10 at 52 % and
  82 % (the paper's 35k/85k/135k of 165k iterations: 0.01, 0.005, 5e-4, 5e-5).
- **Endpoints:** test error at the epoch of lowest validation error (MNIST's 10,000
  validation images; the test set is read only there). Primary (Holm over the four):
  ELU − ReLU, ELU − LReLU, ELU − SReLU, and the interaction (ReLU − ReLU+BN) − (ELU − ELU+BN)
  ("batch norm helps ReLU more than ELU"), each paired by seed. Secondary: ELU − ELU+BN,
  ReLU − ReLU+BN, validation curves, and the ELU/ReLU time per iteration measured in the
  same process (the paper: 1.058 on ImageNet).
"""

from __future__ import annotations

from natgrad.analysis.endpoints import Endpoint

ARMS = ("elu", "relu", "lrelu", "srelu", "relu-bn", "elu-bn")
CHANNEL_SCALE, EPOCHS, SEEDS, BATCH, LR = 0.125, 6, 10, 100, 0.01
STEPS = tuple((round(f * EPOCHS * 500), lr) for f, lr in ((0.0, LR), (35 / 165, LR / 2),
                                                         (85 / 165, LR / 20), (135 / 165, LR / 200)))  # fmt: skip


def config(arm: str, seed: int, epochs: int = EPOCHS):
    from natgrad.training import default_config

    unit, bn = (arm[:-3], True) if arm.endswith("-bn") else (arm, False)
    return default_config(
        "cifar-11", dataset="mnist", unit=unit, batch_norm=bn, seed=seed, epochs=epochs,
        channel_scale=CHANNEL_SCALE, batch_size=BATCH, lr=LR, momentum=0.9, weight_decay=5e-4,
        lr_schedule=STEPS, schedule_unit="iteration", preprocess="none", augment=False,
        checkpoint_every=1, keep_checkpoints=1, probe_size=256, notes=f"bn_cnn arm {arm}",
    )  # fmt: skip


#: The endpoints of the docstring as :class:`~natgrad.analysis.endpoints.Endpoint`\ s (written
#: out after the runs; the design is the docstring's): test error at the best-validation
#: epoch, paired by seed; the four primaries Holm-adjusted together, the secondaries
#: together.
METRIC = "test_error_at_best_val"
ENDPOINTS = (
    *(Endpoint(METRIC, "elu", o, "primary", description=f"elu - {o}")
      for o in ("relu", "lrelu", "srelu")),
    Endpoint(METRIC, "relu", "relu-bn", "primary", interaction=("elu", "elu-bn"),
             description="(relu - relu-bn) - (elu - elu-bn)"),
    *(Endpoint(METRIC, a, b, description=f"{a} - {b}")
      for a, b in (("elu", "elu-bn"), ("relu", "relu-bn"), ("elu", "relu-bn"))),
)  # fmt: skip


def study(seeds=range(SEEDS), arms=ARMS):
    """The declared runs and endpoints as a :class:`~natgrad.analysis.study.Study`."""
    from natgrad.analysis.study import Study

    return Study("batch norm on a CNN (MNIST)", arms, seeds, config, endpoints=ENDPOINTS)
