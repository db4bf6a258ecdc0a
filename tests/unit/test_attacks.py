"""Attacks: the ε-ball and [0, 1] contract, agreement with torchattacks, restarts, presets.

A fixed tiny seeded conv net on 3×8×8 inputs with 10 classes; every check is CPU and seeded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import (
    ATTACKS,
    BoundAttack,
    FGSMParams,
    PGDParams,
    TradesKLParams,
    cross_entropy,
    fgsm,
    kl_per_sample,
    list_eval_presets,
    margin_loss,
    pgd,
    resolve_eval_attack,
    resolve_eval_attacks,
    trades_kl,
)
from advtrain.attacks.autoattack import autoattack
from advtrain.attacks.pgd import random_init
from advtrain.attacks.presets import GROUPS, LISTED
from advtrain.errors import UserError

torchattacks = pytest.importorskip("torchattacks")

TOL = 1e-6


def tiny_model(seed: int = 0) -> nn.Module:
    """Conv + BatchNorm + Dropout, so eval mode matters; random running stats so BN is not identity."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    )
    bn = model[1]
    bn.running_mean.uniform_(-0.1, 0.1)
    bn.running_var.uniform_(0.5, 1.5)
    return model


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    x[0, 0, :2] = 0.0  # pixels on the box edges exercise the [0, 1] clipping
    x[1, 1, :2] = 1.0
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def assert_in_ball(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + TOL, f"left the {norm} ball: {float(size.max())} > {eps}"


def worst_key(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn=cross_entropy):
    with torch.no_grad():
        logits = model.eval()(x_adv)
    return logits.argmax(1) != y, loss_fn(logits, y)


# --- the ball, the box and the mode contract for every training attack ----------------------------

CONFIGS = {
    "pgd-linf": (pgd, PGDParams(steps=5)),
    "pgd-l2": (pgd, PGDParams(norm="l2", eps=0.5, alpha=0.2, steps=5)),
    "pgd-linf-restarts": (pgd, PGDParams(steps=3, restarts=3)),
    "pgd-l2-restarts-margin": (pgd, PGDParams(norm="l2", eps=0.3, alpha=0.1, steps=3, restarts=2,
                                              loss="margin")),
    "pgd-margin": (pgd, PGDParams(steps=5, loss="margin")),
    "pgd-no-start": (pgd, PGDParams(steps=5, random_start=False)),
    "pgd-big-step": (pgd, PGDParams(norm="l2", eps=0.1, alpha=5.0, steps=3)),
    "fgsm-rs": (fgsm, FGSMParams()),
    "fgsm": (fgsm, FGSMParams(random_start=False)),
    "trades-kl-linf": (trades_kl, TradesKLParams(steps=5)),
    "trades-kl-l2": (trades_kl, TradesKLParams(norm="l2", eps=0.5, alpha=0.2, steps=5)),
    "trades-kl-big-step": (trades_kl, TradesKLParams(norm="l2", eps=0.1, alpha=5.0, steps=3)),
}


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_attack_stays_in_ball_and_box(key):
    attack, params = CONFIGS[key]
    model, (x, y) = tiny_model(), batch()
    x_copy = x.clone()
    x_adv = attack(model, x, y, params)
    assert_in_ball(x_adv, x, params.norm, params.eps)
    assert torch.equal(x, x_copy), "the attack modified its input"
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_attack_restores_mode_and_leaves_no_grads(key):
    attack, params = CONFIGS[key]
    model, (x, y) = tiny_model(), batch()
    model.train()
    model[3].eval()  # a deliberate mixture (frozen dropout) must survive too
    stats = (model[1].running_mean.clone(), model[1].running_var.clone(), int(model[1].num_batches_tracked))
    attack(model, x, y, params)
    assert model.training and model[1].training and not model[3].training
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])
    assert int(model[1].num_batches_tracked) == stats[2], "BatchNorm ran in train mode during the attack"
    assert all(p.grad is None for p in model.parameters())


def test_existing_parameter_grads_untouched():
    model, (x, y) = tiny_model(), batch()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    pgd(model, x, y, PGDParams(steps=3))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())


def test_mode_restored_on_exception():
    model, (x, y) = tiny_model(), batch()
    model.train()

    def broken(logits, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, x, y, PGDParams(steps=2), loss_fn=broken)
    assert model.training and all(m.training for m in model.modules())


