# ruff: noqa: F811  (fixtures imported from test_operator are parameters here)
"""What the operator may and may not do, proven on the real API server under the chart's RBAC.

The first tests use the release the `operator` fixture installs (cluster-wide). The last
ones, sharing the module-scoped `scoped` release, stop that operator while they run: they
must stay at the end of this file (pytest keeps file order) so the others find it running.
The very last cuts the scoped operator off the API server to see the kubelet's probes act.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster.podnet import PodNetwork
from e2e.support import FERRY_IMAGE, Cluster, wait_for
from e2e.test_operator import (  # noqa: F401  (fixtures are used by name)
    RELEASE,
    RELEASE_NS,
    REPO,
    ROOT_PODS,
    Env,
    G,
    Obj,
    SpanStore,
    _helm,
    _operator_pod,
    _raw,
    digests,
    env,
    metric,
    operator,
    otlp,
    pvc_spec,
    pvc_to_s3_spec,
    scrape,
    seed,
)
from e2e.test_operator import V as VERSION
from tests.servers import VersityServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OPERATOR_SA = (RELEASE_NS, f"{RELEASE}-operator")  # the chart's ServiceAccount


def can(
    api: client.ApiClient, sa: tuple[str, str], verb: str, resource: str, ns: str, group: str = ""
) -> bool:
    """The API server's own answer (a SubjectAccessReview) for a ServiceAccount."""
    sa_ns, name = sa
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{sa_ns}:{name}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa_ns}"],
            "resourceAttributes": {
                "namespace": ns,
                "verb": verb,
                "group": group,
                "resource": resource,
            },
        },
    }
    review = _raw(client.AuthorizationV1Api(api).create_subject_access_review, body)
    return bool(review["status"].get("allowed"))


def condition(obj: Obj, type_: str) -> Obj:
    return next(c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_)


# ---------------------------------------------------------------- Secrets


def test_operator_never_reads_secrets_yet_movers_use_them(
    env: Env, api: client.ApiClient, cluster: Cluster
) -> None:
    for verb in ("get", "list", "watch"):
        assert not can(api, OPERATOR_SA, verb, "secrets", env.ns), verb
        assert not can(api, OPERATOR_SA, verb, "secrets", ""), f"{verb} cluster-wide"
    assert can(api, OPERATOR_SA, "create", "jobs", env.ns, "batch")

    s3srv = VersityServer(host=cluster.host_ip).start()
    try:
        s3srv.create_bucket("backups")
        src = env.pvc("src")
        want = seed(src, {"a.bin": 5000, "d/b.bin": 7000})
        env.create("transferjobs", "with-secret", pvc_to_s3_spec(env, s3srv, "src"))
        env.wait_phase("with-secret", "Succeeded", timeout=180)
        s3 = s3srv.client()
        keys = {
            o["Key"]
            for o in s3.list_objects_v2(Bucket="backups").get("Contents", [])
            if not o["Key"].startswith(".ferry")
        }
        assert keys == set(want)
    finally:
        s3srv.close()


# ---------------------------------------------------------------- decisions on the real API


def test_foreign_children_with_our_names_are_conflicts_and_untouched(env: Env) -> None:
    """A Job or ConfigMap named like the TransferJob's child but not owned by it."""
    env.pvc("src")
    env.pvc("dst")
    foreign_job = _raw(
        env.batch.create_namespaced_job,
        env.ns,
        {
            "metadata": {"name": "ferry-clash-job"},
            "spec": {
                "suspend": True,  # never runs: the object itself is the point
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": FERRY_IMAGE, "args": ["--version"]}],
                    }
                },
            },
        },
    )
    foreign_cm = _raw(
        env.core.create_namespaced_config_map,
        env.ns,
        {"metadata": {"name": "ferry-clash-cm"}, "data": {"spec.json": "{}"}},
    )
    env.create("transferjobs", "clash-job", pvc_spec("src", "dst"))
    env.create("transferjobs", "clash-cm", pvc_spec("src", "dst"))
    for name, kind in (("clash-job", "Job"), ("clash-cm", "ConfigMap")):
        st = env.wait_phase(name, "Failed", timeout=90)["status"]
        assert st["reason"] == "NameConflict", st
        assert f"{kind} ferry-{name} exists and is not owned" in st["message"], st
        assert condition(env.tj(name), "Accepted")["reason"] == "NameConflict"
    job = _raw(env.batch.read_namespaced_job, "ferry-clash-job", env.ns)
    cm = _raw(env.core.read_namespaced_config_map, "ferry-clash-cm", env.ns)
    # The Job controller writes the Job's status; nobody may touch what the test wrote.
    for key in ("labels", "annotations", "ownerReferences"):
        assert job["metadata"].get(key) == foreign_job["metadata"].get(key), key
    assert job["spec"] == foreign_job["spec"]
    assert cm["metadata"]["resourceVersion"] == foreign_cm["metadata"]["resourceVersion"]
    assert not job["metadata"].get("ownerReferences") and not cm["metadata"].get("ownerReferences")
    assert env.jobs("clash-cm") == []  # no mover ran on someone else's spec


