"""bench/device_session.sh end to end on a CPU (the dry run of the GPU session's one device call).

The same steps as on the GPU (wheels, smoke, quick check, campaign slice, packing) at tiny sizes on
the smoke grid; it must leave at most 8 files in $OUT (what the device call brings back), none in
a folder, and a gpu_quick.tar that unpacks into result files and a targets table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_quick  # noqa: E402


@pytest.mark.slow  # 1-3 minutes on 2 cores: six Python processes and one campaign run
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_device_session_dry_run_brings_back_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, SESSION_DEVICE="cpu", SESSION_TINY="1", SESSION_TOTAL_S="900",
               SESSION_QUICK_S="500", SESSION_THROUGHPUT_S="200", SESSION_PEER_S="150", SESSION_CRAIG_S="60",
               SESSION_CAMPAIGN_ARGS="--seeds 0 --configs gradmatch_0.5", OUT=str(out),
               SESSION_CAMPAIGN_RESULTS=str(tmp_path / "campaign"), SESSION_CAMPAIGN_RUNS=str(tmp_path / "runs"),
               SESSION_QUICK_DIR=str(tmp_path / "quick"))
    proc = subprocess.run(["bash", str(ROOT / "bench" / "device_session.sh"), "smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    entries = sorted(p.name for p in out.iterdir())
    assert all((out / name).is_file() for name in entries) and len(entries) <= 8, entries
    assert entries == sorted(["session.log", "gpu_quick.tar", "gpu_quick_cpu.md", "campaign_smoke.tar",
                              "campaign_smoke.md", "campaign_smoke.png", "campaign_logs.tar"])
    steps = (tmp_path / "quick" / "steps.txt").read_text().split("\n")
    assert [s.split()[0] for s in steps if s] == ["smoke", "throughput", "peer", "craig", "campaign"]
    with tarfile.open(out / "campaign_smoke.tar") as tar:
        assert tar.getnames() == ["smoke/gradmatch_0.5_seed0.json"]
    written = gpu_quick.unpack(out / "gpu_quick.tar", tmp_path / "results")
    assert {"throughput_cpu_levers.json", "peer_baseline_cpu.json", "solvers_cpu.json",
            "gpu_quick_cpu.md"} <= set(written)
    levers = json.loads((tmp_path / "results" / "throughput_cpu_levers.json").read_text())
    statuses = {(r["objective"], r["variant"]): r["status"] for r in levers["rows"]}
    assert statuses[("pgd10", "baseline")] == statuses[("trades10", "baseline")] == "ok"
    assert any(r.get("profile") for r in levers["rows"])
    peer = json.loads((tmp_path / "results" / "peer_baseline_cpu.json").read_text())
    assert {"advtrain", "bf16", "plain"} <= set(peer["rows"])
    table = (tmp_path / "results" / "gpu_quick_cpu.md").read_text()
    assert "| 3 | advtrain" in table and "| 5 | selection share of the loop, gradmatch" in table
    assert str(tmp_path) not in table and str(ROOT) not in (tmp_path / "results" / "gpu_quick_cpu.log").read_text()
