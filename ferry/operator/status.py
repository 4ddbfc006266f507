"""Compute a TransferJob's status from what exists in the cluster.

Pure: (spec, current status, the Job, its pods, the clock) -> a status patch.
Nothing is remembered between calls, so an operator restarted mid-transfer
computes the same status from the same cluster — the Job's conditions, the
pods' termination messages (the movers' final summaries) and the per-shard
progress the movers merge-patched into `status.progress.shards`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ferry.mover.errors import ErrorKind
from ferry.mover.options import PRESERVE_FLAGS
from ferry.mover.result import COUNTERS, wire_name
from ferry.operator import api, gitops

REASON_BY_EXIT_CODE = {k.exit_code: k.reason for k in ErrorKind}
TERMINAL_PHASES = ("Succeeded", "Failed")
# The summary's counters that add up over shards, as the termination messages spell them.
_RESULT_SUMS = tuple(wire_name(c) for c in COUNTERS)


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The part of the merge patch `new` that would change `old`; empty when applying it is a no-op.

    Reconciles recompute the whole status on every pass; writing it back
    unchanged costs an API request and a watch event per object per pass. Maps
    are compared key by key (a merge patch leaves keys it does not name, e.g. the
    movers' `progress.shards`), anything else as a whole; a None value deletes,
    so it equals an absent key.
    """
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = changes(before, value)
            if sub:
                out[key] = sub
        elif value != before:
            out[key] = value
    return out


def merged(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`old` with the JSON merge patch `patch` applied, as the API server applies it."""
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def overlay(seen: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The status as it is once our own last write has landed, whatever `seen` still shows.

    Only the operator writes status fields other than the movers'
    `progress.shards`, so its own last result is never older than a watched
    copy for those; `progress.shards` comes from `seen`. Reconciling from a
    copy that predates our last write would recompute, and rewrite, what we
    already wrote — or start a second trace.
    """
    out = merged(seen, {k: v for k, v in ours.items() if k != "progress"})
    progress = {k: v for k, v in (ours.get("progress") or {}).items() if k != "shards"}
    if progress:
        out["progress"] = merged(seen.get("progress") or {}, progress)
    return out


def human_rate(bps: float) -> str:
    units = ("B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s")
    value, unit = float(bps), 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {units[unit]}" if unit else f"{value:.0f} {units[0]}"


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Upsert a condition, keeping lastTransitionTime unless the status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    transition = old["lastTransitionTime"] if old and old.get("status") == value else iso(now)
    out.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message[:1024],
            "lastTransitionTime": transition,
            "observedGeneration": generation,
        }
    )
    return sorted(out, key=lambda c: c["type"])


# ---------------------------------------------------------------- health


@dataclass(frozen=True)
class Health:
    """The three conditions kstatus reads (sigs.k8s.io/cli-utils/pkg/kstatus), and so Flux,
    `kubectl wait` and Ferry's Argo CD check (docs/argocd/).

    kstatus: a status.observedGeneration other than metadata.generation is InProgress;
    then `Reconciling=True` is InProgress and `Stalled=True` is Failed (the first of the
    two in the list; never both True here); then `Ready=True` is Current, `Ready=False`
    InProgress. One reason and message for all three: the object's own.
    """

    ready: bool
    reconciling: bool
    is_stalled: bool
    reason: str
    message: str

    @classmethod
    def stalled(cls, reason: str, message: str) -> Health:
        """Failed, or unable to go on without someone's change: kstatus's Failed."""
        return cls(False, False, True, reason, message)

    @classmethod
    def working(cls, reason: str, message: str) -> Health:
        return cls(False, True, False, reason, message)

    @classmethod
    def done(cls, reason: str, message: str) -> Health:
        return cls(True, False, False, reason, message)


# Pending reasons that wait for someone to act (a pool to create or fix, RBAC to grant).
WAITING_ON_A_FIX = ("PoolNotFound", "PoolInvalid", "Forbidden")


def job_health(phase: str, reason: str, message: str) -> Health:
    """A TransferJob's health by phase: Succeeded is Ready, Failed is Stalled, a suspension
    that has stopped the movers is Ready (what was asked for is done, as kstatus reads a
    suspended Job: Current), anything else is Reconciling."""
    if phase == "Succeeded":
        return Health.done(reason, message or "the transfer finished")
    if phase == "Failed" or reason in WAITING_ON_A_FIX:
        return Health.stalled(reason, message)
    if phase == "Suspended" and reason == "Suspended":
        return Health.done(reason, message)
    return Health.working(reason, message)