def test_missing_pool_waits_then_runs_once_it_exists(env: Env) -> None:
    src, dst = env.pvc("src"), env.pvc("dst")
    want = seed(src, {"x": 3000})
    pool = f"later-{env.ns}"
    env.create("transferjobs", "pooled", pvc_spec("src", "dst", placement={"pool": pool}))

    def waiting() -> Obj | None:
        st = env.tj("pooled").get("status") or {}
        return st if st.get("reason") == "PoolNotFound" else None

    st = wait_for("PoolNotFound", waiting, timeout=60)
    assert st["phase"] == "Pending" and pool in st["message"], st
    assert env.jobs("pooled") == []
    body = {
        "apiVersion": f"{G}/{VERSION}",
        "kind": "MoverPool",
        "metadata": {"name": pool},
        "spec": {"tuning": {"streams": 2}},
    }
    _raw(env.custom.create_cluster_custom_object, G, VERSION, "moverpools", body)
    try:
        env.wait_phase("pooled", "Succeeded", timeout=120)
        assert digests(dst) == want
    finally:
        env.custom.delete_cluster_custom_object(G, VERSION, "moverpools", pool)


def test_finished_transfer_is_never_rerun(
    env: Env, api: client.ApiClient, otlp: tuple[str, SpanStore]
) -> None:
    """After Succeeded, neither a deleted Job nor an operator restart brings a new Job.

    The operator's own spans prove it looked again: resume reconciles every object and
    each reconcile is a span in the TransferJob's trace.
    """
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {"a": 100})
    env.create("transferjobs", "once", pvc_spec("src", "dst"))
    trace = env.wait_phase("once", "Succeeded")["status"]["traceID"]
    old_job = env.jobs("once")[0]["metadata"]["uid"]
    env.batch.delete_namespaced_job("ferry-once", env.ns, propagation_policy="Background")
    wait_for("the Job gone", lambda: env.jobs("once") == [], timeout=60)

    def reconciles() -> int:
        return sum(1 for s in otlp[1].of_trace(trace) if s[1] == "reconcile TransferJob")

    # Stopped, not deleted, so the old process has exported its last span (at shutdown)
    # before counting, and no new one has started yet.
    core = client.CoreV1Api(api)
    _scale_shared(api, 0)
    try:
        wait_for("the operator stopped", lambda: not _shared_pods(core), timeout=120)
        before = reconciles()
        assert before >= 1
    finally:
        _scale_shared(api, 1)
    _operator_pod(core)
    wait_for("the restarted operator to reconcile it", lambda: reconciles() > before, timeout=120)
    assert env.jobs("once") == [], f"re-ran (the first Job was {old_job})"
    assert env.pods("once") == [] or all(
        p["metadata"].get("deletionTimestamp") or p["status"].get("phase") == "Succeeded"
        for p in env.pods("once")
    )
    assert env.tj("once")["status"]["phase"] == "Succeeded"


