"""Training objectives: per-sample losses and their Danskin selection features.

An objective knows (a) how to build its adversarial point (through its attack, with the model in
eval mode), (b) its per-sample training loss at that point, with the model in train mode, and
(c) the last-layer gradient of that loss at that point, used for coreset selection (paper
Eqs. 12 and 14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.objectives.lastlayer import cross_entropy_grads, trades_grads
from advtrain.objectives.losses import cross_entropy, kl_per_sample
from advtrain.params import param


@dataclass
class LossOutput:
    """Per-sample losses and the logits used to report training accuracy."""

    losses: Tensor
    logits: Tensor


def attack_view(model: nn.Module) -> nn.Module:
    """The model an attack should run on: DistributedDataParallel unwrapped.

    Attack steps differentiate w.r.t. the input only; running them through DDP's forward would
    arm its gradient-reduction hooks for a backward that never comes.
    """
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)
    return inner.module if isinstance(inner, DistributedDataParallel) else model


def _logits_and_embedding(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)  # DDP
    return inner.logits_and_embedding(x)


class CleanObjective:
    """Vanilla training: CE at the clean point (paper Eq. 2)."""

    attacks: tuple[str, ...] = ()

    def __init__(self, params: Any = None, attack: Any = None) -> None:
        self.params = params

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossOutput:
        logits = model(x)
        return LossOutput(cross_entropy(logits, y), logits)

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x

    @torch.no_grad()
    def selection_features(self, model: nn.Module, x: Tensor, y: Tensor, points: Tensor, *,
                           bias_only: bool = False) -> Tensor:
        logits, emb = _logits_and_embedding(model, points)
        return cross_entropy_grads(logits, emb, y, bias_only=bias_only)


class AdversarialObjective:
    """CE at the attack's point: Madry PGD-AT with ``pgd``, Fast-AT with ``fgsm`` (paper Eq. 3)."""

    attacks: tuple[str, ...] = ("pgd", "fgsm")

    def __init__(self, params: Any, attack: Any) -> None:
        from advtrain.attacks import ATTACKS

        self.params = params
        self.attack_params = attack.params
        self.attack_fn = ATTACKS.get(attack.name).constructor

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.attack_fn(model, x, y, self.attack_params)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossOutput:
        x_adv = self.attack(attack_view(model), x, y)
        logits = model(x_adv)
        return LossOutput(cross_entropy(logits, y), logits)

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The Danskin point: the attack's maximiser for each sample."""
        return self.attack(model, x, y)

    @torch.no_grad()
    def selection_features(self, model: nn.Module, x: Tensor, y: Tensor, points: Tensor, *,
                           bias_only: bool = False) -> Tensor:
        logits, emb = _logits_and_embedding(model, points)
        return cross_entropy_grads(logits, emb, y, bias_only=bias_only)


@dataclass
class TradesParams:
    """TRADES trade-off (Zhang et al. 2019)."""

    beta: float = param(6.0, ge=0, le=1000, help="weight of the KL term (1/λ in the paper)")


def trades_attack(model: nn.Module, x: Tensor, clean_logits: Tensor, attack: Any) -> Tensor:
    """TRADES inner maximisation of KL(f(x) ‖ f(x')) from x + 0.001·N(0, I), model in eval mode."""
    from advtrain.attacks._common import attack_mode

    with attack_mode(model):
        p_clean = clean_logits.detach()
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1).detach()
        for _ in range(attack.steps):
            x_adv.requires_grad_(True)
            loss = kl_per_sample(p_clean, model(x_adv)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                if attack.norm == "linf":
                    x_adv = x_adv + attack.alpha * grad.sign()
                    x_adv = torch.min(torch.max(x_adv, x - attack.eps), x + attack.eps)
                else:
                    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
                    delta = x_adv + attack.alpha * grad / norm - x
                    dnorm = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
                    x_adv = x + delta * (attack.eps / dnorm.clamp_min(1e-12)).clamp(max=1.0)
                x_adv = x_adv.clamp(0, 1).detach()
        return x_adv


class TradesObjective:
    """CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)) per sample (paper Eq. 4)."""

    attacks: tuple[str, ...] = ("pgd",)

    def __init__(self, params: TradesParams, attack: Any) -> None:
        self.params = params
        self.attack_params = attack.params

    def _clean_logits_eval(self, model: nn.Module, x: Tensor) -> Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model(x)
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossOutput:
        inner = attack_view(model)
        x_adv = trades_attack(inner, x, self._clean_logits_eval(inner, x), self.attack_params)
        clean_logits = model(x)
        adv_logits = model(x_adv)
        losses = cross_entropy(clean_logits, y) + self.params.beta * kl_per_sample(clean_logits, adv_logits)
        return LossOutput(losses, adv_logits)

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The Danskin point of the KL term (Eq. 15)."""
        return trades_attack(model, x, self._clean_logits_eval(model, x), self.attack_params)

    @torch.no_grad()
    def selection_features(self, model: nn.Module, x: Tensor, y: Tensor, points: Tensor, *,
                           bias_only: bool = False) -> Tensor:
        clean_logits, clean_emb = _logits_and_embedding(model, x)
        adv_logits, adv_emb = _logits_and_embedding(model, points)
        return trades_grads(clean_logits, clean_emb, adv_logits, adv_emb, y, self.params.beta,
                            bias_only=bias_only)
