"""Shared helpers: free ports, condition waits, process trees, the test Unix user."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

USER = "ferrytest"
PASSWORD = "ferry-test-pw-7Q"


class ServerError(RuntimeError):
    """A server could not be installed, configured or started."""


LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(
    cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    """Poll `cond` until true; fail early if `proc` died, or at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (walks /proc), so a stop takes per-connection children too."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL a server and every process it forked, then reap it."""
    if proc.poll() is not None:
        return
    pids = [*descendants(proc.pid), proc.pid]
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout)
    for p in pids:  # children reparented to init: wait until they are gone
        wait_until(partial(_gone, p), timeout, f"pid {p} exit")


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def ensure_user() -> pwd.struct_passwd:
    """The Unix test user sshd and smbd log in as (created once; password set every time)."""
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", USER], check=True)
        pw = pwd.getpwnam(USER)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
    return pw


def need(binary: str) -> str:
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        p = Path(d, binary)
        if p.exists():
            return str(p)
    raise ServerError(f"{binary} is not installed (run: bash tests/servers/install.sh)")


class ServerProcess:
    """What every test server shares: one process, a scratch dir, stop/restart/close."""

    proc: subprocess.Popen | None
    dir: Path

    def start(self, timeout: float = 30.0) -> ServerProcess:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
