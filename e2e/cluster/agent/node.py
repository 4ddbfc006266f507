"""Register one Node object and keep it Ready with a lease and status heartbeats."""

from __future__ import annotations

import logging
import os
import platform
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..nodes import NodeSpec
from .kube import MERGE, Obj, micro_now, now, raw

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
RENEW_EVERY = 10.0
STATUS_EVERY = 60.0
HOST_IP = "127.0.0.1"


def _conditions(ts: str, since: str) -> list[Obj]:
    def cond(kind: str, status: str, reason: str, message: str) -> Obj:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": ts,
            "lastTransitionTime": since,
        }

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "node agent"),
        cond("Ready", "True", "KubeletReady", "ferry local node agent is posting ready status"),
    ]


def _machine_id() -> str:
    try:
        with open("/etc/machine-id") as f:
            return f.read().strip()
    except OSError:
        return "ferry-local"


class NodeHeartbeat:
    """One node: creates it under its own `system:node:<name>` identity, then heartbeats."""

    def __init__(self, spec: NodeSpec, api: client.ApiClient, kubelet_version: str) -> None:
        self.spec = spec
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.kubelet_version = kubelet_version
        self.uid = ""
        self.since = now()

    def _status(self) -> Obj:
        ts = now()
        uname = platform.uname()
        return {
            "capacity": dict(self.spec.allocatable),
            "allocatable": dict(self.spec.allocatable),
            "conditions": _conditions(ts, self.since),
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": _machine_id(),
                "systemUUID": _machine_id(),
                "bootID": _machine_id(),
                "kernelVersion": uname.release,
                "osImage": "ferry local node agent",
                "containerRuntimeVersion": "ferry-local://0.1",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                    uname.machine, uname.machine
                ),
            },
        }

    def register(self) -> None:
        """Create the Node (labels and taints only settable at creation) or refresh it."""
        labels = {
            "kubernetes.io/hostname": self.spec.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": os.uname().machine.replace("x86_64", "amd64"),
            **self.spec.labels,
        }
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.spec.name, "labels": labels},
            "spec": {"taints": list(self.spec.taints)} if self.spec.taints else {},
            "status": self._status(),
        }
        try:
            created = raw(self.core.create_node, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            created = raw(self.core.read_node, self.spec.name)
            self._patch_status()
        self.uid = created["metadata"]["uid"]
        self._renew_lease()

    def _patch_status(self) -> None:
        self.core.patch_node_status(self.spec.name, {"status": self._status()}, _content_type=MERGE)

    def _renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.spec.name,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.spec.name, "uid": self.uid}
                ],
            },
            "spec": {
                "holderIdentity": self.spec.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": micro_now(),
            },
        }
        try:
            self.coord.patch_namespaced_lease(
                self.spec.name, "kube-node-lease", {"spec": body["spec"]}, _content_type=MERGE
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            raw(self.coord.create_namespaced_lease, "kube-node-lease", body)

    def run(self, stop: threading.Event) -> None:
        """Renew the lease every RENEW_EVERY seconds, post status every STATUS_EVERY."""
        since_status = 0.0
        while not stop.wait(RENEW_EVERY):
            try:
                self._renew_lease()
                since_status += RENEW_EVERY
                if since_status >= STATUS_EVERY:
                    self._patch_status()
                    since_status = 0.0
            except Exception as exc:  # keep heartbeating through apiserver hiccups
                log.warning("node %s: heartbeat failed: %s", self.spec.name, exc)