def set_health(
    conditions: list[dict[str, Any]], health: Health, now: datetime, generation: int | None
) -> list[dict[str, Any]]:
    for type_, value in (
        ("Ready", health.ready),
        ("Reconciling", health.reconciling),
        ("Stalled", health.is_stalled),
    ):
        conditions = set_condition(
            conditions, type_, value, health.reason, health.message, now, generation
        )
    return conditions


# ---------------------------------------------------------------- pods


@dataclass(frozen=True)
class PodOutcome:
    """One finished mover pod: its shard, exit code and parsed termination message."""

    index: int
    name: str
    exit_code: int
    summary: dict[str, Any] | None
    finished_at: str
    #: The kubelet's word for how the container ended (`OOMKilled`, `Error`, ...).
    killed_by: str = ""


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return dict(term)
    return None


def _index(pod: dict[str, Any]) -> int:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    lab = (pod.get("metadata") or {}).get("labels") or {}
    raw = ann.get("batch.kubernetes.io/job-completion-index") or lab.get(
        "batch.kubernetes.io/job-completion-index", "0"
    )
    try:
        return int(raw)
    except ValueError:
        return 0


def outcomes(pods: list[dict[str, Any]]) -> list[PodOutcome]:
    out = []
    for pod in pods:
        term = _terminated(pod)
        if term is None:
            continue
        summary: dict[str, Any] | None = None
        try:
            parsed = json.loads(term.get("message") or "")
            if isinstance(parsed, dict) and "exitCode" in parsed:
                summary = parsed
        except ValueError:
            summary = None
        out.append(
            PodOutcome(
                index=_index(pod),
                name=pod["metadata"]["name"],
                exit_code=int(term.get("exitCode", -1)),
                summary=summary,
                finished_at=str(term.get("finishedAt") or ""),
                killed_by=str(term.get("reason") or ""),
            )
        )
    return out


def final_per_shard(found: list[PodOutcome]) -> dict[int, PodOutcome]:
    """Per shard, the successful pod if any, otherwise the latest failure."""
    best: dict[int, PodOutcome] = {}
    for o in sorted(found, key=lambda o: o.finished_at):
        cur = best.get(o.index)
        if cur is None or cur.exit_code != 0:
            best[o.index] = o
    return best


def failure_reason(found: list[PodOutcome]) -> tuple[str, str]:
    """(reason, message) of the latest failed pod, classified by the mover's own error kinds."""
    failed = [o for o in found if o.exit_code != 0]
    if not failed:
        return "Failed", "mover failed without a termination message"
    last = max(failed, key=lambda o: o.finished_at)
    if last.killed_by == "OOMKilled":
        # The kernel killed it: no summary was written, and the fix is the limit, not the data.
        return "OOMKilled", (
            f"shard {last.index} pod {last.name} was killed for exceeding its memory limit; "
            "raise spec.placement.resources.limits.memory (or the pool's)"
        )
    if last.summary:
        reason = str(
            last.summary.get("reason") or REASON_BY_EXIT_CODE.get(last.exit_code, "Failed")
        )
        message = str(last.summary.get("message") or "")
        errors = last.summary.get("errors") or []
        if not message and errors:
            message = str(errors[0].get("message", ""))
        return reason, message or f"shard {last.index} exited {last.exit_code}"
    reason = REASON_BY_EXIT_CODE.get(last.exit_code, "MoverCrashed")
    return reason, f"shard {last.index} pod {last.name} exited {last.exit_code}"


MAX_AUDIT_LOG_ERRORS = 20  # one per shard that could not keep its audit log, at most
AUDIT_LOG_ERROR_CHARS = 512


