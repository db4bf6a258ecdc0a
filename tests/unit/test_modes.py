"""One mode-restoring context manager: every pass that switches a model to eval mode gives each
submodule its own flag back (a frozen BatchNorm inside a training model stays frozen)."""

from __future__ import annotations

import torch
from torch import nn

from advtrain.attacks import ATTACKS
from advtrain.data import ArraySource
from advtrain.eval.robust import evaluate
from advtrain.models import build_model
from advtrain.objectives import OBJECTIVES
from advtrain.selection.features import gradient_features


def _mixed_model() -> tuple[nn.Module, nn.Module]:
    """A training model with one BatchNorm deliberately frozen (eval mode)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=4, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3).train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    frozen.eval()
    return model, frozen


def _source() -> ArraySource:
    gen = torch.Generator().manual_seed(1)
    return ArraySource(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=gen),
                       torch.randint(0, 4, (12,), generator=gen))


def _assert_mixture_kept(model: nn.Module, frozen: nn.Module) -> None:
    assert model.training and not frozen.training
    assert all(m.training for m in model.modules() if m is not frozen)


def test_selection_features_pass_restores_each_submodule_mode():
    model, frozen = _mixed_model()
    objective = OBJECTIVES.get("trades").build(None, attack=ATTACKS.get("pgd").build())
    feats, labels, _ = gradient_features(model, objective, _source(), batch_size=5, device=torch.device("cpu"))
    assert feats.shape[0] == 12 and labels.shape == (12,)
    _assert_mixture_kept(model, frozen)


def test_evaluation_restores_each_submodule_mode():
    model, frozen = _mixed_model()
    result = evaluate(model, _source(), [], n_examples=12, batch_size=5, device=torch.device("cpu"), num_classes=4)
    assert result.n_examples == 12
    _assert_mixture_kept(model, frozen)


def test_objective_losses_restore_each_submodule_mode():
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 4, (6,))
    for name, attack in (("adversarial", "pgd"), ("trades", "pgd"), ("clean", None)):
        model, frozen = _mixed_model()
        built = ATTACKS.get(attack).build() if attack else None
        OBJECTIVES.get(name).build(None, attack=built).loss(model, x, y)
        _assert_mixture_kept(model, frozen)
