"""The package's layers point one way: every import (module-level or inside a function) goes
to the same layer or a lower one, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "natgrad"

#: Lowest first. A module belongs to the first layer whose prefix matches its name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("natgrad.errors", "natgrad.damping", "natgrad._atomic", "natgrad._lock", "natgrad.argtypes",
                    "natgrad.units", "natgrad.linalg", "natgrad._batches", "natgrad._layers",
                    "natgrad.memory", "natgrad.likelihoods", "natgrad._distributed",
                    "natgrad.testing")),
    ("core", ("natgrad.theorems", "natgrad.measures", "natgrad.unitfisher", "natgrad.accumulate",
              "natgrad.structures", "natgrad.woodbury", "natgrad.engine", "natgrad.planner",
              "natgrad.fisher", "natgrad.reference", "natgrad.network", "natgrad.models", "natgrad.data",
              "natgrad.symbolic", "natgrad.interop", "natgrad.normfisher")),
    ("optim", ("natgrad.optim",)),
    ("training", ("natgrad.training",)),
    ("analysis", ("natgrad.analysis",)),
    ("studies", ("natgrad.studies",)),
    ("interface", ("natgrad.cli", "natgrad.__main__", "natgrad")),
]  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _layer(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{name} is in no declared layer: add it to LAYERS")


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every natgrad module ``name`` imports; ``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module (importing a sibling does not make the package an edge)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _graph():
    modules = _modules()
    return modules, {n: _imports(n, p, modules) for n, p in modules.items()}


def test_every_import_points_down_or_sideways():
    _, graph = _graph()
    # the graph sees module-level and function-level imports
    assert "natgrad.engine" in graph["natgrad.fisher"]
    assert "natgrad.optim" in graph["natgrad.training.checkpoint"]  # inside a function
    upward = [
        f"{src} ({LAYERS[_layer(src)][0]}) imports {dst} ({LAYERS[_layer(dst)][0]})"
        for src, dsts in graph.items()
        for dst in dsts
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circles():
    _, graph = _graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package's __init__ re-exporting its own modules is not a circle
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_package_ships_its_type_marker():
    assert (ROOT / "py.typed").is_file()
