"""A training attack ready to run: an attack function with its validated params bound.

What ``ATTACKS.get(name).build(params)`` returns, and what an objective holds: called as
``attack(model, x, y) -> x_adv``, it runs the pure attack function with its params, and keeps them
readable (``attack.params``) for the selection attack and the evaluation's training ball.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

#: ``fn(model, x, y, params, **options) -> x_adv``: the pure attack functions (pgd, fgsm, ...).
AttackFn = Callable[..., Tensor]


@dataclass(frozen=True)
class BoundAttack:
    """``fn`` with its ``params``: ``attack(model, x, y, **options)`` is ``fn(model, x, y, params, **options)``."""

    fn: AttackFn
    params: Any

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, **options: Any) -> Tensor:
        return self.fn(model, x, y, self.params, **options)
