"""The real nodes' network: one network namespace per cluster, holding every node's bridge.

Kubelets, containerd and kube-proxy run inside the namespace (entered with `nsenter
--net`, so they share the host's mounts); pods hang off one bridge per node. A veth pair
joins it to the host, which gets a route to the pod networks: the host's API server and
test servers are reachable from pods at `host_ip`, pods and kubelets from the host at
their own addresses, and nothing routes beyond this machine (the namespace's only
route leads to the host, which does not forward). kube-proxy's iptables rules live in
the namespace, so deleting it takes every device, address, route and rule with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

#: Where /16s for clusters are looked for; the first one no route or address touches wins.
CANDIDATES = [ipaddress.ip_network(f"10.{b}.0.0/16") for b in range(240, 255)]


def _ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def _in_use() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = entry.get("dst", "")
        if dst and dst != "default":
            used.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    for link in json.loads(_ip("-j", "-4", "addr") or "[]"):
        for a in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return used


@dataclass(frozen=True)
class PodNetwork:
    """Names and addresses of one cluster's node network."""

    netns: str
    host_veth: str
    cidr: str  # the cluster's /16: node i's pods in 10.b.i.0/24, the link in 10.b.255.0/30

    @staticmethod
    def tag(state_dir: Path) -> str:
        """A short name for a cluster, unique per state dir."""
        return hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]

    @classmethod
    def plan(cls, state_dir: Path) -> PodNetwork:
        tag = cls.tag(state_dir)
        used = _in_use()
        for net in CANDIDATES:
            if not any(net.overlaps(u) for u in used):
                return cls(f"ferry-{tag}", f"fy{tag}", str(net))
        raise RuntimeError(f"no free /16 among {CANDIDATES[0]}..{CANDIDATES[-1]} for pods")

    @property
    def _base(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    def _addr(self, third: int, fourth: int) -> str:
        return str(self._base.network_address + third * 256 + fourth)

    @property
    def host_ip(self) -> str:
        """The host's end of the link: pods reach the API server and test servers here."""
        return self._addr(255, 1)

    @property
    def ns_ip(self) -> str:
        return self._addr(255, 2)

    def pod_subnet(self, index: int) -> str:
        return f"{self._addr(index, 0)}/24"

    def node_ip(self, index: int) -> str:
        """Node `index`'s address: its bridge's gateway, where its kubelet serves."""
        return self._addr(index, 1)

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def enter(self) -> list[str]:
        """Argv prefix that runs a command in the namespace (network only)."""
        return ["nsenter", f"--net={self.netns_path}", "--"]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> PodNetwork:
        return cls(**json.loads(path.read_text()))

    def create(self, nodes: int) -> None:
        """Namespace, link, one bridge per node; undone by `delete` whatever step failed."""
        self.delete()
        ns, link = self.netns, f"{self.host_veth}n"
        _ip("netns", "add", ns)
        _ip("link", "add", self.host_veth, "type", "veth", "peer", "name", link, "netns", ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_veth)
        _ip("link", "set", self.host_veth, "up")
        _ip("route", "add", self.cidr, "via", self.ns_ip, "dev", self.host_veth)
        _ip("link", "set", "lo", "up", netns=ns)
        _ip("addr", "add", f"{self.ns_ip}/30", "dev", link, netns=ns)
        _ip("link", "set", link, "up", netns=ns)
        _ip("route", "add", "default", "via", self.host_ip, netns=ns)
        for i in range(nodes):
            br = f"fbr{i}"
            _ip("link", "add", br, "type", "bridge", netns=ns)
            _ip("addr", "add", f"{self.node_ip(i)}/24", "dev", br, netns=ns)
            _ip("link", "set", br, "up", netns=ns)
        sysctls = {
            "net.ipv4.ip_forward": "1",
            # Pod -> Service -> pod on one bridge needs the bridge's frames seen by iptables.
            "net.bridge.bridge-nf-call-iptables": "1",
        }
        for key, value in sysctls.items():
            subprocess.run(
                [*self.enter(), "sysctl", "-q", "-w", f"{key}={value}"],
                check=key == "net.ipv4.ip_forward",
                capture_output=True,
            )

    def delete(self) -> None:
        """Remove the namespace (and with it bridges, veths, rules) and the host's end."""
        if Path(self.netns_path).exists():
            _ip("netns", "del", self.netns, check=False)
        _ip("link", "del", self.host_veth, check=False)

    def leftovers(self) -> list[str]:
        """What `delete` should have removed and did not."""
        left = []
        if Path(self.netns_path).exists():
            left.append(f"netns {self.netns}")
        if _ip("link", "show", self.host_veth, check=False).strip():
            left.append(f"link {self.host_veth}")
        return left

    def cni_config(self, index: int, ipam_dir: Path) -> dict[str, object]:
        """The CNI conflist for node `index`: its bridge, addresses leased under `ipam_dir`."""
        return {
            "cniVersion": "1.0.0",
            "name": f"ferry-{index}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": f"fbr{index}",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(ipam_dir),
                        "ranges": [[{"subnet": self.pod_subnet(index)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
