"""The host readers against cgroup v1 and v2 layouts of real files, this machine's
own values, and the sizing table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.mover import host
from ferry.mover.options import GiB, MiB

MEMINFO = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n"


def lay_out(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"proc/meminfo": MEMINFO, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cgroup_v2_in_a_namespace(tmp_path: Path) -> None:
    root = lay_out(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/memory.max": "536870912\n",
        },
    )
    assert host.cgroup_cpu_limit(root) == 1.5
    assert host.cgroup_memory_limit(root) == 512 * MiB
    h = host.read_host(root, env={})
    assert h.cores == min(1.5, len(os.sched_getaffinity(0)))
    assert (h.memory, h.memory_from) == (512 * MiB, "cgroup memory limit")


def test_cgroup_v2_own_path_and_no_limits(tmp_path: Path) -> None:
    root = lay_out(
        tmp_path,
        {
            "proc/self/cgroup": "0::/kubepods/pod1/c1\n",
            "sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000\n",
            "sys/fs/cgroup/kubepods/pod1/c1/memory.max": "max\n",
            "sys/fs/cgroup/memory.max": "1048576\n",  # a parent's: not this process's
        },
    )
    assert host.cgroup_cpu_limit(root) is None
    assert host.cgroup_memory_limit(root) is None
    h = host.read_host(root, env={})
    assert (h.memory, h.memory_from) == (16384000 * 1024, "physical memory")
    assert h.cores == len(os.sched_getaffinity(0)) and h.cores_from == "cpu affinity"


def test_cgroup_v1_hybrid(tmp_path: Path) -> None:
    root = lay_out(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/job/7\n2:cpu,cpuacct:/job/7\n0::/\n",
            "sys/fs/cgroup/cpu,cpuacct/job/7/cpu.cfs_quota_us": "50000\n",
            "sys/fs/cgroup/cpu,cpuacct/job/7/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/job/7/memory.limit_in_bytes": str(2 * GiB),
        },
    )
    assert host.cgroup_cpu_limit(root) == 0.5
    assert host.cgroup_memory_limit(root) == 2 * GiB
    assert host.read_host(root, env={}).cores == 0.5


def test_cgroup_v1_unlimited(tmp_path: Path) -> None:
    root = lay_out(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/\n1:cpu:/\n",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    assert host.cgroup_cpu_limit(root) is None
    assert host.cgroup_memory_limit(root) is None  # v1's "no limit": above physical memory


def test_downward_api_limits_win(tmp_path: Path) -> None:
    root = lay_out(tmp_path, {"sys/fs/cgroup/cpu.max": "400000 100000\n"})
    env = {host.CPU_ENV: "1500", host.MEMORY_ENV: str(768 * MiB)}
    h = host.read_host(root, env=env)
    assert (h.cores, h.cores_from) == (1.5, "pod limits.cpu")
    assert (h.memory, h.memory_from) == (768 * MiB, "pod limits.memory")
    garbage = host.read_host(root, env={host.CPU_ENV: "lots", host.MEMORY_ENV: "-5"})
    assert garbage.cores_from != "pod limits.cpu" and garbage.memory == 16384000 * 1024


def test_this_machine() -> None:
    h = host.read_host()
    assert h.cores >= 0.01 and h.cores <= (os.cpu_count() or 1)
    assert h.memory >= 64 * MiB
    physical = host.physical_memory()
    assert physical is not None and h.memory <= physical


@pytest.mark.parametrize(
    ("cores", "memory", "kind", "worker", "transfers", "in_flight"),
    [
        (2, 16 * GiB, "local", 2 * MiB, 8, 1 * GiB),  # 4 a core to a disk
        (2, 16 * GiB, "s3", 10 * MiB, 16, 1 * GiB),  # 8 a core to remote storage
        (0.5, 16 * GiB, "local", 2 * MiB, 2, 1 * GiB),  # never fewer than 2
        (32, 64 * GiB, "ferry", 2 * MiB, 64, 1 * GiB),  # never more than 64
        (4, 256 * MiB, "local", 2 * MiB, 16, 64 * MiB),  # a quarter of the memory
        (4, 128 * MiB, "s3", 10 * MiB, 3, 32 * MiB),  # memory caps workers: 32M / 10M
        (4, 32 * MiB, "sftp", 2 * MiB, 8, 16 * MiB),  # the bound's floor
        (1, 1 * GiB, "smb", 32 * MiB, 8, 256 * MiB),
    ],
)
def test_sizing(
    cores: float, memory: int, kind: str, worker: int, transfers: int, in_flight: int
) -> None:
    s = host.sizing(cores, memory, kind, worker)
    assert (s.transfers, s.max_in_flight_bytes) == (transfers, in_flight)
    assert s.streams == transfers
    assert s.transfers * worker <= s.max_in_flight_bytes or s.transfers == 1
