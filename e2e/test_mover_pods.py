# ruff: noqa: F811  (fixtures imported from test_operator are parameters here)
"""Mover pods users adapt, namespace users' RBAC and the CRD upgrade path, on a real cluster.

- A mover runs as the uid owning app data (0600 files) with the groups a TransferJob gives,
  under the user's ServiceAccount, with its labels and annotations on the pod.
- The chart's aggregated ClusterRoles let `edit` holders create TransferJobs and `view`
  holders read them (the API server's own SubjectAccessReview answers).
- CRDs from an older chart (a field missing) are upgraded with the documented
  `kubectl apply --server-side` while objects exist: they survive and the new field works.
"""

from __future__ import annotations

import copy
import os
import socket
import socketserver
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.support import Cluster, wait_for
from e2e.test_operator import (  # noqa: F401  (fixtures are used by name)
    REPO,
    Env,
    G,
    Obj,
    _raw,
    digests,
    env,
    operator,
    otlp,
    pvc_spec,
    pvc_to_s3_spec,
    seed,
)
from e2e.test_operator import V as VERSION
from e2e.test_operator_rbac import can
from e2e.test_operator_wire import TOLERATE_ALL, _holder
from ferry.operator import wirepair, workload
from tests.servers import VersityServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP_UID, FS_GROUP, EXTRA_GROUP = 1000, 2000, 3000


