"""Study: mnist-fc on real Fashion-MNIST (IDX files of the Debian package
``dataset-fashion-mnist``), ELU, ReLU, LReLU, SReLU and ReLU+BN × 8 seeds, SGD lr 0.01,
batch 64, held-out probe of 2,000 test images, relative damping 1e-3 with the sweep.

    python analysis/fashion_mnist_study.py [--epochs 3] [--out reports/fashion]
        [--record paper_figures/results/fashion_mnist_study]

On this project's 2-core CPU the recorded run used 3 epochs (the time a session allows);
``--epochs`` and ``--units`` take more where the machine allows.
"""

from __future__ import annotations

import sys

from natgrad.argtypes import positive_int
from natgrad.studies.demo import for_dataset, study

CONFIG = for_dataset(
    "fashion-mnist",
    units=("elu", "relu", "lrelu", "srelu", "relu-bn"),
    seeds=8,
    epochs=3,
    checkpoint_every=3,
    probe_size=2000,
    out="reports/fashion",
)


def _options(parser) -> object:
    parser.add_argument("--epochs", type=positive_int, default=CONFIG.epochs)
    parser.add_argument("--units", default=",".join(CONFIG.units))
    return lambda a: dict(epochs=a.epochs, checkpoint_every=a.epochs,
                          units=tuple(a.units.split(",")))  # fmt: skip


def run(argv: list[str] | None = None) -> int:
    title = "mnist-fc on Fashion-MNIST: how close is SGD to the unit natural gradient?"
    return study(CONFIG, argv, title=title, doc=__doc__, options=_options)


if __name__ == "__main__":
    sys.exit(run())
