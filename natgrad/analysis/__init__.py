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
``study``              a study as data: arms × seeds → run directories, curves, endpoints
=====================  ==============================================================

The core library (:mod:`natgrad.fisher`, :mod:`natgrad.theorems`) imports nothing from
here; this subpackage is where pandas and matplotlib are used. The studies themselves
(``natgrad demo``, ``natgrad compare``) are declared in :mod:`natgrad.studies`.
"""
