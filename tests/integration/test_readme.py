"""Every command in the README's ```bash blocks is run by a test, or by `.ci/run` on a fresh clone.

Each command is matched against CHECKS, in order; a command no entry matches fails
:func:`test_every_readme_command_has_a_check`, so a new README command cannot go unchecked. The
cheap commands run here as written; training runs run as written plus overrides that shorten
them to one step (:data:`SHORT`), which does not change what the command checks (recipe, data,
model, the loop, the outputs). Only the commands that take seconds run in ``make test``; the
training and evaluation ones are ``slow`` and run in CI (``.ci/run``); the CIFAR-10 steps need
``../shared/data`` and skip cleanly without it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
CIFAR_JPEG = SHARED / "data" / "cifar10" / "cifar10_jpeg_q75.npz"

#: Appended to a training command: one step per epoch, a small validation, two epochs so that a
#: coreset recipe still selects once after a one-epoch warm start.
SHORT = ["schedule.epochs=2", "schedule.warm_start_epochs=1", "schedule.select_every=1",
         "train.max_steps_per_epoch=1", "eval.n_examples=8", "eval.every=0"]

#: (pattern, how it is checked). "here": run by this file; "short": run here with SHORT appended;
#: "cifar": slow, needs ../shared/data; "ci": run verbatim by .ci/run; "covered: FILE": the same
#: command on a tiny model or tiny runs in that test file (its placeholders name runs or a cluster).
CHECKS: list[tuple[str, str]] = [
    (r"pip install -e '\.\[test\]' && advtrain run recipes/digits_linf\.yaml", "ci"),
    (r"pip install torch torchvision --index-url \S+ && pip install -e .*", "ci"),
    (r"make test", "ci"),
    (r"advtrain run recipes/digits_perceptual\.yaml( \S+=\S+)*", "slow"),  # a Fast-LPA selection pass: minutes
    (r"advtrain run recipes/digits_\w+\.yaml( \S+=\S+)*", "short"),
    (r"advtrain (list|validate) \S+( \S+)*", "here"),
    (r"advtrain eval --attack pgd50 --eps-sweep \S+", "here"),
    (r"advtrain eval runs/digits_perceptual/best\.safetensors .*", "slow"),
    (r"mkdir -p local", "cifar"),
    (r"python \.\./shared/data/cifar10/decode\.py local/cifar10_q75\.npz", "cifar"),
    (r"advtrain run recipes/cifar10_linf\.yaml data\.path=local/cifar10_q75\.npz.*", "cifar"),
    (r"advtrain run recipes/cifar10_\w+\.yaml( data\.root=~/data)?( \S+)*", "covered: test_cli_run.py"),
    (r"advtrain eval runs/cifar10_linf/best\.safetensors .*", "covered: test_cli_eval.py"),
    (r"advtrain select recipes/cifar10_trades\.yaml .*", "covered: test_cli_select.py"),
    (r"advtrain compare .*", "covered: test_cli_compare.py"),
    (r"torchrun .*", "covered: test_distributed.py"),
    (r"advtrain eval (\S+\.safetensors --arch|--model-card) .*", "covered: test_cli_external.py"),
]


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks, comments and trailing spaces removed."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def check_of(command: str) -> str | None:
    return next((how for pattern, how in CHECKS if re.fullmatch(pattern, command)), None)


def commands_checked(how: str) -> list[str]:
    return [c for c in readme_commands() if check_of(c) == how]


def test_every_readme_command_has_a_check():
    commands = readme_commands()
    assert len(commands) > 20  # the blocks were found
    unchecked = [c for c in commands if check_of(c) is None]
    assert not unchecked, f"README commands that no test runs (add them to CHECKS): {unchecked}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[test]'" in ci and "make test" in ci and "advtrain run recipes/digits_linf" in ci
    assert "--index-url https://download.pytorch.org/whl/cpu" in ci and "-m slow tests/integration/test_readme.py" in ci
    for how in {check_of(c) for c in commands}:
        if how.startswith("covered: "):
            assert (ROOT / "tests" / "integration" / how.removeprefix("covered: ")).is_file(), how


def advtrain(command: str, cwd: Path, extra: list[str] = (), timeout: int = 600) -> str:
    """Run a README command in ``cwd`` (``advtrain ...`` in this process, like the CLI tests); its output."""
    args = shlex.split(command)
    if args[0] == "advtrain":
        from typer.testing import CliRunner

        from advtrain.cli import app

        previous = Path.cwd()
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(app, [*args[1:], *extra], catch_exceptions=False)
        finally:
            os.chdir(previous)
        assert result.exit_code == 0, f"{command} {' '.join(extra)}\n{result.output}"
        assert "Traceback" not in result.output
        return result.stdout
    if args[0] == "python":
        args = [sys.executable, *args[1:]]
    proc = subprocess.run([*args, *extra], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command} {' '.join(extra)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A working folder that looks like the repository root to README commands (recipes/, ../shared)."""
    work = tmp_path / "repo"
    work.mkdir()
    (work / "recipes").symlink_to(ROOT / "recipes")
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    return work


