"""Issue 10, item 1: a process killed at any write of the demo's outputs (tables, report,
summary, demo.json) leaves the previous complete outputs or the new complete ones, never a
mix, and the next run removes its temporaries.

The writer runs in a forked child that SIGKILLs itself just before its k-th file operation
(``write`` on a file natgrad opened, ``fsync``, ``link``, ``replace``, ``rename``,
``unlink``, the folder exchange or ``rmtree``). The child writes what the demo writes after
training, in the demo's order (:mod:`natgrad.studies.demo`): the small demo's tables (cut
to 200 rows each, to stay fast), tagged "old" or "new" in an extra column and in the
context, so that every file differs between the two. By default k runs over a seeded
sample of the operations that always holds the first, the last and those around the
folder swap; ``NATGRAD_KILL_ALL=1`` kills at every one.
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
from natgrad.analysis.report import render_report, summary_text
from natgrad.analysis.summary import read_tables, write_tables
from natgrad.errors import DataFileError
from natgrad.studies.demo import analysed_epochs

sys.path.insert(0, str(Path(__file__).parent))
from _demo_small import SMALL, small_demo  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

OUTPUTS = ("report.html", "summary.txt", "demo.json")


def _demo_tables(runs: list[Path]) -> tuple[dict, dict]:
    """The frames and context :func:`write_tables` builds from the demo's runs (the unit
    tables come from the runs' cache), each frame cut to 200 rows; nothing is written."""
    built = {}

    def capture(frames, out_dir, context=None):
        built.update(frames=frames, context=context)
        return {}

    real = summary.save_tables
    summary.save_tables = capture
    try:
        write_tables(runs, "unused", epochs=analysed_epochs(SMALL), probe_size=SMALL.probe_size,
                     rel_damping=SMALL.rel_damping)  # fmt: skip
    finally:
        summary.save_tables = real
    return {k: f.head(200) for k, f in built["frames"].items()}, built["context"]


def _tagged(frames: dict, context: dict, tag: str) -> tuple[dict, dict]:
    return {k: f.assign(version=tag) for k, f in frames.items()}, dict(context, version=tag)


def _write_outputs(out: Path, tables: tuple[dict, dict], tag: str) -> None:
    """The demo's writes after training (natgrad.studies.demo), in its order."""
    summary.save_tables(tables[0], out / "tables", tables[1])  # how write_tables ends
    render_report(out / "tables", out / "report.html", context={"run": tag}, figures=False)
    text = summary_text(read_tables(out / "tables")["summary"])
    _atomic.write_json(out / "demo.json", {"outputs": tag})
    _atomic.write_text(out / "summary.txt", f"{tag}\n{text}\n")  # tagged: old != new


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
    out: Path, tables: tuple, kill_at: int | None, tag: str = "new"
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
    """Snapshots of the old and new outputs, the new tables, the operations, the folder."""
    demo = small_demo(tmp_path_factory)
    runs = sorted(p for p in (demo / "runs").iterdir() if p.is_dir())
    frames, context = _demo_tables(runs)
    base = tmp_path_factory.mktemp("kill")
    old, new = base / "old", base / "new"
    old.mkdir()
    assert _run_child(old, _tagged(frames, context, "old"), kill_at=None, tag="old")[0] == 0
    shutil.copytree(old, new)
    tables = _tagged(frames, context, "new")
    signal_, ops = _run_child(new, tables, kill_at=None)
    assert signal_ == 0 and len(ops) > 20, "the uninterrupted writer failed"
    return _snapshot(old), _snapshot(new), tables, ops, base


def test_kill_at_every_write_leaves_old_or_new_outputs(before_and_after):
    old, new, tables, ops, base = before_and_after
    assert old.keys() == new.keys()
    assert [k for k in new if old[k] == new[k]] == []
    old_tables = {k: v for k, v in old.items() if k.startswith("tables/")}
    new_tables = {k: v for k, v in new.items() if k.startswith("tables/")}
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
        read_tables(out / "tables")  # natgrad's reader accepts what is there ...
        found = {k_: v for k_, v in _snapshot(out).items() if k_.startswith("tables/")}
        state = ["old" if found == old_tables else "new" if found == new_tables else "MIXED"]
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
    with pytest.raises(DataFileError, match="units.csv does not match its checksum"):
        render_report(tmp_path / "tables", tmp_path / "report.html", figures=False)
    assert not (tmp_path / "report.html").exists()
