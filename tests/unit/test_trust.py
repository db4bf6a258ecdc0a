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


# ----------------------------------------------------------------------------- what reaches the terminal
@pytest.mark.parametrize("raw, shown", [
    ("a\x1b]0;title\x07b", "a\\x1b]0;title\\x07b"),           # OSC 0: window title
    ("\x1b]52;c;ZXZpbA==\x07", "\\x1b]52;c;ZXZpbA==\\x07"),    # OSC 52: clipboard write
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),                     # clear screen, cursor home
    ("\x9b2J", "\\x9b2J"),                                    # 8-bit CSI
    ("abc\u202edcb", "abc\\u202edcb"),                        # right-to-left override
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ("two\nlines\tand a tab", "two\nlines\tand a tab"),       # layout characters stay
    ("ünïcödé ε ℓ∞ ×", "ünïcödé ε ℓ∞ ×"),
])
def test_safe_text_escapes_every_terminal_control(raw, shown):
    from advtrain.ui.console import safe_text

    assert safe_text(raw) == shown


def test_every_console_entry_point_escapes(monkeypatch, capsys):
    import io

    from rich.console import Console

    from advtrain.ui import console

    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=False, width=200)
    monkeypatch.setattr(console, "_console", terminal)
    monkeypatch.setattr(console, "_err_console", terminal)  # errors, warnings and status lines: stderr
    evil = "x\x1b]0;pwn\x07\x1b[2J"
    console.print_error(evil, evil)
    console.info(evil)
    console.warn(evil)
    console.print_table(evil, [evil], [(evil,)])
    console.print_text(evil)  # straight to stdout (output others parse)
    console.status(evil)
    reporter = console.ProgressReporter()
    reporter.message(evil)
    reporter.stop()
    text = buffer.getvalue() + capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text
    assert text.count("x\\x1b]0;pwn\\x07\\x1b[2J") >= 9


# -------------------------------------------------------------------------------- YAML limits
def test_yaml_limits_refuse_depth_aliases_size_and_long_strings():
    from advtrain.config.read import MAX_DEPTH, yaml_limit_problems

    assert yaml_limit_problems("a: {b: [1, 2, {c: d}]}\n") == []
    assert "nests more than" in yaml_limit_problems("a: " + "[" * 3000 + "]" * 3000)[0]
    assert yaml_limit_problems("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)) == []
    # an anchor nested 20 deep, used 20 deep: the alias counts as the depth it stands for
    deep = "[" * 20 + "1" + "]" * 20
    assert "nests more than" in yaml_limit_problems(f"a: &x {deep}\nb: {'[' * 20}*x{']' * 20}\n")[0]
    bomb = "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else '1'}]\n" for i in range(5))
    assert "more than 10,000 values" in yaml_limit_problems(bomb)[0]
    assert "characters; recipes are at most" in yaml_limit_problems("a: " + "b" * 1_000_001)[0]
    assert "a value of 10,001 characters" in yaml_limit_problems("a: " + "b" * 10_001)[0]


def test_merge_keys_mean_the_same_in_files_stored_recipes_and_overrides(tmp_path):
    from advtrain.config.read import apply_overrides, parse_stored_recipe, read_yaml

    text = "base: &b {epochs: 3, warm_start_epochs: 1}\nschedule:\n  <<: *b\n  epochs: 5\n"
    (tmp_path / "r.yaml").write_text(text)
    expected = {"epochs": 5, "warm_start_epochs": 1}
    assert read_yaml(tmp_path / "r.yaml")["schedule"] == expected
    assert parse_stored_recipe(text, "stored")["schedule"] == expected
    assert apply_overrides({}, ["schedule={<<: {epochs: 3, warm_start_epochs: 1}, epochs: 5}"])["schedule"] == expected


def test_a_key_given_twice_is_refused_in_files_and_stored_recipes(tmp_path):
    from advtrain.config.read import parse_stored_recipe, read_yaml

    (tmp_path / "r.yaml").write_text("name: a\nname: b\n")
    with pytest.raises(RecipeError, match="duplicate key name"):
        read_yaml(tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match="duplicate key name"):
        parse_stored_recipe("name: a\nname: b\n", "stored")


@pytest.mark.parametrize("text, expected", [
    ("schedule.epochs=3\nname: x", "holds a line break"),
    ("name=a\rb", "holds a line break"),
    ("name=a\x1bb", "holds the control character '\\x1b'"),
    ("name=" + "a" * 10_001, "a value of 10,001 characters"),
    ("model.kwargs=" + "{a: " * 40 + "1" + "}" * 40, "nests more than 32 levels"),
])
def test_overrides_are_one_line_and_within_the_limits(text, expected):
    from advtrain.config.read import parse_override

    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace("[", r"\[").replace("\\x", r"\\x")):
        parse_override(text)


