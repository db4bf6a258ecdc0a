"""``train.fold_bn``: the training attack runs on the model with BatchNorm folded into its convolutions.

The attack's passes are most of an adversarial-training step and all run in eval mode, where a
BatchNorm after a convolution folds into it (:mod:`advtrain.models.folding`). ``auto`` (the
default) folds on CUDA, where those passes are memory-bound, and nowhere else, so a CPU run
takes exactly the path it took before (the golden-loss tests pin it); ``true`` folds on any
device, ``false`` never. Only the attacks of the training step and of the selection pass use the
view; the training loss, evaluation and checkpoints use the model itself. A model that cannot be
folded trains as before, with one line saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from advtrain.models.folding import AttackView, fold_batchnorm
from advtrain.train.compiled import CompiledModel, compile_wanted

#: Images of the self-check comparing the view's logits with the model's before a run uses it.
_CHECK_IMAGES = 2


def fold_wanted(setting: bool | str, device: torch.device) -> bool:
    """``train.fold_bn``: true, false, or ``auto`` (on for CUDA, off elsewhere)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


class AttackModel:
    """What the attacks of the training step and the selection pass run on.

    Attributes:
        view: The folded view (None: the attacks run on the model itself).
        message: The line a run prints about folding at its start (None: nothing to say).
        fell_back: Folding was asked for but the model could not be folded.
    """

    def __init__(self, view: AttackView | None = None, runner: nn.Module | None = None, *,
                 message: str | None = None, fell_back: bool = False) -> None:
        self.view = view
        self._runner = runner if runner is not None else view
        self.message = message
        self.fell_back = fell_back

    def refreshed(self) -> nn.Module | None:
        """The view, holding the live weights and running statistics of this moment (None: no view).

        Call it right before each attack: the optimizer changes the live weights at every step.
        """
        if self.view is None:
            return None
        self.view.refresh()
        return self._runner

    @property
    def compiled(self) -> CompiledModel | None:
        """The view's compiled wrapper (``train.compile``), for its warm-up and fallback."""
        return self._runner if isinstance(self._runner, CompiledModel) else None


def setup_attack_model(model: nn.Module, objective: Any, setting: bool | str, device: torch.device, *,
                       compile_setting: bool | str, image_shape: tuple[int, ...],
                       on_compile_fallback: Callable[[str], None]) -> AttackModel:
    """The attack model ``train.fold_bn`` asks for on ``device``; never raises for a model it cannot fold.

    ``model`` is the plain network (not a compiled or DDP wrapper); ``objective`` says whether its
    attack takes the model as a function (``attack_on_view``: Fast-LPA reads the model's own layers).
    The view is checked once against the model's eval-mode logits on a fixed input before use, and
    compiled like the training model when ``train.compile`` compiles.
    """
    if not fold_wanted(setting, device):
        return AttackModel()
    why = "train.fold_bn=auto on CUDA" if setting == "auto" else "train.fold_bn=true"
    if getattr(objective, "attack", None) is None:
        return AttackModel(message=None if setting == "auto" else f"{why}: the objective runs no attack; "
                                                                  f"nothing to fold")
    if not getattr(objective, "attack_on_view", False):
        return AttackModel(message=f"{why}: the objective's attack reads the model's own layers; it runs on the "
                                   f"model itself", fell_back=True)
    example = torch.rand((_CHECK_IMAGES, *image_shape), generator=torch.Generator().manual_seed(0)).to(device)
    outcome = fold_batchnorm(model, example)
    if outcome.view is None:
        return AttackModel(message=f"{why}: {outcome.reason}; the attack runs on the model itself", fell_back=True)
    runner = CompiledModel(outcome.view, on_compile_fallback) if compile_wanted(compile_setting, device) else None
    return AttackModel(outcome.view, runner,
                       message=f"{why}: {outcome.reason} for the attack, refreshed from the model every step "
                               f"(train.fold_bn=false attacks the model itself)")
