"""Reconcile one TransferJob: validate, build or adopt its Job, and report status.

Every call starts from the cluster, never from memory: the Job is found by
its derived name and owner uid, pods by label, progress and results from the
objects themselves. That makes the same code path serve create, update,
operator resume (kopf runs resume handlers for every existing object on
start) and the periodic poll — and makes a retried or duplicated reconcile
harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from ferry.operator import api, gitops, moverspec, status, wirepair, workload
from ferry.operator.kube import Kube, server_message
from ferry.operator.metrics import Metrics
from ferry.operator.tracing import Tracer, trace_id_of, traceparent_of

log = logging.getLogger(__name__)

# Accepted=False reason when transfer-defining fields differ from the running Job's.
FIXED_FIELD_CHANGED = "FixedFieldChanged"


@dataclass
class Outcome:
    """What a reconcile decided: the status patch, and a warning worth an Event.

    `status` is the whole computed status; `changes` only what differs from the
    object's current status (what gets written: nothing when it is empty).
    """

    status: dict[str, Any]
    warning: tuple[str, str] | None = None
    deleted: bool = False
    created: list[str] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    #: The TransferJob no longer exists (its Job gone with it): nothing built, nothing written.
    gone: bool = False


def parse_spec(body: dict[str, Any]) -> api.TransferJobSpec:
    return api.TransferJobSpec.model_validate(body.get("spec") or {})


# Status reasons that wait for something no watched object announces: retried on a timer
# (a namespace's opt-in to cross-namespace transfers is an annotation nobody here watches).
RETRY_REASONS = ("Forbidden", wirepair.CROSS_NAMESPACE_REFUSED)
# Status reasons that wait for a MoverPool: retried when that pool changes.
POOL_REASONS = ("PoolNotFound", "PoolInvalid")
# filesFromConfigMap names what is not there: the mover pod waits for it to be created.
FILES_LIST_MISSING = "ConfigMapNotFound"
FILES_LIST_KEY_MISSING = "ConfigMapKeyNotFound"
_DEFAULT_STALL = api.TransferJobSpec.model_fields["stall_timeout_seconds"].default


def follows(body: dict[str, Any]) -> bool:
    """Whether this TransferJob needs a follower (a kopf daemon) at all.

    Not when nothing can change without an edit (edits have their own
    handler): a suspended Job with no mover left, or a finished TransferJob
    with no TTL to wait for. Those cost nothing at rest. Nor a new one created
    suspended: its create handler builds its Job suspended, and says Suspending
    (a follower then) only if a mover is somehow running. No follower means no
    daemon task and no finalizer: a burst of suspended ones is cheaper too.
    (Their Job deleted wakes no follower: the Job's event handler reconciles.)
    """
    st = body.get("status") or {}
    spec = body.get("spec") or {}
    if st.get("phase") in status.TERMINAL_PHASES:
        return spec.get("ttlSecondsAfterFinished") is not None
    if not st.get("phase"):
        return spec.get("suspend") is not True
    return not (st.get("phase") == "Suspended" and st.get("reason") == "Suspended")


def wake_after(body: dict[str, Any], now: datetime, resync: float, retry: float) -> float:
    """Seconds until time itself is a reason to reconcile: TTL, stall timeout, retry, resync.

    Everything else (the Job and pods changing, progress, edits) wakes the
    follower by an event; `resync` is the safety net for a missed one.
    """
    st = body.get("status") or {}
    spec = body.get("spec") or {}
    due = [resync]
    if st.get("phase") in status.TERMINAL_PHASES:
        done = status.parse_time(st.get("completionTime"))
        ttl = spec.get("ttlSecondsAfterFinished")
        if done is not None and isinstance(ttl, int):
            due.append((done - now).total_seconds() + ttl)
    elif st.get("reason") in RETRY_REASONS:
        due.append(retry)
    elif st.get("phase") == "Running":
        last = status.parse_time((st.get("progress") or {}).get("lastProgressTime")) or (
            status.parse_time(st.get("startTime"))
        )
        stall = spec.get("stallTimeoutSeconds", _DEFAULT_STALL)
        if last is not None and isinstance(stall, int):
            # Just past the moment the stall detector would say so (it needs idle > timeout);
            # once past, the reconcile that saw it has reported it.
            stall_due = (last - now).total_seconds() + stall + 1
            if stall_due > 0:
                due.append(stall_due)
    return max(0.0, min(due))


class TransferJobReconciler:
    def __init__(
        self, kube: Kube, settings: workload.MoverSettings, metrics: Metrics, tracer: Tracer
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer

    def reconcile(
        self,
        body: dict[str, Any],
        now: datetime | None = None,
        claim_uses: list[workload.ClaimUse] | None = None,
    ) -> Outcome:
        """`claim_uses`: the pods mounting this TransferJob's claims (from the operator's pod
        index), for RWO placement; only read when a Job is built."""
        now = now or status.now_utc()
        meta = body["metadata"]
        old = body.get("status") or {}
        attrs = {"k8s.namespace.name": meta["namespace"], "ferry.transferjob": meta["name"]}
        self.metrics.reconciles.labels("TransferJob").inc()
        with self.tracer.reconcile("reconcile TransferJob", old.get("traceParent"), attrs) as span:
            try:
                outcome = self._reconcile(body, now, traceparent_of(span), claim_uses or [])
            except ApiException as exc:
                if exc.status != 403:
                    raise
                # RBAC refused a call: say so in status and retry on the next poll (a raise
                # would only be retried by kopf's backoff, invisible on the object).
                self.metrics.reconcile_errors.labels("TransferJob").inc()
                st = _forbidden(body, server_message(exc), now)
                first = old.get("reason") != "Forbidden"
                outcome = Outcome(st, ("Forbidden", st["message"]) if first else None)
            if outcome.gone:
                return outcome
            if not old.get("traceID"):
                outcome.status["traceID"] = trace_id_of(span)
                outcome.status["traceParent"] = traceparent_of(span)
            span.set_attribute("ferry.phase", str(outcome.status.get("phase")))
        outcome.changes = status.changes(old, outcome.status)
        self._account(body, outcome.status, now)
        return outcome

    # ------------------------------------------------------------ steps

    def _reconcile(
        self,
        body: dict[str, Any],
        now: datetime,
        traceparent: str,
        claim_uses: list[workload.ClaimUse],
    ) -> Outcome:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        old = body.get("status") or {}
        job_name = workload.child_name(name)

        try:
            spec = parse_spec(body)
        except ValidationError as exc:
            where, msg = status.pydantic_field(exc)
            return Outcome(
                status.invalid(body, where, msg, "InvalidSpec", now),
                ("InvalidSpec", f"{where}: {msg}"),
            )

        if old.get("phase") in status.TERMINAL_PHASES:
            edited = old.get("observedGeneration") != meta.get("generation")
            # A refused spec built nothing: an edit may fix it, so it may start.
            if not (edited and api.editable(old)):
                return self._finished(body, spec, now)

        # Never reconciled (no status yet): its Job almost never exists (only if an operator
        # stopped between creating it and writing status), so create first and let a 409 adopt:
        # one read fewer per new TransferJob (~1 of 11 requests in a burst).
        first = not old and not spec.cancel
        job = None if first else self.kube.get_job(ns, job_name)
        if job is not None and not _owned_by(job, meta["uid"]):
            msg = f"Job {job_name} exists and is not owned by this TransferJob"
            return Outcome(
                status.invalid(body, "metadata.name", msg, "NameConflict", now),
                ("NameConflict", msg),
            )

        changed = workload.changed_fields(job, spec) if job is not None else []
        if spec.cancel:
            wirepair.stop_receiver(self.kube, ns, job)
            if job is not None:
                self.kube.delete_job(ns, job_name)
            cancelled = Outcome(status.compute(body, spec, None, [], now))
            return _unless_changed(body, cancelled, changed, now)

        created: list[str] = []
        if job is None and not first and not self._exists(body):
            # Deleted, and the garbage collector took its Job before this reconcile (woken by
            # that Job's deletion, say) saw the DELETED event: build nothing for a dead owner.
            return Outcome({}, gone=True)
        if job is None:
            try:
                built = self._build(body, spec, traceparent, claim_uses)
            except moverspec.InvalidSpec as exc:
                return Outcome(
                    status.invalid(body, exc.field, str(exc).split(": ", 1)[-1], exc.reason, now),
                    (exc.reason, str(exc)),
                )
            except PoolUnusable as exc:  # pool missing or invalid: wait for it to be fixed
                return Outcome(_pending(body, exc.reason, str(exc), now), (exc.reason, str(exc)))
            except CrossNamespaceRefused as exc:  # wait for the namespaces to opt in
                reason = wirepair.CROSS_NAMESPACE_REFUSED
                first = old.get("reason") != reason
                return Outcome(
                    _pending(body, reason, str(exc), now), (reason, str(exc)) if first else None
                )
            for obj in built.objects():
                kind, child = obj["kind"], obj["metadata"]["name"]
                if self.kube.create(obj):
                    created.append(f"{kind}/{child}")
                    continue
                # 409: ours from an earlier reconcile, or someone else's that must not be used
                # (a foreign ConfigMap would be the mover's spec, a foreign Role its rights).
                where = obj["metadata"].get("namespace") or ns
                existing = (
                    wirepair.adopt_secret(built, obj)  # never read: users' Secrets stay unread
                    if kind == "Secret"
                    else self.kube.read(kind, where, child)
                )
                if existing is not None and not wirepair.owns(existing, body):
                    msg = f"{kind} {child} exists and is not owned by this TransferJob"
                    return Outcome(
                        status.invalid(body, "metadata.name", msg, "NameConflict", now),
                        ("NameConflict", msg),
                        created=created,
                    )
            # Created just now: it has no status and no pod yet (their events wake the follower).
            # Adopted: read what is there.
            fresh = f"Job/{job_name}" in created
            job = built.job if fresh else (self.kube.get_job(ns, job_name) or built.job)
            if not fresh:  # adopted: what the earlier reconcile built may predate an edit
                changed = workload.changed_fields(job, spec)
        if f"Job/{job_name}" not in created and (drift := _job_drift(job, spec)):
            self.kube.patch_job(ns, job_name, {"spec": drift})
            job = self.kube.get_job(ns, job_name) or job

        pods = (
            []
            if f"Job/{job_name}" in created
            else self.kube.list_pods(ns, f"{workload.LABEL_TRANSFERJOB}={name}")
        )
        new = status.compute(body, spec, job, pods, now)
        if new["phase"] == "Pending" and (missing := self._missing_files_list(ns, spec)):
            new |= _pending(body, missing[0], missing[1], now)
        new["jobName"] = job_name
        if (audit := moverspec.audit_log_where(spec, job_name)) is not None:
            new["auditLog"] = audit
        if new["phase"] in status.TERMINAL_PHASES:
            wirepair.stop_receiver(self.kube, ns, job)
        warning = None
        if new["phase"] == "Failed" and old.get("phase") != "Failed":
            warning = (str(new["reason"]), str(new.get("message") or ""))
        elif ttl := _newly_true(old, new, gitops.TTL_CONDITION):
            warning = (gitops.TTL_CONDITION, ttl)
        return _unless_changed(body, Outcome(new, warning, created=created), changed, now)

    def _missing_files_list(self, ns: str, spec: api.TransferJobSpec) -> tuple[str, str] | None:
        """(reason, message) when filesFromConfigMap names a ConfigMap or key that is not
        there: the mover pod cannot mount it and waits, so the TransferJob says which."""
        ref = spec.files_from_config_map
        if ref is None:
            return None
        cm = self.kube.read("ConfigMap", ns, ref.name)
        if cm is None:
            return FILES_LIST_MISSING, (
                f"spec.filesFromConfigMap: ConfigMap {ref.name} not found in namespace {ns} "
                "(the mover pod starts once it exists)"
            )
        if ref.key not in (cm.get("data") or {}) and ref.key not in (cm.get("binaryData") or {}):
            return FILES_LIST_KEY_MISSING, (
                f"spec.filesFromConfigMap: ConfigMap {ref.name} has no key {ref.key} "
                "(the mover pod starts once it does)"
            )
        return None

    def _exists(self, body: dict[str, Any]) -> bool:
        """Whether this very TransferJob (same uid) still exists: read before rebuilding a Job
        that went missing (the follower holds no finalizer that would keep it)."""
        meta = body["metadata"]
        live = self.kube.get_transferjob(meta["namespace"], meta["name"])
        return live is not None and (live.get("metadata") or {}).get("uid") == meta.get("uid")

    def _build(
        self,
        body: dict[str, Any],
        spec: api.TransferJobSpec,
        traceparent: str,
        claim_uses: list[workload.ClaimUse],
    ) -> workload.Workload:
        ns = body["metadata"]["namespace"]
        pool = None
        if spec.placement and spec.placement.pool:
            raw = self.kube.get_pool(spec.placement.pool)
            if raw is None:
                raise PoolUnusable("PoolNotFound", f"MoverPool {spec.placement.pool!r} not found")
            try:
                pool = api.MoverPoolSpec.model_validate(raw.get("spec") or {})
            except ValueError as exc:
                where, msg = status.pydantic_field(exc)
                raise PoolUnusable(
                    "PoolInvalid", f"MoverPool {spec.placement.pool!r}: {where}: {msg}"
                ) from None
        annotations = self.kube.namespace_annotations(ns)
        privileged_ok = annotations.get(workload.NAMESPACE_PRIVILEGED_ANNOTATION) == "true"
        dst_ns = spec.destination_namespace(ns)
        dst_privileged = None
        if dst_ns is not None:
            dst_annotations = self.kube.namespace_annotations(dst_ns)
            why = wirepair.cross_namespace_refusal(ns, dst_ns, annotations, dst_annotations)
            if why:
                raise CrossNamespaceRefused(why)
            flag = dst_annotations.get(workload.NAMESPACE_PRIVILEGED_ANNOTATION)
            dst_privileged = flag == "true"
        pin = pair = None
        claim_names = workload.claims(spec)
        if claim_names:
            own = workload.child_name(body["metadata"]["name"])
            if dst_ns is not None:  # only the source claim is here: the sender mounts it
                assert spec.source.pvc is not None  # api: a pvc source
                source = [spec.source.pvc.claim_name]
                pvcs = self.kube.get_pvcs(ns, source)
                node = workload.rwo_pin(source, pvcs, claim_uses, own)
                pair = wirepair.Pair(source_node=node, destination_node=None)
            else:
                pvcs = self.kube.get_pvcs(ns, claim_names)
                pin = workload.rwo_pin(claim_names, pvcs, claim_uses, own)
                pair = wirepair.plan(spec, pvcs, claim_uses, own, lambda pv: self.kube.get_pv(pv))
        ctx = workload.Context(
            namespace_privileged=privileged_ok, pool=pool, pin_node=pin, traceparent=traceparent
        )
        if pair is not None:  # claims on two nodes or namespaces: a pair over the wire
            return wirepair.build(self.kube, body, spec, ctx, self.settings, pair, dst_privileged)
        return workload.build(body, spec, ctx, self.settings)

    def _finished(self, body: dict[str, Any], spec: api.TransferJobSpec, now: datetime) -> Outcome:
        """A terminal job only ages out: ttlSecondsAfterFinished deletes the TransferJob."""
        old = dict(body.get("status") or {})
        done = status.parse_time(old.get("completionTime"))
        ttl = spec.ttl_seconds_after_finished
        if ttl is not None and done is not None and (now - done).total_seconds() >= ttl:
            self.kube.delete_transferjob(body["metadata"]["namespace"], body["metadata"]["name"])
            return Outcome({}, deleted=True)
        outcome = Outcome({"observedGeneration": body["metadata"].get("generation")})
        if old.get("observedGeneration") == body["metadata"].get("generation"):
            return outcome
        # Edited after the end: claim the generation unless it changed what the Job ran.
        job = self.kube.get_job(
            body["metadata"]["namespace"], workload.child_name(body["metadata"]["name"])
        )
        owned = job is not None and _owned_by(job, body["metadata"]["uid"])
        changed = workload.changed_fields(job, spec) if job is not None and owned else []
        if not changed:
            # The conditions still hold for the new generation (only mutable fields changed);
            # say so, and look at the TTL again: the edit may have added or removed one.
            generation = body["metadata"].get("generation")
            conditions = [
                {**c, "observedGeneration": generation} for c in old.get("conditions") or []
            ]
            outcome.status["conditions"] = status.with_ttl_conflict(
                conditions, body["metadata"], spec, now, generation
            )
            if ttl_msg := _newly_true(old, outcome.status, gitops.TTL_CONDITION):
                outcome.warning = (gitops.TTL_CONDITION, ttl_msg)
        return _unless_changed(body, outcome, changed, now)

    def _account(self, body: dict[str, Any], new: dict[str, Any], now: datetime) -> None:
        seen = body.get("status") or {}
        old_phase = seen.get("phase")
        phase = new.get("phase") or old_phase
        uid = body["metadata"]["uid"]
        conditions = new.get("conditions") or seen.get("conditions") or []
        stalled = any(  # no progress for stallTimeoutSeconds (a failure is Stalled too)
            c.get("type") == "Stalled"
            and c.get("status") == "True"
            and c.get("reason") == "NoProgress"
            for c in conditions
        )
        self.metrics.observe_phase(uid, phase, stalled)
        if old_phase in status.TERMINAL_PHASES:
            return  # counted when it finished (or before this operator started)
        self.metrics.observe_progress(uid, (seen.get("progress") or {}).get("shards"))
        if phase in status.TERMINAL_PHASES:
            start = status.parse_time(new.get("startTime") or seen.get("startTime"))
            seconds = (now - start).total_seconds() if start else None
            self.metrics.finished(str(phase), new.get("reason"), new.get("result"), seconds, uid)


class CrossNamespaceRefused(PermissionError):
    """A namespace has not opted in to the cross-namespace transfer; the message names
    the annotation that would allow it."""


class PoolUnusable(LookupError):
    """The referenced MoverPool is missing or invalid; `reason` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _job_drift(job: dict[str, Any], spec: api.TransferJobSpec) -> dict[str, Any]:
    """The Job spec fields that follow mutable TransferJob fields, where they differ."""
    js = job.get("spec") or {}
    drift: dict[str, Any] = {}
    if bool(js.get("suspend")) != spec.suspend:
        drift["suspend"] = spec.suspend
    if js.get("activeDeadlineSeconds") != spec.active_deadline_seconds:
        drift["activeDeadlineSeconds"] = spec.active_deadline_seconds  # None removes it
    return drift


