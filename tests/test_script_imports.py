"""The scripts outside the package (bench/, analysis/, paper_figures/) import only names that
natgrad (and, for the benchmarks, ``bench/_common.py``) still has: a refactor that renames or removes a helper one of them uses fails here, not
weeks later when someone reruns a benchmark. Checked statically (every ``from natgrad… import``,
at module level or inside a function), so no script runs."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for d in ("bench", "analysis", "paper_figures") for p in (ROOT / d).glob("*.py"))


LOCAL = ("natgrad", "_common")  # the package, and the benchmarks' shared helpers (bench/_common.py)


def _module(path: Path, name: str):
    """``name`` as a script in ``path``'s folder imports it: ``_common`` is its sibling file."""
    if name != "_common":
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location("_common", path.parent / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _natgrad_imports(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LOCAL:
            out += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, "") for a in node.names if a.name.startswith("natgrad")]
    return out


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_natgrad_name_a_script_imports_exists(path):
    missing = []
    for line, module, name in _natgrad_imports(path):
        mod = _module(path, module)
        if name and name != "*" and not hasattr(mod, name):
            try:  # a submodule imported by name (from natgrad import fisher)
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not missing, "scripts import names that no longer exist:\n" + "\n".join(missing)


def test_the_scripts_were_found():
    assert len(SCRIPTS) >= 20, [p.name for p in SCRIPTS]
