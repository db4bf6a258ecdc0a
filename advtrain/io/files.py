"""The one way advtrain writes a file: whole, atomically, never through a link, readable as the umask says.

A write goes to a new temporary file in the target's folder, created exclusively and without
following links (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0666 less the umask, like any other
tool's files), and is renamed onto the target only once it is complete and synced. So a crash,
a kill or a full disk never leaves a half-written file, a link planted at the target's name is
replaced instead of written through, and an ``OSError`` becomes one :class:`UserError` that says
what happened (the disk is full, the folder is read-only) and that the previous file is intact.

``inside`` names the folder a write must stay in (a run folder, an eval report folder): every
folder between it and the target must be a real folder, not a link to somewhere else.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advtrain.errors import UserError

TMP_SUFFIX = ".tmp"
#: Temporary files of :func:`write_atomically` (``.<name>.<random>.tmp``): a killed write leaves one.
TMP_GLOB = f".*{TMP_SUFFIX}"
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def os_error_text(err: OSError) -> str:
    """What an ``OSError`` means for the user, in words (a full disk says so)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on device)"
    if err.errno == errno.EROFS:
        return "the file system is read-only"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ELOOP:
        return "it is a symbolic link"
    return err.strerror or str(err)


def _advice(err: BaseException) -> str:
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "Free disk space (or choose another output folder), then run the command again." if full else \
        "Choose a writable output folder, then run the command again."


def links_between(inside: Path, path: Path) -> list[Path]:
    """The symbolic links among the folders from ``inside`` (excluded) down to ``path``'s folder, and ``path``."""
    inside, path = Path(inside), Path(path)
    try:
        rest = path.relative_to(inside)
    except ValueError:
        return []
    found, current = [], inside
    for part in rest.parts:
        current = current / part
        if current.is_symlink():
            found.append(current)
    return found


def refuse_links(inside: Path, path: Path) -> None:
    """Raise a :class:`UserError` when a link sits between ``inside`` and ``path`` (writes never follow one)."""
    links = links_between(inside, path)
    if links:
        raise UserError(f"'{links[0]}' is a symbolic link (to '{os.readlink(links[0])}'); advtrain never writes "
                        f"through links, so nothing outside '{inside}' changes. Remove the link, or choose "
                        f"another folder.")


def make_folder(path: Path, *, inside: Path | None = None) -> None:
    """Create ``path`` (and its parents) as real folders; refuse a link or a file in the way."""
    path = Path(path)
    if inside is not None:
        refuse_links(inside, path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create folder '{path}': a file of that name is in the way. Remove it, or "
                        f"choose another folder.") from None
    except OSError as err:
        raise UserError(f"cannot create folder '{path}': {os_error_text(err)}. Choose a writable folder "
                        f"(e.g. output.dir=runs/mine).") from None


def _new_temp(path: Path) -> tuple[Path, int]:
    """A new empty file beside ``path``, created exclusively (never a link), and its mode: 0666 less the umask."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, _FLAGS, 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside '{path}'")


def write_atomically(path: Path, write: Callable[[Path], Any], *, inside: Path | None = None) -> None:
    """Run ``write(tmp_path)`` on a new temporary file, then rename it onto ``path``; on failure keep the old file.

    Args:
        path: The file to (re)place.
        write: Writes the whole content to the path it is given.
        inside: The folder this write must stay in; a link between it and ``path`` is refused.

    Raises:
        UserError: the folder cannot be written (full disk, read-only, a link in the way).
    """
    from safetensors import SafetensorError

    path = Path(path)
    make_folder(path.parent, inside=inside)
    if inside is not None:
        refuse_links(inside, path.parent)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"cannot write '{path}': it is a folder. Remove it, or choose another output.")
    try:
        tmp, mode = _new_temp(path)
    except OSError as err:
        raise UserError(f"cannot write '{path}': {os_error_text(err)}; the previous file, if any, is intact. "
                        f"{_advice(err)}") from None
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) != mode:  # a writer that recreated it 0600
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # replaces a link at ``path`` itself, never its target
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        text = os_error_text(err) if isinstance(err, OSError) else str(err)
        raise UserError(f"could not write '{path}' ({text}); the previous file, if any, is intact. "
                        f"{_advice(err)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, *, inside: Path | None = None) -> None:
    """``text`` as UTF-8, written whole (see :func:`write_atomically`)."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), inside=inside)


def write_bytes(path: Path, data: bytes, *, inside: Path | None = None) -> None:
    write_atomically(path, lambda tmp: tmp.write_bytes(data), inside=inside)


def read_text_no_follow(path: Path, limit: int | None = None) -> str:
    """A file's text, refusing a link (ELOOP) like every write does; ``limit`` characters at most."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        return handle.read() if limit is None else handle.read(limit)
