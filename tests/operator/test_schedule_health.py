"""A TransferSchedule's last run and health: what `kubectl get ts`, kstatus and Argo CD read.

The ScheduleReconciler runs against an in-memory stand-in for the three calls it
makes; its children are TransferJobs whose status the operator's own
`status.compute` produced.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ferry.operator import api, schedule, status
from ferry.operator.metrics import Metrics
from ferry.operator.tracing import Tracer
from tests.operator import kstatus
from tests.operator.fixtures import job, pod, summary, transferjob
from tests.operator.test_schedule import T0, sched

COMPLETE = [{"type": "Complete", "status": "True"}]
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]


class FakeKube:
    def __init__(self) -> None:
        self.children: dict[str, dict[str, Any]] = {}

    def list_transferjobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return list(self.children.values())

    def create(self, obj: dict[str, Any]) -> bool:
        self.children.setdefault(obj["metadata"]["name"], obj)
        return True

    def delete_transferjob(self, ns: str, name: str) -> None:
        self.children.pop(name, None)


def finish(kube: FakeKube, name: str, ok: bool, at: str, nbytes: int = 0) -> None:
    """Give child `name` the status the operator computes for a finished run."""
    spec = kube.children[name]["spec"]
    body = transferjob(spec, name=name)
    if ok:
        j, pods = (
            job(COMPLETE, succeeded=1),
            [pod("p", 0, "Succeeded", 0, summary(bytesTransferred=nbytes))],
        )
    else:
        j, pods = job(FAILED, failed=1), [pod("p", 0, "Failed", 12, summary(12, "AuthFailed"))]
    now = status.parse_time(at)
    assert now is not None
    st = status.compute(body, api.TransferJobSpec.model_validate(spec), j, pods, now)
    kube.children[name]["status"] = st


class Schedule:
    """One TransferSchedule and the reconciler, the status written back as the API would."""

    def __init__(self, **spec: Any) -> None:
        self.kube = FakeKube()
        self.r = schedule.ScheduleReconciler(
            self.kube,  # type: ignore[arg-type]
            Metrics(),
            Tracer(),
        )
        self.body = sched(**spec)

    def at(self, now: Any) -> dict[str, Any]:
        patch = self.r.reconcile(self.body, now)
        self.body["status"] = status.merged(self.body["status"], patch)
        return self.body["status"]

    def cond(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.body["status"]["conditions"] if c["type"] == type_)


def test_no_run_yet_is_ready_and_says_when_the_next_is():
    s = Schedule()
    st = s.at(T0 + timedelta(hours=1))
    assert "lastRun" not in st
    assert (s.cond("Ready")["status"], s.cond("Ready")["reason"]) == ("True", "Scheduled")
    assert "next run at 2026-03-01T02:00:00Z" in s.cond("Ready")["message"]
    assert kstatus.compute(s.body)[0] == "Current"


def test_a_failed_run_fails_the_schedule_until_a_later_run_succeeds():
    s = Schedule()
    s.at(T0 + timedelta(hours=2, seconds=1))
    first = next(iter(s.kube.children))
    assert kstatus.compute(s.body)[0] == "Current"  # a run in progress: the schedule is fine
    finish(s.kube, first, ok=False, at="2026-03-01T02:05:00Z")
    st = s.at(T0 + timedelta(hours=2, minutes=6))
    run = st["lastRun"]
    assert (run["name"], run["phase"], run["reason"]) == (first, "Failed", "AuthFailed")
    assert run["completionTime"] == "2026-03-01T02:05:00Z" and run["bytesTransferred"] == 0
    ready = s.cond("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AuthFailed")
    assert first in ready["message"] and "AuthFailed happened" in ready["message"]
    assert s.cond("Stalled")["status"] == "True" and s.cond("Reconciling")["status"] == "False"
    assert kstatus.compute(s.body) == ("Failed", "AuthFailed")
    api.TransferScheduleStatus.model_validate(st)  # every field declared (none pruned)

    # The next night's run succeeds: Ready again, with its bytes and finish time.
    s.at(T0 + timedelta(days=1, hours=2, seconds=1))
    second = max(s.kube.children)
    finish(s.kube, second, ok=True, at="2026-03-02T02:30:00Z", nbytes=4096)
    st = s.at(T0 + timedelta(days=1, hours=2, minutes=31))
    assert st["lastRun"] == {
        "name": second,
        "phase": "Succeeded",
        "reason": "Completed",
        "bytesTransferred": 4096,
        "completionTime": "2026-03-02T02:30:00Z",
    }  # the failure's message is gone (a merge patch's None deletes it)
    assert (s.cond("Ready")["status"], s.cond("Ready")["reason"]) == ("True", "LastRunSucceeded")
    assert s.cond("Stalled")["status"] == "False"
    assert kstatus.compute(s.body)[0] == "Current"


def test_last_run_outlives_the_history_limit():
    s = Schedule(failedJobsHistoryLimit=0)
    s.at(T0 + timedelta(hours=2, seconds=1))
    name = next(iter(s.kube.children))
    finish(s.kube, name, ok=False, at="2026-03-01T02:05:00Z")
    s.at(T0 + timedelta(hours=2, minutes=6))
    assert name not in s.kube.children  # deleted by the limit...
    st = s.at(T0 + timedelta(hours=3))
    assert st["lastRun"]["name"] == name  # ...still the last run, still failing
    assert kstatus.compute(s.body)[0] == "Failed"


def test_an_older_child_does_not_replace_a_newer_recorded_run():
    newer = {"name": "nightly-2", "phase": "Succeeded", "completionTime": "2026-03-02T02:00:00Z"}
    old_child = {
        "metadata": {"name": "nightly-1"},
        "status": {"phase": "Failed", "completionTime": "2026-03-01T02:00:00Z"},
    }
    assert schedule.last_run([old_child], newer) is newer
    running = {"metadata": {"name": "nightly-3"}, "status": {"phase": "Running"}}
    assert schedule.last_run([running], None) is None


def test_suspended_schedule_is_ready_and_says_so():
    s = Schedule(suspend=True)
    s.at(T0 + timedelta(hours=1))
    assert (s.cond("Ready")["status"], s.cond("Ready")["reason"]) == ("True", "Suspended")
    assert kstatus.compute(s.body)[0] == "Current"


def test_invalid_schedule_is_stalled():
    s = Schedule(schedule="61 * * * *")
    s.at(T0 + timedelta(hours=1))
    assert s.cond("Stalled")["status"] == "True" and s.cond("Ready")["status"] == "False"
    assert kstatus.compute(s.body) == ("Failed", "InvalidSpec")
    assert "spec.schedule" in s.cond("Stalled")["message"]
    assert s.body["status"]["observedGeneration"] == s.body["metadata"]["generation"]


def test_printer_columns_read_the_last_run():
    cols = {c["name"]: c for c in api.TransferScheduleKind.printer_columns}
    assert cols["Last Result"]["jsonPath"] == ".status.lastRun.phase"
    assert cols["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert cols["Last Bytes"]["jsonPath"] == ".status.lastRun.bytesTransferred"
