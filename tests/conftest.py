"""Shared fixtures: paths, a CLI runner, and seeding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from advtrain.runtime.threads import prefer_passive_wait, setup_threads

prefer_passive_wait(os.environ)  # before torch loads OpenMP: idle threads sleep instead of spinning
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
SHARED_DATA = ROOT.parent / "shared" / "data"

setup_threads()  # the CLI's own decision: affinity and cgroup quota, or OMP_NUM_THREADS


def plain(text: str) -> str:
    """Console output with rich's box drawing removed and whitespace collapsed, for substring checks."""
    for ch in "│╭╮╰╯─┃┏┓┗┛━┡┩╇┳┻╋┣┫":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="device for the tests that take the `device` fixture (bench/gpu_check.sh passes cuda)")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device under test: cpu in `make test`, cuda in the GPU check (device-agnostic tests only)."""
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_recipe() -> Path:
    return ASSETS / "tiny.yaml"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Invoke the real CLI in a temporary working directory; returns (exit_code, output)."""
    from typer.testing import CliRunner

    from advtrain.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, plain(result.output)

    return invoke