def test_reduced_loss_fn_is_rejected():
    model, (x, y) = tiny_model(), batch()
    with pytest.raises(ValueError, match="per-sample"):
        pgd(model, x, y, PGDParams(steps=1), loss_fn=lambda z, t: F.cross_entropy(z, t))


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_raises_the_loss(norm, eps, alpha, loss):
    model, (x, y) = tiny_model(), batch(32)
    loss_fn = {"ce": cross_entropy, "margin": margin_loss}[loss]
    x_adv = pgd(model, x, y, PGDParams(norm=norm, eps=eps, alpha=alpha, steps=10, loss=loss))
    _, clean = worst_key(model, x, y, loss_fn)
    _, adv = worst_key(model, x_adv, y, loss_fn)
    assert float(adv.mean()) > float(clean.mean()) + 0.02
    assert float((adv > clean).float().mean()) >= 0.9


# --- agreement with torchattacks (independent implementation) --------------------------------------

def test_pgd_linf_matches_torchattacks():
    model, (x, y) = tiny_model(), batch(8)  # 8 = power of two: mean vs sum loss scales exactly
    params = PGDParams(norm="linf", eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    ours = pgd(model, x, y, params)
    ref = torchattacks.PGD(model, eps=params.eps, alpha=params.alpha, steps=params.steps,
                           random_start=False)(x, y)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert float((ours - x).abs().amax()) > params.eps / 2  # it moved


def test_pgd_l2_matches_torchattacks():
    # torchattacks divides by ‖g‖ + 1e-10 (eps_for_division) on the mean loss; we divide by ‖g‖
    # (0 where g = 0) on the summed loss. Same direction, same renorm projection and clipping.
    model, (x, y) = tiny_model(), batch(8)
    params = PGDParams(norm="l2", eps=0.5, alpha=0.1, steps=10, random_start=False)
    ours = pgd(model, x, y, params)
    ref = torchattacks.PGDL2(model, eps=params.eps, alpha=params.alpha, steps=params.steps,
                             random_start=False)(x, y)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert float((ours - x).flatten(1).norm(dim=1).max()) > params.eps / 2


# --- random starts ------------------------------------------------------------------------------

def test_l2_random_start_uniform_inside_ball():
    scipy_stats = pytest.importorskip("scipy.stats")
    eps, n = 0.1, 2000
    x = torch.full((n, 3, 8, 8), 0.5)  # far from the box edges: clipping never acts
    start = random_init(x, "l2", eps, torch.Generator().manual_seed(3))
    radius = (start - x).flatten(1).norm(dim=1)
    assert float(radius.max()) <= eps + TOL
    # Uniform in a d-ball ⇔ (r/ε)^d ~ U[0, 1]; a surface start would put every r at ε.
    d = x[0].numel()
    u = (radius.double() / eps).pow(d).clamp(max=1.0).numpy()
    assert scipy_stats.kstest(u, "uniform").pvalue > 1e-3
    direction = (start - x).flatten(1) / radius[:, None]
    assert float(direction.mean(0).abs().max()) < 0.1  # isotropic


def test_l2_random_start_clipped_to_box_stays_in_ball():
    x, _ = batch(64)
    start = random_init(x, "l2", 2.0, torch.Generator().manual_seed(0))
    assert_in_ball(start, x, "l2", 2.0)


def test_linf_random_start_uniform_in_cube():
    eps = 8 / 255
    x = torch.full((500, 3, 8, 8), 0.5)
    delta = random_init(x, "linf", eps, torch.Generator().manual_seed(0)) - x
    assert float(delta.abs().max()) <= eps + TOL
    assert abs(float(delta.mean())) < 1e-3 and abs(float(delta.std()) - eps / 3**0.5) < 1e-3


def test_random_start_uses_global_rng_or_generator():
    model, (x, y) = tiny_model(), batch()
    params = PGDParams(steps=1)
    torch.manual_seed(7)
    a = pgd(model, x, y, params)
    torch.manual_seed(7)
    b = pgd(model, x, y, params)
    c = pgd(model, x, y, params)
    assert torch.equal(a, b) and not torch.equal(b, c)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(pgd(model, x, y, params, generator=g1), pgd(model, x, y, params, generator=g2))


# --- restarts and the evaluation worst case --------------------------------------------------------

def _expected_worst(model, x, y, candidates, loss_fn):
    """Oracle: per example, the candidate maximising (misclassified, loss) lexicographically."""
    keys = [worst_key(model, c, y, loss_fn) for c in candidates]
    expected, chosen = candidates[0].clone(), torch.zeros(len(y), dtype=torch.long)
    for i in range(len(y)):
        best = 0
        for r in range(1, len(candidates)):
            (f_b, l_b), (f_r, l_r) = (keys[best][0][i], keys[best][1][i]), (keys[r][0][i], keys[r][1][i])
            if (bool(f_r), float(l_r)) > (bool(f_b), float(l_b)):
                best = r
        expected[i], chosen[i] = candidates[best][i], best
    return expected, chosen, keys


@pytest.mark.parametrize("use_class0_logit", [False, True])
def test_restarts_keep_per_example_worst_case(use_class0_logit):
    # A loss unrelated to misclassification (the class-0 logit) builds cases where one restart
    # fools the model at a lower loss than another that does not: the fooled one must win.
    loss_fn = (lambda z, t: z[:, 0].float()) if use_class0_logit else cross_entropy
    model, (x, y) = tiny_model(), batch(64)
    params = PGDParams(eps=0.15, alpha=0.05, steps=2, restarts=4)
    gen = torch.Generator().manual_seed(11)
    single = dataclasses.replace(params, restarts=1)
    candidates = [pgd(model, x, y, single, loss_fn=loss_fn, generator=gen) for _ in range(4)]
    got = pgd(model, x, y, params, loss_fn=loss_fn, generator=torch.Generator().manual_seed(11))
    expected, chosen, keys = _expected_worst(model, x, y, candidates, loss_fn)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert (chosen != 0).any(), "degenerate case: the first restart always won"
    if use_class0_logit:
        fooled = torch.stack([k[0] for k in keys])
        losses = torch.stack([k[1] for k in keys])
        # some example has a fooled restart that loses on loss to a non-fooled one
        fooled_lower = [(fooled[:, i].any() and (~fooled[:, i]).any()
                         and losses[fooled[:, i], i].max() < losses[~fooled[:, i], i].max())
                        for i in range(len(y))]
        assert any(fooled_lower), "the case does not separate 'misclassified first' from 'highest loss'"
        assert all(bool(fooled[chosen[i], i]) for i in range(len(y)) if fooled[:, i].any())


def test_keep_best_is_never_weaker_than_last_iterate():
    model, (x, y) = tiny_model(), batch(64)
    params = PGDParams(eps=4 / 255, alpha=3 / 255, steps=6, restarts=2)
    last = pgd(model, x, y, params, generator=torch.Generator().manual_seed(2))
    best = pgd(model, x, y, params, generator=torch.Generator().manual_seed(2), keep_best=True)
    assert_in_ball(best, x, "linf", params.eps)
    (f_last, l_last), (f_best, l_best) = worst_key(model, last, y), worst_key(model, best, y)
    assert bool((f_best | ~f_last).all()), "an example fooled by the last iterate is robust under keep_best"
    same = f_best == f_last
    assert bool((l_best[same] >= l_last[same] - 1e-6).all())


def test_keep_best_picks_the_worst_iterate():
    # Iterates x_0..x_K of one run are the results of runs with 0..K steps from the same start;
    # keep_best must return, per example, the lexicographically worst of them. A step as large as
    # ε makes the iterates bounce, so the last one is often not the worst.
    model, (x, y) = tiny_model(), batch(64)
    params = PGDParams(eps=8 / 255, alpha=8 / 255, steps=6)
    iterates = [pgd(model, x, y, dataclasses.replace(params, steps=k),
                    generator=torch.Generator().manual_seed(9)) for k in range(params.steps + 1)]
    got = pgd(model, x, y, params, generator=torch.Generator().manual_seed(9), keep_best=True)
    expected, chosen, _ = _expected_worst(model, x, y, iterates, cross_entropy)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert (chosen != params.steps).any(), "degenerate case: the last iterate always won"


def test_training_attack_keeps_updating_fooled_examples():
    # No early stop: with the input already misclassified, PGD still moves it (AT needs the max).
    model, (x, _) = tiny_model(), batch(32)
    with torch.no_grad():
        y_wrong = (model.eval()(x).argmax(1) + 1) % 10
    x_adv = pgd(model, x, y_wrong, PGDParams(steps=5, random_start=False))
    assert float((x_adv - x).abs().flatten(1).amax(1).min()) > 0


# --- FGSM against a hand-written oracle --------------------------------------------------------------

def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model.eval()(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def test_plain_fgsm_is_one_step_of_eps():
    model, (x, y) = tiny_model(), batch()
    eps = 8 / 255
    expected = (x + eps * _input_grad(model, x, y).sign()).clamp(0, 1)
    got = fgsm(model, x, y, FGSMParams(eps=eps, alpha=1 / 255, random_start=False))  # alpha unused
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=0)


def test_fgsm_rs_follows_wong_et_al():
    model, (x, y) = tiny_model(), batch()
    eps, alpha = 8 / 255, 10 / 255
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4))
    start = (x + (2 * u - 1) * eps).clamp(0, 1)
    stepped = start + alpha * _input_grad(model, start, y).sign()
    expected = (x + (stepped - x).clamp(-eps, eps)).clamp(0, 1)
    got = fgsm(model, x, y, FGSMParams(eps=eps, alpha=alpha), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=0)


