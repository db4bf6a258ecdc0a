"""Every case of tests/assets/bad through the real CLI: its message, exit code 2, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CASES = sorted((ASSETS / "bad").glob("*.yaml"))


def _expectations(text: str) -> list[str]:
    return [line.split("expect:", 1)[1].strip() for line in text.splitlines() if line.startswith("# expect:")]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_input_gives_a_clear_error(cli, tmp_path, path):
    text = path.read_text()
    if "# requires-no-cuda" in text and torch.cuda.is_available():
        pytest.skip("this case is about machines without CUDA")
    shutil.copytree(ASSETS / "bad_data", tmp_path / "bad_data")
    (tmp_path / "bad_data/empty_folder/train").mkdir(parents=True)
    (tmp_path / "bad_data/empty_folder/val").mkdir(parents=True)
    command = "run" if "# stage: run" in text else "validate"
    code, out = cli(command, path)
    assert code == 2, out
    assert "Traceback" not in out
    for fragment in _expectations(text):
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))