def test_mover_reads_app_owned_files_as_their_uid_with_its_labels_and_account(
    env: Env, cluster: Cluster
) -> None:
    """0600 files of uid 1000 (and 0640 ones of groups 2000 and 3000, root-owned) are readable
    only with runAsUser, fsGroup and supplementalGroups all applied to the mover's process."""
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {"app/db.bin": 3000, "app/conf": 100, "fsgroup.bin": 200, "extra.bin": 300})
    for rel in ("app/db.bin", "app/conf"):
        os.chown(src / rel, APP_UID, APP_UID)
        os.chmod(src / rel, 0o600)
    os.chown(src / "app", APP_UID, APP_UID)
    os.chmod(src / "app", 0o700)
    for rel, gid in (("fsgroup.bin", FS_GROUP), ("extra.bin", EXTRA_GROUP)):
        os.chown(src / rel, 0, gid)
        os.chmod(src / rel, 0o640)
    account: Obj = {
        "metadata": {
            "name": "backup-sa",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/ferry"},
        }
    }
    env.core.create_namespaced_service_account(env.ns, account)  # type: ignore[arg-type]
    pod = {
        "securityContext": {
            "runAsUser": APP_UID,
            "runAsGroup": APP_UID,
            "fsGroup": FS_GROUP,
            "supplementalGroups": [EXTRA_GROUP],
        },
        "serviceAccountName": "backup-sa",
        "labels": {"sidecar.istio.io/inject": "false", "team": "apps"},
        "annotations": {"linkerd.io/inject": "disabled"},
    }
    # The control: the operator's default uid cannot read them.
    env.pvc("dst0")
    env.create("transferjobs", "as-default", pvc_spec("src", "dst0"))
    refused = env.wait_phase("as-default", "Failed", timeout=180)["status"]
    assert refused["reason"] == "PermissionDenied", refused
    env.create("transferjobs", "as-app", pvc_spec("src", "dst", pod=pod))
    done = env.wait_phase("as-app", "Succeeded", timeout=180)
    assert digests(dst) == want
    for rel in ("app/db.bin", "app/conf"):  # written by the mover: owned by its uid
        assert os.stat(dst / rel).st_uid == APP_UID, rel
    # Progress patches went through the Role the operator bound to the user's account.
    assert (done["status"].get("progress") or {}).get("shards"), done["status"]
    (mover,) = env.pods("as-app")
    meta, spec = mover["metadata"], mover["spec"]
    assert spec["serviceAccountName"] == "backup-sa"
    assert meta["labels"]["sidecar.istio.io/inject"] == "false"
    assert meta["labels"]["team"] == "apps"
    assert meta["labels"][workload.LABEL_TRANSFERJOB] == "as-app"  # the operator's kept
    assert meta["annotations"]["linkerd.io/inject"] == "disabled"
    sc = spec["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (APP_UID, APP_UID, FS_GROUP)
    assert sc["supplementalGroups"] == [EXTRA_GROUP]
    assert sc["fsGroupChangePolicy"] == "OnRootMismatch"
    # No ServiceAccount of the operator's own for this TransferJob.
    names = [
        s["metadata"]["name"]
        for s in _raw(env.core.list_namespaced_service_account, env.ns)["items"]
    ]
    assert workload.child_name("as-app") not in names


def _adapted(pod: Obj, want: Obj) -> None:
    """`pod` carries what spec.pod `want` asked for."""
    meta, spec = pod["metadata"], pod["spec"]
    assert spec["serviceAccountName"] == want["serviceAccountName"]
    assert want["labels"].items() <= meta["labels"].items()
    assert want["annotations"].items() <= meta["annotations"].items()
    assert want["securityContext"].items() <= spec["securityContext"].items()


def test_wire_pair_sender_and_receiver_are_adapted_too(env: Env) -> None:
    """Two RWO claims held on two nodes: the receiver (`ferry serve`) writes as the app's
    uid, and both pods carry the user's labels, annotations and account."""
    nodes = sorted(n["metadata"]["name"] for n in _raw(env.core.list_node)["items"])
    if len(nodes) < 2:
        pytest.skip("needs a cluster of two nodes")
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {"app/a.bin": 5000, "app/b.bin": 70000})
    for rel in ("app", "app/a.bin", "app/b.bin"):
        os.chown(src / rel, APP_UID, APP_UID)
        os.chmod(src / rel, 0o700 if rel == "app" else 0o600)
    _holder(env, "src", nodes[0])
    _holder(env, "dst", nodes[1])
    account: Obj = {"metadata": {"name": "wire-sa"}}
    env.core.create_namespaced_service_account(env.ns, account)  # type: ignore[arg-type]
    pod = {
        "securityContext": {"runAsUser": APP_UID, "runAsGroup": APP_UID},
        "serviceAccountName": "wire-sa",
        "labels": {"team": "apps"},
        "annotations": {"linkerd.io/inject": "disabled"},
    }
    spec = pvc_spec("src", "dst", placement={"tolerations": [TOLERATE_ALL]}, pod=pod)
    env.create("transferjobs", "wire", {**spec, "suspend": True})

    def receiver() -> Obj | None:
        pods = _raw(
            env.core.list_namespaced_pod,
            env.ns,
            label_selector=f"{wirepair.LABEL_RECEIVER_OF}=wire",
        )["items"]
        return next((p for p in pods if (p.get("status") or {}).get("phase") == "Running"), None)

    _adapted(wait_for("the receiver running", receiver, timeout=120), pod)
    env.patch_spec("transferjobs", "wire", {"suspend": False})
    env.wait_phase("wire", "Succeeded", timeout=240)
    assert digests(dst) == want
    assert all(os.stat(dst / rel).st_uid == APP_UID for rel in want)  # the receiver wrote them
    (sender,) = env.pods("wire")
    assert sender["spec"]["nodeName"] == nodes[0]
    _adapted(sender, pod)


