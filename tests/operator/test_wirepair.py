"""The sender/receiver pair: when it is needed, its objects, its certificates, and its end.

The certificates are checked with a real TLS 1.3 handshake between `ferry serve`'s
server context and the ferry backend's client context (the very code the pods run).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ferry.mover.backends.ferry.connections import client_context
from ferry.mover.endpoints import FerryEndpoint
from ferry.mover.spec import TransferSpec
from ferry.operator import api, certs, wirepair, workload
from ferry.serve.tls import server_context
from tests.conftest import FERRY
from tests.operator.fixtures import PVC_TO_PVC, transferjob
from tests.operator.test_reconcile import FakeKube, reconciler

RWO = ["ReadWriteOnce"]


def pvc(name: str, modes: list[str] = RWO, volume: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"accessModes": modes, "volumeName": volume}}


def holder(claim: str, node: str, phase: str = "Running", job: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": f"hold-{claim}", "labels": {"job-name": job} if job else {}},
        "spec": {"nodeName": node, "volumes": [{"persistentVolumeClaim": {"claimName": claim}}]},
        "status": {"phase": phase},
    }


def uses(pods: list[dict[str, Any]]) -> list[workload.ClaimUse]:
    """What the operator's pod index holds for these pods."""
    return [u for pod in pods for u in workload.claim_uses(pod)]


def local_pv(node: str) -> dict[str, Any]:
    expr = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    return {
        "spec": {
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}
        }
    }


SPEC = api.TransferJobSpec.model_validate(PVC_TO_PVC)  # data -> backup
OWN = workload.child_name("copy-a")


def no_pv(name: str) -> dict[str, Any] | None:
    return None


# ---------------------------------------------------------------- the decision


def test_rwo_claims_held_on_two_nodes_need_a_pair_pinned_to_each():
    pods = [holder("data", "node-a"), holder("backup", "node-b")]
    pair = wirepair.plan(SPEC, [pvc("data"), pvc("backup")], uses(pods), OWN, no_pv)
    assert pair == wirepair.Pair(source_node="node-a", destination_node="node-b")


def test_local_volumes_on_two_nodes_need_a_pair_without_pins():
    pvs = {"pv-a": local_pv("node-a"), "pv-b": local_pv("node-b")}
    claims = [pvc("data", volume="pv-a"), pvc("backup", volume="pv-b")]
    pair = wirepair.plan(SPEC, claims, uses([]), OWN, pvs.get)
    assert pair == wirepair.Pair(source_node=None, destination_node=None)
    # One held by a pod, the other's volume bound elsewhere: still two nodes.
    pair = wirepair.plan(SPEC, claims, uses([holder("data", "node-a")]), OWN, pvs.get)
    assert pair == wirepair.Pair(source_node="node-a", destination_node=None)


@pytest.mark.parametrize(
    ("claims", "pods", "pvs"),
    [
        # Same node: one pod mounts both.
        ([pvc("data"), pvc("backup")], [holder("data", "n1"), holder("backup", "n1")], {}),
        # Only one side is known to be pinned: the usual single mover follows it.
        ([pvc("data"), pvc("backup")], [holder("data", "n1")], {}),
        # A shared (RWX) claim can be mounted anywhere.
        (
            [pvc("data", ["ReadWriteMany"]), pvc("backup")],
            [holder("data", "n1"), holder("backup", "n2")],
            {},
        ),
        # Finished pods and our own sender do not pin.
        (
            [pvc("data"), pvc("backup")],
            [holder("data", "n1"), holder("backup", "n2", phase="Succeeded")],
            {},
        ),
        ([pvc("data"), pvc("backup")], [holder("data", "n1"), holder("backup", "n2", job=OWN)], {}),
        # A claim that does not exist (yet): nothing says two nodes.
        ([pvc("data")], [holder("data", "n1"), holder("backup", "n2")], {}),
        # A PV allowed on several nodes pins nothing.
        (
            [pvc("data", volume="a"), pvc("backup", volume="b")],
            [],
            {"a": local_pv("n1"), "b": {"spec": {}}},
        ),
    ],
)
def test_one_mover_suffices(claims: Any, pods: Any, pvs: dict[str, Any]) -> None:
    assert wirepair.plan(SPEC, claims, uses(pods), OWN, pvs.get) is None


