"""What every training objective provides: the contract the loop, the selection pass and validation rely on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

if TYPE_CHECKING:
    from advtrain.objectives.objectives import LossOutput


@runtime_checkable
class Objective(Protocol):
    """A training objective (``objective.name`` in recipes), built with its attack.

    Attributes:
        attacks: Attack names a recipe may pair with it (empty: it takes no attack).
        attack_keys: Per attack name, the keys of its section it uses (validation refuses the others when set).
        ignores_because: Why the keys it does not use have no effect (worded into that refusal).
    """

    attacks: ClassVar[tuple[str, ...]]
    attack_keys: ClassVar[Mapping[str, tuple[str, ...]]]
    ignores_because: ClassVar[str]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossOutput:
        """Per-sample training losses (``reduction='none'``) and the logits they came from; model in train mode."""
        ...

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The points whose last-layer gradients the selection uses (the Danskin maximiser, or ``x``)."""
        ...

    def selection_features(self, model: nn.Module, x: Tensor, y: Tensor, points: Tensor, *,
                           bias_only: bool = False) -> Tensor:
        """Per-sample last-layer gradient of the training loss at ``points`` (paper Eqs. 12 and 14)."""
        ...
