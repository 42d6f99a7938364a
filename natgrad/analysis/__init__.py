r"""From run directories to tables, summaries and the report: the analysis pipeline.

=====================  ==============================================================
module                 what it computes
=====================  ==============================================================
``unitstats``          per unit of a model: Theorems 1–2 and the measures, one row each
``runs``               run directories → tidy tables (curves, activations, units)
``tables``             CSV reading/writing, seed-level summaries
``summary``            per-unit-type summaries and the paired comparisons over seeds
``report``             the self-contained HTML report
``plots``              every figure, drawn from the tables (matplotlib imported lazily)
``build``              ``natgrad tables RUNS --out DIR``: tables (and report) from runs
``demo``               ``natgrad demo``: the main job, training → tables → report
``compare``            ``natgrad compare``: ReLU/ELU × SGD/centring/QD/unit-NG training runs
=====================  ==============================================================

The core library (:mod:`natgrad.fisher`, :mod:`natgrad.theorems`) imports nothing from
here; this subpackage is where pandas and matplotlib are used.
"""
