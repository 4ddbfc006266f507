"""TransferJob -> typed mover specs: one per shard, the mounts their paths point into."""

from __future__ import annotations

import pytest

from ferry.mover import spec as ms
from ferry.operator import api, crdgen, moverspec
from tests.operator.fixtures import PVC_TO_PVC, PVC_TO_S3


def test_specs_are_typed_and_paths_point_into_the_mounts():
    spec = api.TransferJobSpec.model_validate(
        {**PVC_TO_S3, "mode": "Sync", "maxDelete": 5, "parallelism": {"shards": 2}}
    )
    out = moverspec.mover_specs(spec, None)
    assert [type(s) for s in out.shards] == [ms.TransferSpec, ms.TransferSpec]
    assert [s.shard for s in out.shards] == [
        ms.ShardSpec(index=0, count=2),
        ms.ShardSpec(index=1, count=2),
    ]
    assert [s.options.max_delete for s in out.shards] == [3, 2]
    src, dst = out.shards[0].source, out.shards[0].destination
    assert isinstance(src, ms.LocalSpec) and isinstance(dst, ms.S3Spec)
    claim, secret = out.mounts
    assert isinstance(claim, moverspec.ClaimMount) and claim.read_only
    assert src.path.startswith(claim.path)
    assert isinstance(secret, moverspec.SecretMount)
    assert dst.credentials_file == f"{secret.path}/{secret.keys[0]}"
    assert secret.path.startswith(moverspec.SECRETS_DIR + "/")


def test_delete_shares_add_up_to_the_limit():
    for limit in range(0, 20):
        for n in range(1, 7):
            shares = [moverspec.delete_share(limit, i, n) for i in range(n)]
            assert sum(s or 0 for s in shares) == limit and max(shares) - min(shares) <= 1
    assert moverspec.delete_share(None, 0, 3) is None


def test_what_the_mover_model_refuses_is_an_invalid_spec_naming_the_field():
    spec = api.TransferJobSpec.model_validate(PVC_TO_S3)
    bad = spec.model_copy(update={"source": api.Endpoint.model_construct(pvc=None, s3=None)})
    bad.source.smb = api.SMBEndpoint.model_construct(host="", port=445, share="s", path="")
    with pytest.raises(moverspec.InvalidSpec) as exc:
        moverspec.mover_specs(bad, None)
    assert exc.value.field == "spec" and "host" in str(exc.value)


def test_delta_reaches_the_mover_and_on_is_refused_where_nothing_rebuilds():
    spec = api.TransferJobSpec.model_validate({**PVC_TO_PVC, "delta": "On"})
    out = moverspec.mover_specs(spec, None)
    assert out.shards[0].options.delta == "On"
    assert out.shards[0].to_engine()[2].delta == "on"
    assert (
        moverspec.mover_specs(api.TransferJobSpec.model_validate(PVC_TO_S3), None)
        .shards[0]
        .options.delta
        == "Auto"
    )
    with pytest.raises(ValueError, match="delta On needs a destination"):
        api.TransferJobSpec.model_validate({**PVC_TO_S3, "delta": "On"})
    doc = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = doc["properties"]["spec"]["x-kubernetes-validations"]
    assert api.DELTA_ON_RULE in rules


def test_a_file_path_and_rename_rules_reach_the_mover():
    """A claim path may name a file; a trailing '/' on the destination names a directory;
    rename rules go to the mover as they are, and a malformed one is refused at admission."""
    from pydantic import ValidationError

    from ferry.mover.endpoints import LocalEndpoint, names_directory, split_endpoint

    job = {
        "source": {"pvc": {"claimName": "data", "path": "isos/big.iso"}},
        "destination": {"pvc": {"claimName": "backup", "path": "isos/"}},
        "rename": ["s/\\.iso$/.img/"],
    }
    out = moverspec.mover_specs(api.TransferJobSpec.model_validate(job), None)
    shard = out.shards[0]
    assert shard.source == ms.LocalSpec(path=f"{moverspec.DATA_DIR}/source/isos/big.iso")
    assert shard.destination == ms.LocalSpec(path=f"{moverspec.DATA_DIR}/destination/isos/")
    assert shard.options.rename == ["s/\\.iso$/.img/"]
    src, dst, options = ms.TransferSpec.model_validate_json(shard.model_dump_json()).to_engine()
    assert split_endpoint(src) == (LocalEndpoint(f"{moverspec.DATA_DIR}/source/isos"), "big.iso")
    assert names_directory(dst) and options.rename == ("s/\\.iso$/.img/",)
    named = {**job, "destination": {"pvc": {"claimName": "backup", "path": "isos/new.img"}}}
    spec = moverspec.mover_specs(api.TransferJobSpec.model_validate(named), None).shards[0]
    assert not names_directory(spec.to_engine()[1])
    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate({**job, "rename": ["s/(/x/"]})
    assert "rename" in str(exc.value) and "invalid regular expression" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        ms.OptionsSpec.model_validate({"rename": ["s/a/b"]})
    assert "unterminated" in str(exc.value)
