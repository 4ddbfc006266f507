"""Each structure of a transfer's shape is defined once; these pin the derived places to it."""

from __future__ import annotations

from dataclasses import fields

from ferry.mover.progress import SHARD_PROGRESS_FIELDS, SNAPSHOT_FIELDS, Snapshot
from ferry.mover.result import COUNTERS, NUMBERS, Summary, wire_name
from ferry.operator import api, status
from ferry.pod.status_sink import TransferJobStatusSink


def _aliases(model: type) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]  # type: ignore[attr-defined]


def snap() -> Snapshot:
    return Snapshot(1.5, 10, 20, 1, 2, 3, 4, 5.4, None, False, "scan", ["a"])


def test_snapshot_json_is_the_declared_wire_shape():
    doc = snap().to_json()
    assert list(doc) == list(SNAPSHOT_FIELDS)
    for key, value in doc.items():
        assert value is None or isinstance(value, SNAPSHOT_FIELDS[key]), key


def test_status_sink_sends_only_declared_shard_fields(tmp_path):
    sink = TransferJobStatusSink("ns", "tj", 0, "http://127.0.0.1:9", None, None, pod="p")
    entry = sink._entry(snap().to_json())
    declared = _aliases(api.ShardProgress)
    assert set(entry) <= set(declared)  # undeclared status fields would be pruned
    assert [k for k in declared if k in SHARD_PROGRESS_FIELDS] == list(SHARD_PROGRESS_FIELDS)
    assert api.ShardProgress.model_validate(entry).bytes_done == 10


def test_result_model_and_sums_come_from_the_summary():
    doc = Summary(files_copied=2, elapsed_seconds=2.0, bytes_transferred=10).to_json()
    declared = _aliases(api.Result)
    assert set(doc) - set(declared) == {"operation", "status", "retryable"}
    numbers = [wire_name(n) for n in NUMBERS]
    assert [k for k in doc if k in numbers or k == "bytesPerSecond"] == [
        k for k in declared if k in numbers or k == "bytesPerSecond"
    ]
    assert tuple(wire_name(c) for c in COUNTERS) == status._RESULT_SUMS
    ints = [f.name for f in fields(Summary) if f.type == "int"]
    assert list(COUNTERS) == ints and "elapsed_seconds" not in COUNTERS
    api.Result.model_validate(doc)


def test_mover_spec_endpoints_are_the_engine_endpoints_fields():
    """spec.py validates a subset of each engine endpoint's fields (the rest are URI-only
    tuning), under the same names and with the same defaults: `to_endpoint` passes them on."""
    from dataclasses import MISSING

    from ferry.mover import endpoints as ep
    from ferry.mover import spec as ms

    for model, endpoint in (
        (ms.LocalSpec, ep.LocalEndpoint),
        (ms.S3Spec, ep.S3Endpoint),
        (ms.SFTPSpec, ep.SFTPEndpoint),
        (ms.SMBSpec, ep.SMBEndpoint),
        (ms.FerrySpec, ep.FerryEndpoint),
    ):
        engine = {f.name: f.default for f in fields(endpoint)}
        for name, info in model.model_fields.items():
            if name == "kind":
                continue
            assert name in engine, (model.__name__, name)
            if (model.__name__, name) == ("FerrySpec", "streams"):
                # None: the run's tuning sets it (profile, else the host), as the CLI does
                # for a URI without ?streams= (ferry/mover/tuning.py).
                assert info.default is None
                continue
            if engine[name] is not MISSING and not info.is_required():
                assert info.default == engine[name], (model.__name__, name)
