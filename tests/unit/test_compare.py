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
    load_runs,
    markdown,
    notes,
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


def test_lists_of_mappings_in_recipes_compare_without_error(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, 0, 0.5), make_run(tmp_path, "random", 0.5, 0, 0.4)]
    for run in runs:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        recipe["optim"] = {"name": "sgd", "param_groups": [{"lr": 0.1, "tags": ["a"]}]}
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert len(compare_runs([load_run(p) for p in runs])["rows"]) == 2


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


def _runs(root: Path, **full_kw) -> list[Path]:
    return [make_run(root, "full", 1.0, s, 0.5, **full_kw) for s in (0, 1)] + \
        [make_run(root, "gradmatch", 0.5, s, 0.45, **full_kw) for s in (0, 1)]


def test_a_full_run_100_percent_robust_gives_a_dash_with_a_reason_not_a_crash(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, s, 1.0) for s in (0, 1)]
    runs += [make_run(tmp_path, "random", 0.5, s, r) for s, r in ((0, 0.9), (1, 1.0))]
    result = compare_runs([load_run(p) for p in runs])
    row = {r["selector"]: r for r in result["rows"]}["random"]
    assert row["relative_robust_error"]["mean"] is None
    assert "100% robust" in row["relative_robust_error"]["note"]
    assert any("rel. robust error: the full-data runs are 100% robust" in n for n in notes(result))
    assert "| – |" in markdown(result) or markdown(result).rstrip().endswith("–")
    json.dumps(result, allow_nan=False)  # strict JSON: undefined values are null, never NaN


def test_one_seed_has_no_spread_rather_than_zero(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, 0, 0.5), make_run(tmp_path, "random", 0.5, 0, 0.4)]
    result = compare_runs([load_run(p) for p in runs])
    assert result["rows"][1]["robust_acc"] == {"mean": 0.4, "std": None, "n": 1, "note": "one seed: no spread"}
    assert "40.0 (1)" in markdown(result) and "40.0 ± " not in markdown(result)


def test_within_run_speedup_is_the_headline_and_ignores_the_load_of_other_runs(tmp_path):
    quiet = [make_run(tmp_path / "q", "full", 1.0, 0, 0.5), make_run(tmp_path / "q", "gradmatch", 0.5, 0, 0.45)]
    # the coreset run made while the machine was twice as slow: every second of it doubles
    busy = make_run(tmp_path / "b", "gradmatch", 0.5, 0, 0.45, full_epoch=20.0, selection=2.0)
    quiet_row = compare_runs([load_run(p) for p in quiet])["rows"][1]
    result = compare_runs([load_run(quiet[0]), load_run(busy)])
    busy_row = result["rows"][1]
    assert busy_row["speedup_within"]["mean"] == pytest.approx(quiet_row["speedup_within"]["mean"], rel=1e-12)
    assert busy_row["speedup_within"]["mean"] == pytest.approx(40 / 27)
    assert busy_row["speedup"]["mean"] == pytest.approx(40 / 54)  # against the quiet full run: misleading
    (warning,) = result["warnings"]
    assert "10.00s" in warning and "20.00s" in warning and "different machine loads" in warning
    assert result["reference"]["speedup_within"].startswith("the run's own full-data")
    assert compare_runs([load_run(p) for p in quiet])["warnings"] == []
    # within the tolerance: 10 s against 10.5 s is ordinary jitter
    near = make_run(tmp_path / "n", "gradmatch", 0.5, 0, 0.45, full_epoch=10.5)
    assert compare_runs([load_run(quiet[0]), load_run(near)])["warnings"] == []


def test_a_run_without_warm_start_has_no_within_run_speedup_and_says_why(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, 0, 0.5), make_run(tmp_path, "random", 0.5, 0, 0.4, warm=0)]
    row = compare_runs([load_run(p) for p in runs])["rows"][1]
    assert row["speedup_within"]["mean"] is None and "warm_start_epochs=0" in row["speedup_within"]["note"]
    assert row["speedup"]["mean"] == pytest.approx(40 / (20 + 2))


def _eval_report(run: Path, name: str, acc: float, *, steps: int | None, standard: bool) -> None:
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "report.json").write_text(json.dumps(
        {"split": "test", "n_examples": 1000, "clean_acc": 0.9, "robust_acc": {name: acc},
         "attacks": [{"name": name, "family": "aa", "steps": steps, "standard": standard, "robust_acc": acc}]}))


