"""Ready / Reconciling / Stalled per phase, as kstatus (Flux, kpt) reads them.

Each case is a status the operator's own functions produce (status.compute, the
reconciler's refusals); `tests.operator.kstatus` is kstatus's reading of it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.operator import api, gitops, status
from tests.operator import kstatus
from tests.operator.fixtures import PVC_TO_PVC, job, pod, summary, transferjob
from tests.operator.test_reconcile import reconciler

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
HEALTH = ("Ready", "Reconciling", "Stalled")


def computed(spec: dict[str, Any] = PVC_TO_PVC, j=None, pods=(), st=None, now=NOW):
    """The TransferJob as the API server would hold it after the operator's status write."""
    body = transferjob(spec, status=st)
    patch = status.compute(body, api.TransferJobSpec.model_validate(spec), j, list(pods), now)
    body["status"] = status.merged(body["status"], patch)
    return body


def conds(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in body["status"]["conditions"]}


def health(body: dict[str, Any]) -> tuple[str, str, str]:
    c = conds(body)
    return tuple(c[t]["status"] for t in HEALTH)  # type: ignore[return-value]


COMPLETE = [{"type": "Complete", "status": "True"}]
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
STALLED_SHARD = {"0": {"bytesDone": 1, "bytesTotal": 9, "lastProgressTime": "2026-01-01T00:01:00Z"}}
MOVING = {
    "progress": {
        "shards": {"0": {**STALLED_SHARD["0"], "lastProgressTime": "2026-01-01T00:09:58Z"}}
    }
}

# phase, (Ready, Reconciling, Stalled), kstatus, the object
CASES: list[tuple[str, tuple[str, str, str], str, Any]] = [
    ("Pending", ("False", "True", "False"), "InProgress", lambda: computed()),
    (
        "Running",
        ("False", "True", "False"),
        "InProgress",
        lambda: computed(j=job(active=1), pods=[pod("p0", 0, "Running")], st=MOVING),
    ),
    (
        "Running, no progress for stallTimeoutSeconds",
        ("False", "False", "True"),
        "Failed",
        lambda: computed(
            {**PVC_TO_PVC, "stallTimeoutSeconds": 60},
            job(active=1),
            [pod("p0", 0, "Running")],
            {"phase": "Running", "progress": {"shards": STALLED_SHARD}},
        ),
    ),
    (
        "Running, retrying after a failed pod",
        ("False", "True", "False"),
        "InProgress",
        lambda: computed(j=job(active=1, failed=1), pods=[pod("p0", 0, "Pending")]),
    ),
    (
        "Suspended, mover stopping",
        ("False", "True", "False"),
        "InProgress",
        lambda: computed({**PVC_TO_PVC, "suspend": True}, job(active=1), [pod("p0", 0, "Running")]),
    ),
    (
        "Suspended",
        ("True", "False", "False"),
        "Current",
        lambda: computed({**PVC_TO_PVC, "suspend": True}, job(suspend=True)),
    ),
    (
        "Succeeded",
        ("True", "False", "False"),
        "Current",
        lambda: computed(
            j=job(COMPLETE, succeeded=1), pods=[pod("p0", 0, "Succeeded", 0, summary())]
        ),
    ),
    (
        "Failed",
        ("False", "False", "True"),
        "Failed",
        lambda: computed(
            j=job(FAILED, failed=1),
            pods=[pod("p0", 0, "Failed", 9, summary(9, "VerifyMismatch"))],
        ),
    ),
    (
        "Failed, cancelled",
        ("False", "False", "True"),
        "Failed",
        lambda: computed({**PVC_TO_PVC, "cancel": True}),
    ),
]


@pytest.mark.parametrize(("phase", "expected", "reading", "make"), CASES, ids=[c[0] for c in CASES])
def test_condition_table_per_phase(phase, expected, reading, make):
    body = make()
    assert health(body) == expected, phase
    assert kstatus.compute(body)[0] == reading
    c = conds(body)
    reasons = {c[t]["reason"] for t in HEALTH}  # one reason for the three: the object's own
    assert reasons == ({"NoProgress"} if "no progress" in phase else {body["status"]["reason"]})
    # kstatus compares generations: every condition and the status claim the object's.
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert {c[t]["observedGeneration"] for t in HEALTH} == {body["metadata"]["generation"]}