# ---------------------------------------------------------------------------------- odd values
@pytest.mark.parametrize("value, expected", [
    ("", "got an empty string"), ("  ", "got an empty string"), ("runs/a\x00b", "control character '\\x00'"),
    ("runs/a\nb", "control character '\\n'"), ("a" * 5000, "paths are at most 4096"),
    ("~no_such_user_advtrain/x", "names no known home folder"),
])
def test_path_values_must_name_a_path(value, expected):
    from advtrain.params.check import path_problem

    assert expected in path_problem(value)


def test_tilde_means_home_in_output_dir_and_data_paths_alike(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    data = {"name": "run", "data": {"name": "arrays", "path": "~/d.npz"}, "model": {"name": "small_cnn"},
            "attack": {"name": "pgd"}, "output": {"dir": "~/runs/x"}}
    recipe = validate(data)
    assert recipe.output.dir == str(tmp_path / "runs/x")
    assert recipe.components["data"].params.path == str(tmp_path / "d.npz")
    assert recipe.resolved["output"]["dir"] == "~/runs/x"  # recipe.yaml keeps what was written


def test_thousands_of_unknown_keys_are_counted_not_listed():
    data = {"data": {"name": "synthetic"}, "model": {"name": "small_cnn"}, "attack": {"name": "pgd"},
            **{f"key{i}": 1 for i in range(20_000)}}
    with pytest.raises(RecipeError) as err:
        validate(data)
    text = str(err.value)
    assert "20,000 unknown keys (unknown recipe key): 'key0', 'key1', 'key2', 'key3', 'key4' and 19,995 more" in text
    assert len(text) < 2000


def test_uint64_labels_do_not_wrap(tmp_path):
    import numpy as np

    from advtrain.data.arrays import read_npz_facts
    from advtrain.errors import DataError

    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", train_x=x, train_y=np.array([0, 1, 2**63, 2**64 - 1], np.uint64), test_x=x,
             test_y=np.zeros(4, np.uint64))
    with pytest.raises(DataError, match="contains the label 18446744073709551615"):
        read_npz_facts(tmp_path / "d.npz")
    np.savez(tmp_path / "ok.npz", train_x=x, train_y=np.array([0, 1, 2, 3], np.uint64), test_x=x,
             test_y=np.zeros(4, np.uint64))
    assert read_npz_facts(tmp_path / "ok.npz").num_classes == 4


# ------------------------------------------------------------------------------------ CLI flags
@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:15", "mps", "CPU", "meta", "xla", "cuda:x",
                                  "cuda:100", "cpu:0", "vulkan", "", "cuda:0; rm"])
def test_device_flag_and_recipe_key_accept_the_same_names(name):
    from advtrain.params.check import check_params
    from advtrain.runtime.device import device_name_problem

    problems: list[str] = []
    check_params(RecipeTop, {"device": name.lower()}, "recipe", "the recipe", problems)
    assert (device_name_problem(name) is None) == (not problems), (name, problems)


def test_flags_are_held_to_the_bounds_of_their_recipe_keys():
    from advtrain.config.schema import EvalConfig
    from advtrain.errors import UserError
    from advtrain.params.check import check_flag

    assert check_flag("--eps", 0.5, EvalConfig, "eps") == 0.5
    with pytest.raises(UserError, match=r"--eps: must be <= 1000, got 1e\+308"):
        check_flag("--eps", 1e308, EvalConfig, "eps")
    with pytest.raises(UserError, match="--alpha: must be > 0"):
        check_flag("--alpha", 0.0, EvalConfig, "alpha")


# ------------------------------------------------------------------------------- the one writer
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    import os

    from safetensors.torch import save_file

    from advtrain.io.files import write_atomically, write_text

    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_atomically(tmp_path / "b.safetensors", lambda tmp: save_file({"w": torch.ones(2)}, str(tmp)))
    finally:
        os.umask(old)
    for name in ("a.txt", "b.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_an_atomic_write_replaces_a_link_and_never_writes_through_it(tmp_path):
    from advtrain.io.files import write_text

    (tmp_path / "outside.txt").write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run/report.json").symlink_to(tmp_path / "outside.txt")
    write_text(tmp_path / "run/report.json", "new")
    assert (tmp_path / "outside.txt").read_text() == "precious"
    assert not (tmp_path / "run/report.json").is_symlink() and (tmp_path / "run/report.json").read_text() == "new"


def test_a_linked_folder_inside_is_refused(tmp_path):
    from advtrain.errors import UserError
    from advtrain.io.files import write_text

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run/coreset").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="is a symbolic link"):
        write_text(tmp_path / "run/coreset/epoch_000.npz", "x", inside=tmp_path / "run")
    with pytest.raises(UserError, match="is a symbolic link"):
        write_text(tmp_path / "run/coreset/deeper/epoch_000.npz", "x", inside=tmp_path / "run")
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("errno_name, words", [("ENOSPC", "the disk is full"), ("EDQUOT", "the disk is full"),
                                               ("EROFS", "the file system is read-only"),
                                               ("EACCES", "permission denied")])
def test_a_failed_write_names_the_cause_and_keeps_the_old_file(tmp_path, monkeypatch, errno_name, words):
    import errno
    import pathlib

    from advtrain.errors import UserError
    from advtrain.io.files import write_text

    write_text(tmp_path / "recipe.yaml", "old")

    def fail(self, *args, **kwargs):
        raise OSError(getattr(errno, errno_name), "failed")

    monkeypatch.setattr(pathlib.Path, "write_text", fail)
    with pytest.raises(UserError, match=f"could not write .*recipe.yaml' \\({words}"):
        write_text(tmp_path / "recipe.yaml", "new")
    monkeypatch.undo()
    assert (tmp_path / "recipe.yaml").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]