def test_a_reduced_autoattack_is_never_the_headline_aa(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, 0, 0.5), make_run(tmp_path, "random", 0.5, 0, 0.4)]
    for run in runs:  # `advtrain eval --attack aa --steps 10` writes the name "aa", standard false
        _eval_report(run, "aa", 0.3, steps=10, standard=False)
    result = compare_runs([load_run(p) for p in runs])
    assert result["attack"] == "aa10" and "NOT standard AutoAttack" in result["attack_note"]
    assert "aa10 (NON-STANDARD" in markdown(result)
    with pytest.raises(UserError, match="--attack aa: not evaluated"):
        compare_runs([load_run(p) for p in runs], attack="aa")
    for run in runs:  # the standard one is the headline again
        _eval_report(run, "aa", 0.35, steps=None, standard=True)
    result = compare_runs([load_run(p) for p in runs])
    assert (result["attack"], result["attack_note"]) == ("aa", None)


def test_aa_with_its_budget_in_the_name_is_labelled_non_standard(tmp_path):
    runs = [make_run(tmp_path, "full", 1.0, 0, 0.5), make_run(tmp_path, "random", 0.5, 0, 0.4)]
    for run in runs:
        _eval_report(run, "aa5", 0.1, steps=5, standard=False)
    result = compare_runs([load_run(p) for p in runs])
    assert result["attack"] == "aa5" and result["attack_note"]


