"""Every case of tests/assets/bad through the real CLI: its message, exit code 2, no traceback, and
no earlier result lost.

Each case runs next to a finished run, ``runs/victim`` (and a second one, ``runs/other``), copied
from one made once per module; afterwards every file of both is byte-identical. A case file's
header says how to run it:

- ``# stage: run`` runs it with ``advtrain run`` (default: ``advtrain validate``);
- ``# args: ...`` adds command-line arguments (e.g. ``--resume-from runs/other/last.safetensors``);
- ``# expect: text`` must appear in the output, ``# absent: text`` must not;
- ``# requires-no-cuda`` skips the case on a CUDA machine.

The environment holds ``ADVTRAIN_TEST_SECRET``: no case may print it or write it anywhere.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CASES = sorted((ASSETS / "bad").glob("*.yaml"))
SECRET = "s3cr3t-Env-Value"
VICTIM_ARGS = ["schedule.epochs=2", "train.max_steps_per_epoch=2", "eval.n_examples=8", "output.keep_every=1"]


def _header(text: str, key: str) -> list[str]:
    return [line.split(f"{key}:", 1)[1].strip() for line in text.splitlines() if line.startswith(f"# {key}:")]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except the lock file (it names the last process that held the folder)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".advtrain.lock"}


def plain(text: str) -> str:
    """As conftest's ``plain``: box drawing removed, whitespace collapsed."""
    for ch in "│╭╮╰╯─┃┏┓┗┛━┡┩╇┳┻╋┣┫":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def _invoke(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from advtrain.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, plain(result.output)


def _write_npy_member(archive: zipfile.ZipFile, name: str, header_array: np.ndarray, body: bytes | None = None) -> None:
    """A .npy member whose header describes ``header_array`` and whose body is ``body`` (default: its data)."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(header_array))
    buffer.write(header_array.tobytes() if body is None else body)
    archive.writestr(f"{name}.npy", buffer.getvalue())


def _make_bad_data(folder: Path) -> None:
    """Data files the new cases need (made here rather than committed: a few bytes each)."""
    x = np.zeros((8, 8, 8, 3), np.uint8)
    y = np.arange(8) % 2
    np.savez(folder / "huge_label.npz", train_x=x, train_y=np.where(y == 1, 2**40, 0), test_x=x[:4], test_y=y[:4])
    np.savez(folder / "objects.npz", train_x=np.array([{"a": 1}] * 8, dtype=object), train_y=y, test_x=x, test_y=y)
    with zipfile.ZipFile(folder / "bomb.npz", "w") as archive:  # declares 3 TB, holds 8 bytes
        _write_npy_member(archive, "train_x", np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8),
                                                                              (10**6, 1024, 1024, 3), (0, 0, 0, 0)),
                          body=b"\0" * 8)
    with zipfile.ZipFile(folder / "short.npz", "w") as archive:  # header says 8 images, body holds 2
        _write_npy_member(archive, "train_x", x, body=x[:2].tobytes())
        for key, value in (("train_y", y), ("test_x", x), ("test_y", y)):
            _write_npy_member(archive, key, value)
    (folder / "notarun").mkdir()
    (folder / "notarun/report.json").write_text('{"mine": "not advtrain"}')
    np.savez(folder / "uint64_labels.npz", train_x=x, train_y=np.full(8, 2**64 - 1, np.uint64), test_x=x[:4],
             test_y=np.zeros(4, np.uint64))
    with zipfile.ZipFile(folder / "twice.npz", "w") as archive:  # train_y stored twice: which one would numpy take?
        import warnings

        for key, value in (("train_x", x), ("train_y", y), ("train_y", 1 - y), ("test_x", x), ("test_y", y)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
                _write_npy_member(archive, key, value)
    (folder / "planted").mkdir()  # a run folder whose metrics.jsonl is a link to the victim's
    (folder / "planted/metrics.jsonl").symlink_to(folder.parent / "runs/victim/metrics.jsonl")


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> Path:
    """``runs/victim`` and ``runs/other``: two finished tiny runs (made once, copied into each case)."""
    root = tmp_path_factory.mktemp("victims")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for name in ("victim", "other"):
            code, out = _invoke("run", ASSETS / "tiny.yaml", *VICTIM_ARGS, f"output.dir=runs/{name}")
            assert code == 0, out
    finally:
        os.chdir(cwd)
    return root / "runs"


@pytest.fixture
def arena(finished_runs, tmp_path, monkeypatch) -> Path:
    """A working folder with both finished runs, the bad data files and the secret in the environment."""
    shutil.copytree(finished_runs, tmp_path / "runs")
    shutil.copytree(ASSETS / "bad_data", tmp_path / "bad_data")
    (tmp_path / "bad_data/empty_folder/train").mkdir(parents=True)
    (tmp_path / "bad_data/empty_folder/val").mkdir(parents=True)
    _make_bad_data(tmp_path / "bad_data")
    monkeypatch.setenv("ADVTRAIN_TEST_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


#: Terminal control characters: whatever a case holds, none reaches the terminal unescaped.
CONTROL = ["\x1b", "\x07", "\x9b", "\x00", "\u202e"]


def _assert_clean_refusal(arena: Path, before: dict[str, bytes], code: int, out: str, expected: list[str],
                          absent: list[str] = ()) -> None:
    assert code == 2, out
    assert "Traceback" not in out
    assert not [c for c in CONTROL if c in out], f"a control character reached the terminal:\n{out!r}"
    for fragment in expected:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    for fragment in [SECRET, *absent]:
        assert fragment not in out, f"{fragment!r} printed:\n{out}"
    assert _snapshot(arena / "runs") == before, "an earlier run's files changed"
    written = [p for p in arena.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not written, f"the environment leaked into {written}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_input_gives_a_clear_error(arena, path):
    text = path.read_text()
    if "# requires-no-cuda" in text and torch.cuda.is_available():
        pytest.skip("this case is about machines without CUDA")
    command = "run" if "# stage: run" in text else "validate"
    extra = [arg for line in _header(text, "args") for arg in shlex.split(line)]
    before = _snapshot(arena / "runs")
    code, out = _invoke(command, path, *extra)
    _assert_clean_refusal(arena, before, code, out, _header(text, "expect"), _header(text, "absent"))
    if command == "run" and not extra:
        assert not any(p for p in (arena / "runs").rglob("*.safetensors") if "runs/victim" not in str(p)
                       and "runs/other" not in str(p))


#: The only cases `advtrain validate` accepts: their problem is not in the recipe but in what a run finds
#: when it starts (the output folder's state, a checkpoint named on the command line). Every other case,
#: `# stage: run` ones included, is a recipe problem and must fail in `validate` with its own message.
RUN_TIME_ONLY = {
    "new_run_into_finished_run": "output.dir already holds a finished run (the folder's state)",
    "resume_into_other_run": "--resume-from names another run's checkpoint (a command-line argument)",
    "resume_missing_checkpoint": "--resume finds no checkpoint in output.dir (the folder's state)",
    "unwritable_output": "output.dir cannot be created where the run starts (the file system's state)",
    "markup_in_output_dir": "output.dir cannot be created where the run starts (the file system's state)",
    "flags_resume_and_overwrite": "--resume with --overwrite (command-line flags)",
    "flags_device_meta": "--device meta (a command-line flag)",
    "flags_force_alone": "--force without --resume (a command-line flag)",
    "planted_link_in_run_folder": "output.dir holds a planted link (the folder's state)",
}


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_validate_refuses_every_recipe_problem_run_refuses(arena, path):
    """One validation pass: whatever `run` refuses in a recipe, `validate` refuses with the same words."""
    text = path.read_text()
    if "# requires-no-cuda" in text and torch.cuda.is_available():
        pytest.skip("this case is about machines without CUDA")
    # `# args:` of a validate case are recipe overrides; those of a run case are run options (--resume ...)
    extra = [] if "# stage: run" in text else [arg for line in _header(text, "args") for arg in shlex.split(line)]
    before = _snapshot(arena / "runs")
    code, out = _invoke("validate", path, *extra)
    if path.stem in RUN_TIME_ONLY:
        assert code == 0, f"{path.stem} is listed as run-time only but validate refuses it:\n{out}"
        return
    _assert_clean_refusal(arena, before, code, out, _header(text, "expect"), _header(text, "absent"))


def test_run_time_only_cases_exist():
    assert set(RUN_TIME_ONLY) <= {p.stem for p in CASES}


# ------------------------------------------------------------------------------- bad checkpoints
def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def _edit_meta(**changes):
    def edit(tensors, metadata):
        meta = json.loads(metadata["advtrain"])
        meta.update(changes)
        metadata["advtrain"] = json.dumps(meta)
    return edit


def _edit_tensor(name, make):
    def edit(tensors, metadata):
        if make is None:
            del tensors[name]
        else:
            tensors[name] = make(tensors.get(name))
    return edit


def _edit_recipe(old, new):
    def edit(tensors, metadata):
        assert old in metadata["recipe"]
        metadata["recipe"] = metadata["recipe"].replace(old, new, 1)
    return edit


def _raw_meta(text):
    def edit(tensors, metadata):
        metadata["advtrain"] = text
    return edit


def _python_rng_short(tensors, metadata):
    meta = json.loads(metadata["advtrain"])
    meta["rng"]["python"][1] = meta["rng"]["python"][1][:10]
    metadata["advtrain"] = json.dumps(meta)


def _edit_group(**changes):
    """Change the settings of the optimizer's first parameter group."""
    def edit(tensors, metadata):
        meta = json.loads(metadata["advtrain"])
        meta["optimizer"]["param_groups"][0].update(changes)
        metadata["advtrain"] = json.dumps(meta)
    return edit


def _coreset(indices, weight=1.0):
    """A stored coreset of ``indices`` (selected at epoch 0), each with weight ``weight``."""
    def edit(tensors, metadata):
        tensors["coreset.indices"], tensors["coreset.weights"] = indices, torch.full((len(indices),), weight)
        metadata["advtrain"] = json.dumps({**json.loads(metadata["advtrain"]), "coreset_epoch": 0})
    return edit


def _huge_tensor(name, dtype, shape):
    """Declare tensor ``name`` of ``shape`` in the header; :func:`_save` writes the file sparse (no disk used)."""
    def edit(tensors, metadata):
        tensors.pop(name, None)
        metadata["__huge__"] = json.dumps([name, dtype, list(shape)])
    return edit


_ST_DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8", torch.float64: "F64"}


def _save(tensors, path, metadata):
    """``save_file``, or for a ``_huge_tensor`` case a hand-written safetensors file whose last tensor is a hole."""
    huge = metadata.pop("__huge__", None)
    if huge is None:
        save_file(tensors, str(path), metadata=metadata)
        return
    name, dtype, shape = json.loads(huge)
    header, offset, bodies = {"__metadata__": metadata}, 0, []
    for key, tensor in tensors.items():
        body = tensor.contiguous().numpy().tobytes()
        header[key] = {"dtype": _ST_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(body)]}
        bodies.append(body)
        offset += len(body)
    size = int(np.prod(shape)) * {"F32": 4, "I64": 8, "U8": 1}[dtype]
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text + b"".join(bodies))
        handle.truncate(8 + len(text) + offset + size)  # a sparse 16 GiB file: the declared tensor is a hole


