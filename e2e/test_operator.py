"""The operator against a real API server, installed by its own Helm chart.

The chart's CRDs are applied and the chart is installed into `ferry-system`;
the operator then runs as a pod under the chart's ServiceAccount and RBAC
(on the local cluster's real nodes: a container of the image built from the
Dockerfile). Data is seeded into and checked in the PVCs' host directories, so
these tests need a cluster whose volumes live on this machine (the local
control plane); elsewhere they skip.

An in-process OTLP/HTTP receiver (on the host's end of the pod network) collects the spans of both the
operator and the movers (OTEL_* variables set through the chart and passed on
to movers by the operator).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster import binaries
from e2e.support import FERRY_IMAGE, Cluster, local_claim, wait_for
from ferry.operator import moverspec, workload
from tests.servers import SambaServer, SSHServer, VersityServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
G, V = "ferry.dev", "v1alpha1"
RELEASE_NS = "ferry-system"
RELEASE = "ferry"
Obj = dict[str, Any]
# FERRY_E2E_ROOT_PODS=1 runs the operator and movers as uid 0, for a cluster whose
# nodes cannot run the image as the chart's non-root uid; by default the chart's
# secure settings are what is tested.
ROOT_PODS = os.environ.get("FERRY_E2E_ROOT_PODS") == "1"
RESYNC_SECONDS = 3600


def _raw(call: Any, *args: Any, **kwargs: Any) -> Obj:
    data: Obj = json.loads(call(*args, _preload_content=False, **kwargs).data)
    return data


# ---------------------------------------------------------------- OTLP receiver


class SpanStore:
    """Spans received over OTLP/HTTP (protobuf), as (service, name, trace id, span id, parent id)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, str, str, str, str]] = []

    def add(self, payload: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        req = ExportTraceServiceRequest()
        req.ParseFromString(payload)
        with self.lock:
            for rs in req.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in rs.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            (
                                service,
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                            )
                        )

    def of_trace(self, trace_id: str) -> list[tuple[str, str, str, str, str]]:
        with self.lock:
            return [s for s in self.spans if s[2] == trace_id]


