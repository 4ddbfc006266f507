"""The cluster itself: control plane health, nodes, workloads, volumes, RBAC, teardown.

Everything here runs against the local cluster (the control plane and real nodes:
kubelet, containerd, runc, the image built from the Dockerfile) and, except the
local-only tests, unchanged against any cluster given by FERRY_E2E_KUBECONFIG, e.g.
kind with the Ferry image loaded.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster import cgroups, fsutil, realnode
from e2e.cluster.layout import Layout
from e2e.cluster.podnet import PodNetwork
from e2e.cluster.procs import marked
from e2e.support import FERRY_IMAGE, Cluster, cluster_cli, wait_for
from tests.strict import unavailable

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]


def _raw(call: Any, *args: Any, **kwargs: Any) -> Obj:
    resp = call(*args, _preload_content=False, **kwargs)
    data: Obj = json.loads(resp.data)
    return data


def _local_only(cluster: Cluster) -> Layout:
    if cluster.layout is None:
        pytest.skip("inspects the local cluster's processes, files and network")
    return cluster.layout


def _pod(name: str, command: list[str], **spec: Any) -> Obj:
    container = {"name": "main", "image": FERRY_IMAGE, "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def _job(name: str, command: list[str]) -> Obj:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": FERRY_IMAGE, "command": command}],
                }
            },
        },
    }


def _terminated(core: client.CoreV1Api, ns: str, name: str, timeout: float = 60) -> Obj:
    """Wait for the pod's phase to be final; return its first container's terminated state."""

    def probe() -> Obj | None:
        pod = _raw(core.read_namespaced_pod, name, ns)
        if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            return None
        state: Obj = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        return state

    return wait_for(f"pod {ns}/{name} to finish", probe, timeout)


def _running(core: client.CoreV1Api, ns: str, name: str) -> Obj:
    def probe() -> Obj | None:
        pod = _raw(core.read_namespaced_pod, name, ns)
        statuses = pod.get("status", {}).get("containerStatuses") or []
        return pod if statuses and "running" in statuses[0]["state"] else None

    return wait_for(f"pod {ns}/{name} running", probe, 60)


# -- control plane ----------------------------------------------------------------------------


def test_readyz_ok(cluster: Cluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_nodes_ready(cluster: Cluster) -> None:
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    assert nodes
    for node in nodes:
        conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conds["Ready"] == "True", node["metadata"]["name"]
    if cluster.local:
        assert {n["metadata"]["name"] for n in nodes} >= {"ferry-node-0", "ferry-node-1"}
        bulk = next(n for n in nodes if n["metadata"]["name"] == "ferry-node-1")
        assert bulk["metadata"]["labels"]["ferry.dev/pool"] == "bulk"
        assert any(t["key"] == "ferry.dev/pool" for t in bulk["spec"]["taints"])


def test_up_cold_and_warm_then_down_leaves_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """A second, private cluster: cold start, down, warm start, down; nothing left behind."""
    _local_only(cluster)
    state = tmp_path / "cluster"
    try:
        _cold_and_warm(state)
    finally:
        cluster_cli("down", state_dir=state)  # whatever failed: nothing may outlive the test


def _cold_and_warm(state: Path) -> None:
    timings = []
    for _ in ("cold", "warm"):
        t0 = time.monotonic()
        up = cluster_cli("up", state_dir=state)
        timings.append(time.monotonic() - t0)
        assert up.returncode == 0, up.stderr[-3000:]
        status = cluster_cli("status", state_dir=state)
        assert status.returncode == 0 and "healthy: True" in status.stdout, status.stdout
        facts = json.loads(up.stdout)
        assert facts["server"].startswith("https://127.0.0.1:")
        layout = Layout(state)
        net = PodNetwork.load(layout.podnet)
        cgroup = realnode.cgroup_name(layout)
        assert any((h / cgroup).is_dir() for h in cgroups.hierarchies())
        down = cluster_cli("down", state_dir=state)
        assert down.returncode == 0, down.stderr
        assert "kube-apiserver" in down.stdout and "kubelet-ferry-node-0" in down.stdout
        assert "left behind" not in down.stdout, down.stdout
        assert marked(str(state)) == [], "processes survived down"
        assert fsutil.mounts_below(state) == []
        assert fsutil.mounts_below(realnode.short_dir(layout)) == []
        assert not realnode.short_dir(layout).exists()
        assert net.leftovers() == [], "network namespace or link survived down"
        assert not any((h / cgroup).exists() for h in cgroups.hierarchies())
        assert cluster_cli("status", state_dir=state).returncode == 3
    # How fast is for benchmarks to say, not a test: printed for whoever reads the log.
    print(f"cold up {timings[0]:.1f}s, warm up {timings[1]:.1f}s")


# -- workloads --------------------------------------------------------------------------------


def test_deployment_becomes_available(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    labels = {"app": "sleeper"}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {"name": "main", "image": FERRY_IMAGE, "command": ["sleep", "infinity"]}
                    ],
                },
            },
        },
    }
    _raw(apps.create_namespaced_deployment, namespace, body)

    def available() -> bool:
        dep = _raw(apps.read_namespaced_deployment, "sleeper", namespace)
        conds = {c["type"]: c["status"] for c in dep.get("status", {}).get("conditions", [])}
        return conds.get("Available") == "True" and dep["status"].get("availableReplicas") == 2

    wait_for("deployment available", available, 90)
    pods = _raw(client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector="app=sleeper")
    ips = {p["status"]["podIP"] for p in pods["items"]}
    assert len(ips) == 2, "each pod has its own IP"
    if cluster.local:
        net = PodNetwork.load(_local_only(cluster).podnet)
        assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(net.cidr) for ip in ips)
        for p in pods["items"]:
            assert p["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")


def test_job_completes_with_exit_code_and_message(
    core: client.CoreV1Api, api: client.ApiClient, namespace: str
) -> None:
    batch = client.BatchV1Api(api)
    ok = "open('/dev/termination-log','w').write('copied 3 files')"
    bad = "import sys; open('/dev/termination-log','w').write('boom'); sys.exit(3)"
    _raw(batch.create_namespaced_job, namespace, _job("good", ["python", "-c", ok]))
    _raw(batch.create_namespaced_job, namespace, _job("bad", ["python", "-c", bad]))

    def condition(name: str, kind: str) -> bool:
        job = _raw(batch.read_namespaced_job, name, namespace)
        return any(
            c["type"] == kind and c["status"] == "True"
            for c in job.get("status", {}).get("conditions", [])
        )

    wait_for("job good Complete", lambda: condition("good", "Complete"), 60)
    wait_for("job bad Failed", lambda: condition("bad", "Failed"), 60)
    for name, code, message in (("good", 0, "copied 3 files"), ("bad", 3, "boom")):
        pods = _raw(core.list_namespaced_pod, namespace, label_selector=f"job-name={name}")["items"]
        assert len(pods) == 1
        term = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (term["exitCode"], term["message"]) == (code, message)


def test_ferry_version_job(cluster: Cluster, core: client.CoreV1Api, namespace: str) -> None:
    """The image's entrypoint is `ferry`: a pod with only args runs `ferry <args>`."""
    if cluster.local and not shutil.which("ferry", path=str(Path(sys.executable).parent)):
        unavailable("the ferry console script is not installed in this venv (run: make bootstrap)")
    pod = _pod("version", [], container={"args": ["--version"]})
    del pod["spec"]["containers"][0]["command"]
    _raw(core.create_namespaced_pod, namespace, pod)
    term = _terminated(core, namespace, "version")
    assert term["exitCode"] == 0


