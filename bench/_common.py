"""The one bench harness: common flags, run metadata, the CLI driver, one table writer, portable results.

Every script takes the same flags where they mean something (``--device``, ``--out``, ``--quick`` /
``--full``, ``--seed``), drives training and evaluation through the real CLI (:func:`advtrain`), and
writes its result with :class:`Report` (or :func:`write_result`): one JSON and one Markdown file from
the same rows, each saying the command, the machine, the git commit and whether the tree was dirty,
with no machine path in them (:func:`portable`). ``bench/run_all.py --stale`` compares that commit
with the last commit of the code the result measures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The checkout sits next to shared/ (/work/main) or one level deeper (a worktree under /work/wt/).
SHARED_CIFAR = next((p / "shared" / "data" / "cifar10" / "cifar10_jpeg_q75.npz" for p in ROOT.parents[:2]
                     if (p / "shared" / "data" / "cifar10" / "cifar10_jpeg_q75.npz").exists()),
                    ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_jpeg_q75.npz")
LOCAL = ROOT / "local"
#: An absolute POSIX path inside text: a slash after a separator, then at least two name parts.
ABSOLUTE_PATH = re.compile(r"(?:(?<=^)|(?<=[\s\"'`=(\[:,]))/[A-Za-z_.][\w.+-]*(?:/[\w.+@-]+)+/?")


def git_state() -> dict[str, Any]:
    """The commit the code was at and whether tracked files differed from it (a dirty tree)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short=7", "HEAD")
    dirty = sorted(line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines())
    return {"commit": commit or None, "dirty": bool(dirty), "dirty_files": dirty}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    """What the numbers were measured on, and the code they were measured with."""
    state = git_state()
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cuda": torch.cuda.is_available(),
            "git": state["commit"], "dirty": state["dirty"]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def portable(value: Any) -> Any:
    """``value`` with every machine path made portable: paths in the checkout become relative to it,
    the interpreter becomes ``python``, the home folder ``~``, any other absolute path ``<abs>/name``
    (:func:`_outside`)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        return value
    text = value.replace(sys.executable, "python")
    for root in {str(ROOT), os.path.realpath(ROOT)}:
        text = re.sub(re.escape(root) + r"(/|\b)", lambda m: "" if m.group(1) == "/" else ".", text)
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        text = re.sub(re.escape(home) + r"(?=/|\b)", "~", text)
    return ABSOLUTE_PATH.sub(lambda m: _outside(m.group(0)), text)


def _outside(path: str) -> str:
    """A path outside the checkout, as a reader can use it: an interpreter is ``python``, a copy of
    the checkout's ``local/`` cache keeps its name there, anything else keeps only its last part."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if re.fullmatch(r"python[\d.]*", name):
        return "python"
    if "/local/" in path:
        return "local/" + path.split("/local/", 1)[1]
    return "<abs>/" + name


def command_line() -> str:
    """The command that made the result, as a reader would type it from the repository root."""
    script = Path(sys.argv[0])
    if script.is_absolute():
        script = portable(script)
    return portable(" ".join(["python", str(script), *sys.argv[1:]]))


def parser(doc: str, *, device: str | None = "cpu", quick: bool = False, seed: bool = False) -> argparse.ArgumentParser:
    """The common flags: ``--out`` (alias ``--results``) always; ``--device``, ``--quick``/``--full``
    and ``--seed`` where the script has them (pass ``device=None`` / ``quick=False`` / ``seed=False``)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", "--results", dest="results", type=Path, default=RESULTS,
                   help="folder for the result files (default bench/results)")
    if device is not None:
        p.add_argument("--device", default=device)
    if quick:
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", dest="size", action="store_const", const="quick", default="default",
                          help="the small settings make bench uses")
        size.add_argument("--full", dest="size", action="store_const", const="full", help="the long settings")
    if seed:
        p.add_argument("--seed", type=int, default=0)
    return p


def add_results_arg(p: argparse.ArgumentParser) -> None:
    """``--out DIR`` (alias ``--results``) on a script's own parser."""
    p.add_argument("--out", "--results", dest="results", type=Path, default=RESULTS,
                   help="folder for the result files (default bench/results)")