@pytest.fixture(scope="session")
def otlp(cluster: Cluster) -> Iterator[tuple[str, SpanStore]]:
    store = SpanStore()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/v1/traces":
                store.add(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((cluster.host_ip, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{cluster.host_ip}:{server.server_port}", store
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- install


def _helm(cluster: Cluster) -> str:
    bin_dir = cluster.bin_dir or binaries.ensure()
    found = bin_dir / "helm"
    return str(found) if found.exists() else (shutil.which("helm") or "helm")


def _kubectl(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, check=check)


@pytest.fixture(scope="session")
def operator(cluster: Cluster, api: client.ApiClient, otlp: tuple[str, SpanStore]) -> Iterator[Obj]:
    """CRDs applied, chart installed with its own RBAC, operator pod running; yields that pod."""
    _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    _kubectl(cluster, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    repo, _, tag = FERRY_IMAGE.rpartition(":")
    values = [
        f"image.repository={repo}",
        f"image.tag={tag}",
        "pollInterval=1",
        "progressInterval=1",
        # Nothing here may wait for the safety-net resync: every change must arrive by event.
        f"resyncSeconds={RESYNC_SECONDS}",
        f"env.OTEL_EXPORTER_OTLP_ENDPOINT={otlp[0]}",
        "env.OTEL_BSP_SCHEDULE_DELAY=200",
    ]
    if ROOT_PODS:
        values += [
            "moverRunAsUser=0",
            "podSecurityContext.runAsUser=0",
            "podSecurityContext.runAsNonRoot=false",
        ]
    cmd = [
        _helm(cluster),
        "upgrade",
        "--install",
        RELEASE,
        str(REPO / "charts" / "ferry"),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        "--skip-crds",
        "--wait",
        "--timeout",
        "120s",
    ]
    for v in values:
        cmd += ["--set-string" if v.startswith("env.") else "--set", v]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"helm install failed: {done.stderr}"
    yield _operator_pod(client.CoreV1Api(api))
    subprocess.run(
        [
            _helm(cluster),
            "uninstall",
            RELEASE,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--namespace",
            RELEASE_NS,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _operator_pod(core: client.CoreV1Api, not_named: str | None = None) -> Obj:
    def probe() -> Obj | None:
        pods = _raw(
            core.list_namespaced_pod,
            RELEASE_NS,
            label_selector="app.kubernetes.io/name=ferry-operator",
        )
        for p in pods["items"]:
            if (
                p["metadata"]["name"] != not_named
                and p.get("status", {}).get("phase") == "Running"
                and p["status"].get("podIP")
                and not p["metadata"].get("deletionTimestamp")
            ):
                return p
        return None

    return wait_for("the operator pod to run", probe, timeout=120)


# ---------------------------------------------------------------- helpers


class Env:
    """One test namespace with handles for PVCs, TransferJobs and schedules."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self.ns = ns
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def pvc(self, name: str, modes: tuple[str, ...] = ("ReadWriteOnce",)) -> Path:
        return local_claim(self.core, self.ns, name, modes)

    def create(self, plural: str, name: str, spec: Obj, **meta: Any) -> Obj:
        kind = {"transferjobs": "TransferJob", "transferschedules": "TransferSchedule"}[plural]
        body = {
            "apiVersion": f"{G}/{V}",
            "kind": kind,
            "metadata": {"name": name, **meta},
            "spec": spec,
        }
        return _raw(self.custom.create_namespaced_custom_object, G, V, self.ns, plural, body)

    def get(self, plural: str, name: str) -> Obj:
        return _raw(self.custom.get_namespaced_custom_object, G, V, self.ns, plural, name)

    def patch_spec(self, plural: str, name: str, spec: Obj) -> None:
        self.custom.patch_namespaced_custom_object(G, V, self.ns, plural, name, {"spec": spec})

    def tj(self, name: str) -> Obj:
        return self.get("transferjobs", name)

    def wait_phase(self, name: str, phase: str, timeout: float = 120) -> Obj:
        def probe() -> Obj | None:
            obj = self.tj(name)
            st = obj.get("status") or {}
            if st.get("phase") == "Failed" and phase != "Failed":
                raise AssertionError(f"{name} failed: {st.get('reason')}: {st.get('message')}")
            return obj if st.get("phase") == phase else None

        return wait_for(f"TransferJob {name} {phase}", probe, timeout=timeout)

    def pods(self, tj: str) -> list[Obj]:
        items: list[Obj] = _raw(
            self.core.list_namespaced_pod, self.ns, label_selector=f"ferry.dev/transferjob={tj}"
        )["items"]
        return items

    def jobs(self, tj: str) -> list[Obj]:
        items: list[Obj] = _raw(
            self.batch.list_namespaced_job, self.ns, label_selector=f"ferry.dev/transferjob={tj}"
        )["items"]
        return items


@pytest.fixture
def env(api: client.ApiClient, namespace: str, operator: Obj) -> Env:
    return Env(api, namespace)


def seed(root: Path, files: dict[str, int]) -> dict[str, str]:
    """Write files of the given sizes (random bytes); return relative path -> sha256."""
    out = {}
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        p.write_bytes(data)
        os.chmod(p, 0o644)
        out[rel] = hashlib.sha256(data).hexdigest()
    for d in root.rglob("*"):
        if d.is_dir():
            os.chmod(d, 0o755)
    return out


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".ferry")
    }


def pvc_spec(src: str, dst: str, dst_path: str = "", **extra: Any) -> Obj:
    return {
        "source": {"pvc": {"claimName": src}},
        "destination": {"pvc": {"claimName": dst, "path": dst_path}},
        **extra,
    }


def scrape(pod: Obj) -> str:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        mname, _, rest = key.partition("{")
        have = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if mname == name and have == want:
            return float(value)
    return 0.0


def condition(obj: Obj, type_: str) -> Obj | None:
    """The condition of `type_` that holds (status True), if any."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def exit_codes(pods: list[Obj]) -> list[int]:
    return [
        cs["state"]["terminated"]["exitCode"]
        for p in pods
        for cs in (p.get("status") or {}).get("containerStatuses") or []
        if "terminated" in cs.get("state", {})
    ]


# ---------------------------------------------------------------- API validation


def test_api_server_rejects_invalid_specs_naming_the_field(env: Env) -> None:
    bad = {
        "source": {"pvc": {"claimName": "a"}, "s3": {"bucket": "bucket"}},
        "destination": {"pvc": {"claimName": "b"}},
        "bandwidth": "fast",
        "parallelism": {"shards": 0},
        "placement": {"resources": {"limits": {"memory": "lots"}}},
    }
    with pytest.raises(ApiException) as exc:
        env.create("transferjobs", "bad", bad)
    assert exc.value.status == 422
    text = str(exc.value.body)
    for field in (
        "spec.source",
        "spec.bandwidth",
        "spec.parallelism.shards",
        "spec.placement.resources.limits",
    ):
        assert field in text, text
    with pytest.raises(ApiException) as exc:
        env.create(
            "transferschedules",
            "bad",
            {"schedule": "every day", "jobTemplate": {"spec": pvc_spec("a", "b")}},
        )
    assert "spec.schedule" in str(exc.value.body)


def test_api_server_takes_mover_pool_profile_and_buffer_size(env: Env) -> None:
    """tuning.profile (an enum from the mover's profile table) and tuning.bufferSize (the
    mover's stream piece) are accepted; a profile not in the table is refused by name."""

    def pool(tuning: dict[str, object]) -> dict[str, object]:
        return {
            "apiVersion": f"{G}/{V}",
            "kind": "MoverPool",
            "metadata": {"name": f"tuned-{env.ns}"},
            "spec": {"tuning": tuning},
        }

    good = pool({"profile": "small-files", "bufferSize": "1M"})
    _raw(env.custom.create_cluster_custom_object, G, V, "moverpools", good, dry_run="All")
    with pytest.raises(ApiException) as exc:
        bad = pool({"profile": "fast"})
        _raw(env.custom.create_cluster_custom_object, G, V, "moverpools", bad, dry_run="All")
    assert exc.value.status == 422
    assert "spec.tuning.profile" in str(exc.value.body), exc.value.body


def test_examples_are_accepted(env: Env) -> None:
    for path in sorted((REPO / "examples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        plural = {
            "TransferJob": "transferjobs",
            "TransferSchedule": "transferschedules",
            "MoverPool": "moverpools",
        }[doc["kind"]]
        if doc["kind"] == "MoverPool":
            _raw(env.custom.create_cluster_custom_object, G, V, plural, doc, dry_run="All")
        else:
            _raw(
                env.custom.create_namespaced_custom_object, G, V, env.ns, plural, doc, dry_run="All"
            )


def _docs_yaml() -> list[tuple[str, Obj]]:
    """Every YAML block in docs/*.md, and every YAML file under docs/, as (where, document)."""
    found: list[tuple[str, Obj]] = []
    for md in sorted((REPO / "docs").glob("*.md")):
        blocks = re.findall(r"^```ya?ml\n(.*?)^```", md.read_text(), re.S | re.M)
        for i, block in enumerate(blocks):
            found += [(f"{md.name} block {i + 1}", d) for d in yaml.safe_load_all(block) if d]
    for f in sorted((REPO / "docs").rglob("*.yaml")):
        found += [(str(f.relative_to(REPO)), d) for d in yaml.safe_load_all(f.read_text()) if d]
    return found


def test_docs_yaml_is_accepted_by_the_api_server(
    env: Env, cluster: Cluster, tmp_path: Path
) -> None:
    """What the docs show, a user will paste: every whole object is applied (server-side dry
    run, in the test's namespace); a `spec:` fragment is applied inside a TransferJob; a
    namespace's `metadata:` fragment may only use the annotations the operator reads."""
    from ferry.operator import wirepair

    spec = pvc_spec("data", "data-copy")
    base: Obj = {"apiVersion": f"{G}/{V}", "kind": "TransferJob", "metadata": {"name": "doc"}}
    docs = _docs_yaml()
    assert len(docs) >= 6, docs  # the blocks are found at all
    applied = 0
    for where, doc in docs:
        if "kind" not in doc and set(doc) == {"metadata"}:
            assert set(doc["metadata"].get("annotations", {})) <= {
                wirepair.ALLOW_TO,
                wirepair.ALLOW_FROM,
            }, where
            continue
        if "kind" not in doc:
            assert set(doc) == {"spec"}, f"{where}: neither an object nor a spec fragment"
            doc = {**base, "spec": {**spec, **doc["spec"]}}
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": env.ns}}
        path = tmp_path / "doc.yaml"
        path.write_text(yaml.safe_dump(doc))
        done = _kubectl(cluster, "apply", "--dry-run=server", "-f", str(path), check=False)
        assert done.returncode == 0, f"{where}: {done.stderr}"
        applied += 1
    assert applied >= 5


def test_examples_run_to_succeeded(env: Env, cluster: Cluster) -> None:
    """The examples a local cluster can run, applied with kubectl as a user would: the
    PVC-to-PVC copy (2 shards) and the bulk MoverPool (its movers land on the tainted pool).
    The S3, SFTP and SMB examples name servers and Secrets of the user's; the same transfers
    run against real servers in the tests above. The nightly schedule fires at 02:00."""
    src, dst = env.pvc("data"), env.pvc("data-copy")
    want = seed(src, {f"d{i % 4}/f{i}.bin": 3000 + 700 * i for i in range(16)})
    _kubectl(
        cluster, "apply", "-n", env.ns, "-f", str(REPO / "examples/transferjob-pvc-to-pvc.yaml")
    )
    _kubectl(cluster, "apply", "-f", str(REPO / "examples/moverpool-bulk.yaml"))
    try:
        # Claims of its own: sharing `data` (RWO, in use on the general pool's node) would pin
        # this mover there, which the pool's node selector forbids.
        seed(env.pvc("pool-src"), {"p.bin": 5000})
        env.pvc("pool-dst")
        env.create(
            "transferjobs", "pooled", pvc_spec("pool-src", "pool-dst", placement={"pool": "bulk"})
        )
        obj = env.wait_phase("copy-data", "Succeeded", timeout=180)
        assert digests(dst / "snapshot") == want
        assert obj["status"]["result"]["shardsReported"] == 2
        env.wait_phase("pooled", "Succeeded", timeout=180)
        nodes = {p["spec"]["nodeName"] for p in env.pods("pooled")}
        labels = [_raw(env.core.read_node, n)["metadata"]["labels"] for n in nodes]
        assert all(lab.get("ferry.dev/pool") == "bulk" for lab in labels), nodes
    finally:
        _kubectl(cluster, "delete", "-f", str(REPO / "examples/moverpool-bulk.yaml"), check=False)


def test_operator_refuses_owner_preservation_without_admin_annotation(env: Env) -> None:
    env.pvc("src")
    env.pvc("dst")
    env.create("transferjobs", "owners", pvc_spec("src", "dst", preserve=["times", "owners"]))
    obj = env.wait_phase("owners", "Failed", timeout=60)
    st = obj["status"]
    assert st["reason"] == "PrivilegeNotGranted"
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and "spec.preserve" in accepted["message"]
    assert env.jobs("owners") == []


def test_operator_refuses_overlapping_s3_prefixes(env: Env) -> None:
    """A sync from x/inner into x of one bucket would delete its own source: refused with
    InvalidSpec before any pod exists (no S3 server is needed to see it)."""
    s3 = {"bucket": "bucket", "endpoint": "http://s3.invalid:9000"}
    spec = {
        "source": {"s3": {**s3, "prefix": "x/inner"}},
        "destination": {"s3": {**s3, "prefix": "x"}},
        "mode": "Sync",
    }
    env.create("transferjobs", "overlap", spec)
    st = env.wait_phase("overlap", "Failed", timeout=60)["status"]
    assert st["reason"] == "InvalidSpec"
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and "spec.destination.s3.prefix" in accepted["message"]
    assert env.jobs("overlap") == []


def test_owner_preservation_runs_privileged_where_the_namespace_allows_it(env: Env) -> None:
    """In a namespace an admin annotated, owners are kept: the mover runs as root with only
    the capabilities it needs (CHOWN, FOWNER, ...), in a real container."""
    env.core.patch_namespace(
        env.ns, {"metadata": {"annotations": {workload.NAMESPACE_PRIVILEGED_ANNOTATION: "true"}}}
    )
    src, dst = env.pvc("src"), env.pvc("dst")
    owners = {"a.bin": (1234, 5678), "d/b.bin": (4321, 8765), "d/c.bin": (0, 0)}
    want = seed(src, {rel: 1000 + i for i, rel in enumerate(owners)})
    for rel, (uid, gid) in owners.items():
        os.chown(src / rel, uid, gid)
    env.create("transferjobs", "owners", pvc_spec("src", "dst", preserve=["times", "owners"]))
    env.wait_phase("owners", "Succeeded", timeout=120)
    assert digests(dst) == want
    for rel, ids in owners.items():
        st = os.stat(dst / rel)
        assert (st.st_uid, st.st_gid) == ids, rel
    container = env.pods("owners")[0]["spec"]["containers"][0]["securityContext"]
    assert set(container["capabilities"]["add"]) == set(workload.PRIVILEGED_CAPABILITIES)
    assert container["capabilities"]["drop"] == ["ALL"]


def test_refused_spec_runs_once_edited_then_is_fixed(env: Env) -> None:
    """An edit fixes a refused spec; once the Job exists only the mutable fields change."""
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {"a.bin": 3000, "b/c.bin": 10})
    env.create("transferjobs", "fixme", pvc_spec("src", "dst", preserve=["times", "owners"]))
    env.wait_phase("fixme", "Failed", timeout=60)
    env.patch_spec("transferjobs", "fixme", {"preserve": ["times"]})

    def ran() -> Obj | None:
        obj = env.tj("fixme")
        st = obj.get("status") or {}
        done = st.get("phase") == "Succeeded" and st.get("observedGeneration") == 2
        return obj if done else None

    obj = wait_for("the edited TransferJob to succeed", ran, timeout=120)
    assert digests(dst) == want and obj["status"]["jobName"]
    annotations = env.jobs("fixme")[0]["metadata"]["annotations"]
    assert "source" in json.loads(annotations[workload.ANNOTATION_SPEC_DIGESTS])
    with pytest.raises(ApiException) as exc:
        env.patch_spec("transferjobs", "fixme", {"source": {"pvc": {"claimName": "dst"}}})
    assert exc.value.status == 422 and "spec.source cannot change" in str(exc.value.body)
    env.patch_spec("transferjobs", "fixme", {"ttlSecondsAfterFinished": 3600})
    wait_for(
        "the TTL edit to be observed",
        lambda: (env.tj("fixme").get("status") or {}).get("observedGeneration") == 3,
        timeout=60,
    )


# ---------------------------------------------------------------- transfers


def test_pvc_to_pvc_end_to_end(env: Env, operator: Obj, cluster: Cluster) -> None:
    before = scrape(operator)
    src, dst = env.pvc("src"), env.pvc("dst")
    files = {f"dir{i % 3}/file{i}.bin": 1000 * (i + 1) for i in range(12)} | {"empty.txt": 0}
    want = seed(src, files)
    env.create("transferjobs", "copy", pvc_spec("src", "dst", "out"))
    obj = env.wait_phase("copy", "Succeeded")
    assert digests(dst / "out") == want
    st = obj["status"]
    assert st["result"]["filesCopied"] == len(files)
    assert st["result"]["bytesTransferred"] == sum(files.values())
    assert st["progress"]["percent"] == "100%"
    assert st["startTime"] and st["completionTime"] and st["observedGeneration"] == 1
    assert len(st["traceID"]) == 32
    job = env.jobs("copy")[0]
    assert job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    pod = env.pods("copy")[0]
    assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # A non-root mover in a real container wrote the files, and `kubectl logs` shows it ran.
    assert {(dst / "out" / rel).stat().st_uid for rel in files} == {workload.MOVER_UID}
    assert _kubectl(cluster, "logs", "-n", env.ns, pod["metadata"]["name"]).stdout.strip()
    assert [c["image"] for c in operator["spec"]["containers"]] == [FERRY_IMAGE]

    def counted() -> str | None:
        text = scrape(operator)
        return (
            text
            if metric(text, "ferry_transferjob_runs_total", result="Succeeded", reason="Completed")
            > metric(before, "ferry_transferjob_runs_total", result="Succeeded", reason="Completed")
            else None
        )

    after = wait_for("metrics to count the run", counted, timeout=30)

    def watched() -> dict[str, Any] | None:
        # kopf's liveness endpoint runs our watch probe, caching its answer for 10 s: one the
        # kubelet asked for before the first event may still be served just after start.
        with urllib.request.urlopen(
            f"http://{operator['status']['podIP']}:8081/healthz", timeout=5
        ) as r:
            health: dict[str, Any] = json.loads(r.read())
        return health if health["watch"]["objects"] >= 1 else None

    wait_for("the watch probe to count the TransferJob", watched, timeout=25)
    assert metric(after, "ferry_transferred_bytes_total") >= metric(
        before, "ferry_transferred_bytes_total"
    ) + sum(files.values())
    assert metric(after, "ferry_reconciles_total", kind="TransferJob") > metric(
        before, "ferry_reconciles_total", kind="TransferJob"
    )


def test_mover_out_of_memory_is_reported(env: Env) -> None:
    """A mover over its memory limit is killed by the kernel; the TransferJob says so."""
    seed(env.pvc("src"), {"a.bin": 1000})
    env.pvc("dst")
    # Below what the interpreter and the mover's imports take (~19 MiB at least): killed early.
    tight = {"limits": {"memory": "16Mi"}, "requests": {"memory": "16Mi"}}
    env.create(
        "transferjobs",
        "tight",
        pvc_spec("src", "dst", retry={"limit": 0}, placement={"resources": tight}),
    )
    st = env.wait_phase("tight", "Failed", timeout=180)["status"]
    assert st["reason"] == "OOMKilled", st
    failed = condition(env.tj("tight"), "Failed")
    assert failed is not None and failed["reason"] == "OOMKilled"
    assert "memory limit" in failed["message"]


def test_suspended_transfer_runs_when_resumed(env: Env) -> None:
    """suspend: true makes a suspended Job (the Job controller starts no pod); false resumes it."""
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {"a/1": 1000, "b": 2000})
    env.create("transferjobs", "later", pvc_spec("src", "dst", suspend=True))
    env.wait_phase("later", "Suspended", timeout=60)
    job = wait_for(
        "the Job controller to hold the Job suspended",
        lambda: next((j for j in env.jobs("later") if condition(j, "Suspended")), None),
        timeout=60,
    )
    assert job["spec"]["suspend"] is True
    assert not job["status"].get("active") and not job["status"].get("startTime")
    assert env.pods("later") == []
    env.patch_spec("transferjobs", "later", {"suspend": False})
    obj = env.wait_phase("later", "Succeeded", timeout=120)
    assert digests(dst) == want
    assert obj["status"]["result"]["filesCopied"] == 2
    assert len(env.jobs("later")) == 1 and len(env.pods("later")) == 1


def test_suspended_transferjobs_deleted_job_is_put_back(env: Env) -> None:
    """A suspended TransferJob has no follower (and no finalizer); its Job deleted is put back
    all the same, suspended, within seconds and without an edit (the Job's own DELETED event)."""
    env.pvc("src")
    env.pvc("dst")
    env.create("transferjobs", "held", pvc_spec("src", "dst", suspend=True))
    obj = env.wait_phase("held", "Suspended", timeout=60)
    assert not obj["metadata"].get("finalizers")
    first = wait_for("its Job", lambda: next(iter(env.jobs("held")), None), timeout=60)
    env.batch.delete_namespaced_job(
        first["metadata"]["name"], env.ns, propagation_policy="Background"
    )
    again = wait_for(
        "its Job put back",
        lambda: next(
            (j for j in env.jobs("held") if j["metadata"]["uid"] != first["metadata"]["uid"]),
            None,
        ),
        timeout=30,
    )
    assert again["spec"]["suspend"] is True
    assert env.tj("held")["metadata"]["generation"] == obj["metadata"]["generation"]  # no edit
    assert env.pods("held") == []


def test_progress_visible_while_throttled(env: Env) -> None:
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {f"f{i}": 1024 * 1024 for i in range(6)})
    env.create("transferjobs", "slow", pvc_spec("src", "dst", bandwidth="1M"))

    def partial() -> Obj | None:
        st = env.tj("slow").get("status") or {}
        prog = st.get("progress") or {}
        ok = st.get("phase") == "Running" and 0 < prog.get("bytesDone", 0) < prog.get(
            "bytesTotal", 0
        )
        return st if ok else None

    st = wait_for("partial progress in status", partial, timeout=60)
    assert st["progress"]["percent"].endswith("%") and st["progress"]["percent"] != "100%"
    assert st["progress"]["shards"]["0"]["bytesTotal"] == 6 * 1024 * 1024
    env.wait_phase("slow", "Succeeded", timeout=120)
    assert digests(dst) == want


def test_sharded_transfer_moves_every_file_exactly_once(env: Env) -> None:
    src, dst = env.pvc("src", ("ReadWriteMany",)), env.pvc("dst", ("ReadWriteMany",))
    files = {f"d{i % 5}/f{i}": 500 + 37 * i for i in range(60)} | {"big1": 300_000, "big2": 200_000}
    want = seed(src, files)
    env.create("transferjobs", "sharded", pvc_spec("src", "dst", parallelism={"shards": 3}))
    obj = env.wait_phase("sharded", "Succeeded", timeout=180)
    assert digests(dst) == want
    st = obj["status"]
    assert st["result"]["shardsReported"] == 3
    assert st["result"]["filesCopied"] == len(files)  # each file by exactly one shard
    assert st["result"]["bytesTransferred"] == sum(files.values())
    assert sorted(st["progress"]["shards"]) == ["0", "1", "2"]
    assert st["progress"]["bytesDone"] == sum(
        s["bytesDone"] for s in st["progress"]["shards"].values()
    )


def test_killed_mover_is_retried_and_resumes(env: Env) -> None:
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {f"f{i}": 512 * 1024 for i in range(10)})
    env.create("transferjobs", "killed", pvc_spec("src", "dst", bandwidth="1M", retry={"limit": 2}))

    def halfway() -> Obj | None:
        st = env.tj("killed").get("status") or {}
        return st if (st.get("progress") or {}).get("filesDone", 0) >= 3 else None

    wait_for("three files done", halfway, timeout=90)
    first = env.pods("killed")
    assert len(first) == 1
    env.core.delete_namespaced_pod(first[0]["metadata"]["name"], env.ns, grace_period_seconds=0)
    obj = env.wait_phase("killed", "Succeeded", timeout=180)
    assert digests(dst) == want
    res = obj["status"]["result"]
    assert res["filesCopied"] + res["filesSkipped"] == 10
    assert res["filesSkipped"] + (1 if res["bytesResumed"] else 0) >= 1, (
        res
    )  # the retry did not start over
    names = {p["metadata"]["name"] for p in env.pods("killed")}
    assert first[0]["metadata"]["name"] not in names and len(env.jobs("killed")) == 1


def test_operator_restart_mid_transfer_adopts_the_job(env: Env, api: client.ApiClient) -> None:
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {f"f{i}": 512 * 1024 for i in range(8)})
    env.create("transferjobs", "adopt", pvc_spec("src", "dst", bandwidth="1M"))
    wait_for(
        "transfer running",
        lambda: (env.tj("adopt").get("status") or {}).get("phase") == "Running",
        timeout=90,
    )
    core = client.CoreV1Api(api)
    old = _operator_pod(core)
    core.delete_namespaced_pod(old["metadata"]["name"], RELEASE_NS)
    _operator_pod(core, not_named=old["metadata"]["name"])
    obj = env.wait_phase("adopt", "Succeeded", timeout=180)
    assert digests(dst) == want
    assert len(env.jobs("adopt")) == 1
    assert len(env.pods("adopt")) == 1  # the mover was never duplicated or restarted
    assert obj["status"]["result"]["filesCopied"] == 8


def test_cancel_and_delete_leave_nothing_behind(env: Env) -> None:
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {f"f{i}": 512 * 1024 for i in range(8)})
    env.create("transferjobs", "stopme", pvc_spec("src", "dst", bandwidth="512K"))
    wait_for(
        "transfer running",
        lambda: (env.tj("stopme").get("status") or {}).get("phase") == "Running",
        timeout=90,
    )
    env.patch_spec("transferjobs", "stopme", {"cancel": True})
    obj = env.wait_phase("stopme", "Failed", timeout=60)
    assert obj["status"]["reason"] == "Cancelled"
    wait_for(
        "mover gone", lambda: env.pods("stopme") == [] and env.jobs("stopme") == [], timeout=90
    )
    env.custom.delete_namespaced_custom_object(G, V, env.ns, "transferjobs", "stopme")

    def children_gone() -> bool:
        sel = "ferry.dev/transferjob=stopme"
        return not (
            _raw(env.core.list_namespaced_config_map, env.ns, label_selector=sel)["items"]
            or _raw(env.core.list_namespaced_service_account, env.ns, label_selector=sel)["items"]
        )

    wait_for("ConfigMap and ServiceAccount garbage-collected", children_gone, timeout=90)


def pvc_to_s3_spec(env: Env, s3srv: VersityServer, claim: str, prefix: str = "") -> Obj:
    """A TransferJob spec from `claim` to bucket "backups", its credentials in Secret "s3"."""
    creds = s3srv.write_credentials(Path(s3srv.dir) / "credentials").read_text()
    _raw(
        env.core.create_namespaced_secret,
        env.ns,
        {"metadata": {"name": "s3"}, "stringData": {"credentials": creds}},
    )
    s3 = {
        "bucket": "backups",
        "prefix": prefix,
        "endpoint": s3srv.endpoint_url,
        "region": "us-east-1",
        "pathStyle": True,
        "secretRef": {"name": "s3"},
    }
    return {"source": {"pvc": {"claimName": claim}}, "destination": {"s3": s3}}


def test_pvc_to_s3(env: Env, cluster: Cluster) -> None:
    """A PVC to a real S3 gateway (versitygw stores objects as files, as S3 keeps them)."""
    s3srv = VersityServer(host=cluster.host_ip).start()
    try:
        s3srv.create_bucket("backups")
        src = env.pvc("src")
        files = {f"a/{i}.bin": 10_000 + i for i in range(10)} | {"big.bin": 6 * 1024 * 1024}
        want = seed(src, files)
        env.create("transferjobs", "to-s3", pvc_to_s3_spec(env, s3srv, "src", prefix="team/"))
        obj = env.wait_phase("to-s3", "Succeeded", timeout=180)
        s3 = s3srv.client()
        got = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="backups", Prefix="team/"):
            for o in page.get("Contents", []):
                body = s3.get_object(Bucket="backups", Key=o["Key"])["Body"].read()
                got[o["Key"][len("team/") :]] = hashlib.sha256(body).hexdigest()
        assert {k: v for k, v in got.items() if not k.startswith(".ferry")} == want
        assert obj["status"]["result"]["filesCopied"] == len(files)
    finally:
        s3srv.close()