# --- grad modes, autocast, losses --------------------------------------------------------------------

def test_attacks_work_inside_no_grad_and_inference_mode():
    model, (x, y) = tiny_model(), batch()
    params = PGDParams(steps=3, random_start=False)
    reference = pgd(model, x, y, params)
    with torch.no_grad():
        assert torch.equal(pgd(model, x, y, params), reference)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        assert torch.equal(pgd(model, xi, yi, params), reference)


def test_pgd_under_bf16_autocast_keeps_fp32_perturbation():
    model, (x, y) = tiny_model(), batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = PGDParams(norm="l2", eps=0.5, alpha=0.1, steps=3, restarts=2)
        x_adv = pgd(model, x, y, params, keep_best=True)
    assert x_adv.dtype == torch.float32
    assert_in_ball(x_adv, x, "l2", 0.5)


def test_margin_loss_matches_brute_force():
    logits = torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    expected = torch.tensor([max(float(logits[i, j]) for j in range(10) if j != y[i]) - float(logits[i, y[i]])
                             for i in range(16)])
    torch.testing.assert_close(margin_loss(logits, y), expected)
    assert ((margin_loss(logits, y) > 0) == (logits.argmax(1) != y)).all()
    assert cross_entropy(logits.bfloat16(), y).dtype == torch.float32


