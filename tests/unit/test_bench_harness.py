"""The bench harness: committed results carry no machine path, every script and result is in run_all's
table, results record their commit, and staleness is read from git (issue 23.6)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import run_all  # noqa: E402

MACHINE_DIRS = re.compile(r"/(?:work|root|home|tmp|Users|mnt|opt|private|var)/")


def _committed_results() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "bench/results"], cwd=ROOT, capture_output=True, text=True, check=False)
    listed = [ROOT / line for line in out.stdout.splitlines()]
    return [p for p in listed if p.is_file() and p.suffix in (".md", ".json", ".log")] or \
        [p for p in (BENCH / "results").rglob("*") if p.suffix in (".md", ".json", ".log")]


@pytest.mark.parametrize("path", _committed_results(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_committed_results_name_no_machine_path(path):
    text = path.read_text(errors="replace")
    assert not MACHINE_DIRS.search(text), MACHINE_DIRS.search(text).group(0)
    found = _common.ABSOLUTE_PATH.search(text)
    assert found is None, f"absolute path {found.group(0)!r}: write results through bench/_common.py"


def test_portable_makes_checkout_paths_relative_and_hides_the_rest():
    assert _common.portable(f"{_common.ROOT}/local/x.npz") == "local/x.npz"
    assert _common.portable({"a": [f"data.path={_common.ROOT}/local/x.npz"]}) == {"a": ["data.path=local/x.npz"]}
    assert _common.portable(f"{sys.executable} -m advtrain run") == "python -m advtrain run"
    assert _common.portable("--results /tmp/res and `/opt/v/bin/python3 -m x`") == \
        "--results <abs>/res and `python -m x`"
    assert _common.portable("data.path=/scratch/copy/local/cifar.npz") == "data.path=local/cifar.npz"
    assert _common.portable("12.5 img/s, 8/255, a / b") == "12.5 img/s, 8/255, a / b"  # not paths


def test_a_report_writes_markdown_and_json_from_the_same_rows(tmp_path):
    rows = [{"method": "full", "acc": 0.5}, {"method": "craig", "acc": None}]
    columns = [_common.Column("method", "method"), _common.Column("acc", "acc", "{:.1%}")]
    report = _common.Report("demo", "Demo", tmp_path, settings={"out": str(tmp_path)})
    text = report.text("Two rows.").table(rows, columns).write()
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["rows"] == rows and (tmp_path / "demo.md").read_text() == text
    assert "| full | 50.0% |" in text and "| craig | – |" in text and text.startswith("# Demo\n")
    assert set(record["git"]) == {"commit", "dirty", "dirty_files"}
    assert record["machine"]["git"] == record["git"]["commit"]
    assert str(tmp_path) not in (tmp_path / "demo.json").read_text()


def test_run_all_covers_every_script_and_claims_every_result():
    listed = {b.script for b in run_all.BENCHES}
    listed |= {m.removeprefix("bench/") for b in run_all.BENCHES for m in b.measures}
    helpers = {"_common.py", "run_all.py", "gpu_wheels.sh"}  # the harness and the GPU machine's wheel fetcher
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")} - helpers
    assert scripts <= listed, f"not in bench/run_all.py BENCHES: {sorted(scripts - listed)}"
    unclaimed = [p for p in run_all.result_files() if run_all.owner(p) is None]
    assert not unclaimed


def test_staleness_reads_the_recorded_commit_against_the_history(tmp_path):
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    bench = run_all.Bench("x.py", ("x",), ("advtrain",))
    result = tmp_path / "x.md"
    result.write_text("# x\n")
    for commit, dirty, expect in ((head, False, None), (head, True, "dirty tree"),
                                  ("0000000", False, "not in this history")):
        (tmp_path / "x.json").write_text(json.dumps({"git": {"commit": commit, "dirty": dirty}}))
        why = run_all.staleness(result, bench)
        assert why is None if expect is None else expect in why
    (tmp_path / "x.json").unlink()
    assert run_all.staleness(result, bench) == "no recorded commit"
