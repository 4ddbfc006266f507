"""Operator metrics (bounded labels, counted once per finished job) and the watch liveness check."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from ferry.operator.handlers import WatchHealth
from ferry.operator.metrics import Metrics, bounded_reason


def value(m: Metrics, name: str, **labels) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_phase_gauge_tracks_objects():
    m = Metrics()
    m.observe_phase("a", "Running")
    m.observe_phase("b", "Running")
    m.observe_phase("a", "Succeeded")
    assert value(m, "ferry_transferjobs", phase="Running") == 1
    assert value(m, "ferry_transferjobs", phase="Succeeded") == 1
    m.observe_phase("b", None)
    assert value(m, "ferry_transferjobs", phase="Running") == 0


def test_finished_runs_bytes_and_verify_mismatch():
    m = Metrics()
    m.finished(
        "Succeeded",
        "Completed",
        {"bytesTransferred": 500, "filesCopied": 2, "filesUpdated": 1},
        12.0,
    )
    m.finished("Failed", "VerifyMismatch", {"bytesTransferred": 0, "differences": 1}, 3.0)
    m.finished("Failed", "some free text from somewhere", None, None)
    assert value(m, "ferry_transferjob_runs_total", result="Succeeded", reason="Completed") == 1
    assert value(m, "ferry_transferjob_runs_total", result="Failed", reason="Other") == 1
    assert value(m, "ferry_transferred_bytes_total") == 500
    assert value(m, "ferry_transferred_files_total") == 3
    assert value(m, "ferry_verify_mismatches_total") == 1
    assert value(m, "ferry_transfer_duration_seconds_count") == 2
    assert bounded_reason("AuthFailed") == "AuthFailed"


def test_schedule_series_removed_on_delete():
    m = Metrics()
    m.schedule_interval.labels("ns", "s").set(60)
    m.schedule_missed.labels("ns", "s").inc(2)
    assert (
        b'ferry_schedule_expected_interval_seconds{namespace="ns",schedule="s"} 60.0'
        in generate_latest(m.registry)
    )
    m.forget_schedule("ns", "s")
    assert b'schedule="s"' not in generate_latest(m.registry)


def test_watch_health_fails_only_when_objects_exist_and_events_stopped():
    t = [0.0]
    h = WatchHealth(stale_after=60, clock=lambda: t[0])
    t[0] = 1000
    assert h.check()["objects"] == 0  # nothing to watch: quiet is fine
    h.seen("u1", deleted=False)
    t[0] = 1030
    assert h.check()["objects"] == 1
    t[0] = 1100
    with pytest.raises(RuntimeError, match="no watch event"):
        h.check()
    h.seen("u1", deleted=True)
    assert h.check()["objects"] == 0