@dataclass
class CliRun:
    """One finished ``python -m advtrain ...``: the command as written in results, its time and output."""

    command: str
    seconds: float
    stdout: str


def advtrain(*args: str | Path, threads: int | None = None, log: Path | None = None, check: bool = True) -> CliRun:
    """Run the real CLI from the repository root (the one way the benchmarks drive advtrain).

    ``threads`` pins torch's CPU threads of the child (parallel grids); ``log`` keeps its output.
    A failure stops the benchmark with the child's last output, never a half-written result.
    """
    argv = [sys.executable, "-m", "advtrain", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"]
                                                    if os.environ.get("PYTHONPATH") else ""))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(out)
    command = portable(" ".join(["advtrain", *map(str, args)]))
    if check and proc.returncode != 0:
        raise SystemExit(f"`{command}` failed ({proc.returncode}):\n{out[-3000:]}")
    return CliRun(command, seconds, out)


def cifar_subset(n_train: int, n_test: int, jpeg: Path | None = None) -> Path:
    """Decode the first images of the JPEG CIFAR-10 copy (default: the shared one) into a cached uint8 .npz."""
    jpeg = Path(jpeg) if jpeg is not None else SHARED_CIFAR
    out = LOCAL / f"cifar10_q75_{n_train}_{n_test}.npz"
    if out.exists():
        return out
    if not jpeg.exists():
        raise SystemExit(f"{jpeg} not found: the CIFAR-10 benchmark needs the JPEG copy (../shared/data/cifar10)")
    from PIL import Image

    src = np.load(jpeg)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data, offsets = src[f"{split}_jpeg"], src[f"{split}_offsets"]
        images = np.empty((n, 32, 32, 3), np.uint8)
        for i in range(n):
            blob = data[offsets[i]:offsets[i + 1]].tobytes()
            images[i] = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        arrays[f"{split}_x"] = images
        arrays[f"{split}_y"] = src[f"{split}_labels"][:n].astype(np.int64)
    LOCAL.mkdir(exist_ok=True)
    np.savez(out, **arrays)
    return out


@dataclass(frozen=True)
class Column:
    """One table column: its header, how to read a row (a key or a function) and how to format it."""

    header: str
    value: str | Callable[[dict], Any]
    fmt: str | Callable[[Any], str] = "{}"

    def cell(self, row: dict) -> str:
        v = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        if v is None:
            return "–"
        return self.fmt(v) if callable(self.fmt) else self.fmt.format(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> list[str]:
    """The Markdown lines of a table built from ``rows`` (the same dicts the JSON stores)."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.cell(r) for c in columns) + " |" for r in rows]
    return lines


class Report:
    """One result: a Markdown page and a JSON record written together from the same rows.

    The header (title, command, machine with commit and dirty flag) is the same on every result;
    ``table`` adds a table to the page and its rows to the record under ``key``.
    """

    def __init__(self, name: str, title: str, results: Path | None = None, **record: Any) -> None:
        self.name, self.results = name, results
        self.record = {"machine": machine(), "command": command_line(), **record}
        self.lines = [f"# {title}", "", f"Command: `{self.record['command']}`", "",
                      f"Machine: {self.record['machine']}", ""]

    def text(self, *paragraphs: str) -> Report:
        for p in paragraphs:
            self.lines += [p, ""]
        return self

    def table(self, rows: Sequence[dict], columns: Sequence[Column], key: str | None = "rows") -> Report:
        if key is not None:
            self.record[key] = list(rows)
        self.lines += [*markdown_table(rows, columns), ""]
        return self

    def write(self) -> str:
        text = "\n".join(self.lines).rstrip("\n") + "\n"
        write_result(self.name, self.record, text, self.results)
        return text


def write_result(name: str, record: dict, markdown: str, results: Path | None = None) -> None:
    """Write ``<name>.json`` and ``<name>.md``, machine paths made portable, git state recorded."""
    folder = Path(results) if results is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    record = dict(record)
    record.setdefault("git", git_state())
    (folder / f"{name}.json").write_text(json.dumps(portable(record), indent=2, default=float) + "\n")
    (folder / f"{name}.md").write_text(portable(markdown))


def gpu_peak_memory_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_memory_gib() -> float | None:
    """Peak memory PyTorch allocated on the GPU since the last reset (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30
