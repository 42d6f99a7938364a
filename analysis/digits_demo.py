"""Study: the digits smoke mode of the main job — mnist-fc on scikit-learn's 8×8 digits, seven unit types
(ELU, ReLU, LReLU, SReLU, SELU, ReLU+BN, ELU+BN) × 8 seeds, 20 epochs, held-out probe.

    python analysis/digits_demo.py [--out reports/digits] [--record paper_figures/results/digits_demo]

The same as ``natgrad demo --dataset digits``; ``--record`` copies the summary tables, figures and
provenance into a folder to commit (:func:`natgrad.analysis.record.record_study`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from natgrad.analysis.demo import for_dataset, main
from natgrad.analysis.record import record_study

CONFIG = for_dataset("digits", out="reports/digits")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=CONFIG.out)
    parser.add_argument("--record", default=None, help="folder to copy the results into")
    args = parser.parse_args(argv)
    config = replace(CONFIG, out=args.out)
    main(config)
    if args.record:
        print(record_study(config.out, args.record, title="natgrad demo: mnist-fc on the digits"))
    return 0


if __name__ == "__main__":
    sys.exit(run())
