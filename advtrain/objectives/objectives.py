"""Training objectives: per-sample losses and their Danskin selection features.

An objective knows (a) how to build its adversarial point (through its attack, a built
``attack(model, x, y) -> x_adv`` that runs in eval mode), (b) its per-sample training loss at that
point, with the model in train mode, and (c) the last-layer gradient of that loss at that point,
used for coreset selection (paper Eqs. 12 and 14). Each class also declares which attacks a recipe
may pair with it (``attacks``) and which keys of an attack's section it uses (``attack_keys``), so
validation can refuse a key that would have no effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advtrain.attacks import ATTACKS, BoundAttack, TradesKLParams
from advtrain.attacks.losses import cross_entropy, kl_per_sample
from advtrain.objectives.lastlayer import cross_entropy_grads, trades_grads
from advtrain.params import param
from advtrain.runtime.distributed import attack_view, unwrap


@dataclass
class LossOutput:
    """Per-sample losses and the logits used to report training accuracy."""

    losses: Tensor
    logits: Tensor


def _logits_and_embedding(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    return unwrap(model).logits_and_embedding(x)


class CleanObjective:
    """Vanilla training: CE at the clean point (paper Eq. 2)."""

    #: Attack names a recipe may pair with the objective (none: it takes no attack).
    attacks: ClassVar[tuple[str, ...]] = ()
    #: Per attack name, the keys of its section the objective uses; an attack not listed is used whole.
    attack_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: Why the keys it does not use have no effect (worded into the validation message).
    ignores_because: ClassVar[str] = ""
    #: Its attack takes the model as a function only, so it may run on an eval-mode view (``train.fold_bn``).
    attack_on_view: ClassVar[bool] = False

    def __init__(self, params: Any = None, *, attack: BoundAttack | None = None) -> None:
        self.params = params

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, attack_model: nn.Module | None = None) -> LossOutput:
        logits = model(x)
        return LossOutput(cross_entropy(logits, y), logits)

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x

    @torch.no_grad()
    def selection_features(self, model: nn.Module, x: Tensor, y: Tensor, points: Tensor, *,
                           bias_only: bool = False) -> Tensor:
        """Per-sample last-layer gradient of CE at ``points`` (clean or adversarial; ``self`` unused)."""
        logits, emb = _logits_and_embedding(model, points)
        return cross_entropy_grads(logits, emb, y, bias_only=bias_only)


class AdversarialObjective(CleanObjective):
    """CE at the attack's point: Madry PGD-AT with ``pgd``, Fast-AT with ``fgsm`` (paper Eq. 3)."""

    attacks: ClassVar[tuple[str, ...]] = ("pgd", "fgsm")
    attack_on_view: ClassVar[bool] = True

    def __init__(self, params: Any = None, *, attack: BoundAttack | None = None) -> None:
        if attack is None:
            raise ValueError(f"{type(self).__name__} needs an attack (one of: {', '.join(self.attacks)})")
        self.params = params
        self.attack = attack

    @property
    def attack_params(self) -> Any:
        return self.attack.params

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, attack_model: nn.Module | None = None) -> LossOutput:
        x_adv = self.attack(attack_view(model) if attack_model is None else attack_model, x, y)
        logits = model(x_adv)
        return LossOutput(cross_entropy(logits, y), logits)

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The Danskin point: the attack's maximiser for each sample."""
        return self.attack(model, x, y)


@dataclass
class TradesParams:
    """TRADES trade-off (Zhang et al. 2019)."""

    beta: float = param(6.0, ge=0, le=1000, help="weight of the KL term (1/λ in the paper)")


def kl_attack(attack: BoundAttack) -> BoundAttack:
    """TRADES' KL attack with ``attack``'s ball and budget (``attack``: a built pgd or trades_kl)."""
    if isinstance(attack.params, TradesKLParams):
        return attack
    values = {f.name: getattr(attack.params, f.name) for f in dataclasses.fields(TradesKLParams)}
    return ATTACKS.get("trades_kl").build(TradesKLParams(**values))


class TradesObjective:
    """CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)) per sample (paper Eq. 4)."""

    attacks: ClassVar[tuple[str, ...]] = ("pgd", "trades_kl")
    #: A pgd section gives TRADES' KL attack its ball and budget, nothing else.
    attack_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "pgd": tuple(f.name for f in dataclasses.fields(TradesKLParams))}
    ignores_because: ClassVar[str] = "TRADES starts from x + 0.001·N(0, I) and runs one KL ascent"
    attack_on_view: ClassVar[bool] = True

    def __init__(self, params: TradesParams, *, attack: BoundAttack | None = None) -> None:
        if attack is None:
            raise ValueError(f"TradesObjective needs an attack (one of: {', '.join(self.attacks)})")
        self.params = params
        self.attack = kl_attack(attack)

    @property
    def attack_params(self) -> TradesKLParams:
        return self.attack.params

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, attack_model: nn.Module | None = None) -> LossOutput:
        x_adv = self.attack(attack_view(model) if attack_model is None else attack_model, x, y)
        clean_logits = model(x)
        adv_logits = model(x_adv)
        losses = cross_entropy(clean_logits, y) + self.params.beta * kl_per_sample(clean_logits, adv_logits)
        return LossOutput(losses, adv_logits)

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The Danskin point of the KL term (Eq. 15)."""
        return self.attack(model, x, y)

    @torch.no_grad()
    def selection_features(self, model: nn.Module, x: Tensor, y: Tensor, points: Tensor, *,
                           bias_only: bool = False) -> Tensor:
        clean_logits, clean_emb = _logits_and_embedding(model, x)
        adv_logits, adv_emb = _logits_and_embedding(model, points)
        return trades_grads(clean_logits, clean_emb, adv_logits, adv_emb, y, self.params.beta,
                            bias_only=bias_only)