def result(found: list[PodOutcome], shards: int) -> dict[str, Any] | None:
    """Sum the final summary of every shard into `status.result`."""
    per_shard = final_per_shard(found)
    summaries = [o.summary for o in per_shard.values() if o.summary]
    if not summaries:
        return None
    out: dict[str, Any] = {k: sum(int(s.get(k) or 0) for s in summaries) for k in _RESULT_SUMS}
    elapsed = max(float(s.get("elapsedSeconds") or 0) for s in summaries)
    failing = [s for s in summaries if int(s.get("exitCode") or 0) != 0]
    head = failing[0] if failing else summaries[0]
    errors: list[dict[str, Any]] = []
    dropped: set[object] = set()
    audit_errors: list[str] = []  # a pod's word: strings only, bounded
    for s in summaries:
        errors.extend(s.get("errors") or [])
        why = s.get("auditLogError")
        if isinstance(why, str) and len(audit_errors) < MAX_AUDIT_LOG_ERRORS:
            audit_errors.append(why[:AUDIT_LOG_ERROR_CHARS])
        names = s.get("preserveDropped")
        if isinstance(names, list):
            dropped.update(n for n in names[: len(PRESERVE_FLAGS)] if isinstance(n, str))
    out |= {
        "reason": head.get("reason"),
        "exitCode": int(head.get("exitCode") or 0),
        "message": head.get("message"),
        "dryRun": any(bool(s.get("dryRun")) for s in summaries),
        "elapsedSeconds": round(elapsed, 3),
        "bytesPerSecond": round(out["bytesTransferred"] / elapsed) if elapsed > 0 else 0,
        "errors": errors[:20],
        # A pod's word, so only names the engine knows (the status schema allows no others).
        "preserveDropped": [f for f in PRESERVE_FLAGS if f in dropped],
        "shardsReported": len(summaries),
    }
    if audit_errors:
        out["auditLogErrors"] = audit_errors
    del shards
    return out


# ---------------------------------------------------------------- progress


def progress_totals(
    shard_map: dict[str, Any] | None, shards: int, succeeded: bool
) -> dict[str, Any]:
    """Totals across the per-shard entries the movers reported, plus printer-column strings."""
    entries = [api.ShardProgress.model_validate(v) for v in (shard_map or {}).values()]
    done = sum(e.bytes_done for e in entries)
    total = sum(e.bytes_total for e in entries)
    rate = sum(e.bytes_per_second for e in entries if not e.finished)
    out: dict[str, Any] = {
        "bytesDone": done,
        "bytesTotal": total,
        "filesDone": sum(e.files_done for e in entries),
        "filesTotal": sum(e.files_total for e in entries),
        "bytesPerSecond": rate,
        "rate": human_rate(rate),
    }
    scanned = len(entries) == shards and all(e.scan_complete for e in entries)
    out["etaSeconds"] = round((total - done) / rate, 1) if rate > 0 and scanned else None
    if succeeded:
        out["percent"] = "100%"
        out["etaSeconds"] = None
        out["rate"] = None
        out["bytesPerSecond"] = 0
    elif total > 0:
        out["percent"] = f"{min(99, int(100 * done / total))}%"
    else:
        out["percent"] = "0%"
    times = [t for t in (e.last_progress_time for e in entries) if t]
    if times:
        out["lastProgressTime"] = max(times)
    return out


# ---------------------------------------------------------------- phase


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def _running_pods(pods: list[dict[str, Any]]) -> int:
    return sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")