class ConnectProxy:
    """A real HTTP CONNECT proxy on the host's pod-network address, recording each target."""

    def __init__(self, host: str) -> None:
        self.server = socketserver.ThreadingTCPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.targets: list[str] = []
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[socketserver.StreamRequestHandler]:
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(8192).decode("latin-1").split()
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # the request's headers
                if len(line) < 2 or line[0] != "CONNECT":
                    self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                    return
                proxy.targets.append(line[1])
                host, _, port = line[1].rpartition(":")
                with socket.create_connection((host, int(port)), timeout=10) as up:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    pump = threading.Thread(target=_pump, args=(up, self.connection), daemon=True)
                    pump.start()
                    _pump(self.connection, up)
                    pump.join(timeout=10)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(1 << 16):
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def test_https_s3_through_a_proxy_trusting_the_ca_bundle(env: Env, cluster: Cluster) -> None:
    """S3 on HTTPS with a self-signed certificate, reachable for the test through a CONNECT
    proxy: the mover trusts the ConfigMap's CA and goes through spec.pod.proxy (and its status
    patches to the API server do not: the proxy sees S3 only)."""
    s3srv = VersityServer(host=cluster.host_ip, tls=True).start()
    proxy = ConnectProxy(cluster.host_ip)
    try:
        s3srv.create_bucket("backups")
        assert s3srv.ca_bundle
        config_map: Obj = {
            "metadata": {"name": "s3-ca"},
            "data": {"bundle.pem": Path(s3srv.ca_bundle).read_text()},
        }
        env.core.create_namespaced_config_map(env.ns, config_map)  # type: ignore[arg-type]
        src = env.pvc("src")
        want = seed(src, {"a.bin": 20_000, "b/c.bin": 3 << 20})
        spec = pvc_to_s3_spec(env, s3srv, "src", prefix="tls/")
        assert spec["destination"]["s3"]["endpoint"].startswith("https://")
        no_retry = {"retry": {"limit": 0, "perFile": 0}}
        # The control: without the CA the server's certificate is not trusted.
        env.create("transferjobs", "untrusted", {**spec, **no_retry})
        refused = env.wait_phase("untrusted", "Failed", timeout=120)["status"]
        # Not retried as Transient: no retry can make the certificate trusted.
        assert refused["reason"] == "AuthFailed", refused
        assert "TLS certificate is not trusted" in (refused.get("message") or ""), refused
        pod = {
            "caBundle": {"name": "s3-ca", "key": "bundle.pem"},
            "proxy": {"httpsProxy": proxy.url, "noProxy": "example.invalid"},
        }
        proxy.targets.clear()
        env.create("transferjobs", "trusted", {**spec, **no_retry, "pod": pod})
        done = env.wait_phase("trusted", "Succeeded", timeout=180)
        assert done["status"]["result"]["filesCopied"] == len(want)
        s3 = s3srv.client()
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="backups", Prefix="tls/")["Contents"]}
        assert {f"tls/{k}" for k in want} <= keys
        assert (done["status"].get("progress") or {}).get("shards")  # status patches arrived
        s3_target = f"{cluster.host_ip}:{s3srv.port}"
        assert proxy.targets and set(proxy.targets) == {s3_target}, proxy.targets
    finally:
        proxy.close()
        s3srv.close()


def test_transferjob_asking_for_root_is_refused_naming_the_field(env: Env) -> None:
    env.pvc("src")
    env.pvc("dst")
    pod = {"securityContext": {"runAsUser": 0}}
    env.create("transferjobs", "as-root", pvc_spec("src", "dst", pod=pod))
    st = env.wait_phase("as-root", "Failed", timeout=60)["status"]
    assert st["reason"] == "PrivilegeNotGranted"
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False"
    assert "spec.pod.securityContext.runAsUser" in accepted["message"]
    assert env.jobs("as-root") == []


def test_api_server_refuses_operator_keys_in_pod_labels(env: Env) -> None:
    env.pvc("src")
    env.pvc("dst")
    bad = pvc_spec("src", "dst", pod={"labels": {"ferry.dev/transferjob": "other"}})
    with pytest.raises(ApiException) as exc:
        env.create("transferjobs", "steal", bad)
    assert exc.value.status == 422 and "spec.pod.labels" in str(exc.value.body)
    assert "ferry.dev/" in str(exc.value.body)


# ---------------------------------------------------------------- aggregated roles


def _user_can(api: client.ApiClient, user: str, verb: str, resource: str, ns: str) -> bool:
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "resourceAttributes": {"namespace": ns, "verb": verb, "group": G, "resource": resource},
        },
    }
    review = _raw(client.AuthorizationV1Api(api).create_subject_access_review, body)
    return bool(review["status"].get("allowed"))


