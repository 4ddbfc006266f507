"""TransferSchedule: decide which TransferJobs to create or delete, then do it.

`plan()` is a pure function of (spec, object identity, status, children,
clock) — the whole of the schedule semantics, unit-tested with a controlled
clock. `ScheduleReconciler` applies a plan. Child names derive from the
scheduled time (or the manual trigger token), so a retried or duplicated
reconcile meets a 409 instead of making a second run.

Semantics, as CronJob where it has them:
- the latest due time in (lastHandledTime, now] is considered; earlier ones it
  skips over count as missed (no catch-up storm);
- a due time later than `startingDeadlineSeconds` (default 60 s under
  `missedRunPolicy: Skip`, unbounded under `RunOnce`) is counted missed;
- Forbid leaves a due time pending while a run is active (it then runs if it
  is still within the deadline); Replace deletes active runs first;
- `suspend` stops scheduled runs; a changed `trigger` token runs once (and
  honours Forbid), acknowledged in `status.lastTrigger`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ferry.operator import api, cron, status, workload
from ferry.operator.kube import Kube
from ferry.operator.metrics import Metrics
from ferry.operator.tracing import Tracer

SKIP_DEFAULT_DEADLINE_SECONDS = 60
ANNOTATION_SCHEDULED_AT = "ferry.dev/scheduled-at"
ANNOTATION_TRIGGER = "ferry.dev/trigger"


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    missed: int = 0
    interval_seconds: float | None = None
    last_success: datetime | None = None


def child_name(schedule: str, suffix: str) -> str:
    base = (
        schedule
        if len(schedule) <= 40
        else f"{schedule[:31]}-{hashlib.sha256(schedule.encode()).hexdigest()[:8]}"
    )
    return f"{base}-{suffix}"


def _child(
    body: dict[str, Any], spec: api.TransferScheduleSpec, name: str, annotations: dict[str, str]
) -> dict[str, Any]:
    meta = body["metadata"]
    template = (body.get("spec") or {}).get("jobTemplate") or {}
    tmeta = template.get("metadata") or {}
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TransferJobKind.kind,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), workload.LABEL_SCHEDULE: meta["name"]},
            "annotations": {**(tmeta.get("annotations") or {}), **annotations},
            "ownerReferences": [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": api.TransferScheduleKind.kind,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": _with_zone(dict(template.get("spec") or {}), spec.time_zone),
    }


def _with_zone(job: dict[str, Any], time_zone: str | None) -> dict[str, Any]:
    """A bandwidth timetable is read in the schedule's zone, unless the job names its own."""
    if time_zone and job.get("bandwidth") and not job.get("bandwidthTimeZone"):
        job["bandwidthTimeZone"] = time_zone
    return job


def _is_active(child: dict[str, Any]) -> bool:
    return (child.get("status") or {}).get("phase") not in status.TERMINAL_PHASES