def test_registry_entries():
    assert ATTACKS.names() == ["fast_lpa", "fgsm", "pgd", "trades_kl"]
    assert ATTACKS.get("trades_kl").params is TradesKLParams
    assert ATTACKS.get("pgd").params is PGDParams and ATTACKS.get("fgsm").params is FGSMParams
    p = ATTACKS.get("pgd").default_params()
    assert (p.norm, p.eps, p.alpha, p.steps, p.random_start, p.restarts, p.loss) == \
        ("linf", 8 / 255, 2 / 255, 10, True, 1, "ce")
    f = ATTACKS.get("fgsm").default_params()
    assert (f.eps, f.alpha, f.random_start, f.norm) == (8 / 255, 10 / 255, True, "linf")


@pytest.mark.parametrize("name", ["fgsm", "pgd", "trades_kl"])
def test_registry_entries_build_ready_attacks_from_params(name):
    """An entry is a constructor: ``build(params)`` is the attack holding them, called as attack(model, x, y)."""
    entry = ATTACKS.get(name)
    attack = entry.build(entry.default_params())
    assert isinstance(attack, BoundAttack) and attack.params == entry.default_params()
    model, (x, y) = tiny_model(), batch()
    torch.manual_seed(0)
    x_adv = attack(model, x, y)
    assert_in_ball(x_adv, x, attack.params.norm, attack.params.eps)
    torch.manual_seed(0)
    assert torch.equal(x_adv, attack.fn(model, x, y, attack.params))


def test_fast_lpa_entry_builds_with_its_own_backbone_cache():
    first, second = ATTACKS.get("fast_lpa").build(), ATTACKS.get("fast_lpa").build()
    assert first.fn.keywords["cache"] == {} and first.fn.keywords["cache"] is not second.fn.keywords["cache"]


