"""Real nodes: containerd, kubelet and kube-proxy per cluster, pods in real containers.

Each node gets a containerd (its own root, state, socket and runc root) and a kubelet
(its own root directory, cgroup root, address and port); one kube-proxy serves them all,
since the nodes share one network namespace (`podnet`). Images are imported, never
pulled: the pause image and the Ferry image built from the Dockerfile (`e2e/node/`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import cgroups, fsutil, procs
from .layout import Layout
from .nodes import NodeSpec
from .podnet import PodNetwork

HERE = Path(__file__).resolve().parent
NODE_BUILD = HERE.parent / "node" / "build.sh"
IMAGE_BUILD = HERE.parent / "node" / "image.sh"
NAMESPACE = "k8s.io"  # containerd's namespace for CRI


def _last_line(argv: list[str]) -> Path:
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


@dataclass(frozen=True)
class Artifacts:
    """What the nodes run: binaries, the pause image, the Ferry image."""

    k8s_bin: Path
    node_dir: Path
    ferry_image: Path

    @classmethod
    def ensure(cls, k8s_bin: Path) -> Artifacts:
        node_dir = Path(os.environ.get("FERRY_NODE_DIR") or _last_line(["bash", str(NODE_BUILD)]))
        image = Path(
            os.environ.get("FERRY_IMAGE_ARCHIVE") or _last_line(["bash", str(IMAGE_BUILD)])
        )
        needed = (k8s_bin / "kubelet", k8s_bin / "kube-proxy", node_dir / "bin" / "containerd")
        for p in (*needed, node_dir / "pause.ref"):
            if not p.is_file():
                raise FileNotFoundError(p)
        return cls(k8s_bin, node_dir, image)

    @property
    def bin(self) -> Path:
        return self.node_dir / "bin"

    @property
    def pause_image(self) -> str:
        """The pause image's name, as e2e/node/build.sh tagged it."""
        return (self.node_dir / "pause.ref").read_text().strip()

    @property
    def pause_archive(self) -> Path:
        return self.node_dir / "pause.oci.tar"


@dataclass(frozen=True)
class NodePaths:
    """Everything one node keeps: images, configuration and logs under
    `<state>/nodes/<name>/`; what holds Unix sockets (containerd's state, kubelet's root
    directory) under `/var/lib/ferry-<id>/<name>/`, since a socket's path must stay within
    107 bytes, which a state dir in a test's tmp dir would not."""

    root: Path
    short: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.short / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.containerd_state / "runc"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni"

    @property
    def ipam(self) -> Path:
        return self.root / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.short / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"


def cgroup_name(layout: Layout) -> str:
    """The cluster's cgroup subtree, named after its state dir (one per cluster)."""
    return f"ferry-{PodNetwork.tag(layout.root)}"


def short_dir(layout: Layout) -> Path:
    """The cluster's directory with short paths (for Unix sockets), named after its state dir."""
    return Path("/var/lib") / f"ferry-{PodNetwork.tag(layout.root)}"


def node_paths(layout: Layout, name: str) -> NodePaths:
    return NodePaths(layout.nodes / name, short_dir(layout) / name)


def containerd_config(paths: NodePaths, pause_image: str) -> str:
    """containerd's config (version 4) for one node; JSON strings are valid TOML strings."""
    q = json.dumps
    return f"""version = 4
root = {q(str(paths.containerd_root))}
state = {q(str(paths.containerd_state))}
imports = []  # never the host's /etc/containerd
# A second containerd on this machine must not share NRI's socket; nothing here uses NRI.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[plugins.'io.containerd.server.v1.grpc']
  address = {q(str(paths.socket))}

[plugins.'io.containerd.server.v1.ttrpc']
  address = {q(str(paths.socket) + ".ttrpc")}

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = {q(pause_image)}

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE even from root: no oom_score_adj below ours.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {q(str(paths.runc_root))}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = {q(str(paths.cni_conf))}
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def kubelet_config(
    paths: NodePaths, node_ip: str, cgroup_root: str, ca_file: Path, taints: list[dict[str, str]]
) -> dict[str, object]:
    """KubeletConfiguration for one node of this machine (cgroup v1, cgroupfs, no swap)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": node_ip,
        "healthzPort": 10248,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        # This machine's hierarchy is cgroup v1; kubelet refuses it unless told otherwise.
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "podLogsDir": str(paths.pod_logs),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "registerWithTaints": [
            {"key": t["key"], "value": t.get("value", ""), "effect": t["effect"]} for t in taints
        ],
        # A shared, busy test disk: evict only when it is really full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(kubeconfig: Path, net: PodNetwork, hostname: str) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": hostname,
        "clusterCIDR": net.cidr,
        "bindAddress": net.node_ip(0),
        "healthzBindAddress": f"{net.node_ip(0)}:10256",
        "metricsBindAddress": f"{net.node_ip(0)}:10249",
        # The namespace's conntrack table is the kernel's to size, not kube-proxy's.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def _wait_socket(path: Path, rec: procs.Record, deadline: float) -> None:
    while not path.exists():
        if not procs.alive(rec):
            raise RuntimeError(f"{rec.name} exited; see {rec.log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rec.name} did not open {path}; see {rec.log}")
        time.sleep(0.1)


