"""Where a command other than ``run`` may write: its own output folder or file, never another command's results.

``advtrain eval --out``, ``compare --out`` and ``select --out`` name where their results go. A
path that would replace a file of a training run (its report, a checkpoint) or a file that
advtrain did not write for this same command is refused before any work is done. Each output
folder carries a small mark (:data:`OUTPUT_MARK`) naming the command that owns it, so running the
same command again replaces its own earlier files and nothing else.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from advtrain.errors import UserError
from advtrain.io.files import make_folder, read_text_no_follow, refuse_links, write_text
from advtrain.io.run_folder import EVAL_DIR, LOCK_FILE, RUN_ID_FILE

#: The file in an output folder that names the command whose results it holds.
OUTPUT_MARK = ".advtrain-output"
#: Files whose presence makes a folder a training run's: names only advtrain gives (a recipe.yaml alone
#: may be anyone's), and the checkpoints of runs made before run ids existed.
_RUN_MARKERS = (RUN_ID_FILE, LOCK_FILE, "last.safetensors", "best.safetensors")


def is_run_folder(path: Path) -> bool:
    """A folder ``advtrain run`` claimed (its lock, run id, recipe, metrics or checkpoints are there)."""
    return path.is_dir() and any((path / name).exists() or (path / name).is_symlink() for name in _RUN_MARKERS)


def run_folder_above(path: Path) -> Path | None:
    """The nearest existing folder at or above ``path`` that is a training run's, if any."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if is_run_folder(folder):
            return folder
    return None


def owner(folder: Path) -> str | None:
    """The command recorded in ``folder``'s output mark (None: no mark, or not one advtrain wrote)."""
    try:
        record = json.loads(read_text_no_follow(folder / OUTPUT_MARK, 1000))
    except (OSError, ValueError):
        return None
    return record.get("command") if isinstance(record, dict) and isinstance(record.get("command"), str) else None


def claim_output_dir(path: Path, *, command: str, files: Sequence[str], create: bool = True) -> Path:
    """Make ``path`` the output folder of ``command`` (which writes ``files`` there), or refuse it.

    Refused: a file in the way; a training run's folder (or a folder inside one, other than its
    ``eval/`` reports); a folder where any of ``files`` exists but was not written by ``command``;
    a link between the run folder and ``path``. Returns ``path`` once it exists and is marked
    (``create=False``: only the checks, so a command can refuse before its work and create the
    folder only once it has results to write).

    Raises:
        UserError: with the way out (another ``--out``).
    """
    path = Path(path)
    flag = f"advtrain {command} --out"
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} '{path}' is a file; give a folder for the report files ({', '.join(files)}).")
    run = run_folder_above(path)
    if run is not None:
        rel = path.absolute().relative_to(run)
        if command != "eval" or not rel.parts or rel.parts[0] != EVAL_DIR:
            where = "is the folder" if not rel.parts else "is inside the folder"
            raise UserError(f"{flag} '{path}' {where} of the training run '{run}'; writing there would replace "
                            f"that run's own files. Choose a folder outside the run (eval reports of a run go "
                            f"in its {EVAL_DIR}/ folder, the default).")
        refuse_links(run, path / OUTPUT_MARK)
    # A run's eval/ folder holds only eval reports (an older advtrain wrote them without a mark).
    if path.is_dir() and owner(path) != command and run is None:
        foreign = [name for name in (*files, OUTPUT_MARK) if (path / name).exists() or (path / name).is_symlink()]
        if foreign:
            theirs = owner(path)
            by = f"by advtrain {theirs}" if theirs else "by another program (or by hand)"
            raise UserError(f"{flag} '{path}' already holds {', '.join(foreign)}, written {by}, not by advtrain "
                            f"{command}; replacing them would lose those results. Choose another folder, or "
                            f"remove them.")
    if not create:
        return path
    make_folder(path)
    if owner(path) != command:
        write_text(path / OUTPUT_MARK, json.dumps({"command": command}) + "\n", inside=path)
    return path


def is_select_dump(path: Path) -> bool:
    """A ``.npz`` that ``advtrain select --dump-indices`` wrote (its members, read from the zip directory only)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return {"indices.npy", "weights.npy", "labels.npy", "selector.npy", "n_train.npy"} <= members


def claim_output_file(path: Path, *, command: str, suffix: str, is_own: Callable[[Path], bool]) -> Path:
    """Make ``path`` the output file of ``command``, or refuse it.

    Refused: a name without ``suffix``; a path inside a training run's folder; a folder or a link
    in the way; an existing file that ``is_own`` does not recognise as this command's earlier result.
    """
    path = Path(path)
    flag = f"advtrain {command} --out"
    if path.suffix != suffix:
        raise UserError(f"{flag} '{path}' must name a {suffix} file (advtrain {command} writes {suffix}); "
                        f"e.g. --out coreset{suffix}.")
    run = run_folder_above(path.parent)
    if run is not None:
        raise UserError(f"{flag} '{path}' is inside the folder of the training run '{run}'; writing there would "
                        f"mix with (or replace) that run's own files. Choose a path outside the run.")
    if path.is_symlink() or path.is_dir():
        raise UserError(f"{flag} '{path}' is {'a symbolic link' if path.is_symlink() else 'a folder'}; give the "
                        f"path of a {suffix} file to create.")
    if path.exists() and not is_own(path):
        raise UserError(f"{flag} '{path}' exists and is not a file advtrain {command} wrote; replacing it would "
                        f"lose it. Choose another path, or remove it.")
    return path
