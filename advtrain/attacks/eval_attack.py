"""A fully resolved evaluation attack: what runs, in which ball, with which budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from advtrain.attacks.autoattack import SQUARE_QUERIES, STAGES, STANDARD_ITERATIONS, autoattack_stage
from advtrain.attacks.families import FAMILIES, Family
from advtrain.attacks.threat import Threat


@dataclass(frozen=True)
class EvalAttack:
    """A resolved evaluation attack; fields that do not apply to a family are ``None``.

    ``norm`` is the metric of the ball (``linf``/``l2``; ``lpips``, ``flow``, ``color`` for PAT's
    attacks) and ``eps`` its bound; :meth:`threat` is both as one record. ``steps`` and
    ``restarts`` are what runs (AutoAttack standard: 100 iterations, ``queries`` 5000 Square
    queries; smaller budgets are non-standard and labelled). ``network`` is the LPIPS feature
    network, ``alpha`` the step (ℓp: :data:`~advtrain.attacks.families.STEP_RULE` when
    ``alpha_from_rule``; perceptual: an explicit LPIPS step length). ``group`` names the group the
    attack came from (reports give the union accuracy per group); ``cache`` keeps an LPIPS backbone
    loaded across batches; ``eps_source`` says where the bound came from.
    """

    name: str
    family: str
    norm: str | None
    eps: float
    alpha: float | None
    steps: int | None
    restarts: int | None
    network: str | None = None
    eps_text: str | None = field(default=None, compare=False)
    group: str | None = field(default=None, compare=False)
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    eps_source: str | None = field(default=None, compare=False)
    alpha_from_rule: bool = field(default=False, compare=False)
    queries: int | None = None

    @property
    def spec(self) -> Family:
        """The family's row in :data:`~advtrain.attacks.families.FAMILIES`."""
        return FAMILIES[self.family]

    def threat(self) -> Threat:
        """The ball this attack searches: metric, bound and how the bound was written."""
        return Threat(self.norm or "linf", self.eps, self.eps_text)

    @property
    def standard(self) -> bool:
        """False for AutoAttack with a reduced budget: its number is not comparable with published ones."""
        if self.family != "aa":
            return True
        return self.steps == STANDARD_ITERATIONS and self.queries == SQUARE_QUERIES

    def stages(self) -> tuple[str, ...]:
        """AutoAttack's stages in order (each runs on the points the earlier ones left robust)."""
        return STAGES if self.family == "aa" else ()

    def run_stage(self, model: nn.Module, x: Tensor, y: Tensor, stage: str) -> Tensor:
        """One AutoAttack stage on ``(x, y)``; returns detached ``x_adv``."""
        return autoattack_stage(model, x, y, stage, norm=self.norm or "linf", eps=self.eps,
                                iterations=self.steps or STANDARD_ITERATIONS, queries=self.queries or SQUARE_QUERIES)

    def describe(self) -> str:
        """One line saying exactly what runs, e.g. ``PGD-50×10 ℓ∞ ε=8/255 α=2/255, CE loss, ...``."""
        return self.spec.describe(self)

    def run(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Attack ``model`` at ``(x, y)`` (images in [0, 1]); returns detached ``x_adv``."""
        return self.spec.runner(self, model, x, y)


__all__ = ["EvalAttack"]
