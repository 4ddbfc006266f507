"""Live numbers: bytes and files counted from the movers' progress while a TransferJob runs
(through the real reconciler), topped up to the result at the end; the stalled gauge; the
build info; the schedule gauges that the alerts read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import generate_latest

from ferry import version
from ferry.operator import cron
from ferry.operator.metrics import Metrics
from ferry.operator.schedule import ScheduleReconciler
from ferry.operator.tracing import Tracer
from tests.operator.fixtures import PVC_TO_PVC, job, pod, summary, transferjob
from tests.operator.test_reconcile import NOW, reconciler


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def shard(done: int, files: int, at: str = "2026-01-01T00:59:59Z") -> dict[str, Any]:
    return {
        "bytesDone": done,
        "bytesTotal": 10_000,
        "filesDone": files,
        "filesTotal": 10,
        "bytesPerSecond": 100,
        "scanComplete": True,
        "lastProgressTime": at,
    }


def test_bytes_and_files_move_while_running_and_end_at_the_result() -> None:
    spec = {**PVC_TO_PVC, "parallelism": {"shards": 2}}
    r, kube, m, _ = reconciler()
    body = transferjob(spec)
    body["status"] = r.reconcile(body, NOW).status  # creates the Job
    kube.objects[("Job", "ferry-copy-a")]["status"] = job(active=2)["status"]
    kube.pods = [pod("p0", 0, "Running"), pod("p1", 1, "Running")]

    body["status"]["progress"]["shards"] = {"0": shard(1000, 1), "1": shard(500, 0)}
    body["status"] = r.reconcile(body, NOW).status | {"progress": body["status"]["progress"]}
    assert body["status"]["phase"] == "Running"
    assert value(m, "ferry_transferred_bytes_total") == 1500
    assert value(m, "ferry_transferred_files_total") == 1

    # More progress: only the gain is added, per shard.
    body["status"]["progress"]["shards"] = {"0": shard(3000, 3), "1": shard(500, 0)}
    r.reconcile(body, NOW)
    assert value(m, "ferry_transferred_bytes_total") == 3500
    assert value(m, "ferry_transferred_files_total") == 3
    r.reconcile(body, NOW)  # the same progress again adds nothing
    assert value(m, "ferry_transferred_bytes_total") == 3500

    # Shard 1's pod restarted: it reports from zero, and what it moves again counts.
    body["status"]["progress"]["shards"]["1"] = shard(200, 1)
    r.reconcile(body, NOW)
    assert value(m, "ferry_transferred_bytes_total") == 3700
    assert value(m, "ferry_transferred_files_total") == 4

    # The end: the counters reach the summed result, counting nothing twice.
    kube.objects[("Job", "ferry-copy-a")]["status"] = job(
        [{"type": "Complete", "status": "True"}], succeeded=2
    )["status"]
    kube.pods = [
        pod("p0", 0, "Succeeded", 0, summary(filesCopied=4, bytesTransferred=4000)),
        pod("p1", 1, "Succeeded", 0, summary(filesCopied=1, filesUpdated=1, bytesTransferred=600)),
    ]
    done = r.reconcile(body, NOW + timedelta(seconds=5)).status
    assert done["phase"] == "Succeeded"
    assert value(m, "ferry_transferred_bytes_total") == 4600
    assert value(m, "ferry_transferred_files_total") == 6
    assert value(m, "ferry_transferjob_runs_total", result="Succeeded", reason="Completed") == 1

    # Reconciled again once finished (a resync, an operator restart): nothing more counted.
    body["status"] = {**body["status"], **done}
    r.reconcile(body, NOW + timedelta(seconds=10))
    assert value(m, "ferry_transferred_bytes_total") == 4600
    assert value(m, "ferry_transferjob_runs_total", result="Succeeded", reason="Completed") == 1


def test_progress_past_the_result_is_not_taken_back() -> None:
    m = Metrics()
    m.observe_progress("u", {"0": shard(900, 2)})
    m.finished("Succeeded", "Completed", {"bytesTransferred": 700, "filesCopied": 1}, 3.0, "u")
    assert value(m, "ferry_transferred_bytes_total") == 900  # a counter never goes down
    assert value(m, "ferry_transferred_files_total") == 2


def test_untrusted_progress_values_are_bounded_to_counts() -> None:
    m = Metrics()
    m.observe_progress(
        "u",
        {
            "0": {"bytesDone": -5, "filesDone": "x"},
            "1": "not a map",
            "2": {"bytesDone": "12", "filesDone": None},
        },
    )
    assert value(m, "ferry_transferred_bytes_total") == 12
    assert value(m, "ferry_transferred_files_total") == 0


def test_deleted_job_forgets_its_progress() -> None:
    m = Metrics()
    m.observe_phase("u", "Running")
    m.observe_progress("u", {"0": shard(100, 1)})
    m.observe_phase("u", None)
    m.observe_progress("u", {"0": shard(100, 1)})  # a new object with the same uid: counted anew
    assert value(m, "ferry_transferred_bytes_total") == 200


def test_stalled_gauge_follows_the_condition_while_running() -> None:
    spec = {**PVC_TO_PVC, "stallTimeoutSeconds": 60}
    r, kube, m, _ = reconciler()
    body = transferjob(spec)
    body["status"] = r.reconcile(body, NOW).status
    kube.objects[("Job", "ferry-copy-a")]["status"] = job(active=1)["status"]
    kube.pods = [pod("p0", 0, "Running")]
    body["status"]["progress"]["shards"] = {"0": shard(10, 0, "2026-01-01T00:59:30Z")}
    r.reconcile(body, NOW)
    assert value(m, "ferry_transferjobs_stalled") == 0
    r.reconcile(body, NOW + timedelta(minutes=5))
    assert value(m, "ferry_transferjobs_stalled") == 1
    m.observe_phase("uid-copy-a", "Failed", stalled=True)  # only running jobs stall
    assert value(m, "ferry_transferjobs_stalled") == 0


def test_build_info_names_the_version() -> None:
    m = Metrics(version="1.2.3")
    text = generate_latest(m.registry).decode()
    assert 'ferry_build_info{python="' in text and 'version="1.2.3"' in text
    assert (
        value(
            m, "ferry_build_info", version="1.2.3", python=__import__("platform").python_version()
        )
        == 1
    )
    assert version()  # what `ferry operator` passes: the installed distribution's version


class _ScheduleKube:
    def list_transferjobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return []

    def create(self, obj: dict[str, Any]) -> bool:
        return True

    def delete_transferjob(self, ns: str, name: str) -> None:
        return None


def test_schedule_gauges_for_the_never_succeeded_alert_and_suspend() -> None:
    m = Metrics()
    r = ScheduleReconciler(_ScheduleKube(), m, Tracer())  # type: ignore[arg-type]
    created = datetime(2026, 3, 1, tzinfo=UTC)
    body = {
        "metadata": {
            "name": "nightly",
            "namespace": "team",
            "uid": "u",
            "generation": 1,
            "creationTimestamp": "2026-03-01T00:00:00Z",
        },
        "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": PVC_TO_PVC}},
        "status": {},
    }
    r.reconcile(body, created + timedelta(hours=1))
    labels = {"namespace": "team", "schedule": "nightly"}
    assert value(m, "ferry_schedule_created_timestamp_seconds", **labels) == created.timestamp()
    assert value(m, "ferry_schedule_expected_interval_seconds", **labels) == 86400
    assert value(m, "ferry_schedule_suspended", **labels) == 0
    assert (
        m.registry.get_sample_value("ferry_schedule_last_success_timestamp_seconds", labels) is None
    )
    body["spec"]["suspend"] = True
    r.reconcile(body, created + timedelta(hours=1))
    assert value(m, "ferry_schedule_suspended", **labels) == 1
    m.forget_schedule("team", "nightly")
    assert b"nightly" not in generate_latest(m.registry)


def test_expected_interval_is_the_longest_gap() -> None:
    monday = datetime(2026, 3, 2, 12, tzinfo=UTC)
    # Weekdays at 02:00: the weekend gap (Fri -> Mon) is what a success may take.
    assert cron.Cron("0 2 * * 1-5").longest_gap(monday) == 3 * 86400
    assert cron.Cron("*/5 * * * *").longest_gap(monday) == 300
    # Business hours only: the night is the longest wait on a weekday, the weekend overall.
    assert (
        cron.Cron("0 9-17 * * 1-5").longest_gap(monday) == 64 * 3600
    )  # Friday 17:00 to Monday 09:00
    assert cron.Cron("0 0 1 * *").longest_gap(monday) == 31 * 86400
