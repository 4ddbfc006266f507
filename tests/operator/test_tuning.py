"""A MoverPool's and a TransferJob's profile reach the mover, which sizes itself to
its container's limits (downward API env), explicit values winning."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ferry.mover import host
from ferry.mover.options import MiB
from ferry.mover.profiles import PROFILES
from ferry.mover.spec import TransferSpec
from ferry.operator import api, workload
from tests.operator.fixtures import PVC_TO_PVC
from tests.operator.test_workload import build, pod_spec


def mover_options(w: workload.Workload) -> dict:
    return json.loads(w.config_map["data"]["spec-0.json"])["options"]


def test_the_job_passes_the_containers_limits_through_the_downward_api() -> None:
    env = {e["name"]: e for e in pod_spec(build(PVC_TO_PVC))["containers"][0]["env"]}
    cpu = env[host.CPU_ENV]["valueFrom"]["resourceFieldRef"]
    mem = env[host.MEMORY_ENV]["valueFrom"]["resourceFieldRef"]
    assert cpu == {"containerName": workload.CONTAINER, "resource": "limits.cpu", "divisor": "1m"}
    assert mem == {"containerName": workload.CONTAINER, "resource": "limits.memory", "divisor": "1"}


@pytest.mark.parametrize(
    ("pool", "par", "expect"),
    [
        ({"profile": "wan"}, {}, {"profile": "wan"}),
        ({"profile": "wan"}, {"profile": "small-files"}, {"profile": "small-files"}),
        ({"profile": "wan", "streams": 5}, {}, {"profile": "wan", "transfers": 5}),
        ({"profile": "wan", "streams": 5}, {"streams": 7}, {"profile": "wan", "transfers": 7}),
        ({"bufferSize": "1M"}, {"profile": "lan"}, {"profile": "lan", "bufferSize": "1M"}),
    ],
)
def test_profile_and_given_values_reach_the_mover(pool: dict, par: dict, expect: dict) -> None:
    pool_spec = api.MoverPoolSpec.model_validate({"tuning": pool})
    spec = {**PVC_TO_PVC, "placement": {"pool": "p"}, "parallelism": par}
    opts = mover_options(build(spec, workload.Context(pool=pool_spec)))
    assert {k: opts.get(k) for k in expect} == expect
    assert "transfers" in expect or opts.get("transfers") is None  # else the mover sizes


def test_the_mover_resolves_profile_then_its_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the pod: the profile's values, the given ones over them, the rest from the
    container's limits (the downward API's env)."""
    monkeypatch.setenv(host.CPU_ENV, "500")
    monkeypatch.setenv(host.MEMORY_ENV, str(256 * MiB))
    spec = {**PVC_TO_PVC, "parallelism": {"profile": "large-files", "streams": 3}}
    mover = json.loads(build(spec).config_map["data"]["spec-0.json"])
    _, _, o = TransferSpec.model_validate(mover).to_engine()
    p = PROFILES["large-files"]
    assert (o.transfers, o.chunk_size, o.buffer_size) == (3, p.chunk_size, p.buffer_size)
    assert o.max_in_flight_bytes == 64 * MiB  # a quarter of the 256 MiB limit
    assert o.tuning is not None and o.tuning["from"]["maxInFlightBytes"].endswith(
        "from pod limits.memory"
    )
    plain = json.loads(build(PVC_TO_PVC).config_map["data"]["spec-0.json"])
    _, _, o = TransferSpec.model_validate(plain).to_engine()
    # 0.5 cores to a local volume: the floor of 2 workers
    assert o.transfers == 2 and "pod limits.cpu" in o.tuning["from"]["transfers"]  # type: ignore[index]


def test_ferry_streams_follow_the_tuning_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host.CPU_ENV, "4000")
    monkeypatch.setenv(host.MEMORY_ENV, str(1024 * MiB))
    base = {
        "source": {"kind": "local", "path": "/data/src"},
        "destination": {
            "kind": "ferry",
            "host": "peer.example",
            "port": 8443,
            "tlsCert": "/c",
            "tlsKey": "/k",
            "tlsCa": "/a",
        },
    }
    _, dst, _ = TransferSpec.model_validate(base).to_engine()
    assert dst.streams == 32  # type: ignore[union-attr]  # 4 cores x 8 to remote storage
    prof = {**base, "options": {"profile": "lan"}}
    _, dst, _ = TransferSpec.model_validate(prof).to_engine()
    assert dst.streams == PROFILES["lan"].streams  # type: ignore[union-attr]
    given = {**base, "destination": {**base["destination"], "streams": 2}}
    _, dst, o = TransferSpec.model_validate(given).to_engine()
    assert dst.streams == 2 and o.tuning["streams"] == 2  # type: ignore[union-attr,index]


def test_unknown_profiles_and_buffers_are_refused_by_field() -> None:
    with pytest.raises(ValidationError, match=r"tuning\.profile"):
        api.MoverPoolSpec.model_validate({"tuning": {"profile": "fast"}})
    with pytest.raises(ValidationError, match="bufferSize"):
        api.MoverPoolSpec.model_validate({"tuning": {"bufferSize": "64M"}})
    with pytest.raises(ValidationError, match=r"parallelism\.profile"):
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "parallelism": {"profile": "x"}})
    with pytest.raises(ValidationError, match="unknown profile"):
        TransferSpec.model_validate(
            {
                "source": {"kind": "local", "path": "/a"},
                "destination": {"kind": "local", "path": "/b"},
                "options": {"profile": "x"},
            }
        )
