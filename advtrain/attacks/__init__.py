"""Adversarial attacks: training attacks by registry name, evaluation attacks by preset name.

Every attack is a pure function ``attack(model, x, y, params, *, loss_fn=None) -> x_adv`` on
[0, 1] images: eval mode during the attack (restored after), gradients w.r.t. the input only,
results inside [0, 1] and the ε-ball, detached.
"""

from __future__ import annotations

from advtrain.attacks.fgsm import FGSMParams, fgsm
from advtrain.attacks.losses import cross_entropy, margin_loss
from advtrain.attacks.pgd import PGDParams, pgd
from advtrain.attacks.presets import EvalAttack, list_eval_presets, resolve_eval_attack, resolve_eval_attacks
from advtrain.registry import Registry

ATTACKS = Registry("attack")
ATTACKS.add("pgd", pgd, PGDParams)
ATTACKS.add("fgsm", fgsm, FGSMParams)

__all__ = [
    "ATTACKS",
    "EvalAttack",
    "FGSMParams",
    "PGDParams",
    "cross_entropy",
    "fgsm",
    "list_eval_presets",
    "margin_loss",
    "pgd",
    "resolve_eval_attack",
    "resolve_eval_attacks",
]

# Perceptual attacks live in their own package; registering them here keeps one attack registry.
from advtrain.attacks.perceptual.fast_lpa import FastLPAParams, fast_lpa  # noqa: E402

ATTACKS.add("fast_lpa", fast_lpa, FastLPAParams)