def _trades_reference(model, x, params):
    """TRADES' published inner loop (Zhang et al. 2019, trades.py), ℓ∞ and ℓ2, as advtrain ran it before."""
    model.eval()
    with torch.no_grad():
        p_clean = model(x)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1).detach()
    for _ in range(params.steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(kl_per_sample(p_clean, model(x_adv)).sum(), x_adv)
        with torch.no_grad():
            if params.norm == "linf":
                x_adv = torch.min(torch.max(x_adv + params.alpha * grad.sign(), x - params.eps), x + params.eps)
            else:
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                delta = x_adv + params.alpha * grad / norm - x
                dnorm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                x_adv = x + delta * (params.eps / dnorm.clamp_min(1e-12)).clamp(max=1.0)
            x_adv = x_adv.clamp(0, 1).detach()
    return x_adv


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 8 / 255, 2 / 255), ("linf", 0.2, 0.05), ("l2", 0.5, 0.125)])
def test_trades_kl_matches_the_published_inner_loop(norm, eps, alpha):
    """Same seed, same point: bit-identical in ℓ2; in ℓ∞ up to float32 rounding of the shared projection
    (x + clamp(x' − x, ±ε) rather than clamp(x', x − ε, x + ε))."""
    model, (x, y) = tiny_model(), batch(16)
    params = TradesKLParams(norm=norm, eps=eps, alpha=alpha, steps=10)
    torch.manual_seed(5)
    expected = _trades_reference(model, x, params)
    torch.manual_seed(5)
    got = trades_kl(model, x, y, params)
    torch.testing.assert_close(got, expected, rtol=0, atol=0 if norm == "l2" else 1e-7)
    torch.manual_seed(5)
    assert torch.equal(trades_kl(model, x, y, params, generator=None), got)
    assert torch.equal(trades_kl(model, x, y, params, generator=torch.Generator().manual_seed(5)), got)


def test_trades_kl_start_is_projected_into_a_ball_smaller_than_its_noise():
    model, (x, y) = tiny_model(), batch()
    for norm in ("linf", "l2"):
        x_adv = trades_kl(model, x, y, TradesKLParams(norm=norm, eps=1e-5, steps=0))
        assert_in_ball(x_adv, x, norm, 1e-5)


# --- evaluation presets ------------------------------------------------------------------------------

def test_preset_grammar():
    a = resolve_eval_attack("pgd50x10-l2")
    assert (a.family, a.norm, a.steps, a.restarts) == ("pgd", "l2", 50, 10)
    assert a.eps == 0.5 and a.alpha == pytest.approx(0.125)  # max(ε/4, 2.5·ε/steps)
    b = resolve_eval_attack("pgd20")
    assert (b.family, b.norm, b.eps, b.alpha, b.steps, b.restarts) == ("pgd", "linf", 8 / 255, 2 / 255, 20, 1)
    c = resolve_eval_attack("cw50")
    assert (c.family, c.norm, c.eps, c.alpha, c.steps, c.restarts) == ("cw", "linf", 8 / 255, 2 / 255, 50, 1)
    assert resolve_eval_attack("pgd50x10").restarts == 10
    assert (resolve_eval_attack("aa").family, resolve_eval_attack("aa").norm) == ("aa", "linf")
    assert (resolve_eval_attack("aa-l2").norm, resolve_eval_attack("aa-l2").eps) == ("l2", 0.5)
    f = resolve_eval_attack("fgsm")
    assert (f.family, f.norm, f.eps, f.alpha, f.steps) == ("fgsm", "linf", 8 / 255, 8 / 255, 1)
    with pytest.raises(UserError, match="'clean' is not an attack"):
        resolve_eval_attack("clean")
    assert [a.name for a in resolve_eval_attacks(["clean", "pgd20", " CLEAN "])] == ["pgd20"]
    assert resolve_eval_attack(" PGD20 ").name == "pgd20"
    assert "PGD-50×10 ℓ2 ε=0.5 α=0.125 (α = max(ε/4, 2.5·ε/steps))" in a.describe()
    assert "8/255" in b.describe() and "CW" in c.describe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.eps = 1.0  # type: ignore[misc]


