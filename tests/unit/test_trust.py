"""The trust boundary at unit level: parameter bounds, interpolation, model kwargs, checkpoint schema."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from advtrain.config.load import recipe_from_yaml_text
from advtrain.config.read import interpolation_problem
from advtrain.config.schema import FIXED_SECTIONS, RecipeTop
from advtrain.config.sections import SECTION_REGISTRIES
from advtrain.config.validate import validate
from advtrain.errors import CheckpointError, RecipeError
from advtrain.io import checkpoint as ckpt_io
from advtrain.models import MODEL_KWARGS, ModelParams, model_kwargs_problems
from advtrain.params import INT_LIMIT, check_range, param, parse_number

#: Fields checked elsewhere than by a range: registry names, the kwargs allow-list, eval attack names,
#: the selection attack (validated as an attack section, with that attack's own ranges).
CHECKED_ELSEWHERE = {("ModelParams", "name"), ("ModelParams", "kwargs"), ("EvalConfig", "attacks"),
                     ("CraigParams", "attack"), ("GradMatchParams", "attack")}


def _all_params() -> list[type]:
    classes = [*FIXED_SECTIONS.values(), RecipeTop, ModelParams]
    for section in ("data", "objective", "attack", "selector", "optim", "lr_schedule"):
        classes += [e.params for e in SECTION_REGISTRIES[section].entries() if e.params is not None]
    return list(dict.fromkeys(classes))


@pytest.mark.parametrize("params", _all_params(), ids=lambda c: c.__name__)
def test_every_parameter_has_a_range_or_a_set(params):
    hints = typing.get_type_hints(params)
    for f in dataclasses.fields(params):
        meta, hint = f.metadata, str(hints[f.name])
        if (params.__name__, f.name) in CHECKED_ELSEWHERE or hints[f.name] in (bool, bool | None):
            continue
        if meta.get("choices") is not None or meta.get("pattern") or meta.get("path"):
            continue
        assert "int" in hint or "float" in hint, f"{params.__name__}.{f.name}: a {hint} needs choices or a pattern"
        low = meta.get("ge") is not None or meta.get("gt") is not None
        high = meta.get("le") is not None or meta.get("lt") is not None
        assert low and high, f"{params.__name__}.{f.name} has no {'lower' if not low else 'upper'} bound"


def test_numbers_must_be_finite_and_fit_in_64_bits():
    field = dataclasses.fields(dataclasses.make_dataclass("P", [("x", float, param(0.0, ge=0))]))[0]
    assert "finite" in check_range(float("inf"), field)
    assert "finite" in check_range(float("nan"), field)
    assert "64 bits" in check_range(INT_LIMIT, field)
    assert check_range(1.5, field) is None
    with pytest.raises(ValueError, match="not a finite number"):
        parse_number("1e999")


@pytest.mark.parametrize("text", ["${oc.env:HOME}", "${oc.decode:'1'}", "a${oc.env:X,y}b", "${${name}}",
                                  "${oc.select:a,b}", "${eval:1}", "${name} and ${oc.env:X}"])
def test_resolvers_are_refused(text):
    assert "uses a resolver" in interpolation_problem(text)


@pytest.mark.parametrize("text", ["runs/${name}", "${data.batch_size}", "${eval.attacks[0]}", "${.sibling}",
                                  "plain", "literal \\${oc.env:HOME}"])
def test_plain_interpolation_is_allowed(text):
    assert interpolation_problem(text) is None


def test_a_refused_resolver_is_never_evaluated(monkeypatch):
    monkeypatch.setenv("ADVTRAIN_UNIT_SECRET", "unit-secret")
    data = {"name": "${oc.env:ADVTRAIN_UNIT_SECRET}", "data": {"name": "synthetic"}, "model": {"name": "small_cnn"},
            "attack": {"name": "pgd"}, "output": {"dir": "runs/${name}"}}
    with pytest.raises(RecipeError) as err:
        validate(data)
    assert "unit-secret" not in str(err.value)


def test_stored_recipes_are_data_without_interpolation():
    text = "name: run\ndata: {name: synthetic}\nmodel: {name: small_cnn}\nattack: {name: pgd}\n" \
           "output: {dir: 'runs/${name}'}\n"
    recipe = recipe_from_yaml_text(text, source="stored")
    assert recipe.output.dir == "runs/${name}"  # literal text, never resolved


@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                                 "features_only", "file"])
def test_model_kwargs_outside_the_allow_list_are_named(key):
    problems = model_kwargs_problems({key: "x"})
    assert len(problems) == 1 and problems[0].startswith(f"kwargs.{key}: not an allowed timm argument")


def test_model_kwargs_inside_the_allow_list_pass():
    assert model_kwargs_problems({"drop_rate": 0.1, "norm": False, "global_pool": "avg", "img_size": 32}) == []
    assert "checkpoint_path" not in MODEL_KWARGS and "pretrained_cfg" not in MODEL_KWARGS


def _state(**changes) -> ckpt_io.TrainingState:
    model = torch.nn.Linear(3, 2)
    values = dict(model=model.state_dict(), optimizer=None, recipe_yaml="name: x\n", model_name="small_cnn",
                  num_classes=2, in_chans=3, run=ckpt_io.RunState(epoch=1, step=1, run_id="a" * 32))
    return ckpt_io.TrainingState(**{**values, **changes})


def test_a_checkpoint_advtrain_writes_passes_its_own_schema(tmp_path):
    ckpt_io.save(tmp_path / "c.safetensors", _state())
    ckpt = ckpt_io.load(tmp_path / "c.safetensors")
    assert ckpt.meta["run_id"] == "a" * 32


def test_checkpoint_metadata_problems_name_the_key_and_the_value():
    problems = ckpt_io.check_metadata({"format_version": 1, "kind": "last", "model_name": "m", "num_classes": True,
                                       "in_chans": 3, "epoch": 0, "step": 0, "rng": None, "x": 1})
    text = "\n".join(problems)
    assert "metadata.num_classes: expected an integer, got True (bool)" in text
    assert "metadata.rng: expected a mapping, got None" in text
    assert "metadata.x: not a parameter of the checkpoint metadata" in text


def test_optimizer_slots_must_match_the_parameters(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    ckpt_io.save(tmp_path / "c.safetensors", _state(optimizer=state))
    ckpt = ckpt_io.load(tmp_path / "c.safetensors")
    ckpt_io.check_optimizer_tensors(ckpt, list(model.parameters()))
    with pytest.raises(CheckpointError, match=r"tensor 'optim.0.momentum_buffer' is float32 of shape \(2, 3\) but "
                                              r"parameter 0 is float32 of shape \(4, 3\)"):
        ckpt_io.check_optimizer_tensors(ckpt, list(torch.nn.Linear(3, 4).parameters()))
