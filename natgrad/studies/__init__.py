r"""The studies natgrad ships, each a declaration run by the one pipeline.

=====================  ==================================================================
module                 the study
=====================  ==================================================================
``demo``               ``natgrad demo``: unit types × seeds → unit Fishers → tables → report
``compare``            ``natgrad compare``: ReLU/ELU × SGD/centring/QD/unit-NG, paired by seed
=====================  ==================================================================

Each declares its runs as a :class:`natgrad.analysis.study.Study` (arms × seeds →
:class:`~natgrad.training.TrainConfig`, trained and resumed by
:func:`natgrad.training.train_plan`) and its endpoints
(:class:`natgrad.analysis.endpoints.Endpoint`); the tables, statistics and reports come from
:mod:`natgrad.analysis`. The paper-figure studies (``analysis/*.py`` in the repository) are
declared the same way. This layer sits above :mod:`natgrad.analysis`: nothing below imports it.
"""
