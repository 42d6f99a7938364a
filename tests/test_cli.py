"""The ``natgrad`` command line as a user meets it: ``--help``, ``--version``, bad commands.

``--help`` and ``--version`` run ``python -m natgrad`` in a subprocess with ``PYTHONPATH`` set
to the repository root, exactly as a user's shell would (one subprocess each: importing torch
dominates their time); the other cases call :func:`natgrad.cli.main` in-process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import natgrad
from natgrad.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _natgrad(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "natgrad", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def help_text() -> str:
    result = _natgrad("--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_lists_every_command_with_its_line(help_text, name):
    assert name in help_text
    # the first words of the command's one-line help appear too (argparse may wrap the rest)
    assert " ".join(COMMANDS[name][1].split()[:3]) in " ".join(help_text.split())


@pytest.mark.parametrize("needle", ["docs/theory.md", "docs/paper.md", "--version", "examples"])
def test_help_is_an_overview(help_text, needle):
    assert needle in help_text


def test_no_arguments_prints_the_overview(help_text, capsys):
    assert main([]) == 0
    assert " ".join(capsys.readouterr().out.split()) == " ".join(help_text.split())


@pytest.fixture(scope="module")
def version_run() -> subprocess.CompletedProcess:
    return _natgrad("--version")


def test_version_exits_0_and_prints_the_version(version_run):
    assert version_run.returncode == 0, version_run.stderr
    assert version_run.stdout == f"natgrad {natgrad.__version__}\n"


def test_short_version_flag(capsys):
    assert main(["-V"]) == 0
    assert capsys.readouterr().out == f"natgrad {natgrad.__version__}\n"


def test_version_matches_the_package_metadata():
    text = (ROOT / "pyproject.toml").read_text()
    project = text[text.index("[project]") :]
    assert re.search(r'^version = "([^"]+)"', project, re.M).group(1) == natgrad.__version__


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-command" in err
    for name in COMMANDS:
        assert name in err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: natgrad {name}")