def _secret(env: Env, name: str, data: dict[str, str]) -> None:
    _raw(
        env.core.create_namespaced_secret,
        env.ns,
        {"metadata": {"name": name}, "stringData": data},
    )


def assert_secrets_mounted_read_only(pod: Obj, keys_by_volume: dict[str, list[str]]) -> None:
    """The mover pod mounts only the named keys, read-only, owner-readable only (0400; with
    fsGroup the kubelet adds group read: 0440, see test_cluster's fsGroup test). That the
    mover, uid 65532 with every capability dropped, used them proves it could read them."""
    spec = pod["spec"]
    sc = spec["securityContext"]
    assert sc["runAsUser"] == workload.MOVER_UID and sc["runAsNonRoot"] is True
    container = spec["containers"][0]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for name, keys in keys_by_volume.items():
        secret = volumes[name]["secret"]
        assert secret["defaultMode"] == 0o400 and [i["key"] for i in secret["items"]] == keys
        assert mounts[name]["readOnly"] is True
        assert mounts[name]["mountPath"].startswith(moverspec.SECRETS_DIR + "/")


def test_sftp_and_smb_credentials_are_mounted_read_only_and_used(
    env: Env, cluster: Cluster
) -> None:
    """PVC to the real sshd (key auth, strict known_hosts) and to the real smbd (password),
    each with nothing but the Secrets the TransferJob names."""
    sshd, smbd = SSHServer(host=cluster.host_ip), SambaServer(host=cluster.host_ip)
    try:
        sshd.start()
        smbd.start()
        src = env.pvc("src")
        want = seed(src, {"a/1.bin": 10_000, "a/2.bin": 70_000, "b.txt": 12})
        _secret(env, "sftp-key", {"ssh-privatekey": sshd.user_key.read_text()})
        _secret(env, "sftp-hosts", {"known_hosts": sshd.known_hosts.read_text()})
        _secret(env, "smb-password", {"password": smbd.password})
        sftp = {
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            "path": str(sshd.root / "in"),
            "secretRef": {"name": "sftp-key"},
            "knownHostsRef": {"name": "sftp-hosts", "key": "known_hosts"},
        }
        smb = {
            "host": smbd.host,
            "port": smbd.port,
            "share": smbd.share,
            "path": "in",
            "user": smbd.user,
            "secretRef": {"name": "smb-password"},
        }
        source = {"pvc": {"claimName": "src"}}
        env.create("transferjobs", "to-sftp", {"source": source, "destination": {"sftp": sftp}})
        env.create("transferjobs", "to-smb", {"source": source, "destination": {"smb": smb}})
        for tj in ("to-sftp", "to-smb"):
            obj = env.wait_phase(tj, "Succeeded", timeout=180)
            assert obj["status"]["result"]["filesCopied"] == len(want)
        assert digests(sshd.root / "in") == want
        assert digests(smbd.root / "in") == want
        assert_secrets_mounted_read_only(
            env.pods("to-sftp")[0],
            {
                "destination-secret": ["ssh-privatekey"],
                "destination-known-hosts-secret": ["known_hosts"],
            },
        )
        assert_secrets_mounted_read_only(
            env.pods("to-smb")[0], {"destination-secret": ["password"]}
        )
    finally:
        sshd.close()
        smbd.close()


