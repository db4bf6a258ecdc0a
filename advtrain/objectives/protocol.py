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
        attack_on_view: Its attack calls the model as a function only, so it may attack an eval-mode
            view of it (``train.fold_bn``) instead of the model itself.
    """

    attacks: ClassVar[tuple[str, ...]]
    attack_keys: ClassVar[Mapping[str, tuple[str, ...]]]
    ignores_because: ClassVar[str]
    attack_on_view: ClassVar[bool]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, attack_model: nn.Module | None = None) -> LossOutput:
        """Per-sample training losses (``reduction='none'``) and the logits they came from; model in train mode.

        ``attack_model``: what the attack runs on instead of ``model``, an eval-mode view holding
        ``model``'s current weights (``train.fold_bn``); the loss itself always runs on ``model``.
        """
        ...

    def selection_points(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The points whose last-layer gradients the selection uses (the Danskin maximiser, or ``x``).

        ``model`` is only attacked, so it may be an eval-mode view of the model (``attack_on_view``).
        """
        ...

    def selection_features(self, model: nn.Module, x: Tensor, y: Tensor, points: Tensor, *,
                           bias_only: bool = False) -> Tensor:
        """Per-sample last-layer gradient of the training loss at ``points`` (paper Eqs. 12 and 14)."""
        ...