def test_namespace_editors_create_and_viewers_read_transferjobs(
    env: Env, api: client.ApiClient
) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    for user, role in (("alice", "edit"), ("bob", "view")):
        binding: Obj = {
            "metadata": {"name": f"{user}-{role}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        rbac.create_namespaced_role_binding(env.ns, binding)  # type: ignore[arg-type]

    def aggregated() -> bool:
        return _user_can(api, "alice", "create", "transferjobs", env.ns)

    wait_for("the edit role to aggregate Ferry's rules", aggregated, timeout=60)
    for verb in ("create", "delete", "patch", "list"):
        for resource in ("transferjobs", "transferschedules"):
            assert _user_can(api, "alice", verb, resource, env.ns), (verb, resource)
    for resource in ("transferjobs", "transferschedules", "transferjobs/status"):
        assert _user_can(api, "bob", "get", resource, env.ns), resource
        assert _user_can(api, "bob", "list", resource, env.ns), resource
    for verb in ("create", "patch", "delete"):
        assert not _user_can(api, "bob", verb, "transferjobs", env.ns), verb
    assert not _user_can(api, "alice", "patch", "transferjobs/status", env.ns)  # the operator's
    assert not _user_can(api, "alice", "create", "transferjobs", "default")  # only where bound
    # A ServiceAccount reads as a user too: the API server's answer for the chart's roles.
    assert not can(api, (env.ns, "default"), "create", "transferjobs", env.ns, G)


# ---------------------------------------------------------------- CRD upgrade


def _older_crd(path: Path) -> Obj:
    """The current TransferJob CRD as the previous chart shipped it: without spec.pod."""
    crd: Obj = yaml.safe_load(path.read_text())
    old = copy.deepcopy(crd)
    root = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del root["properties"]["spec"]["properties"]["pod"]
    root["x-kubernetes-validations"] = [
        r for r in root["x-kubernetes-validations"] if r.get("fieldPath") != ".spec.pod"
    ]
    return old


def _apply(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", "--force-conflicts", *args)


def _schema_has_pod(cluster: Cluster) -> bool:
    crd = cluster.kubectl_json("get", "crd", f"transferjobs.{G}")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return "pod" in spec["properties"]


def test_crds_upgrade_in_place_and_objects_survive(
    env: Env, cluster: Cluster, tmp_path: Path
) -> None:
    """The upgrade docs/operator.md gives (Helm never upgrades a chart's crds/)."""
    chart_crds = REPO / "charts" / "ferry" / "crds"
    older = tmp_path / "transferjobs.yaml"
    older.write_text(yaml.safe_dump(_older_crd(chart_crds / f"{G}_transferjobs.yaml")))
    # What `helm install` of the previous chart left (Helm creates crds/ as manager "helm").
    _apply(cluster, "--field-manager=helm", "-f", str(older))
    try:
        wait_for("the older CRD served", lambda: not _schema_has_pod(cluster), timeout=60)
        env.pvc("src")
        env.pvc("dst")
        before = env.create("transferjobs", "before", pvc_spec("src", "dst", suspend=True))
        sched = {
            "schedule": "0 3 * * *",
            "suspend": True,
            "jobTemplate": {"spec": pvc_spec("src", "dst")},
        }
        env.create("transferschedules", "nightly", sched)
        with pytest.raises(ApiException) as exc:  # the older CRD does not know the field
            env.custom.create_namespaced_custom_object(
                G,
                VERSION,
                env.ns,
                "transferjobs",
                {
                    "apiVersion": f"{G}/{VERSION}",
                    "kind": "TransferJob",
                    "metadata": {"name": "too-early"},
                    "spec": pvc_spec("src", "dst", pod={"labels": {"a": "b"}}),
                },
                field_validation="Strict",
            )
        assert exc.value.status in (400, 422) and "pod" in str(exc.value.body)

        # The documented upgrade, from the chart directory, with objects in place.
        done = _apply(cluster, "-f", str(chart_crds))
        assert done.returncode == 0, done.stderr
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        wait_for("the upgraded CRD served", lambda: _schema_has_pod(cluster), timeout=60)

        kept = env.tj("before")
        assert kept["metadata"]["uid"] == before["metadata"]["uid"]
        assert kept["spec"]["source"] == before["spec"]["source"]
        assert env.get("transferschedules", "nightly")["spec"]["schedule"] == "0 3 * * *"
        pod = {"labels": {"team": "a"}, "securityContext": {"runAsUser": APP_UID}}
        env.create("transferjobs", "after", pvc_spec("src", "dst", suspend=True, pod=pod))
        assert env.tj("after")["spec"]["pod"] == pod  # accepted and kept, not pruned
        # The older object is still edited under the new CRD's rules.
        env.patch_spec("transferjobs", "before", {"suspend": False})
        env.wait_phase("before", "Succeeded", timeout=120)
    finally:  # the session's other tests expect the current CRDs
        _apply(cluster, "-f", str(REPO / "crds"))
        wait_for("the current CRD back", lambda: _schema_has_pod(cluster), timeout=60)