def test_not_two_claims_is_never_a_pair():
    s3 = api.TransferJobSpec.model_validate(
        {"source": PVC_TO_PVC["source"], "destination": {"s3": {"bucket": "bkt"}}}
    )
    pods = [holder("data", "n1"), holder("backup", "n2")]
    assert wirepair.plan(s3, [pvc("data"), pvc("backup")], uses(pods), OWN, no_pv) is None


# ---------------------------------------------------------------- certificates


def _handshake(
    tmp_path: Path, wire: certs.WireCerts, host: str, client: certs.WireCerts | None = None
) -> None:
    client = client or wire
    files = {
        "ca.crt": wire.ca_cert,
        "tls.crt": wire.server_cert,
        "tls.key": wire.server_key,
        "client.crt": client.client_cert,
        "client.key": client.client_key,
    }
    for k, v in files.items():
        (tmp_path / k).write_bytes(v)
    server = server_context(
        str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), str(tmp_path / "ca.crt")
    )
    client_ctx = client_context(
        FerryEndpoint(
            host,
            1,
            tls_cert=str(tmp_path / "client.crt"),
            tls_key=str(tmp_path / "client.key"),
            tls_ca=str(tmp_path / "ca.crt"),
        )
    )
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.version() == "TLSv1.3"
            tls.sendall(b"x")
            tls.recv(1)  # the server's verdict on our certificate arrives after the handshake
    finally:
        t.join(10)
        listener.close()
    if errors:
        raise errors[0]


def test_certificates_pass_mutual_tls_for_the_service_ip_and_names(tmp_path: Path):
    wire = certs.issue("team/copy", ["10.96.0.7", "ferry-copy-wire.team.svc"])
    _handshake(tmp_path, wire, "10.96.0.7")
    _handshake(tmp_path, wire, "ferry-copy-wire.team.svc")
    cert = x509.load_pem_x509_certificate(wire.server_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.96.0.7")]


def test_other_names_and_other_jobs_certificates_are_refused(tmp_path: Path):
    wire = certs.issue("team/copy", ["10.96.0.7"])
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, wire, "10.96.0.8")
    other = certs.issue("team/other", ["10.96.0.7"])
    with pytest.raises((ssl.SSLError, OSError)):  # a client cert of another job's CA
        _handshake(tmp_path, wire, "10.96.0.7", other)


def test_ca_key_is_not_kept_and_no_names_is_refused():
    wire = certs.issue("j", ["10.0.0.1"])
    assert b"PRIVATE KEY" not in wire.ca_cert + wire.server_cert + wire.client_cert
    with pytest.raises(ValueError, match="at least one name"):
        certs.issue("j", [])


# ---------------------------------------------------------------- objects and reconcile


