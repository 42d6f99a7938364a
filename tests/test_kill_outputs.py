"""Issue 10, item 1: a process killed at any write of the demo's outputs (tables, report,
summary, demo.json) leaves the previous complete outputs or the new complete ones, never a
mix, and the next run removes its temporaries.

The writer runs in a forked child that SIGKILLs itself just before its k-th file operation
(``write`` on a file natgrad opened, ``fsync``, ``link``, ``replace``, ``rename``,
``unlink``, the folder exchange or ``rmtree``). The child writes what the demo writes after
training, in the demo's order (:mod:`natgrad.analysis.demo`), with new numbers: the unit
table of the previous outputs (one layer, to stay fast) with one column changed, so that
every file differs between the two. By default k runs over a seeded sample of the
operations that always holds the first, the last and those around the folder swap;
``NATGRAD_KILL_ALL=1`` kills at every one (76 operations on this demo).
"""

from __future__ import annotations

import builtins
import io
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import pytest

from natgrad import _atomic
from natgrad.analysis import summary
from natgrad.analysis.demo import analysed_epochs
from natgrad.analysis.report import load_tables, render_report, summary_text
from natgrad.analysis.summary import write_tables
from natgrad.analysis.tables import read_csv

sys.path.insert(0, str(Path(__file__).parent))
from _demo_small import SMALL, small_demo  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

OUTPUTS = ("report.html", "summary.txt", "demo.json")


def _new_tables(runs: list[Path], units) -> dict:
    """The tables :func:`write_tables` builds from ``runs`` and ``units`` (not written)."""
    built = {}

    def capture(tables, out_dir):
        built.update(tables)
        return {}

    real = summary.save_tables
    summary.save_tables = capture
    try:
        write_tables(runs, "unused", epochs=analysed_epochs(SMALL), units=units)
    finally:
        summary.save_tables = real
    return built


def _write_outputs(out: Path, tables: dict, tag: str = "new") -> None:
    """The demo's writes after training (natgrad.analysis.demo), in its order."""
    summary.save_tables(tables, out / "tables")  # what write_tables ends with
    render_report(out / "tables", out / "report.html", context={"run": tag}, figures=False)
    text = summary_text(load_tables(out / "tables")["summary"])
    _atomic.write_json(out / "demo.json", {"outputs": tag})
    _atomic.write_text(out / "summary.txt", text + "\n")


def _snapshot(out: Path) -> dict[str, bytes]:
    files = {f"tables/{p.name}": p.read_bytes() for p in sorted((out / "tables").iterdir())}
    return files | {name: (out / name).read_bytes() for name in OUTPUTS}


