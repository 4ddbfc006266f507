"""Prometheus metrics of the operator, served on `--metrics-port`.

Labels are bounded: phases and reasons are closed sets (ErrorKind reasons
plus a few operator ones; anything else is folded into "Other"), and the only
per-object labels are on schedules, whose number an admin controls and whose
series are removed when the schedule is deleted. "Recovery point missed" is
one comparison:

    time() - ferry_schedule_last_success_timestamp_seconds
      > 2 * ferry_schedule_expected_interval_seconds

Bytes and files move while a transfer runs: each reconcile counts what the
movers' progress (`status.progress.shards`) gained since the last one, and the
end tops the counters up to the summed result. The chart's alerts and
dashboard (charts/ferry/monitoring/) use only names this registry exports; a
test holds them to it.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


def _count(value: object) -> int:
    """A non-negative counter value from status (untrusted: movers write it)."""
    try:
        return max(0, int(str(value or 0)))
    except ValueError:
        return 0


@dataclass(slots=True)
class _Moved:
    """One unfinished TransferJob's bytes and files counted so far, and per shard the
    last progress seen (a shard whose pod restarted reports from zero again)."""

    bytes: int = 0
    files: int = 0
    shards: dict[str, tuple[int, int]] = field(default_factory=dict)


class Metrics:
    """All operator metrics in one registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None, version: str = "") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "ferry_build_info",
            "Always 1; the running operator's version in labels.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(version or "unknown", platform.python_version()).set(1)
        self.runs = Counter(
            "ferry_transferjob_runs",
            "Finished TransferJobs by result.",
            ["result", "reason"],
            registry=r,
        )
        self.bytes = Counter(
            "ferry_transferred_bytes",
            "Bytes transferred: the movers' progress while they run, the result at the end.",
            registry=r,
        )
        self.files = Counter(
            "ferry_transferred_files",
            "Files transferred: the movers' progress while they run, the result at the end.",
            registry=r,
        )
        self.duration = Histogram(
            "ferry_transfer_duration_seconds",
            "Wall time from start to completion of TransferJobs.",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
            registry=r,
        )
        self.jobs = Gauge("ferry_transferjobs", "TransferJobs by phase.", ["phase"], registry=r)
        self.stalled = Gauge(
            "ferry_transferjobs_stalled",
            "Running TransferJobs with no progress for their stallTimeoutSeconds.",
            registry=r,
        )
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
        self.schedule_created = Gauge(
            "ferry_schedule_created_timestamp_seconds",
            "Creation time of the schedule (the recovery point of one that never succeeded).",
            ["namespace", "schedule"],
            registry=r,
        )
        self.schedule_suspended = Gauge(
            "ferry_schedule_suspended",
            "1 while the schedule is suspended (its alerts are silenced), else 0.",
            ["namespace", "schedule"],
            registry=r,
        )
        self._phases: dict[str, str] = {}
        self._stalled: set[str] = set()
        self._moved: dict[str, _Moved] = {}
        for p in PHASES:
            self.jobs.labels(p).set(0)
        # Every bounded series exists from the start at 0: `increase()` does not count the
        # first sample of a series, so a first failure would not fire an alert otherwise.
        for result in ("Succeeded", "Failed"):
            for reason in (*sorted(KNOWN_REASONS), "Other"):
                self.runs.labels(result, reason)
        for kind in ("TransferJob", "TransferSchedule"):
            self.reconciles.labels(kind)
            self.reconcile_errors.labels(kind)

    def observe_phase(self, uid: str, phase: str | None, stalled: bool = False) -> None:
        """Track the phase of one TransferJob (None: deleted) and refresh the gauges."""
        if phase is None:
            self._phases.pop(uid, None)
            self._moved.pop(uid, None)
        else:
            self._phases[uid] = phase
        if stalled and phase == "Running":
            self._stalled.add(uid)
        else:
            self._stalled.discard(uid)
        for p in PHASES:
            self.jobs.labels(p).set(sum(1 for v in self._phases.values() if v == p))
        self.stalled.set(len(self._stalled))

    def observe_progress(self, uid: str, shards: Mapping[str, Any] | None) -> None:
        """Count what the movers' per-shard progress gained since the last call.

        A shard's numbers only add when they grow; one that starts again from zero (a
        retried pod) adds what it moves again. Operator restarts lose the per-shard
        memory, as they reset every counter: the running jobs' progress so far is
        counted once more by the new process.
        """
        moved = self._moved.setdefault(uid, _Moved())
        seen = moved.shards
        for key, entry in (shards or {}).items():
            if not isinstance(entry, Mapping):
                continue
            now_bytes, now_files = _count(entry.get("bytesDone")), _count(entry.get("filesDone"))
            last_bytes, last_files = seen.get(str(key), (0, 0))
            add_bytes = now_bytes - last_bytes if now_bytes >= last_bytes else now_bytes
            add_files = now_files - last_files if now_files >= last_files else now_files
            seen[str(key)] = (now_bytes, now_files)
            moved.bytes += add_bytes
            moved.files += add_files
            self.bytes.inc(add_bytes)
            self.files.inc(add_files)

    def finished(
        self,
        phase: str,
        reason: str | None,
        result: dict[str, object] | None,
        seconds: float | None,
        uid: str = "",
    ) -> None:
        """Count one finished run; bytes and files up to its result, past what its
        progress already counted (never down: progress may have counted a retry twice)."""
        self.runs.labels(phase, bounded_reason(reason)).inc()
        moved = self._moved.pop(uid, None) or _Moved()
        if result:
            total_files = _count(result.get("filesCopied")) + _count(result.get("filesUpdated"))
            self.bytes.inc(max(0, _count(result.get("bytesTransferred")) - moved.bytes))
            self.files.inc(max(0, total_files - moved.files))
            if _count(result.get("differences")) or reason == ErrorKind.VERIFY_MISMATCH.reason:
                self.verify_mismatches.inc()
        elif reason == ErrorKind.VERIFY_MISMATCH.reason:
            self.verify_mismatches.inc()
        if seconds is not None and seconds >= 0:
            self.duration.observe(seconds)

    def forget_schedule(self, namespace: str, name: str) -> None:
        for metric in (
            self.schedule_last_success,
            self.schedule_interval,
            self.schedule_missed,
            self.schedule_created,
            self.schedule_suspended,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
