"""Starting and stopping one container process inside its sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from ..layout import Layout
from ..procs import MARKER
from .config import AgentConfig
from .kube import api_client

SANDBOX = Path(__file__).with_name("sandbox.py")


def venv_bin() -> str:
    """The bin dir of the Python running the agent (the repo venv): first on PATH in pods."""
    return str(Path(sys.executable).parent)


def checkout() -> str:
    """The Ferry checkout this agent runs from: the "image" holds its code.

    First on PYTHONPATH in pods, so they run this checkout even when the venv's editable
    install points at another one (a git worktree sharing the venv).
    """
    return str(Path(__file__).resolve().parents[3])


def protected_paths() -> list[str]:
    """Host paths the container's "image" lives in (venv, base Python, this checkout).

    A pod's private /tmp or a volume mounted at one of them or an ancestor would hide
    the Python that runs the container; the sandbox binds them back on top.
    """
    return sorted({sys.prefix, sys.base_prefix, checkout()})


class Ipam:
    """Pod IPs from <prefix>.0.2 upwards on loopback; never reused while the agent lives."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.next = 2
        self.taken: set[str] = set()
        self.lock = threading.Lock()

    def reserve(self, ip: str) -> None:
        with self.lock:
            self.taken.add(ip)

    def allocate(self) -> str:
        with self.lock:
            while True:
                n, self.next = self.next, self.next + 1
                if n % 256 in (0, 255):
                    continue
                ip = f"{self.prefix}.{(n >> 8) & 255}.{n & 255}"
                if ip not in self.taken:
                    self.taken.add(ip)
                    return ip


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    file: bool


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one container process."""

    hostname: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    working_dir: str | None
    uid: int | None
    gid: int | None


class Runtime:
    """Shared agent services: config, layout, IPs, and process start/stop."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.layout = Layout(Path(cfg.state_dir))
        self.ipam = Ipam(cfg.pod_ip_prefix)
        self.venv_bin = venv_bin()
        self._admin: client.CoreV1Api | None = None

    @property
    def admin(self) -> client.CoreV1Api:
        """Cluster-admin client for infrastructure writes a node identity may not make."""
        if self._admin is None:
            self._admin = client.CoreV1Api(api_client(self.cfg.admin_kubeconfig))
        return self._admin

    def start(
        self, pod_dir: Path, container: str, launch: Launch, log: Path
    ) -> subprocess.Popen[bytes]:
        """Spawn the sandbox for one container; its output appends to `log`."""
        cdir = pod_dir / "containers" / container
        for sub in ("root", "shadow", "tmp"):
            (cdir / sub).mkdir(parents=True, exist_ok=True)
        (cdir / "tmp").chmod(0o1777)
        spec = {
            "hostname": launch.hostname,
            "root": str(cdir / "root"),
            "shadow": str(cdir / "shadow"),
            "tmp": str(cdir / "tmp"),
            "runtime": protected_paths(),
            "mounts": [
                {"source": m.source, "target": m.target, "readOnly": m.read_only, "file": m.file}
                for m in launch.mounts
            ],
            "workingDir": launch.working_dir,
            "argv": launch.argv,
            "env": launch.env,
            "uid": launch.uid,
            "gid": launch.gid,
        }
        spec_path = cdir / "sandbox.json"
        spec_path.write_text(json.dumps(spec))
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", ""), MARKER: self.cfg.marker}
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-I", "-S", str(SANDBOX), str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
                close_fds=True,
            )


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the container's whole process group (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
