"""A destination claim in another namespace: the receiver's Job, Service and Secret go
there (labelled with the TransferJob's uid, no owner reference can cross), the sender here;
both namespaces must opt in; the foreign objects go when the sender ends or the
TransferJob is deleted."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from ferry.operator import api, crdgen, wirepair, workload
from ferry.operator.transferjob import RETRY_REASONS, TransferJobReconciler, wake_after
from tests.operator.fixtures import transferjob
from tests.operator.test_reconcile import NOW, reconciler

OWN_NS, DST_NS = "team", "vault"
CROSS = {
    "source": {"pvc": {"claimName": "data", "path": "in"}},
    "destination": {"pvc": {"claimName": "backup", "namespace": DST_NS}},
}
ALLOWED = {
    OWN_NS: {wirepair.ALLOW_TO: f"other, {DST_NS}"},
    DST_NS: {wirepair.ALLOW_FROM: OWN_NS},
}
WIRE, RECV, SENDER = (
    wirepair.wire_name("copy-a"),
    wirepair.receiver_name("copy-a"),
    workload.child_name("copy-a"),
)


class NsKube:
    """The API calls a reconcile makes, with objects keyed by namespace too."""

    def __init__(self, annotations: dict[str, dict[str, str]]) -> None:
        self.annotations = annotations
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.pods: list[dict[str, Any]] = []
        self.transferjobs: dict[tuple[str, str], dict[str, Any]] = {}

    def create(self, obj: dict[str, Any]) -> bool:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            return False
        obj = json.loads(json.dumps(obj))
        if obj["kind"] == "Service":
            obj["spec"]["clusterIP"] = "10.96.0.9"
        self.objects[key] = obj
        self.created.append("/".join(key))
        return True

    def read(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, ns, name))

    def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.read("Job", ns, name)

    def get_transferjob(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.transferjobs.get((ns, name))

    def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return self.pods

    def get_pvcs(self, ns: str, names: list[str]) -> list[dict[str, Any]]:
        assert ns == OWN_NS, "only the TransferJob's namespace's claims are read"
        return [
            {"metadata": {"name": n}, "spec": {"accessModes": ["ReadWriteOnce"]}} for n in names
        ]

    def get_pv(self, name: str) -> dict[str, Any] | None:
        return None

    def namespace_annotations(self, ns: str) -> dict[str, str]:
        return self.annotations.get(ns, {})

    def delete_job(self, ns: str, name: str) -> None:
        self.objects.pop(("Job", ns, name), None)
        self.deleted.append(f"Job/{ns}/{name}")

    def delete_labelled(self, kind: str, ns: str, selector: str) -> None:
        key, _, value = selector.partition("=")
        for k, obj in list(self.objects.items()):
            if k[0] == kind and k[1] == ns and obj["metadata"].get("labels", {}).get(key) == value:
                del self.objects[k]
                self.deleted.append("/".join(k))


def _reconcile(kube: NsKube, body: dict[str, Any]) -> dict[str, Any]:
    r: TransferJobReconciler = reconciler()[0]
    r.kube = kube  # type: ignore[assignment]
    meta = body["metadata"]
    kube.transferjobs[(meta["namespace"], meta["name"])] = body  # it exists
    return r.reconcile(body, NOW).status


def test_the_receiver_side_goes_to_the_destinations_namespace():
    kube = NsKube(ALLOWED)
    st = _reconcile(kube, transferjob(CROSS))
    assert st.get("reason") not in (wirepair.CROSS_NAMESPACE_REFUSED, "NameConflict"), st
    theirs = {k[0]: v for k, v in kube.objects.items() if k[1] == DST_NS}
    assert set(theirs) == {"Job", "Service", "Secret"}
    for obj in theirs.values():
        m = obj["metadata"]
        assert "ownerReferences" not in m  # cannot cross namespaces
        assert m["labels"][wirepair.LABEL_OWNER_UID] == "uid-copy-a"
        assert m["annotations"][wirepair.ANNOTATION_OWNER] == f"{OWN_NS}/copy-a"
    ours = {k[0]: v for k, v in kube.objects.items() if k[1] == OWN_NS}
    assert {"Job", "Secret", "ConfigMap"} <= set(ours) and "Service" not in ours
    for obj in ours.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-copy-a"
    # Each namespace holds only its side's keys.
    assert set(theirs["Secret"]["data"]) == set(wirepair.SERVER_KEYS)
    assert set(ours["Secret"]["data"]) == set(wirepair.CLIENT_KEYS)
    # The server's certificate names its Service in the destination's namespace.
    cert = base64.b64decode(theirs["Secret"]["data"]["tls.crt"])
    from cryptography import x509

    san = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert f"{WIRE}.{DST_NS}.svc" in san.value.get_values_for_type(x509.DNSName)
    # The receiver mounts the destination claim there; the sender sends to its Service.
    rpod = theirs["Job"]["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in rpod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["backup"]
    spec = json.loads(ours["ConfigMap"]["data"]["spec-0.json"])
    assert spec["destination"]["kind"] == "ferry" and spec["destination"]["host"] == "10.96.0.9"
    job = ours["Job"]
    assert job["metadata"]["annotations"][wirepair.ANNOTATION_RECEIVER] == f"{DST_NS}/{RECV}"
    pod = job["spec"]["template"]["spec"]
    assert [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ] == ["data"]
    # The Service selects the receiver's pods.
    assert theirs["Service"]["spec"]["selector"].items() <= (
        theirs["Job"]["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize(
    ("annotations", "names"),
    [
        ({}, (wirepair.ALLOW_TO, OWN_NS)),
        ({OWN_NS: {wirepair.ALLOW_TO: "elsewhere"}}, (wirepair.ALLOW_TO, OWN_NS)),
        ({OWN_NS: {wirepair.ALLOW_TO: DST_NS}}, (wirepair.ALLOW_FROM, DST_NS)),
        (
            {OWN_NS: {wirepair.ALLOW_TO: DST_NS}, DST_NS: {wirepair.ALLOW_FROM: "team2"}},
            (wirepair.ALLOW_FROM, DST_NS),
        ),
    ],
)
def test_without_both_opt_ins_nothing_is_built_and_the_condition_names_the_annotation(
    annotations: dict[str, dict[str, str]], names: tuple[str, str]
):
    kube = NsKube(annotations)
    body = transferjob(CROSS)
    st = _reconcile(kube, body)
    assert st["phase"] == "Pending" and st["reason"] == wirepair.CROSS_NAMESPACE_REFUSED
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == wirepair.CROSS_NAMESPACE_REFUSED
    annotation, namespace = names
    assert annotation in accepted["message"] and f"namespace {namespace}" in accepted["message"]
    assert kube.objects == {}
    # Retried on a timer: an annotation is nothing the operator watches.
    assert wirepair.CROSS_NAMESPACE_REFUSED in RETRY_REASONS
    body["status"] = st
    assert wake_after(body, NOW, resync=300, retry=10) == 10
    # Once both namespaces opt in, the next reconcile builds the pair.
    kube.annotations = ALLOWED
    st = _reconcile(kube, body)
    assert st.get("reason") != wirepair.CROSS_NAMESPACE_REFUSED
    assert ("Job", DST_NS, RECV) in kube.objects


def test_the_senders_end_removes_everything_in_the_other_namespace():
    kube = NsKube(ALLOWED)
    body = transferjob(CROSS)
    first = _reconcile(kube, body)
    kube.objects[("Job", OWN_NS, SENDER)]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}],
        "succeeded": 1,
    }
    body["status"] = first
    st = _reconcile(kube, body)
    assert st["phase"] == "Succeeded"
    assert not [k for k in kube.objects if k[1] == DST_NS]
    assert ("Job", OWN_NS, SENDER) in kube.objects  # ours stay until the TransferJob goes


def test_deletion_removes_only_the_transferjobs_objects_by_its_uid_label():
    kube = NsKube(ALLOWED)
    _reconcile(kube, transferjob(CROSS))
    other = {"kind": "Secret", "metadata": {"name": "x", "namespace": DST_NS, "labels": {}}}
    kube.objects[("Secret", DST_NS, "x")] = other
    wirepair.remove_foreign(kube, DST_NS, "uid-copy-a")
    assert [k for k in kube.objects if k[1] == DST_NS] == [("Secret", DST_NS, "x")]


def test_a_foreign_object_with_our_name_but_not_our_uid_is_a_conflict():
    kube = NsKube(ALLOWED)
    kube.objects[("Service", DST_NS, WIRE)] = {
        "kind": "Service",
        "metadata": {"name": WIRE, "namespace": DST_NS, "labels": {}},
        "spec": {"clusterIP": "10.96.0.10"},
    }
    st = _reconcile(kube, transferjob(CROSS))
    assert st["reason"] == "NameConflict" and f"Service {WIRE}" in st["message"]
    assert ("Job", OWN_NS, SENDER) not in kube.objects


def test_the_spec_refuses_a_foreign_source_and_a_foreign_destination_without_a_claim_source():
    with pytest.raises(ValidationError, match=r"source\.pvc\.namespace is not supported"):
        api.TransferJobSpec.model_validate(
            {
                "source": {"pvc": {"claimName": "a", "namespace": "x"}},
                "destination": {"pvc": {"claimName": "b"}},
            }
        )
    with pytest.raises(ValidationError, match=r"destination\.pvc\.namespace needs a pvc source"):
        api.TransferJobSpec.model_validate(
            {
                "source": {"sftp": {"host": "h", "user": "u", "secretRef": {"name": "s"}}},
                "destination": {"pvc": {"claimName": "b", "namespace": "x"}},
            }
        )
    with pytest.raises(ValidationError, match="namespace"):
        api.TransferJobSpec.model_validate(
            {
                "source": {"pvc": {"claimName": "a"}},
                "destination": {"pvc": {"claimName": "b", "namespace": "Not_A_Label"}},
            }
        )
    same = api.TransferJobSpec.model_validate(
        {
            "source": {"pvc": {"claimName": "a"}},
            "destination": {"pvc": {"claimName": "b", "namespace": OWN_NS}},
        }
    )
    assert same.destination_namespace(OWN_NS) is None  # its own namespace: nothing crosses
    # The CRD says the same at admission.
    rules = json.dumps(crdgen.crd(api.TransferJobKind))
    for rule in (api.SOURCE_NAMESPACE_RULE, api.DESTINATION_NAMESPACE_RULE):
        assert json.dumps(rule["rule"]) in rules
