"""S3 fields that become HTTP header values or URLs (bucket, endpoint, region, storage class,
KMS key id) refuse control characters at every boundary: the CRD schema, the operator's
models, the mover's spec and the command line's URIs. A CR or LF there would let a value
add headers to, or split, a request."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import ValidationError

from ferry.mover.endpoints import parse_endpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.spec import TransferSpec
from ferry.operator import api, crdgen
from tests.operator.fixtures import PVC_TO_S3

FIELDS = ["bucket", "region", "storageClass", "sseKmsKeyId"]
BAD = ["STANDARD\r\nX-Evil: 1", "a\nb", "a\x00b", "a\x7fb"]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", [*FIELDS, "endpoint"])
def test_operator_models_refuse_control_characters(field: str, bad: str) -> None:
    spec: dict[str, Any] = copy.deepcopy(PVC_TO_S3)
    s3 = spec["destination"]["s3"]
    s3[field] = ("http://h/" if field == "endpoint" else "abc") + bad
    with pytest.raises(ValidationError) as e:
        api.TransferJobSpec.model_validate(spec)
    assert field in str(e.value)
    s3[field] = "http://h:9000" if field == "endpoint" else "abc-1.x"
    api.TransferJobSpec.model_validate(spec)  # the same field, printable: accepted


def test_crd_schema_carries_the_patterns() -> None:
    """What the API server checks (its regexp engine reads these escapes as Python's does)."""
    crd = crdgen.crd(api.TransferJobKind)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    s3 = schema["properties"]["spec"]["properties"]["destination"]["properties"]["s3"]
    for field in [*FIELDS, "endpoint"]:
        pattern = s3["properties"][field]["pattern"]
        assert all(not re.search(pattern, "http://h/abc" + bad) for bad in BAD), field
        assert re.search(pattern, "http://h/abc"), field


@pytest.mark.parametrize(
    "field", ["bucket", "endpointUrl", "region", "storageClass", "sseKmsKeyId"]
)
def test_mover_spec_refuses_control_characters(field: str) -> None:
    s3 = {"kind": "s3", "bucket": "backups", field: "abc\r\nX-Evil: 1"}
    doc = {"source": {"kind": "local", "path": "/s"}, "destination": s3}
    with pytest.raises(ValidationError) as e:
        TransferSpec.model_validate(doc)
    assert field in str(e.value)


@pytest.mark.parametrize(
    ("uri", "what"),
    [
        ("s3://b/p?storage_class=STANDARD%0D%0AX-Evil:%201", "'storage_class'"),
        ("s3://b/p?sse_kms_key_id=k%00", "'sse_kms_key_id'"),
        ("s3://b/p?region=us%0Aeast", "'region'"),
        ("s3://b/p?endpoint=http://h%0D%0A/", "'endpoint'"),
        ("s3://b\nx/p", "bucket"),
    ],
)
def test_uris_refuse_control_characters(uri: str, what: str) -> None:
    with pytest.raises(FerryError, match="control character") as e:
        parse_endpoint(uri)
    assert e.value.kind is ErrorKind.USAGE and what in str(e.value)