class _Killer:
    """Counts file operations in this (child) process and SIGKILLs it before the k-th."""

    def __init__(self, kill_at: int | None):
        self.kill_at, self.count, self.names = kill_at, 0, []

    def hit(self, name: str) -> None:
        self.count += 1
        self.names.append(name)
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        real_open = builtins.open
        killer = self

        class File:
            def __init__(self, fh):
                self._fh = fh

            def write(self, data):
                killer.hit("write")
                return self._fh.write(data)

            def __getattr__(self, name):
                return getattr(self._fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._fh.close()

        def opener(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            return File(fh) if any(c in mode for c in "wax+") else fh

        builtins.open = io.open = opener
        for mod, name in [(os, "fsync"), (os, "link"), (os, "replace"), (os, "rename"),
                          (os, "unlink"), (shutil, "rmtree"), (_atomic, "_exchange")]:  # fmt: skip
            real = getattr(mod, name)
            setattr(mod, name, lambda *a, _r=real, _n=name, **k: (killer.hit(_n), _r(*a, **k))[1])


def _run_child(
    out: Path, tables: dict, kill_at: int | None, tag: str = "new"
) -> tuple[int, list[str]]:
    """Fork; the child writes the outputs under the killer. Returns (exit signal, the
    names of the operations of a child that finished)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        code = 0
        try:
            killer = _Killer(kill_at)
            killer.install()
            _write_outputs(out, tables, tag)
            os.write(write, " ".join(killer.names).encode())
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as fh:
        ops = fh.read().decode().split()
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status), ops


@pytest.fixture(scope="module")
def before_and_after(tmp_path_factory):
    """The previous outputs (the small demo's), the new ones, the runs and the new units."""
    demo = small_demo(tmp_path_factory)
    runs = sorted(p for p in (demo / "runs").iterdir() if p.is_dir())
    base = tmp_path_factory.mktemp("kill")
    old = base / "old"
    old.mkdir()
    shutil.copytree(demo / "tables", old / "tables")
    for name in OUTPUTS:
        shutil.copy2(demo / name, old / name)
    units = read_csv(old / "tables" / "units.csv")
    units = units.take(units["layer"] == units["layer"][-1])  # one layer: small, fast tables
    units = units.with_columns(cosine=units["cosine"] * 0.5)  # new numbers in every table
    old_tables = _new_tables(runs, units.with_columns(cosine=units["cosine"] * 2))
    _run_child(old, old_tables, kill_at=None, tag="old")
    tables = _new_tables(runs, units)
    new = base / "new"
    shutil.copytree(old, new)
    signal_, ops = _run_child(new, tables, kill_at=None)
    assert signal_ == 0 and len(ops) > 20, "the uninterrupted writer failed"
    return _snapshot(old), _snapshot(new), tables, ops, base


def test_kill_at_every_write_leaves_old_or_new_outputs(before_and_after):
    old, new, tables, ops, base = before_and_after
    assert (
        all(old[k] != new[k] for k in OUTPUTS)
        and old["tables/units.csv"] != new["tables/units.csv"]
    )
    swap = ops.index("_exchange") + 1
    points = range(1, len(ops) + 1)
    if not os.environ.get("NATGRAD_KILL_ALL"):
        sample = random.Random(0).sample(list(points), min(16, len(ops)))
        points = sorted({1, swap - 1, swap, swap + 1, len(ops), *sample})
    outcomes = []
    for k in points:
        out = base / f"k{k}"
        shutil.copytree(base / "old", out)
        sig, _ = _run_child(out, tables, kill_at=k)
        assert sig == signal.SIGKILL, f"kill point {k} of {len(ops)} was not reached"
        load_tables(out / "tables")  # natgrad's reader accepts what is there ...
        found = {k_: v for k_, v in _snapshot(out).items() if k_.startswith("tables/")}
        state = [
            "old" if found == {k_: v for k_, v in old.items() if k_.startswith("tables/")}
            else "new" if found == {k_: v for k_, v in new.items() if k_.startswith("tables/")}
            else "MIXED"
        ]  # fmt: skip
        for name in OUTPUTS:  # ... and every other output is the old or the new file
            data = (out / name).read_bytes()
            state.append("old" if data == old[name] else "new" if data == new[name] else "BAD")
        assert "MIXED" not in state and "BAD" not in state, f"kill point {k}: {state}"
        outcomes.append(tuple(state))
        _atomic.clean_stale(out, recursive=True)  # what the next run does first
        left = [p for p in out.rglob("*") if _atomic.SUFFIX in p.name or ".tmp" in p.name]
        assert left == [], f"kill point {k}: temporaries left {left}"
        shutil.rmtree(out)
    assert outcomes[0] == ("old",) * 4
    assert {s[0] for s in outcomes} == {"old", "new"}  # the kills did span the table swap


def test_truncated_table_is_refused_by_the_report(before_and_after, tmp_path):
    """The reproducer of the issue: units.csv cut on a row boundary."""
    shutil.copytree(before_and_after[4] / "old" / "tables", tmp_path / "tables")
    path = tmp_path / "tables" / "units.csv"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: len(lines) // 3]))
    from natgrad.errors import DataFileError

    with pytest.raises(DataFileError, match="units.csv does not match its checksum"):
        render_report(tmp_path / "tables", tmp_path / "report.html", figures=False)
    assert not (tmp_path / "report.html").exists()
