"""Adversarial attacks: training attacks by registry name, evaluation attacks by preset name.

Every attack is a pure function ``attack(model, x, y, params, ...) -> x_adv`` on [0, 1] images:
eval mode during the attack (restored after), gradients w.r.t. the input only, results inside
[0, 1] and the ε-ball, detached. A registry entry is a constructor from params:
``ATTACKS.get(name).build(params)`` is that function with its params bound
(:class:`~advtrain.attacks.bound.BoundAttack`), called as ``attack(model, x, y)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from advtrain.attacks.bound import BoundAttack
from advtrain.attacks.fgsm import FGSMParams, build_fgsm, fgsm
from advtrain.attacks.losses import cross_entropy, kl_per_sample, margin_loss
from advtrain.attacks.pgd import PGDParams, build_pgd, pgd
from advtrain.attacks.presets import EvalAttack, list_eval_presets, resolve_eval_attack, resolve_eval_attacks
from advtrain.attacks.threat import Threat
from advtrain.attacks.trades_kl import TradesKLParams, build_trades_kl, trades_kl
from advtrain.params import parse_number
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
    "Threat",
    "TradesKLParams",
    "cross_entropy",
    "fgsm",
    "kl_per_sample",
    "list_eval_presets",
    "margin_loss",
    "pgd",
    "resolve_eval_attack",
    "resolve_eval_attacks",
    "section_threat",
    "trades_kl",
]

# Perceptual attacks live in their own package; registering them here keeps one attack registry.
from advtrain.attacks.perceptual.fast_lpa import FastLPAParams, build_fast_lpa  # noqa: E402

ATTACKS.add("fast_lpa", build_fast_lpa, FastLPAParams)


def section_threat(section: Any) -> Threat | None:
    """The threat of a recipe's ``attack`` section as a run's ``recipe.yaml`` stores it (plain values).

    None for no section, an unknown attack or values that do not make its params (a damaged file):
    for readers of finished runs (``advtrain compare``), which must not fail on what they only compare.
    """
    if not isinstance(section, Mapping) or not isinstance(section.get("name"), str) or section["name"] not in ATTACKS:
        return None
    params = ATTACKS.get(section["name"]).params
    if params is None:
        return None
    try:
        values = {f.name: parse_number(section[f.name]) for f in fields(params) if f.name in section}
        return params(**values).threat()
    except (TypeError, ValueError, OverflowError):
        return None
