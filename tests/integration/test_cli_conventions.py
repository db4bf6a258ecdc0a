"""What scripts expect of a command line: --version, completion, stdout for results and stderr for
everything else, `validate R > resolved.yaml` giving a recipe, and --json for eval, compare and list."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from advtrain import __version__
from advtrain.cli import app


@pytest.fixture
def invoke(tmp_path, monkeypatch):
    """Run the CLI in a temporary folder; the result keeps stdout and stderr apart."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], prog_name="advtrain", catch_exceptions=False)

    return run


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"advtrain {__version__}\n"


def test_shell_completion_is_offered_and_prints_a_script(invoke):
    assert "--install-completion" in invoke("--help").stdout
    result = invoke("--show-completion", "bash")
    assert result.exit_code == 0 and "_ADVTRAIN_COMPLETE" in result.stdout and "complete " in result.stdout


def test_errors_go_to_stderr_and_stdout_stays_empty(invoke):
    result = invoke("validate", "no_such_recipe.yaml")
    assert result.exit_code == 2 and result.stdout == ""
    assert "does not exist" in result.stderr
    result = invoke("list", "nonsense")
    assert result.exit_code == 2 and result.stdout == "" and "unknown kind" in result.stderr


def test_validate_prints_a_recipe_that_validates(invoke, tiny_recipe, tmp_path):
    first = invoke("validate", tiny_recipe, "schedule.epochs=3", "attack.eps=4/255")
    assert first.exit_code == 0 and "ok:" in first.stderr and "ok:" not in first.stdout
    (tmp_path / "resolved.yaml").write_text(first.stdout)  # what `> resolved.yaml` writes
    assert yaml.safe_load(first.stdout)["schedule"]["epochs"] == 3
    second = invoke("validate", "resolved.yaml")
    assert second.exit_code == 0, second.stderr
    assert second.stdout == first.stdout  # resolving a resolved recipe changes nothing


@pytest.mark.parametrize("kind", ["selectors", "attacks", "recipes", "models"])
def test_list_json(invoke, kind):
    result = invoke("list", kind, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    names = [e["name"] for e in data["entries"]]
    expected = {"selectors": "gradmatch", "attacks": "pgd", "recipes": "cifar10_linf", "models": "small_cnn"}[kind]
    assert data["kind"] == kind and expected in names
    if kind == "attacks":
        assert any(e["name"].startswith("aa") for e in data["eval_attacks"])
    if kind == "selectors":
        assert "fraction=" in next(e for e in data["entries"] if e["name"] == "gradmatch")["params"]


def test_eval_json_is_the_report_on_stdout(invoke, tiny_recipe, tmp_path):
    assert invoke("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=1", "eval.n_examples=8",
                  ).exit_code == 0
    result = invoke("eval", "runs/tiny/last.safetensors", "--attack", "clean,pgd3", "--n-examples", "8", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["robust_acc"]) == {"pgd3"} and report["n_examples"] == 8
    (written,) = (tmp_path / "runs/tiny/eval").glob("*/report.json")  # one folder per evaluation
    assert report == json.loads(written.read_text())
    assert "wrote" in result.stderr and "evaluating" in result.stderr
