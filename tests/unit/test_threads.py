"""The thread-count decision (pure, on fake CPU facts) and the cgroup readers (on a fake /sys and /proc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advtrain.errors import UserError
from advtrain.runtime import threads as th
from advtrain.runtime.threads import CpuFacts, choose_threads, usable_cpus


def facts(cpu_count=64, affinity=64, quota=None, torch_default=32) -> CpuFacts:
    return CpuFacts(cpu_count=cpu_count, affinity=affinity, quota=quota, torch_default=torch_default)


@pytest.mark.parametrize(("given", "expected", "reason"), [
    (facts(), 32, "torch's default"),  # hyper-threads: torch's physical-core count is the bound
    (facts(affinity=4), 4, "affinity"),  # taskset -c 0-3
    (facts(quota=2.0), 2, "quota 2"),  # docker --cpus=2 on a 64-core host
    (facts(quota=1.5), 1, "quota 1.5"),  # a fractional quota rounds down
    (facts(quota=0.25), 1, "quota 0.25"),  # never below one thread
    (facts(affinity=3, quota=8.0), 3, "affinity"),
    (facts(cpu_count=None, affinity=None, quota=None, torch_default=None), 1, "no CPU count"),
    (facts(cpu_count=2, affinity=None, quota=None, torch_default=None), 2, "2 CPUs"),
])
def test_auto_takes_the_tightest_bound(given, expected, reason):
    count, why = usable_cpus(given)
    assert count == expected
    assert reason in why
    choice = choose_threads(facts=given)
    assert (choice.threads, choice.source) == (expected, "auto")


def test_precedence_flag_then_recipe_then_omp_then_auto():
    f = facts(affinity=8)
    assert choose_threads(flag="3", recipe="5", omp_env="7", facts=f).source == "--threads"
    assert choose_threads(flag="3", recipe="5", omp_env="7", facts=f).threads == 3
    assert (choose_threads(flag="auto", recipe="5", omp_env="7", facts=f).threads, "runtime.threads") == \
        (5, choose_threads(flag=None, recipe="5", facts=f).source)
    omp = choose_threads(flag=None, recipe="auto", omp_env="7", facts=f)
    assert (omp.threads, omp.source) == (7, "OMP_NUM_THREADS")
    assert choose_threads(recipe="auto", omp_env="4,2", facts=f).threads == 4  # nested levels: the first
    assert choose_threads(recipe="auto", omp_env="", facts=f).source == "auto"  # empty = unset
    assert choose_threads(recipe=6, facts=f).threads == 6  # an integer as YAML wrote it


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", "99999"])
def test_bad_counts_name_where_they_came_from(bad):
    with pytest.raises(UserError, match="--threads"):
        choose_threads(flag=bad, facts=facts())
    with pytest.raises(UserError, match="runtime.threads"):
        choose_threads(recipe=bad, facts=facts())


@pytest.mark.parametrize("bad", ["0", "x", "-2", "2.5"])
def test_bad_omp_num_threads_is_a_user_error(bad):
    with pytest.raises(UserError, match="OMP_NUM_THREADS"):
        choose_threads(omp_env=bad, facts=facts())


def test_describe_says_count_source_and_reason():
    assert choose_threads(facts=facts(quota=2.0)).describe() == "2 threads (auto: cgroup CPU quota 2)"
    assert choose_threads(flag="1", facts=facts()).describe() == "1 thread (--threads)"


@pytest.mark.parametrize(("text", "cpus"), [("max 100000\n", None), ("150000 100000\n", 1.5),
                                            ("200000 100000", 2.0), ("", None), ("garbage", None),
                                            ("0 100000", None)])
def test_parse_cpu_max(text, cpus):
    assert th.parse_cpu_max(text) == cpus


def test_parse_cfs():
    assert th.parse_cfs("-1\n", "100000\n") is None
    assert th.parse_cfs("50000", "100000") == 0.5
    assert th.parse_cfs(None, "100000") is None
    assert th.parse_cfs("x", "100000") is None


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_nested_limits_take_the_smallest(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "0::/user.slice/job\n")
    _write(tmp_path, "sys/fs/cgroup/user.slice/job/cpu.max", "max 100000\n")
    _write(tmp_path, "sys/fs/cgroup/user.slice/cpu.max", "300000 100000\n")
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000\n")
    assert th.read_quota(tmp_path) == 3.0


def test_cgroup_v2_namespace_root(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "0::/\n")
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "150000 100000\n")
    assert th.read_quota(tmp_path) == 1.5


def test_cgroup_v1_cfs_quota(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n")
    _write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    _write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert th.read_quota(tmp_path) == 2.0


def test_cgroup_files_absent_or_unreadable(tmp_path):
    assert th.read_quota(tmp_path) is None  # neither /proc nor /sys
    _write(tmp_path, "proc/self/cgroup", "0::/../../etc\n")  # a path cannot climb out of the cgroup mount
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    assert th.read_quota(tmp_path) is None
    f = th.read_cpu_facts(tmp_path, torch_default=2)
    assert f.quota is None and f.torch_default == 2


def test_passive_wait_respects_the_users_choice():
    env: dict[str, str] = {}
    assert th.prefer_passive_wait(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not th.prefer_passive_wait(env) and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_setup_threads_gives_torch_the_count(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert th.setup_threads(flag="1").threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
