"""CSV and TensorBoard loggers (recipe section ``log``), read back with their own readers."""

from __future__ import annotations

import csv
import json

import pytest

from advtrain.config.schema import LogConfig, log_problems
from advtrain.reports.loggers import CSV_FILE, TENSORBOARD_DIR, Loggers, csv_text, flatten, scalars

RECORDS = [
    {"epoch": 0, "phase": "full", "train_loss": 1.25, "train_acc": 0.5, "samples": 96, "lr": 0.05,
     "coreset_size": None, "selection": None, "val": {"clean": 0.4, "pgd3": 0.1}, "epoch_time": 0.3},
    {"epoch": 1, "phase": "coreset", "train_loss": float("nan"), "train_acc": 0.625, "samples": 48, "lr": 0.005,
     "coreset_size": 48, "selection": {"attack_s": 0.01, "size": 48}, "epoch_time": 0.2},
]


def test_flatten_and_scalars():
    assert flatten({"val": {"pgd20": 0.4}, "selection": None, "x": [1]}) == {"val/pgd20": 0.4}
    tags = scalars(RECORDS[1])
    assert "train_loss" not in tags  # NaN (a skipped epoch) is not a point
    assert tags["selection/attack_s"] == 0.01 and "epoch" not in tags and "phase" not in tags


def test_csv_has_the_union_of_columns_and_reads_back_exactly():
    rows = list(csv.DictReader(csv_text(RECORDS).splitlines()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert list(rows[0])[:7] == ["epoch", "phase", "train_loss", "train_acc", "lr", "samples", "coreset_size"]
    assert rows[0]["val/pgd3"] == "0.1" and rows[1]["val/pgd3"] == ""  # not validated that epoch
    assert rows[1]["selection/size"] == "48" and rows[0]["selection/size"] == ""
    assert rows[1]["train_loss"] == ""  # NaN is an empty cell
    assert float(rows[0]["train_loss"]) == 1.25


def test_off_by_default_writes_nothing(tmp_path):
    assert LogConfig() == LogConfig(csv=False, tensorboard=False)
    loggers = Loggers.build(LogConfig(), tmp_path, first_epoch=0)
    loggers.log_epoch(RECORDS[0], RECORDS[:1])
    loggers.close()
    assert list(tmp_path.iterdir()) == []
    loggers = Loggers.build(LogConfig(csv=True), tmp_path, first_epoch=0, writes=False)  # rank > 0
    loggers.log_epoch(RECORDS[0], RECORDS[:1])
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_missing_is_a_recipe_problem():
    assert log_problems(LogConfig(tensorboard=True), available=True) == []
    problem = log_problems(LogConfig(tensorboard=True), available=False)[0]
    assert problem.startswith("log.tensorboard:") and "pip install 'advtrain[tensorboard]'" in problem
    assert log_problems(LogConfig(csv=True), available=False) == []


def test_validate_reports_log_typos_and_missing_tensorboard(cli, tiny_recipe, monkeypatch):
    code, out = cli("validate", tiny_recipe, "log.cvs=true")
    assert code == 2 and "log.cvs" in out and "did you mean 'csv'" in out
    code, out = cli("validate", tiny_recipe, "log.csv=yes please")
    assert code == 2 and "log.csv" in out
    import advtrain.config.schema as schema

    monkeypatch.setattr(schema, "tensorboard_available", lambda: False)
    code, out = cli("validate", tiny_recipe, "log.tensorboard=true")
    assert code == 2 and "needs the tensorboard package" in out


def test_a_run_writes_both_and_their_readers_agree_with_metrics_jsonl(cli, tiny_recipe, tmp_path):
    tensorboard = pytest.importorskip("tensorboard")  # the optional extra; installed with '.[test]'
    del tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ("run", tiny_recipe, "log.csv=true", "log.tensorboard=true", "eval.n_examples=8",
            "train.max_steps_per_epoch=2")
    code, out = cli(*args, "schedule.epochs=1")
    assert code == 0, out
    code, out = cli(*args, "schedule.epochs=2", "--resume", "--force")  # a longer schedule, same run
    assert code == 0, out
    run = tmp_path / "runs" / "tiny"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with open(run / CSV_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [m["epoch"] for m in metrics] == [0, 1]
    for row, m in zip(rows, metrics, strict=True):
        assert float(row["train_loss"]) == m["train_loss"] and float(row["val/pgd3"]) == m["val"]["pgd3"]
    acc = EventAccumulator(str(run / TENSORBOARD_DIR))
    acc.Reload()
    assert {"train_loss", "train_acc", "lr", "val/clean", "val/pgd3", "epoch_time"} <= set(acc.Tags()["scalars"])
    points = acc.Scalars("train_loss")
    assert [p.step for p in points] == [0, 1]
    for point, m in zip(points, metrics, strict=True):
        assert point.value == pytest.approx(m["train_loss"], rel=1e-6)  # stored as float32