FC = "model.net.fc.weight"
CHECKPOINT_CASES = {
    "meta_epoch_string": (_edit_meta(epoch="abc"), "metadata.epoch: expected an integer, got 'abc' (str)"),
    "meta_epoch_huge": (_edit_meta(epoch=10**30), "metadata.epoch: must fit in 64 bits"),
    "meta_epoch_beyond_limit": (_edit_meta(epoch=10**7), "metadata.epoch: must be <= 1000000, got 10000000"),
    "meta_num_classes_negative": (_edit_meta(num_classes=-1), "metadata.num_classes: must be >= 1, got -1"),
    "meta_format_version_string": (_edit_meta(format_version="1"),
                                   "metadata.format_version: expected an integer, got '1' (str)"),
    "meta_kind_unknown": (_edit_meta(kind="evil"), "metadata.kind: must be one of last, best, epoch, got 'evil'"),
    "meta_unknown_key": (_edit_meta(payload="x"), "metadata.payload: not a parameter of the checkpoint metadata"),
    "meta_best_metric_nan": (_edit_meta(best_metric=float("nan")), "metadata.best_metric: expected a number or null"),
    "meta_model_name_path": (_edit_meta(model_name="../../evil.pth"),
                             "metadata.model_name: '../../evil.pth' is not allowed here"),
    "meta_is_a_list": (_raw_meta("[1, 2, 3]"), "advtrain metadata must be a JSON object, got list"),
    "meta_python_rng_short": (_python_rng_short, "metadata.rng.python: must be python's random.getstate()"),
    "meta_step_flag": (_edit_meta(step=True), "metadata.step: expected an integer, got True (bool)"),
    "meta_in_epoch_batch_string": (_edit_meta(extra={"in_epoch": {"epoch": 1, "batch": "3", "partial": {}}}),
                                   "metadata.extra.in_epoch.batch: expected an integer, got '3' (str)"),
    "optim_maximize_string": (_edit_group(maximize="no"),
                              "metadata.optimizer.param_groups[0].maximize: must be a number, true/false, null"),
    "optim_momentum_string": (_edit_group(momentum="abc"),
                              "metadata.optimizer.param_groups[0].momentum: must be a number, true/false, null"),
    "optim_lr_string": (_edit_group(lr="0.05"), "metadata.optimizer.param_groups[0].lr: must be a number"),
    "optim_setting_nested": (_edit_group(weight_decay={"x": 1}),
                             "metadata.optimizer.param_groups[0].weight_decay: must be a number"),
    "sparse_16_gib_model_tensor": (_huge_tensor(FC, "F32", (2**31, 2)), "tensor 'model.net.fc.weight' is float32 of "
                                   "shape (2147483648, 2) in the checkpoint but model 'small_cnn' expects float32 of "
                                   "shape (4, 128)"),
    "sparse_16_gib_unknown_tensor": (_huge_tensor("payload.blob", "U8", (2**34,)),
                                     "tensor 'payload.blob' (uint8 of shape (17179869184,)) is not one advtrain "
                                     "writes"),
    "sparse_16_gib_coreset": (_huge_tensor("coreset.indices", "I64", (2**31,)),
                              "tensor 'coreset.indices' is int64 of shape (2147483648,); expected int64"),
    "rng_torch_float": (_edit_tensor("rng.torch", lambda t: t.float()),
                        "tensor 'rng.torch' is float32 of shape (5056,); expected uint8 of shape (5056,)"),
    "rng_numpy_short": (_edit_tensor("rng.numpy", lambda t: t[:10]),
                        "tensor 'rng.numpy' is int64 of shape (10,); expected int64 of shape (624,)"),
    "model_tensor_shape": (_edit_tensor(FC, lambda t: t.t().contiguous()), "tensor 'model.net.fc.weight' is "
                           "float32 of shape (128, 4) in the checkpoint but model 'small_cnn' expects float32 of "
                           "shape (4, 128)"),
    "model_tensor_float64": (_edit_tensor(FC, lambda t: t.double()), "tensor 'model.net.fc.weight' is float64 of "
                             "shape (4, 128) in the checkpoint but model 'small_cnn' expects float32"),
    "model_tensor_nan": (_edit_tensor(FC, lambda t: torch.full_like(t, float("nan"))),
                         "tensor 'model.net.fc.weight' holds non-finite values"),
    "model_tensor_missing": (_edit_tensor(FC, None), "tensor 'model.net.fc.weight' is missing"),
    "unknown_tensor": (_edit_tensor("payload.code", lambda t: torch.zeros(3)),
                       "tensor 'payload.code' (float32 of shape (3,)) is not one advtrain writes"),
    "coreset_float_indices": (_edit_tensor("coreset.indices", lambda t: torch.zeros(3)),
                              "tensor 'coreset.indices' is float32 of shape (3,)"),
    "stored_recipe_checkpoint_path": (_edit_recipe("kwargs: {}", "kwargs: {checkpoint_path: evil.pth}"),
                                      "model.kwargs.checkpoint_path: not an allowed timm argument"),
    "stored_recipe_env_resolver": (_edit_recipe("name: tiny", "name: ${oc.env:ADVTRAIN_TEST_SECRET}"),
                                   "name: '${oc.env:ADVTRAIN_TEST_SECRET}' is not allowed here"),
    "stored_recipe_not_a_mapping": (_edit_recipe("name: tiny", "- name: tiny\n- x"), "stored recipe"),
}


