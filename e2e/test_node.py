"""Ferry as its users run it: the image built from the Dockerfile, in real containers.

The cluster here has real nodes (`python -m e2e.cluster up --runtime kubelet`): a kubelet
and a containerd per node, runc, a CNI bridge per node, kube-proxy; the images were
imported, nothing is pulled. Each test asserts what a user's cluster would show.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster import controlplane
from e2e.cluster.podnet import PodNetwork
from e2e.support import FERRY_IMAGE, Cluster, local_claim, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.slow]

Obj = dict[str, Any]
NONROOT = 65532
#: What the chart gives every mover container (charts/ferry, ferry/operator/workload.py).
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": NONROOT,
    "runAsGroup": NONROOT,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _local_net(cluster: Cluster) -> PodNetwork:
    """The local cluster's pod network; other clusters (kind) skip what needs it."""
    if cluster.layout is None:
        pytest.skip("inspects the local cluster's nodes, network and volume directories")
    return PodNetwork.load(cluster.layout.podnet)


def _pod(
    name: str,
    command: list[str] | None = None,
    args: list[str] | None = None,
    *,
    volumes: list[Obj] | None = None,
    mounts: list[Obj] | None = None,
    resources: Obj | None = None,
    restart: str = "Never",
) -> Obj:
    container: Obj = {
        "name": "main",
        "image": FERRY_IMAGE,
        "imagePullPolicy": "Never",
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(mounts or [])],
    }
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    if resources is not None:
        container["resources"] = resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "securityContext": {"fsGroup": NONROOT},
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
        },
    }


def _finished(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 180) -> Obj:
    def probe() -> Obj | None:
        pod = core.read_namespaced_pod(name, namespace).to_dict()
        return pod if pod["status"]["phase"] in ("Succeeded", "Failed") else None

    return wait_for(f"pod {namespace}/{name} to finish", probe, timeout=timeout)


def _terminated(pod: Obj) -> Obj:
    state: Obj = pod["status"]["container_statuses"][0]["state"]["terminated"]
    return state


