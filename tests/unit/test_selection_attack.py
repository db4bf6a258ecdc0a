"""`selector.attack`: a cheaper attack for the selection features only, validated like any section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advtrain import build
from advtrain.config.load import load_recipe, recipe_from_yaml_text
from advtrain.errors import RecipeError

TINY = str(Path(__file__).resolve().parents[1] / "assets" / "tiny.yaml")


def test_default_is_the_training_attack():
    recipe = load_recipe(TINY, ["selector=gradmatch"])
    assert recipe.components["selector"].params.attack is None
    objective = build.build_objective(recipe)
    assert build.build_selection_objective(recipe, objective) is objective


def test_same_attack_inherits_every_unset_key_and_is_recorded():
    recipe = load_recipe(TINY, ["selector=craig", "selector.attack.steps=1"])
    spec = recipe.components["selector"].params.attack
    assert spec["name"] == "pgd" and spec["steps"] == 1
    assert spec["eps"] == pytest.approx(8 / 255) and spec["alpha"] == pytest.approx(2 / 255)
    assert recipe.resolved["selector"]["attack"] == spec  # recipe.yaml and checkpoints carry it whole
    again = recipe_from_yaml_text(recipe.to_yaml(), "stored")  # a checkpoint's recipe resolves to the same
    assert again.components["selector"].params.attack == spec
    selection = build.build_selection_objective(recipe, build.build_objective(recipe))
    assert selection.attack_params.steps == 1 and build.build_objective(recipe).attack_params.steps == 2


def test_other_attack_keeps_the_threat_model_and_its_own_defaults():
    recipe = load_recipe(TINY, ["selector=gradmatch", "selector.attack.name=fgsm"])
    spec = recipe.components["selector"].params.attack
    assert spec["name"] == "fgsm" and spec["eps"] == pytest.approx(8 / 255)
    assert spec["alpha"] == pytest.approx(10 / 255)  # FGSM's default step, not the training PGD's
    selection = build.build_selection_objective(recipe, build.build_objective(recipe))
    x = torch.rand(4, 3, 8, 8)
    model = build.build_model_for(recipe, build.build_data(recipe))
    delta = selection.selection_points(model, x, torch.zeros(4, dtype=torch.long)) - x
    assert float(delta.abs().max()) <= 8 / 255 + 1e-6


@pytest.mark.parametrize(("override", "message"), [
    ("selector.attack.setps=1", "selector.attack.setps: not a parameter of attack 'pgd'; did you mean 'steps'?"),
    ("selector.attack.name=pdg", "selector.attack.name: unknown attack 'pdg'; did you mean 'pgd'?"),
    ("selector.attack.steps=-1", "selector.attack.steps: must be >= 0"),
    ("selector.attack.name=fast_lpa", "objective 'adversarial' works with pgd, fgsm, not 'fast_lpa'"),
    ("selector.attack=3", "selector.attack: expected"),
])
def test_bad_selection_attacks_are_reported_by_key(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY, ["selector=gradmatch", override])
    assert message in str(err.value)


def test_selection_attack_needs_an_adversarial_objective_and_a_feature_selector():
    with pytest.raises(RecipeError, match="objective 'clean' selects on clean points"):
        load_recipe(TINY, ["objective=clean", "selector=gradmatch", "selector.attack.steps=1"])
    with pytest.raises(RecipeError, match="selector.attack: not a parameter of selector 'random'"):
        load_recipe(TINY, ["selector=random", "selector.attack.steps=1"])


def test_the_loop_selects_with_the_selection_attack(monkeypatch, tmp_path):
    import advtrain.selection.full_pass as coreset
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    recipe = load_recipe(TINY, ["selector=gradmatch", "selector.attack.steps=1", f"output.dir={tmp_path}"])
    trainer = Trainer(recipe, SilentReporter())
    seen = []
    real = coreset.select_coreset

    def spy(model, objective, *args, **kwargs):
        seen.append(objective.attack_params.steps)
        return real(model, objective, *args, **kwargs)

    monkeypatch.setattr(coreset, "select_coreset", spy)
    try:
        trainer.select(0)
    finally:
        trainer.close()
    assert seen == [1] and trainer.objective.attack_params.steps == 2