def _unless_changed(
    body: dict[str, Any], outcome: Outcome, changed: list[str], now: datetime
) -> Outcome:
    """Keep `outcome` from claiming a generation whose transfer-defining fields were not applied.

    The CRD's CEL rules refuse such edits; this holds where they did not run
    (a CRD older than the operator, or an edit racing the first Job creation
    of a spec that was refused before). The run goes on with the spec it was
    built from; status reports it under the generation it last acted on and
    says, in the Accepted condition, which fields were not applied.
    """
    if not changed:
        return outcome
    old = body.get("status") or {}
    generation = body["metadata"].get("generation")
    seen = old.get("observedGeneration")
    new = dict(outcome.status)
    new.pop("observedGeneration", None)
    if seen is not None:
        new["observedGeneration"] = seen
    fields = ", ".join(f"spec.{f}" for f in changed)
    message = (
        f"{fields} changed after the run started and is not applied; "
        "create a new TransferJob to change it"
    )
    conditions = [
        {**c, "observedGeneration": seen}
        for c in new.get("conditions") or old.get("conditions") or []
    ]
    new["conditions"] = status.set_condition(
        conditions, "Accepted", False, FIXED_FIELD_CHANGED, message, now, generation
    )
    accepted = (c for c in old.get("conditions") or [] if c.get("type") == "Accepted")
    before: dict[str, Any] = next(accepted, {})
    warning = outcome.warning
    if before.get("reason") != FIXED_FIELD_CHANGED or before.get("message") != message:
        warning = (FIXED_FIELD_CHANGED, message)
    return Outcome(new, warning, outcome.deleted, outcome.created)


