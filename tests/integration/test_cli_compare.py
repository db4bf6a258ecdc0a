"""`advtrain compare` through the real CLI on tiny runs, and the run summary's speed-up line."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from advtrain.cli import app


def plain(text: str) -> str:
    """Console output with rich's box drawing and line wrapping removed, for substring checks."""
    for ch in "│╭╮╰╯─┃┏┓┗┛━┡┩╇┳┻╋┣┫":
        text = text.replace(ch, " ")
    return " ".join(text.split())


# Uncapped: 72 training samples = 5 batches of 16 in a full epoch, 3 in a 50% coreset epoch.
TINY = ["schedule.epochs=2", "eval.n_examples=8", "eval.every=0"]


def test_compare_tiny_runs_and_refuse_mismatched_ones(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, *TINY, "output.dir=runs/full")[0] == 0
    code, out = cli("run", tiny_recipe, *TINY, "schedule.warm_start_epochs=1", "selector=random",
                    "selector.fraction=0.5", "output.dir=runs/random")
    assert code == 0, out
    assert "a coreset epoch took" in plain(out) and "training-loop speed-up" in plain(out)
    report = json.loads((tmp_path / "runs/random/report.json").read_text())
    assert report["speedup"]["full_epoch_s"] > 0 and report["speedup"]["speedup"] > 0
    sel = [json.loads(x)["selection"] for x in (tmp_path / "runs/random/metrics.jsonl").read_text().splitlines()]
    assert sel[1]["attack_s"] == 0.0  # a random subset attacks nothing
    code, out = cli("compare", "runs/full", "runs/random", "--out", "cmp")
    assert code == 0, out
    assert "own full" in out and "vs full" in out  # the two speed-up columns (headers wrap)
    assert "speed-up (own full epochs) | speed-up (vs full runs)" in (tmp_path / "cmp/compare.md").read_text()
    data = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert [r["selector"] for r in data["rows"]] == ["full", "random"]
    assert data["rows"][0]["speedup"]["mean"] == 1.0 and data["rows"][0]["speedup_within"]["mean"] == 1.0
    assert data["rows"][1]["speedup_within"]["mean"] == report["speedup"]["speedup"]  # the run's own figure
    assert (tmp_path / "cmp/tradeoff.png").is_file() and (tmp_path / "cmp/compare.md").is_file()

    runner = CliRunner()  # --json: stdout is one JSON document, status lines go to stderr
    result = runner.invoke(app, ["compare", "runs/full", "runs/random", "--out", "cmp", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"][1]["selector"] == "random"
    assert "wrote cmp/compare.md" in result.stderr

    other = tmp_path / "runs/eps4"  # the same run with another threat model written in its recipe
    shutil.copytree(tmp_path / "runs/full", other)
    recipe = (other / "recipe.yaml").read_text()
    assert "eps: 8/255" in recipe
    (other / "recipe.yaml").write_text(recipe.replace("eps: 8/255", "eps: 4/255"))
    code, out = cli("compare", "runs/full", "runs/eps4", "--out", "cmp2")
    assert code == 2 and "attack threat model" in plain(out) and "Traceback" not in out
    assert not (tmp_path / "cmp2" / "compare.json").exists()
    code, out = cli("compare", "runs/missing")
    assert code == 2 and "not a run folder" in plain(out)


def test_a_step_cap_on_both_kinds_of_epoch_measures_no_speedup(cli, tiny_recipe, tmp_path):
    """train.max_steps_per_epoch=1 makes full and coreset epochs one step each: no speed-up is printed."""
    capped = [*TINY, "train.max_steps_per_epoch=1"]
    assert cli("run", tiny_recipe, *capped, "output.dir=runs/full")[0] == 0
    code, out = cli("run", tiny_recipe, *capped, "schedule.warm_start_epochs=1", "selector=random",
                    "selector.fraction=0.5", "output.dir=runs/random")
    assert code == 0, out
    assert "a coreset epoch took" not in out and "speed-up not measured" in out
    assert "max_steps_per_epoch=1 caps both kinds of epoch" in out
    report = json.loads((tmp_path / "runs/random/report.json").read_text())
    assert report["speedup"]["speedup"] is None and "caps both" in report["speedup"]["note"]
    assert "speed-up: not measured" in (tmp_path / "runs/random/report.md").read_text()
    code, out = cli("compare", "runs/full", "runs/random", "--out", "cmp")
    assert code == 0, out
    row = json.loads((tmp_path / "cmp/compare.json").read_text())["rows"][1]
    assert row["speedup_within"]["mean"] is None and row["speedup"]["mean"] is None
    assert "caps both kinds of epoch" in row["speedup_within"]["note"]
    assert "random f=0.5, speed-up (own full epochs): train.max_steps_per_epoch=1 caps" in out