@pytest.mark.parametrize("command", ["eval", "resume"])
@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_is_refused_and_loses_nothing(arena, case, command):
    edit, expected = CHECKPOINT_CASES[case]
    if command == "resume" and case.startswith("stored_recipe"):
        pytest.skip("resume validates the user's recipe, not the stored one (compared as data only)")
    tensors, metadata = _read_checkpoint(arena / "runs/victim/last.safetensors")
    if "coreset" in case:
        tensors["coreset.indices"], tensors["coreset.weights"] = torch.arange(3), torch.ones(3)
        metadata["advtrain"] = json.dumps({**json.loads(metadata["advtrain"]), "coreset_epoch": 0})
    edit(tensors, metadata)
    crafted = arena / "downloaded.safetensors"
    _save(tensors, crafted, metadata)
    before = _snapshot(arena / "runs")
    if command == "eval":
        code, out = _invoke("eval", crafted, "--attack", "clean", "--n-examples", "4", "--out", "evaluated")
        assert not (arena / "evaluated").exists()
    else:  # continue the victim run from the crafted checkpoint, into the victim's own folder
        code, out = _invoke("run", ASSETS / "tiny.yaml", *VICTIM_ARGS, "output.dir=runs/victim", "--resume-from",
                            crafted)
    if case.startswith("sparse"):
        crafted.unlink()  # 16 GiB as the file system sees it: the leak scan below reads every file
    _assert_clean_refusal(arena, before, code, out, [expected, "downloaded.safetensors"])


