"""Perceptual adversarial training with adversarial GradMatch through the real CLI."""

from __future__ import annotations

import json


def test_perceptual_objective_with_gradmatch(cli, tiny_recipe, tmp_path):
    code, out = cli("run", tiny_recipe, "objective=perceptual", "attack=fast_lpa", "attack.bound=0.3",
                    "attack.steps=2", "selector=gradmatch", "selector.batch_size=8", "schedule.epochs=2",
                    "schedule.warm_start_epochs=1", "train.max_steps_per_epoch=2")
    assert code == 0, out
    metrics = [json.loads(x) for x in (tmp_path / "runs/tiny/metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["full", "coreset"]
    assert metrics[1]["selection"]["attack_s"] > 0


def test_perceptual_objective_rejects_lp_attacks(cli, tiny_recipe):
    code, out = cli("validate", tiny_recipe, "objective=perceptual")
    assert code == 2 and "objective 'perceptual' works with fast_lpa, not 'pgd'" in out
