"""Objectives: TRADES against its published formula, β = 0 equals CE, modes restored, attacks built from params,
keys of the attack section an objective ignores refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import ATTACKS, PGDParams, TradesKLParams, trades_kl
from advtrain.models import build_model
from advtrain.objectives import OBJECTIVES, ignored_attack_params
from advtrain.objectives.objectives import AdversarialObjective, CleanObjective, TradesParams


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=4, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=gen), torch.randint(0, 4, (6,), generator=gen)


def _trades(beta: float, **pgd: object):
    attack = ATTACKS.get("pgd").build(PGDParams(**{"eps": 8 / 255, "alpha": 2 / 255, "steps": 3, **pgd}))
    return OBJECTIVES.get("trades").build(TradesParams(beta=beta), attack=attack)


def test_trades_with_beta_zero_is_clean_cross_entropy():
    model, (x, y) = _model().train(), _batch()
    out = _trades(0.0).loss(model, x, y)
    torch.manual_seed(0)
    expected = F.cross_entropy(model(x), y, reduction="none")
    torch.testing.assert_close(out.losses, expected, rtol=1e-5, atol=1e-6)


def test_trades_loss_matches_the_published_formula():
    model, (x, y) = _model().train(), _batch()
    reference_model = copy.deepcopy(model)  # the loss updates BatchNorm statistics
    objective = _trades(6.0)
    torch.manual_seed(3)
    got = objective.loss(model, x, y).losses.mean().detach()
    model = reference_model
    # Reference formula (Zhang et al. 2019): CE(f(x), y) + β · KLDiv_sum(log f(x_adv), f(x)) / B,
    # with x_adv from the same inner maximisation (same seed → same starting noise).
    torch.manual_seed(3)
    x_adv = trades_kl(model, x, y, TradesKLParams(eps=8 / 255, alpha=2 / 255, steps=3))
    logits, logits_adv = model(x), model(x_adv)
    kl = nn.KLDivLoss(reduction="sum")(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1))
    expected = F.cross_entropy(logits, y) + 6.0 * kl / len(x)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_trades_attacks_with_the_kl_attack_built_from_the_pgd_section():
    """The pgd section gives TRADES' KL attack its ball and budget; the KL attack runs, not PGD."""
    objective = _trades(6.0, norm="l2", eps=0.5, alpha=0.2, steps=4, restarts=3, random_start=False)
    assert objective.attack.fn is trades_kl
    assert objective.attack_params == TradesKLParams(norm="l2", eps=0.5, alpha=0.2, steps=4)
    direct = OBJECTIVES.get("trades").build(TradesParams(), attack=ATTACKS.get("trades_kl").build())
    assert direct.attack.params == TradesKLParams()


def test_trades_loss_stays_in_ball_and_restores_train_mode():
    model, (x, y) = _model().train(), _batch()
    objective = _trades(6.0, steps=5)
    x_adv = objective.selection_points(model, x, y)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    objective.loss(model, x, y)
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("name,attack", [("adversarial", "pgd"), ("adversarial", "fgsm"), ("clean", None)])
def test_adversarial_objectives_give_per_sample_losses_and_restore_mode(name, attack):
    model, (x, y) = _model().train(), _batch()
    built = ATTACKS.get(attack).build() if attack else None
    out = OBJECTIVES.get(name).build(None, attack=built).loss(model, x, y)
    assert out.losses.shape == (6,) and model.training
    if name == "adversarial":
        clean = F.cross_entropy(model(x), y, reduction="none")
        assert float(out.losses.detach().mean()) > float(clean.detach().mean())


def test_clean_and_adversarial_share_one_selection_features():
    assert AdversarialObjective.selection_features is CleanObjective.selection_features


@pytest.mark.parametrize(("objective", "attack", "values", "ignored"), [
    ("trades", "pgd", {"restarts": 3}, ["restarts"]),
    ("trades", "pgd", {"random_start": False, "loss": "margin", "steps": 3, "eps": 0.1}, ["random_start", "loss"]),
    ("trades", "pgd", {"random_start": True, "restarts": 1, "loss": "ce"}, []),  # defaults: what recipe.yaml writes
    ("trades", "trades_kl", {"steps": 3}, []),
    ("adversarial", "pgd", {"restarts": 3, "loss": "margin", "random_start": False}, []),
    ("adversarial", "fgsm", {"random_start": False}, []),
])
def test_ignored_attack_params(objective, attack, values, ignored):
    params = ATTACKS.get(attack).params(**values)
    problems = ignored_attack_params(objective, attack, params)
    assert [p.split(":", 1)[0] for p in problems] == [f"attack.{key}" for key in ignored]
    if ignored:
        assert problems[0] == (f"attack.{ignored[0]}: objective 'trades' ignores it (TRADES starts from "
                               f"x + 0.001·N(0, I) and runs one KL ascent); remove it")


def test_ignored_attack_params_only_for_the_written_keys_of_a_section():
    params = PGDParams(restarts=3, steps=2)
    assert ignored_attack_params("trades", "pgd", params, section="selector.attack", keys={"steps"}) == []
    assert ignored_attack_params("trades", "pgd", params, section="selector.attack", keys={"restarts"})[0] \
        .startswith("selector.attack.restarts: objective 'trades' ignores it")


def test_validation_refuses_attack_keys_the_objective_ignores():
    from pathlib import Path

    from advtrain.config.load import load_recipe, recipe_from_yaml_text
    from advtrain.errors import RecipeError

    tiny = str(Path(__file__).resolve().parents[1] / "assets" / "tiny.yaml")
    with pytest.raises(RecipeError, match=r"attack\.restarts: objective 'trades' ignores it \(TRADES starts"):
        load_recipe(tiny, ["objective=trades", "attack.restarts=3"])
    with pytest.raises(RecipeError, match=r"selector\.attack\.loss: objective 'trades' ignores it"):
        load_recipe(tiny, ["objective=trades", "selector=gradmatch", "selector.attack.loss=margin"])
    recipe = load_recipe(tiny, ["objective=trades", "selector=gradmatch", "selector.attack.steps=1"])
    # advtrain's own resolved recipe (recipe.yaml, checkpoints) writes every pgd key: it must validate again.
    assert recipe.resolved["attack"]["restarts"] == 1
    assert recipe_from_yaml_text(recipe.to_yaml(), "stored").components["attack"].name == "pgd"
    load_recipe(tiny, ["objective=adversarial", "attack.restarts=3", "attack.loss=margin"])


def test_every_registered_objective_is_an_objective():
    """The Objective protocol is the contract: every registry entry, built with an attack it takes, satisfies it."""
    from advtrain.attacks import ATTACKS
    from advtrain.objectives import OBJECTIVES, Objective

    for entry in OBJECTIVES.entries():
        allowed = entry.constructor.attacks
        attack = ATTACKS.get(allowed[0]).build(ATTACKS.get(allowed[0]).default_params()) if allowed else None
        built = entry.build(entry.default_params() if entry.params else None, attack=attack)
        assert isinstance(built, Objective), entry.name
        assert isinstance(entry.constructor.attack_keys, dict) and isinstance(entry.constructor.ignores_because, str)
