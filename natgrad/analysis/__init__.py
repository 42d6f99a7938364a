r"""From run directories to tables, summaries and the report: the analysis pipeline.

``unitstats`` (per unit: Theorems 1–2 and the measures), ``runs`` (run directories → tidy
tables), ``csvtables`` (checked CSV reading and writing), ``stats`` and ``endpoints``
(seed-level summaries, paired comparisons), ``summary`` (a study's tables), ``report`` (the
HTML report), ``plots`` (every figure; matplotlib imported lazily), ``build`` (``natgrad
tables``), ``study`` (a study as data: arms × seeds → run directories, curves, endpoints).

The core library (:mod:`natgrad.fisher`, :mod:`natgrad.theorems`) imports nothing from
here; this subpackage is where pandas and matplotlib are used. The studies themselves
(``natgrad demo``, ``natgrad compare``) are declared in :mod:`natgrad.studies`.
"""
