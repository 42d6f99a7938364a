r"""The studies natgrad ships, each a declaration run by the one pipeline.

``demo`` (``natgrad demo``) and ``compare`` (``natgrad compare``), and the paper-figure
studies ``fig2``, ``fig3``, ``bn_cnn``, ``direction_audit``, ``mechanism_dashboard``, ``mechanism_speed`` and
``fair_compare`` (each module's docstring: what it declares). Each declares its runs as a
:class:`natgrad.analysis.study.Study` and its endpoints
(:class:`natgrad.analysis.endpoints.Endpoint`); the tables, statistics and reports come from
:mod:`natgrad.analysis`. A paper-figure study's stages (train in pieces, analyse, record)
are a script in the repository's ``analysis/`` folder that imports its declaration from here.
This layer sits above :mod:`natgrad.analysis`: nothing below imports it.
"""