def _logs(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("logs", "-n", namespace, name).stdout


def test_nodes_are_kubelets_on_containerd(cluster: Cluster) -> None:
    net = _local_net(cluster)
    wide = cluster.kubectl("get", "nodes", "-o", "wide").stdout
    rows = [line.split() for line in wide.splitlines()[1:]]
    assert {r[0] for r in rows} == {"ferry-node-0", "ferry-node-1"}, wide
    for row in rows:
        assert row[1] == "Ready" and row[4] == controlplane.K8S_VERSION, wide
        assert any(col.startswith("containerd://2.") for col in row), wide
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    bulk = nodes["ferry-node-1"]
    assert bulk["metadata"]["labels"]["ferry.dev/pool"] == "bulk"
    assert {"key": "ferry.dev/pool", "value": "bulk", "effect": "NoSchedule"} in bulk["spec"][
        "taints"
    ]
    for i, name in enumerate(("ferry-node-0", "ferry-node-1")):
        addrs = {a["type"]: a["address"] for a in nodes[name]["status"]["addresses"]}
        assert addrs["InternalIP"] == net.node_ip(i)
        assert nodes[name]["status"]["nodeInfo"]["kubeletVersion"] == controlplane.K8S_VERSION


#: Runs inside the image: what a mover relies on, as JSON on stdout.
CONTRACT = r"""
import json, os, subprocess, zoneinfo, datetime
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
try:
    open("/ferry-root-write", "w")
    out["root"] = "writable"
except OSError as exc:
    out["root"] = exc.strerror
with open("/tmp/probe", "w") as f:
    f.write("x")
out["tmp"] = "writable"
berlin = datetime.datetime(2026, 7, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin"))
out["berlin_offset_h"] = berlin.utcoffset().total_seconds() / 3600
out["version"] = subprocess.run(["ferry", "--version"], capture_output=True, text=True).stdout
out["caps"] = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]
out["seccomp"] = [l for l in open("/proc/self/status") if l.startswith("Seccomp:")][0].split()[1]
print(json.dumps(out))
"""


def test_image_runtime_contract_in_a_real_container(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_pod(namespace, _pod("version", args=["--version"]))  # type: ignore[arg-type]
    core.create_namespaced_pod(namespace, _pod("contract", ["python3.11", "-c", CONTRACT]))  # type: ignore[arg-type]
    done = _finished(core, namespace, "version")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert _logs(cluster, namespace, "version").startswith("ferry "), "entrypoint is not `ferry`"
    done = _finished(core, namespace, "contract")
    assert done["status"]["phase"] == "Succeeded", _logs(cluster, namespace, "contract")
    seen = json.loads(_logs(cluster, namespace, "contract").strip().splitlines()[-1])
    assert (seen["uid"], seen["gid"]) == (NONROOT, NONROOT)
    assert NONROOT in seen["groups"]
    assert seen["root"] == "Read-only file system"
    assert seen["tmp"] == "writable"
    assert seen["berlin_offset_h"] == 2.0  # tzdata inside the image, summer time
    assert seen["version"].startswith("ferry ")
    assert int(seen["caps"], 16) == 0  # every capability dropped
    assert seen["seccomp"] == "2"  # filter mode: RuntimeDefault applied by containerd


def test_non_root_mover_copies_into_a_fresh_claim(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    _local_net(cluster)  # seeds and reads the claims' directories on this machine
    src, dst = local_claim(core, namespace, "src"), local_claim(core, namespace, "dst")
    want = {f"d{i}/f{i}.bin": os.urandom(1000 * (i + 1)) for i in range(5)}
    for rel, data in want.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    pod = _pod(
        "copy",
        args=["copy", "/src", "/dst/out", "--json", "--progress", "none"],
        volumes=[
            {"name": "src", "persistentVolumeClaim": {"claimName": "src", "readOnly": True}},
            {"name": "dst", "persistentVolumeClaim": {"claimName": "dst"}},
        ],
        mounts=[
            {"name": "src", "mountPath": "/src", "readOnly": True},
            {"name": "dst", "mountPath": "/dst"},
        ],
    )
    core.create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]
    done = _finished(core, namespace, "copy")
    log = _logs(cluster, namespace, "copy")
    assert done["status"]["phase"] == "Succeeded", log
    assert json.loads(log)["filesCopied"] == len(want)
    for rel, data in want.items():
        path = dst / "out" / rel
        assert path.read_bytes() == data
        assert path.stat().st_uid == NONROOT  # written by the container's user, really


def test_memory_limit_reports_oomkilled(core: client.CoreV1Api, namespace: str) -> None:
    hog = "b = bytearray(512 * 1024 * 1024); print(len(b))"
    pod = _pod(
        "hog",
        ["python3.11", "-c", hog],
        resources={"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}},
    )
    core.create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]
    term = _terminated(_finished(core, namespace, "hog"))
    assert term["reason"] == "OOMKilled" and term["exit_code"] == 137, term


def test_exec_and_the_kubernetes_service_from_a_pod(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    """`kubectl exec` works, and a pod reaches the API server through the Service IP."""
    core.create_namespaced_pod(namespace, _pod("idle", ["sleep", "600"]))  # type: ignore[arg-type]

    def running() -> Obj | None:
        pod = core.read_namespaced_pod("idle", namespace).to_dict()
        return pod if pod["status"]["phase"] == "Running" else None

    pod = wait_for("pod idle to run", running, timeout=120)
    if cluster.layout is not None:
        net = PodNetwork.load(cluster.layout.podnet)
        assert ipaddress.ip_address(pod["status"]["pod_ip"]) in ipaddress.ip_network(net.cidr)
    probe = (
        "import os, ssl, urllib.request;"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount';"
        "ctx = ssl.create_default_context(cafile=sa + '/ca.crt');"
        "url = 'https://%s:%s/version' % (os.environ['KUBERNETES_SERVICE_HOST'],"
        " os.environ['KUBERNETES_SERVICE_PORT']);"
        "print(urllib.request.urlopen(url, context=ctx, timeout=10).read().decode())"
    )
    out = cluster.kubectl("exec", "-n", namespace, "idle", "--", "python3.11", "-c", probe).stdout
    assert json.loads(out)["gitVersion"] == controlplane.K8S_VERSION
    hostname = cluster.kubectl("exec", "-n", namespace, "idle", "--", "hostname").stdout
    assert hostname.strip() == "idle"
