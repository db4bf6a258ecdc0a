"""The evaluation PGD's strength against an independent implementation (torchattacks) on a trained model.

A small CNN is ℓ2-adversarially trained for a few seconds on scikit-learn's 8×8 digits (bundled, no
network); the same 400 held-out examples are attacked by ``pgd50-l2`` with its default step and
random start and by torchattacks' ``PGDL2`` at its own step ratio (α = ε/5, its defaults 0.2 for
ε = 1). Mean robust accuracies over three seeds (one run moves by about a point with its random
start) must agree within 0.5 points. The old default (α = 2.5·ε/steps, a random start near the
ball's edge) fails this check, so the test can fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import PGDParams, pgd, resolve_eval_attack

torchattacks = pytest.importorskip("torchattacks")
load_digits = pytest.importorskip("sklearn.datasets").load_digits

EPS = 1.0
STEPS = 50
TOLERANCE = 0.005  # half a point


@pytest.fixture(scope="module")
def l2_trained():
    """(model, x_test, y_test): 8 epochs, the last 5 with ℓ2 PGD-3 at ε = 1; about 2 s on one core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit the same numbers on every machine's CPU thread count
    try:
        torch.manual_seed(0)
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
        y = torch.tensor(digits.target)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                              nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for epoch in range(8):
            for i in range(0, 1300, 64):
                xb, yb = x[i:i + 64], y[i:i + 64]
                if epoch >= 3:
                    xb = pgd(model, xb, yb, PGDParams(norm="l2", eps=EPS, alpha=EPS / 3, steps=3))
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        yield model.eval(), x[1300:1700], y[1300:1700]
    finally:
        torch.set_num_threads(threads)


def _accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


SEEDS = (1, 2, 3)


def _mean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack) -> float:
    total = 0.0
    for seed in SEEDS:
        torch.manual_seed(seed)
        total += _accuracy(model, attack(x, y), y)
    return total / len(SEEDS)


@pytest.fixture(scope="module")
def reference(l2_trained) -> float:
    model, x, y = l2_trained
    return _mean_accuracy(model, x, y, torchattacks.PGDL2(model, eps=EPS, alpha=EPS / 5, steps=STEPS))


def test_l2_pgd_defaults_agree_with_torchattacks(l2_trained, reference):
    model, x, y = l2_trained
    clean = _accuracy(model, x, y)
    attack = resolve_eval_attack(f"pgd{STEPS}-l2", eps=EPS)
    ours = _mean_accuracy(model, x, y, lambda xb, yb: attack.run(model, xb, yb))
    assert clean > 0.85 and 0.1 < reference < clean - 0.2, "the model must be neither broken nor trivially robust"
    assert abs(ours - reference) <= TOLERANCE, f"pgd50-l2 {ours:.2%} vs torchattacks PGDL2 {reference:.2%}"


def test_old_l2_defaults_were_measurably_weaker(l2_trained, reference):
    # The check above can fail: the previous defaults (α = 2.5·ε/steps, start radius ε·U^(1/d), near
    # the edge) leave more than 0.5 points of robustness that torchattacks finds.
    model, x, y = l2_trained
    params = PGDParams(norm="l2", eps=EPS, alpha=2.5 * EPS / STEPS, steps=STEPS)
    old = _mean_accuracy(model, x, y, lambda xb, yb: pgd(model, xb, yb, params, keep_best=True))
    assert old - reference > TOLERANCE, f"old defaults {old:.2%} vs torchattacks PGDL2 {reference:.2%}"
