"""Where an epoch's wall time goes: the phase clock, the split in metrics lines, reports and compare."""

from __future__ import annotations

import json
import shutil

import pytest

from advtrain.io.run_records import EPOCH_PARTS, MetricsLine
from advtrain.reports.run import epoch_split, split_line
from advtrain.train.phase_clock import PhaseClock


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_second_goes_to_the_innermost_open_part_and_the_parts_sum_to_the_total():
    fake, syncs = FakeClock(), []
    clock = PhaseClock(lambda: syncs.append(fake.now), clock=fake)
    fake.now += 1.0  # before any part: other
    with clock.phase("selection"):
        fake.now += 3.0
        with clock.phase("save"):  # the coreset file, written inside the selection pass
            fake.now += 0.5
        fake.now += 2.0
    with clock.phase("train"):
        fake.now += 10.0
    fake.now += 0.25
    split = clock.lap()
    assert split == {"selection": 5.0, "train": 10.0, "eval": 0.0, "guard": 0.0, "save": 0.5, "log": 0.0,
                     "other": 1.25, "total": 16.75}
    assert len(syncs) == 7  # each switch waits for the device first: 2 per part, 1 per read
    fake.now += 2.0  # laps join up: the next epoch starts where the last one ended
    with clock.phase("eval"):
        fake.now += 1.0
    assert clock.split() == {**dict.fromkeys(EPOCH_PARTS, 0.0), "eval": 1.0, "other": 2.0, "total": 3.0}


def test_a_part_that_raises_still_gets_its_time_and_an_unknown_part_is_refused():
    fake = FakeClock()
    clock = PhaseClock(clock=fake)
    with pytest.raises(RuntimeError), clock.phase("train"):
        fake.now += 4.0
        raise RuntimeError("diverged")
    fake.now += 1.0
    assert clock.split()["train"] == 4.0 and clock.split()["other"] == 1.0
    with pytest.raises(ValueError, match="unknown epoch part 'checkpoint'.*save"), clock.phase("checkpoint"):
        pass


def test_split_of_the_epochs_and_its_line():
    lines = [MetricsLine(0, "full", compile_warmup_s=2.0).timed(
                 {"selection": 0.0, "train": 10.0, "eval": 0.0, "guard": 0.0, "save": 0.4, "log": 0.001,
                  "other": 0.1, "total": 10.501}).to_json(),
             MetricsLine(1, "skip", epoch_time=0.01).to_json(),  # no timing: an older line, and a skipped epoch
             MetricsLine(2, "coreset").timed(
                 {"selection": 4.0, "train": 5.0, "eval": 2.0, "guard": 0.0, "save": 0.6, "log": 0.003,
                  "other": 0.1, "total": 11.703}).to_json()]
    assert lines[0]["epoch_time"] == 10.501 and set(lines[0]["timing"]) == set(EPOCH_PARTS)
    assert "timing" not in lines[1]  # left out, not null, like every key an epoch did not measure
    split = epoch_split(lines)
    assert split["epochs"] == 2 and split["epoch_s"] == pytest.approx(11.102, rel=1e-9)
    assert split["mean_s"]["train"] == pytest.approx(7.5) and split["mean_s"]["selection"] == pytest.approx(2.0)
    assert split["overhead_share"] == pytest.approx(1 - 19.0 / 22.204, rel=1e-9)
    assert sum(split["share"].values()) == pytest.approx(1.0, rel=1e-12)
    text = split_line(split)
    assert text.startswith("11.10s = selection 2.00 + train 7.50 (incl. compile warm-up 2.0s once) + eval 1.00 + "
                           "save 0.50 + other 0.10 (mean of 2 epochs; ")
    assert "log" not in text and "guard" not in text  # parts under 5 ms per epoch are not shown
    assert epoch_split([MetricsLine(0, "full", epoch_time=3.0).to_json()]) is None  # an earlier advtrain's run


TINY = ["schedule.epochs=2", "train.max_steps_per_epoch=3", "eval.every=2", "output.keep_every=1"]


def _lines(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_records_the_split_of_every_epoch_and_resumes_an_older_log(cli, tiny_recipe, tmp_path):
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 0, out
    run = tmp_path / "runs" / "tiny"
    lines = _lines(run)
    for m in lines:
        timing = m["timing"]
        assert set(timing) == set(EPOCH_PARTS) and min(timing.values()) >= 0.0
        assert sum(timing[p] for p in EPOCH_PARTS) == pytest.approx(m["epoch_time"], rel=0, abs=1e-9)
        assert timing["save"] > 0.0 and timing["train"] > 0.0  # every epoch writes last.safetensors
        assert timing["train"] >= m["train_time"]  # the part holds the measured training and its bookkeeping
        assert timing["selection"] == 0.0 and timing["guard"] == 0.0  # selector full, no overfitting guard
    assert lines[0]["timing"]["eval"] == 0.0 and "eval_time" not in lines[0]  # eval.every=2: not in epoch 1
    assert lines[1]["timing"]["eval"] >= lines[1]["eval_time"] > 0.0
    report = json.loads((run / "report.json").read_text())
    assert report["epoch_split"]["epochs"] == 2
    assert "- time per epoch: " in (run / "report.md").read_text() and "time per epoch:" in out

    # The same run folder as an earlier advtrain left it after epoch 1: lines without the split.
    old = {k: v for k, v in lines[0].items() if k != "timing"}
    (run / "metrics.jsonl").write_text(json.dumps(old) + "\n")
    (run / "report.json").unlink()
    shutil.copyfile(run / "epoch_001.safetensors", run / "last.safetensors")
    code, out = cli("run", tiny_recipe, *TINY, "--resume")
    assert code == 0, out
    resumed = _lines(run)
    assert resumed[0] == old and set(resumed[1]["timing"]) == set(EPOCH_PARTS)
    assert json.loads((run / "report.json").read_text())["epoch_split"]["epochs"] == 1

    code, out = cli("compare", run, "--out", "cmp")
    assert code == 0, out
    compare = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert compare["runs"][0]["epoch_split"]["epochs"] == 1
    assert "## Where the epoch time goes" in (tmp_path / "cmp" / "compare.md").read_text()

