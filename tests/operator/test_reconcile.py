"""TransferJobReconciler against an in-memory stand-in for the few API calls it makes.

The cluster tests cover the real API server; these pin down the decisions:
create once then adopt by name, no recreate after a terminal phase, TTL,
cancel, name conflicts and missing pools.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.mover.profiles import PROFILE_NAMES
from ferry.operator import api, crdgen, pools, status, workload
from ferry.operator.metrics import Metrics
from ferry.operator.tracing import Tracer
from ferry.operator.transferjob import TransferJobReconciler, follows
from tests.operator import fixtures
from tests.operator.fixtures import PVC_TO_PVC, transferjob

NOW = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.pools: dict[str, dict[str, Any]] = {}
        self.forbidden: set[str] = set()  # kinds whose creation RBAC refuses (403)
        self.pods: list[dict[str, Any]] = []
        self.pvcs: list[dict[str, Any]] = []
        self.job_reads = 0
        self.transferjobs: dict[str, dict[str, Any]] | None = None  # what a read of one finds

    def create(self, obj: dict[str, Any]) -> bool:
        key = (obj["kind"], obj["metadata"]["name"])
        if key[0] in self.forbidden:
            body = {"kind": "Status", "message": f"{key[0].lower()}s is forbidden", "code": 403}
            exc = ApiException(status=403, reason="Forbidden")
            exc.body = json.dumps(body)
            raise exc
        if key in self.objects:
            return False
        self.objects[key] = obj
        self.created.append(f"{key[0]}/{key[1]}")
        return True

    def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        self.job_reads += 1
        return self.objects.get(("Job", name))

    def get_transferjob(self, ns: str, name: str) -> dict[str, Any] | None:
        if self.transferjobs is None:  # not set by the test: it exists, as the fixture made it
            return transferjob(PVC_TO_PVC, name=name)
        return self.transferjobs.get(name)

    def read(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return self.pods

    def get_pvcs(self, ns: str, names: list[str]) -> list[dict[str, Any]]:
        return [p for p in self.pvcs if p["metadata"]["name"] in names]

    def namespace_annotations(self, ns: str) -> dict[str, str]:
        return {}

    def get_pool(self, name: str) -> dict[str, Any] | None:
        return self.pools.get(name)

    def patch_job(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        self.objects[("Job", name)]["spec"].update(patch["spec"])

    def delete_job(self, ns: str, name: str) -> None:
        self.objects.pop(("Job", name), None)
        self.deleted.append(f"Job/{name}")

    def delete_transferjob(self, ns: str, name: str) -> None:
        self.deleted.append(f"TransferJob/{name}")


def reconciler() -> tuple[TransferJobReconciler, FakeKube, Metrics, InMemorySpanExporter]:
    kube, metrics, exporter = FakeKube(), Metrics(), InMemorySpanExporter()
    r = TransferJobReconciler(
        kube,  # type: ignore[arg-type]
        workload.MoverSettings(),
        metrics,
        Tracer(processor=SimpleSpanProcessor(exporter)),
    )
    return r, kube, metrics, exporter


def test_creates_once_then_adopts_by_name():
    r, kube, _, exporter = reconciler()
    body = transferjob(PVC_TO_PVC)
    first = r.reconcile(body, NOW)
    assert sorted(first.created) == sorted(
        f"{k}/ferry-copy-a" for k in ("ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job")
    )
    assert first.status["phase"] == "Pending" and len(first.status["traceID"]) == 32
    # A restarted operator (no memory) reconciles the same object again.
    body["status"] = first.status
    second = r.reconcile(body, NOW + timedelta(seconds=5))
    assert second.created == [] and len(kube.created) == 5
    assert "traceID" not in second.status  # kept from the first reconcile
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1  # both reconciles in one trace
    job = kube.objects[("Job", "ferry-copy-a")]
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TRACEPARENT"].split("-")[1] == first.status["traceID"]


def test_a_new_one_creates_without_reading_first_and_adopts_what_a_stopped_operator_made():
    r, kube, _, _ = reconciler()
    first = r.reconcile(transferjob(PVC_TO_PVC), NOW)
    assert kube.job_reads == 0 and len(first.created) == 5  # no status yet: create, no read
    # An operator stopped between creating the Job and writing status; the TransferJob was
    # then suspended. The next one finds no status, creates, gets 409s and adopts the Job,
    # and applies the edit to it.
    body = transferjob({**PVC_TO_PVC, "suspend": True})
    again = r.reconcile(body, NOW + timedelta(seconds=5))
    assert again.created == [] and len(kube.created) == 5
    assert kube.objects[("Job", "ferry-copy-a")]["spec"]["suspend"] is True
    assert again.status["jobName"] == "ferry-copy-a"


def test_a_missing_job_is_rebuilt_only_for_a_transferjob_that_still_exists():
    r, kube, _, _ = reconciler()
    body = transferjob(PVC_TO_PVC)
    body["status"] = r.reconcile(body, NOW).status
    kube.transferjobs = {"copy-a": body}
    kube.objects.pop(("Job", "ferry-copy-a"))  # someone deleted the Job: put back
    back = r.reconcile(body, NOW)
    assert back.created == ["Job/ferry-copy-a"] and not back.gone
    # Deleted, and its Job garbage-collected before its DELETED event reached the operator
    # (the follower holds no finalizer): nothing built for the dead owner, nothing written.
    kube.objects.pop(("Job", "ferry-copy-a"))
    kube.transferjobs["copy-a"] = transferjob(PVC_TO_PVC)
    kube.transferjobs["copy-a"]["metadata"]["uid"] = "uid-of-a-new-one-with-that-name"
    for live in (kube.transferjobs, {}):
        kube.transferjobs = live
        gone = r.reconcile(body, NOW)
        assert gone.gone and gone.created == [] and gone.changes == {}
        assert ("Job", "ferry-copy-a") not in kube.objects


def test_suspend_is_propagated_to_the_job():
    r, kube, _, _ = reconciler()
    body = transferjob(PVC_TO_PVC)
    body["status"] = r.reconcile(body, NOW).status
    body["spec"] = {**PVC_TO_PVC, "suspend": True}
    out = r.reconcile(body, NOW)
    assert kube.objects[("Job", "ferry-copy-a")]["spec"]["suspend"] is True
    assert out.status["phase"] == "Suspended"


def test_terminal_job_is_not_recreated_and_ttl_deletes_it():
    r, kube, metrics, _ = reconciler()
    done = {"phase": "Succeeded", "completionTime": "2026-01-01T00:59:00Z", "observedGeneration": 1}
    body = transferjob({**PVC_TO_PVC, "ttlSecondsAfterFinished": 120}, status=done)
    assert follows(body)  # it waits for its TTL
    out = r.reconcile(body, NOW)
    assert kube.created == [] and not out.deleted
    out = r.reconcile(body, NOW + timedelta(minutes=2))
    assert out.deleted and kube.deleted == ["TransferJob/copy-a"]
    assert not follows(transferjob(PVC_TO_PVC, status=done))  # nothing left to wait for
    assert (
        metrics.registry.get_sample_value(
            "ferry_transferjob_runs_total", {"result": "Succeeded", "reason": "Completed"}
        )
        == 0  # the series exists from the start (for increase()), and this run is not counted
    )


def test_cancel_deletes_the_job():
    r, kube, metrics, _ = reconciler()
    body = transferjob(PVC_TO_PVC)
    body["status"] = r.reconcile(body, NOW).status
    body["spec"] = {**PVC_TO_PVC, "cancel": True}
    out = r.reconcile(body, NOW)
    assert out.status["phase"] == "Failed" and out.status["reason"] == "Cancelled"
    assert kube.deleted == ["Job/ferry-copy-a"]
    assert (
        metrics.registry.get_sample_value(
            "ferry_transferjob_runs_total", {"result": "Failed", "reason": "Cancelled"}
        )
        == 1
    )


def test_foreign_job_with_our_name_is_a_conflict():
    r, kube, _, _ = reconciler()
    kube.objects[("Job", "ferry-copy-a")] = {
        "metadata": {"name": "ferry-copy-a", "ownerReferences": []},
        "spec": {},
    }
    out = r.reconcile(transferjob(PVC_TO_PVC), NOW)
    assert out.status["reason"] == "NameConflict" and out.warning is not None


def test_foreign_config_map_with_our_name_is_a_conflict_and_untouched():
    """Adopting it would make someone else's ConfigMap the mover's spec."""
    r, kube, _, _ = reconciler()
    foreign = {"kind": "ConfigMap", "metadata": {"name": "ferry-copy-a"}, "data": {"x": "y"}}
    kube.objects[("ConfigMap", "ferry-copy-a")] = foreign
    out = r.reconcile(transferjob(PVC_TO_PVC), NOW)
    assert out.status["reason"] == "NameConflict" and out.warning is not None
    assert "ConfigMap ferry-copy-a" in out.status["message"]
    assert ("Job", "ferry-copy-a") not in kube.objects
    assert kube.objects[("ConfigMap", "ferry-copy-a")] == {
        "kind": "ConfigMap",
        "metadata": {"name": "ferry-copy-a"},
        "data": {"x": "y"},
    }


def test_forbidden_call_is_a_condition_and_retried_on_the_next_poll():
    r, kube, metrics, _ = reconciler()
    kube.forbidden = {"Job"}
    body = transferjob(PVC_TO_PVC)
    out = r.reconcile(body, NOW)
    st = out.status
    assert st["phase"] == "Pending" and st["reason"] == "Forbidden"
    assert "namespace team" in st["message"] and "jobs is forbidden" in st["message"]
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "Forbidden"
    assert out.warning is not None and out.warning[0] == "Forbidden"
    assert (
        metrics.registry.get_sample_value("ferry_reconcile_errors_total", {"kind": "TransferJob"})
        == 1
    )
    body["status"] = st
    assert r.reconcile(body, NOW).warning is None  # one Event, not one per poll
    kube.forbidden = set()
    body["status"] = r.reconcile(body, NOW).status
    assert ("Job", "ferry-copy-a") in kube.objects
    accepted = next(c for c in body["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "True"


def test_missing_pool_waits_then_builds_with_it():
    r, kube, _, _ = reconciler()
    body = transferjob({**PVC_TO_PVC, "placement": {"pool": "bulk"}})
    out = r.reconcile(body, NOW)
    assert out.status["phase"] == "Pending" and out.status["reason"] == "PoolNotFound"
    kube.pools["bulk"] = {"spec": {"nodeSelector": {"pool": "bulk"}}}
    r.reconcile(body, NOW)
    assert kube.objects[("Job", "ferry-copy-a")]["spec"]["template"]["spec"]["nodeSelector"] == {
        "pool": "bulk"
    }


def test_invalid_spec_is_terminal_until_edited():
    r, kube, _, _ = reconciler()
    body = transferjob({**PVC_TO_PVC, "bandwidth": "fast"})
    out = r.reconcile(body, NOW)
    assert out.status["phase"] == "Failed" and out.status["reason"] == "InvalidSpec"
    assert "spec.bandwidth" in out.status["message"] and kube.created == []
    body = transferjob(PVC_TO_PVC, status=out.status, generation=2)
    assert r.reconcile(body, NOW).status["phase"] == "Pending" and len(kube.created) == 5


def test_pool_buffer_size_and_profile_reach_the_mover_and_bad_ones_are_refused():
    """tuning.bufferSize is now the mover's stream piece (Options.buffer_size): a pool with
    it and a profile is Accepted and its TransferJob's mover spec carries both; a buffer out
    of range or an unknown profile makes the pool InvalidSpec naming the field, and the
    TransferJob waits (PoolInvalid) instead of running without it."""
    good = {"spec": {"tuning": {"streams": 4, "bufferSize": "8M", "profile": "wan"}}}
    accepted = pools.reconcile({"metadata": {"generation": 1}, **good}, NOW)["conditions"][0]
    assert accepted["status"] == "True", accepted
    for tuning, field in (
        ({"bufferSize": "32M"}, "spec.tuning.bufferSize"),
        ({"profile": "fast"}, "spec.tuning.profile"),
    ):
        cond = pools.reconcile({"metadata": {"generation": 1}, "spec": {"tuning": tuning}}, NOW)[
            "conditions"
        ][0]
        assert cond["status"] == "False" and field in cond["message"], cond
    tuning = crdgen.crd(api.MoverPoolKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]["properties"]["tuning"]
    assert tuning["properties"]["profile"]["enum"] == list(PROFILE_NAMES)
    assert "x-kubernetes-validations" not in tuning
    r, kube, _, _ = reconciler()
    kube.pools["bulk"] = {"spec": {"tuning": {"profile": "fast"}}}
    body = transferjob({**PVC_TO_PVC, "placement": {"pool": "bulk"}})
    out = r.reconcile(body, NOW)
    assert out.status["phase"] == "Pending" and out.status["reason"] == "PoolInvalid"
    assert "profile" in out.status["message"] and ("Job", "ferry-copy-a") not in kube.objects
    kube.pools["bulk"] = good
    r.reconcile(body, NOW)
    assert ("Job", "ferry-copy-a") in kube.objects


def test_overlapping_s3_prefixes_refused_before_any_object():
    """A sync from x/inner into x of the same bucket would delete its own source: the
    operator refuses it with InvalidSpec and creates nothing."""
    r, kube, _, _ = reconciler()
    s3 = {"bucket": "bkt", "endpoint": "http://10.0.0.5:9000"}
    spec = {
        "source": {"s3": {**s3, "prefix": "x/inner"}},
        "destination": {"s3": {**s3, "prefix": "x"}},
        "mode": "Sync",
    }
    out = r.reconcile(transferjob(spec), NOW)
    assert out.status["phase"] == "Failed" and out.status["reason"] == "InvalidSpec"
    assert "spec.destination.s3.prefix" in out.status["message"] and kube.created == []
    assert out.warning is not None and out.warning[0] == "InvalidSpec"


def _started(r: TransferJobReconciler, spec: dict[str, Any]) -> dict[str, Any]:
    """A TransferJob at generation 1 whose Job the reconciler built."""
    body = transferjob(spec)
    body["status"] = r.reconcile(body, NOW).status
    return body


def test_mutable_field_edits_reach_the_job_and_claim_the_generation():
    r, kube, _, _ = reconciler()
    body = _started(r, {**PVC_TO_PVC, "activeDeadlineSeconds": 600})
    body = transferjob(
        {**PVC_TO_PVC, "activeDeadlineSeconds": 7200, "stallTimeoutSeconds": 60},
        status=body["status"],
        generation=2,
    )
    out = r.reconcile(body, NOW)
    assert kube.objects[("Job", "ferry-copy-a")]["spec"]["activeDeadlineSeconds"] == 7200
    assert out.status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in out.status["conditions"])


def test_changed_transfer_field_is_reported_and_its_generation_not_claimed():
    """Where the CRD's CEL rules did not run, status still never claims an edit it ignored."""
    r, kube, _, _ = reconciler()
    first = _started(r, PVC_TO_PVC)
    job_before = json.dumps(kube.objects[("Job", "ferry-copy-a")], sort_keys=True)
    edited = {**PVC_TO_PVC, "source": {"pvc": {"claimName": "other"}}, "mode": "Sync"}
    body = transferjob(edited, status=first["status"], generation=2)
    out = r.reconcile(body, NOW)
    assert out.status["observedGeneration"] == 1
    accepted = next(c for c in out.status["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "FixedFieldChanged"
    assert accepted["observedGeneration"] == 2
    assert "spec.source, spec.mode" in accepted["message"]
    assert out.warning is not None and "spec.source" in out.warning[1]
    assert all(
        c["observedGeneration"] == 1 for c in out.status["conditions"] if c["type"] != "Accepted"
    )
    assert json.dumps(kube.objects[("Job", "ferry-copy-a")], sort_keys=True) == job_before
    # Reported once, not on every poll; a suspend in a later generation is still acted on.
    body = transferjob({**edited, "suspend": True}, status=out.status, generation=3)
    again = r.reconcile(body, NOW)
    assert again.warning is None and again.status["observedGeneration"] == 1
    assert kube.objects[("Job", "ferry-copy-a")]["spec"]["suspend"] is True


def test_finished_job_claims_ttl_edits_but_not_transfer_edits():
    r, kube, _, _ = reconciler()
    first = _started(r, PVC_TO_PVC)
    done = {**first["status"], "phase": "Succeeded", "reason": "Completed"}
    done["completionTime"] = "2026-01-01T00:59:00Z"
    ttl = r.reconcile(
        transferjob({**PVC_TO_PVC, "ttlSecondsAfterFinished": 9999}, status=done, generation=2),
        NOW,
    )
    assert ttl.status["observedGeneration"] == 2
    moved = {**PVC_TO_PVC, "destination": {"pvc": {"claimName": "elsewhere"}}}
    out = r.reconcile(transferjob(moved, status=done, generation=3), NOW)
    assert out.status["observedGeneration"] == 1 and "spec.destination" in str(out.warning)
    assert kube.created.count("Job/ferry-copy-a") == 1


def test_mover_failure_named_invalid_spec_is_not_rerun_after_an_edit():
    """Only a spec the operator refused before building a Job is retried when edited."""
    r, kube, _, _ = reconciler()
    ran = {
        "phase": "Failed",
        "reason": "InvalidSpec",
        "jobName": "ferry-copy-a",
        "observedGeneration": 1,
        "completionTime": "2026-01-01T00:59:00Z",
    }
    out = r.reconcile(transferjob({**PVC_TO_PVC, "suspend": True}, status=ran, generation=2), NOW)
    assert kube.created == [] and "phase" not in out.status


def test_unchanged_running_job_writes_no_status():
    r, kube, _, _ = reconciler()
    body = transferjob(PVC_TO_PVC)
    first = r.reconcile(body, NOW)
    assert first.changes == first.status  # from nothing: everything is new
    job = kube.objects[("Job", "ferry-copy-a")]
    job["status"] = {"active": 1, "startTime": "2026-01-01T00:00:05Z"}
    kube.pods = [fixtures.pod("ferry-copy-a-0", 0, "Running")]
    # the movers' progress, patched by them: a merge patch leaves it in place
    shard = {"bytesDone": 10, "bytesTotal": 100, "lastProgressTime": "2026-01-01T00:59:30Z"}
    body["status"] = status.merged(first.status, {"progress": {"shards": {"0": shard}}})
    running = r.reconcile(body, NOW + timedelta(seconds=2))
    assert running.status["phase"] == "Running"
    assert running.changes["phase"] == "Running" and "traceID" not in running.changes
    body["status"] = status.merged(body["status"], running.changes)
    again = r.reconcile(body, NOW + timedelta(seconds=4))
    assert again.status["phase"] == "Running" and again.changes == {}
    # progress moved: only the progress totals change, nothing else is rewritten
    body["status"]["progress"]["shards"]["0"] = {**shard, "bytesDone": 50}
    moved = r.reconcile(body, NOW + timedelta(seconds=6))
    assert set(moved.changes) == {"progress"} and moved.changes["progress"]["bytesDone"] == 50
    assert "shards" not in moved.changes["progress"]


def test_status_changes_is_a_minimal_merge_patch():
    old = {"phase": "Running", "progress": {"shards": {"0": {}}, "bytesDone": 1}, "x": None}
    assert status.changes(old, {"phase": "Running", "progress": {"bytesDone": 1}}) == {}
    assert status.changes(old, {"phase": "Running", "missing": None}) == {}
    assert status.changes(old, {"progress": {"bytesDone": 2}}) == {"progress": {"bytesDone": 2}}
    assert status.changes(old, {"conditions": []}) == {"conditions": []}


def test_rwo_claim_held_elsewhere_pins_the_mover_from_the_index():
    r, kube, _, _ = reconciler()
    kube.pvcs = [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
    app = {
        "metadata": {"labels": {"app": "db"}},
        "spec": {
            "nodeName": "node-7",
            "volumes": [{"persistentVolumeClaim": {"claimName": "data"}}],
        },
        "status": {"phase": "Running"},
    }
    r.reconcile(transferjob(PVC_TO_PVC), NOW, claim_uses=workload.claim_uses(app))
    affinity = kube.objects[("Job", "ferry-copy-a")]["spec"]["template"]["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-7"]


def test_overlay_keeps_our_last_write_and_the_movers_shards():
    seen = {"phase": "Pending", "progress": {"shards": {"0": {"bytesDone": 5}}, "bytesDone": 1}}
    ours = {"phase": "Running", "traceID": "t1", "progress": {"bytesDone": 3, "shards": {}}}
    view = status.overlay(seen, ours)
    assert view["phase"] == "Running" and view["traceID"] == "t1"
    assert view["progress"] == {"shards": {"0": {"bytesDone": 5}}, "bytesDone": 3}
    assert status.merged({"a": 1, "b": {"c": 1}}, {"a": None, "b": {"d": 2}}) == {
        "b": {"c": 1, "d": 2}
    }


def test_status_says_where_the_audit_log_is_read():
    """a dry run's plan is readable: status.auditLog names the claim and path (or the
    pods' logs), from the first reconcile on, and the status schema declares it."""
    r, _, _, _ = reconciler()
    spec = {**PVC_TO_PVC, "dryRun": True, "auditLog": "plans/today.jsonl"}
    out = r.reconcile(transferjob(spec), NOW)
    assert out.status["auditLog"] == "pvc backup: plans/today.jsonl"
    out = r.reconcile(transferjob({**PVC_TO_PVC, "auditLog": "-"}, name="copy-b"), NOW)
    assert out.status["auditLog"].endswith("kubectl logs -l job-name=ferry-copy-b --tail=-1")
    assert "auditLog" not in r.reconcile(transferjob(PVC_TO_PVC, name="copy-c"), NOW).status
    schema = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["status"]["properties"]["auditLog"]["type"] == "string"


def test_chown_in_a_namespace_without_privileged_movers_is_refused_naming_chown():
    r, kube, _, _ = reconciler()
    out = r.reconcile(transferjob({**PVC_TO_PVC, "chown": "backup:backup"}), NOW)
    assert out.status["reason"] == "PrivilegeNotGranted" and kube.created == []
    assert out.status["message"].startswith("spec.chown: chown needs root")


def test_a_missing_files_list_configmap_or_key_keeps_it_pending_naming_them():
    """filesFromConfigMap: the Job is built (the kubelet mounts the key once it exists), and
    while it is not there the TransferJob says which ConfigMap and key it waits for."""
    r, kube, _, _ = reconciler()
    spec = {**PVC_TO_PVC, "filesFromConfigMap": {"name": "lists", "key": "nightly.txt"}}
    body = transferjob(spec)
    out = r.reconcile(body, NOW)
    assert out.status["phase"] == "Pending" and out.status["reason"] == "ConfigMapNotFound"
    assert "ConfigMap lists not found" in out.status["message"]
    assert "spec.filesFromConfigMap" in out.status["message"]
    pod = kube.objects[("Job", "ferry-copy-a")]["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "files-from")
    assert vol["configMap"] == {"name": "lists", "items": [{"key": "nightly.txt", "path": "list"}]}
    stalled = next(c for c in out.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ConfigMapNotFound"

    body["status"] = out.status
    kube.objects[("ConfigMap", "lists")] = {"data": {"other": "a\n"}}
    out = r.reconcile(body, NOW + timedelta(seconds=5))
    assert out.status["reason"] == "ConfigMapKeyNotFound"
    assert "ConfigMap lists has no key nightly.txt" in out.status["message"]

    body["status"] = out.status
    kube.objects[("ConfigMap", "lists")] = {"data": {"nightly.txt": "a\n"}}
    out = r.reconcile(body, NOW + timedelta(seconds=10))
    assert out.status["phase"] == "Pending" and out.status["reason"] == "Waiting"
    stalled = next(c for c in out.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"