def test_failed_stalled_carries_the_movers_reason_and_message():
    body = CASES[7][3]()
    stalled = conds(body)["Stalled"]
    assert (stalled["reason"], kstatus.compute(body)) == (
        "VerifyMismatch",
        ("Failed", "VerifyMismatch"),
    )
    assert stalled["message"] == body["status"]["message"] == "VerifyMismatch happened"


def test_no_progress_stall_clears_when_progress_resumes():
    spec = {**PVC_TO_PVC, "stallTimeoutSeconds": 60}
    running = [pod("p0", 0, "Running")]
    stalled = computed(spec, job(active=1), running, {"progress": {"shards": STALLED_SHARD}})
    assert kstatus.compute(stalled) == ("Failed", "NoProgress")
    assert "stallTimeoutSeconds=60" in conds(stalled)["Stalled"]["message"]
    moving = {"0": {**STALLED_SHARD["0"], "lastProgressTime": "2026-01-01T00:09:59Z"}}
    st = {**stalled["status"], "progress": {"shards": moving}}
    again = computed(spec, job(active=1), running, st)
    assert health(again) == ("False", "True", "False")
    assert kstatus.compute(again)[0] == "InProgress"


def test_an_edit_not_yet_observed_reads_in_progress():
    done = CASES[6][3]()
    done["metadata"]["generation"] = 2  # edited; the operator has not reconciled it yet
    assert kstatus.compute(done) == ("InProgress", "LatestGenerationNotObserved")


def test_refused_spec_is_stalled():
    r, _, _, _ = reconciler()
    body = transferjob({**PVC_TO_PVC, "bandwidth": "fast"})
    body["status"] = r.reconcile(body, NOW).status
    assert health(body) == ("False", "False", "True")
    assert kstatus.compute(body) == ("Failed", "InvalidSpec")
    assert "spec.bandwidth" in conds(body)["Stalled"]["message"]
    assert body["status"]["observedGeneration"] == 1


@pytest.mark.parametrize("blocker", ["pool", "rbac"])
def test_waiting_on_a_fix_is_stalled_until_fixed(blocker):
    r, kube, _, _ = reconciler()
    spec = {**PVC_TO_PVC, "placement": {"pool": "bulk"}} if blocker == "pool" else PVC_TO_PVC
    if blocker == "rbac":
        kube.forbidden = {"Job"}
    body = transferjob(spec)
    body["status"] = r.reconcile(body, NOW).status
    reason = "PoolNotFound" if blocker == "pool" else "Forbidden"
    assert kstatus.compute(body) == ("Failed", reason)
    kube.pools["bulk"] = {"spec": {}}
    kube.forbidden = set()
    body["status"] = status.merged(body["status"], r.reconcile(body, NOW).changes)
    assert health(body) == ("False", "True", "False")
    assert kstatus.compute(body)[0] == "InProgress"


@given(
    phase=st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Suspended"]),
    reason=st.sampled_from(
        [
            "Waiting",
            "Transferring",
            "Suspended",
            "Suspending",
            "Completed",
            *status.WAITING_ON_A_FIX,
        ]
    ),
)
def test_exactly_one_of_ready_reconciling_stalled(phase, reason):
    h = status.job_health(phase, reason, "")
    assert [h.ready, h.reconciling, h.is_stalled].count(True) == 1
    conditions = status.set_health([], h, NOW, 3)
    assert [c["type"] for c in conditions] == list(HEALTH)


def test_printer_columns_show_ready():
    for kind in (api.TransferJobKind, api.TransferScheduleKind):
        cols = {c["name"]: c["jsonPath"] for c in kind.printer_columns}
        assert cols["Ready"] == '.status.conditions[?(@.type=="Ready")].status'


# ---------------------------------------------------------------- the TTL trap

ARGO = {"argocd.argoproj.io/tracking-id": "app:ferry.dev/TransferJob:team/copy-a"}