# ---------------------------------------------------------------- RBAC


def test_mover_credentials_reach_only_their_own_status(env: Env, cluster: Cluster) -> None:
    env.pvc("src")
    env.pvc("dst")
    env.create("transferjobs", "mine", pvc_spec("src", "dst", suspend=True))
    env.create("transferjobs", "other", pvc_spec("src", "dst", suspend=True))
    env.wait_phase("mine", "Suspended", timeout=60)
    _raw(
        env.core.create_namespaced_secret,
        env.ns,
        {"metadata": {"name": "secret"}, "stringData": {"k": "v"}},
    )
    token = _raw(
        env.core.create_namespaced_service_account_token,
        "ferry-mine",
        env.ns,
        {"spec": {"expirationSeconds": 600}},
    )["status"]["token"]
    with cluster.api() as admin:
        cfg = client.Configuration()
        cfg.host = admin.configuration.host
        cfg.ssl_ca_cert = admin.configuration.ssl_ca_cert
        cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as mover:
        custom, core = client.CustomObjectsApi(mover), client.CoreV1Api(mover)
        assert custom.get_namespaced_custom_object_status(G, V, env.ns, "transferjobs", "mine")
        custom.patch_namespaced_custom_object_status(
            G,
            V,
            env.ns,
            "transferjobs",
            "mine",
            {"status": {"progress": {"shards": {"0": {"bytesDone": 1}}}}},
        )
        denied = [
            lambda: custom.get_namespaced_custom_object_status(
                G, V, env.ns, "transferjobs", "other"
            ),
            lambda: custom.patch_namespaced_custom_object_status(
                G, V, env.ns, "transferjobs", "other", {"status": {}}
            ),
            lambda: custom.patch_namespaced_custom_object(
                G, V, env.ns, "transferjobs", "mine", {"spec": {"dryRun": True}}
            ),
            lambda: core.read_namespaced_secret("secret", env.ns),
            lambda: core.list_namespaced_secret(env.ns),
        ]
        for call in denied:
            with pytest.raises(ApiException) as exc:
                call()
            assert exc.value.status == 403


