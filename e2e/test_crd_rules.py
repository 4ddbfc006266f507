"""The CRDs' CEL rules on a real API server: which TransferJob edits it refuses.

Only the CRDs are needed (no operator): the API server alone enforces them.
Status is written through the status subresource as the operator would. If
the operator from `test_operator.py` runs in the same session it may
reconcile these objects too; every step holds whatever it writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.support import Cluster

pytestmark = [pytest.mark.cluster]

REPO = Path(__file__).resolve().parent.parent
G, V, PLURAL = "ferry.dev", "v1alpha1", "transferjobs"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    """The generated CRDs, applied as a user would (the API server checks the rules' cost)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


class TJ:
    """One TransferJob in the test namespace."""

    def __init__(self, api: client.ApiClient, ns: str, name: str, spec: Obj) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.ns, self.name = ns, name
        body = {"apiVersion": f"{G}/{V}", "kind": "TransferJob", "metadata": {"name": name}}
        self.custom.create_namespaced_custom_object(G, V, ns, PLURAL, {**body, "spec": spec})

    def get(self) -> Obj:
        raw: Any = self.custom.get_namespaced_custom_object(
            G, V, self.ns, PLURAL, self.name, _preload_content=False
        )
        obj: Obj = json.loads(raw.data)
        return obj

    def edit(self, spec: Obj) -> None:
        self.custom.patch_namespaced_custom_object(G, V, self.ns, PLURAL, self.name, {"spec": spec})

    def refused(self, spec: Obj) -> str:
        """Edit, expect the API server to refuse it; return its message."""
        before = self.get()
        with pytest.raises(ApiException) as exc:
            self.edit(spec)
        assert exc.value.status == 422, exc.value.body
        after = self.get()
        assert after["spec"] == before["spec"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        return str(json.loads(exc.value.body or "{}").get("message"))

    def set_status(self, status: Obj) -> None:
        self.custom.patch_namespaced_custom_object_status(
            G, V, self.ns, PLURAL, self.name, {"status": status}
        )


def pvc_spec(src: str = "src", dst: str = "dst", **extra: Any) -> Obj:
    return {
        "source": {"pvc": {"claimName": src}},
        "destination": {"pvc": {"claimName": dst}},
        **extra,
    }


def test_transfer_defining_edits_are_refused_naming_the_field(
    crds: None, api: client.ApiClient, namespace: str
) -> None:
    tj = TJ(api, namespace, "fixed", pvc_spec(parallelism={"shards": 2}))
    message = tj.refused({"source": {"pvc": {"claimName": "elsewhere"}}})
    assert "spec.source cannot change once the TransferJob exists" in message, message
    assert "spec.mode cannot change" in tj.refused({"mode": "Sync"})
    # Adding or removing an optional field is a change too.
    assert "spec.filters cannot change" in tj.refused({"filters": ["- *.tmp"]})
    assert "spec.parallelism cannot change" in tj.refused({"parallelism": None})
    # Switching the storage kind names the field, not just "exactly one".
    message = tj.refused({"destination": {"pvc": None, "s3": {"bucket": "backups"}}})
    assert "spec.destination cannot change" in message, message


def test_mutable_fields_can_be_edited(crds: None, api: client.ApiClient, namespace: str) -> None:
    tj = TJ(api, namespace, "mutable", pvc_spec(activeDeadlineSeconds=600))
    edits: list[Obj] = [
        {"suspend": True},
        {"suspend": False},
        {"activeDeadlineSeconds": 7200},
        {"activeDeadlineSeconds": None},
        {"ttlSecondsAfterFinished": 60},
        {"stallTimeoutSeconds": 900},
        {"cancel": True},
    ]
    for n, edit in enumerate(edits, start=2):
        tj.edit(edit)
        obj = tj.get()
        assert obj["metadata"]["generation"] == n
        for key, value in edit.items():
            assert obj["spec"].get(key) == value


def test_refused_spec_stays_editable_until_a_job_exists(
    crds: None, api: client.ApiClient, namespace: str
) -> None:
    # The operator refuses owner preservation here (the namespace is not privileged), so
    # a running operator keeps the same refusal in status while the spec is edited.
    tj = TJ(api, namespace, "refused", pvc_spec(preserve=["times", "owners"]))
    tj.set_status({"phase": "Failed", "reason": "PrivilegeNotGranted"})
    tj.edit({"source": {"pvc": {"claimName": "other"}}, "mode": "Sync"})
    spec = tj.get()["spec"]
    assert spec["source"] == {"pvc": {"claimName": "other", "path": ""}} and spec["mode"] == "Sync"
    # Once the operator has built a Job (it records status.jobName), the spec is fixed,
    # even if a later failure carries a refusal's reason (a mover can exit InvalidSpec).
    tj.set_status({"phase": "Failed", "reason": "InvalidSpec", "jobName": "ferry-refused"})
    assert "spec.source cannot change" in tj.refused({"source": {"pvc": {"claimName": "x"}}})


def test_audit_log_chmod_chown_and_files_from_rules(
    crds: None, api: client.ApiClient, namespace: str
) -> None:
    """The audit log, chmod, chown and filesFrom on the API server (dry run: nothing stored): auditLog's pattern (a
    file at any destination: uploaded to a remote one), filesFrom's bounds and deleteExcluded with filesFrom."""
    custom = client.CustomObjectsApi(api)
    body: Obj = {
        "apiVersion": f"{G}/{V}",
        "kind": "TransferJob",
        "metadata": {"name": "record-transform"},
    }
    s3: Obj = {"s3": {"bucket": "backups"}}

    def create(spec: Obj) -> None:
        custom.create_namespaced_custom_object(
            G, V, namespace, PLURAL, {**body, "spec": spec}, dry_run="All"
        )

    create(pvc_spec(auditLog="audit/run.jsonl", chmod="D755,F644", chown="1000:1000"))
    create(pvc_spec(mode="Sync", filesFrom=["a", "b/"], deleteExcluded=True, auditLog="-"))
    create({**pvc_spec(auditLog="-"), "destination": s3})
    create({**pvc_spec(auditLog="logs/a.log"), "destination": s3})
    lists = {"name": "lists", "key": "nightly.txt"}
    create(pvc_spec(mode="Sync", filesFromConfigMap=lists, deleteExcluded=True))
    create(pvc_spec(preserve=["times", "acls"]))
    for spec, says in [
        (pvc_spec(auditLog="../up"), "spec.auditLog"),
        (pvc_spec(auditLog="/abs"), "spec.auditLog"),
        (pvc_spec(auditLog="a//b"), "spec.auditLog"),
        (pvc_spec(filesFrom=["f"] * 1001), "spec.filesFrom"),
        (pvc_spec(filesFrom=["x" * 1025]), "spec.filesFrom"),
        (pvc_spec(filesFrom=["a"], deleteExcluded=True), "deleteExcluded applies only"),
        (pvc_spec(filesFrom=["a"], filesFromConfigMap=lists), "filesFrom and filesFromConfigMap"),
        (pvc_spec(filesFromConfigMap={"name": "lists"}), "spec.filesFromConfigMap.key"),
        ({**pvc_spec(chown="1:1"), "destination": s3}, "chown needs a destination"),
        ({**pvc_spec(preserve=["acls"]), "destination": s3}, "preserve acls needs pvc"),
    ]:
        with pytest.raises(ApiException) as exc:
            create(spec)
        assert exc.value.status == 422 and says in str(exc.value.body), exc.value.body
