"""A cgroup subtree per cluster, one child per node, for kubelet's `cgroupRoot`.

The host's hierarchy is cgroup v1 (cgroupfs, no systemd): its mounts are never changed;
a cluster only creates `/<name>/<node>` in every mounted v1 hierarchy (kubelet insists its
root exists in each), and `remove` kills what is left inside and removes the directories.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def hierarchies() -> list[Path]:
    """Mount points of the v1 hierarchies (named ones like `name=systemd` included)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if fstype == "cgroup" and point.startswith(f"{ROOT}/"):
            found.append(Path(point))
    return found


def _inherit_cpuset(d: Path) -> None:
    """cpuset children start empty; a task can only join one with cpus and mems set."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        (d / name).write_text((d.parent / name).read_text())


def create(name: str, nodes: list[str]) -> str:
    """Make `/<name>/<node>` everywhere; returns the cgroup path of `name`."""
    for h in hierarchies():
        for d in (h / name, *(h / name / n for n in nodes)):
            d.mkdir(exist_ok=True)
            if (d / "cpuset.cpus").exists():
                _inherit_cpuset(d)
    return f"/{name}"


def _tasks(d: Path) -> list[int]:
    pids: list[int] = []
    for f in d.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in f.read_text().split()]
    return pids


def remove(name: str, deadline_s: float = 10.0) -> list[str]:
    """Kill every process left under `/<name>`, remove its cgroups; returns what stayed."""
    left = []
    for h in hierarchies():
        top = h / name
        if not top.exists():
            continue
        deadline = time.monotonic() + deadline_s
        while (pids := _tasks(top)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
        if top.exists():
            left.append(str(top))
    return left