# ---------------------------------------------------------------- schedules


def _children(env: Env, schedule: str) -> list[Obj]:
    items: list[Obj] = _raw(
        env.custom.list_namespaced_custom_object,
        G,
        V,
        env.ns,
        "transferjobs",
        label_selector=f"ferry.dev/schedule={schedule}",
    )["items"]
    return items


def test_schedule_fires_on_time_in_its_zone(env: Env) -> None:
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {"a": 100})
    zone = ZoneInfo("Asia/Kathmandu")  # UTC+05:45: a wrong zone would be off by hours
    target = (datetime.now(UTC) + timedelta(seconds=12)).replace(microsecond=0)
    local = target.astimezone(zone)
    expr = f"{local.minute} {local.hour} {local.day} {local.month} * {local.second}"
    env.create(
        "transferschedules",
        "once",
        {
            "schedule": expr,
            "timeZone": "Asia/Kathmandu",
            "jobTemplate": {"spec": pvc_spec("src", "dst")},
        },
    )
    kids = wait_for("the scheduled run", lambda: _children(env, "once"), timeout=60)
    created = datetime.fromisoformat(
        kids[0]["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )
    assert kids[0]["metadata"]["annotations"]["ferry.dev/scheduled-at"] == target.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    # Never early; late only by the operator's pace (generous: a wrong zone is hours off).
    assert target <= created + timedelta(seconds=1) and created - target < timedelta(seconds=60)
    env.wait_phase(kids[0]["metadata"]["name"], "Succeeded", timeout=120)
    st = env.get("transferschedules", "once")["status"]
    wait_for(
        "lastSuccessfulTime",
        lambda: (env.get("transferschedules", "once").get("status") or {}).get(
            "lastSuccessfulTime"
        ),
        timeout=30,
    )
    assert st["lastScheduleTime"] == target.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_schedule_forbid_suspend_and_manual_trigger(env: Env) -> None:
    src, _ = env.pvc("src"), env.pvc("dst")
    # Long enough (32 s at the nominal rate) to stay active however loose the throttle.
    seed(src, {f"f{i}": 1024 * 1024 for i in range(8)})
    slow = pvc_spec("src", "dst", bandwidth="256K")
    env.create(
        "transferschedules",
        "often",
        {
            "schedule": "* * * * * */2",
            "startingDeadlineSeconds": 1,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": slow},
        },
    )

    def status() -> Obj:
        return env.get("transferschedules", "often").get("status") or {}

    first = wait_for("first run", lambda: _children(env, "often"), timeout=60)
    assert len(first) == 1
    name = first[0]["metadata"]["name"]
    wait_for(
        "runs missed while one is active", lambda: status().get("missedRuns", 0) >= 3, timeout=60
    )
    kids = _children(env, "often")
    assert (env.tj(name).get("status") or {}).get("phase") == "Running"  # still the active run
    assert len(kids) == 1 and status()["active"] == [{"name": name}]

    env.patch_spec("transferschedules", "often", {"suspend": True})
    env.patch_spec("transferjobs", name, {"cancel": True})
    env.wait_phase(name, "Failed", timeout=60)
    missed = status().get("missedRuns", 0)
    wait_for(
        "suspended slots pass", lambda: status().get("missedRuns", 0) >= missed + 3, timeout=60
    )
    assert len(_children(env, "often")) == 1  # suspend stopped new runs

    env.patch_spec(
        "transferschedules",
        "often",
        {"trigger": "run-now-1", "jobTemplate": {"spec": pvc_spec("src", "dst")}},
    )
    manual = wait_for(
        "the manual run",
        lambda: [k for k in _children(env, "often") if "manual" in k["metadata"]["name"]],
        timeout=60,
    )
    assert status()["lastTrigger"] == "run-now-1"
    env.wait_phase(manual[0]["metadata"]["name"], "Succeeded", timeout=120)
    missed = status().get("missedRuns", 0)
    wait_for("more reconciles", lambda: status().get("missedRuns", 0) >= missed + 2, timeout=60)
    assert len([k for k in _children(env, "often") if "manual" in k["metadata"]["name"]]) == 1


# ---------------------------------------------------------------- traces


def test_one_trace_holds_operator_and_mover_spans(env: Env, otlp: tuple[str, SpanStore]) -> None:
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {"x/1": 1000, "x/2": 2000})
    env.create("transferjobs", "traced", pvc_spec("src", "dst"))
    trace_id = env.wait_phase("traced", "Succeeded")["status"]["traceID"]

    def both() -> list[tuple[str, str, str, str, str]] | None:
        spans = otlp[1].of_trace(trace_id)
        services = {s[0] for s in spans}
        names = {s[1] for s in spans}
        return (
            spans
            if {"ferry-operator", "ferry-mover"} <= services and "ferry.run" in names
            else None
        )

    spans = wait_for("operator and mover spans in one trace", both, timeout=60)
    by_id = {s[3]: s for s in spans}
    run = next(s for s in spans if s[1] == "ferry.run")
    assert by_id[run[4]][0] == "ferry-operator"  # the mover's root hangs below a reconcile span
    assert any(
        s[1].startswith("ferry.") and s[4] == run[3] for s in spans
    )  # phase spans below the run


# ---------------------------------------------------------------- failures, deadlines, TTL, pools


def test_unfixable_failure_is_terminal_without_retries(env: Env) -> None:
    env.pvc("src")
    env.pvc("dst")
    spec = {
        "source": {"pvc": {"claimName": "src", "path": "does/not/exist"}},
        "destination": {"pvc": {"claimName": "dst"}},
        "retry": {"limit": 3},
    }
    env.create("transferjobs", "missing", spec)
    obj = env.wait_phase("missing", "Failed", timeout=90)
    st = obj["status"]
    assert st["reason"] == "SourceNotFound", st
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "SourceNotFound"
    # The Job controller applied the pod failure policy to the mover's real exit code 3:
    # the Job failed at once, no second pod despite retry.limit 3.
    assert exit_codes(env.pods("missing")) == [3]
    job_failed = condition(env.jobs("missing")[0], "Failed")
    assert job_failed is not None and job_failed["reason"] == "PodFailurePolicy", job_failed


def test_transient_failure_gets_another_pod(env: Env, cluster: Cluster) -> None:
    """Exit 11 (Transient: an S3 endpoint that refuses connections) is retried by the Job
    controller with a new pod, up to retry.limit, and then fails the transfer."""
    src = env.pvc("src")
    seed(src, {"a": 10})
    _raw(
        env.core.create_namespaced_secret,
        env.ns,
        {
            "metadata": {"name": "s3"},
            "stringData": {
                "credentials": "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n"
            },
        },
    )
    with socket.socket() as closed:
        closed.bind((cluster.host_ip, 0))  # bound but never listening: every connect is refused
        spec = {
            "source": {"pvc": {"claimName": "src"}},
            "destination": {
                "s3": {
                    "bucket": "unreachable",
                    "endpoint": f"http://{cluster.host_ip}:{closed.getsockname()[1]}",
                    "region": "us-east-1",
                    "pathStyle": True,
                    "secretRef": {"name": "s3"},
                }
            },
            "retry": {"limit": 1},
        }
        env.create("transferjobs", "refused", spec)
        obj = env.wait_phase("refused", "Failed", timeout=180)
    assert obj["status"]["reason"] == "Transient", obj["status"]
    assert exit_codes(env.pods("refused")) == [11, 11]  # a second pod, and no third
    job_failed = condition(env.jobs("refused")[0], "Failed")
    assert job_failed is not None and job_failed["reason"] == "BackoffLimitExceeded", job_failed


def test_evicted_mover_is_replaced_without_counting(env: Env) -> None:
    """A pod evicted through the Eviction API carries DisruptionTarget: the pod failure policy
    ignores it, so even with retry.limit 0 (backoffLimit 0) the Job makes a new pod."""
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {f"f{i}": 512 * 1024 for i in range(8)})
    env.create(
        "transferjobs", "evicted", pvc_spec("src", "dst", bandwidth="1M", retry={"limit": 0})
    )

    def started() -> Obj | None:
        st = env.tj("evicted").get("status") or {}
        return st if (st.get("progress") or {}).get("filesDone", 0) >= 2 else None

    wait_for("two files done", started, timeout=90)
    assert env.jobs("evicted")[0]["spec"]["backoffLimit"] == 0
    first = env.pods("evicted")
    assert len(first) == 1
    name = first[0]["metadata"]["name"]
    env.core.create_namespaced_pod_eviction(
        name,
        env.ns,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=env.ns)),
    )

    def disrupted() -> Obj | None:
        pods = [p for p in env.pods("evicted") if p["metadata"]["name"] == name]
        return next((c for p in pods if (c := condition(p, "DisruptionTarget"))), None)

    cond = wait_for("the evicted pod marked DisruptionTarget", disrupted, timeout=30)
    assert cond["reason"] == "EvictionByEvictionAPI", cond
    obj = env.wait_phase("evicted", "Succeeded", timeout=180)
    assert digests(dst) == want
    names = [p["metadata"]["name"] for p in env.pods("evicted")]
    assert name not in names and len(names) == 1, names  # replaced once
    job = env.jobs("evicted")[0]
    assert condition(job, "Complete") and not condition(job, "Failed")
    assert obj["status"]["result"]["filesCopied"] + obj["status"]["result"]["filesSkipped"] == 8


