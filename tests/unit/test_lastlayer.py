"""Closed-form last-layer gradients against autograd's per-sample W.grad / b.grad."""

import pytest
import torch
import torch.nn.functional as F

from advtrain.attacks.losses import kl_per_sample
from advtrain.objectives.lastlayer import cross_entropy_grads, trades_grads
from advtrain.objectives.losses import weighted_mean


def _autograd_per_sample(loss_fn, n):
    rows = []
    for i in range(n):
        layer = loss_fn.layer
        layer.zero_grad()
        loss_fn(i).backward()
        rows.append(torch.cat([layer.bias.grad.flatten(), layer.weight.grad.flatten()]).clone())
    return torch.stack(rows)


class _CE:
    def __init__(self, layer, emb, y):
        self.layer, self.emb, self.y = layer, emb, y

    def __call__(self, i):
        return F.cross_entropy(self.layer(self.emb[i : i + 1]), self.y[i : i + 1])


class _Trades:
    def __init__(self, layer, emb, emb_adv, y, beta):
        self.layer, self.emb, self.emb_adv, self.y, self.beta = layer, emb, emb_adv, y, beta

    def __call__(self, i):
        z = self.layer(self.emb[i : i + 1])
        z_adv = self.layer(self.emb_adv[i : i + 1])
        kl = F.kl_div(z_adv.log_softmax(1), z.softmax(1), reduction="sum")
        return F.cross_entropy(z, self.y[i : i + 1]) + self.beta * kl


def test_cross_entropy_grads_match_autograd():
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, 5).double()
    emb = torch.randn(6, 7, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    expected = _autograd_per_sample(_CE(layer, emb, y), 6)
    with torch.no_grad():
        got = cross_entropy_grads(layer(emb), emb, y)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    bias_only = cross_entropy_grads(layer(emb).detach(), emb, y, bias_only=True)
    torch.testing.assert_close(bias_only.double(), expected[:, :5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0])
def test_trades_grads_match_autograd_with_beta_applied_once(beta):
    torch.manual_seed(1)
    layer = torch.nn.Linear(4, 3).double()
    emb = torch.randn(5, 4, dtype=torch.float64)
    emb_adv = emb + 0.5 * torch.randn(5, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    expected = _autograd_per_sample(_Trades(layer, emb, emb_adv, y, beta), 5)
    with torch.no_grad():
        got = trades_grads(layer(emb), emb, layer(emb_adv), emb_adv, y, beta)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_kl_per_sample_matches_torch_kl_div():
    torch.manual_seed(2)
    clean, adv = torch.randn(4, 6), torch.randn(4, 6)
    expected = F.kl_div(adv.log_softmax(1), clean.softmax(1), reduction="none").sum(1)
    torch.testing.assert_close(kl_per_sample(clean, adv), expected)


def test_weighted_mean_with_unit_weights_is_the_mean_and_weights_reweight():
    losses = torch.tensor([1.0, 2.0, 6.0])
    assert weighted_mean(losses, torch.ones(3)) == pytest.approx(float(losses.mean()))
    assert weighted_mean(losses, None) == pytest.approx(3.0)
    assert weighted_mean(losses, torch.tensor([0.0, 1.0, 3.0])) == pytest.approx((2 + 18) / 4)
