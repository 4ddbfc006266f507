"""The botocore client of the S3 backend, built only when a run needs it.

Importing botocore and building an S3 client costs ~0.3 s, as long as a run of
small objects takes on its own; `S3Backend` builds it on the first call that
the hand-signed path (`wire.api`) does not make: multipart uploads, copies,
errors, and the whole run where that path cannot start without botocore's
endpoint and credential rules.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, NamedTuple

import botocore.credentials
import botocore.httpsession
import botocore.loaders
import botocore.parsers
import botocore.session
from botocore.config import Config

from ferry.mover.endpoints import S3Endpoint
from ferry.mover.redact import remember


class _S3Loader(botocore.loaders.Loader):
    """botocore's model loader, minus its check of the service name against every installed
    model directory (hundreds of listdirs, a noticeable part of each start): we load s3 only."""

    def __init__(self, data_path: str | None) -> None:
        paths = [
            os.path.expanduser(os.path.expandvars(p))
            for p in (data_path or "").split(os.pathsep)
            if p
        ]
        super().__init__(extra_search_paths=paths)

    def list_available_services(self, type_name: str) -> list[str]:
        return ["s3"]


class Client(NamedTuple):
    client: Any  # botocore's S3 client
    credentials: Any  # botocore Credentials, or None when the chain found none
    ca_bundle: str | None


def make_client(
    ep: S3Endpoint,
    path_style: bool,
    checksum_alg: str | None,
    keys: dict[str, str] | None,
    timestamp_parser: Any,
) -> Client:
    """An S3 client for `ep`; `keys` (read from a credentials file) replace the AWS chain."""
    config = Config(
        s3={"addressing_style": "path" if path_style else "auto"},
        max_pool_connections=64,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
        # Checksums go in headers we compute (checksum_args); botocore's own would stream the
        # body aws-chunked with a trailer, which S3-compatible servers handle slowly or not at all.
        request_checksum_calculation="when_supported"
        if checksum_alg == "CRC32C"
        else "when_required",
        response_checksum_validation="when_required",
        parameter_validation=False,  # our calls are fixed; the server validates anyway
        signature_version="s3v4",  # as requests are; presigned URLs too (wire.api's probe)
    )
    bs = (
        botocore.session.Session(profile=ep.profile)
        if ep.profile and not keys
        else botocore.session.Session()
    )
    bs.register_component("data_loader", _S3Loader(bs.get_config_variable("data_path")))
    bs.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=timestamp_parser
    )
    if keys:
        credentials = botocore.credentials.Credentials(
            keys["aws_access_key_id"], keys["aws_secret_access_key"], keys.get("aws_session_token")
        )
    else:
        credentials = bs.get_credentials()  # the session keeps it: the client uses it too
        if type(credentials) is botocore.credentials.Credentials:  # static: reading costs nothing
            remember(credentials.secret_key)
            remember(credentials.token)
    region = ep.region or bs.get_config_variable("region") or "us-east-1"
    client = bs.create_client(
        "s3", endpoint_url=ep.endpoint_url, region_name=region, config=config, **(keys or {})
    )
    ca_bundle = bs.get_config_variable("ca_bundle") or botocore.httpsession.get_cert_path(True)
    return Client(client, credentials, ca_bundle)


def parse_timestamp(text: str) -> datetime.datetime:
    """botocore's parser, for the timestamp forms ours does not know."""
    parsed: datetime.datetime = botocore.parsers.DEFAULT_TIMESTAMP_PARSER(text)
    return parsed
