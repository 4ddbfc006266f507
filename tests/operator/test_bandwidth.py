"""spec.bandwidth: a rate or rclone's timetable, the whole job's (split among its shards'
pods), read in spec.bandwidthTimeZone (a schedule's zone for its jobs), refused at
admission when malformed."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import ValidationError

from ferry.mover import spec as ms
from ferry.mover.bwtable import BwTable
from ferry.mover.options import KiB, MiB
from ferry.operator import api, moverspec, schedule, wirepair, workload
from tests.operator.fixtures import PVC_TO_PVC, PVC_TO_S3, transferjob

CRDS = Path(__file__).resolve().parents[2] / "crds"
TABLE = "08:00,4M 12:00,off 18:00,1M"


def engine_options(shard: ms.TransferSpec):
    """What the mover reads: the spec through its JSON, as the pod gets it."""
    return ms.TransferSpec.model_validate_json(shard.model_dump_json(by_alias=True)).to_engine()[2]


def test_a_sharded_jobs_limit_is_split_among_its_pods() -> None:
    job = {
        **PVC_TO_S3,
        "bandwidth": TABLE,
        "bandwidthTimeZone": "Europe/Berlin",
        "parallelism": {"shards": 4},
    }
    shards = moverspec.mover_specs(api.TransferJobSpec.model_validate(job), None).shards
    assert len(shards) == 4
    whole = BwTable.parse(TABLE)
    for shard in shards:
        assert shard.options.bandwidth_time_zone == "Europe/Berlin"
        table = engine_options(shard).bwtable
        assert table is not None and table.tz == ZoneInfo("Europe/Berlin")
        assert table.entries == ((480, MiB), (720, 0), (1080, 256 * KiB))
        assert shard.options.bandwidth == "08:00,1M 12:00,off 18:00,256K"
    # Together the pods keep to the job's limit at every entry (and are not n times it).
    for i, (start, rate) in enumerate(whole.entries):
        parts = [engine_options(s).bwtable.entries[i] for s in shards]  # type: ignore[union-attr]
        assert all(p[0] == start for p in parts)
        assert sum(p[1] for p in parts) == rate


def test_a_plain_rate_is_split_too_and_a_single_pod_keeps_it_as_written() -> None:
    two = {**PVC_TO_S3, "bandwidth": "10M", "parallelism": {"shards": 2}}
    shards = moverspec.mover_specs(api.TransferJobSpec.model_validate(two), None).shards
    assert [s.options.bandwidth for s in shards] == ["5M"] * 2
    one = {**PVC_TO_S3, "bandwidth": TABLE}
    (shard,) = moverspec.mover_specs(api.TransferJobSpec.model_validate(one), None).shards
    assert shard.options.bandwidth == TABLE and shard.options.bandwidth_time_zone is None
    table = engine_options(shard).bwtable
    assert table is not None and table.tz == ZoneInfo("UTC")  # a standalone job: UTC
    assert table.rate_at(datetime(2026, 6, 1, 9, 0, tzinfo=UTC).timestamp()) == 4 * MiB
    none = moverspec.mover_specs(api.TransferJobSpec.model_validate(PVC_TO_S3), None).shards[0]
    assert none.options.bandwidth is None and engine_options(none).bwtable is None


def test_the_longest_timetable_still_reaches_each_shard() -> None:
    """256 weekly entries of odd rates, split 3 ways: longer in bytes than as written, and
    still within what the mover reads."""
    days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    entries = [
        f"{days[i % 7]}-{i // 7 % 24:02d}:{i // 168 * 30 + i % 7:02d},1.3G" for i in range(256)
    ]
    text = " ".join(entries)
    assert len(text) <= 4096
    job = {**PVC_TO_S3, "bandwidth": text, "parallelism": {"shards": 3}}
    shards = moverspec.mover_specs(api.TransferJobSpec.model_validate(job), None).shards
    table = engine_options(shards[0]).bwtable
    assert table is not None and len(table.entries) == 256
    assert table.entries[0][1] == int(1.3 * (1 << 30)) // 3


def test_the_wire_pairs_sender_carries_the_timetable() -> None:
    spec = {
        **PVC_TO_PVC,
        "bandwidth": TABLE,
        "bandwidthTimeZone": "Asia/Tokyo",
        "parallelism": {"shards": 2},
    }
    tj = api.TransferJobSpec.model_validate(spec)
    cm, _ = wirepair.sender(
        transferjob(spec), tj, workload.Context(), workload.MoverSettings(), "10.96.0.9"
    )
    docs = [json.loads(v) for v in cm["data"].values()]
    assert len(docs) == 2
    for doc in docs:
        shard = ms.TransferSpec.model_validate(doc)
        table = shard.to_engine()[2].bwtable
        assert table is not None and table.tz == ZoneInfo("Asia/Tokyo")
        assert table.entries == ((480, 2 * MiB), (720, 0), (1080, 512 * KiB))


@pytest.mark.parametrize(
    "bad",
    [
        "fast",
        "08:00,1M 08:00,2M",  # one time twice: the pattern passes it, the model does not
        "08:00,1M 08:00,2M",
        "25:00,1M",
        "Mon-08:00,1M:512K",
        "Xyz-08:00,1M",
    ],
)
def test_a_bad_timetable_is_refused_naming_bandwidth(bad: str) -> None:
    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "bandwidth": bad})
    assert "bandwidth" in str(exc.value)


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate(
            {**PVC_TO_PVC, "bandwidth": "1M", "bandwidthTimeZone": "Nowhere/City"}
        )
    assert "bandwidth_time_zone" in str(exc.value) or "bandwidthTimeZone" in str(exc.value)
    assert "unknown time zone 'Nowhere/City'" in str(exc.value)
    # A zone with no bandwidth to read in it would be accepted and ignored: refused.
    for model in (api.TransferJobSpec, ms.OptionsSpec):
        body = {**PVC_TO_PVC, "bandwidthTimeZone": "UTC"} if model is api.TransferJobSpec else {}
        with pytest.raises(ValidationError) as exc:
            model.model_validate({**body, "bandwidthTimeZone": "UTC"})
        assert "bandwidthTimeZone applies only to a bandwidth timetable" in str(exc.value)


def _crd_bandwidth(plural: str) -> dict:
    crd = yaml.safe_load((CRDS / f"ferry.dev_{plural}.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = props["properties"]
    if plural == "transferschedules":
        props = props["jobTemplate"]["properties"]["spec"]["properties"]
    return props


@pytest.mark.parametrize("plural", ["transferjobs", "transferschedules"])
def test_the_crd_admits_timetables_and_says_whole_job(plural: str) -> None:
    props = _crd_bandwidth(plural)
    bw = props["bandwidth"]
    assert "per pod" not in bw["description"] and "whole job" in bw["description"]
    pattern = re.compile(bw["pattern"])
    for good in ["50M", "off", TABLE, "Mon-08:00,512K Sat-10:00,off", "08:00,1M;18:00,off"]:
        assert pattern.fullmatch(good), good
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "bandwidth": good})
    for bad in ["fast", "08:00", "08:00,1M:2M", "8:00,1M", "08:00,1M,"]:
        assert not pattern.fullmatch(bad), bad
    assert props["bandwidthTimeZone"]["maxLength"] == 64


def _sched(tz: str | None, job: dict) -> dict:
    spec = {"schedule": "0 2 * * *", "jobTemplate": {"spec": job}}
    if tz:
        spec["timeZone"] = tz
    return {
        "metadata": {
            "name": "nightly",
            "namespace": "team",
            "uid": "uid-s",
            "generation": 1,
            "creationTimestamp": "2026-03-01T00:00:00Z",
        },
        "spec": spec,
        "status": {},
    }


def _created(body: dict) -> dict:
    spec = api.TransferScheduleSpec.model_validate(body["spec"])
    fire = datetime(2026, 3, 2, 2, 0, tzinfo=ZoneInfo(spec.time_zone or "UTC"))
    out = schedule.plan(body, spec, [], fire.astimezone(UTC) + timedelta(seconds=5))
    assert len(out.create) == 1
    return out.create[0]["spec"]


def test_a_schedules_jobs_read_the_timetable_in_its_zone() -> None:
    child = _created(_sched("Europe/Berlin", {**PVC_TO_PVC, "bandwidth": TABLE}))
    assert child["bandwidthTimeZone"] == "Europe/Berlin"
    tj = api.TransferJobSpec.model_validate(child)
    shard = moverspec.mover_specs(tj, None).shards[0]
    table = engine_options(shard).bwtable
    assert table is not None and table.tz == ZoneInfo("Europe/Berlin")
    # 07:30 UTC is 08:30 in Berlin in March (CET): the 08:00 entry, not the night's.
    assert table.rate_at(datetime(2026, 3, 2, 7, 30, tzinfo=UTC).timestamp()) == 4 * MiB
    # A job template's own zone wins; a job without bandwidth gets no zone; nor without one.
    own = {**PVC_TO_PVC, "bandwidth": TABLE, "bandwidthTimeZone": "Asia/Tokyo"}
    assert _created(_sched("Europe/Berlin", own))["bandwidthTimeZone"] == "Asia/Tokyo"
    assert "bandwidthTimeZone" not in _created(_sched("Europe/Berlin", PVC_TO_PVC))
    assert "bandwidthTimeZone" not in _created(_sched(None, {**PVC_TO_PVC, "bandwidth": TABLE}))
