"""Study: mnist-fc on real Fashion-MNIST (IDX files of the Debian package
``dataset-fashion-mnist``), ELU, ReLU, LReLU, SReLU and ReLU+BN × 8 seeds, SGD lr 0.01,
batch 64, held-out probe of 2,000 test images, relative damping 1e-3 with the sweep.

    python analysis/fashion_mnist_study.py [--epochs 3] [--out reports/fashion]
        [--record paper_figures/results/fashion_mnist_study]

On this project's 2-core CPU the recorded run used 3 epochs (the time a session allows);
``--epochs`` and ``--units`` take more where the machine allows.
"""

from __future__ import annotations

import argparse
import sys

from natgrad.analysis.record import record_study
from natgrad.studies.demo import for_dataset, main

CONFIG = for_dataset(
    "fashion-mnist",
    units=("elu", "relu", "lrelu", "srelu", "relu-bn"),
    seeds=8,
    epochs=3,
    checkpoint_every=3,
    probe_size=2000,
    out="reports/fashion",
)


def run(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs)
    parser.add_argument("--units", default=",".join(CONFIG.units))
    parser.add_argument("--out", default=CONFIG.out)
    parser.add_argument("--record", default=None, help="folder to copy the results into")
    args = parser.parse_args(argv)
    config = replace(CONFIG, epochs=args.epochs, checkpoint_every=args.epochs, out=args.out,
                     units=tuple(args.units.split(",")))  # fmt: skip
    main(config)
    if args.record:
        title = "mnist-fc on Fashion-MNIST: how close is SGD to the unit natural gradient?"
        print(record_study(config.out, args.record, title=title))
    return 0


if __name__ == "__main__":
    sys.exit(run())
