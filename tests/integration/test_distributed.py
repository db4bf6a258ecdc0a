"""Data-parallel training: 2 CPU processes (gloo) through torchrun and the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# BatchNorm-free model and a deterministic attack: then the 2-process run must equal one process
# with the same global batch (gradient of Σγℓ/Σγ over the global batch), up to float summation order.
ARGS = ["model.kwargs={norm: false}", "attack.random_start=false", "schedule.epochs=3",
        "schedule.warm_start_epochs=1", "schedule.select_every=1", "selector=gradmatch", "selector.fraction=0.5",
        "selector.batch_size=8", "eval.every=0", "eval.n_examples=16", "device=cpu"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun not found")
    return [exe]


def _model(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


@pytest.mark.slow  # about 20 s (two torchrun processes); .ci/run runs it
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_recipe):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "advtrain", "run", str(tiny_recipe), *ARGS, "output.dir=runs/one"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run([*_torchrun(), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                          str(_free_port()), "-m", "advtrain", "run", str(tiny_recipe), *ARGS, "output.dir=runs/two"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert ddp.stdout.count("advtrain run tiny") == 1  # rank 0 alone prints
    assert "2 processes" in ddp.stdout
    two = tmp_path / "runs/two"
    assert sorted(p.name for p in two.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    one_metrics = [json.loads(x) for x in (tmp_path / "runs/one/metrics.jsonl").read_text().splitlines()]
    two_metrics = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["samples"] for m in two_metrics] == [m["samples"] for m in one_metrics]  # global counts
    assert [m["coreset_size"] for m in two_metrics] == [m["coreset_size"] for m in one_metrics]
    for a, b in zip(one_metrics, two_metrics, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    ref, got = _model(tmp_path / "runs/one/last.safetensors"), _model(two / "last.safetensors")
    for key in ref:
        assert torch.allclose(ref[key], got[key], atol=1e-4), key
