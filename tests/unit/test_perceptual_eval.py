"""Perceptual evaluation: conjugate gradient, LPIPS-ball projection, PPGD, LPA and the preset grammar."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from advtrain.attacks.losses import margin_loss
from advtrain.attacks.perceptual.distance import PerceptualDistance, self_extractor
from advtrain.attacks.perceptual.lpa import LPAParams, lpa
from advtrain.attacks.perceptual.ppgd import PPGDParams, conjugate_gradient, ppgd
from advtrain.attacks.perceptual.projection import project_lpips
from advtrain.attacks.presets import GROUPS, resolve_eval_attack, resolve_eval_attacks
from advtrain.data import ArraySource
from advtrain.errors import UserError
from advtrain.eval.robust import evaluate
from advtrain.models import build_model


def _model(channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", num_classes=4, in_chans=channels, mean=(0.5,) * channels,
                        std=(0.25,) * channels)
    return model.eval()


def _batch(n: int = 8, channels: int = 3, size: int = 12, seed: int = 1):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)  # clean-correct, so the attacks have something to fool


def test_conjugate_gradient_solves_spd_systems_like_a_direct_solver():
    g = torch.Generator().manual_seed(0)
    factors = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    matrices = factors @ factors.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(3, 6, generator=g, dtype=torch.float64)
    solution = conjugate_gradient(lambda v: (matrices @ v.unsqueeze(2)).squeeze(2), b, iterations=12)
    torch.testing.assert_close(solution, torch.linalg.solve(matrices, b), rtol=1e-6, atol=1e-8)


def test_conjugate_gradient_leaves_zero_gradients_alone():
    solution = conjugate_gradient(lambda v: 2 * v, torch.zeros(2, 5), iterations=3)
    assert torch.equal(solution, torch.zeros(2, 5))


@pytest.mark.parametrize("newton_steps", [10, 0])  # 0: the bisection fallback alone
def test_projection_lands_inside_the_ball_and_keeps_inside_points(newton_steps):
    model = _model()
    distance = PerceptualDistance(self_extractor(model))
    x = _batch()
    far = (x + 0.5 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        phi_x = distance.features(x)
        start = distance(x, far)
    bound = float(start.median())
    projected = project_lpips(distance, x, far, phi_x, bound, newton_steps=newton_steps)
    with torch.no_grad():
        after = distance(x, projected)
    assert (after <= bound).all()
    inside = start <= bound
    assert torch.equal(projected[inside], far[inside])  # already feasible: untouched
    assert (after[~inside] > 0.3 * bound).all()  # projected, not collapsed onto x
    assert projected.min() >= 0 and projected.max() <= 1
    if newton_steps == 0:  # bisection stays on the segment x → far
        t = ((projected - x) * (far - x)).flatten(1).sum(1) / (far - x).flatten(1).pow(2).sum(1)
        torch.testing.assert_close(projected, x + t.view(-1, 1, 1, 1) * (far - x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attack", ["ppgd", "lpa"])
@pytest.mark.parametrize("keep_best", [True, False])
def test_perceptual_attacks_respect_the_bound_and_raise_the_loss(attack, keep_best):
    model = _model()
    x = _batch()
    y = _labels(model, x)
    bound = 0.2
    params = PPGDParams(bound=bound, steps=6) if attack == "ppgd" else LPAParams(bound=bound, steps=6, rounds=2)
    run = ppgd if attack == "ppgd" else lpa
    model.train()
    x_adv = run(model, x, y, params, keep_best=keep_best)
    assert all(m.training for m in model.modules())  # modes restored
    model.eval()
    distance = PerceptualDistance(self_extractor(model))
    with torch.no_grad():
        assert (distance(x, x_adv) <= bound + 1e-6).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert margin_loss(model(x_adv), y).mean() > margin_loss(model(x), y).mean()
        assert (model(x_adv).argmax(1) != y).sum() >= 2


def test_keep_best_is_at_least_as_strong_as_the_last_iterate():
    model = _model()
    x = _batch(16)
    y = _labels(model, x)
    torch.manual_seed(3)
    best = ppgd(model, x, y, PPGDParams(bound=0.15, steps=5), keep_best=True)
    torch.manual_seed(3)
    last = ppgd(model, x, y, PPGDParams(bound=0.15, steps=5), keep_best=False)
    with torch.no_grad():
        fooled_best = model(best).argmax(1) != y
        fooled_last = model(last).argmax(1) != y
    assert (fooled_best | ~fooled_last).all()  # wherever the last iterate fools, the kept one does too


def test_perceptual_attacks_on_grayscale_images():
    model = _model(channels=1)
    x = _batch(channels=1)
    y = _labels(model, x)
    x_adv = lpa(model, x, y, LPAParams(bound=0.2, steps=4, rounds=2))
    assert x_adv.shape == x.shape
    with torch.no_grad():
        assert (PerceptualDistance(self_extractor(model))(x, x_adv) <= 0.2 + 1e-6).all()


# ------------------------------------------------------------------ presets


def test_perceptual_and_unseen_names_parse():
    attack = resolve_eval_attack("lpa40-alexnet@0.25")
    assert (attack.family, attack.norm, attack.eps, attack.steps, attack.network) == ("lpa", "lpips", 0.25, 40,
                                                                                       "alexnet")
    assert resolve_eval_attack("ppgd40").network == "self" and resolve_eval_attack("ppgd40").eps == 0.5
    assert resolve_eval_attack("stadv100").eps == 0.05 and resolve_eval_attack("recolor100").eps == 0.06
    aa = resolve_eval_attack("aa-l2@1")
    assert (aa.family, aa.norm, aa.eps, aa.eps_text) == ("aa", "l2", 1.0, "1")
    assert resolve_eval_attack("pgd20@4/255").eps == pytest.approx(4 / 255)
    assert "ε=1 " in aa.describe()  # an ℓ2 radius of 1 is not written as 255/255


def test_eps_override_is_an_lp_quantity():
    # a recipe's eval.eps (an ℓ∞ radius) must not become the LPIPS, flow or colour bound
    assert resolve_eval_attack("ppgd10", eps=0.2).eps == 0.5
    assert resolve_eval_attack("stadv10", eps=0.2).eps == 0.05
    assert resolve_eval_attack("pgd10", eps=0.2).eps == 0.2
    assert resolve_eval_attack("pgd10@0.1", eps=0.2).eps == 0.1  # an explicit @bound wins
    assert resolve_eval_attack("recolor100", steps=7).steps == 7


def test_unseen_group_expands_to_pats_cifar_set():
    attacks = resolve_eval_attacks(["pgd20", "unseen", "aa@8/255"], eps=0.2)
    assert [a.name for a in attacks] == ["pgd20", "aa@8/255", "aa-l2@1", "stadv100@0.05", "recolor100@0.06"]
    by_name = {a.name: a for a in attacks}
    assert by_name["aa@8/255"].eps == pytest.approx(8 / 255) and by_name["aa-l2@1"].eps == 1.0
    assert {a.group for a in attacks[1:]} == {"unseen"} and attacks[0].group is None
    assert set(GROUPS) == {"unseen"}


@pytest.mark.parametrize("name, message", [
    ("ppgd40-resnet", "unknown attack"), ("lpa", "unknown attack"), ("stadv", "unknown attack"),
    ("pgd20@0", "bound after '@'"), ("aa@x", "bound after '@'"), ("ppgd40@8/0", "divides by zero"),
    ("clean@1", "takes no bound"), ("unseen@1", "group 'unseen' takes no bound"),
])
def test_bad_perceptual_names_are_clear(name, message):
    with pytest.raises(UserError, match=message):
        resolve_eval_attacks([name])


def test_group_union_is_the_union_over_the_group_only():
    model = _model()
    images = (_batch(12) * 255).to(torch.uint8)
    source = ArraySource(images, _labels(model, images.float() / 255))
    attacks = resolve_eval_attacks(["ppgd3@0.05", "stadv5", "recolor5"])
    attacks = [attacks[0]] + [dataclasses.replace(a, group="g") for a in attacks[1:]]
    result = evaluate(model, source, attacks, n_examples=12, batch_size=6, device=torch.device("cpu"),
                      num_classes=4)
    stadv, recolor = (r.correct for r in result.attacks[1:])
    assert result.group_union_acc == {"g": pytest.approx(float((stadv & recolor).float().mean()))}
    everything = stadv & recolor & result.attacks[0].correct
    assert result.union_acc == pytest.approx(float(everything.float().mean()))
