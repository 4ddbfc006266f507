"""Prometheus metrics of the operator, served on `--metrics-port`.

Labels are bounded: phases and reasons are closed sets (ErrorKind reasons
plus a few operator ones; anything else is folded into "Other"), and the only
per-object labels are on schedules, whose number an admin controls and whose
series are removed when the schedule is deleted. "Recovery point missed" is
one comparison:

    time() - ferry_schedule_last_success_timestamp_seconds
      > 2 * ferry_schedule_expected_interval_seconds
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ferry.mover.errors import ErrorKind

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
KNOWN_REASONS = frozenset(
    {k.reason for k in ErrorKind}
    | {
        "Completed",
        "Cancelled",
        "DeadlineExceeded",
        "PrivilegeNotGranted",
        "PoolNotFound",
        "PoolInvalid",
        "MoverCrashed",
    }
)


def bounded_reason(reason: str | None) -> str:
    return reason if reason in KNOWN_REASONS else "Other"


class Metrics:
    """All operator metrics in one registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "ferry_transferjob_runs",
            "Finished TransferJobs by result.",
            ["result", "reason"],
            registry=r,
        )
        self.bytes = Counter(
            "ferry_transferred_bytes", "Bytes written by finished transfers.", registry=r
        )
        self.files = Counter(
            "ferry_transferred_files", "Files copied or updated by finished transfers.", registry=r
        )
        self.duration = Histogram(
            "ferry_transfer_duration_seconds",
            "Wall time from start to completion of TransferJobs.",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
            registry=r,
        )
        self.jobs = Gauge("ferry_transferjobs", "TransferJobs by phase.", ["phase"], registry=r)
        self.verify_mismatches = Counter(
            "ferry_verify_mismatches", "Transfers that ended with a verify mismatch.", registry=r
        )
        self.reconcile_errors = Counter(
            "ferry_reconcile_errors", "Reconciles that raised.", ["kind"], registry=r
        )
        self.reconciles = Counter("ferry_reconciles", "Reconciles run.", ["kind"], registry=r)
        self.schedule_last_success = Gauge(
            "ferry_schedule_last_success_timestamp_seconds",
            "Completion time of the schedule's last successful run.",
            ["namespace", "schedule"],
            registry=r,
        )
        self.schedule_interval = Gauge(
            "ferry_schedule_expected_interval_seconds",
            "Seconds between the schedule's consecutive runs.",
            ["namespace", "schedule"],
            registry=r,
        )
        self.schedule_missed = Counter(
            "ferry_schedule_missed_runs",
            "Scheduled runs skipped.",
            ["namespace", "schedule"],
            registry=r,
        )
        self._phases: dict[str, str] = {}
        for p in PHASES:
            self.jobs.labels(p).set(0)

    def observe_phase(self, uid: str, phase: str | None) -> None:
        """Track the phase of one TransferJob (None: deleted) and refresh the gauge."""
        if phase is None:
            self._phases.pop(uid, None)
        else:
            self._phases[uid] = phase
        for p in PHASES:
            self.jobs.labels(p).set(sum(1 for v in self._phases.values() if v == p))

    def finished(
        self,
        phase: str,
        reason: str | None,
        result: dict[str, object] | None,
        seconds: float | None,
    ) -> None:
        self.runs.labels(phase, bounded_reason(reason)).inc()
        if result:
            self.bytes.inc(int(str(result.get("bytesTransferred") or 0)))
            self.files.inc(
                int(str(result.get("filesCopied") or 0)) + int(str(result.get("filesUpdated") or 0))
            )
            if (
                int(str(result.get("differences") or 0))
                or reason == ErrorKind.VERIFY_MISMATCH.reason
            ):
                self.verify_mismatches.inc()
        elif reason == ErrorKind.VERIFY_MISMATCH.reason:
            self.verify_mismatches.inc()
        if seconds is not None and seconds >= 0:
            self.duration.observe(seconds)

    def forget_schedule(self, namespace: str, name: str) -> None:
        for metric in (self.schedule_last_success, self.schedule_interval, self.schedule_missed):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
