"""How many CPU threads torch may use, and how its idle threads wait.

torch sizes its intra-op pool from the machine's cores, not from what this process may use: a
container with a 2-CPU quota on a 64-core host gets 64 threads. And with the OpenMP default its
idle threads spin between operations, so on cores that other jobs share each parallel region
waits for a descheduled thread while the spinning one burns the slice: a 30 s run took 26 minutes
(issue 25; ``bench/results/threads_cpu.md``). So:

* the count is chosen by :func:`choose_threads` from :class:`CpuFacts` (affinity mask, cgroup
  v2 ``cpu.max`` or v1 CFS quota, torch's own default), unless asked for: ``--threads`` first,
  then the recipe's ``runtime.threads``, then ``OMP_NUM_THREADS`` when the user set it (the
  documented torch/OpenMP convention);
* :func:`prefer_passive_wait` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported, unless
  the user set that variable (``OMP_WAIT_POLICY=ACTIVE`` brings spinning back).

This module imports torch only inside :func:`apply_threads`, so the CLI can call
:func:`prefer_passive_wait` before anything loads OpenMP.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from advtrain.errors import UserError

#: ``runtime.threads`` and ``--threads``: ``auto`` or a thread count.
THREADS_PATTERN = r"auto|[1-9][0-9]{0,3}"
MAX_THREADS = 9999


@dataclass(frozen=True)
class CpuFacts:
    """What bounds this process's CPU use (None: no such bound found)."""

    cpu_count: int | None  # logical CPUs of the machine (os.cpu_count)
    affinity: int | None  # CPUs in this process's affinity mask (os.sched_getaffinity)
    quota: float | None  # cgroup CPU quota in CPUs (e.g. 1.5 for cpu.max "150000 100000")
    torch_default: int | None  # torch.get_num_threads() before advtrain changed it (physical cores)


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count and where it came from (shown in the run header)."""

    threads: int
    source: str  # --threads | runtime.threads | OMP_NUM_THREADS | auto
    reason: str

    def describe(self) -> str:
        """E.g. ``2 threads (auto: 2 CPUs in the affinity mask)``."""
        noun = "thread" if self.threads == 1 else "threads"
        return f"{self.threads} {noun} ({self.source}: {self.reason})" if self.reason else \
            f"{self.threads} {noun} ({self.source})"


def parse_threads(value: object, where: str) -> int | None:
    """``auto``/None → None, else a positive thread count; anything else is a :class:`UserError`."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if not re.fullmatch(THREADS_PATTERN, text):
        raise UserError(f"{where}: expected 'auto' or a thread count 1..{MAX_THREADS}, got {value!r}")
    return int(text)


def parse_omp_num_threads(value: str | None) -> int | None:
    """The first level of ``OMP_NUM_THREADS`` (``4`` or ``4,2``); unset or empty → None."""
    if value is None or not value.strip():
        return None
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise UserError(f"OMP_NUM_THREADS={value!r} is not a positive integer; unset it or set a thread count "
                        f"such as OMP_NUM_THREADS=2 (or pass --threads N).")
    return int(first)


def usable_cpus(facts: CpuFacts) -> tuple[int, str]:
    """The CPUs this process may keep busy, and which bound decided it.

    A fractional quota rounds down (1.5 CPUs → 1 thread): a second thread would be throttled for
    the rest of every period, which is the stall this module exists to avoid. torch's default
    counts physical cores, so it caps a hyper-threaded affinity mask too.
    """
    bounds = []
    if facts.affinity:
        bounds.append((facts.affinity, f"{facts.affinity} CPUs in the affinity mask"))
    if facts.quota is not None and facts.quota > 0:
        bounds.append((max(1, math.floor(facts.quota)), f"cgroup CPU quota {facts.quota:g}"))
    if facts.torch_default:
        bounds.append((facts.torch_default, f"torch's default {facts.torch_default} (physical cores)"))
    if facts.cpu_count:
        bounds.append((facts.cpu_count, f"{facts.cpu_count} CPUs"))
    if not bounds:
        return 1, "no CPU count found"
    return min(bounds, key=lambda b: b[0])  # the first of equal bounds names it


