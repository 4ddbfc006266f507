"""Bring the local cluster up, take it down, report its state.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the volume
provisioner run as detached processes with free ports (the API server on every
address, so the nodes' network reaches it), then the real nodes (`realnode`);
`down` stops them all (process groups, then a /proc sweep for the marker
variable) and removes what the nodes left.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import binaries, bootstrap, fsutil, kubeconfig, procs, realnode
from .health import wait_http_ok
from .layout import Layout
from .nodes import NodeSpec
from .pki import APISERVER_DNS, CertAuthority, Pair, service_account_keys
from .podnet import PodNetwork

K8S_VERSION = "v1.37.0"
SERVICE_CIDR = "10.0.0.0/24"  # allocated by the apiserver, never contacted
ISSUER = "https://kubernetes.default.svc.cluster.local"
#: The checkout holding this package; the provisioner runs as `python -m e2e.cluster.provisioner`.
REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "provisioner")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def pick(cls) -> Ports:
        seen: set[int] = set()
        picked: list[int] = []
        while len(picked) < 5:
            p = free_port()
            if p not in seen:
                seen.add(p)
                picked.append(p)
        return cls(*picked)


def _env(layout: Layout) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env[procs.MARKER] = str(layout.root)
    return env


def _alive(rec: procs.Record) -> Callable[[], bool]:
    return lambda: procs.alive(rec)


def _all_alive(recs: list[procs.Record]) -> Callable[[], bool]:
    return lambda: all(procs.alive(r) for r in recs)


def _venv_python() -> str:
    return sys.executable


def _pki(layout: Layout, nodes: list[NodeSpec], extra_ips: tuple[str, ...] = ()) -> dict[str, Pair]:
    ca = CertAuthority(layout.pki)
    front_proxy = CertAuthority(layout.pki / "front-proxy")
    pairs = {
        "ca": ca.pair,
        "apiserver": ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=APISERVER_DNS,
            ips=("127.0.0.1", "10.0.0.1", *extra_ips),
        ),
        "admin": ca.issue("admin", "kubernetes-admin", ("system:masters",)),
        # The API server's identity towards kubelets (logs, exec, port-forward), as kubeadm's.
        "apiserver-kubelet-client": ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
        ),
        # Bound to system:node-proxier by the default RBAC policy.
        "kube-proxy": ca.issue("kube-proxy", "system:kube-proxy"),
        # Client identity and loopback serving certificate in one, so /healthz verifies.
        "controller-manager": ca.issue(
            "controller-manager",
            "system:kube-controller-manager",
            server=True,
            dns=("localhost",),
            ips=("127.0.0.1",),
        ),
        "scheduler": ca.issue(
            "scheduler",
            "system:kube-scheduler",
            server=True,
            dns=("localhost",),
            ips=("127.0.0.1",),
        ),
        "front-proxy-ca": front_proxy.pair,
        "front-proxy-client": front_proxy.issue("front-proxy-client", "front-proxy-client"),
        "sa": service_account_keys(layout.pki),
    }
    for n in nodes:
        pairs[f"node-{n.name}"] = ca.issue(
            f"node-{n.name}", f"system:node:{n.name}", ("system:nodes",)
        )
    return pairs


def _reset(layout: Layout) -> None:
    """Fresh cluster state; a previous run's logs move to logs.prev for post-mortems."""
    for d in (
        layout.etcd_data,
        layout.nodes,
        layout.volumes,
        layout.run,
        layout.pki,
    ):
        fsutil.safe_rmtree(d)
    prev = layout.root / "logs.prev"
    fsutil.safe_rmtree(prev)
    if layout.logs.exists():
        layout.logs.rename(prev)
    for d in (
        layout.root,
        layout.pki,
        layout.logs,
        layout.run,
        layout.volumes,
    ):
        d.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o700)