def plan(
    body: dict[str, Any],
    spec: api.TransferScheduleSpec,
    children: list[dict[str, Any]],
    now: datetime,
) -> Plan:
    meta = body["metadata"]
    old = body.get("status") or {}
    out = Plan()
    c = cron.Cron(
        spec.schedule, spec.time_zone, cron.jitter_offset(meta["uid"], spec.jitter_seconds)
    )
    active = sorted(ch["metadata"]["name"] for ch in children if _is_active(ch))
    existing = {ch["metadata"]["name"] for ch in children}

    since = (
        status.parse_time(old.get("lastHandledTime"))
        or status.parse_time(meta.get("creationTimestamp"))
        or now
    )
    cursor = since
    last_schedule = old.get("lastScheduleTime")
    due, skipped = c.due(since, now)
    if due is not None and not spec.suspend:
        late = (now - due).total_seconds()
        deadline = spec.starting_deadline_seconds
        if deadline is None and spec.missed_run_policy == "Skip":
            deadline = SKIP_DEFAULT_DEADLINE_SECONDS
        out.missed += skipped
        if deadline is not None and late > deadline:
            out.missed += 1
            cursor = due
        elif spec.concurrency_policy == "Forbid" and active:
            cursor = _latest_before(c, since, due)  # keep `due` pending; earlier ones are consumed
        else:
            if spec.concurrency_policy == "Replace":
                out.delete.extend(active)
                active = []
            name = child_name(meta["name"], str(int(due.timestamp())))
            if name not in existing:
                out.create.append(
                    _child(body, spec, name, {ANNOTATION_SCHEDULED_AT: status.iso(due)})
                )
            active.append(name)
            cursor = due
            last_schedule = status.iso(due)
    elif due is not None and spec.suspend:
        out.missed += skipped + 1
        cursor = due

    last_trigger = old.get("lastTrigger")
    blocked = spec.concurrency_policy == "Forbid" and bool(active)
    if spec.trigger and spec.trigger != last_trigger and not blocked:
        token = hashlib.sha256(spec.trigger.encode()).hexdigest()[:10]
        name = child_name(meta["name"], f"manual-{token}")
        if name not in existing:
            out.create.append(_child(body, spec, name, {ANNOTATION_TRIGGER: spec.trigger}))
        active.append(name)
        last_trigger = spec.trigger

    out.delete.extend(_history(children, spec))

    successes = [
        status.parse_time((ch.get("status") or {}).get("completionTime"))
        for ch in children
        if (ch.get("status") or {}).get("phase") == "Succeeded"
    ]
    known = [t for t in [*successes, status.parse_time(old.get("lastSuccessfulTime"))] if t]
    out.last_success = max(known) if known else None
    nxt = c.next_after(max(now, cursor))
    out.interval_seconds = c.longest_gap(nxt)
    run = last_run(children, old.get("lastRun"))
    out.status = {
        "lastRun": run,
        "lastHandledTime": status.iso(cursor),
        "lastScheduleTime": last_schedule,
        "lastSuccessfulTime": status.iso(out.last_success) if out.last_success else None,
        "nextScheduleTime": None if spec.suspend else status.iso(nxt),
        "effectiveSchedule": c.describe(),
        "missedRuns": int(old.get("missedRuns") or 0) + out.missed,
        "active": [{"name": n} for n in sorted(set(active) - set(out.delete))],
        "lastTrigger": last_trigger,
        "observedGeneration": meta.get("generation"),
    }
    return out


