"""The agent's configuration file, written by `up` and read by the agent."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..nodes import NodeSpec

FERRY_IMAGE_REPOSITORY = "ghcr.io/ferry-dev/ferry"
STORAGE_CLASS = "ferry-local"
PROVISIONER = "ferry.dev/local-dir"


@dataclass(frozen=True)
class AgentNode:
    """A node spec plus the kubeconfig of its own `system:node:<name>` identity."""

    spec: NodeSpec
    kubeconfig: str


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to know about the cluster it serves."""

    state_dir: str
    apiserver_port: int
    ca_file: str
    admin_kubeconfig: str
    kubelet_version: str
    marker: str
    nodes: list[AgentNode] = field(default_factory=list)
    image_repository: str = FERRY_IMAGE_REPOSITORY
    entrypoint: list[str] = field(default_factory=lambda: ["ferry"])
    pod_ip_prefix: str = "127.42"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        raw: dict[str, Any] = json.loads(path.read_text())
        nodes = [
            AgentNode(NodeSpec.parse(n["spec"]), n["kubeconfig"]) for n in raw.pop("nodes", [])
        ]
        return cls(nodes=nodes, **raw)