def up(layout: Layout, nodes: list[NodeSpec], timeout: float = 120.0) -> dict[str, Any]:
    """Start everything and wait until the cluster can run pods; returns cluster facts."""
    if running(layout) and healthy(layout):
        current: dict[str, Any] = json.loads(layout.cluster_json.read_text())
        return current
    down(layout)
    bin_dir = binaries.ensure()
    art = realnode.Artifacts.ensure(bin_dir)
    t0 = time.monotonic()  # builds (minutes, once) are not part of the start-up budget
    _reset(layout)
    ports = Ports.pick()
    net = PodNetwork.plan(layout.root)
    net.save(layout.podnet)
    net.create(len(nodes))
    pairs = _pki(layout, nodes, (net.host_ip,))
    ca = pairs["ca"].cert
    server = f"https://127.0.0.1:{ports.apiserver}"
    # Kubelets and pods live in the pod network's namespace: they reach the host there.
    node_server = f"https://{net.host_ip}:{ports.apiserver}"
    kc = {
        name: kubeconfig.write(layout.pki / f"{name}.kubeconfig", server, ca, pairs[name], user)
        for name, user in (
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        )
    }
    admin_kc = kubeconfig.write(layout.kubeconfig, server, ca, pairs["admin"], "kubernetes-admin")
    env = _env(layout)
    deadline = t0 + timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    def launch(name: str, argv: list[str]) -> procs.Record:
        return procs.start(layout.run, name, argv, layout.logs / f"{name}.log", env, cwd=REPO)

    etcd_url = f"http://127.0.0.1:{ports.etcd}"
    peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
    rec = launch(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=ferry-local",
            f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=ferry-local={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    wait_http_ok("etcd", f"{etcd_url}/health", left(), alive=_alive(rec))

    pki = layout.pki
    rec = launch(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            # Pods reach the `kubernetes` Service (kube-proxy) at the host's end of their link.
            "--bind-address=0.0.0.0",
            f"--advertise-address={net.host_ip}",
            f"--kubelet-client-certificate={pairs['apiserver-kubelet-client'].cert}",
            f"--kubelet-client-key={pairs['apiserver-kubelet-client'].key}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={pairs['apiserver'].cert}",
            f"--tls-private-key-file={pairs['apiserver'].key}",
            f"--client-ca-file={ca}",
            # The aggregation layer's front proxy, as kubeadm configures it.
            f"--requestheader-client-ca-file={pairs['front-proxy-ca'].cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pairs['front-proxy-client'].cert}",
            f"--proxy-client-key-file={pairs['front-proxy-client'].key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pairs['sa'].cert}",
            f"--service-account-signing-key-file={pairs['sa'].key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={pki / 'apiserver-certs'}",
            "--v=1",
        ],
    )
    admin = (pairs["admin"].cert, pairs["admin"].key)
    wait_http_ok("kube-apiserver", f"{server}/readyz", left(), ca, admin, alive=_alive(rec))

    cm = launch(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc['controller-manager']}",
            f"--authentication-kubeconfig={kc['controller-manager']}",
            f"--authorization-kubeconfig={kc['controller-manager']}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            f"--tls-cert-file={pairs['controller-manager'].cert}",
            f"--tls-private-key-file={pairs['controller-manager'].key}",
            "--leader-elect=false",
            "--controllers=*",
            f"--root-ca-file={ca}",
            f"--service-account-private-key-file={pairs['sa'].key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={ca}",
            f"--cluster-signing-key-file={pairs['ca'].key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--v=1",
        ],
    )
    sched = launch(
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kc['scheduler']}",
            f"--authentication-kubeconfig={kc['scheduler']}",
            f"--authorization-kubeconfig={kc['scheduler']}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            f"--tls-cert-file={pairs['scheduler'].cert}",
            f"--tls-private-key-file={pairs['scheduler'].key}",
            "--leader-elect=false",
            "--v=1",
        ],
    )
    bootstrap.storage_class(admin_kc)

    node_kubeconfigs = {
        n.name: kubeconfig.write(
            layout.pki / f"node-{n.name}.kubeconfig",
            node_server,
            ca,
            pairs[f"node-{n.name}"],
            f"system:node:{n.name}",
        )
        for n in nodes
    }
    provisioner = launch(
        "provisioner",
        [_venv_python(), "-m", "e2e.cluster.provisioner", str(admin_kc), str(layout.volumes)],
    )

    wait_http_ok(
        "kube-controller-manager",
        f"https://127.0.0.1:{ports.controller_manager}/healthz",
        left(),
        ca,
        admin,
        alive=_alive(cm),
    )
    wait_http_ok(
        "kube-scheduler",
        f"https://127.0.0.1:{ports.scheduler}/healthz",
        left(),
        ca,
        admin,
        alive=_alive(sched),
    )
    launcher = realnode.Launcher(
        layout=layout,
        env=env,
        net=net,
        art=art,
        ca_file=ca,
        node_kubeconfigs=node_kubeconfigs,
        proxy_kubeconfig=kubeconfig.write(
            layout.pki / "kube-proxy.kubeconfig",
            node_server,
            ca,
            pairs["kube-proxy"],
            "system:kube-proxy",
        ),
    )
    recs = launcher.start(nodes, deadline)
    components = [*COMPONENTS, *(r.name for r in recs)]
    alive = _all_alive([provisioner, *recs])
    bootstrap.wait_ready(admin_kc, [n.name for n in nodes], left(), alive=alive)

    facts: dict[str, Any] = {
        "kubernetesVersion": K8S_VERSION,
        "components": components,
        "podNetwork": net.cidr,
        "hostIP": net.host_ip,
        "server": server,
        "kubeconfig": str(layout.kubeconfig),
        "binDir": str(bin_dir),
        "ports": ports.__dict__,
        "nodes": [n.name for n in nodes],
        "stateDir": str(layout.root),
        "startSeconds": round(time.monotonic() - t0, 1),
    }
    layout.cluster_json.write_text(json.dumps(facts, indent=2))
    return facts


