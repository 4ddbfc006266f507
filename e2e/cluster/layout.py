"""Where the local cluster keeps its state: one directory, every path named once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_state_dir() -> Path:
    """`$FERRY_CLUSTER_DIR`, else `~/.cache/ferry/cluster` (outside any work tree)."""
    env = os.environ.get("FERRY_CLUSTER_DIR")
    if env:
        return Path(env).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "ferry" / "cluster").resolve()


@dataclass(frozen=True)
class Layout:
    """Paths under one state directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        """Component logs: `<component>.log`."""
        return self.root / "logs"

    @property
    def volumes(self) -> Path:
        """Data root of the `ferry-local` provisioner: one directory per PV."""
        return self.root / "volumes"

    @property
    def run(self) -> Path:
        """Pid records of everything `up` started."""
        return self.root / "run"

    @property
    def podnet(self) -> Path:
        """The pod network's names and addresses, for `down`."""
        return self.root / "podnet.json"

    @property
    def nodes(self) -> Path:
        """Real nodes' state: `nodes/<name>/` (containerd, kubelet, CNI)."""
        return self.root / "nodes"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def cluster_json(self) -> Path:
        """Facts about the running cluster (ports, versions) for `status` and tests."""
        return self.root / "cluster.json"