def test_schedule_metrics_follow_its_runs(env: Env, api: client.ApiClient) -> None:
    src, _ = env.pvc("src"), env.pvc("dst")
    seed(src, {"a": 100})
    env.create(
        "transferschedules",
        "metered",
        {
            "schedule": "* * * * * */4",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": pvc_spec("src", "dst")},
        },
    )
    labels = {"namespace": env.ns, "schedule": "metered"}

    def succeeded() -> str | None:
        st = env.get("transferschedules", "metered").get("status") or {}
        return st.get("lastSuccessfulTime")

    last = wait_for("a successful scheduled run", succeeded, timeout=120)
    pod = _operator_pod(client.CoreV1Api(api))

    def exported() -> str | None:
        text = scrape(pod)
        return (
            text
            if metric(text, "ferry_schedule_last_success_timestamp_seconds", **labels)
            else None
        )

    text = wait_for("the schedule's series", exported, timeout=60)
    done = datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp()
    got = metric(text, "ferry_schedule_last_success_timestamp_seconds", **labels)
    assert abs(got - done) <= 1, (got, done)
    assert metric(text, "ferry_schedule_expected_interval_seconds", **labels) == 4
    created = env.get("transferschedules", "metered")["metadata"]["creationTimestamp"]
    assert metric(text, "ferry_schedule_created_timestamp_seconds", **labels) == (
        datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    )
    assert metric(text, "ferry_schedule_suspended", **labels) == 0
    # The run's bytes reached the counter (live or at its end), and the build is named.
    assert metric(text, "ferry_transferred_bytes_total") >= 100
    assert re.search(r'^ferry_build_info\{python="[^"]+",version="[^"]+"\} 1\.0$', text, re.M)
    env.patch_spec("transferschedules", "metered", {"suspend": True})
    wait_for(
        "the suspended gauge",
        lambda: metric(scrape(pod), "ferry_schedule_suspended", **labels) == 1,
        timeout=60,
    )
    missed = metric(scrape(pod), "ferry_schedule_missed_runs_total", **labels)
    wait_for(
        "suspended slots counted as missed",
        lambda: metric(scrape(pod), "ferry_schedule_missed_runs_total", **labels) > missed,
        timeout=60,
    )
    env.custom.delete_namespaced_custom_object(G, VERSION, env.ns, "transferschedules", "metered")
    wait_for(
        "the series removed with the schedule",
        lambda: "metered" not in scrape(pod),
        timeout=60,
    )


# ---------------------------------------------------------------- a namespace-scoped release

SCOPED = "ferry-scoped"


@dataclass
class Scoped:
    """A second release watching namespaces `a` and `c` (not `b`), in its own namespace."""

    release_ns: str
    a: str
    b: str
    c: str
    sa: tuple[str, str]


def _scoped_pod(core: client.CoreV1Api, ns: str) -> Obj:
    def probe() -> Obj | None:
        pods = _raw(
            core.list_namespaced_pod, ns, label_selector=f"app.kubernetes.io/instance={SCOPED}"
        )
        for p in pods["items"]:
            if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP"):
                return p
        return None

    return wait_for("the scoped operator pod to run", probe, timeout=120)


def _helm_run(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_helm(cluster), *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=240,
    )


def _shared_pods(core: client.CoreV1Api) -> list[Obj]:
    items: list[Obj] = _raw(
        core.list_namespaced_pod,
        RELEASE_NS,
        label_selector=f"app.kubernetes.io/instance={RELEASE}",
    )["items"]
    return items


def _scale_shared(api: client.ApiClient, replicas: int) -> None:
    client.AppsV1Api(api).patch_namespaced_deployment_scale(
        f"{RELEASE}-operator", RELEASE_NS, {"spec": {"replicas": replicas}}
    )


