"""What wakes a TransferJob's follower, and when time alone does; the shutdown gate; log lines."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from datetime import UTC, datetime, timedelta

import kopf
import pytest

from ferry.operator import handlers, logs, workload
from ferry.operator.kube import Kube, Stopping
from ferry.operator.metrics import Metrics
from ferry.operator.schedule import ScheduleReconciler
from ferry.operator.shutdown import Shutdown
from ferry.operator.tracing import Tracer
from ferry.operator.transferjob import TransferJobReconciler, follows, wake_after
from ferry.operator.wakeups import Wakeups, owner_key
from tests.operator.fixtures import PVC_TO_PVC, transferjob

NOW = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
RESYNC, RETRY = 300.0, 10.0


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_suspended_and_finished_have_no_follower():
    assert follows(transferjob(PVC_TO_PVC))  # new: not reconciled yet
    assert follows(transferjob(PVC_TO_PVC, status={"phase": "Pending", "reason": "Waiting"}))
    running = {"phase": "Running", "reason": "Transferring"}
    assert follows(transferjob(PVC_TO_PVC, status=running))
    # stopping the mover: the Job's pods going away is still to be seen
    suspending = {"phase": "Suspended", "reason": "Suspending"}
    assert follows(transferjob({**PVC_TO_PVC, "suspend": True}, status=suspending))
    # created suspended: its create handler builds the Job suspended, no follower needed
    assert not follows(transferjob({**PVC_TO_PVC, "suspend": True}))
    suspended = {"phase": "Suspended", "reason": "Suspended"}
    assert not follows(transferjob({**PVC_TO_PVC, "suspend": True}, status=suspended))
    done = {"phase": "Succeeded", "reason": "Completed"}
    assert not follows(transferjob(PVC_TO_PVC, status=done))
    assert follows(transferjob({**PVC_TO_PVC, "ttlSecondsAfterFinished": 60}, status=done))


def test_time_triggers_ttl_stall_retry_and_resync():
    pending = transferjob(PVC_TO_PVC, status={"phase": "Pending", "reason": "Waiting"})
    assert wake_after(pending, NOW, RESYNC, RETRY) == RESYNC
    forbidden = transferjob(PVC_TO_PVC, status={"phase": "Pending", "reason": "Forbidden"})
    assert wake_after(forbidden, NOW, RESYNC, RETRY) == RETRY
    done = {"phase": "Succeeded", "completionTime": _iso(NOW - timedelta(seconds=50))}
    ttl = transferjob({**PVC_TO_PVC, "ttlSecondsAfterFinished": 60}, status=done)
    assert wake_after(ttl, NOW, RESYNC, RETRY) == pytest.approx(10)
    assert wake_after(ttl, NOW + timedelta(seconds=30), RESYNC, RETRY) == 0  # overdue: now
    progress = {"lastProgressTime": _iso(NOW - timedelta(seconds=100))}
    running = {
        "phase": "Running",
        "startTime": _iso(NOW - timedelta(hours=1)),
        "progress": progress,
    }
    body = transferjob({**PVC_TO_PVC, "stallTimeoutSeconds": 120}, status=running)
    assert wake_after(body, NOW, RESYNC, RETRY) == pytest.approx(21)  # just past the timeout
    # already past the timeout (the stall was reported): back to the resync, no busy loop
    assert wake_after(body, NOW + timedelta(seconds=60), RESYNC, RETRY) == RESYNC
    default = transferjob(PVC_TO_PVC, status={**running, "progress": {}})
    assert wake_after(default, NOW, RESYNC, RETRY) == RESYNC  # started an hour ago, 300 s timeout


def _child(labels: dict[str, str], ns: str = "team") -> dict[str, object]:
    return {"metadata": {"namespace": ns, "labels": labels}}


def test_children_map_to_their_transferjob_by_label():
    ours = {"app.kubernetes.io/managed-by": "ferry-operator", "ferry.dev/transferjob": "copy-a"}
    assert owner_key(_child(ours)) == ("team", "copy-a")
    assert owner_key(_child({**ours, "app.kubernetes.io/managed-by": "someone"})) is None
    assert owner_key(_child({"app.kubernetes.io/managed-by": "ferry-operator"})) is None
    assert owner_key({"metadata": {}}) is None


def test_wakes_are_kept_until_taken_and_pools_wake_their_waiters():
    async def run() -> None:
        w = Wakeups()
        w.object_changed(("team", "nobody"))  # no follower, nothing to read: not kept
        assert ("team", "nobody") not in w.signals
        # a TransferJob never reconciled by this process (deleted: its Jobs go by garbage
        # collection): nothing made for it
        assert w.child_changed(("team", "gone")) is None and not w.signals
        sig = w.signal(("team", "a"))  # its first reconcile (or its follower) made it
        assert w.child_changed(("team", "a")) is sig  # before its follower waits: kept
        await asyncio.wait_for(sig.event.wait(), 1)
        assert sig.children
        waiting = w.signal(("team", "b"))
        waiting.pool = "bulk"
        assert w.pool_changed("bulk") == 1 and waiting.event.is_set() and waiting.children
        assert w.pool_changed("other") == 0
        w.forget(("team", "a"))  # deleted: its follower is woken to end (no finalizer stops it)
        assert ("team", "a") not in w.signals and sig.gone and sig.event.is_set()

    asyncio.run(run())


def test_sigterm_closes_creation_at_once_stops_the_loop_and_bounds_the_exit():
    kube = Kube()
    exited = threading.Event()
    stop = Shutdown(kube, timeout=0.5, exit_now=lambda code: exited.set())
    seen: list[bool] = []

    async def operator() -> None:  # stands in for kopf.operator(stop_flag=stop.flag)
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.flag.wait()
        seen.append(kube.stopping.is_set())
        with pytest.raises(Stopping):
            kube.create({"kind": "Job", "metadata": {"name": "j", "namespace": "team"}})

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.run(operator)  # returns once the loop has stopped on the signal
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert seen == [True]
    assert exited.wait(5)  # were anything still hanging, the process would end anyway


def test_routine_success_lines_are_debug_and_object_lines_name_the_object():
    logs.configure(verbose=False)
    routine = logging.LogRecord(
        "kopf.objects", logging.INFO, "", 0, "Handler 'x' succeeded.", (), None
    )
    assert not logs.RoutineToDebug().filter(routine) and routine.levelno == logging.DEBUG
    created = logging.LogRecord("kopf.objects", logging.INFO, "", 0, "created Job/x", (), None)
    assert logs.RoutineToDebug().filter(created) and created.levelno == logging.INFO
    # kopf's per-object logger attaches the reference; the operator's formatter prints it
    created.k8s_ref = {"namespace": "team", "name": "copy-a"}
    formats = [h.formatter for h in logging.getLogger().handlers if h.formatter]
    lines = [f.format(created) for f in formats]
    assert any("INFO kopf.objects: [team/copy-a] created Job/x" in line for line in lines), lines


def test_the_follower_holds_no_finalizer_and_schedules_keep_theirs():
    """kopf gives each daemon a finalizer: one PATCH before the first reconcile, one to take it
    off, and a blocked delete. The follower ends itself on its TransferJob's deletion instead."""
    kube = Kube()
    metrics, tracer = Metrics(), Tracer()
    deps = handlers.Deps(
        kube=kube,
        transferjobs=TransferJobReconciler(kube, workload.MoverSettings(), metrics, tracer),
        schedules=ScheduleReconciler(kube, metrics, tracer),
        metrics=metrics,
        health=handlers.WatchHealth(stale_after=60),
        poll_interval=2,
        watch_timeout=60,
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry, deps)
    spawning = {h.id: h.requires_finalizer for h in registry._spawning.get_all_handlers()}
    assert spawning.pop("follow") is False
    assert spawning and all(spawning.values())  # the schedules' timer: untouched
