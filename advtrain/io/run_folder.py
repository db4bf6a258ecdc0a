"""One output folder belongs to one run.

A run claims its folder for its whole life with an exclusive lock file (a second process on the
same ``output.dir`` stops at once instead of interleaving files), removes the temporary files a
killed write left behind, and records a run id in the folder. Checkpoints carry the same id, so
``--resume-from`` cannot continue another run inside this folder and rewrite its metrics, recipe
and reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from pathlib import Path

from advtrain.errors import CheckpointError, UserError
from advtrain.io import run_files as names
from advtrain.io.checkpoint import TMP_GLOB

RUN_ID_FILE = ".advtrain-run"
LOCK_FILE = ".advtrain.lock"
#: Files a run writes at the top of its folder; any of them means the folder holds a run.
RUN_FILES = (names.RECIPE, names.METRICS, names.LAST, names.BEST, names.REPORT_JSON, names.REPORT_MD, names.CURVES,
             RUN_ID_FILE, names.METRICS_CSV)
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def new_run_id() -> str:
    return uuid.uuid4().hex


class RunFolder:
    """A claimed (locked) output folder; :meth:`release` unlocks it."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path = path
        self._handle: int | None = handle

    # ---------------------------------------------------------------- claim
    @classmethod
    def claim(cls, path: Path, *, resuming: bool, overwrite: bool) -> RunFolder:
        """Create and lock ``path``; refuse a folder that holds another run or files advtrain did not write.

        Raises:
            UserError: the folder is not writable, is in use by another process, holds a run and
                neither ``resuming`` nor ``overwrite`` is set, or holds files that are not a run.
        """
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"output.dir '{path}' is not writable ({err.strerror or err}); choose "
                            f"another folder, e.g. output.dir=runs/mine.") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = _read(path / LOCK_FILE).strip() or "unknown"
            os.close(handle)
            raise UserError(f"output.dir '{path}' is in use by another advtrain process (pid {other}); two runs "
                            f"in one folder would interleave their files. Wait for it to finish, or choose "
                            f"another output.dir.") from None
        folder = cls(path, handle)
        try:
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
            folder.remove_stale_temp_files()
            folder._check_claim(resuming, overwrite)
        except BaseException:
            folder.release()
            raise
        return folder

    def _check_claim(self, resuming: bool, overwrite: bool) -> None:
        if resuming:
            return
        if self.holds_run() and not overwrite:
            raise UserError(f"output.dir '{self.path}' already holds a run ({', '.join(self.run_files())}). "
                            f"Continue it with --resume, pass --overwrite to start over, or choose another "
                            f"output.dir.")
        if overwrite and self.holds_run() and not self.is_advtrain_run():
            raise UserError(f"output.dir '{self.path}' holds {', '.join(self.run_files())} but no advtrain run "
                            f"(no {RUN_ID_FILE} or last.safetensors); --overwrite only replaces runs advtrain "
                            f"wrote. Choose another output.dir.")
        if overwrite:
            self.clear_old_run()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Unlock the folder (the lock file stays; it only names the last holder)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    # ---------------------------------------------------------------- state
    def run_files(self) -> list[str]:
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def holds_run(self) -> bool:
        return bool(self.run_files())

    def is_advtrain_run(self) -> bool:
        return (self.path / RUN_ID_FILE).exists() or (self.path / names.LAST).exists()

    def run_id(self) -> str | None:
        """The id recorded in the folder (None for an empty folder or one written by an older advtrain)."""
        text = _read(self.path / RUN_ID_FILE).strip()
        return text if _RUN_ID.fullmatch(text) else None

    def is_finished(self) -> bool:
        """report.json is written last when a run finishes (see RunFiles.write_report)."""
        return (self.path / names.REPORT_JSON).exists()

    # ------------------------------------------------------------- changes
    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temporary files of writes that were killed (safe: this process holds the lock)."""
        removed = []
        for folder in (self.path, self.path / names.CORESET_DIR, self.path / "eval"):
            if folder.is_dir():
                for tmp in folder.glob(TMP_GLOB):
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                        removed.append(tmp)
        with contextlib.suppress(OSError):
            (self.path / ".write-test").unlink(missing_ok=True)
        return removed

    def clear_old_run(self) -> None:
        """--overwrite: remove the files of the run that was here, so none of them mixes with the new one."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for old in [*self.path.glob("epoch_*.safetensors"), *self.path.glob(f"{names.CORESET_DIR}/epoch_*.npz"),
                    *self.path.glob(f"{names.TENSORBOARD_DIR}/events.out.tfevents.*")]:
            old.unlink(missing_ok=True)

    def resume_run_id(self, ckpt_run_id: str | None, ckpt_path: Path) -> str:
        """The run id to continue with when resuming from ``ckpt_path``; refuse another run's folder.

        Continuing in the checkpoint's own run folder keeps its id; continuing a checkpoint in an
        empty folder starts a new run (a fork) with a new id.
        """
        if not self.holds_run():
            return new_run_id()
        mine = self.run_id()
        if mine is not None:
            same = ckpt_run_id == mine
        else:  # a folder from an advtrain without run ids: only its own checkpoints may continue it
            same = Path(ckpt_path).resolve().parent == self.path.resolve()
        if not same:
            raise CheckpointError(
                f"output.dir '{self.path}' holds another run than checkpoint '{ckpt_path}' "
                f"(run {(mine or 'of an older advtrain')[:8]} vs {(ckpt_run_id or 'unknown')[:8]}); resuming there "
                f"would rewrite that run's metrics, recipe and reports. Continue the checkpoint in its own "
                f"folder, or give a new output.dir to start a new run from it.")
        return mine or ckpt_run_id or new_run_id()

    def record_run_id(self, run_id: str) -> None:
        from advtrain.io.checkpoint import write_atomically

        if self.run_id() != run_id:
            write_atomically(self.path / RUN_ID_FILE, lambda tmp: tmp.write_text(run_id + "\n"))


def _read(path: Path) -> str:
    try:
        return path.read_text()[:200]
    except (OSError, UnicodeDecodeError):
        return ""
