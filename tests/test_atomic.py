"""natgrad._atomic and natgrad._lock: atomic files, checked tables, JSON lines, folder swaps,
stale temporaries and the folder lock (issue 10, items 1, 3 and 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from natgrad import _atomic
from natgrad._lock import DirLock
from natgrad.errors import DataFileError, RunDirError


def _strict(text: str):
    """json.loads that refuses NaN/Infinity, as strict parsers (jq, JavaScript) do."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_non_finite_become_null(tmp_path):
    path = _atomic.write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("-inf")]})
    assert _strict(path.read_text()) == {"a": None, "b": [1.0, None]}


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = _atomic.write_text(tmp_path / "r.html", "old")
    with pytest.raises(RuntimeError), _atomic.atomic_open(path, "w") as fh:
        fh.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_truncated_or_swapped_table_is_rejected(tmp_path):
    rows = "".join(f"{i},{i * i}\n" for i in range(100))
    path = _atomic.write_table(tmp_path / "units.csv", "u,v\n" + rows)
    assert _atomic.read_checked(path).count(b"\n") == 101
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n50,") + 1])  # cut on a row boundary
    with pytest.raises(DataFileError, match=r"units\.csv.*50 rows found, 100 written"):
        _atomic.read_checked(path)
    path.unlink()
    (tmp_path / "units.csv.sha256").unlink()
    path.write_bytes(data)  # a table without its checksum: a reader cannot vouch for it
    with pytest.raises(DataFileError, match="no checksum"):
        _atomic.read_checked(path)


def test_jsonl_torn_last_line_dropped_and_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _atomic.append_jsonl(path, {"epoch": 0})
    with open(path, "ab") as fh:
        fh.write(b'{"epoch": 1, "lo')  # a writer killed mid-line
    assert _atomic.read_jsonl(path) == [{"epoch": 0}]
    _atomic.append_jsonl(path, {"epoch": 1, "loss": float("inf")})
    assert [_strict(s) for s in path.read_text().splitlines()] == [
        {"epoch": 0},
        {"epoch": 1, "loss": None},
    ]
    path.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(DataFileError, match="line 2"):
        _atomic.read_jsonl(path)


def test_commit_dir_swaps_whole_folders(tmp_path):
    target = tmp_path / "tables"
    for version in ("old", "new"):
        stage = _atomic.staging_dir(target)
        for name in ("a.csv", "b.csv"):
            _atomic.write_table(stage / name, f"x\n{version}\n")
        _atomic.commit_dir(stage, target)
        assert {_atomic.read_checked(target / n) for n in ("a.csv", "b.csv")} == {
            f"x\n{version}\n".encode()
        }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    stale = [
        tmp_path / f".epoch_0003.safetensors.{pid}.0123abcd{_atomic.SUFFIX}",
        tmp_path / f".epoch_0003.json.tmp{pid}",  # natgrad 0.1's checkpoint temporaries
    ]
    live = tmp_path / f".x.json.{os.getppid()}.0123abcd{_atomic.SUFFIX}"
    for p in [*stale, live]:
        p.write_bytes(b"\0" * 100)
    (tmp_path / "keep.json").write_text("{}")
    assert sorted(_atomic.clean_stale(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "keep.json"])


def test_lock_names_the_holder_and_is_released_when_it_dies(tmp_path, lock_holder):
    with lock_holder(tmp_path) as holder:
        with pytest.raises(RunDirError, match=f"in use .*held by pid {holder.pid}"):
            DirLock(tmp_path, "run directory").acquire()
    with DirLock(tmp_path, "run directory") as lock:  # the kernel released it
        assert lock.held
