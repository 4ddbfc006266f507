"""Pod status documents as the kubelet writes them (pure functions, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .kube import Obj

HOST_IP = "127.0.0.1"


def image_repository(image: str) -> str:
    """`ghcr.io/ferry-dev/ferry:dev@sha256:...` -> `ghcr.io/ferry-dev/ferry`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass
class ContainerState:
    """What the agent knows about one container; rendered into a ContainerStatus."""

    name: str
    image: str
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restarts: int = 0
    pid: int | None = None

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> Obj | None:
        term: Obj | None = self.state.get("terminated")
        return term

    def render(self) -> Obj:
        doc: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"{image_repository(self.image)}@local",
            "ready": self.running,
            "started": self.running,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.pid is not None:
            doc["containerID"] = f"ferry-local://{self.pid}"
        return doc


def _condition(kind: str, ok: bool, old: dict[str, Obj], ts: str, reason: str = "") -> Obj:
    status = "True" if ok else "False"
    prev = old.get(kind)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status else ts
    doc = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
    if reason and not ok:
        doc["reason"] = reason
    return doc


def render(
    pod: Obj,
    phase: str,
    pod_ip: str | None,
    start_time: str | None,
    init: list[ContainerState],
    main: list[ContainerState],
    initialized: bool,
    ts: str,
    message: str = "",
    reason: str = "",
) -> Obj:
    """The full status for a merge patch; conditions of other owners are kept."""
    old = {c["type"]: c for c in pod.get("status", {}).get("conditions", []) or []}
    ready = bool(main) and all(c.running for c in main) and phase == "Running"
    ready_reason = {"Succeeded": "PodCompleted", "Failed": "PodFailed"}.get(
        phase, "ContainersNotReady"
    )
    mine = [
        _condition("PodReadyToStartContainers", pod_ip is not None, old, ts),
        _condition("Initialized", initialized, old, ts, "ContainersNotInitialized"),
        _condition("ContainersReady", ready, old, ts, ready_reason),
        _condition("Ready", ready, old, ts, ready_reason),
    ]
    kinds = {c["type"] for c in mine}
    conditions = [c for c in old.values() if c["type"] not in kinds] + mine
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "containerStatuses": [c.render() for c in main],
        "qosClass": pod.get("status", {}).get("qosClass", "BestEffort"),
    }
    if init:
        status["initContainerStatuses"] = [c.render() for c in init]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if start_time:
        status["startTime"] = start_time
    status["message"] = message or None
    status["reason"] = reason or None
    return status
