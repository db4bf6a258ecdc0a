"""Adversarial attacks: training attacks by registry name, evaluation attacks by preset name.

Every attack is a pure function ``attack(model, x, y, params, ...) -> x_adv`` on [0, 1] images:
eval mode during the attack (restored after), gradients w.r.t. the input only, results inside
[0, 1] and the ε-ball, detached. A registry entry is a constructor from params:
``ATTACKS.get(name).build(params)`` is that function with its params bound
(:class:`~advtrain.attacks.bound.BoundAttack`), called as ``attack(model, x, y)``.
"""

from __future__ import annotations

from advtrain.attacks.bound import BoundAttack
from advtrain.attacks.fgsm import FGSMParams, build_fgsm, fgsm
from advtrain.attacks.losses import cross_entropy, kl_per_sample, margin_loss
from advtrain.attacks.pgd import PGDParams, build_pgd, pgd
from advtrain.attacks.presets import EvalAttack, list_eval_presets, resolve_eval_attack, resolve_eval_attacks
from advtrain.attacks.trades_kl import TradesKLParams, build_trades_kl, trades_kl
from advtrain.registry import Registry

ATTACKS = Registry("attack")
ATTACKS.add("pgd", build_pgd, PGDParams)
ATTACKS.add("fgsm", build_fgsm, FGSMParams)
ATTACKS.add("trades_kl", build_trades_kl, TradesKLParams)

__all__ = [
    "ATTACKS",
    "BoundAttack",
    "EvalAttack",
    "FGSMParams",
    "PGDParams",
    "TradesKLParams",
    "cross_entropy",
    "fgsm",
    "kl_per_sample",
    "list_eval_presets",
    "margin_loss",
    "pgd",
    "resolve_eval_attack",
    "resolve_eval_attacks",
    "trades_kl",
]

# Perceptual attacks live in their own package; registering them here keeps one attack registry.
from advtrain.attacks.perceptual.fast_lpa import FastLPAParams, build_fast_lpa  # noqa: E402

ATTACKS.add("fast_lpa", build_fast_lpa, FastLPAParams)
