"""Which nodes the cluster runs: names, labels, taints (one kubelet each).

Configured as JSON (a list of objects with those keys) through `--nodes FILE`
or `$FERRY_CLUSTER_NODES`, so tests can model node pools.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class NodeSpec:
    """One node: a kubelet and its containerd."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> NodeSpec:
        unknown = set(raw) - {"name", "labels", "taints"}
        if unknown:
            # A kubelet reports what the machine has: nothing else is configurable here.
            raise ValueError(f"node {raw.get('name')!r}: unknown keys {sorted(unknown)}")
        return cls(
            name=str(raw["name"]),
            labels={str(k): str(v) for k, v in raw.get("labels", {}).items()},
            taints=[{str(k): str(v) for k, v in t.items()} for t in raw.get("taints", [])],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: Two pools: a general one, and a tainted "bulk" pool pods must tolerate to land on.
DEFAULT_NODES = [
    {"name": "ferry-node-0", "labels": {"ferry.dev/pool": "general"}},
    {
        "name": "ferry-node-1",
        "labels": {"ferry.dev/pool": "bulk"},
        "taints": [{"key": "ferry.dev/pool", "value": "bulk", "effect": "NoSchedule"}],
    },
]


def load(path: Path | None = None) -> list[NodeSpec]:
    """Node specs from `path`, else `$FERRY_CLUSTER_NODES`, else DEFAULT_NODES."""
    if path is not None:
        raw = json.loads(path.read_text())
    elif os.environ.get("FERRY_CLUSTER_NODES"):
        raw = json.loads(os.environ["FERRY_CLUSTER_NODES"])
    else:
        raw = DEFAULT_NODES
    specs = [NodeSpec.parse(r) for r in raw]
    if not specs or len({s.name for s in specs}) != len(specs):
        raise ValueError("need at least one node and unique node names")
    return specs
