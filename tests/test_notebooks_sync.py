"""Every jupytext notebook ``notebooks/*.py`` and its paired ``.ipynb`` have the same cells."""

from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("*.py"))


def _cells(path: Path) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in jupytext.read(path).cells]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_notebook_pair_in_sync(script):
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.exists(), (
        f"{ipynb.name} is missing: run `python -m jupytext --sync {script.name}` in notebooks/"
    )
    assert _cells(ipynb) == _cells(script), (
        f"{script.name} and {ipynb.name} differ: edit the .py and run `python -m jupytext --sync notebooks/{script.name}`"
    )