def test_delete_stops_process_within_grace(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    """A process that ignores SIGTERM is killed when the grace period ends, not later."""
    grace = 3
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    polite = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(600)"
    pods = {
        # PID 1 of a container gets no default signal actions: it must handle SIGTERM itself.
        "polite": _pod("polite", ["python", "-c", polite], terminationGracePeriodSeconds=30),
        "stubborn": _pod("stubborn", ["python", "-c", ignore], terminationGracePeriodSeconds=grace),
    }
    for body in pods.values():
        _raw(core.create_namespaced_pod, namespace, body)
    for name in pods:
        _running(core, namespace, name)
    # Running is reported at spawn; the handler is in place once the script says so.
    wait_for(
        "stubborn's SIGTERM handler",
        lambda: "up" in cluster.container_log(namespace, "stubborn", "main"),
        60,
    )
    for name in pods:
        t0 = time.monotonic()
        core.delete_namespaced_pod(name, namespace)

        def gone(name: str = name) -> bool:
            try:
                core.read_namespaced_pod(name, namespace)
            except ApiException as exc:
                return exc.status == 404
            return False

        # polite: gone well before its 30 s grace ends, so SIGTERM stopped it; stubborn:
        # gone once its grace ended (generous deadline), and never before it (measured
        # from here, the client's time can only be longer than the node's).
        wait_for(f"pod {name} gone", gone, 25 if name == "polite" else grace + 30)
        elapsed = time.monotonic() - t0
        if name == "stubborn":
            assert elapsed >= grace - 0.5, f"killed after {elapsed:.1f}s, before its grace {grace}s"


def test_rwo_pvc_shares_files_between_pods(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    }
    _raw(core.create_namespaced_persistent_volume_claim, namespace, claim)
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}
    mount = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    write = "open('/data/hello.txt','w').write('written by pod one')"
    read = "open('/dev/termination-log','w').write(open('/data/hello.txt').read())"
    _raw(
        core.create_namespaced_pod,
        namespace,
        _pod("writer", ["python", "-c", write], container=mount, **volume),
    )
    assert _terminated(core, namespace, "writer", 90)["exitCode"] == 0
    pvc = _raw(core.read_namespaced_persistent_volume_claim, "data", namespace)
    assert pvc["status"]["phase"] == "Bound"
    _raw(
        core.create_namespaced_pod,
        namespace,
        _pod("reader", ["python", "-c", read], container=mount, **volume),
    )
    term = _terminated(core, namespace, "reader", 90)
    assert (term["exitCode"], term.get("message")) == (0, "written by pod one")


