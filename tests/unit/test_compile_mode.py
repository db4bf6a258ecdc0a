"""``train.compile_mode``: validation, plumbing to torch.compile, CUDA-graph step marking and fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advtrain.config.load import load_recipe
from advtrain.errors import RecipeError
from advtrain.train.compiled import CompiledModel, compile_message, mark_step_begin


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
def test_every_torch_compile_mode_validates(tiny_recipe, mode):
    assert load_recipe(str(tiny_recipe), [f"train.compile_mode={mode}"]).train.compile_mode == mode


def test_an_unknown_mode_or_a_mode_without_compiling_is_refused_by_key(tiny_recipe):
    with pytest.raises(RecipeError, match=r"train.compile_mode.*reduce-overhead"):
        load_recipe(str(tiny_recipe), ["train.compile_mode=fast"])
    with pytest.raises(RecipeError, match=r"train.compile_mode: reduce-overhead has no effect with "
                                          r"train.compile=false"):
        load_recipe(str(tiny_recipe), ["train.compile=false", "train.compile_mode=reduce-overhead"])


def test_the_message_names_the_mode_and_that_a_cpu_has_no_cuda_graphs():
    assert "(mode reduce-overhead)" in compile_message("auto", torch.device("cuda"), "reduce-overhead")
    assert "no CUDA graphs off CUDA" in compile_message(True, torch.device("cpu"), "reduce-overhead")
    assert "(mode" not in compile_message(True, torch.device("cpu"))
    assert compile_message("auto", torch.device("cpu"), "reduce-overhead") is None


def _trainer(tiny_recipe, tmp_path, *overrides):
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    recipe = load_recipe(str(tiny_recipe), [f"output.dir={tmp_path / 'run'}", *overrides])
    return Trainer(recipe, SilentReporter())


@pytest.mark.parametrize("mode, marks", [("reduce-overhead", 5), ("max-autotune", 5), ("default", 0),
                                         ("max-autotune-no-cudagraphs", 0)])
def test_the_mode_reaches_torch_compile_and_cuda_graph_modes_mark_each_training_step(tiny_recipe, tmp_path,
                                                                                     monkeypatch, mode, marks):
    calls, steps = [], []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)  # "compiled" = eager
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    trainer = _trainer(tiny_recipe, tmp_path, "train.compile=true", f"train.compile_mode={mode}",
                       "train.max_steps_per_epoch=5")
    assert calls == [{"mode": mode}] and trainer.train_model.mode == mode
    trainer.train_epoch(0, "full")
    assert len(steps) == marks  # once per training step, never per model call (the attack calls it 3 times a step)
    assert trainer._compile_info()["mode"] == mode


def test_a_cuda_graph_failure_after_the_first_call_falls_back_to_eager(monkeypatch):
    """cudagraph trees raise builtin exceptions, on a later call than the first (they record after a warm-up)."""
    namespace: dict = {}
    exec(compile("def replay(x):\n    raise RuntimeError('Error: accessing tensor output of CUDAGraphs that has "
                 "been overwritten by a subsequent run.')\n", "/torch/_inductor/cudagraph_trees.py", "exec"), namespace)

    class Graphs(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, x):
            self.calls += 1
            return self.model(x) if self.calls == 1 else namespace["replay"](x)

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: Graphs(model))
    messages = []
    model = CompiledModel(nn.Linear(2, 2), messages.append, mode="reduce-overhead")
    x = torch.ones(1, 2)
    first, second = model(x), model(x)
    assert torch.equal(first, second) and model.fallback.startswith("RuntimeError: Error: accessing tensor output")
    assert messages and "recompiling" in messages[0]
    mark_step_begin(model)  # fallen back: no CUDA graphs to mark

    plain = CompiledModel(nn.Linear(2, 2), messages.append)
    plain.__dict__["_compiled"] = lambda x: (_ for _ in ()).throw(ValueError("a model bug"))
    plain.warmup_s = 1.0  # past the first call: an error outside the compiler stack is the model's own
    with pytest.raises(ValueError, match="a model bug"):
        plain(x)


@pytest.mark.slow
def test_reduce_overhead_compiles_and_trains_on_a_cpu(tiny_recipe, tmp_path):
    """Real torch.compile (needs a C++ compiler; tens of seconds): on a CPU the mode compiles without graphs."""
    trainer = _trainer(tiny_recipe, tmp_path, "train.compile=true", "train.compile_mode=reduce-overhead",
                       "train.max_steps_per_epoch=3")
    stats = trainer.train_epoch(0, "full")
    assert trainer.train_model.fallback is None and trainer.train_model.warmup_s is not None
    assert stats["train_loss"] == stats["train_loss"]


def test_the_report_names_a_mode_other_than_default():
    from advtrain.reports.run import run_markdown

    base = {"name": "r", "model": "m", "dataset": "d", "objective": "o", "attack": "pgd", "selector": "full",
            "epochs_run": 1, "wall_seconds": 1.0, "selection_seconds": 0.0, "selection_share": 0.0,
            "best_metric": None, "final_val": {}, "speedup": None, "test": None}
    graphs = {"setting": True, "mode": "reduce-overhead", "compiled": True, "warmup_s": 12.5, "fallback": None}
    assert "- torch.compile (True, mode reduce-overhead): warm-up 12.5s" in run_markdown({**base, "compile": graphs})
    older = {k: v for k, v in graphs.items() if k != "mode"}  # a report.json of an earlier advtrain
    assert "- torch.compile (True): warm-up 12.5s" in run_markdown({**base, "compile": older})