def choose_threads(*, flag: object = None, recipe: object = None, omp_env: str | None = None,
                   facts: CpuFacts) -> ThreadChoice:
    """The thread count: ``--threads``, else ``runtime.threads``, else ``OMP_NUM_THREADS``, else auto.

    A pure function of its inputs; ``auto`` (or None) at the first two levels passes to the next.
    """
    asked = parse_threads(flag, "--threads")
    if asked is not None:
        return ThreadChoice(asked, "--threads", "")
    asked = parse_threads(recipe, "runtime.threads")
    if asked is not None:
        return ThreadChoice(asked, "runtime.threads", "")
    omp = parse_omp_num_threads(omp_env)
    if omp is not None:
        return ThreadChoice(omp, "OMP_NUM_THREADS", "set in the environment")
    count, reason = usable_cpus(facts)
    return ThreadChoice(count, "auto", reason)


# ------------------------------------------------------------------------------------ system facts
def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def parse_cpu_max(text: str | None) -> float | None:
    """cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) in CPUs; None when unlimited."""
    parts = (text or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str | None, period_text: str | None) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in CPUs; None when unlimited (-1)."""
    try:
        quota, period = int((quota_text or "").strip()), int((period_text or "").strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_paths(proc_self_cgroup: str | None) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process from ``/proc/self/cgroup``."""
    v2 = v1 = None
    for line in (proc_self_cgroup or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, path: str | None) -> list[Path]:
    """``base/path`` and each folder above it up to ``base`` (limits nest: the smallest applies)."""
    parts = [p for p in (path or "/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def read_quota(root: Path = Path("/")) -> float | None:
    """The smallest cgroup CPU quota over this process's cgroup and its parents (v2, else v1)."""
    v2_path, v1_path = cgroup_paths(_read(root / "proc/self/cgroup"))
    fs = root / "sys/fs/cgroup"
    quotas = []
    if v2_path is not None:
        quotas += [parse_cpu_max(_read(folder / "cpu.max")) for folder in _ancestors(fs, v2_path)]
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (fs / mount).is_dir():
            quotas += [parse_cfs(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
                       for folder in _ancestors(fs / mount, v1_path)]
            break
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def read_cpu_facts(root: Path = Path("/"), *, torch_default: int | None = None) -> CpuFacts:
    """This process's CPU bounds from the OS (affinity) and ``/sys/fs/cgroup``; robust to their absence."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = None
    return CpuFacts(cpu_count=os.cpu_count(), affinity=affinity, quota=read_quota(root), torch_default=torch_default)


# ------------------------------------------------------------------------------------- applying it
_TORCH_DEFAULT: list[int] = []  # torch's own count, read once before the first set_num_threads


def prefer_passive_wait(environ: MutableMapping[str, str]) -> bool:
    """Make OpenMP's idle threads sleep instead of spinning, unless the user chose a wait policy.

    Takes effect only when called before torch (and with it libgomp) is imported. True when set.
    """
    if "OMP_WAIT_POLICY" in environ:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def torch_default_threads() -> int:
    """torch's thread count as it was before advtrain first set one."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    return _TORCH_DEFAULT[0]


def setup_threads(flag: object = None, recipe: object = None) -> ThreadChoice:
    """Choose the thread count for this process (see :func:`choose_threads`) and give it to torch."""
    facts = read_cpu_facts(torch_default=torch_default_threads())
    choice = choose_threads(flag=flag, recipe=recipe, omp_env=os.environ.get("OMP_NUM_THREADS"), facts=facts)
    apply_threads(choice)
    return choice


def apply_threads(choice: ThreadChoice) -> None:
    import torch

    torch_default_threads()
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