def test_active_deadline_fails_the_transfer(env: Env) -> None:
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {f"f{i}": 1024 * 1024 for i in range(8)})
    env.create(
        "transferjobs",
        "late",
        pvc_spec("src", "dst", bandwidth="256K", activeDeadlineSeconds=3),
    )
    obj = env.wait_phase("late", "Failed", timeout=90)
    assert obj["status"]["reason"] == "DeadlineExceeded"
    wait_for(
        "mover stopped",
        lambda: (
            all(
                p.get("status", {}).get("phase") in ("Failed", "Succeeded")
                or p["metadata"].get("deletionTimestamp")
                for p in env.pods("late")
            )
            or not env.pods("late")
        ),
        timeout=60,
    )


def test_ttl_after_finished_deletes_the_transferjob(env: Env) -> None:
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {"a": 10})
    env.create("transferjobs", "brief", pvc_spec("src", "dst", ttlSecondsAfterFinished=2))

    def gone() -> bool:
        try:
            env.tj("brief")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("TransferJob deleted by its TTL", gone, timeout=90)
    wait_for("its Job garbage-collected", lambda: env.jobs("brief") == [], timeout=90)


def test_mover_pool_places_the_mover(env: Env) -> None:
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {"x": 1000, "y/z": 2000})
    pool = f"bulk-{env.ns}"
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "MoverPool",
        "metadata": {"name": pool},
        "spec": {
            "nodeSelector": {"ferry.dev/pool": "bulk"},
            "tolerations": [
                {
                    "key": "ferry.dev/pool",
                    "operator": "Equal",
                    "value": "bulk",
                    "effect": "NoSchedule",
                }
            ],
            "tuning": {"streams": 2},
        },
    }
    _raw(env.custom.create_cluster_custom_object, G, V, "moverpools", body)
    try:
        env.create("transferjobs", "pooled", pvc_spec("src", "dst", placement={"pool": pool}))
        env.wait_phase("pooled", "Succeeded", timeout=120)
        pod = env.pods("pooled")[0]
        node = _raw(env.core.read_node, pod["spec"]["nodeName"])
        assert node["metadata"]["labels"].get("ferry.dev/pool") == "bulk"
        assert digests(dst) == want

        def accepted() -> bool:
            st = (
                _raw(env.custom.get_cluster_custom_object, G, V, "moverpools", pool).get("status")
                or {}
            )
            return any(
                c["type"] == "Accepted" and c["status"] == "True"
                for c in st.get("conditions") or []
            )

        wait_for("pool accepted", accepted, timeout=30)
    finally:
        env.custom.delete_cluster_custom_object(G, V, "moverpools", pool)


