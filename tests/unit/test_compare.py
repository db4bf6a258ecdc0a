"""`advtrain compare`: grouping by seed, speed-ups, paired differences, refusals (fabricated run folders)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from advtrain.errors import UserError
from advtrain.reports.compare import (
    compare_runs,
    ideal_speedup,
    load_run,
    paired_difference,
    relative_robust_error,
    run_compare,
)
from advtrain.reports.run import epoch_seconds, loop_seconds, speedup_estimate


def _recipe(selector: str, fraction: float, seed: int, *, data: str = "digits", eps: float | str = 0.2,
            warm: int = 1, epochs: int = 4) -> dict:
    sel = {"name": selector} if selector == "full" else {"name": selector, "fraction": fraction}
    return {"name": "x", "seed": seed, "device": "cpu", "data": {"name": data, "batch_size": 64},
            "model": {"name": "small_cnn"}, "objective": {"name": "adversarial"},
            "attack": {"name": "pgd", "norm": "linf", "eps": eps, "steps": 7}, "selector": sel,
            "schedule": {"epochs": epochs, "warm_start_epochs": warm, "select_every": 2},
            "output": {"dir": f"runs/{selector}-{seed}"}}


def make_run(root: Path, selector: str, fraction: float, seed: int, robust: float, *, full_epoch: float = 10.0,
             selection: float = 1.0, eval_pgd50: float | None = None, **kw) -> Path:
    """A finished run folder: warm-start epochs at ``full_epoch`` s, coreset epochs at ``fraction`` of it."""
    recipe = _recipe(selector, fraction, seed, **kw)
    path = root / f"{selector}-{fraction}-{seed}-{kw.get('data', 'digits')}"
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    epochs, warm = recipe["schedule"]["epochs"], recipe["schedule"]["warm_start_epochs"]
    records = []
    for e in range(epochs):
        coreset = selector != "full" and e >= warm
        rec = {"epoch": e, "phase": "coreset" if coreset else "full",
               "train_time": full_epoch * (fraction if coreset else 1.0)}
        if coreset and (e - warm) % 2 == 0:
            rec["selection"] = {"total_s": selection}
        records.append(rec)
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = {"wall_seconds": sum(r["train_time"] for r in records) + 5.0,
              "test": {"n_examples": 100, "clean_acc": 0.9, "robust_acc": {"pgd20": robust}}}
    (path / "report.json").write_text(json.dumps(report))
    if eval_pgd50 is not None:
        (path / "eval").mkdir()
        (path / "eval" / "report.json").write_text(json.dumps(
            {"split": "test", "n_examples": 1000, "clean_acc": 0.91, "robust_acc": {"pgd50": eval_pgd50}}))
    return path


def test_pure_math_against_hand_values():
    assert ideal_speedup(30, 6, 0.3) == pytest.approx(30 / (6 + 24 * 0.3))
    assert ideal_speedup(10, 10, 0.1) == pytest.approx(1.0)
    assert ideal_speedup(10, 2, 0.5, skip_epochs=2) == pytest.approx(10 / (2 + 6 * 0.5))
    mean, se, n = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.6, 2: 0.5, 3: 0.9})
    diffs = [0.1, 0.0, 0.2]
    sd = math.sqrt(sum((d - 0.1) ** 2 for d in diffs) / 2)
    assert (mean, n) == (pytest.approx(0.1), 3) and se == pytest.approx(sd / math.sqrt(3))
    assert math.isnan(paired_difference({0: 0.5}, {0: 0.4})[1])
    assert paired_difference({0: 0.5}, {1: 0.4})[2] == 0
    assert relative_robust_error(0.4, 0.5) == pytest.approx(0.2)  # error 0.6 vs 0.5


def test_loop_time_and_epoch_times_from_metrics():
    metrics = [{"phase": "full", "train_time": 10.0}, {"phase": "coreset", "train_time": 3.0,
                                                       "selection": {"total_s": 2.0}},
               {"phase": "coreset", "train_time": 3.0, "selection": None}, {"phase": "skip"}]
    assert loop_seconds(metrics) == (18.0, 16.0, 2.0)
    assert epoch_seconds(metrics) == {"full": 10.0, "coreset": 3.0}
    est = speedup_estimate(metrics, epochs=3)
    assert est["speedup"] == pytest.approx(30.0 / 18.0) and est["epoch_ratio"] == pytest.approx(0.3)
    assert speedup_estimate([{"phase": "full", "train_time": 1.0}], epochs=1) is None


def test_seeds_are_grouped_and_speedup_is_against_full(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, s, r) for s, r in ((0, 0.50), (1, 0.52))]
    runs += [make_run(tmp_path, "gradmatch", 0.5, s, r) for s, r in ((0, 0.48), (1, 0.46), (2, 0.47))]
    runs += [make_run(tmp_path, "random", 0.5, s, r) for s, r in ((0, 0.45), (1, 0.44))]
    result = compare_runs([load_run(p) for p in runs])
    rows = {r["selector"]: r for r in result["rows"]}
    assert result["attack"] == "pgd20" and len(result["rows"]) == 3
    assert rows["gradmatch"]["n"] == 3 and rows["gradmatch"]["seeds"] == [0, 1, 2]
    assert rows["gradmatch"]["robust_acc"]["mean"] == pytest.approx(0.47)
    assert rows["gradmatch"]["robust_acc"]["std"] == pytest.approx(0.01)
    # full loop 40 s; gradmatch loop = 10 + 3·5 + 2 selections·1 s = 27 s
    assert rows["gradmatch"]["loop_s"]["mean"] == pytest.approx(27.0)
    assert rows["gradmatch"]["speedup"]["mean"] == pytest.approx(40 / 27)
    assert rows["gradmatch"]["ideal_speedup"] == pytest.approx(4 / 2.5)
    assert rows["gradmatch"]["selection_share"]["mean"] == pytest.approx(2 / 27)
    assert rows["full"]["speedup"]["mean"] == pytest.approx(1.0)
    assert rows["gradmatch"]["relative_robust_error"]["mean"] == pytest.approx((0.53 - 0.49) / 0.49)
    (paired,) = result["paired"]
    assert paired["method"] == "gradmatch" and paired["n_pairs"] == 2
    assert paired["diff"] == pytest.approx(0.025) and paired["se"] == pytest.approx(0.005)


def test_eval_reports_override_the_run_test_numbers(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, 0, 0.5, eval_pgd50=0.41),
            make_run(tmp_path, "random", 0.3, 0, 0.4, eval_pgd50=0.33)]
    result = compare_runs([load_run(p) for p in runs])
    assert result["attack"] == "pgd50"  # the strongest attack every run has
    assert {r["selector"]: r["robust_acc"]["mean"] for r in result["rows"]} == {"full": 0.41, "random": 0.33}
    assert result["rows"][0]["clean_acc"]["mean"] == pytest.approx(0.91)
    with pytest.raises(UserError, match="--attack aa: not evaluated in every run"):
        compare_runs([load_run(p) for p in runs], attack="aa")


def test_runs_of_other_datasets_or_threat_models_are_refused_naming_the_keys(tmp_path):
    a = make_run(tmp_path, "full", 1.0, 0, 0.5)
    b = make_run(tmp_path, "random", 0.5, 0, 0.4, data="cifar10", eps=8 / 255)
    with pytest.raises(UserError) as err:
        compare_runs([load_run(a), load_run(b)])
    assert "data.name" in str(err.value) and "attack threat model" in str(err.value)
    assert "'digits'" in str(err.value) and "'cifar10'" in str(err.value)


def test_fractions_written_as_text_equal_their_value(tmp_path):
    a = make_run(tmp_path / "a", "full", 1.0, 0, 0.5, eps="8/255")
    b = make_run(tmp_path / "b", "random", 0.5, 0, 0.4, eps=8 / 255)
    assert len(compare_runs([load_run(a), load_run(b)])["rows"]) == 2


def test_same_configuration_and_seed_twice_is_refused(tmp_path):
    a = make_run(tmp_path / "a", "random", 0.5, 0, 0.5)
    b = make_run(tmp_path / "b", "random", 0.5, 0, 0.4)
    with pytest.raises(UserError, match="same configuration and seed 0"):
        compare_runs([load_run(a), load_run(b)])


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        load_run(tmp_path / "nope")
    run = make_run(tmp_path, "full", 1.0, 0, 0.5)
    (run / "report.json").write_text("{cut")
    with pytest.raises(UserError, match="not valid JSON"):
        load_run(run)
    (run / "report.json").unlink()
    with pytest.raises(UserError, match="no report.json"):
        load_run(run)


def test_run_compare_writes_tables_json_and_plot(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, 0, 0.5)]
    runs += [make_run(tmp_path, sel, f, s, 0.45) for sel in ("random", "craig") for f in (0.3, 0.5) for s in (0, 1)]
    out = tmp_path / "cmp"
    run_compare(runs, out)
    data = json.loads((out / "compare.json").read_text())
    assert len(data["rows"]) == 5 and len(data["paired"]) == 2
    text = (out / "compare.md").read_text()
    assert "craig f=0.3" in text and "± 0.0 (2)" in text and "Paired differences" in text
    assert len(data["runs"]) == 9 and "## Runs" in text
    assert {r["seed"] for r in data["runs"]} == {0, 1}
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
