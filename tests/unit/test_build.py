"""Registry entries are constructors from their params, and advtrain.build is where a run is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from advtrain import build
from advtrain.config.load import load_recipe
from advtrain.config.sections import SECTION_REGISTRIES
from advtrain.models import MODELS, Classifier, ModelParams
from advtrain.optim import LR_SCHEDULES, OPTIMIZERS
from advtrain.selection import SELECTORS, Coreset
from advtrain.selection.selectors import Selector

TINY = str(Path(__file__).resolve().parents[1] / "assets" / "tiny.yaml")


def test_every_section_has_a_registry_with_default_entries():
    for section, registry in SECTION_REGISTRIES.items():
        assert registry.names(), section
        for entry in registry.entries():
            assert entry.summary, (section, entry.name)


def test_selector_entries_build_selectors_that_return_coresets():
    feats, labels = torch.randn(40, 3), torch.arange(40) % 2
    for entry in SELECTORS.entries():
        selector = entry.build()
        assert isinstance(selector, Selector)
        coreset = selector(feats, labels, generator=torch.Generator().manual_seed(0), batch_size=4)
        assert isinstance(coreset, Coreset) and len(coreset) > 0
    assert not SELECTORS.get("random").build().needs_features and SELECTORS.get("craig").build().needs_features


def test_optimizer_and_schedule_entries_are_constructors():
    model = torch.nn.Linear(2, 2)
    for entry in OPTIMIZERS.entries():
        assert isinstance(entry.build(model=model), torch.optim.Optimizer)
    for entry in LR_SCHEDULES.entries():  # exact values: tests/unit/test_registry_contracts.py (LR_ORACLES)
        assert callable(entry.build())


def test_timm_registry_is_the_model_list():
    assert "resnet18" in MODELS and "small_cnn" in MODELS and "resnet81" not in MODELS
    model = MODELS.get("small_cnn").build(ModelParams(name="small_cnn"), num_classes=3, in_chans=1,
                                          mean=(0.5,), std=(0.5,))
    assert isinstance(model, Classifier) and model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_build_run_builds_every_component_once():
    recipe = load_recipe(TINY, ["selector=craig"])
    parts = build.build_run(recipe, torch.device("cpu"))
    assert parts.data.num_classes == 4 and isinstance(parts.selector, Selector)
    assert parts.selection_objective is parts.objective
    assert parts.optimizer.param_groups[0]["params"][0] is next(parts.model.parameters())
    assert parts.lr_factor(1.5, 2) == 0.1 and [a.name for a in parts.eval_attacks] == ["pgd3"]


def test_a_section_is_reached_one_way():
    recipe = load_recipe(TINY)
    assert recipe.components["attack"].name == "pgd"
    assert not hasattr(recipe, "attack")


def test_config_imports_no_higher_layer():
    """Validating a recipe (every section's registry) loads nothing above config."""
    code = ("import sys, advtrain.config.load; advtrain.config.load.load_recipe('tests/assets/tiny.yaml'); "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['advtrain', 'train'], ['advtrain', 'build'], ['advtrain', 'commands'], ['advtrain', 'reports'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout
