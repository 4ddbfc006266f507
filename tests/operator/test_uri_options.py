"""Every option a storage URI takes (`?name=value`, from the engine's endpoint dataclasses)
is reachable from a TransferJob: as the endpoint field of the same name, or another way that
`moverspec.URI_OPTIONS_ELSEWHERE` names (a file from a referenced Secret). The lists are
derived from the backends' endpoints, so an option added there fails here until the CRD
carries it; and each given value is followed through to the engine endpoint the mover opens."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic.alias_generators import to_camel

from ferry.mover import endpoints as ep
from ferry.operator import api, moverspec

KINDS: dict[str, tuple[type[Any], type[api.Model]]] = {
    "s3": (ep.S3Endpoint, api.S3Endpoint),
    "sftp": (ep.SFTPEndpoint, api.SFTPEndpoint),
    "smb": (ep.SMBEndpoint, api.SMBEndpoint),
    "ferry": (ep.FerryEndpoint, api.FerryEndpoint),
}
REQUIRED: dict[str, dict[str, Any]] = {
    "s3": {"bucket": "backups"},
    "sftp": {"host": "files.example"},
    "smb": {"host": "nas.example", "share": "data"},
    "ferry": {"host": "peer.example", "port": 7443, "tlsSecretRef": {"name": "peer-tls"}},
}


def _other_value(model: type[api.Model], name: str, default: Any) -> Any:
    """A valid value for the CRD field `name` that is not the engine's default."""
    info = model.model_fields[name]
    choices = [
        c
        for arg in typing.get_args(info.annotation) or (info.annotation,)
        for c in typing.get_args(arg)
        if typing.get_origin(arg) is typing.Literal
    ]
    if choices:
        return next(c for c in choices if str(c).lower() != str(default).lower())
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    return "x-" + name


@pytest.mark.parametrize("kind", KINDS)
def test_every_uri_option_is_a_transferjob_field(kind: str) -> None:
    engine, crd = KINDS[kind]
    options = ep.uri_options(engine)
    assert options, kind  # derived, not empty by accident
    elsewhere = moverspec.URI_OPTIONS_ELSEWHERE.get(kind, {})
    missing = [o for o in options if o not in elsewhere and o not in crd.model_fields]
    assert not missing, f"URI options of {kind} the TransferJob lacks: {missing}"
    stale = [o for o in elsewhere if o not in options]
    assert not stale, f"URI_OPTIONS_ELSEWHERE names no option of {kind}: {stale}"
    for option, field in elsewhere.items():  # the other way names a real field
        assert to_camel(field.split(".")[0]) in {
            f.alias or n for n, f in crd.model_fields.items()
        } | {to_camel(n) for n in crd.model_fields}, (kind, option, field)


@pytest.mark.parametrize("kind", KINDS)
def test_every_option_given_in_a_transferjob_reaches_the_mover(kind: str) -> None:
    engine, crd = KINDS[kind]
    elsewhere = moverspec.URI_OPTIONS_ELSEWHERE.get(kind, {})
    direct = {o: d for o, d in ep.uri_options(engine).items() if o not in elsewhere}
    given = {o: _other_value(crd, o, d) for o, d in direct.items()}
    endpoint = {kind: {**REQUIRED[kind], **{to_camel(o): v for o, v in given.items()}}}
    spec = api.TransferJobSpec.model_validate(
        {"source": {"pvc": {"claimName": "data"}}, "destination": endpoint}
    )
    opened = moverspec.mover_specs(spec, None).shards[0].destination.to_endpoint()
    for option, value in given.items():
        got = getattr(opened, option)
        assert str(got).lower() == str(value).lower(), (kind, option, got, value)
        assert got != direct[option], (kind, option)  # the default would prove nothing


def test_uri_options_are_what_a_uri_parses() -> None:
    """`uri_options` is the list the URI parser accepts (the same function), not a copy."""
    assert ep.parse_endpoint("sftp://h/p?sessions=7").sessions == 7  # type: ignore[union-attr]
    assert ep.parse_endpoint("smb://h/s?require_signing=false").require_signing is False  # type: ignore[union-attr]
    assert ep.parse_endpoint("s3://b/p?checksum=sha256&list_metadata=0").checksum == "sha256"  # type: ignore[union-attr]
    with pytest.raises(ep.FerryError, match="unknown option 'host'"):
        ep.parse_endpoint("sftp://h/p?host=x")