def test_ttl_on_a_gitops_managed_job_is_a_condition_and_one_warning():
    r, _, _, _ = reconciler()
    body = transferjob({**PVC_TO_PVC, "ttlSecondsAfterFinished": 60})
    body["metadata"]["annotations"] = ARGO
    out = r.reconcile(body, NOW)
    c = next(c for c in out.status["conditions"] if c["type"] == gitops.TTL_CONDITION)
    assert (c["status"], c["reason"]) == ("True", gitops.TTL_REASON)
    assert "argocd.argoproj.io/tracking-id" in c["message"] and "runs again" in c["message"]
    assert out.warning == (gitops.TTL_CONDITION, c["message"])
    body["status"] = out.status
    assert r.reconcile(body, NOW + timedelta(seconds=5)).warning is None  # one Event
    # The TTL removed (a mutable field): the condition turns False.
    body["spec"] = dict(PVC_TO_PVC)
    body["metadata"]["generation"] = 2
    again = r.reconcile(body, NOW + timedelta(seconds=10)).status
    c = next(c for c in again["conditions"] if c["type"] == gitops.TTL_CONDITION)
    assert (c["status"], c["reason"], c["message"]) == ("False", "NoConflict", "")


@pytest.mark.parametrize(
    ("labels", "annotations", "ttl", "flagged"),
    [
        ({"kustomize.toolkit.fluxcd.io/name": "apps"}, {}, 0, "Flux (Kustomization)"),
        ({"helm.toolkit.fluxcd.io/name": "ferry-jobs"}, {}, 60, "Flux (HelmRelease)"),
        ({"app.kubernetes.io/instance": "apps"}, {}, 60, "Argo CD label tracking"),
        ({}, ARGO, 60, "Argo CD"),
        ({"kustomize.toolkit.fluxcd.io/name": "apps"}, {}, None, None),  # no TTL: safe
        ({"app": "x"}, {"note": "y"}, 60, None),  # no tool's mark
        # A schedule's run: the schedule made it, no tool re-applies it.
        ({"app.kubernetes.io/instance": "apps", "ferry.dev/schedule": "nightly"}, {}, 60, None),
    ],
)
def test_ttl_conflict_marks(labels, annotations, ttl, flagged):
    spec = api.TransferJobSpec.model_validate({**PVC_TO_PVC, "ttlSecondsAfterFinished": ttl})
    message = gitops.ttl_conflict({"labels": labels, "annotations": annotations}, spec)
    if flagged is None:
        assert message is None
    else:
        assert message is not None and flagged in message
    body = computed({**PVC_TO_PVC, "ttlSecondsAfterFinished": ttl})
    assert gitops.TTL_CONDITION not in conds(body)  # nothing to say: no condition at all


def test_a_ttl_added_after_the_end_is_flagged_and_the_generation_claimed():
    """A finished TransferJob in Git, then a commit adds a TTL: the edit is claimed (every
    condition says generation 2; kstatus still reads it Current) and the conflict flagged."""
    r, kube, _, _ = reconciler()
    body = transferjob(PVC_TO_PVC)
    body["metadata"]["labels"] = {"kustomize.toolkit.fluxcd.io/name": "apps"}
    body["status"] = r.reconcile(body, NOW).status
    job_ = kube.objects[("Job", "ferry-copy-a")]
    job_["status"] = job(COMPLETE, succeeded=1)["status"]
    kube.pods = [pod("p0", 0, "Succeeded", 0, summary())]
    body["status"] = r.reconcile(body, NOW).status
    assert body["status"]["phase"] == "Succeeded" and gitops.TTL_CONDITION not in conds(body)
    body["spec"] = {**PVC_TO_PVC, "ttlSecondsAfterFinished": 3600}
    body["metadata"]["generation"] = 2
    out = r.reconcile(body, NOW + timedelta(seconds=30))
    body["status"] = status.merged(body["status"], out.changes)
    assert conds(body)[gitops.TTL_CONDITION]["status"] == "True"
    assert out.warning is not None and out.warning[0] == gitops.TTL_CONDITION
    assert {c["observedGeneration"] for c in body["status"]["conditions"]} == {2}
    assert kstatus.compute(body)[0] == "Current" and body["status"]["observedGeneration"] == 2
    assert not out.deleted and kube.objects[("Job", "ferry-copy-a")] is job_  # not re-run
