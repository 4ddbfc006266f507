"""Start detached component processes and stop them again, leaving nothing behind.

Every process `up` starts runs in its own session (so a whole process group can
be signalled) and carries the marker variable `FERRY_LOCAL_CLUSTER=<state dir>`
in its environment (containerd passes it on to its shims).
`down` signals the recorded groups, then sweeps /proc for any process still
carrying the marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "FERRY_LOCAL_CLUSTER"


@dataclass(frozen=True)
class Record:
    """A started process: enough to find it again and to not kill a recycled pid."""

    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log: str


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot, or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(rec: Record) -> bool:
    """True while the recorded process (not a recycled pid) still runs."""
    return _start_ticks(rec.pid) == rec.start_ticks


def start(
    run_dir: Path,
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str],
    cwd: Path | None = None,
) -> Record:
    """Launch `argv` in a new session with output appended to `log`; record it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    ticks = _start_ticks(proc.pid)
    rec = Record(name, proc.pid, ticks if ticks is not None else -1, argv, str(log))
    (run_dir / f"{name}.json").write_text(json.dumps(asdict(rec)))
    return rec


def records(run_dir: Path) -> list[Record]:
    """The recorded processes, in start order."""
    out = []
    for path in run_dir.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(Record(**json.loads(path.read_text())))
    return sorted(out, key=lambda r: r.start_ticks)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(rec: Record, grace: float) -> None:
    """SIGTERM the process group, wait up to `grace` seconds, then SIGKILL it."""
    if alive(rec):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(rec) and time.monotonic() < deadline:
            _reap(rec.pid)
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pid, signal.SIGKILL)
    _reap(rec.pid)


def marked(value: str) -> list[int]:
    """Pids of live processes whose environment carries MARKER=value."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and _start_ticks(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def sweep(value: str, deadline_s: float = 5.0) -> list[int]:
    """SIGKILL every process carrying the marker until none is left; return what was hit."""
    hit: list[int] = []
    deadline = time.monotonic() + deadline_s
    while True:
        pids = marked(value)
        if not pids or time.monotonic() > deadline:
            return hit
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
            hit.append(pid)
        time.sleep(0.05)
