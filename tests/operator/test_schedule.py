"""Schedule semantics with a controlled clock: zones, jitter, deadlines, concurrency, trigger, history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.operator import api, cron, schedule
from tests.operator.fixtures import PVC_TO_PVC

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


def sched(status=None, uid="uid-s", created=T0, **spec):
    spec = {"schedule": "0 2 * * *", "jobTemplate": {"spec": PVC_TO_PVC}, **spec}
    return {
        "metadata": {
            "name": "nightly",
            "namespace": "team",
            "uid": uid,
            "generation": 1,
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": spec,
        "status": status or {},
    }


def plan(body, now, children=()):
    return schedule.plan(
        body, api.TransferScheduleSpec.model_validate(body["spec"]), list(children), now
    )


def child(name, phase=None, completed=None):
    return {
        "metadata": {"name": name},
        "status": {"phase": phase, "completionTime": completed} if phase else {},
    }


def test_fires_at_the_time_in_its_zone():
    body = sched(timeZone="Europe/Berlin")
    # 02:00 in Berlin on 1 March 2026 is 01:00 UTC.
    assert plan(body, T0 + timedelta(minutes=59)).create == []
    p = plan(body, T0 + timedelta(hours=1, seconds=5))
    assert len(p.create) == 1
    assert (
        p.create[0]["metadata"]["name"] == f"nightly-{int((T0 + timedelta(hours=1)).timestamp())}"
    )
    assert p.create[0]["metadata"]["labels"][schedule.workload.LABEL_SCHEDULE] == "nightly"
    assert p.create[0]["metadata"]["ownerReferences"][0]["kind"] == "TransferSchedule"
    assert p.status["lastScheduleTime"] == "2026-03-01T01:00:00Z"
    assert p.status["nextScheduleTime"] == "2026-03-02T01:00:00Z"
    assert p.status["effectiveSchedule"] == "0 2 * * * Europe/Berlin"
    assert p.interval_seconds == 86400


def test_dst_change_follows_the_zone():
    # Berlin switches to CEST on 29 March 2026: 02:00 local does not exist; 30 March 02:00 is 00:00 UTC.
    c = cron.Cron("0 3 * * *", "Europe/Berlin")
    assert c.next_after(datetime(2026, 3, 29, 12, tzinfo=UTC)) == datetime(
        2026, 3, 30, 1, tzinfo=UTC
    )
    assert c.next_after(datetime(2026, 3, 27, 12, tzinfo=UTC)) == datetime(
        2026, 3, 28, 2, tzinfo=UTC
    )


def test_same_reconcile_twice_creates_nothing_new():
    body = sched()
    now = T0 + timedelta(hours=2, seconds=1)
    first = plan(body, now)
    name = first.create[0]["metadata"]["name"]
    again = plan(body, now, [child(name)])  # status patch lost, child exists
    assert again.create == []
    assert again.status["active"] == [{"name": name}]


def test_skip_policy_never_catches_up_a_storm():
    body = sched(schedule="*/10 * * * *")
    p = plan(body, T0 + timedelta(hours=5, minutes=3))  # operator was down for 5 hours
    assert p.create == [] and p.missed == 30
    assert p.status["missedRuns"] == 30
    assert p.status["lastHandledTime"] == "2026-03-01T05:00:00Z"


def test_run_once_policy_runs_the_latest_missed_once():
    body = sched(schedule="*/10 * * * *", missedRunPolicy="RunOnce")
    p = plan(body, T0 + timedelta(hours=5, minutes=3))
    assert len(p.create) == 1 and p.missed == 29
    assert (
        p.create[0]["metadata"]["annotations"][schedule.ANNOTATION_SCHEDULED_AT]
        == "2026-03-01T05:00:00Z"
    )


def test_starting_deadline():
    body = sched(startingDeadlineSeconds=30)
    assert plan(body, T0 + timedelta(hours=2, seconds=20)).create
    late = plan(body, T0 + timedelta(hours=2, seconds=40))
    assert late.create == [] and late.missed == 1


def test_forbid_holds_while_a_run_is_active_and_runs_later_within_deadline():
    body = sched(startingDeadlineSeconds=300)
    due = T0 + timedelta(hours=2, seconds=1)
    busy = plan(body, due, [child("nightly-old", "Running")])
    assert busy.create == []
    body["status"] = busy.status
    freed = plan(
        body,
        due + timedelta(minutes=2),
        [child("nightly-old", "Succeeded", "2026-03-01T02:01:00Z")],
    )
    assert len(freed.create) == 1
    assert freed.status["lastSuccessfulTime"] == "2026-03-01T02:01:00Z"


def test_replace_deletes_the_active_run():
    body = sched(concurrencyPolicy="Replace")
    p = plan(body, T0 + timedelta(hours=2, seconds=1), [child("nightly-old", "Running")])
    assert p.delete == ["nightly-old"] and len(p.create) == 1


def test_allow_runs_concurrently():
    body = sched(concurrencyPolicy="Allow")
    p = plan(body, T0 + timedelta(hours=2, seconds=1), [child("nightly-old", "Running")])
    assert p.delete == [] and len(p.create) == 1 and len(p.status["active"]) == 2


def test_suspend_stops_runs_and_counts_missed():
    body = sched(suspend=True)
    p = plan(body, T0 + timedelta(hours=2, seconds=1))
    assert p.create == [] and p.missed == 1 and p.status["nextScheduleTime"] is None


def test_manual_trigger_runs_once_and_is_acknowledged():
    body = sched(trigger="now-1")
    p = plan(body, T0 + timedelta(minutes=5))
    assert len(p.create) == 1 and p.status["lastTrigger"] == "now-1"
    name = p.create[0]["metadata"]["name"]
    assert name.startswith("nightly-manual-")
    body["status"] = p.status
    assert plan(body, T0 + timedelta(minutes=6), [child(name, "Running")]).create == []


def test_manual_trigger_waits_under_forbid():
    body = sched(trigger="go")
    p = plan(body, T0 + timedelta(minutes=5), [child("nightly-x", "Running")])
    assert p.create == [] and p.status["lastTrigger"] is None


def test_history_limits_delete_oldest_finished():
    body = sched(successfulJobsHistoryLimit=1, failedJobsHistoryLimit=0)
    kids = [
        child("a", "Succeeded", "2026-03-01T00:01:00Z"),
        child("b", "Succeeded", "2026-03-01T00:02:00Z"),
        child("c", "Failed", "2026-03-01T00:03:00Z"),
    ]
    assert sorted(plan(body, T0 + timedelta(minutes=5), kids).delete) == ["a", "c"]


def test_six_field_cron_with_seconds_for_short_intervals():
    body = sched(schedule="* * * * * */5")  # every 5 seconds (seconds are the 6th field)
    p = plan(body, T0 + timedelta(seconds=6))
    assert p.create and p.interval_seconds == 5


def test_invalid_cron_and_zone_name_the_field():
    from pydantic import ValidationError

    from ferry.operator.status import pydantic_field

    for bad, field in (
        ({"schedule": "61 * * * *"}, "spec.schedule"),
        ({"timeZone": "Mars/Olympus"}, "spec.timeZone"),
    ):
        with pytest.raises(ValidationError) as exc:
            api.TransferScheduleSpec.model_validate({**sched()["spec"], **bad})
        assert pydantic_field(exc.value)[0] == field


@given(uid=st.text(min_size=1, max_size=40), jitter=st.integers(min_value=1, max_value=86400))
def test_jitter_is_stable_and_bounded(uid, jitter):
    a = cron.jitter_offset(uid, jitter)
    assert 0 <= a < jitter and a == cron.jitter_offset(uid, jitter)


def test_jitter_shifts_the_effective_schedule():
    body = sched(jitterSeconds=3600, uid="abc")
    off = cron.jitter_offset("abc", 3600)
    assert plan(body, T0 + timedelta(hours=2, seconds=off - 1)).create == [] or off == 0
    p = plan(body, T0 + timedelta(hours=2, seconds=off + 1))
    assert p.create and p.status["effectiveSchedule"] == f"0 2 * * * +{off}s UTC"
