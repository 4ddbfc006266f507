"""kopf wiring: which events call which reconciler, and the operator-wide settings.

Kept apart from the reconcilers so those stay plain, testable classes. A
TransferJob is reconciled on create, spec update and resume, and then by its
follower: a kopf daemon, one per unfinished TransferJob, woken by the watch
events of its own Job and mover pods (and of itself: the movers' progress),
by time where time is the trigger (TTL, the stall timeout, a retry) and by a
slow resync as the safety net for a missed event. Suspended and finished
TransferJobs have no follower: they cost nothing at rest. All reconciles of
one TransferJob are serialised and run in one bounded thread pool.

TransferSchedules keep a timer: time is what fires them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf

from ferry.operator import api, pools, status, wirepair, workload
from ferry.operator.kube import Kube, Stopping
from ferry.operator.metrics import Metrics
from ferry.operator.schedule import ScheduleReconciler
from ferry.operator.transferjob import (
    POOL_REASONS,
    Outcome,
    TransferJobReconciler,
    follows,
    wake_after,
)
from ferry.operator.wakeups import Key, Signal, Wakeups, owner_key

log = logging.getLogger(__name__)

KOPF_PREFIX = "ferry.dev"


def plain(obj: Any) -> Any:
    """Deep-copy kopf's body views into plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


@dataclass
class WatchHealth:
    """When a watch event was last seen, for the liveness probe.

    Watch streams have died silently in the field. kopf re-lists on every
    (server-side) watch timeout, which replays an event per existing object,
    so while objects exist an event must arrive at least once per timeout.
    """

    stale_after: float
    clock: Any = time.monotonic
    last_event: float = field(default=0.0)
    objects: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.last_event = self.clock()

    def seen(self, uid: str, deleted: bool) -> None:
        with self.lock:
            self.last_event = self.clock()
            if deleted:
                self.objects.discard(uid)
            else:
                self.objects.add(uid)

    def check(self) -> dict[str, Any]:
        with self.lock:
            age = self.clock() - self.last_event
            if self.objects and age > self.stale_after:
                raise RuntimeError(
                    f"no watch event for {age:.0f}s with {len(self.objects)} objects watched"
                )
            return {"lastEventAgeSeconds": round(age, 1), "objects": len(self.objects)}


@dataclass
class Deps:
    kube: Kube
    transferjobs: TransferJobReconciler
    schedules: ScheduleReconciler
    metrics: Metrics
    health: WatchHealth
    poll_interval: float  # TransferSchedules' timer
    watch_timeout: int
    resync_interval: float = 300.0
    retry_interval: float = 10.0
    workers: int = 8
    executor: ThreadPoolExecutor = field(init=False)
    wakeups: Wakeups = field(default_factory=Wakeups)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="reconcile")


T = TypeVar("T")
Logger = logging.Logger | logging.LoggerAdapter[Any]