def test_preset_overrides():
    a = resolve_eval_attack("pgd20", eps=4 / 255)
    assert (a.eps, a.alpha) == (4 / 255, pytest.approx(1 / 255))  # the step follows ε (ε/4)
    b = resolve_eval_attack("pgd20-l2", eps=1.0)
    assert b.alpha == pytest.approx(1.0 / 4)
    c = resolve_eval_attack("pgd50-l2", steps=100, restarts=3)
    assert (c.steps, c.restarts, c.alpha) == (100, 3, pytest.approx(0.5 / 4))
    d = resolve_eval_attack("pgd50-l2", eps=1.0, alpha=0.3)
    assert d.alpha == 0.3
    e = resolve_eval_attack("pgd50", norm="l2")
    assert (e.norm, e.eps, e.alpha) == ("l2", 0.5, pytest.approx(0.125))
    f = resolve_eval_attack("aa", eps=4 / 255, steps=7, alpha=0.1)  # α ignored; steps: a non-standard budget
    assert (f.eps, f.steps, f.alpha, f.restarts, f.standard) == (4 / 255, 7, None, None, False)
    assert "NON-STANDARD" in f.describe() and "350 queries" in f.describe()
    assert resolve_eval_attack("aa").standard and resolve_eval_attack("aa10-l2").steps == 10
    # the record says what runs: standard AutoAttack is 100 iterations and 5000 Square queries, = aa100
    assert (resolve_eval_attack("aa").steps, resolve_eval_attack("aa").queries) == (100, 5000)
    assert resolve_eval_attack("aa100").standard and not resolve_eval_attack("aa", steps=99).standard
    g = resolve_eval_attack("fgsm", eps=4 / 255, steps=5)
    assert (g.eps, g.alpha, g.steps) == (4 / 255, 4 / 255, 1)
    assert resolve_eval_attack("cw50", restarts=5).restarts == 5


@pytest.mark.parametrize("name,overrides,needle", [
    ("pgd0", {}, "attack 'pgd0': steps must be in 1..10000, got 0"),
    ("pgd50x0", {}, "restarts must be in 1..1000, got 0"),
    ("aa0", {}, "attack 'aa0': steps must be in 1..10000, got 0"),
    ("pgd99999999999999999999", {}, "steps must be in 1..10000, got 999999999999…"),
    ("pgd1x99999999999", {}, "restarts must be in 1..1000, got 99999999999"),
    ("pgd10001", {}, "steps must be in 1..10000, got 10001"),
    ("aa10001-l2", {}, "steps must be in 1..10000"),
    ("ppgd10001", {}, "steps must be in 1..10000"),
    ("stadv99999999999999", {}, "steps must be in 1..10000"),
    ("recolor0", {}, "steps must be in 1..10000, got 0"),
    ("pgd20", {"steps": 0}, "steps must be in 1..10000, got 0"),
    ("pgd20", {"steps": 10**20}, "steps must be in 1..10000"),
    ("pgd20", {"restarts": 1001}, "restarts must be in 1..1000, got 1001"),
    ("pgd20", {"steps": True}, "steps must be an integer in 1..10000"),
    ("aa", {"steps": 0}, "steps must be in 1..10000, got 0"),
    ("stadv10", {"steps": 20_000}, "steps must be in 1..10000"),
    ("pgd20", {"eps": -0.1}, "eps must be a number >= 0"),
    ("pgd20", {"alpha": 0.0}, "alpha (step size) must be a number > 0"),
    ("pgd20", {"norm": "l1"}, "norm must be linf or l2"),
    ("fgsm", {"norm": "l2"}, "FGSM is ℓ∞ only"),
])
def test_preset_bad_overrides(name, overrides, needle):
    with pytest.raises(UserError) as err:
        resolve_eval_attack(name, **overrides)
    assert needle in str(err.value)


def test_unknown_preset_message():
    with pytest.raises(UserError) as err:
        resolve_eval_attack("pgd5O")
    text = str(err.value)
    assert text.startswith("unknown attack 'pgd5O'")
    assert "did you mean 'pgd50'" in text
    assert "valid: clean, fgsm, pgd<steps>[x<restarts>][-l2], cw<steps>, aa[<iterations>][-l2]" in text
    for bad in ("pgd", "cw", "pgd20-linf", "aa-l1", "pgd20x", "fgsm-l2", "", "fgsm5", "cw5x2", "stadv", "lpa4-dog",
                "pgd-l2", "x" * 10_000):
        with pytest.raises(UserError, match="unknown attack") as err:
            resolve_eval_attack(bad)
        assert len(str(err.value)) < 600  # a long name is cut short, not echoed whole
    with pytest.raises(UserError, match=r"'fgsm' takes no steps"):
        resolve_eval_attack("fgsm5")
    with pytest.raises(UserError, match=r"'lpa' has no variant '-dog'; variants: -self, -alexnet"):
        resolve_eval_attack("lpa4-dog")


def test_list_eval_presets():
    rows = list_eval_presets()
    names = [n for n, _ in rows]
    assert set(LISTED) <= set(names) and all(desc for _, desc in rows)