def compute(
    body: dict[str, Any],
    spec: api.TransferJobSpec,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """The status patch for a valid TransferJob given its Job and pods."""
    status = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    conditions = list(status.get("conditions") or [])
    shards = spec.shard_count()
    patch: dict[str, Any] = {"observedGeneration": generation}
    conditions = set_condition(conditions, "Accepted", True, "Valid", "", now, generation)

    found = outcomes(pods)
    res = result(found, shards)
    if res is not None:
        patch["result"] = res

    phase, reason, message = "Pending", "Waiting", "waiting for the mover to start"
    if spec.cancel:
        phase, reason, message = "Failed", "Cancelled", "cancelled by spec.cancel"
    elif job is not None:
        js = job.get("status") or {}
        complete = _job_condition(job, "Complete")
        failed = _job_condition(job, "Failed")
        if complete:
            phase, reason, message = "Succeeded", "Completed", ""
            if res and res.get("exitCode"):
                reason = str(res.get("reason") or "Completed")
        elif failed:
            phase = "Failed"
            if failed.get("reason") == "DeadlineExceeded":
                reason, message = "DeadlineExceeded", str(failed.get("message") or "")
            else:
                reason, message = failure_reason(found)
        elif spec.suspend and not js.get("active"):
            phase, reason, message = "Suspended", "Suspended", "suspended by spec.suspend"
        elif spec.suspend:
            phase, reason, message = "Suspended", "Suspending", "stopping the mover"
        elif js.get("active") and _running_pods(pods):
            phase, reason, message = "Running", "Transferring", ""
        elif js.get("failed"):
            reason, message = "Retrying", "mover failed; the Job is retrying with backoff"
        elif js.get("succeeded") or status.get("phase") == "Running":
            # Movers exited, the Job controller has not marked the Job Complete yet.
            phase, reason, message = "Running", "Finishing", ""
        patch["attempts"] = (
            int(js.get("failed") or 0) + int(js.get("succeeded") or 0) + int(js.get("active") or 0)
        )
        if js.get("startTime") and not status.get("startTime"):
            patch["startTime"] = js["startTime"]

    terminal = phase in TERMINAL_PHASES
    progress = progress_totals(
        (status.get("progress") or {}).get("shards"), shards, phase == "Succeeded"
    )
    patch["progress"] = progress
    patch["phase"] = phase
    patch["reason"] = reason
    patch["message"] = message
    if terminal and not status.get("completionTime"):
        patch["completionTime"] = iso(now)

    conditions = set_condition(
        conditions,
        "Running",
        phase == "Running",
        reason if phase == "Running" else phase,
        "",
        now,
        generation,
    )
    conditions = set_condition(
        conditions,
        "Complete",
        phase == "Succeeded",
        reason if phase == "Succeeded" else "NotComplete",
        "",
        now,
        generation,
    )
    conditions = set_condition(
        conditions,
        "Failed",
        phase == "Failed",
        reason if phase == "Failed" else "NotFailed",
        message if phase == "Failed" else "",
        now,
        generation,
    )
    conditions = set_condition(
        conditions,
        "Suspended",
        phase == "Suspended",
        "Suspended" if phase == "Suspended" else "NotSuspended",
        "",
        now,
        generation,
    )
    if res is not None:
        dropped = res["preserveDropped"]
        conditions = set_condition(
            conditions,
            "PreserveDropped",
            bool(dropped),
            "DestinationCannotHold" if dropped else "AllKept",
            f"not kept at the destination: {', '.join(dropped)}" if dropped else "",
            now,
            generation,
        )
    idle, idle_msg = _stalled(status, patch, spec, phase, now)
    state = Health.stalled("NoProgress", idle_msg) if idle else job_health(phase, reason, message)
    conditions = set_health(conditions, state, now, generation)
    patch["conditions"] = with_ttl_conflict(conditions, body["metadata"], spec, now, generation)
    return patch


def with_ttl_conflict(
    conditions: list[dict[str, Any]],
    meta: dict[str, Any],
    spec: api.TransferJobSpec,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """`TTLConflict` set while a TTL meets a GitOps tool's mark (`gitops`); once set, kept
    and turned False when that ends; never added to a TransferJob it never concerned."""
    ttl = gitops.ttl_conflict(meta, spec)
    if ttl is None and not any(c.get("type") == gitops.TTL_CONDITION for c in conditions):
        return conditions
    return set_condition(
        conditions,
        gitops.TTL_CONDITION,
        ttl is not None,
        gitops.TTL_REASON if ttl is not None else "NoConflict",
        ttl or "",
        now,
        generation,
    )


def _stalled(
    status: dict[str, Any],
    patch: dict[str, Any],
    spec: api.TransferJobSpec,
    phase: str,
    now: datetime,
) -> tuple[bool, str]:
    if phase != "Running":
        return False, ""
    last = parse_time(patch["progress"].get("lastProgressTime")) or parse_time(
        patch.get("startTime") or status.get("startTime")
    )
    if last is None:
        return False, ""
    idle = (now - last).total_seconds()
    if idle > spec.stall_timeout_seconds:
        return (
            True,
            f"no progress for {int(idle)}s (stallTimeoutSeconds={spec.stall_timeout_seconds})",
        )
    return False, ""


def invalid(
    body: dict[str, Any], field: str, message: str, reason: str, now: datetime
) -> dict[str, Any]:
    """Status for a spec the operator refuses: terminal until the spec changes."""
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    conditions = set_condition(
        list(status.get("conditions") or []),
        "Accepted",
        False,
        reason,
        f"{field}: {message}",
        now,
        generation,
    )
    conditions = set_condition(
        conditions, "Failed", True, reason, f"{field}: {message}", now, generation
    )
    conditions = set_health(
        conditions, Health.stalled(reason, f"{field}: {message}"), now, generation
    )
    return {
        "phase": "Failed",
        "reason": reason,
        "message": f"{field}: {message}",
        "observedGeneration": generation,
        "conditions": conditions,
        "completionTime": status.get("completionTime") or iso(now),
    }


def pydantic_field(exc: Exception) -> tuple[str, str]:
    """(dotted camelCase field path, message) of the first error of a pydantic ValidationError."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        errs = errors()
        if errs:
            loc = ".".join(str(p) for p in errs[0].get("loc", ()))
            return f"spec.{loc}" if loc else "spec", str(errs[0].get("msg", exc))
    return "spec", str(exc)
