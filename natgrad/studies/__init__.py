r"""The studies natgrad ships, each a declaration run by the one pipeline.

=======================  ================================================================
module                   the study
=======================  ================================================================
``demo``                 ``natgrad demo``: unit types × seeds → unit Fishers → tables → report
``compare``              ``natgrad compare``: ReLU/ELU × SGD/centring/QD/unit-NG, paired by seed
``fig2``                 the paper's Fig 2 protocol (mnist-fc, 4 unit types, 300 epochs)
``fig3``                 the paper's Fig 3 autoencoder (mnist-ae, BCE, rates 1e-2 and 1e-3)
``bn_cnn``               the batch-norm question (Fig 5, Table 1) on a 1/8-width cifar-11
``direction_audit``      optimizers' directions in the whole-network Fisher (digits)
``mechanism_dashboard``  unit × normalisation over training (MNIST)
``fair_compare``         the fair causal test: per-arm rates chosen on validation (MNIST)
=======================  ================================================================

Each declares its runs as a :class:`natgrad.analysis.study.Study` (arms × seeds →
:class:`~natgrad.training.TrainConfig`, trained and resumed by
:func:`natgrad.training.train_plan`) and its endpoints
(:class:`natgrad.analysis.endpoints.Endpoint`); the tables, statistics and reports come from
:mod:`natgrad.analysis`. A paper-figure study's stages (train in pieces, analyse, record)
are a script in the repository's ``analysis/`` folder that imports its declaration from here.
This layer sits above :mod:`natgrad.analysis`: nothing below imports it.
"""
