"""The chart's values, rendered by `helm template` (no cluster): the operator's timing values
and the movers' pod defaults reach its command line, which parses them into the settings it
runs with; the mover ServiceAccount, the aggregated roles, the values schema's refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from e2e.cluster import binaries
from ferry.operator import api
from ferry.operator.main import parser

REPO = Path(__file__).resolve().parent.parent


def test_resync_retry_and_shutdown_values_reach_the_operator() -> None:
    helm = binaries.ensure() / "helm"
    values = ["resyncSeconds=71", "retrySeconds=13", "shutdownTimeoutSeconds=17"]
    cmd = [str(helm), "template", "ferry", str(REPO / "charts" / "ferry")]
    for v in values:
        cmd += ["--set", v]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 17 + 5  # the exit bound plus a margin
    args = pod["containers"][0]["args"]
    assert {"--resync-interval=71", "--retry-interval=13", "--shutdown-timeout=17"} <= set(args)
    parsed = parser().parse_args([a for a in args if a.startswith("--") and "$(" not in a])
    assert (parsed.resync_interval, parsed.retry_interval, parsed.shutdown_timeout) == (71, 13, 17)


def _template(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    helm = binaries.ensure() / "helm"
    cmd = [str(helm), "template", "ferry", str(REPO / "charts" / "ferry"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


def _docs(out: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(out) if d]


def test_mover_pod_defaults_reach_the_operator_as_the_models_settings() -> None:
    pod = {
        "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
        "labels": {"sidecar.istio.io/inject": "false"},
        "caBundle": {"name": "corp-ca"},
        "proxy": {"httpsProxy": "http://proxy:3128", "noProxy": ".svc"},
    }
    out = _template(
        "--set-json",
        f"moverPod={json.dumps(pod)}",
        "--set",
        "moverServiceAccount.create=true",
        "--set-json",
        'moverServiceAccount.annotations={"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}',
        "--set",
        "watchNamespaces={a,b}",
        "--set-json",
        'imagePullSecrets=[{"name": "regcred"}]',
    ).stdout
    docs = _docs(out)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    args = spec["containers"][0]["args"]
    parsed = parser().parse_args([a for a in args if a.startswith("--") and "$(" not in a])
    defaults = parsed.mover_pod_defaults
    assert defaults == api.MoverPod.model_validate({**pod, "serviceAccountName": "ferry-mover"})
    accounts = [
        d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "ferry-mover"
    ]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["a", "b"]
    assert all(
        a["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}
        for a in accounts
    )
    # By default: no defaults, no mover ServiceAccount, the operator's parser takes "{}".
    docs = _docs(_template().stdout)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--mover-pod-defaults={}" in args
    assert not any(
        d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "ferry-mover" for d in docs
    )


def test_aggregated_roles_join_edit_and_view() -> None:
    roles = {
        d["metadata"]["name"]: d for d in _docs(_template().stdout) if d["kind"] == "ClusterRole"
    }
    edit, view = roles["ferry-operator-edit"], roles["ferry-operator-view"]
    agg = "rbac.authorization.k8s.io/aggregate-to-"
    assert {f"{agg}edit", f"{agg}admin"} <= set(edit["metadata"]["labels"])
    assert f"{agg}view" not in edit["metadata"]["labels"]
    assert {"create", "delete"} <= set(edit["rules"][0]["verbs"])
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in view["rules"])
    assert not any(
        "status" in res and "create" in r["verbs"] for r in edit["rules"] for res in r["resources"]
    )
    off = _template("--set", "aggregateRoles=false").stdout
    assert "aggregate-to-" not in off


@pytest.mark.parametrize(
    "pod",
    [
        {"labels": {"ferry.dev/transferjob": "x"}},
        {"annotations": {"app.kubernetes.io/managed-by": "x"}},
        {"securityContext": {"privileged": True}},
        {"securityContext": {"runAsUser": -1}},
        {"hostPath": "/"},
    ],
)
def test_values_schema_refuses_what_the_operator_would(pod: dict) -> None:
    done = _template("--set-json", f"moverPod={json.dumps(pod)}", check=False)
    assert done.returncode != 0 and "schema" in done.stderr, done.stderr
    with pytest.raises(SystemExit):  # and the operator, were the schema skipped
        parser().parse_args([f"--mover-pod-defaults={json.dumps(pod)}"])


def test_the_operator_runs_python_objects_in_the_heap_it_trims() -> None:
    """PYTHONMALLOC=malloc: the operator's malloc_trim can give a burst's memory back only
    if Python's objects live in glibc's heap (memreport.start_trimmer)."""
    helm = binaries.ensure() / "helm"
    cmd = [str(helm), "template", "ferry", str(REPO / "charts" / "ferry")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PYTHONMALLOC"] == "malloc"
