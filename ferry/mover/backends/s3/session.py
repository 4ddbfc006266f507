"""What an S3 backend's readers and writers share: the bucket and prefix, botocore's client
(built on first use), the wire, the checksum and write options, and the few object
operations they all call (HEAD, DELETE, server-side copy). Readers and writers take this,
not the backend."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ferry.mover.backends.s3.credentials import env_keys, read_credentials
from ferry.mover.backends.s3.errors import MISSING_KEY, Boto, classify, error_code
from ferry.mover.backends.s3.meta import parse_timestamp
from ferry.mover.backends.s3.wire.api import Pieces, S3Wire, StaticCredentials
from ferry.mover.endpoints import S3Endpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import GiB, MiB

if TYPE_CHECKING:
    from ferry.mover.backends.s3.client import Client

COPY_MAX = 5 * GiB  # CopyObject's limit; larger objects are copied in UploadPartCopy parts
COPY_PART = 1 * GiB  # part size of those multipart copies (more if 10,000 parts need it)
MIN_PART = 5 * MiB  # S3's limits on multipart uploads
MAX_PART = 5 * GiB
MAX_PARTS = 10_000


def _ip_or_localhost(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class S3Session:
    """One endpoint's connection state (see the module docstring)."""

    def __init__(self, ep: S3Endpoint, accelerators: bool = True, max_workers: int = 16) -> None:
        self.ep = ep
        self.bucket = ep.bucket
        self.prefix = ep.prefix.strip("/")
        self.path_style = ep.path_style or bool(
            ep.endpoint_url and _ip_or_localhost(ep.endpoint_url)
        )
        checksum = (ep.checksum or "crc32").lower()
        self.checksum_alg = None if checksum == "none" else checksum.upper()
        self._keys = (
            read_credentials(ep.credentials_file, ep.profile) if ep.credentials_file else None
        )
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self.tls = threading.local()  # per-thread streaming buffers
        # The data path skips botocore's layers; where it can start without botocore,
        # botocore is only imported if the run needs it. Without accelerators the wire is
        # off from the start: every call answers None and botocore does it.
        wire = None
        if accelerators:
            wire = self._direct_wire()
            if wire is None:
                c = self._make_client()
                wire = S3Wire.probe(c.client, self.bucket, c.credentials, c.ca_bundle, timeout=120)
        self.wire = wire or S3Wire.unused()
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3-head")

    def _direct_wire(self) -> S3Wire | None:
        """The wire where botocore's rules are plain to follow: a path-style custom endpoint,
        keys from a file or the environment, no AWS config file, and a CA bundle named
        for HTTPS."""
        ep = self.ep
        config_file = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
        if not (ep.endpoint_url and self.path_style) or os.path.exists(config_file):
            return None
        keys = self._keys or (None if ep.profile else env_keys())
        ca_bundle = os.environ.get("AWS_CA_BUNDLE")
        if keys is None or (ep.endpoint_url.startswith("https:") and not ca_bundle):
            return None
        creds = StaticCredentials(
            keys["aws_access_key_id"], keys["aws_secret_access_key"], keys.get("aws_session_token")
        )
        region = ep.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return S3Wire.direct(ep.endpoint_url, self.bucket, region, creds, ca_bundle, timeout=120)

    def _make_client(self) -> Client:
        with self._client_lock:
            if self._client is None:
                Boto.load()
                from ferry.mover.backends.s3.client import make_client

                try:
                    self._client = make_client(
                        self.ep, self.path_style, self.checksum_alg, self._keys, parse_timestamp
                    )
                except Boto.BotoCoreError as exc:  # an unknown profile, a broken AWS file
                    raise FerryError(
                        ErrorKind.AUTH_FAILED, f"{self.describe()}: {type(exc).__name__}: {exc}"
                    ) from None
            return self._client

    @property
    def client(self) -> Any:
        """botocore's S3 client, built on first use."""
        return (self._client or self._make_client()).client

    def describe(self) -> str:
        return self.ep.describe()

    def key(self, rel: str) -> str:
        if not rel:
            return self.prefix
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def dir_prefix(self, rel: str) -> str:
        k = self.key(rel)
        return k + "/" if k else ""

    def err(
        self,
        exc: BaseException,
        rel: str | None = None,
        missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
    ) -> FerryError:
        return classify(exc, self.describe(), rel, missing)

    def head(self, key: str) -> dict[str, Any] | None:
        r = self.wire.request("HEAD", key)
        if r is not None and r.status == 404:
            return None  # a HEAD's 404 says no more than this (no body, no code)
        if r is not None and r.status == 200:
            return {
                "ContentLength": int(r.headers.get("content-length", 0)),
                "LastModified": parse_timestamp(r.headers["last-modified"])
                if "last-modified" in r.headers
                else None,
                "ETag": r.headers.get("etag"),
                "Metadata": r.meta(),
            }
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except Boto.ClientError as exc:
            if error_code(exc) in MISSING_KEY:
                return None
            raise

    def checksum_args(self, body: Pieces) -> dict[str, Any]:
        """The additional-checksum parameters for one upload of `body` (in pieces)."""
        alg = self.checksum_alg
        if alg is None:
            return {}
        if alg == "CRC32":
            crc = 0
            for p in body:
                crc = zlib.crc32(p, crc)
            value = crc.to_bytes(4, "big")
        elif alg in ("SHA1", "SHA256"):
            h = hashlib.new(alg.lower())
            for p in body:
                h.update(p)
            value = h.digest()
        else:
            return {"ChecksumAlgorithm": alg}  # botocore computes it (CRC32C needs awscrt)
        return {f"Checksum{alg}": base64.b64encode(value).decode()}

    def put_args(self) -> dict[str, Any]:
        """Per-object options every write carries: encryption, storage class."""
        args: dict[str, Any] = {}
        if self.ep.sse:
            sse = self.ep.sse.lower()
            args["ServerSideEncryption"] = (
                "aws:kms" if sse in ("kms", "aws:kms", "sse-kms") else "AES256"
            )
            if args["ServerSideEncryption"] == "aws:kms" and self.ep.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.ep.sse_kms_key_id
        if self.ep.storage_class:
            args["StorageClass"] = self.ep.storage_class
        return args

    def delete(self, key: str) -> None:
        r = self.wire.request("DELETE", key)
        if r is None or r.status not in (200, 204):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def copy_object(
        self, src_bucket: str, src_key: str, key: str, size: int, meta: dict[str, str]
    ) -> None:
        """Server-side copy with replaced metadata (also in place, to rewrite metadata).

        The checksum algorithm is named again so the server computes a checksum of the new
        object; a carried-over multipart (composite) checksum would make checksum-validating
        readers (boto3, the AWS CLI) reject the copy."""
        args = self.put_args()
        if self.checksum_alg:
            args["ChecksumAlgorithm"] = self.checksum_alg
        source = {"Bucket": src_bucket, "Key": src_key}
        c = self.client
        if size <= COPY_MAX:
            c.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource=source,
                Metadata=meta,
                MetadataDirective="REPLACE",
                **args,
            )
            return
        if not self._copy_in_parts(source, key, size, meta, args):
            # The service gave no usable per-part checksum (versitygw 1.8 answers with the
            # whole source's "-N" value), and an upload created with an algorithm cannot be
            # completed without one: copy again without naming it.
            args.pop("ChecksumAlgorithm", None)
            self._copy_in_parts(source, key, size, meta, args)

    def _copy_in_parts(
        self, source: dict[str, str], key: str, size: int, meta: dict[str, str], args: dict
    ) -> bool:
        """A multipart UploadPartCopy; False (upload aborted) when a part checksum is missing."""
        c = self.client
        alg = args.get("ChecksumAlgorithm")
        part = max(COPY_PART, -(-size // MAX_PARTS))
        upload_id = c.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=meta, **args)[
            "UploadId"
        ]
        try:

            def one(i: int) -> dict[str, Any] | None:
                lo = i * part
                resp = c.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=i + 1,
                    CopySource=source,
                    CopySourceRange=f"bytes={lo}-{min(lo + part, size) - 1}",
                )["CopyPartResult"]
                item = {"PartNumber": i + 1, "ETag": resp["ETag"]}
                if alg:
                    value = resp.get(f"Checksum{alg}") or "-"
                    if "-" in value:
                        return None
                    item[f"Checksum{alg}"] = value
                return item

            parts = list(self.pool.map(one, range(-(-size // part))))
            if None in parts:
                c.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                return False
            c.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return True
        except BaseException:
            try:
                c.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass
            raise

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.wire.close()
