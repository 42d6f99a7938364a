"""Study: the digits smoke mode of the main job — mnist-fc on scikit-learn's 8×8 digits, seven unit types
(ELU, ReLU, LReLU, SReLU, SELU, ReLU+BN, ELU+BN) × 8 seeds, 20 epochs, held-out probe.

    python analysis/digits_demo.py [--out reports/digits] [--record paper_figures/results/digits_demo]

The same as ``natgrad demo --dataset digits``; ``--record`` copies the summary tables, figures and
provenance into a folder to commit (:func:`natgrad.analysis.record.record_study`).
"""

from __future__ import annotations

import sys

from natgrad.studies.demo import for_dataset, study

CONFIG = for_dataset("digits", out="reports/digits")


def run(argv: list[str] | None = None) -> int:
    return study(CONFIG, argv, title="natgrad demo: mnist-fc on the digits", doc=__doc__)


if __name__ == "__main__":
    sys.exit(run())