def test_mover_pool_profile_and_memory_limit_size_the_mover(env: Env) -> None:
    """a pool's profile reaches the mover, and the mover's in-flight bound follows
    its container's memory limit (the downward API), as its summary reports."""
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {"a": 1000, "b/c": 3 << 20})
    pool = f"tuned-{env.ns}"
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "MoverPool",
        "metadata": {"name": pool},
        "spec": {
            "resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "tuning": {"profile": "small-files"},
        },
    }
    _raw(env.custom.create_cluster_custom_object, G, V, "moverpools", body)
    try:
        env.create("transferjobs", "tuned", pvc_spec("src", "dst", placement={"pool": pool}))
        env.wait_phase("tuned", "Succeeded", timeout=120)
        assert digests(dst) == want
        messages = [
            cs["state"]["terminated"].get("message") or ""
            for p in env.pods("tuned")
            for cs in (p.get("status") or {}).get("containerStatuses") or []
            if "terminated" in cs.get("state", {})
        ]
        tuning = json.loads(messages[0])["tuning"]
        assert tuning["profile"] == "small-files" and tuning["transfers"] == 32, tuning
        assert tuning["maxInFlightBytes"] == 128 << 20, tuning  # a quarter of 512Mi
    finally:
        env.custom.delete_cluster_custom_object(G, V, "moverpools", pool)


# ---------------------------------------------------------------- events, shutdown, deletion


def _operator_args(api: client.ApiClient) -> list[str]:
    dep = _raw(client.AppsV1Api(api).read_namespaced_deployment, f"{RELEASE}-operator", RELEASE_NS)
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_job_completion_reaches_status_without_a_poll(env: Env, api: client.ApiClient) -> None:
    """The Job's Complete condition is in status.phase within seconds; the resync is an hour."""
    assert f"--resync-interval={RESYNC_SECONDS}" in _operator_args(api)
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {"a": 1000})
    env.create("transferjobs", "quick", pvc_spec("src", "dst"))
    job = wait_for(
        "the Job Complete",
        lambda: next((j for j in env.jobs("quick") if condition(j, "Complete")), None),
        timeout=120,
        every=0.1,
    )
    seen = datetime.now(UTC)
    env.wait_phase("quick", "Succeeded", timeout=15)
    lag = (datetime.now(UTC) - seen).total_seconds()
    assert lag < 10, f"status followed the Job's completion after {lag:.1f}s"
    assert condition(job, "Complete") is not None


