"""kopf wiring: which events call which reconciler, and the operator-wide settings.

Kept apart from the reconcilers so those stay plain, testable classes. All
handlers are idempotent reconciles registered on create, update (spec only),
resume, and a periodic timer; the timer is what follows a running Job, so a
missed watch event costs at most one poll interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from ferry.operator import api, pools, status
from ferry.operator.metrics import Metrics
from ferry.operator.schedule import ScheduleReconciler
from ferry.operator.transferjob import TransferJobReconciler, needs_polling

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
    transferjobs: TransferJobReconciler
    schedules: ScheduleReconciler
    metrics: Metrics
    health: WatchHealth
    poll_interval: float
    watch_timeout: int


def _apply(patch: kopf.Patch, old: Any, new_status: dict[str, Any]) -> None:
    """Patch only what differs from the object's current status (nothing if nothing does)."""
    diff = status.changes(plain(old or {}), new_status)
    if diff:
        patch.setdefault("status", {}).update(diff)


def register(registry: kopf.OperatorRegistry, deps: Deps) -> None:
    G, V = api.GROUP, api.VERSION
    TJ, TS, MP = (
        api.TransferJobKind.plural,
        api.TransferScheduleKind.plural,
        api.MoverPoolKind.plural,
    )

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
        settings.execution.max_workers = 8

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """A custom registry gets no default login: use the client's in-cluster or kubeconfig auth."""
        return kopf.login_via_client(**kwargs)

    # ------------------------------------------------------------ TransferJob

    def reconcile_tj(body: kopf.Body, patch: kopf.Patch) -> None:
        obj = plain(body)
        try:
            outcome = deps.transferjobs.reconcile(obj)
        except Exception:
            deps.metrics.reconcile_errors.labels("TransferJob").inc()
            raise
        if outcome.deleted:
            deps.metrics.observe_phase(obj["metadata"]["uid"], None)
            return
        _apply(patch, obj.get("status"), outcome.changes)
        if outcome.warning:
            kopf.warn(body, reason=outcome.warning[0], message=outcome.warning[1][:1024])
        for what in outcome.created:
            log.info(
                "created %s for %s/%s", what, obj["metadata"]["namespace"], obj["metadata"]["name"]
            )

    @kopf.on.resume(G, V, TJ, registry=registry)
    @kopf.on.create(G, V, TJ, registry=registry)
    @kopf.on.update(G, V, TJ, field="spec", registry=registry)
    def tj_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile_tj(body, patch)

    @kopf.timer(
        G,
        V,
        TJ,
        interval=deps.poll_interval,
        initial_delay=deps.poll_interval,
        registry=registry,
        when=lambda body, **_: needs_polling(plain(body)),
    )
    def tj_poll(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile_tj(body, patch)

    # ------------------------------------------------------------ TransferSchedule

    def reconcile_ts(body: kopf.Body, patch: kopf.Patch) -> None:
        try:
            _apply(patch, body.get("status"), deps.schedules.reconcile(plain(body)))
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

    # ------------------------------------------------------------ health

    for plural in (TJ, TS, MP):

        @kopf.on.event(G, V, plural, registry=registry, id=f"watch-{plural}")
        def seen(event: kopf.RawEvent, **_: Any) -> None:
            obj = event.get("object") or {}
            uid = str((obj.get("metadata") or {}).get("uid", ""))
            deleted = event.get("type") == "DELETED"
            deps.health.seen(uid, deleted)
            if deleted and (obj.get("kind") == api.TransferJobKind.kind):
                deps.metrics.observe_phase(uid, None)

    @kopf.on.probe(id="watch", registry=registry)
    def watch_probe(**_: Any) -> dict[str, Any]:
        return deps.health.check()