def test_metrics_recover_from_a_torn_last_line_and_name_other_damage(tmp_path):
    from advtrain.errors import UserError
    from advtrain.io.run_files import RunFiles

    files = RunFiles(tmp_path)
    for epoch in range(3):
        files.append_metrics({"epoch": epoch, "loss": 0.5})
    text = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(text[:-10])  # the last line torn mid-write
    assert [m["epoch"] for m in files.metrics_before(5)] == [0, 1]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2  # the torn line is gone from the file
    files.append_metrics({"epoch": 2, "loss": 0.5})
    assert [m["epoch"] for m in files.metrics_before(5)] == [0, 1, 2]
    for damaged in ('{"epoch": 0}\nnot json\n{"epoch": 2}\n', '{"epoch": 0}\n[1, 2]\n', '{"epoch": "0"}\n'):
        (tmp_path / "metrics.jsonl").write_text(damaged)
        with pytest.raises(UserError, match="metrics.jsonl' line [12] is damaged"):
            files.metrics_before(5)


# ---------------------------------------------------------------------------- claimed outputs
def _fake_run(folder):
    folder.mkdir(parents=True)
    (folder / ".advtrain-run").write_text("a" * 32 + "\n")
    (folder / "report.json").write_text("{}")
    return folder


def test_an_output_folder_is_refused_in_a_run_and_over_foreign_files(tmp_path):
    from advtrain.errors import UserError
    from advtrain.io.outputs import OUTPUT_MARK, claim_output_dir

    run = _fake_run(tmp_path / "runs/x")
    files = ("report.json", "report.md")
    for path, words in [(run, "is the folder of the training run"), (run / "sub", "is inside the folder"),
                        (run / "report.json", "is a file")]:
        with pytest.raises(UserError, match=words):
            claim_output_dir(path, command="eval", files=files)
    with pytest.raises(UserError, match="is inside the folder"):
        claim_output_dir(run / "eval", command="compare", files=files)
    assert claim_output_dir(run / "eval", command="eval", files=files) == run / "eval"  # a run's eval reports
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    with pytest.raises(UserError, match="already holds report.md, written by another program"):
        claim_output_dir(mine, command="eval", files=files)
    out = claim_output_dir(tmp_path / "ev", command="eval", files=files)
    (out / "report.json").write_text("{}")
    assert claim_output_dir(out, command="eval", files=files) == out  # its own earlier results
    with pytest.raises(UserError, match="written by advtrain eval, not by advtrain compare"):
        claim_output_dir(out, command="compare", files=("compare.json", "report.json"))
    assert (out / OUTPUT_MARK).is_file()
    assert not (tmp_path / "checked").exists() and \
        claim_output_dir(tmp_path / "checked", command="eval", files=files, create=False) and \
        not (tmp_path / "checked").exists()


def test_a_recipe_yaml_alone_does_not_make_a_run_folder(tmp_path):
    from advtrain.io.outputs import claim_output_dir

    (tmp_path / "recipe.yaml").write_text("name: mine\n")  # e.g. a home folder holding a recipe
    assert claim_output_dir(tmp_path / "compare", command="compare", files=("compare.md",))


def test_an_output_file_is_refused_over_run_files_and_foreign_files(tmp_path):
    import numpy as np

    from advtrain.errors import UserError
    from advtrain.io.outputs import claim_output_file, is_select_dump

    run = _fake_run(tmp_path / "runs/x")
    claim = dict(command="select", suffix=".npz", is_own=is_select_dump)
    for path, words in [(run / "last.safetensors", "must name a .npz"), (run / "c.npz", "inside the folder"),
                        (run / "coreset/c.npz", "inside the folder"), (tmp_path / "runs", "must name a .npz")]:
        with pytest.raises(UserError, match=words):
            claim_output_file(path, **claim)
    np.savez(tmp_path / "theirs.npz", indices=np.arange(3))
    with pytest.raises(UserError, match="is not a file advtrain select wrote"):
        claim_output_file(tmp_path / "theirs.npz", **claim)
    (tmp_path / "link.npz").symlink_to(tmp_path / "theirs.npz")
    with pytest.raises(UserError, match="is a symbolic link"):
        claim_output_file(tmp_path / "link.npz", **claim)
    np.savez(tmp_path / "ours.npz", indices=np.arange(3), weights=np.ones(3), labels=np.zeros(3), epoch=0,
             selector="craig", n_train=10)
    assert claim_output_file(tmp_path / "ours.npz", **claim) == tmp_path / "ours.npz"