@pytest.fixture(scope="module")
def scoped(cluster: Cluster, api: client.ApiClient, operator: Obj) -> Iterator[Scoped]:
    """The chart installed with `watchNamespaces: [a, c]`; the shared operator is stopped
    meanwhile (two operators would both act on `a`)."""
    core = client.CoreV1Api(api)
    tag = uuid.uuid4().hex[:6]
    release_ns = f"ferry-scoped-{tag}"
    s = Scoped(
        release_ns,
        f"e2e-a-{tag}",
        f"e2e-b-{tag}",
        f"e2e-c-{tag}",
        (release_ns, f"{SCOPED}-operator"),
    )
    for ns in (s.a, s.b, s.c):
        core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]
    _scale_shared(api, 0)
    try:
        wait_for("the shared operator stopped", lambda: not _shared_pods(core), timeout=120)
        repo, _, image_tag = FERRY_IMAGE.rpartition(":")
        values = [
            f"image.repository={repo}",
            f"image.tag={image_tag}",
            "pollInterval=1",
            "progressInterval=1",
            f"watchNamespaces={{{s.a},{s.c}}}",
            # Probes tight enough for a test to see them act: a live watch re-lists every
            # 5 s, so only a dead one goes 20 s without an event (the probe test below).
            "liveness.watchTimeoutSeconds=5",
            "liveness.staleSeconds=20",
            "liveness.probe.initialDelaySeconds=5",
            "liveness.probe.periodSeconds=5",
            "liveness.probe.failureThreshold=2",
            "liveness.readinessProbe.periodSeconds=2",
        ]
        if ROOT_PODS:
            values += [
                "moverRunAsUser=0",
                "podSecurityContext.runAsUser=0",
                "podSecurityContext.runAsNonRoot=false",
            ]
        args = ["upgrade", "--install", SCOPED, str(REPO / "charts" / "ferry")]
        args += ["--namespace", s.release_ns, "--create-namespace", "--skip-crds"]
        args += ["--wait", "--timeout", "180s"]
        for v in values:
            args += ["--set", v]
        done = _helm_run(cluster, *args)
        assert done.returncode == 0, f"helm install failed: {done.stderr}"
        yield s
    finally:
        # The operator's finalizers (kopf's, for its timers) must go while it still runs.
        custom = client.CustomObjectsApi(api)
        for ns in (s.a, s.c):
            with contextlib.suppress(ApiException):
                custom.delete_collection_namespaced_custom_object(G, VERSION, ns, "transferjobs")
        wait_for(
            "the watched namespaces' TransferJobs deleted",
            lambda: (
                not any(
                    _raw(custom.list_namespaced_custom_object, G, VERSION, ns, "transferjobs")[
                        "items"
                    ]
                    for ns in (s.a, s.c)
                )
            ),
            timeout=120,
        )
        _helm_run(cluster, "uninstall", SCOPED, "--namespace", s.release_ns, "--wait")
        for ns in (s.a, s.b, s.c, s.release_ns):
            try:
                core.delete_namespace(ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        _scale_shared(api, 1)
        _operator_pod(core)


def test_watch_namespaces_restricts_the_operator_and_its_rbac(
    scoped: Scoped, api: client.ApiClient
) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    cluster_rules = _raw(rbac.read_cluster_role, f"{SCOPED}-operator")["rules"]
    cluster_resources = {r for rule in cluster_rules for r in rule.get("resources", [])}
    assert not cluster_resources & {"jobs", "transferjobs", "configmaps", "roles", "pods"}, (
        cluster_resources
    )
    for ns in (scoped.a, scoped.c):
        assert can(api, scoped.sa, "create", "jobs", ns, "batch"), ns
    assert not can(api, scoped.sa, "create", "jobs", scoped.b, "batch")
    assert not can(api, scoped.sa, "list", "transferjobs", scoped.b, G)
    for ns in (scoped.a, scoped.b):
        assert not can(api, scoped.sa, "get", "secrets", ns)

    a, b = Env(api, scoped.a), Env(api, scoped.b)
    src, dst = a.pvc("src"), a.pvc("dst")
    want = seed(src, {"f": 2000})
    b.pvc("src")
    b.pvc("dst")
    b.create("transferjobs", "ignored", pvc_spec("src", "dst"))
    a.create("transferjobs", "watched", pvc_spec("src", "dst"))
    a.wait_phase("watched", "Succeeded", timeout=180)
    assert digests(dst) == want
    # The operator has been reconciling `a` all along: had it watched `b`, it would have acted.
    assert not b.tj("ignored").get("status"), b.tj("ignored")
    assert b.jobs("ignored") == []


def test_rbac_refusal_is_a_condition_counted_without_crashing(
    scoped: Scoped, api: client.ApiClient
) -> None:
    """The test takes `create` on Jobs out of the chart's Role in `c`, then gives it back."""
    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    role_name = f"{SCOPED}-operator"
    role = _raw(rbac.read_namespaced_role, role_name, scoped.c)
    rules: list[dict[str, Any]] = role["rules"]
    narrowed = [
        {**r, "verbs": [v for v in r["verbs"] if v != "create"]} if "jobs" in r["resources"] else r
        for r in rules
    ]
    rbac.patch_namespaced_role(role_name, scoped.c, {"rules": narrowed})
    wait_for(
        "the narrowed Role in force",
        lambda: not can(api, scoped.sa, "create", "jobs", scoped.c, "batch"),
        timeout=30,
    )
    pod = _scoped_pod(core, scoped.release_ns)
    before = metric(scrape(pod), "ferry_reconcile_errors_total", kind="TransferJob")

    c = Env(api, scoped.c)
    src, dst = c.pvc("src"), c.pvc("dst")
    want = seed(src, {"g": 1000})
    c.create("transferjobs", "denied", pvc_spec("src", "dst"))

    def forbidden() -> Obj | None:
        st = c.tj("denied").get("status") or {}
        return st if st.get("reason") == "Forbidden" else None

    st = wait_for("the Forbidden reason", forbidden, timeout=90)
    assert st["phase"] == "Pending", st
    assert scoped.c in st["message"] and "jobs" in st["message"], st
    accepted = condition(c.tj("denied"), "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "Forbidden", accepted
    wait_for(
        "the refusals counted (one per poll)",
        lambda: (
            metric(scrape(pod), "ferry_reconcile_errors_total", kind="TransferJob") >= before + 2
        ),
        timeout=60,
    )
    assert c.jobs("denied") == []

    rbac.patch_namespaced_role(role_name, scoped.c, {"rules": rules})
    c.wait_phase("denied", "Succeeded", timeout=180)
    assert digests(dst) == want
    assert condition(c.tj("denied"), "Accepted")["status"] == "True"
    now = _scoped_pod(core, scoped.release_ns)
    assert now["metadata"]["uid"] == pod["metadata"]["uid"]  # the same process throughout
    assert all(s.get("restartCount", 0) == 0 for s in now["status"]["containerStatuses"])


def test_operator_cut_off_from_the_api_server_turns_unready_and_is_restarted(
    cluster: Cluster, scoped: Scoped, api: client.ApiClient
) -> None:
    """The chart's probes, run by the kubelet: with its watches dead (every packet from its
    pod dropped in the pod network), the operator turns unready, then the kubelet restarts
    it; once the network is back, it is ready again. (The previous test saw it run, watch
    and reconcile for minutes without a restart: a live watch keeps the probes green.)"""
    assert cluster.layout is not None
    core = client.CoreV1Api(api)
    Env(api, scoped.a).create(
        "transferjobs", "idle", pvc_spec("src", "dst", suspend=True)
    )  # an object watched: the probe's staleness rule applies
    pod = _scoped_pod(core, scoped.release_ns)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]

    def status() -> Obj:
        st: Obj = _raw(core.read_namespaced_pod, name, scoped.release_ns)["status"]
        return st

    def ready() -> bool:
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status()["conditions"])

    wait_for("the operator ready", ready, timeout=60)
    restarts = status()["containerStatuses"][0]["restartCount"]
    net = PodNetwork.load(cluster.layout.podnet)
    rule = ["FORWARD", "-s", ip, "-j", "DROP"]
    subprocess.run([*net.enter(), "iptables", "-I", *rule], check=True)
    try:
        wait_for("the operator unready", lambda: not ready(), timeout=90)
        wait_for(
            "the kubelet to restart the operator",
            lambda: status()["containerStatuses"][0]["restartCount"] > restarts,
            timeout=120,
        )
    finally:
        subprocess.run([*net.enter(), "iptables", "-D", *rule], check=True)
    wait_for("the operator ready again", ready, timeout=120)
    assert status()["containerStatuses"][0]["lastState"]["terminated"]
    events = _raw(
        core.list_namespaced_event,
        scoped.release_ns,
        field_selector=f"involvedObject.name={name}",
    )["items"]
    messages = " ".join(e.get("message", "") for e in events)
    assert "Readiness probe failed" in messages and "Liveness probe failed" in messages, messages
    assert "failed liveness probe, will be restarted" in messages, messages
