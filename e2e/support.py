"""Helpers for cluster tests: a handle on the cluster under test and condition waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from e2e.cluster.layout import Layout
from tests.servers.common import LOOPBACK
from tests.strict import unavailable

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
FERRY_IMAGE = os.environ.get("FERRY_IMAGE", "ghcr.io/ferry-dev/ferry:dev")


class Timeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.2
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except ApiException as exc:
            if exc.status not in (404, 409, 429, 500, 503):
                raise
            last_exc = exc
        time.sleep(every)
    raise Timeout(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc})")


def local_claim(
    core: client.CoreV1Api, ns: str, name: str, modes: tuple[str, ...] = ("ReadWriteOnce",)
) -> Path:
    """A claim of the local StorageClass; returns its directory on this machine once bound
    (an external cluster's volumes are elsewhere: the test skips there)."""
    body = {
        "metadata": {"name": name},
        "spec": {
            "accessModes": list(modes),
            "storageClassName": "ferry-local",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    core.create_namespaced_persistent_volume_claim(ns, body)  # type: ignore[arg-type]

    def bound() -> str | None:
        pvc = core.read_namespaced_persistent_volume_claim(name, ns).to_dict()
        return pvc["spec"]["volume_name"] if pvc["status"]["phase"] == "Bound" else None

    pv = core.read_persistent_volume(wait_for(f"claim {name} bound", bound, timeout=60)).to_dict()
    source = pv["spec"].get("host_path") or pv["spec"].get("local") or {}
    path = Path(source.get("path") or "/nonexistent")
    if not path.is_dir():
        msg = "the cluster's volumes are not directories on this machine"
        if os.environ.get("FERRY_E2E_KUBECONFIG"):
            pytest.skip(msg)  # an external cluster was asked for: its volumes are elsewhere
        unavailable(msg)
    return path


def cluster_cli(
    *args: str, state_dir: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `python -m e2e.cluster ARGS` against `state_dir` (the way a developer would)."""
    return subprocess.run(
        [sys.executable, "-m", "e2e.cluster", *args, "--state-dir", str(state_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Cluster:
    """The cluster under test: the local one (`layout` set) or an external kubeconfig."""

    kubeconfig: Path
    layout: Layout | None
    bin_dir: Path | None

    @property
    def local(self) -> bool:
        return self.layout is not None

    @property
    def host_ip(self) -> str:
        """Where pods reach this machine's test servers: the host's end of the local
        cluster's pod network (loopback for an external cluster, e.g. kind: its pods
        cannot reach this machine's test servers at all)."""
        if self.layout is None or not self.layout.cluster_json.exists():
            return LOOPBACK
        return str(json.loads(self.layout.cluster_json.read_text()).get("hostIP", LOOPBACK))

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        exe = str(self.bin_dir / "kubectl") if self.bin_dir else "kubectl"
        return subprocess.run(
            [exe, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """Container output, through the log API (the API server asks the kubelet)."""
        with self.api() as api:
            text: str = client.CoreV1Api(api).read_namespaced_pod_log(
                pod, namespace, container=container
            )
            return text
