"""The `ferry` endpoint kind of the TransferJob API: another cluster's `ferry serve`,
certificates from a Secret the pod mounts (the operator never reads it), and
`compression: On` accepted with it (refused without a wire, naming the field)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ferry.mover import spec as ms
from ferry.operator import api, moverspec, workload
from ferry.operator.status import pydantic_field
from tests.operator.fixtures import PVC_TO_PVC, transferjob

FERRY = {
    "ferry": {
        "host": "ferry.dr.example",
        "port": 7443,
        "path": "team/backups",
        "tlsSecretRef": {"name": "dr-wire"},
    }
}
TO_FERRY = {"source": PVC_TO_PVC["source"], "destination": FERRY}


def refused(spec: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate(spec)
    return pydantic_field(exc.value)


def test_ferry_destination_is_the_movers_ferry_endpoint_with_the_secrets_files():
    spec = api.TransferJobSpec.model_validate(TO_FERRY)
    out = moverspec.mover_specs(spec, None)
    dst = out.shards[0].destination
    assert isinstance(dst, ms.FerrySpec)
    assert (dst.host, dst.port, dst.path) == ("ferry.dr.example", 7443, "team/backups")
    secret = next(m for m in out.mounts if isinstance(m, moverspec.SecretMount))
    assert secret.secret_name == "dr-wire"
    assert secret.keys == ("tls.crt", "tls.key", "ca.crt")
    assert (dst.tls_cert, dst.tls_key, dst.tls_ca) == tuple(
        f"{secret.path}/{k}" for k in secret.keys
    )
    # The pod mounts only those keys, read-only; nothing else of the Secret.
    job = workload.build(
        transferjob(TO_FERRY), spec, workload.Context(), workload.MoverSettings()
    ).job
    vols = [v["secret"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert vols == [
        {
            "secretName": "dr-wire",
            "defaultMode": 0o400,
            "items": [{"key": k, "path": k} for k in ("tls.crt", "tls.key", "ca.crt")],
        }
    ]


def test_ferry_source_works_too():
    spec = api.TransferJobSpec.model_validate(
        {"source": FERRY, "destination": PVC_TO_PVC["destination"]}
    )
    src = moverspec.mover_specs(spec, None).shards[0].source
    assert isinstance(src, ms.FerrySpec) and src.tls_ca.endswith("/ca.crt")


def test_compression_on_needs_a_ferry_endpoint():
    assert api.TransferJobSpec.model_validate({**TO_FERRY, "compression": "On"}).compression == "On"
    where, msg = refused({**PVC_TO_PVC, "compression": "On"})
    assert where == "spec.compression" and "ferry endpoint" in msg


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"path": "a/../b"}, "spec.destination.ferry.path"),
        ({"port": 0}, "spec.destination.ferry.port"),
        ({"host": "user@host"}, "spec.destination.ferry.host"),
        ({"tlsSecretRef": None}, "spec.destination.ferry.tlsSecretRef"),
    ],
)
def test_bad_ferry_fields_are_refused_by_name(change: dict[str, Any], field: str):
    ferry = {k: v for k, v in {**FERRY["ferry"], **change}.items() if v is not None}
    where, _ = refused({**TO_FERRY, "destination": {"ferry": ferry}})
    assert where == field


def test_two_kinds_at_once_are_refused():
    where, msg = refused({**TO_FERRY, "destination": {**FERRY, **PVC_TO_PVC["destination"]}})
    assert where == "spec.destination"
    assert "exactly one of pvc, s3, sftp, smb, ferry" in msg


def test_nested_paths_on_one_server_overlap():
    inner = {"ferry": {**FERRY["ferry"], "path": "team/backups/x"}}
    spec = api.TransferJobSpec.model_validate({"source": FERRY, "destination": inner})
    with pytest.raises(moverspec.InvalidSpec) as exc:
        moverspec.check_overlap(spec)
    assert exc.value.field == "spec.destination.ferry.path"
    assert "the same server" in str(exc.value)


def test_crd_has_the_kind_and_the_rules():
    from pathlib import Path

    crd = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "crds" / "ferry.dev_transferjobs.yaml").read_text()
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    ferry = schema["properties"]["destination"]["properties"]["ferry"]
    assert set(ferry["required"]) == {"host", "port", "tlsSecretRef"}
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert any("has(self.destination.ferry)" in r and "compression" in r for r in rules)