def last_run(
    children: list[dict[str, Any]], before: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The latest finished run: from the children, or as recorded (a run the history limits
    deleted is remembered until a later one finishes)."""
    finished = [
        ch
        for ch in children
        if (ch.get("status") or {}).get("phase") in status.TERMINAL_PHASES
        and (ch.get("status") or {}).get("completionTime")
    ]
    if not finished:
        return before
    latest = max(finished, key=lambda ch: (ch["status"]["completionTime"], ch["metadata"]["name"]))
    st = latest["status"]
    if before and (before.get("completionTime") or "") > st["completionTime"]:
        return before
    return {
        "name": latest["metadata"]["name"],
        "phase": st["phase"],
        "reason": st.get("reason"),
        "message": str(st.get("message") or "")[:1024] or None,
        "bytesTransferred": int((st.get("result") or {}).get("bytesTransferred") or 0),
        "completionTime": st["completionTime"],
    }


def health(spec: api.TransferScheduleSpec, plan_status: dict[str, Any]) -> status.Health:
    """Ready while its runs succeed (or none has finished yet); Stalled, with the run's
    reason, once the latest finished run failed, until a later one succeeds. A suspended
    schedule is Ready: nothing is asked of it (kstatus reads a suspended CronJob so too)."""
    run = plan_status.get("lastRun")
    if run and run.get("phase") == "Failed":
        why = f": {run['message']}" if run.get("message") else ""
        return status.Health.stalled(
            str(run.get("reason") or "Failed"),
            f"the last run, {run['name']}, failed ({run.get('reason')}){why}",
        )
    if spec.suspend:
        return status.Health.done("Suspended", "suspended by spec.suspend: no runs are scheduled")
    nxt = f"; next run at {plan_status['nextScheduleTime']}"
    if run:
        return status.Health.done(
            "LastRunSucceeded", f"the last run, {run['name']}, succeeded{nxt}"
        )
    return status.Health.done("Scheduled", f"no run has finished yet{nxt}")


def _latest_before(c: cron.Cron, since: datetime, due: datetime) -> datetime:
    """The scheduled time just before `due` (or `since`): consumed, while `due` stays pending."""
    prev = since
    for t in c.times_after(since):
        if t >= due:
            return prev
        prev = t
    return prev  # pragma: no cover - times_after is infinite


def _history(children: list[dict[str, Any]], spec: api.TransferScheduleSpec) -> list[str]:
    """Finished children beyond the history limits, oldest first."""
    out: list[str] = []
    for phase, limit in (
        ("Succeeded", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ):
        done = sorted(
            (ch for ch in children if (ch.get("status") or {}).get("phase") == phase),
            key=lambda ch: (
                (ch.get("status") or {}).get("completionTime") or "",
                ch["metadata"]["name"],
            ),
        )
        out.extend(ch["metadata"]["name"] for ch in done[: max(0, len(done) - limit)])
    return out


class ScheduleReconciler:
    def __init__(self, kube: Kube, metrics: Metrics, tracer: Tracer) -> None:
        self.kube = kube
        self.metrics = metrics
        self.tracer = tracer

    def reconcile(self, body: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
        """Apply the plan; return the status patch."""
        now = now or status.now_utc()
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        self.metrics.reconciles.labels("TransferSchedule").inc()
        with self.tracer.reconcile(
            "reconcile TransferSchedule",
            None,
            {"k8s.namespace.name": ns, "ferry.transferschedule": name},
        ):
            try:
                spec = api.TransferScheduleSpec.model_validate(body.get("spec") or {})
            except ValueError as exc:
                where, msg = status.pydantic_field(exc)
                conditions = status.set_condition(
                    list((body.get("status") or {}).get("conditions") or []),
                    "Accepted",
                    False,
                    "InvalidSpec",
                    f"{where}: {msg}",
                    now,
                    meta.get("generation"),
                )
                conditions = status.set_health(
                    conditions,
                    status.Health.stalled("InvalidSpec", f"{where}: {msg}"),
                    now,
                    meta.get("generation"),
                )
                return {"conditions": conditions, "observedGeneration": meta.get("generation")}
            children = self.kube.list_transferjobs(ns, f"{workload.LABEL_SCHEDULE}={name}")
            p = plan(body, spec, children, now)
            for victim in p.delete:
                self.kube.delete_transferjob(ns, victim)
            for child in p.create:
                self.kube.create(child)
            # At 0 from the first reconcile, so `increase()` sees the first missed run.
            self.metrics.schedule_missed.labels(ns, name).inc(p.missed)
            if p.interval_seconds:
                self.metrics.schedule_interval.labels(ns, name).set(p.interval_seconds)
            if p.last_success:
                self.metrics.schedule_last_success.labels(ns, name).set(p.last_success.timestamp())
            created = status.parse_time(meta.get("creationTimestamp"))
            if created is not None:
                self.metrics.schedule_created.labels(ns, name).set(created.timestamp())
            self.metrics.schedule_suspended.labels(ns, name).set(1 if spec.suspend else 0)
            conditions = status.set_condition(
                list((body.get("status") or {}).get("conditions") or []),
                "Accepted",
                True,
                "Valid",
                "",
                now,
                meta.get("generation"),
            )
            p.status["conditions"] = status.set_health(
                conditions, health(spec, p.status), now, meta.get("generation")
            )
            return p.status
