"""Status computed from the Job, the pods' termination messages and the movers' progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ferry.operator import api, status
from tests.operator.fixtures import PVC_TO_PVC, PVC_TO_S3, job, pod, summary, transferjob

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)


def compute(spec=PVC_TO_PVC, j=None, pods=(), st=None):
    body = transferjob(spec, status=st)
    return status.compute(body, api.TransferJobSpec.model_validate(spec), j, list(pods), NOW)


def cond(patch, type_):
    return next(c for c in patch["conditions"] if c["type"] == type_)


def test_pending_without_job_then_running():
    assert compute()["phase"] == "Pending"
    p = compute(j=job(active=1), pods=[pod("p0", 0, "Running")])
    assert p["phase"] == "Running"
    assert cond(p, "Running")["status"] == "True"
    assert p["startTime"] == "2026-01-01T00:00:05Z"


def test_succeeded_sums_shard_results():
    spec = {**PVC_TO_PVC, "parallelism": {"shards": 2}}
    pods = [
        pod("p0", 0, "Succeeded", 0, summary(filesCopied=3, bytesTransferred=300)),
        pod("p1", 1, "Succeeded", 0, summary(filesCopied=2, bytesTransferred=200, filesSkipped=1)),
    ]
    p = compute(spec, job([{"type": "Complete", "status": "True"}], succeeded=2), pods)
    assert p["phase"] == "Succeeded"
    assert p["result"]["filesCopied"] == 5 and p["result"]["bytesTransferred"] == 500
    assert p["result"]["filesSkipped"] == 1 and p["result"]["shardsReported"] == 2
    assert p["progress"]["percent"] == "100%"
    assert p["completionTime"] == status.iso(NOW)
    assert cond(p, "Complete")["status"] == "True"


def test_preserve_not_kept_is_a_result_field_and_a_condition():
    spec = {**PVC_TO_PVC, "parallelism": {"shards": 2}}
    done = job([{"type": "Complete", "status": "True"}], succeeded=2)
    pods = [
        pod("p0", 0, "Succeeded", 0, summary(preserveDropped=["xattrs", "owners"])),
        # A pod's termination message is untrusted: unknown names and non-strings go.
        pod("p1", 1, "Succeeded", 0, summary(preserveDropped=["sparse", "evil", 7, "owners"])),
    ]
    p = compute(spec, done, pods)
    assert p["result"]["preserveDropped"] == ["owners", "xattrs", "sparse"]
    api.Result.model_validate(p["result"])  # what the status schema accepts
    c = cond(p, "PreserveDropped")
    assert c["status"] == "True" and c["reason"] == "DestinationCannotHold"
    assert c["message"] == "not kept at the destination: owners, xattrs, sparse"
    kept = compute(spec, done, [pod(f"p{i}", i, "Succeeded", 0, summary()) for i in range(2)])
    assert kept["result"]["preserveDropped"] == []
    assert cond(kept, "PreserveDropped")["status"] == "False"


def test_failed_reason_comes_from_the_mover_summary():
    pods = [pod("p0", 0, "Failed", 9, summary(9, "VerifyMismatch", differences=1))]
    p = compute(
        j=job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], failed=1),
        pods=pods,
    )
    assert p["phase"] == "Failed" and p["reason"] == "VerifyMismatch"
    assert cond(p, "Failed")["reason"] == "VerifyMismatch"
    assert "VerifyMismatch happened" in p["message"]


def test_failed_without_message_classified_by_exit_code():
    pods = [pod("p0", 0, "Failed", 12, "")]
    p = compute(
        j=job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=1),
        pods=pods,
    )
    assert p["reason"] == "AuthFailed"


def test_out_of_memory_is_named_with_the_field_to_raise():
    pods = [pod("p0", 0, "Failed", 137, "", reason="OOMKilled")]
    p = compute(
        j=job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=1),
        pods=pods,
    )
    assert (p["phase"], p["reason"]) == ("Failed", "OOMKilled")
    assert cond(p, "Failed")["reason"] == "OOMKilled"
    assert "memory limit" in p["message"] and "resources.limits.memory" in p["message"]
    # Killed by a signal for another reason: still the generic classification.
    other = compute(
        j=job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=1),
        pods=[pod("p0", 0, "Failed", 137, "", reason="Error")],
    )
    assert other["reason"] == "MoverCrashed"


def test_deadline_exceeded():
    p = compute(
        j=job(
            [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "too slow",
                }
            ]
        )
    )
    assert (p["phase"], p["reason"]) == ("Failed", "DeadlineExceeded")


def test_retry_after_a_failed_pod_keeps_the_success_of_the_retry():
    pods = [
        pod("p0-a", 0, "Failed", 11, summary(11, "Transient"), finished="2026-01-01T00:01:00Z"),
        pod(
            "p0-b",
            0,
            "Succeeded",
            0,
            summary(filesCopied=4, bytesResumed=100),
            finished="2026-01-01T00:02:00Z",
        ),
    ]
    p = compute(j=job([{"type": "Complete", "status": "True"}], failed=1, succeeded=1), pods=pods)
    assert (
        p["phase"] == "Succeeded"
        and p["result"]["filesCopied"] == 4
        and p["result"]["bytesResumed"] == 100
    )
    assert p["attempts"] == 2


def test_retrying_is_pending_with_reason():
    p = compute(j=job(active=1, failed=1), pods=[pod("p0", 0, "Pending")])
    assert (p["phase"], p["reason"]) == ("Pending", "Retrying")


def test_suspend_and_cancel():
    spec = {**PVC_TO_PVC, "suspend": True}
    assert compute(spec, job(suspend=True))["phase"] == "Suspended"
    p = compute({**PVC_TO_PVC, "cancel": True}, job(active=1))
    assert (p["phase"], p["reason"]) == ("Failed", "Cancelled")


def test_progress_totals_from_shards_and_stall():
    shards = {
        "0": {
            "bytesDone": 100,
            "bytesTotal": 400,
            "filesDone": 1,
            "filesTotal": 4,
            "bytesPerSecond": 50,
            "scanComplete": True,
            "lastProgressTime": "2026-01-01T00:09:50Z",
        },
        "1": {
            "bytesDone": 100,
            "bytesTotal": 400,
            "filesDone": 1,
            "filesTotal": 4,
            "bytesPerSecond": 50,
            "scanComplete": True,
            "lastProgressTime": "2026-01-01T00:09:00Z",
        },
    }
    spec = {**PVC_TO_PVC, "parallelism": {"shards": 2}, "stallTimeoutSeconds": 60}
    p = compute(
        spec,
        job(active=2),
        [pod("a", 0, "Running"), pod("b", 1, "Running")],
        {"progress": {"shards": shards}},
    )
    prog = p["progress"]
    assert (prog["bytesDone"], prog["bytesTotal"], prog["filesTotal"]) == (200, 800, 8)
    assert prog["percent"] == "25%" and prog["rate"] == "100 B/s" and prog["etaSeconds"] == 6.0
    assert prog["lastProgressTime"] == "2026-01-01T00:09:50Z"
    assert cond(p, "Stalled")["status"] == "False"
    later = status.compute(
        transferjob(spec, status={"progress": {"shards": shards}}),
        api.TransferJobSpec.model_validate(spec),
        job(active=2),
        [pod("a", 0, "Running"), pod("b", 1, "Running")],
        NOW + timedelta(minutes=5),
    )
    assert next(c for c in later["conditions"] if c["type"] == "Stalled")["status"] == "True"


def test_condition_transition_time_kept_when_status_unchanged():
    first = compute(j=job(active=1), pods=[pod("p0", 0, "Running")])
    body = transferjob(PVC_TO_PVC, status=first)
    again = status.compute(
        body,
        api.TransferJobSpec.model_validate(PVC_TO_PVC),
        job(active=1),
        [pod("p0", 0, "Running")],
        NOW + timedelta(minutes=1),
    )
    assert (
        cond(again, "Running")["lastTransitionTime"] == cond(first, "Running")["lastTransitionTime"]
    )


def test_invalid_names_field():
    p = status.invalid(transferjob(PVC_TO_PVC), "spec.bandwidth", "bad size", "InvalidSpec", NOW)
    assert p["phase"] == "Failed" and cond(p, "Accepted")["status"] == "False"
    assert "spec.bandwidth" in cond(p, "Accepted")["message"]


def test_human_rate():
    assert status.human_rate(0) == "0 B/s"
    assert status.human_rate(3 * 1024 * 1024) == "3.0 MiB/s"


def test_finishing_between_mover_exit_and_job_complete_stays_running():
    pods = [pod("p0", 0, "Succeeded", 0, summary(filesCopied=1))]
    p = compute(j=job(succeeded=1), pods=pods, st={"phase": "Running"})
    assert (p["phase"], p["reason"]) == ("Running", "Finishing")


def test_an_audit_log_not_kept_is_in_the_result_without_failing_it():
    spec = {**PVC_TO_S3, "auditLog": "a.log", "parallelism": {"shards": 2}}
    done = job([{"type": "Complete", "status": "True"}], succeeded=2)
    why = "auditLog: the audit log could not be kept at a.log.1: denied"
    pods = [
        pod("p0", 0, "Succeeded", 0, summary(auditLog="a.log.0")),
        pod("p1", 1, "Succeeded", 0, summary(auditLogError=why + "x" * 1000)),
    ]
    p = compute(spec, done, pods)
    assert p["phase"] == "Succeeded" and p["result"]["exitCode"] == 0
    assert p["result"]["auditLogErrors"] == [(why + "x" * 1000)[:512]]
    api.Result.model_validate(p["result"])
    kept = compute(spec, done, [pod(f"p{i}", i, "Succeeded", 0, summary()) for i in range(2)])
    assert "auditLogErrors" not in kept["result"]
