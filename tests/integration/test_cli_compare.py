"""`advtrain compare` through the real CLI on tiny runs, and the run summary's speed-up line."""

from __future__ import annotations

import json
import shutil


def plain(text: str) -> str:
    """Console output with rich's box drawing and line wrapping removed, for substring checks."""
    for ch in "│╭╮╰╯─┃┏┓┗┛━┡┩╇┳┻╋┣┫":
        text = text.replace(ch, " ")
    return " ".join(text.split())

TINY = ["schedule.epochs=2", "train.max_steps_per_epoch=1", "eval.n_examples=8", "eval.every=0"]


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
    data = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert [r["selector"] for r in data["rows"]] == ["full", "random"]
    assert data["rows"][0]["speedup"]["mean"] == 1.0
    assert (tmp_path / "cmp/tradeoff.png").is_file() and (tmp_path / "cmp/compare.md").is_file()

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
