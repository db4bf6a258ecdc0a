"""What users read in reports: named and rounded best metrics, 1-based epoch names, plots that claim
only what was measured and keep their labels, speed-ups that say when they mean nothing."""

from __future__ import annotations

import pytest

from advtrain.io.run_files import coreset_name, epoch_checkpoint_name
from advtrain.reports.run import best_metric_name, run_markdown, speedup_estimate


def _report(**kw) -> dict:
    report = {"name": "digits_linf", "model": "small_cnn", "dataset": "digits", "objective": "adversarial",
              "attack": "pgd", "selector": "gradmatch", "epochs": 30, "epochs_run": 30, "wall_seconds": 61.234,
              "selection_seconds": 3.0, "selection_share": 0.05, "speedup": None, "best_metric": 0.6029411554336548,
              "best_metric_name": "pgd20", "best_split": "val", "best_epoch": 12, "final_val": {"clean": 0.9}}
    return {**report, **kw}


def test_report_md_names_and_rounds_the_best_metric():
    text = run_markdown(_report())
    assert "0.6029411554336548" not in text
    assert ("best model (best.safetensors): robust accuracy under pgd20 60.3% on validation, val split, at epoch "
            "12 of 30") in text
    assert "clean accuracy 60.3%" in run_markdown(_report(best_metric_name="clean"))
    assert "best model: none (no validation ran)" in run_markdown(_report(best_metric=None, best_epoch=None))


def test_the_best_metric_is_the_first_robust_validation_accuracy():
    assert best_metric_name([{"epoch": 0}, {"epoch": 1, "val": {"clean": 0.9, "pgd20": 0.5, "fgsm": 0.6}}]) == "pgd20"
    assert best_metric_name([{"epoch": 0, "val": {"clean": 0.9}}]) == "clean"
    assert best_metric_name([{"epoch": 0}]) is None


def test_file_names_count_epochs_from_one():
    assert coreset_name(0) == "epoch_001.npz"  # the coreset of the first epoch
    assert epoch_checkpoint_name(3) == "epoch_003.safetensors"  # after three epochs


def test_a_step_cap_on_both_kinds_of_epoch_gives_no_speedup():
    metrics = [{"phase": "full", "train_time": 2.0, "samples": 32}, {"phase": "coreset", "train_time": 1.9,
                                                                     "samples": 32}]
    capped = speedup_estimate(metrics, epochs=2, max_steps=2, batch_size=16)
    assert capped["speedup"] is None and "caps both kinds of epoch at 2 steps of 16" in capped["note"]
    assert "speed-up: not measured" in run_markdown(_report(speedup=capped))
    free = speedup_estimate(metrics, epochs=2)  # no cap: the (odd) figure stands
    assert free["speedup"] == pytest.approx(4.0 / 3.9) and free["note"] is None
    half = [{"phase": "full", "train_time": 2.0, "samples": 32}, {"phase": "coreset", "train_time": 1.0,
                                                                  "samples": 16}]
    assert speedup_estimate(half, epochs=2, max_steps=2, batch_size=16)["speedup"] == pytest.approx(4.0 / 3.0)


def test_the_eps_plot_draws_markers_not_an_interpolating_line(tmp_path, monkeypatch):
    import matplotlib.axes

    from advtrain.reports.evaluation import SweepPoint, plot_eps_sweep

    calls = []
    original = matplotlib.axes.Axes.plot

    def record(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    sweep = [SweepPoint(eps=f"{e}/255", eps_float=e / 255, attack="pgd50", norm="linf", robust_acc=a)
             for e, a in ((0, .9), (8, .4))]
    plot_eps_sweep(tmp_path / "eps.png", sweep)
    assert calls and all(c.get("linestyle") == "none" and c.get("marker") for c in calls)
    assert (tmp_path / "eps.png").read_bytes()[:4] == b"\x89PNG"


def test_tradeoff_labels_stay_inside_the_axes(tmp_path):
    from advtrain.reports.compare import tradeoff_figure

    def stat(mean, std=0.1):
        return {"mean": mean, "std": std, "n": 2, "note": None}

    rows = [{"selector": s, "fraction": f, "warm_start": 3, "selection_attack": "training attack",
             "speedup_within": stat(x), "speedup": stat(x), "loop_s": stat(1.0), "relative_robust_error": stat(y),
             "robust_acc": stat(0.4)}
            for s, f, x, y in (("full", 1.0, 1.0, 0.0), ("random", 0.3, 2.2, 0.013), ("random", 0.5, 1.6, 0.014))]
    fig = tradeoff_figure({"rows": rows, "attack": "aa10", "attack_note": "a reduced AutoAttack budget (10 "
                           "iterations), NOT standard AutoAttack: not comparable with published numbers"})
    fig.canvas.draw()
    (ax,) = fig.axes
    box = ax.get_window_extent()
    for text in ax.texts:  # the fraction labels, at the right edge included
        extent = text.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
    assert all(len(line) <= 45 for line in ax.get_ylabel().splitlines()) and "NON-STANDARD" in ax.get_ylabel()
