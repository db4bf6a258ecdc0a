"""Objectives: TRADES against its published formula, β = 0 equals CE, modes restored."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import PGDParams
from advtrain.config.recipe import Component
from advtrain.models import build_model
from advtrain.objectives import OBJECTIVES
from advtrain.objectives.objectives import TradesParams, trades_attack


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=4, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=gen), torch.randint(0, 4, (6,), generator=gen)


def _trades(beta: float):
    attack = Component("pgd", PGDParams(eps=8 / 255, alpha=2 / 255, steps=3))
    return OBJECTIVES.get("trades").constructor(TradesParams(beta=beta), attack)


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
    model.eval()
    with torch.no_grad():
        clean_eval = model(x)
    x_adv = trades_attack(model, x, clean_eval, objective.attack_params)
    model.train()
    logits, logits_adv = model(x), model(x_adv)
    kl = nn.KLDivLoss(reduction="sum")(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1))
    expected = F.cross_entropy(logits, y) + 6.0 * kl / len(x)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_trades_attack_stays_in_ball_and_box_and_restores_train_mode():
    model, (x, _) = _model().train(), _batch()
    attack = PGDParams(eps=8 / 255, alpha=2 / 255, steps=5)
    x_adv = trades_attack(model, x, model.eval()(x).detach(), attack)
    model.train()
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    _trades(6.0).loss(model, x, _batch()[1])
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("name,attack", [("adversarial", "pgd"), ("adversarial", "fgsm"), ("clean", None)])
def test_adversarial_objectives_give_per_sample_losses_and_restore_mode(name, attack):
    from advtrain.attacks import ATTACKS

    model, (x, y) = _model().train(), _batch()
    component = Component(attack, ATTACKS.get(attack).default_params()) if attack else None
    out = OBJECTIVES.get(name).constructor(None, component).loss(model, x, y)
    assert out.losses.shape == (6,) and model.training
    if name == "adversarial":
        clean = F.cross_entropy(model(x), y, reduction="none")
        assert float(out.losses.detach().mean()) > float(clean.detach().mean())
