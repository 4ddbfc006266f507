"""compression at the Kubernetes boundary: the mover spec carries it to the engine, and a
TransferJob refuses On at admission (it has no ferry:// endpoint yet)."""

from __future__ import annotations

import pytest

from ferry.mover import options as op
from ferry.mover import spec as ms
from ferry.operator import api, crdgen, moverspec
from tests.operator.fixtures import PVC_TO_PVC


def test_the_mover_spec_carries_compression_to_the_engine() -> None:
    doc = {
        "source": {"kind": "local", "path": "/a"},
        "destination": {"kind": "local", "path": "/b"},
        "options": {"compression": "Off"},
    }
    _, _, options = ms.TransferSpec.model_validate(doc).to_engine()
    assert options.compress == op.Compress.OFF
    with pytest.raises(ValueError):
        ms.TransferSpec.model_validate({**doc, "options": {"compression": "Max"}})


def test_a_transferjob_passes_auto_and_off_and_refuses_on() -> None:
    spec = api.TransferJobSpec.model_validate({**PVC_TO_PVC, "compression": "Off"})
    out = moverspec.mover_specs(spec, None)
    assert out.shards[0].options.compression == "Off"
    assert out.shards[0].to_engine()[2].compress == op.Compress.OFF
    with pytest.raises(ValueError, match="compression On needs a ferry endpoint"):
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "compression": "On"})
    doc = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert api.COMPRESSION_ON_RULE in doc["properties"]["spec"]["x-kubernetes-validations"]


def test_a_mover_spec_names_a_ferry_endpoint() -> None:
    doc = {
        "source": {"kind": "local", "path": "/a"},
        "destination": {
            "kind": "ferry",
            "host": "receiver.ns.svc",
            "port": 7443,
            "path": "/x//y/",
            "tlsCert": "/certs/tls.crt",
            "tlsKey": "/certs/tls.key",
            "tlsCa": "/certs/ca.crt",
        },
    }
    _, dst, options = ms.TransferSpec.model_validate(doc).to_engine()
    assert options.tuning is not None  # streams not given: the run's tuning (the host's)
    assert dst == ms.ep.FerryEndpoint(
        "receiver.ns.svc",
        7443,
        "x/y",
        "/certs/tls.crt",
        "/certs/tls.key",
        "/certs/ca.crt",
        streams=options.tuning["streams"],
    )
    for bad in ({"path": "a/../b"}, {"tlsKey": ""}, {"port": 0}, {"host": "u@h"}):
        with pytest.raises(ValueError):
            ms.TransferSpec.model_validate({**doc, "destination": {**doc["destination"], **bad}})