def test_env_and_volumes_as_a_container_sees_them(core: client.CoreV1Api, namespace: str) -> None:
    """valueFrom/envFrom, Secret/ConfigMap/emptyDir volumes, subPath and readOnly."""
    _raw(
        core.create_namespaced_secret,
        namespace,
        {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret", "user": "ferry"}},
    )
    _raw(
        core.create_namespaced_config_map,
        namespace,
        {"metadata": {"name": "settings"}, "data": {"mode": "sync", "conf.ini": "[x]\na=1\n"}},
    )
    script = """
import json, os
out = {k: os.environ.get(k) for k in ("PASSWORD", "MODE", "POD", "NS", "NODE", "IP", "CFG_mode", "GREETING")}
out["secret_file"] = open("/etc/creds/user").read()
out["subpath"] = open("/etc/app/conf.ini").read()
try:
    open("/etc/creds/new", "w")
    out["secret_ro"] = False
except OSError:
    out["secret_ro"] = True
open("/scratch/x", "w").write("ok")
out["scratch"] = open("/scratch/x").read()
out["token"] = len(open("/var/run/secrets/kubernetes.io/serviceaccount/token").read()) > 100
open("/dev/termination-log", "w").write(json.dumps(out))
"""
    env = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "GREETING", "value": "hello $(POD)"},
    ]
    container = {
        "env": env,
        "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
        "volumeMounts": [
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "settings", "mountPath": "/etc/app/conf.ini", "subPath": "conf.ini"},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
    }
    volumes = [
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "settings", "configMap": {"name": "settings"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    _raw(
        core.create_namespaced_pod,
        namespace,
        _pod("probe", ["python", "-c", script], container=container, volumes=volumes),
    )
    term = _terminated(core, namespace, "probe")
    assert term["exitCode"] == 0, term
    seen = json.loads(term["message"])
    pod = _raw(core.read_namespaced_pod, "probe", namespace)
    assert seen == {
        "PASSWORD": "s3cret",
        "MODE": "sync",
        "POD": "probe",
        "NS": namespace,
        "NODE": pod["spec"]["nodeName"],
        "IP": pod["status"]["podIP"],
        "CFG_mode": "sync",
        "GREETING": "hello probe",
        "secret_file": "ferry",
        "subpath": "[x]\na=1\n",
        "secret_ro": True,
        "scratch": "ok",
        "token": True,
    }


def test_foreign_image_is_refused_with_a_reason(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    """No registry is reachable: an image that was not imported is never pulled."""
    pod = _pod("alien", ["true"])
    pod["spec"]["containers"][0]["image"] = "docker.io/library/busybox:1.36"
    pod["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    _raw(core.create_namespaced_pod, namespace, pod)

    def waiting() -> Obj | None:
        p = _raw(core.read_namespaced_pod, "alien", namespace)
        statuses = p.get("status", {}).get("containerStatuses") or []
        state: Obj | None = statuses[0]["state"].get("waiting") if statuses else None
        return state if state and state.get("reason") == "ErrImageNeverPull" else None

    state = wait_for("ErrImageNeverPull", waiting, 30)
    assert "busybox:1.36" in state["message"] and "Never" in state["message"], state


# -- RBAC -------------------------------------------------------------------------------------


def _sa_client(cluster: Cluster, core: client.CoreV1Api, ns: str, sa: str) -> client.ApiClient:
    token = _raw(
        core.create_namespaced_service_account_token, sa, ns, {"spec": {"expirationSeconds": 600}}
    )["status"]["token"]
    with cluster.api() as admin:
        cfg = admin.configuration
        c = client.Configuration()
        c.host = cfg.host
        c.ssl_ca_cert = cfg.ssl_ca_cert
        c.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(c)


def test_rbac_is_enforced(
    cluster: Cluster, api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    """A ServiceAccount without rights gets 403, via its token and from inside a pod."""
    rbac = client.RbacAuthorizationV1Api(api)
    for sa in ("nobody", "reader"):
        _raw(core.create_namespaced_service_account, namespace, {"metadata": {"name": sa}})
    _raw(
        rbac.create_namespaced_role,
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    _raw(
        rbac.create_namespaced_role_binding,
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    authz = client.AuthorizationV1Api(api)

    def allowed(sa: str) -> bool:
        review = {
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{sa}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {"namespace": namespace, "verb": "list", "resource": "pods"},
            }
        }
        return bool(_raw(authz.create_subject_access_review, review)["status"].get("allowed"))

    wait_for("the reader binding to take effect", lambda: allowed("reader"), 30)
    assert not allowed("nobody")
    with _sa_client(cluster, core, namespace, "nobody") as nobody:
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(nobody).list_namespaced_pod(namespace)
        assert denied.value.status == 403

    script = f"""
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_incluster_config()
try:
    client.CoreV1Api().list_namespaced_pod({namespace!r})
    code = 200
except ApiException as exc:
    code = exc.status
open("/dev/termination-log", "w").write(str(code))
"""
    for sa in ("nobody", "reader"):
        _raw(
            core.create_namespaced_pod,
            namespace,
            _pod(f"as-{sa}", ["python", "-c", script], serviceAccountName=sa),
        )
    results = {
        sa: _terminated(core, namespace, f"as-{sa}")["message"] for sa in ("nobody", "reader")
    }
    assert results == {"nobody": "403", "reader": "200"}


def test_init_container_and_restart_on_failure(core: client.CoreV1Api, namespace: str) -> None:
    """Init containers run first; OnFailure restarts a failed container until it succeeds."""
    flaky = (
        "import os, sys\n"
        "seed = open('/shared/seed').read()\n"
        "if not os.path.exists('/shared/tried'):\n"
        "    open('/shared/tried', 'w').close(); sys.exit(1)\n"
        "open('/dev/termination-log', 'w').write(seed + ' then retried')\n"
    )
    pod = _pod(
        "flaky",
        ["python", "-c", flaky],
        restartPolicy="OnFailure",
        container={"volumeMounts": [{"name": "work", "mountPath": "/shared"}]},
        volumes=[{"name": "work", "emptyDir": {}}],
        initContainers=[
            {
                "name": "seed",
                "image": FERRY_IMAGE,
                "command": ["sh", "-c", "printf seeded > /shared/seed"],
                "volumeMounts": [{"name": "work", "mountPath": "/shared"}],
            }
        ],
    )
    _raw(core.create_namespaced_pod, namespace, pod)
    term = _terminated(core, namespace, "flaky", 90)
    status = _raw(core.read_namespaced_pod, "flaky", namespace)["status"]
    assert status["phase"] == "Succeeded"
    assert status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert status["containerStatuses"][0]["restartCount"] == 1
    assert status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    assert term["message"] == "seeded then retried"


def test_run_as_user(core: client.CoreV1Api, namespace: str) -> None:
    script = "import os; open('/dev/termination-log', 'w').write(f'{os.getuid()}:{os.getgid()}')"
    pod = _pod(
        "nonroot",
        ["python", "-c", script],
        securityContext={"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
    )
    _raw(core.create_namespaced_pod, namespace, pod)
    term = _terminated(core, namespace, "nonroot")
    assert (term["exitCode"], term.get("message")) == (0, "65532:65532")


def test_fs_group_and_the_image_code(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    """fsGroup as a kubelet applies it: a supplementary group of the process, group owner of
    Secret files with group read added (0400 -> 0440); the code is the image's."""
    _raw(
        core.create_namespaced_secret,
        namespace,
        {"metadata": {"name": "key"}, "stringData": {"key": "k"}},
    )
    script = """
import json, os, stat, ferry
st = os.stat("/etc/key/key")
out = {"groups": os.getgroups(), "mode": stat.S_IMODE(st.st_mode), "gid": st.st_gid,
       "ferry": ferry.__file__}
open("/dev/termination-log", "w").write(json.dumps(out))
"""
    pod = _pod(
        "fsgroup",
        ["python", "-c", script],
        securityContext={
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 2000,
            "supplementalGroups": [3000],
        },
        container={"volumeMounts": [{"name": "key", "mountPath": "/etc/key"}]},
        volumes=[{"name": "key", "secret": {"secretName": "key", "defaultMode": 0o400}}],
    )
    _raw(core.create_namespaced_pod, namespace, pod)
    term = _terminated(core, namespace, "fsgroup")
    assert term["exitCode"] == 0, term
    seen = json.loads(term["message"])
    assert {2000, 3000} <= set(seen["groups"]), seen
    assert (seen["mode"], seen["gid"]) == (0o440, 2000), seen
    assert seen["ferry"] == "/opt/ferry/lib/python3.11/site-packages/ferry/__init__.py", seen


def test_missing_secret_waits_with_reason_and_deletes(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    """A pod whose Secret is missing waits (CreateContainerConfigError, naming it) and still
    deletes cleanly."""
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    _raw(core.create_namespaced_pod, namespace, _pod("blocked", ["true"], container={"env": env}))

    def waiting() -> Obj | None:
        p = _raw(core.read_namespaced_pod, "blocked", namespace)
        statuses = p.get("status", {}).get("containerStatuses") or []
        state: Obj | None = statuses[0]["state"].get("waiting") if statuses else None
        return state if state and "absent" in state.get("message", "") else None

    assert (
        wait_for("a waiting reason naming the secret", waiting, 30)["reason"]
        == "CreateContainerConfigError"
    )
    core.delete_namespaced_pod("blocked", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("blocked", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("pod gone", gone, 30)