async def _in_pool(deps: Deps, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(
        deps.executor, functools.partial(fn, *args)
    )


def _apply(patch: kopf.Patch, old: Any, new_status: dict[str, Any]) -> None:
    """Patch only what differs from the object's current status (nothing if nothing does)."""
    diff = status.changes(plain(old or {}), new_status)
    if diff:
        patch.setdefault("status", {}).update(diff)


def _key(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return str(meta["namespace"]), str(meta["name"])


def _inputs(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What of a TransferJob itself a reconcile reads: an event changing none of it (e.g. our
    own status write coming back) needs no reconcile."""
    meta = obj.get("metadata") or {}
    st = obj.get("status") or {}
    return (
        meta.get("generation"),
        meta.get("deletionTimestamp"),
        (st.get("progress") or {}).get("shards"),
    )


def _claims(obj: dict[str, Any]) -> list[str]:
    """The TransferJob's claims in its own namespace (the pod index is by namespace)."""
    spec = obj.get("spec") or {}
    out = []
    for end in ("source", "destination"):
        pvc = (spec.get(end) or {}).get("pvc") or {}
        claim = pvc.get("claimName")
        if claim and pvc.get("namespace") in (None, (obj.get("metadata") or {}).get("namespace")):
            out.append(str(claim))
    return out


def foreign_namespace(obj: Mapping[str, Any]) -> str | None:
    """The destination claim's namespace when it is not the TransferJob's."""
    ns = (((obj.get("spec") or {}).get("destination") or {}).get("pvc") or {}).get("namespace")
    own = (obj.get("metadata") or {}).get("namespace")
    return str(ns) if ns and ns != own else None


def _no_finalizer(registry: kopf.OperatorRegistry, handler_id: str) -> None:
    """Let the daemon `handler_id` run without a finalizer on its object.

    kopf gives every daemon a finalizer so it can stop the daemon before the object
    goes. The follower needs none: it ends itself on its TransferJob's DELETED event
    (`Wakeups.forget`), and the children go by owner reference. A finalizer would cost
    a PATCH before the first reconcile (kopf runs no handler in the cycle that adds it),
    another to remove it, and a blocked deletion; kopf offers no flag for it.
    """
    spawning = registry._spawning
    found = [h for h in spawning._handlers if h.id == handler_id]
    if len(found) != 1:
        raise RuntimeError(f"kopf registry: expected one daemon {handler_id!r}, found {found}")
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if h.id == handler_id else h
        for h in spawning._handlers
    ]


def register(registry: kopf.OperatorRegistry, deps: Deps) -> None:
    G, V = api.GROUP, api.VERSION
    TJ, TS, MP = (
        api.TransferJobKind.plural,
        api.TransferScheduleKind.plural,
        api.MoverPoolKind.plural,
    )
    ours = {workload.LABEL_MANAGED_BY: workload.MANAGED_BY}

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
        settings.posting.level = logging.WARNING
        settings.peering.standalone = True
        settings.watching.server_timeout = deps.watch_timeout
        settings.watching.client_timeout = deps.watch_timeout + 30
        settings.watching.connect_timeout = 30
        # One pool for kopf's sync handlers and the followers' reconciles.
        settings.execution.executor = deps.executor
        # A timer (schedules) still running when its object is deleted: look again every
        # second, not kopf's default minute, before releasing the finalizer.
        settings.background.cancellation_polling = 1.0
        # On exit, give the per-object queues no time to start more work.
        settings.queueing.exit_timeout = 0.5

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """A custom registry gets no default login: use the client's in-cluster or kubeconfig auth."""
        return kopf.login_via_client(**kwargs)

    # ------------------------------------------------------------ pods by claim (RWO placement)

    @kopf.index("", "v1", "pods", registry=registry, id="pod_claims")
    def pod_claims(body: kopf.Body, namespace: str | None, **_: Any) -> dict[Any, Any]:
        """(namespace, claim) -> where a running pod mounts it; read when a Job is built."""
        return {(namespace, u.claim): u for u in workload.claim_uses(plain(body))}

    # ------------------------------------------------------------ TransferJob

    async def reconcile_tj(
        body: Mapping[str, Any], logger: Logger, write: bool, claims_index: Mapping[Any, Any]
    ) -> Outcome | None:
        """Reconcile one TransferJob (serialised per object); with `write`, patch its status here
        (a follower has no kopf patch), else the caller hands `changes` to kopf."""
        obj = plain(body)
        key = _key(obj)
        uid = str(obj["metadata"].get("uid"))
        sig = deps.wakeups.signal(key)
        async with sig.lock:
            sig.children = False  # read now: an event from here on means read again
            if sig.last is not None and sig.last[0] == uid:
                obj["status"] = status.overlay(obj.get("status") or {}, sig.last[1])
            uses = [
                use for claim in _claims(obj) for use in list(claims_index.get((key[0], claim), ()))
            ]
            try:
                outcome = await _in_pool(deps, _reconcile_and_write, obj, write, uses)
            except Stopping:
                logger.info("operator stopping: left for the next operator process")
                return None
            except Exception:
                sig.last = None  # whatever was written, the watched copy is the truth again
                deps.metrics.reconcile_errors.labels("TransferJob").inc()
                raise
            sig.last = (
                None
                if outcome.deleted or outcome.gone
                else (uid, status.merged(obj.get("status") or {}, outcome.changes))
            )
        if outcome.gone:
            return outcome
        pool = ((obj.get("spec") or {}).get("placement") or {}).get("pool")
        sig.pool = str(pool) if pool and outcome.status.get("reason") in POOL_REASONS else None
        if outcome.deleted:
            deps.metrics.observe_phase(obj["metadata"]["uid"], None)
            logger.info("deleted: ttlSecondsAfterFinished passed")
            return outcome
        if outcome.warning:
            kopf.warn(kopf.Body(obj), reason=outcome.warning[0], message=outcome.warning[1][:1024])
        for what in outcome.created:
            logger.info("created %s", what)
        if outcome.changes.get("phase"):
            logger.info(
                "phase %s (%s)", outcome.changes["phase"], outcome.status.get("reason") or ""
            )
        return outcome

    def _reconcile_and_write(
        obj: dict[str, Any], write: bool, uses: list[workload.ClaimUse]
    ) -> Outcome:
        outcome = deps.transferjobs.reconcile(obj, claim_uses=uses)
        if write and outcome.changes and not outcome.deleted:
            ns, name = _key(obj)
            deps.kube.patch_status(ns, name, outcome.changes)
        return outcome

    @kopf.on.resume(G, V, TJ, registry=registry)
    @kopf.on.create(G, V, TJ, registry=registry)
    @kopf.on.update(G, V, TJ, field="spec", registry=registry)
    async def tj_changed(body: kopf.Body, patch: kopf.Patch, logger: Logger, **kw: Any) -> None:
        outcome = await reconcile_tj(body, logger, False, kw["pod_claims"])
        if outcome is not None and not outcome.deleted and outcome.changes:
            patch.setdefault("status", {}).update(outcome.changes)

    # Objects in another namespace carry no owner reference: deleted here, behind a
    # finalizer kopf puts only on TransferJobs that have some (the `when` filter).
    @kopf.on.delete(
        G, V, TJ, registry=registry, when=lambda body, **_: foreign_namespace(body) is not None
    )
    async def tj_deleted(body: kopf.Body, logger: Logger, **_: Any) -> None:
        ns, uid = foreign_namespace(body), str(body["metadata"]["uid"])
        assert ns is not None
        await _in_pool(deps, wirepair.remove_foreign, deps.kube, ns, uid)
        logger.info("deleted its receiver's objects in namespace %s", ns)

    @kopf.daemon(
        G,
        V,
        TJ,
        registry=registry,
        id="follow",
        # Cancel at once when the object goes or the operator stops: a reconcile still running
        # in the pool finishes on its own; nothing waits for it.
        cancellation_timeout=1.0,
        when=lambda body, **_: follows(plain(body)),
    )
    async def tj_follow(body: kopf.Body, logger: Logger, **kwargs: Any) -> None:
        """Reconcile on each wake: a child's event, a change of the object's own inputs, a
        deadline, or the resync."""
        sig = deps.wakeups.signal(_key(body))
        sig.following = True
        try:
            await _follow(body, logger, sig, kwargs["pod_claims"])
        finally:
            sig.following = False

    async def _follow(
        body: kopf.Body, logger: Logger, sig: Signal, claims_index: Mapping[Any, Any]
    ) -> None:
        seen = _inputs(plain(body))
        timed = False
        while True:
            delay = wake_after(
                plain(body), status.now_utc(), deps.resync_interval, deps.retry_interval
            )
            if timed and delay <= 0:  # overdue again right after acting on it: retry, not spin
                delay = deps.retry_interval
            try:
                await asyncio.wait_for(sig.event.wait(), timeout=delay)
                timed = False
            except TimeoutError:
                timed = True
            sig.event.clear()
            if sig.gone:
                return  # the TransferJob was deleted (kopf stops no follower without a finalizer)
            now_seen = _inputs(plain(body))
            if not (timed or sig.children or now_seen != seen):
                continue  # e.g. our own status write coming back
            seen = now_seen
            try:
                outcome = await reconcile_tj(body, logger, True, claims_index)
                if outcome is not None and outcome.gone:
                    return  # deleted, its DELETED event not seen yet (or missed)
            except Exception as exc:  # an API error: read everything again after a pause
                logger.warning("reconcile failed, retrying in %gs: %s", deps.retry_interval, exc)
                sig.children = True
                await asyncio.sleep(deps.retry_interval)
                sig.event.set()

    _no_finalizer(registry, "follow")

    # ------------------------------------------------------------ children: wake the owner

    @kopf.on.event("batch", "v1", "jobs", labels=ours, registry=registry, id="wake-by-job")
    async def job_event(event: kopf.RawEvent, **kw: Any) -> None:
        key = owner_key(event.get("object") or {})
        if key is None:
            return
        sig = deps.wakeups.child_changed(key)
        if sig is not None and not sig.following and event.get("type") == "DELETED":
            # No follower (suspended, finished): nobody else would put its Job back.
            await reconcile_unfollowed(key, kw["pod_claims"])

    async def reconcile_unfollowed(key: Key, claims_index: Mapping[Any, Any]) -> None:
        """Reconcile a TransferJob that has no follower, read afresh (this event is its Job's)."""
        ns, name = key
        logger = logging.LoggerAdapter(
            logging.getLogger("kopf.objects"), {"k8s_ref": {"namespace": ns, "name": name}}
        )
        for attempt in range(3):
            try:
                body = await _in_pool(deps, deps.kube.get_transferjob, ns, name)
                if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                    return  # gone or going: its children go with it
                await reconcile_tj(body, logger, True, claims_index)
                return
            except Exception as exc:  # an API error: the next attempt reads everything again
                logger.warning("reconcile failed (attempt %d of 3): %s", attempt + 1, exc)
                await asyncio.sleep(deps.retry_interval)

    @kopf.on.event("", "v1", "pods", labels=ours, registry=registry, id="wake-by-pod")
    async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
        key = owner_key(event.get("object") or {})
        if key is not None:
            deps.wakeups.child_changed(key)

    # ------------------------------------------------------------ TransferSchedule

    def reconcile_ts(body: kopf.Body, patch: kopf.Patch) -> None:
        try:
            _apply(patch, body.get("status"), deps.schedules.reconcile(plain(body)))
        except Stopping:
            return
        except Exception:
            deps.metrics.reconcile_errors.labels("TransferSchedule").inc()
            raise

    @kopf.on.resume(G, V, TS, registry=registry)
    @kopf.on.create(G, V, TS, registry=registry)
    @kopf.on.update(G, V, TS, field="spec", registry=registry)
    def ts_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile_ts(body, patch)

    @kopf.timer(
        G, V, TS, interval=deps.poll_interval, initial_delay=deps.poll_interval, registry=registry
    )
    def ts_poll(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile_ts(body, patch)

    @kopf.on.delete(G, V, TS, optional=True, registry=registry)
    def ts_deleted(meta: kopf.Meta, **_: Any) -> None:
        deps.metrics.forget_schedule(str(meta["namespace"]), str(meta["name"]))

    # ------------------------------------------------------------ MoverPool

    @kopf.on.resume(G, V, MP, registry=registry)
    @kopf.on.create(G, V, MP, registry=registry)
    @kopf.on.update(G, V, MP, field="spec", registry=registry)
    def pool_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        _apply(patch, body.get("status"), pools.reconcile(plain(body)))

    # ------------------------------------------------------------ health, and own-object wakes

    for plural in (TJ, TS, MP):

        @kopf.on.event(G, V, plural, registry=registry, id=f"watch-{plural}")
        async def seen(event: kopf.RawEvent, **_: Any) -> None:
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            uid = str(meta.get("uid", ""))
            deleted = event.get("type") == "DELETED"
            deps.health.seen(uid, deleted)
            kind = obj.get("kind")
            if kind == api.TransferJobKind.kind and meta.get("namespace"):
                key = (str(meta["namespace"]), str(meta.get("name")))
                if deleted:
                    deps.metrics.observe_phase(uid, None)
                    deps.wakeups.forget(key)
                else:
                    deps.wakeups.object_changed(key)
            elif kind == api.MoverPoolKind.kind and not deleted:
                deps.wakeups.pool_changed(str(meta.get("name")))

    @kopf.on.probe(id="watch", registry=registry)
    async def watch_probe(**_: Any) -> dict[str, Any]:
        """On the loop, never queued behind reconciles waiting for a pool thread: a busy
        operator must not look dead to its liveness probe."""
        return deps.health.check()
