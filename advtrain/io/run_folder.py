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
import fnmatch
import os
import re
import stat
import uuid
from pathlib import Path

from advtrain.errors import CheckpointError, UserError
from advtrain.io import run_files as names
from advtrain.io.files import TMP_GLOB, os_error_text, read_text_no_follow, write_text

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: ``advtrain eval``'s default report folder inside a run folder.
EVAL_DIR = "eval"

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

    def __init__(self, path: Path, handle: int, *, created_dir: bool = False, created_lock: bool = False) -> None:
        self.path = path
        self._handle: int | None = handle
        self._created_dir, self._created_lock = created_dir, created_lock
        #: Files of an earlier run that stopped before its first checkpoint, removed by :meth:`claim`.
        self.cleared: list[str] = []

    # ---------------------------------------------------------------- claim
    @classmethod
    def claim(cls, path: Path, *, resuming: bool, overwrite: bool) -> RunFolder:
        """Create and lock ``path``; refuse a folder that holds another run or files advtrain did not write.

        Nothing is opened through a link: a folder whose advtrain files (lock, recipe, metrics,
        checkpoints, ``coreset/``, ``eval/``) include a symbolic link is refused before anything is
        written, and the lock file is opened with ``O_NOFOLLOW``. A folder holding only what a run
        that stopped before its first checkpoint left behind is cleared and started again
        (:attr:`cleared` names those files).

        Raises:
            UserError: the folder is not writable, holds a planted link, is in use by another
                process, holds a run and neither ``resuming`` nor ``overwrite`` is set, or holds
                files that are not a run.
        """
        path = Path(path)
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"output.dir '{path}' is not writable ({os_error_text(err)}); choose another folder, "
                            f"e.g. output.dir=runs/mine.") from None
        _refuse_planted_links(path)
        lock = path / LOCK_FILE
        had_lock = lock.exists()
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            raise UserError(f"output.dir '{path}' is not writable ({os_error_text(err)}); choose "
                            f"another folder, e.g. output.dir=runs/mine.") from None
        folder = cls(path, handle, created_dir=created, created_lock=not had_lock)
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                kind = "a special file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
                raise UserError(f"'{lock}' is not advtrain's lock file ({kind}); writing it would change another "
                                f"file. Remove it, or choose another output.dir.")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                other = _read(lock).strip() or "unknown"
                folder._created_lock = False  # the other process's
                raise UserError(f"output.dir '{path}' is in use by another advtrain process (pid {other}); two "
                                f"runs in one folder would interleave their files. Wait for it to finish, or "
                                f"choose another output.dir.") from None
            try:  # a holder that removed the lock file just before we opened it leaves us an orphan inode
                same = os.stat(lock, follow_symlinks=False).st_ino == info.st_ino
            except OSError:
                same = False
            if not same:
                raise UserError(f"output.dir '{path}' changed while advtrain claimed it (its lock file was "
                                f"replaced); run the command again.")
            try:
                os.ftruncate(handle, 0)
                os.write(handle, f"{os.getpid()}\n".encode())
            except OSError as err:
                raise UserError(f"cannot write the lock file of output.dir '{path}' ({os_error_text(err)}); "
                                f"free disk space or choose another output.dir.") from None
            folder.remove_stale_temp_files()
            folder._check_claim(resuming, overwrite)
        except BaseException:
            folder.release()
            raise
        return folder

    def _check_claim(self, resuming: bool, overwrite: bool) -> None:
        if resuming:
            return
        if self.holds_run() and not overwrite and self.is_debris():
            self.cleared = self.run_files()
            self.clear_old_run()
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

    def resume_checkpoint(self) -> Path:
        """``--resume``: the folder's ``last.safetensors``, or an error that names the way out."""
        last = self.path / names.LAST
        if last.is_file():
            return last
        others = self.checkpoints()
        if others:
            raise UserError(f"--resume: no checkpoint at '{last}', but the folder holds "
                            f"{', '.join(p.name for p in others)}; continue from one of them with --resume-from "
                            f"{others[-1]}, or pass --overwrite (without --resume) to start over.")
        if self.holds_run() and not self.is_debris():
            raise UserError(f"--resume: output.dir '{self.path}' holds {', '.join(self.run_files())} but no "
                            f"checkpoint to continue from; pass --overwrite (without --resume) to start over, or "
                            f"choose another output.dir.")
        raise UserError(f"--resume: no checkpoint at '{last}', so nothing to resume (the run never finished an "
                        f"epoch, or never started); run the same command without --resume to start it.")

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Unlock the folder. The lock file stays while the folder holds anything else (it names the last
        holder); a claim that left nothing behind (a run refused before it wrote a file) removes the lock
        file it created, and the folder too when the claim created it."""
        if self._handle is None:
            return
        try:
            leftover = [p.name for p in self.path.iterdir()] if self.path.is_dir() else []
        except OSError:
            leftover = [LOCK_FILE, "?"]
        if self._created_lock and leftover == [LOCK_FILE]:
            with contextlib.suppress(OSError):
                (self.path / LOCK_FILE).unlink()
                if self._created_dir:
                    self.path.rmdir()
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

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints: last, best and the numbered ones."""
        found = [self.path / n for n in (names.LAST, names.BEST) if (self.path / n).is_file()]
        return found + sorted(self.path.glob("epoch_*.safetensors"))

    def is_debris(self) -> bool:
        """What a run of advtrain (its run id is here) left when it stopped before its first checkpoint:
        no checkpoint, no report, only the recipe, run id, metrics of unsaved epochs and coresets."""
        return self.run_id() is not None and not self.checkpoints() and not self.is_finished()

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
            if folder.is_dir() and not folder.is_symlink():
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
        if self.run_id() != run_id:
            write_text(self.path / RUN_ID_FILE, run_id + "\n", inside=self.path)


def _read(path: Path) -> str:
    try:
        return read_text_no_follow(path, 200)
    except (OSError, UnicodeDecodeError):
        return ""


def _advtrain_entries(path: Path) -> list[Path]:
    """Every entry of a run folder that advtrain writes, reads or deletes (its own names, coreset/, eval/,
    tensorboard/)."""
    patterns = (LOCK_FILE, *RUN_FILES, names.CORESET_DIR, EVAL_DIR, names.TENSORBOARD_DIR, "epoch_*.safetensors",
                TMP_GLOB, ".write-test")
    try:
        top = [p for p in path.iterdir() if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
    except OSError:
        return []
    inner = []
    for sub in (path / names.CORESET_DIR, path / EVAL_DIR, path / names.TENSORBOARD_DIR):
        if sub.is_dir() and not sub.is_symlink():
            inner += list(sub.rglob("*"))
    return top + inner


def _refuse_planted_links(path: Path) -> None:
    """A run folder whose advtrain files include a link would have advtrain write or delete elsewhere."""
    links = [p for p in _advtrain_entries(path) if p.is_symlink()]
    if links:
        shown = ", ".join(f"'{p.relative_to(path)}' -> '{os.readlink(p)}'" for p in links[:5])
        more = f" and {len(links) - 5} more" if len(links) > 5 else ""
        raise UserError(f"output.dir '{path}' holds symbolic links where advtrain writes its own files "
                        f"({shown}{more}); "
                        f"advtrain never writes through links, so nothing outside the folder changes. Remove the "
                        f"links, or choose another output.dir.")