class PairKube(FakeKube):
    """FakeKube with two claims held on two nodes and Services given a cluster IP."""

    def __init__(self, pods: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.pods = pods if pods is not None else [holder("data", "n1"), holder("backup", "n2")]

    def create(self, obj: dict[str, Any]) -> bool:
        if obj["kind"] == "Service" and ("Service", obj["metadata"]["name"]) not in self.objects:
            obj = json.loads(json.dumps(obj))
            obj["spec"]["clusterIP"] = "10.96.0.7"
        return super().create(obj)

    def get_pvcs(self, ns: str, names: list[str]) -> list[dict[str, Any]]:
        return [pvc(n) for n in names]

    def get_pv(self, name: str) -> dict[str, Any] | None:
        return None


def _reconciled(kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
    r, _, _, _ = reconciler()
    r.kube = kube  # type: ignore[assignment]
    pods = getattr(kube, "pods", [])
    return r.reconcile(body, claim_uses=uses(pods)).status


def test_reconcile_builds_the_pair_and_the_sender_sends_over_the_wire():
    kube = PairKube()
    body = transferjob(PVC_TO_PVC)
    _reconciled(kube, body)
    child, wire, recv = OWN, wirepair.wire_name("copy-a"), wirepair.receiver_name("copy-a")
    assert kube.created[:3] == [f"Service/{wire}", f"Secret/{wire}", f"Job/{recv}"]
    assert f"Job/{child}" in kube.created
    for obj in kube.objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-copy-a"

    secret = kube.objects[("Secret", wire)]
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(data) == {"ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"}
    server = x509.load_pem_x509_certificate(data["tls.crt"])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.96.0.7") in san.get_values_for_type(x509.IPAddress)
    assert f"{wire}.team.svc" in san.get_values_for_type(x509.DNSName)

    # The sender: source claim only, client keys only, pinned to the source's node.
    spec = json.loads(kube.objects[("ConfigMap", child)]["data"]["spec-0.json"])
    ts = TransferSpec.model_validate(spec)
    assert ts.destination.kind == "ferry"
    assert spec["destination"]["host"] == "10.96.0.7"
    assert spec["destination"]["port"] == wirepair.WIRE_PORT
    assert spec["source"] == {"kind": "local", "path": "/data/source/in"}
    job = kube.objects[("Job", child)]
    pod = job["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["data"]
    secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert secrets == [
        {
            "secretName": wire,
            "defaultMode": 0o400,
            "items": [{"key": k, "path": k} for k in wirepair.CLIENT_KEYS],
        }
    ]
    node_terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert node_terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n1"]
    init = pod["initContainers"][0]
    assert init["command"][-4:] == ["10.96.0.7", str(wirepair.WIRE_PORT), "600", wirepair.WIRE_DIR]
    assert [m["mountPath"] for m in init["volumeMounts"]] == [wirepair.WIRE_DIR]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "TRACEPARENT" in env  # the one trace goes on through the sender, as for one mover
    assert job["metadata"]["annotations"][wirepair.ANNOTATION_RECEIVER] == recv

    # The receiver: the destination claim read-write, server keys only, on the other node,
    # not labelled as a mover (status reads only the sender's pods).
    rjob = kube.objects[("Job", recv)]
    rpod = rjob["spec"]["template"]["spec"]
    assert workload.LABEL_TRANSFERJOB not in rjob["spec"]["template"]["metadata"]["labels"]
    args = rpod["containers"][0]["args"]
    assert args[:4] == ["serve", "/data/destination", "--listen", f"0.0.0.0:{wirepair.WIRE_PORT}"]
    rclaims = [v["persistentVolumeClaim"] for v in rpod["volumes"] if "persistentVolumeClaim" in v]
    assert rclaims == [{"claimName": "backup", "readOnly": False}]
    rsecret = next(v["secret"] for v in rpod["volumes"] if "secret" in v)
    assert [i["key"] for i in rsecret["items"]] == list(wirepair.SERVER_KEYS)
    rterms = rpod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rterms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n2"]
    assert rpod["automountServiceAccountToken"] is False
    assert (
        kube.objects[("Service", wire)]["spec"]["selector"]
        == rjob["spec"]["template"]["metadata"]["labels"]
    )


def test_receiver_root_is_the_destination_path():
    spec = dict(PVC_TO_PVC, destination={"pvc": {"claimName": "backup", "path": "/out/x/"}})
    kube = PairKube()
    _reconciled(kube, transferjob(spec))
    rjob = kube.objects[("Job", wirepair.receiver_name("copy-a"))]
    assert rjob["spec"]["template"]["spec"]["containers"][0]["args"][1] == "/data/destination/out/x"


def test_one_node_builds_the_single_mover():
    kube = PairKube(pods=[holder("data", "n1"), holder("backup", "n1")])
    _reconciled(kube, transferjob(PVC_TO_PVC))
    assert not any(k in ("Secret", "Service") for k, _ in kube.objects)
    spec = json.loads(kube.objects[("ConfigMap", OWN)]["data"]["spec-0.json"])
    assert spec["destination"]["kind"] == "local"


def test_foreign_service_or_secret_with_our_name_is_a_conflict():
    wire = wirepair.wire_name("copy-a")
    kube = PairKube()
    kube.objects[("Service", wire)] = {"kind": "Service", "metadata": {"name": wire}, "spec": {}}
    st = _reconciled(kube, transferjob(PVC_TO_PVC))
    assert st["reason"] == "NameConflict" and f"Service {wire}" in st["message"]
    assert ("Job", OWN) not in kube.objects

    kube = PairKube()
    kube.objects[("Secret", wire)] = {"kind": "Secret", "metadata": {"name": wire}}
    st = _reconciled(kube, transferjob(PVC_TO_PVC))
    assert st["reason"] == "NameConflict" and f"Secret {wire}" in st["message"]
    assert ("Job", OWN) not in kube.objects


def test_secret_of_an_interrupted_reconcile_is_adopted_unread():
    """A reconcile stopped after the Secret and Service: the next one finishes the pair."""
    kube = PairKube()
    body = transferjob(PVC_TO_PVC)
    _reconciled(kube, body)
    for key in list(kube.objects):
        if key[0] not in ("Secret", "Service"):
            del kube.objects[key]
    kept = kube.objects[("Secret", wirepair.wire_name("copy-a"))]
    st = _reconciled(kube, body)
    assert st.get("reason") != "NameConflict"
    assert ("Job", OWN) in kube.objects
    assert kube.objects[("Secret", wirepair.wire_name("copy-a"))] is kept


def _finish(kube: FakeKube, condition: str) -> None:
    job = kube.objects[("Job", OWN)]
    job["status"] = {
        "conditions": [{"type": condition, "status": "True"}],
        "succeeded" if condition == "Complete" else "failed": 1,
    }


@pytest.mark.parametrize(("condition", "phase"), [("Complete", "Succeeded"), ("Failed", "Failed")])
def test_receiver_is_stopped_when_the_sender_ends(condition: str, phase: str):
    kube = PairKube()
    body = transferjob(PVC_TO_PVC)
    first = _reconciled(kube, body)
    recv = wirepair.receiver_name("copy-a")
    assert first["phase"] not in ("Succeeded", "Failed")
    assert f"Job/{recv}" not in kube.deleted
    _finish(kube, condition)
    st = _reconciled(kube, transferjob(PVC_TO_PVC, status=first))
    assert st["phase"] == phase
    assert f"Job/{recv}" in kube.deleted
    assert ("Job", OWN) in kube.objects  # the sender's Job stays, as for one mover


def test_cancel_stops_the_receiver_too():
    kube = PairKube()
    first = _reconciled(kube, transferjob(PVC_TO_PVC))
    spec = dict(PVC_TO_PVC, cancel=True)
    _reconciled(kube, transferjob(spec, status=first, generation=2))
    assert f"Job/{wirepair.receiver_name('copy-a')}" in kube.deleted
    assert f"Job/{OWN}" in kube.deleted


def test_single_mover_end_deletes_nothing_else():
    kube = PairKube(pods=[])
    first = _reconciled(kube, transferjob(PVC_TO_PVC))
    _finish(kube, "Complete")
    _reconciled(kube, transferjob(PVC_TO_PVC, status=first))
    assert kube.deleted == []


# ---------------------------------------------------------------- the pods' commands, for real


def _secret_files(tmp_path: Path, host: str) -> Path:
    """The pair's Secret as the kubelet mounts it: one file per key."""
    body = transferjob(PVC_TO_PVC)
    obj = wirepair.secret(body, certs.issue("team/copy-a", [host]))
    d = tmp_path / "wire"
    d.mkdir()
    for key, value in obj["data"].items():
        (d / key).write_bytes(base64.b64decode(value))
    return d


def _wait_script(host: str, port: int, limit: float, d: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", wirepair.WAIT_SCRIPT, host, str(port), str(limit), str(d)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_receiver_command_serves_the_senders_spec_with_the_secrets_files(tmp_path: Path):
    """`ferry serve` with the receiver's args and the sender's `ferry run --spec` with its
    spec, both on loopback with the Secret's files: the files arrive, the wait passes."""
    d = _secret_files(tmp_path, "127.0.0.1")
    src, root = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    (src / "sub").mkdir()
    (src / "sub" / "b.txt").write_text("hello\n")
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            *FERRY,
            "serve",
            str(root),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(d / "tls.crt"),
            "--tls-key",
            str(d / "tls.key"),
            "--tls-ca",
            str(d / "ca.crt"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            assert server.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            m = re.search(r"listening on [\d.]+:(\d+)", (tmp_path / "serve.log").read_text())
            port = int(m.group(1)) if m else None
            if port is None:
                time.sleep(0.05)
        assert _wait_script("127.0.0.1", port, 30, d).returncode == 0

        spec = {
            "source": {"kind": "local", "path": str(src)},
            "destination": {
                "kind": "ferry",
                "host": "127.0.0.1",
                "port": port,
                "tlsCert": str(d / "client.crt"),
                "tlsKey": str(d / "client.key"),
                "tlsCa": str(d / "ca.crt"),
            },
        }
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        run = subprocess.run(
            [*FERRY, "run", "--spec", str(tmp_path / "spec.json")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert (root / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
        assert (root / "sub" / "b.txt").read_text() == "hello\n"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_wait_script_gives_up_at_its_deadline_naming_the_receiver(tmp_path: Path):
    d = _secret_files(tmp_path, "127.0.0.1")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _wait_script("127.0.0.1", port, 1, d)
    assert done.returncode == 1
    assert f"receiver 127.0.0.1:{port} not reachable after 1s" in done.stderr
