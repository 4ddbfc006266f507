"""What this host gives a mover (usable cores, memory limit) and the defaults that follow.

Used when neither a flag nor a profile sets workers or the in-flight bound. Every reader takes
the filesystem root as a parameter, so tests lay out cgroupfs (v1 or v2) in a directory of
real files. In a pod the operator passes the container's limits through the downward API
(CPU_ENV in millicores, MEMORY_ENV in bytes; without a limit Kubernetes gives the node's
allocatable): those win over what the cgroup files say.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ferry.mover.options import GiB, MiB

CPU_ENV = "FERRY_CPU_LIMIT_MILLICORES"
MEMORY_ENV = "FERRY_MEMORY_LIMIT_BYTES"

# Kinds whose every request waits on a network round trip (or a server's disk): more workers
# than cores keep the link full. A local disk is driven by the kernel: a few per core.
REMOTE_KINDS = frozenset({"s3", "ferry", "sftp", "smb"})
PER_CORE = {"local": 4, "remote": 8}
MIN_TRANSFERS, MAX_TRANSFERS = 2, 64
# A mover plans to hold at most this fraction of its memory limit in file data in flight
# (the rest: Python, the plan, the listing, the backends' own buffers).
MEMORY_FRACTION = 4
MIN_IN_FLIGHT, MAX_IN_FLIGHT = 16 * MiB, 1 * GiB


@dataclass(frozen=True, slots=True)
class Host:
    cores: float  # usable CPUs (a cgroup quota may make it fractional)
    memory: int  # bytes the mover may use
    cores_from: str  # where the numbers came from, for the run's report
    memory_from: str


@dataclass(frozen=True, slots=True)
class Sizing:
    transfers: int
    streams: int
    max_in_flight_bytes: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_dirs(root: Path, controller: str) -> list[Path]:
    """The cgroup directories that may hold this process's `controller` files, own first:
    /proc/self/cgroup names the path (v2: `0::/path`, v1: `N:cpu,cpuacct:/path`); inside a
    container's cgroup namespace that is `/` and the files sit at the mount point."""
    text = _read(root / "proc/self/cgroup") or ""
    base = root / "sys/fs/cgroup"
    dirs: list[Path] = []
    for line in text.splitlines():
        _, ctrls, path = [*line.split(":", 2), "", ""][:3]
        rel = path.lstrip("/")
        if ctrls == "" and controller in ("cpu", "memory"):  # v2 unified
            dirs.append(base / rel)
        elif controller in ctrls.split(","):
            dirs.append(base / ctrls / rel)
            dirs.append(base / controller / rel)
    dirs += [base, base / controller]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i]]


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """CPUs the cgroup quota allows (v2 cpu.max, v1 cfs_quota_us/cfs_period_us), None if none."""
    for d in _cgroup_dirs(root, "cpu"):
        v2 = _read(d / "cpu.max")
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota == "max":
                return None
            return _ratio(quota, period or "100000")
        v1 = _read(d / "cpu.cfs_quota_us")
        if v1 is not None:
            if v1.startswith("-"):
                return None
            return _ratio(v1, _read(d / "cpu.cfs_period_us") or "100000")
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_memory_limit(root: Path = Path("/")) -> int | None:
    """The cgroup memory limit (v2 memory.max, v1 memory.limit_in_bytes), None if none. A
    v1 "no limit" is a huge number (page-rounded 2**63): anything above physical memory."""
    for d in _cgroup_dirs(root, "memory"):
        text = _read(d / "memory.max") or _read(d / "memory.limit_in_bytes")
        if text is None:
            continue
        if text == "max" or not text.isdigit():
            return None
        limit = int(text)
        physical = physical_memory(root)
        return None if physical and limit >= physical else limit
    return None


def physical_memory(root: Path = Path("/")) -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _env_number(env: dict[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def read_host(root: Path = Path("/"), env: dict[str, str] | None = None) -> Host:
    """This host's usable cores and memory: the downward API's limits if given, else the
    smallest of the CPU affinity and the cgroup quota, and the cgroup memory limit or else
    physical memory."""
    env = dict(os.environ) if env is None else env
    cores: float
    millicores = _env_number(env, CPU_ENV)
    if millicores is not None:
        cores, cores_from = millicores / 1000, "pod limits.cpu"
    else:
        cores, cores_from = float(len(os.sched_getaffinity(0))), "cpu affinity"
        quota = cgroup_cpu_limit(root)
        if quota is not None and quota < cores:
            cores, cores_from = quota, "cgroup cpu quota"
    memory = _env_number(env, MEMORY_ENV)
    memory_from = "pod limits.memory"
    if memory is None:
        memory, memory_from = cgroup_memory_limit(root), "cgroup memory limit"
    if memory is None:
        memory, memory_from = physical_memory(root), "physical memory"
    if memory is None:
        memory, memory_from = 1 * GiB, "unknown (assumed 1 GiB)"
    return Host(cores=cores, memory=memory, cores_from=cores_from, memory_from=memory_from)


def sizing(cores: float, memory: int, dest_kind: str, worker_bytes: int) -> Sizing:
    """Workers, ferry:// streams and the in-flight bound for this host and destination.

    Workers: PER_CORE per usable core (more for a remote destination, whose workers mostly
    wait), within MIN..MAX_TRANSFERS, and no more than the in-flight bound holds at
    `worker_bytes` each (the piece a worker streams, plus the chunk a writer that buffers
    chunks holds). In-flight: 1/MEMORY_FRACTION of the memory, within MIN..MAX_IN_FLIGHT."""
    per_core = PER_CORE["remote" if dest_kind in REMOTE_KINDS else "local"]
    in_flight = max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, memory // MEMORY_FRACTION))
    transfers = max(MIN_TRANSFERS, min(MAX_TRANSFERS, math.ceil(cores * per_core)))
    transfers = max(1, min(transfers, in_flight // max(1, worker_bytes)))
    return Sizing(transfers=transfers, streams=min(transfers, 64), max_in_flight_bytes=in_flight)
