"""Recipe loading, overrides and strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from advtrain.config.load import load_recipe
from advtrain.config.read import apply_overrides, parse_override, recipes_dir
from advtrain.config.validate import validate
from advtrain.errors import RecipeError, UserError
from advtrain.params import parse_number

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Cases that need the run stage or command-line arguments go through the CLI only (test_bad_input_corpus).
BAD = sorted(p for p in (ASSETS / "bad").glob("*.yaml")
             if "# stage: run" not in p.read_text() and "# args:" not in p.read_text())


def _expectations(path: Path) -> list[str]:
    return [line.split("expect:", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith("# expect:")]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_each_bad_recipe_reports_its_problem(path: Path):
    expected = _expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(UserError) as info:
        load_recipe(str(path))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_corpus_is_large_enough():
    assert len(list((ASSETS / "bad").glob("*.yaml"))) >= 30


def test_tiny_recipe_validates_and_keeps_fractions_as_written():
    recipe = load_recipe(str(ASSETS / "tiny.yaml"))
    assert recipe.components["attack"].params.eps == pytest.approx(8 / 255)
    assert recipe.resolved["attack"]["eps"] == "8/255"
    assert recipe.output.dir == "runs/tiny"
    assert "8/255" in recipe.to_yaml()


def test_override_split_on_first_equals_and_parsed_types():
    assert parse_override("output.dir=runs/a=b") == ("output.dir", "runs/a=b")
    assert parse_override("optim.weight_decay=5e-4") == ("optim.weight_decay", 5e-4)
    assert parse_override("lr_schedule.milestones=[3,4]") == ("lr_schedule.milestones", [3, 4])
    with pytest.raises(RecipeError, match="must look like key=value"):
        parse_override("schedule.epochs")


def test_section_equals_name_replaces_section_with_defaults():
    recipe = load_recipe(str(ASSETS / "tiny.yaml"), ["attack=fgsm", "selector=craig", "selector.fraction=0.3"])
    assert recipe.components["attack"].name == "fgsm"
    assert recipe.components["selector"].name == "craig"
    assert recipe.components["selector"].params.fraction == pytest.approx(0.3)


def test_name_override_keeps_stale_params_strict():
    with pytest.raises(RecipeError, match="use 'attack=fgsm'"):
        load_recipe(str(ASSETS / "tiny.yaml"), ["attack.name=fgsm"])


def test_interpolation_and_overrides_of_name():
    recipe = load_recipe(str(ASSETS / "tiny.yaml"), ["name=other"])
    assert recipe.output.dir == "runs/other"


def test_override_typo_is_an_error_not_silently_added():
    with pytest.raises(RecipeError, match="did you mean 'epochs'"):
        load_recipe(str(ASSETS / "tiny.yaml"), ["schedule.epcohs=3"])


def test_all_errors_reported_at_once():
    data = {"name": "x", "data": {"name": "synthetic", "batch_sise": 3}, "model": {"name": "small_cnn"},
            "attack": {"name": "pgd", "eps": -1, "stepz": 3}, "schedule": {"epochs": "many"}}
    with pytest.raises(RecipeError) as info:
        validate(data)
    assert len(info.value.problems) == 4


def test_parse_number_is_safe():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number("__import__('os')") == "__import__('os')"
    assert parse_number(3) == 3


def test_unknown_recipe_file_names_shipped_recipes():
    with pytest.raises(UserError, match="does not exist"):
        load_recipe("no/such/recipe.yaml")


SHIPPED = sorted(recipes_dir().glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_validates_or_names_a_missing_component(path: Path, tmp_path: Path):
    text = path.read_text()
    if "# requires:" in text:  # components of a later issue: validate must name them clearly
        missing = text.split("# requires:", 1)[1].splitlines()[0].strip()
        with pytest.raises(RecipeError, match=missing):
            load_recipe(str(path))
        return
    # Validation checks the recipe against its data: an image-folder recipe gets a tiny folder of its own.
    overrides = [f"data.root={_tiny_image_folder(tmp_path)}"] if "name: imagefolder" in text else []
    recipe = load_recipe(str(path), overrides)
    assert recipe.name == path.stem


def _tiny_image_folder(root: Path) -> Path:
    """train/ and val/ with two classes of two 4×4 PNG images each."""
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4)).save(root / split / label / f"{i}.png")
    return root


def test_shipped_recipes_exist():
    names = {p.stem for p in SHIPPED}
    assert {"digits_linf", "cifar10_linf", "cifar10_l2", "cifar10_trades", "svhn_l2", "cifar10_fast_at",
            "cifar10_perceptual", "imagenet12_perceptual"} <= names


def test_apply_overrides_creates_nested_sections():
    out = apply_overrides({"name": "x"}, ["eval.attacks=[pgd20,aa]"])
    assert out["eval"]["attacks"] == ["pgd20", "aa"]


def test_switch_hint_only_for_keys_of_another_component():
    with pytest.raises(RecipeError) as info:
        load_recipe(str(ASSETS / "tiny.yaml"), ["attack.setps=3"])
    assert "did you mean 'steps'" in str(info.value)
    assert "attack=pgd" not in str(info.value)  # a typo, not a leftover from another attack


@pytest.mark.parametrize("value, text", [(8 / 255, "8/255"), (2 / 255, "2/255"), (0.2, "0.2"), (1.0, "1"),
                                         (0.5, "0.5"), (0.123456789, "0.123457"), (300 / 255, "1.17647")])
def test_format_number_is_the_inverse_of_parse_number_for_budgets(value, text):
    from advtrain.params import format_number, parse_number

    assert format_number(value) == text
    assert parse_number(text) == pytest.approx(value, rel=1e-5)