def _newly_true(old: dict[str, Any], new: dict[str, Any], type_: str) -> str | None:
    """The message of condition `type_` if `new` has it True and `old` did not; else None."""

    def true(st: dict[str, Any]) -> dict[str, Any] | None:
        found = (c for c in st.get("conditions") or [] if c.get("type") == type_)
        c = next(found, None)
        return c if c is not None and c.get("status") == "True" else None

    now = true(new)
    if now is None or true(old) is not None:
        return None
    return str(now.get("message") or "")


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


def _pending(body: dict[str, Any], reason: str, message: str, now: datetime) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    conditions = status.set_condition(
        list((body.get("status") or {}).get("conditions") or []),
        "Accepted",
        False,
        reason,
        message,
        now,
        generation,
    )
    conditions = status.set_health(
        conditions, status.Health.stalled(reason, message), now, generation
    )
    return {
        "phase": "Pending",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "conditions": conditions,
    }


def _forbidden(body: dict[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """Status while the operator's RBAC refuses a call it needs: the phase stays, the poll retries."""
    old = body.get("status") or {}
    ns = body["metadata"]["namespace"]
    text = f"the operator's RBAC refused a call in namespace {ns}: {message}"
    conditions = status.set_condition(
        list(old.get("conditions") or []),
        "Accepted",
        False,
        "Forbidden",
        text,
        now,
        body["metadata"].get("generation"),
    )
    conditions = status.set_health(
        conditions,
        status.Health.stalled("Forbidden", text),
        now,
        body["metadata"].get("generation"),
    )
    return {
        "phase": old.get("phase") or "Pending",
        "reason": "Forbidden",
        "message": text,
        "conditions": conditions,
    }