def running(layout: Layout) -> list[procs.Record]:
    """Recorded processes that are still alive."""
    return [r for r in procs.records(layout.run) if procs.alive(r)]


def healthy(layout: Layout) -> bool:
    """True when every component runs and the apiserver answers /readyz."""
    names = {r.name for r in running(layout)}
    if not layout.cluster_json.exists():
        return False
    facts = json.loads(layout.cluster_json.read_text())
    if not set(facts.get("components", COMPONENTS)) <= names:
        return False
    from .health import get

    pki = layout.pki
    try:
        status, _ = get(
            f"{facts['server']}/readyz", pki / "ca.crt", (pki / "admin.crt", pki / "admin.key")
        )
    except OSError:
        return False
    return status == 200


def down(layout: Layout) -> list[str]:
    """Stop every process this state dir started, nodes first (they stop their containers).

    Real nodes: kubelets, kube-proxy and containerd stop, then what they leave (container
    processes, mounts, cgroups, the pod network's namespace) is removed.
    """
    stopped = []
    order = {name: i for i, name in enumerate(reversed(COMPONENTS))}
    # Kubelets before containerd before the control plane: newest first.
    for rec in sorted(
        procs.records(layout.run), key=lambda r: (order.get(r.name, -1), -r.start_ticks)
    ):
        if procs.alive(rec):
            stopped.append(rec.name)
        procs.stop(rec, grace=15.0 if rec.name.startswith("kubelet") else 5.0)
        (layout.run / f"{rec.name}.json").unlink(missing_ok=True)
    leftovers = procs.sweep(str(layout.root))  # containerd's shims among them
    net = PodNetwork.load(layout.podnet) if layout.podnet.exists() else None
    left = realnode.stop(layout, net)
    if leftovers:
        stopped.append(f"{len(leftovers)} stray process(es)")
    if left:
        stopped.append(f"left behind: {', '.join(left)}")
    layout.podnet.unlink(missing_ok=True)
    layout.cluster_json.unlink(missing_ok=True)
    return stopped
