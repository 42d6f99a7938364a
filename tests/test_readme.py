"""Every Python block of the README runs as written, top to bottom in one namespace (a reader
pastes them in order), in a temporary working directory."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = _blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    torch.set_default_dtype(torch.float32)  # as a reader's session has it
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"README python block {i} fails: {exc!r}\n{block}") from exc
    assert namespace["F"].matrix.shape == (128, 65, 65)
    assert (tmp_path / "blocks" / "index.json").is_file()