def test_cheap_readme_commands_run_as_written(clone):
    """list and validate as written (seconds); the training and evaluation commands are the slow tests."""
    for command in commands_checked("here"):
        if command.startswith("advtrain validate") and "cifar10" in command:
            continue  # needs CIFAR-10 in ./data: validated on the decoded copy in the CIFAR test
        if not command.startswith("advtrain eval"):
            advtrain(command, clone)


@pytest.mark.slow
def test_digits_run_then_eval_of_the_newest_run(clone):
    """The plain-training digits run shortened, then the ε sweep of the newest run as written."""
    (plain,) = [c for c in commands_checked("short") if c.endswith("selector=full")]
    advtrain(plain, clone, SHORT)
    (sweep,) = [c for c in commands_checked("here") if c.startswith("advtrain eval")]
    assert "robust accuracy vs ε" in advtrain(sweep, clone, ["--n-examples", "8"])


@pytest.mark.slow
def test_coreset_digits_runs(clone):
    """The digits runs that select (each selection pass attacks every training image), shortened."""
    for i, command in enumerate(c for c in commands_checked("short") if not c.endswith("selector=full")):
        advtrain(command, clone, [*SHORT, f"output.dir=runs/coreset_{i}"])


@pytest.mark.slow
def test_perceptual_commands(clone):
    """The digits PAT runs shortened (their selection pass still attacks every training image), then the eval."""
    runs = [c for c in commands_checked("slow") if c.startswith("advtrain run")]
    assert "advtrain run recipes/digits_perceptual.yaml" in runs
    for command in runs:
        out = "runs/digits_perceptual" if command.endswith(".yaml") else "runs/perceptual_coreset"
        advtrain(command, clone, [*SHORT, f"output.dir={out}"])
    for command in commands_checked("slow"):
        if command.startswith("advtrain eval"):
            advtrain(command, clone, ["--n-examples", "4"])


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason="../shared/data/cifar10 is not here (a fresh machine)")
def test_cifar_steps_as_written(clone):
    """mkdir and decode as written; both runs pass run's own checks as written (`validate`, data facts
    included: that is where the short run failed), and the full one trains a step."""
    mkdir, decode, *runs = commands_checked("cifar")
    assert mkdir == "mkdir -p local" and not (clone / "local").exists()
    subprocess.run(shlex.split(mkdir), cwd=clone, check=True)
    advtrain(decode, clone, timeout=900)
    assert (clone / "local" / "cifar10_q75.npz").is_file()
    short, full = sorted(runs, key=len, reverse=True)
    assert "schedule.warm_start_epochs=1" in short
    for command in (short, full):  # a selection pass over 49,500 images is hours on a CPU: validate them
        advtrain(command.replace("advtrain run ", "advtrain validate ", 1), clone)
    advtrain("advtrain validate recipes/cifar10_trades.yaml objective.beta=1", clone,
             ["data.path=local/cifar10_q75.npz"])
    advtrain(full, clone, ["schedule.epochs=1", "schedule.warm_start_epochs=1", "train.max_steps_per_epoch=1",
                           "eval.n_examples=8", "eval.every=0", "device=cpu"])
