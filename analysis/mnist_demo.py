"""Study: the main job on the paper's data — ``natgrad demo`` with its MNIST defaults (ELU, ReLU,
LReLU, SReLU × 8 seeds, 3 epochs; unit Fishers at epoch 1 on the 10,000 validation images;
jackknifed ρ; probe-size sweep on 2 seeds; primary endpoints declared in
:func:`natgrad.studies.demo.primary_endpoints`).

    python analysis/mnist_demo.py [--out reports/demo] [--record paper_figures/results/mnist_demo]

``--record`` copies the summary tables, figures, report and provenance into a folder to commit
(:func:`natgrad.analysis.record.record_study`). A finished demo in ``--out`` is reused.
"""

from __future__ import annotations

import sys

from natgrad.studies.demo import for_dataset, study

CONFIG = for_dataset("mnist")


def run(argv: list[str] | None = None) -> int:
    return study(CONFIG, argv, title="natgrad demo: mnist-fc on MNIST", doc=__doc__)


if __name__ == "__main__":
    sys.exit(run())