#: Checkpoints `advtrain eval` may read (it uses neither the optimizer nor the coreset) but a resume must refuse:
#: (edit, extra run options, expected message). The coreset cases resume with a coreset recipe (--force: the
#: victim trained with selector=full), whose budget is 36 of the 72 training samples (batch-wise: 36 to 68).
CORESET_RECIPE = ["selector=random", "selector.fraction=0.5", "--force"]
RESUME_CASES = {
    "optim_maximize_true": (_edit_group(maximize=True), [],
                            "param_groups[0].maximize: checkpoint True vs recipe False"),
    "optim_momentum_other": (_edit_group(momentum=0.5), [], "param_groups[0].momentum: checkpoint 0.5 vs recipe 0.9"),
    "optim_flag_as_number": (_edit_group(nesterov=0), [],
                             "param_groups[0].nesterov: must be true/false (optimizer 'sgd'), got 0 (int)"),
    "optim_momentum_as_flag": (_edit_group(momentum=True), [],
                               "param_groups[0].momentum: must be a number (optimizer 'sgd'), got True (bool)"),
    "optim_unknown_setting": (_edit_group(evil=1.5), [],
                              "param_groups[0].evil: 1.5 in the checkpoint, but optimizer 'sgd' has no such setting"),
    "optim_negative_lr": (_edit_group(lr=-0.1), [], "param_groups[0].lr: must be a learning rate >= 0, got -0.1"),
    "optim_extra_group": (lambda tensors, metadata: _add_group(metadata), [],
                          "param_groups: the checkpoint has 2 group(s), optimizer 'sgd' has 1"),
    "coreset_all_zero": (_coreset(torch.zeros(36, dtype=torch.int64)), CORESET_RECIPE,
                         "repeats samples: 36 indices but 1 distinct ones"),
    "coreset_duplicates": (_coreset(torch.cat([torch.arange(30), torch.arange(6)])), CORESET_RECIPE,
                           "repeats samples: 36 indices but 30 distinct ones"),
    "coreset_out_of_range": (_coreset(torch.arange(36) + 40), CORESET_RECIPE,
                             "holds indices outside 0..71, the training samples"),
    "coreset_too_small": (_coreset(torch.arange(3)), CORESET_RECIPE,
                          "holds 3 samples, but the recipe's selector selects 36 to 68 of the 72 training samples"),
    "coreset_zero_weight": (_coreset(torch.arange(36), weight=0.0), CORESET_RECIPE,
                            "(tensor 'coreset.weights') gives a selected sample weight 0"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_checkpoint_that_does_not_fit_the_recipe_is_refused_on_resume(arena, case):
    edit, options, expected = RESUME_CASES[case]
    tensors, metadata = _read_checkpoint(arena / "runs/victim/epoch_001.safetensors")
    edit(tensors, metadata)
    save_file(tensors, str(arena / "downloaded.safetensors"), metadata=metadata)
    before = _snapshot(arena / "runs")
    code, out = _invoke("run", ASSETS / "tiny.yaml", *VICTIM_ARGS, "output.dir=runs/victim", *options,
                        "--resume-from", "downloaded.safetensors")
    _assert_clean_refusal(arena, before, code, out, [expected, "downloaded.safetensors"])


def _add_group(metadata):
    meta = json.loads(metadata["advtrain"])
    meta["optimizer"]["param_groups"].append({**meta["optimizer"]["param_groups"][0], "params": []})
    metadata["advtrain"] = json.dumps(meta)


def test_optimizer_state_of_the_wrong_shape_names_the_tensor(arena):
    tensors, metadata = _read_checkpoint(arena / "runs/victim/last.safetensors")
    name = next(k for k in tensors if k.startswith("optim.") and tensors[k].dim() == 4)
    tensors[name] = tensors[name][:1].contiguous()
    save_file(tensors, str(arena / "downloaded.safetensors"), metadata=metadata)
    before = _snapshot(arena / "runs")
    code, out = _invoke("run", ASSETS / "tiny.yaml", *VICTIM_ARGS, "output.dir=runs/victim", "--resume-from",
                        "downloaded.safetensors")
    _assert_clean_refusal(arena, before, code, out, [f"tensor '{name}' is float32 of shape (1,", "but parameter"])


# ------------------------------------------------------------------------------ folders and CLI
def test_resume_from_another_runs_checkpoint_is_refused(arena):
    before = _snapshot(arena / "runs")
    code, out = _invoke("run", ASSETS / "tiny.yaml", *VICTIM_ARGS, "schedule.epochs=3", "output.dir=runs/victim",
                        "--resume-from", "runs/other/epoch_001.safetensors")
    _assert_clean_refusal(arena, before, code, out, ["output.dir 'runs/victim' holds another run than checkpoint",
                                                     "would rewrite that run's metrics"])


def test_a_folder_in_use_by_another_process_is_refused(arena):
    import fcntl

    with open(arena / "runs/victim/.advtrain.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _snapshot(arena / "runs")
        code, out = _invoke("run", ASSETS / "tiny.yaml", *VICTIM_ARGS, "schedule.epochs=3",
                            "output.dir=runs/victim", "--resume")
    _assert_clean_refusal(arena, before, code, out, ["output.dir 'runs/victim' is in use by another advtrain process"])


def test_overwrite_refuses_a_folder_advtrain_did_not_write(arena):
    before = _snapshot(arena / "runs")
    code, out = _invoke("run", ASSETS / "tiny.yaml", "output.dir=bad_data/notarun", "--overwrite")
    _assert_clean_refusal(arena, before, code, out, ["holds report.json but no advtrain run"])
    assert (arena / "bad_data/notarun/report.json").read_text() == '{"mine": "not advtrain"}'


@pytest.mark.parametrize("args, expected", [
    (["--steps", "1000000000"], "--steps"),
    (["--n-examples", "0"], "--n-examples"),
    (["--seed", "-1"], "--seed"),
    (["--eps", "1e400"], "'1e400' is not a finite number"),
    (["--batch-size", "[/b]"], "Invalid value for '--batch-size'"),
    # budgets: a name, a flag and a recipe have the same bounds (advtrain/attacks/budget.py)
    (["--attack", "pgd99999999999999999999"], "attack 'pgd99999999999999999999': steps must be in 1..10000"),
    (["--attack", "pgd1x99999999999"], "restarts must be in 1..1000, got 99999999999"),
    (["--attack", "aa0"], "attack 'aa0': steps must be in 1..10000, got 0"),
    (["--attack", "ppgd10001-alexnet"], "steps must be in 1..10000, got 10001"),
    (["--steps", "0"], "--steps: steps must be in 1..10000, got 0"),
    (["--restarts", "5000"], "--restarts: restarts must be in 1..1000, got 5000"),
    (["--attack", "clean@1"], "'clean' takes no bound"),
], ids=["steps_huge", "n_examples_zero", "seed_negative", "eps_infinite", "markup_in_option", "name_steps_huge",
        "name_restarts_huge", "aa_zero_iterations", "perceptual_steps_huge", "steps_zero", "restarts_huge",
        "clean_with_bound"])
def test_bad_eval_options_exit_2(arena, args, expected):
    before = _snapshot(arena / "runs")
    code, out = _invoke("eval", "runs/victim/best.safetensors", "--attack", "clean", *args)
    _assert_clean_refusal(arena, before, code, out, [expected])


def test_markup_in_a_missing_recipe_path_is_printed_as_written(arena):
    before = _snapshot(arena / "runs")
    code, out = _invoke("validate", "runs/[/b][bold]x.yaml")
    _assert_clean_refusal(arena, before, code, out, ["recipe file 'runs/[/b][bold]x.yaml' does not exist"])


# ------------------------------------------------------------- stored recipes: the limits of a file
def _stored_recipe(make):
    def edit(tensors, metadata):
        import yaml

        metadata["recipe"] = make(yaml.safe_load(metadata["recipe"]), metadata["recipe"])
    return edit


_BOMB = "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else ', '.join(['1'] * 10)}]\n" for i in range(9))
STORED_RECIPE_CASES = {
    "stored_recipe_alias_bomb": (_stored_recipe(lambda data, text: _BOMB + text),
                                 "stored recipe: the recipe holds more than 10,000 values"),
    "stored_recipe_3000_deep": (_stored_recipe(lambda data, text: text + "x: " + "[" * 3000 + "]" * 3000 + "\n"),
                                "stored recipe: the recipe nests more than 32 levels deep"),
    "stored_recipe_huge": (_stored_recipe(lambda data, text: text + f"x: '{'a' * 2_000_000}'\n"),
                           "stored recipe: the recipe is 2,00"),
}


@pytest.mark.parametrize("command", ["eval", "resume"])
@pytest.mark.parametrize("case", sorted(STORED_RECIPE_CASES))
def test_a_stored_recipe_meets_the_limits_of_a_recipe_file(arena, case, command):
    edit, expected = STORED_RECIPE_CASES[case]
    tensors, metadata = _read_checkpoint(arena / "runs/victim/last.safetensors")
    edit(tensors, metadata)
    save_file(tensors, str(arena / "downloaded.safetensors"), metadata=metadata)
    before = _snapshot(arena / "runs")
    if command == "eval":
        code, out = _invoke("eval", "downloaded.safetensors", "--attack", "clean", "--n-examples", "4", "--out", "ev")
    else:
        code, out = _invoke("run", ASSETS / "tiny.yaml", *VICTIM_ARGS, "output.dir=runs/victim", "--resume-from",
                            "downloaded.safetensors")
    _assert_clean_refusal(arena, before, code, out, [expected])


def test_a_stored_recipe_never_downloads_nor_creates_folders(arena, monkeypatch):
    import socket

    import yaml

    connections = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: connections.append(a) or 1 / 0)
    tensors, metadata = _read_checkpoint(arena / "runs/victim/last.safetensors")
    recipe = yaml.safe_load(metadata["recipe"])
    recipe["data"] = {"name": "cifar10", "root": "fetched/here", "download": True}
    metadata["recipe"] = yaml.safe_dump(recipe)
    save_file(tensors, str(arena / "downloaded.safetensors"), metadata=metadata)
    before = _snapshot(arena / "runs")
    code, out = _invoke("eval", "downloaded.safetensors", "--attack", "clean", "--n-examples", "4")
    _assert_clean_refusal(arena, before, code, out, ["CIFAR-10 not found in 'fetched/here/cifar-10-batches-py'",
                                                     "eval never downloads", "--data root=FOLDER"])
    assert not connections and not (arena / "fetched").exists()


# --------------------------------------------------------------------- generated recipes and overrides
def _tiny_with(text: str) -> str:
    return (ASSETS / "tiny.yaml").read_text() + text


@pytest.mark.parametrize("case, make, expected", [
    ("unknown_keys_4800", lambda: _tiny_with("".join(f"k{i}: 1\n" for i in range(4_800))),
     ["4,800 unknown keys (unknown recipe key): 'k0', 'k1', 'k2', 'k3', 'k4' and 4,795 more (valid: name,"]),
    ("unknown_params_many", lambda: (ASSETS / "tiny.yaml").read_text().replace(
        "optim: {name: sgd,", "optim: {name: sgd, " + ", ".join(f"p{i}: 1" for i in range(40)) + ","),
     ["optim: 40 unknown keys (not a parameter of optim 'sgd'): 'p0', 'p1', 'p2', 'p3', 'p4' and 35 more"]),
    ("string_of_20k", lambda: _tiny_with(f"name: {'a' * 20_000}\n"), ["line 17: a value of 20,000 characters"]),
    ("file_of_20mb", lambda: _tiny_with(f"name: {'a' * 20_000_000}\n"), ["the file is 20,00", "bytes"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_generated_bad_recipes(arena, case, make, expected):
    path = arena / f"{case}.yaml"
    path.write_text(make())
    before = _snapshot(arena / "runs")
    for command in ("validate", "run"):
        code, out = _invoke(command, path)
        _assert_clean_refusal(arena, before, code, out, expected)
        assert len(out) < 5000, "the message must stay readable"


@pytest.mark.parametrize("args, expected", [
    (["schedule.epochs=3\nname: x"], "override 'schedule.epochs=3\\nname: x' holds a line break"),
    (["name=x\x1b]0;t\x07"], "holds the control character '\\x1b'"),
    (["eval.attacks=[pgd1, pgd2, " + "pgd3, " * 3000 + "]"], "more than 32 levels deep" if False else None),
    (["data.batch_size=" + "[" * 100 + "]" * 100], "override 'data.batch_size=...': the value nests more than 32"),
    (["name=" + "a" * 20_000], "override 'name=...': line 1: a value of 20,000 characters"),
    (["output.dir="], "output.dir: must name a file or folder, got an empty string"),
], ids=["newline", "escape", "long_list", "deep", "long_value", "empty_output_dir"])
def test_bad_overrides_are_refused_by_validate_and_run_alike(arena, args, expected):
    if expected is None:  # a long but shallow value is fine for the limits; the attack names are checked as usual
        args, expected = ["eval.attacks=[pgd1, " + "pgd3x, " * 3000 + "]"], "eval.attacks[1]"
    before = _snapshot(arena / "runs")
    for command in ("validate", "run"):
        code, out = _invoke(command, ASSETS / "tiny.yaml", *args)
        _assert_clean_refusal(arena, before, code, out, [expected])


@pytest.mark.parametrize("args, expected", [
    (["eval", "runs/victim/best.safetensors", "--device", "meta"], "--device: 'meta' is not a device advtrain runs on"),
    (["eval", "runs/victim/best.safetensors", "--device", "xla"], "--device: 'xla' is not a device"),
    (["eval", "runs/victim/best.safetensors", "--eps", "1e308"], "--eps: must be <= 1000, got 1e+308"),
    (["eval", "runs/victim/best.safetensors", "--eps-sweep", "0,1e300"], "--eps-sweep: must be <= 1000"),
    (["eval", "runs/victim/best.safetensors", "--alpha", "0"], "--alpha: must be > 0"),
    (["eval", "runs/victim/best.safetensors", "--out", "runs/victim"], "is the folder of the training run"),
    (["eval", "ck\x1b[2J\x1b]0;x\x07.safetensors"], "checkpoint 'ck\\x1b[2J\\x1b]0;x\\x07.safetensors' does not exist"),
    (["select", str(ASSETS / "tiny.yaml"), "--dump-indices", "--device", "meta"], "--device: 'meta'"),
    (["select", str(ASSETS / "tiny.yaml"), "--dump-indices", "--out", "runs/victim/last.safetensors"],
     "must name a .npz file"),
    (["select", str(ASSETS / "tiny.yaml"), "--dump-indices", "--out", "runs/victim/coreset.npz"],
     "is inside the folder of the training run"),
    (["run", str(ASSETS / "tiny.yaml"), "--resume", "--resume-from", "runs/victim/last.safetensors"],
     "--resume and --resume-from both name the checkpoint"),
    (["run", str(ASSETS / "tiny.yaml"), "--resume-from", "runs/victim/last.safetensors", "--overwrite"],
     "contradicts --resume-from"),
    (["compare", "runs/victim", "--out", "runs/other"], "is the folder of the training run"),
    (["no\x1b]52;c;eA==\x07such"], "No such command 'no\\x1b]52;c;eA==\\x07such'"),
], ids=["eval_device_meta", "eval_device_xla", "eval_eps_huge", "eval_sweep_huge", "eval_alpha_zero",
        "eval_out_run_folder", "eval_path_escapes", "select_device_meta", "select_out_checkpoint",
        "select_out_in_run", "run_resume_twice", "run_resume_from_overwrite", "compare_out_run_folder",
        "command_name_escapes"])
def test_bad_flags_exit_2_and_lose_nothing(arena, args, expected):
    before = _snapshot(arena / "runs")
    code, out = _invoke(*args)
    _assert_clean_refusal(arena, before, code, out, [expected])