def test_stopped_operator_creates_nothing_after_sigterm(env: Env, api: client.ApiClient) -> None:
    """Stop the operator mid-burst of creations: no Job is created after its SIGTERM, and the
    next operator finishes the burst with one Job per TransferJob.

    Scaling to 0 (rather than deleting the pod) leaves no successor running meanwhile, so
    every Job created in that window would be the old process's.
    """
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    names = [f"burst-{i:03d}" for i in range(80)]

    def create_all() -> None:
        for name in names:
            env.create("transferjobs", name, pvc_spec("src", "dst", suspend=True))

    creator = threading.Thread(target=create_all)
    creator.start()
    sel = f"{workload.LABEL_MANAGED_BY}={workload.MANAGED_BY}"

    def jobs() -> list[Obj]:
        items: list[Obj] = _raw(env.batch.list_namespaced_job, env.ns, label_selector=sel)["items"]
        return items

    old = _operator_pod(core)["metadata"]["name"]
    try:
        wait_for("the first Jobs of the burst", lambda: len(jobs()) >= 5, timeout=60, every=0.05)
        stopped_at = datetime.now(UTC)
        apps.patch_namespaced_deployment_scale(
            f"{RELEASE}-operator", RELEASE_NS, {"spec": {"replicas": 0}}
        )
        creator.join(timeout=120)

        def gone() -> bool:
            pods = _raw(core.list_namespaced_pod, RELEASE_NS)["items"]
            return all(p["metadata"]["name"] != old for p in pods)

        wait_for("the old operator pod gone", gone, timeout=60, every=0.1)
        took = (datetime.now(UTC) - stopped_at).total_seconds()
        made = jobs()
        # creationTimestamp has 1 s resolution; the kubelet delivers SIGTERM shortly after
        # the deletion: allow 2 s for both.
        limit = stopped_at.replace(microsecond=0) + timedelta(seconds=2)
        late = [
            j["metadata"]["name"] for j in made if _ts(j["metadata"]["creationTimestamp"]) > limit
        ]
        assert not late, f"created after SIGTERM ({stopped_at.isoformat()}): {late}"
        assert len(made) < len(names), "the burst was not cut: nothing was tested"
        assert took < 20, f"the old operator took {took:.0f}s to exit (grace period 15 s)"
    finally:
        creator.join(timeout=120)
        apps.patch_namespaced_deployment_scale(
            f"{RELEASE}-operator", RELEASE_NS, {"spec": {"replicas": 1}}
        )
        _operator_pod(core, not_named=old)

    def all_suspended() -> bool:
        items = _raw(env.custom.list_namespaced_custom_object, G, V, env.ns, "transferjobs")
        phases = [(o.get("status") or {}).get("phase") for o in items["items"]]
        return len(phases) == len(names) and all(p == "Suspended" for p in phases)

    wait_for("every TransferJob Suspended", all_suspended, timeout=180)
    per_tj: dict[str, int] = {}
    for j in jobs():
        tj = j["metadata"]["labels"][workload.LABEL_TRANSFERJOB]
        per_tj[tj] = per_tj.get(tj, 0) + 1
    assert per_tj == dict.fromkeys(names, 1)


def test_deleted_while_being_reconciled_goes_within_seconds(env: Env) -> None:
    """Deleted right after creation (create handlers in flight) or while followed (pods that
    cannot schedule keep sending events): every TransferJob is gone within seconds, not
    after kopf's one-minute cancellation polling."""
    nowhere = {"nodeSelector": {"ferry.dev/e2e-no-such-node": "x"}}
    early = [f"early-{i:02d}" for i in range(20)]
    followed = [f"followed-{i:02d}" for i in range(20)]
    for name in followed:
        env.create("transferjobs", name, pvc_spec("src", "dst", placement=nowhere))
    wait_for(
        "a pending mover pod for each",
        lambda: all(len(env.pods(n)) == 1 for n in followed),
        timeout=120,
    )
    for name in early:
        env.create("transferjobs", name, pvc_spec("src", "dst", placement=nowhere))
    start = datetime.now(UTC)
    for name in [*early, *followed]:
        env.custom.delete_namespaced_custom_object(G, V, env.ns, "transferjobs", name)

    def remaining() -> int:
        items = _raw(env.custom.list_namespaced_custom_object, G, V, env.ns, "transferjobs")
        return len(items["items"])

    wait_for("every TransferJob gone", lambda: remaining() == 0, timeout=60, every=0.1)
    took = (datetime.now(UTC) - start).total_seconds()
    assert took < 10, f"deleting 40 TransferJobs took {took:.1f}s"


def test_dry_run_plan_is_read_from_the_audit_log_in_the_volume(env: Env) -> None:
    """a dry-run TransferJob with auditLog writes its plan as JSON lines into the
    destination claim (and nothing else there); status.auditLog says where."""
    src, dst = env.pvc("src"), env.pvc("dst")
    seed(src, {"a.bin": 1000, "d/b.bin": 2000})
    spec = pvc_spec("src", "dst", mode="Sync", dryRun=True, auditLog="audit/plan.jsonl")
    env.create("transferjobs", "planned", spec)
    obj = env.wait_phase("planned", "Succeeded", timeout=180)
    assert obj["status"]["auditLog"] == "pvc dst: audit/plan.jsonl"
    plan = [json.loads(line) for line in (dst / "audit" / "plan.jsonl").read_text().splitlines()]
    copies = {e["path"]: e["size"] for e in plan if e["op"] == "copy"}
    assert copies == {"a.bin": 1000, "d/b.bin": 2000}
    assert {e["result"] for e in plan} == {"planned"}
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == ["audit", "audit/plan.jsonl"]


def test_dry_run_plan_on_the_movers_stdout_is_in_its_pod_log(env: Env) -> None:
    """auditLog '-': the plan's JSON lines are in the mover pod's log (where a collector
    reads stdout); status.auditLog names the kubectl command."""
    src, dst = env.pvc("src"), env.pvc("dst")
    seed(src, {"a.bin": 1000, "d/b.bin": 2000})
    env.create("transferjobs", "told", pvc_spec("src", "dst", dryRun=True, auditLog="-"))
    obj = env.wait_phase("told", "Succeeded", timeout=180)
    assert "kubectl logs -l job-name=" in obj["status"]["auditLog"]
    (pod,) = env.pods("told")
    text = env.core.read_namespaced_pod_log(pod["metadata"]["name"], env.ns)
    docs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    plan = [d for d in docs if "op" in d]
    assert {d["path"]: d["size"] for d in plan if d["op"] == "copy"} == {
        "a.bin": 1000,
        "d/b.bin": 2000,
    }
    assert not any(dst.iterdir())


def test_files_from_a_configmap_waits_for_it_then_copies_only_the_list(env: Env) -> None:
    """filesFromConfigMap: while the ConfigMap is missing the TransferJob says so (Pending,
    naming it); once created, the mover reads the mounted key as --files-from."""
    src, dst = env.pvc("src"), env.pvc("dst")
    seed(src, {"a.bin": 1000, "d/b.bin": 2000, "e/skip.bin": 300})
    ref = {"name": "lists", "key": "wanted.txt"}
    env.create("transferjobs", "listed", pvc_spec("src", "dst", "out", filesFromConfigMap=ref))

    def waiting() -> Obj | None:
        st = env.tj("listed").get("status") or {}
        return st if st.get("reason") == "ConfigMapNotFound" else None

    st = wait_for("Pending naming the missing ConfigMap", waiting, timeout=120)
    assert st["phase"] == "Pending" and "ConfigMap lists not found" in st["message"]
    body = {"metadata": {"name": "lists"}, "data": {"wanted.txt": "# two of three\na.bin\n/d/\n"}}
    env.core.create_namespaced_config_map(env.ns, body)  # type: ignore[arg-type]

    def ended() -> Obj | None:
        st = env.tj("listed").get("status") or {}
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    st = wait_for("the transfer to end", ended, timeout=300)
    assert st["phase"] == "Succeeded", json.dumps(st.get("result"))
    assert st["result"]["filesCopied"] == 2
    out = dst / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a.bin", "d", "d/b.bin"]