def import_images(art: Artifacts, paths: NodePaths) -> None:
    """The pause and Ferry images into the node's containerd (`k8s.io` namespace)."""
    for archive in (art.pause_archive, art.ferry_image):
        subprocess.run(
            [
                str(art.bin / "ctr"),
                "--address",
                str(paths.socket),
                "--namespace",
                NAMESPACE,
                "images",
                "import",
                "--platform=linux/amd64",
                str(archive),
            ],
            check=True,
            capture_output=True,
        )


@dataclass
class Launcher:
    """What starting a node needs from the control plane's `up`."""

    layout: Layout
    env: dict[str, str]
    net: PodNetwork
    art: Artifacts
    ca_file: Path
    node_kubeconfigs: dict[str, Path]
    proxy_kubeconfig: Path

    def _start(self, name: str, argv: list[str]) -> procs.Record:
        """In the pod network, with containerd's shim (and runc) on PATH."""
        env = {**self.env, "PATH": f"{self.art.bin}:{self.env.get('PATH', '')}"}
        return procs.start(
            self.layout.run, name, [*self.net.enter(), *argv], self.layout.logs / f"{name}.log", env
        )

    def start(self, nodes: list[NodeSpec], deadline: float) -> list[procs.Record]:
        recs = []
        cgroup_root = cgroups.create(cgroup_name(self.layout), [n.name for n in nodes])
        for i, node in enumerate(nodes):
            paths = node_paths(self.layout, node.name)
            for d in (paths.containerd_root, paths.containerd_state, paths.cni_conf, paths.ipam):
                d.mkdir(parents=True, exist_ok=True)
            (paths.root / "containerd.toml").write_text(
                containerd_config(paths, self.art.pause_image)
            )
            (paths.cni_conf / "10-ferry.conflist").write_text(
                json.dumps(self.net.cni_config(i, paths.ipam), indent=2)
            )
            rec = self._start(
                f"containerd-{node.name}",
                [str(self.art.bin / "containerd"), "--config", str(paths.root / "containerd.toml")],
            )
            recs.append(rec)
            _wait_socket(paths.socket, rec, deadline)
            import_images(self.art, paths)
            cfg = kubelet_config(
                paths,
                self.net.node_ip(i),
                f"{cgroup_root}/{node.name}",
                self.ca_file,
                node.taints,
            )
            (paths.root / "kubelet.json").write_text(json.dumps(cfg, indent=2))
            labels = ",".join(f"{k}={v}" for k, v in node.labels.items())
            recs.append(
                self._start(
                    f"kubelet-{node.name}",
                    [
                        str(self.art.k8s_bin / "kubelet"),
                        f"--config={paths.root / 'kubelet.json'}",
                        f"--kubeconfig={self.node_kubeconfigs[node.name]}",
                        f"--root-dir={paths.kubelet_root}",
                        f"--cert-dir={paths.root / 'kubelet-pki'}",
                        f"--hostname-override={node.name}",
                        f"--node-ip={self.net.node_ip(i)}",
                        *([f"--node-labels={labels}"] if labels else []),
                        "--v=1",
                    ],
                )
            )
        proxy_cfg = self.layout.root / "kube-proxy.json"
        proxy_cfg.write_text(
            json.dumps(kube_proxy_config(self.proxy_kubeconfig, self.net, nodes[0].name))
        )
        recs.append(
            self._start(
                "kube-proxy",
                [str(self.art.k8s_bin / "kube-proxy"), f"--config={proxy_cfg}", "--v=1"],
            )
        )
        return recs


def unmount_under(root: Path) -> list[str]:
    """Unmount everything at or below `root`, deepest first; returns what stayed mounted."""
    for point in sorted(set(fsutil.mounts_below(root)), key=lambda p: -p.count("/")):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
    return fsutil.mounts_below(root)


def stop(layout: Layout, net: PodNetwork | None) -> list[str]:
    """After the processes: containers, mounts, cgroups, network. Returns what is left."""
    left = cgroups.remove(cgroup_name(layout))
    left += unmount_under(layout.nodes) + unmount_under(short_dir(layout))
    if not left:
        fsutil.safe_rmtree(short_dir(layout))
    if net is not None:
        net.delete()
        left += net.leftovers()
    with contextlib.suppress(OSError):
        for link in Path("/var/log/containers").iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(layout.root)):
                link.unlink()
    return left