def test_compare_shows_the_split_of_runs_that_have_it_and_a_dash_for_older_ones(tmp_path):
    from advtrain.io.run_records import EPOCH_PARTS

    old = make_run(tmp_path, "full", 1.0, 0, 0.5)  # lines as an earlier advtrain wrote them: no split
    new = make_run(tmp_path, "random", 0.5, 0, 0.4)
    lines = [json.loads(x) for x in (new / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        parts = {**dict.fromkeys(EPOCH_PARTS, 0.0), "train": m["train_time"], "eval": 1.0, "save": 0.5}
        m["timing"], m["epoch_time"] = parts, sum(parts.values())
    (new / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    runs, skipped = load_runs([old, new])
    assert not skipped and runs[0].epoch_split is None and runs[1].epoch_split["epochs"] == 4
    result = compare_runs(runs)
    text = markdown(result)
    row = {r["path"]: r for r in result["runs"]}
    assert row[str(new)]["epoch_split"]["mean_s"]["save"] == pytest.approx(0.5)
    overhead = 100 * row[str(new)]["epoch_split"]["overhead_share"]
    assert f"| {overhead:.1f} |" in text and f"- {new}: an epoch took " in text
    assert f"not recorded (metrics.jsonl of an earlier advtrain): {old}" in text


def test_runs_that_differ_only_in_how_they_compute_are_one_configuration(tmp_path):
    """An earlier advtrain's recipe has no optim.fused / train.compile_mode: the same configuration still."""
    old = make_run(tmp_path, "full", 1.0, 0, 0.5)
    new = make_run(tmp_path, "full", 1.0, 1, 0.5)
    recipe = yaml.safe_load((new / "recipe.yaml").read_text())
    recipe["optim"] = {"fused": True}
    recipe["train"] = {"compile": True, "compile_mode": "reduce-overhead"}
    (new / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (row,) = compare_runs(load_runs([old, new])[0])["rows"]
    assert row["seeds"] == [0, 1]


# --- damaged run folders: each is named and skipped (or refused alone), never a traceback ------------
def _garbage() -> bytes:
    return bytes(range(256)) * 4


DAMAGE = {  # file → content (bytes or text), what the message must say
    "truncated report": ("report.json", '{"wall_seconds": 3.0, "test": {"clean_', "not valid JSON"),
    "invalid report": ("report.json", "{cut", "not valid JSON"),
    "report is a list": ("report.json", "[1, 2]", "the report must be a mapping"),
    "robust_acc a string": ("report.json", '{"test": {"n_examples": 1, "robust_acc": "abc"}}', "robust_acc must be"),
    "accuracy a string": ("report.json", '{"test": {"n_examples": 1, "robust_acc": {"pgd20": "0.5"}}}',
                          "must be a number"),
    "accuracy above one": ("report.json", '{"test": {"n_examples": 1, "robust_acc": {"pgd20": 7}}}', "[0, 1]"),
    "test a number": ("report.json", '{"test": 3}', "test must be a mapping"),
    "n_examples text": ("report.json", '{"test": {"n_examples": "ten", "robust_acc": {}}}', "n_examples"),
    "empty report": ("report.json", "", "is empty"),
    "binary report": ("report.json", _garbage(), "binary data"),
    "latin-1 report": ("report.json", b'{"name": "\xe9t\xe9"}', "not UTF-8"),
    "NaN accuracy": ("report.json", '{"test": {"n_examples": 1, "clean_acc": NaN, "robust_acc": {}}}',
                     "finite number"),
    "infinite wall time": ("report.json", '{"wall_seconds": 1e999}', "wall_seconds"),
    "huge integer": ("report.json", '{"wall_seconds": ' + "9" * 5000 + "}", "cannot be parsed as JSON"),
    "deep report": ("report.json", "[" * 100_000 + "]" * 100_000, "JSON"),
    "torn metrics line": ("metrics.jsonl", None, "its last line is not valid JSON"),
    "metrics line a list": ("metrics.jsonl", "[1]\n", "must be a JSON object"),
    "train_time text": ("metrics.jsonl", '{"epoch": 0, "phase": "full", "train_time": "fast"}\n', "train_time"),
    "train_time huge": ("metrics.jsonl", '{"epoch": 0, "phase": "full", "train_time": 1e300}\n', "train_time"),
    "negative train_time": ("metrics.jsonl", '{"epoch": 0, "phase": "full", "train_time": -1}\n', "train_time"),
    "phase missing": ("metrics.jsonl", '{"epoch": 0, "train_time": 1.0}\n', "phase must be"),
    "epoch missing": ("metrics.jsonl", '{"phase": "full", "train_time": 1.0}\n', "epoch must be"),
    "selection a list": ("metrics.jsonl", '{"epoch": 0, "phase": "coreset", "selection": [1]}\n',
                         "selection must be a mapping"),
    "empty metrics": ("metrics.jsonl", "\n", "is empty"),
    "timing a list": ("metrics.jsonl", '{"epoch": 0, "phase": "full", "timing": [1, 2]}\n', "timing must be a mapping"),
    "timing part text": ("metrics.jsonl", '{"epoch": 0, "phase": "full", "timing": {"save": "slow"}}\n',
                         "timing.save must be a number"),
    "negative timing part": ("metrics.jsonl", '{"epoch": 0, "phase": "full", "timing": {"eval": -0.5}}\n',
                             "timing.eval"),
    "epoch_time NaN": ("metrics.jsonl", '{"epoch": 0, "phase": "full", "epoch_time": NaN}\n', "epoch_time"),
    "recipe a scalar": ("recipe.yaml", "3\n", "the recipe must be a mapping"),
    "recipe invalid YAML": ("recipe.yaml", "a: [1, 2\n", "not valid YAML"),
    "selector missing": ("recipe.yaml", "seed: 0\n", "selector section must be a mapping"),
    "selector name a list": ("recipe.yaml", "selector: {name: [1]}\n", "selector.name"),
    "epochs text": ("recipe.yaml", None, "schedule.epochs"),
    "fraction NaN": ("recipe.yaml", None, "selector.fraction"),
    "seed huge": ("recipe.yaml", None, "seed must be"),
    "deep recipe": ("recipe.yaml", "a: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper"),
    "alias bomb": ("recipe.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
        + "selector: {name: full}\n", "larger than"),
    "damaged eval report": ("eval/report.json", '{"split": "test", "robust_acc": {"aa": "x"}}', "must be a number"),
}


def _damage(run: Path, kind: str) -> Path:
    name, content, _ = DAMAGE[kind]
    path = run / name
    if kind == "torn metrics line":
        content = path.read_text() + '{"epoch": 4, "phase": "cor'
    elif kind in ("epochs text", "fraction NaN", "seed huge"):
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        if kind == "epochs text":
            recipe["schedule"]["epochs"] = "ten"
        elif kind == "fraction NaN":
            recipe["selector"]["fraction"] = float("nan")
        else:
            recipe["seed"] = 10**30
        content = yaml.safe_dump(recipe)
    path.parent.mkdir(exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_run_is_skipped_naming_its_file(tmp_path, kind):
    good = make_run(tmp_path, "full", 1.0, 0, 0.5)
    bad = make_run(tmp_path, "random", 0.5, 0, 0.4)
    damaged = _damage(bad, kind)
    runs, skipped = load_runs([good, bad])
    assert [r.path for r in runs] == [str(good)]
    (line,) = skipped
    assert str(damaged) in line and DAMAGE[kind][2] in line, line
    with pytest.raises(UserError, match="no run left to compare") as err:
        load_runs([bad])
    assert str(damaged) in str(err.value)


def test_damaged_runs_through_the_cli_warn_or_exit_2_without_a_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from advtrain.cli import app

    monkeypatch.chdir(tmp_path)
    good = make_run(tmp_path, "full", 1.0, 0, 0.5)
    bad = make_run(tmp_path, "random", 0.5, 0, 0.4)
    _damage(bad, "torn metrics line")
    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(good), str(bad), "--out", "cmp"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "metrics.jsonl" in result.stderr and "Traceback" not in result.output
    assert "skipped" in (tmp_path / "cmp/compare.md").read_text()
    result = runner.invoke(app, ["compare", str(bad), "--out", "cmp2"], catch_exceptions=False)
    assert result.exit_code == 2 and "no run left to compare" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "cmp2/compare.json").exists()