LP_LISTED = [n for n in LISTED if n not in GROUPS and not n.startswith(("ppgd", "lpa", "stadv", "recolor"))]


def test_every_family_row_parses_its_own_grammar_and_describes_itself():
    from advtrain.attacks.families import FAMILIES

    for family in FAMILIES.values():
        example = family.grammar().replace("<steps>", "3").replace("[<iterations>]", "3")
        example = example.replace("[x<restarts>]", "x2").replace("[-l2]", "-l2").replace("[-<net>]", "-self")
        attack = resolve_eval_attack(example) if family.needs is None or importlib.util.find_spec(family.needs) \
            else None
        if attack is not None:
            assert attack.family == family.name and attack.describe()
            assert attack.steps == (family.default_steps if family.steps == "none" else 3)
            expected = family.metric or ("l2" if "-l2" in example else "linf")
            assert attack.threat().metric == expected


@pytest.mark.parametrize("name", LP_LISTED)
def test_every_preset_stays_in_ball(name):
    model, (x, _) = tiny_model(), batch(4)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # clean-correct, so every attack has something to fool
    attack = resolve_eval_attack(name, steps=None if name.startswith("fgsm") else 5)
    if name.startswith("pgd50x10"):
        attack = resolve_eval_attack(name, steps=3, restarts=3)
    model.train()
    x_adv = attack.run(model, x, y)
    assert model.training
    assert_in_ball(x_adv, x, attack.norm or "linf", attack.eps)
    _, clean = worst_key(model, x, y)
    _, adv = worst_key(model, x_adv, y)
    assert float(adv.mean()) > float(clean.mean())


# --- AutoAttack ----------------------------------------------------------------------------------

def test_autoattack_uses_official_standard_settings():
    from advtrain.attacks.autoattack import STAGES, _stage_attacks

    model = tiny_model()
    for n_classes, targets in ((100, 9), (10, 9), (5, 4)):
        stages = _stage_attacks(torchattacks, model, "Linf", 8 / 255, 0, n_classes)
        assert tuple(stages) == STAGES == ("apgd-ce", "apgd-t", "fab-t", "square")
        apgd, apgdt, fab, square = stages.values()
        assert (apgd.steps, apgd.n_restarts, apgd.loss) == (100, 1, "ce")
        assert (apgdt.steps, apgdt.n_target_classes) == (100, targets)
        assert (fab.steps, fab.multi_targeted, fab.n_target_classes) == (100, True, targets)
        assert (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
        assert all(a.normalization_used is None for a in stages.values())
    quick = _stage_attacks(torchattacks, model, "Linf", 8 / 255, 0, 10, iterations=5, queries=250)
    assert (quick["apgd-ce"].steps, quick["fab-t"].steps, quick["square"].n_queries) == (5, 5, 250)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_autoattack_contract(norm, eps):
    model, (x, y) = tiny_model(), batch(4)
    model.train()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    x_adv = autoattack(model, x, y, norm=norm, eps=eps)
    assert torch.equal(torch.get_rng_state(), rng), "AutoAttack re-seeded the global RNG"
    assert model.training and all(p.grad is None for p in model.parameters())
    assert_in_ball(x_adv, x, norm, eps)
    fooled, _ = worst_key(model, x_adv, y)
    assert bool(fooled.all())  # an untrained net at these budgets


def test_autoattack_rejects_inputs_outside_unit_box():
    model, (x, y) = tiny_model(), batch(2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        autoattack(model, (x - 0.5) / 0.25, y)


def test_autoattack_without_torchattacks(monkeypatch):
    model, (x, y) = tiny_model(), batch(2)
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'advtrain\[autoattack\]'"):
        autoattack(model, x, y)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match=r"pip install 'advtrain\[autoattack\]'"):
        resolve_eval_attack("aa")


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 1 / 255), ("l2", 0.02)])
def test_autoattack_full_cascade_on_robust_points(norm, eps):
    # Tiny budgets: most points survive APGD-CE, so APGD-T, FAB-T and Square all run (~5 s each).
    model, (x, y) = tiny_model(), batch(4)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    x_adv = autoattack(model, x, y, norm=norm, eps=eps)
    assert_in_ball(x_adv, x, norm, eps)
    fooled, _ = worst_key(model, x_adv, y)
    assert (~fooled).any(), "nothing survived: the cascade after APGD-CE was not exercised"
    assert torch.equal(x_adv[~fooled], x[~fooled])  # robust points come back unchanged
