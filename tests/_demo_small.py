"""The demo in its smallest mode, run once per test session and shared by the test files
(and by pytest-xdist workers, through a file lock in the session's shared temp folder)."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from natgrad.studies.demo import DemoConfig, for_dataset, main

#: The digits smoke mode: ELU, ReLU and ReLU+BN, two seeds (the replicates of the paired statistics), epochs 0 and
#: 1, every layer, 160 held-out probe inputs (> fan-in + 1 = 129).
SMALL = for_dataset(
    "digits",
    units=("elu", "relu", "relu-bn"),
    seeds=2,
    epochs=1,
    checkpoint_every=1,
    probe_size=160,
    layers="all",
    workers=1,
)


def small_demo(tmp_path_factory) -> Path:
    """The output folder of the smallest demo (built on first use). ``NATGRAD_SMALL_DEMO``
    names a folder to build it in and reuse across sessions (developers' fast iteration)."""
    if os.environ.get("NATGRAD_SMALL_DEMO"):
        out = Path(os.environ["NATGRAD_SMALL_DEMO"])
        with FileLock(str(out) + ".lock"):
            if not (out / "summary.txt").exists():
                main(DemoConfig(**{**SMALL.__dict__, "out": str(out)}), progress=False,
                     echo=lambda *a: None)  # fmt: skip
        return out
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "natgrad-demo-small"
    with FileLock(str(out) + ".lock"):
        if not (out / "summary.txt").exists():
            main(
                DemoConfig(**{**SMALL.__dict__, "out": str(out)}),
                progress=False,
                echo=lambda *a: None,
            )
    return out
