"""S3 (and S3-compatible) backend: botocore (boto3's core) plus a lean request path.

The data path (GETs, HEADs, PUTs of small objects and of multipart parts,
listings, deletes) goes over `s3_wire`; botocore's client (`s3_client`) does
the rest and takes over whenever the wire gets an answer it does not expect. Where the wire
can start without it (a path-style custom endpoint, keys from a file or the
environment), botocore is only built if the run needs it.

Objects map to files; "directories" are key prefixes listed one level at a
time with Delimiter='/' (like rclone without --fast-list), so a run's memory
follows the widest directory, not the bucket. Empty directories cannot exist.

Metadata: Ferry keeps the file's mtime (ns), mode and Ferry digest in user
metadata (x-amz-meta-ferry-*), plus rclone's `mtime` for interoperability.
ListObjectsV2 does not return user metadata, so listings are lazy: the
lister HEADs (in parallel) only objects that have a same-sized counterpart on
the other side, which is what rclone pays on a re-sync, and a copied object's
metadata comes with its first GET. `list_metadata=false` never reads it:
mtimes are then LastModified (upload time, 1 s), which only suits one-way
copies compared by size.

Large files go up as multipart uploads written in parallel by the engine's
chunk workers. Resume state (upload id, parts, chunk digests) lives in a small
sidecar object beside the destination key, so another process finds it.
S3 metadata is fixed when an upload starts, but a streamed digest is only
known after the last byte: the engine hands the digest over first where that
is cheap (a local file is hashed once more, as rclone does for its MD5; an S3
source's stored digest costs a HEAD), and otherwise Ferry rewrites the
metadata after completing the upload with an in-place server-side copy
(CopyObject, or UploadPartCopy parts above CopyObject's 5 GiB limit).

Between two S3 endpoints that are the same service and credentials, files are
copied server-side (`copy_from`): no byte passes through Ferry.
"""

from __future__ import annotations

import base64
import configparser
import datetime
import hashlib
import ipaddress
import os
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    Backend,
    Capabilities,
    Entry,
    EntryType,
    Reader,
    SmallFile,
    Writer,
    buffer_resize,
    buffer_write,
    check_name,
    thread_buffer,
)
from ferry.mover.backends.s3_errors import MISSING_BUCKET, MISSING_KEY, Boto, classify, error_code
from ferry.mover.backends.s3_multipart import (
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    PART_PIECE,
    BufferPool,
    MultipartWriter,
)
from ferry.mover.backends.s3_wire import (
    Pieces,
    Response,
    S3Wire,
    StaticCredentials,
    put_headers,
)
from ferry.mover.endpoints import S3Endpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import is_digest
from ferry.mover.options import GiB, MiB, Preserve
from ferry.mover.redact import remember
from ferry.mover.roots import RootId, s3_root

if TYPE_CHECKING:
    from ferry.mover.backends.s3_client import Client

# Chunks of a big upload, unless the run names a size: each transfer holds its chunk until
# the part is sent (it is hashed and signed whole). 8 MiB, as boto3's parts: a 256 MiB upload
# peaked at 123 MiB RSS instead of 188 MiB with 16 MiB chunks, at the same speed.
UPLOAD_CHUNK = 8 * MiB
SINGLE_PUT_MAX = 8 * MiB  # at or below: buffer and PUT once at commit
COPY_MAX = 5 * GiB  # CopyObject's limit; larger objects are copied in UploadPartCopy parts
COPY_PART = 1 * GiB  # part size of those multipart copies (more if 10,000 parts need it)
META_DIGEST, META_MTIME, META_MODE, META_RCLONE_MTIME = (
    "ferry-digest",
    "ferry-mtime-ns",
    "ferry-mode",
    "mtime",
)


_KEY_NAMES = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def _read_credentials(path: str, profile: str | None) -> dict[str, str]:
    """Keys from an AWS credentials file, or from a directory of one-value files (a mounted
    Secret). Values are taken as written (no `%` interpolation) and every failure names the
    file and a line number, never its text: that text is the secret."""
    out: dict[str, str] = {}
    try:
        if os.path.isdir(path):
            for fname in os.listdir(path):
                key = fname.lower().replace("-", "_")
                key = key if key.startswith("aws_") else f"aws_{key}"
                if key in _KEY_NAMES:
                    with open(os.path.join(path, fname), encoding="utf-8") as f:
                        out[key] = f.read().strip()
        else:
            cp = configparser.ConfigParser(interpolation=None)
            with open(path, encoding="utf-8") as f:
                cp.read_file(f)
            section = profile or "default"
            if section not in cp:
                raise FerryError(
                    ErrorKind.AUTH_FAILED, f"credentials file {path} has no [{section}] section"
                )
            out = {k: v for k, v in cp[section].items() if k in _KEY_NAMES}
    except OSError as exc:
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"cannot read credentials file {path} ({exc.strerror})"
        ) from None
    except UnicodeDecodeError:
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"credentials file {path} is not UTF-8 text"
        ) from None
    except configparser.Error as exc:
        errors = getattr(exc, "errors", None)  # ParsingError: [(line number, line)]
        line = errors[0][0] if errors else getattr(exc, "lineno", None)
        at = f" at line {line}" if line else ""
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"credentials file {path} is malformed{at}"
        ) from None
    remember(out.get("aws_secret_access_key"))
    remember(out.get("aws_session_token"))
    if "aws_access_key_id" not in out or "aws_secret_access_key" not in out:
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"credentials file {path} lacks an access key id or secret"
        )
    return out


def _env_keys() -> dict[str, str] | None:
    """Keys from the environment: the first place botocore's credential chain looks."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    remember(secret)
    remember(os.environ.get("AWS_SESSION_TOKEN"))
    if not (key and secret):
        return None
    keys = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    if os.environ.get("AWS_SESSION_TOKEN"):
        keys["aws_session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return keys


def _ip_or_localhost(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class S3Backend(Backend):
    caps = Capabilities(
        chunk_writer=True,
        resumable=True,
        stores_digest=True,
        lazy_meta=True,
        server_side_copy=True,
        digest_first_above=SINGLE_PUT_MAX,
        mtime_precision_ns=1,
        atomic_rename=True,
        permissions=True,
        empty_dirs=False,
        min_chunk_size=MIN_PART,
        default_chunk_size=UPLOAD_CHUNK,
        max_chunk_size=MAX_PART,
        max_chunks=MAX_PARTS,
        read_streams=4,  # rclone's --multi-thread-streams default
        put_small=True,
        get_small=True,
    )

    def __init__(self, ep: S3Endpoint, max_workers: int = 16) -> None:
        self.ep = ep
        self.bucket = ep.bucket
        self.prefix = ep.prefix.strip("/")
        self.path_style = ep.path_style or bool(
            ep.endpoint_url and _ip_or_localhost(ep.endpoint_url)
        )
        checksum = (ep.checksum or "crc32").lower()
        self.checksum_alg = None if checksum == "none" else checksum.upper()
        self._keys = (
            _read_credentials(ep.credentials_file, ep.profile) if ep.credentials_file else None
        )
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self.tls = threading.local()  # per-thread streaming buffers
        self.part_buffers = BufferPool(PART_PIECE, keep=16)
        # The data path skips botocore's layers; where it can start without botocore,
        # botocore is only imported if the run needs it.
        wire = self._direct_wire()
        if wire is None:
            c = self._make_client()
            wire = S3Wire.probe(c.client, self.bucket, c.credentials, c.ca_bundle, timeout=120)
        self.wire = wire or S3Wire.unused()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3-head")

    def _direct_wire(self) -> S3Wire | None:
        """The wire where botocore's rules are plain to follow: a path-style custom endpoint,
        keys from a file or the environment, no AWS config file, and a CA bundle named
        for HTTPS."""
        ep = self.ep
        config_file = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
        if not (ep.endpoint_url and self.path_style) or os.path.exists(config_file):
            return None
        keys = self._keys or (None if ep.profile else _env_keys())
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
                from ferry.mover.backends.s3_client import make_client

                try:
                    self._client = make_client(
                        self.ep, self.path_style, self.checksum_alg, self._keys, _parse_timestamp
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

    # -- naming ---------------------------------------------------------------------------
    def describe(self) -> str:
        return self.ep.describe()

    def root_id(self) -> RootId:
        """Without ?endpoint=, botocore takes one from the environment when it is set there."""
        ep = self.ep
        url = (
            ep.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return s3_root(url, ep.region, ep.bucket, ep.prefix)

    def key(self, rel: str) -> str:
        if not rel:
            return self.prefix
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _dir_prefix(self, rel: str) -> str:
        k = self.key(rel)
        return k + "/" if k else ""

    def err(
        self,
        exc: BaseException,
        rel: str | None = None,
        missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
    ) -> FerryError:
        return classify(exc, self.describe(), rel, missing)

    # -- metadata -------------------------------------------------------------------------
    def _entry_from_head(self, name: str, head: dict[str, Any]) -> Entry:
        meta = head.get("Metadata", {}) or {}
        size = int(head.get("ContentLength", 0))
        e = Entry(name, EntryType.FILE, size=size, mtime_ns=_ts_ns(head.get("LastModified")))
        _apply_meta(e, meta)
        return e

    def put_small(self, files: list[SmallFile], preserve: Preserve) -> list[FerryError | None]:
        """Pipelined PUTs on the wire, each with all its metadata (as SinglePutWriter)."""
        calls: list[tuple[str, dict[str, str], bytes]] = []
        put_args = self.put_args()
        for f in files:
            args = {**put_args, **self.checksum_args([f.data])}
            headers = put_headers(args, self.object_meta(f.entry, f.digest, preserve))
            if headers is None:  # botocore's to send, one at a time
                return [FerryError(ErrorKind.USAGE, "not for the wire", f.rel) for f in files]
            calls.append((self.key(f.rel), headers, f.data))
        return [
            None
            if r is not None and r.status == 200
            else FerryError(
                ErrorKind.TRANSIENT, f"{self.describe()}: not written in a batch", f.rel
            )
            for f, r in zip(files, self.wire.pipeline("PUT", calls), strict=True)
        ]

    def get_small(self, files: list[tuple[str, Entry]]) -> list[bytes | None]:
        """Pipelined GETs on the wire; an answer that is not the whole object as listed is
        None (read again on its own, which tells what changed)."""
        gets = [(self.key(rel), {"Range": f"bytes=0-{e.size - 1}"}) for rel, e in files if e.size]
        biggest = max((e.size for _, e in files), default=0)
        answers = iter(self.wire.pipeline("GET", [(k, h, b"") for k, h in gets], biggest))
        out: list[bytes | None] = []
        for _, e in files:
            if not e.size:  # its metadata needs a HEAD (open_read): on its own
                out.append(None if self.ep.list_metadata else b"")
                continue
            r = next(answers)
            if r is None or r.status not in (200, 206) or len(r.body) != e.size:
                out.append(None)
            elif (r.headers.get("content-range") or "/").rpartition("/")[2] not in (
                "",
                f"{e.size}",
            ):
                out.append(None)  # an object of another size now
            else:
                if self.ep.list_metadata:
                    _apply_meta(e, r.meta())
                out.append(r.body)
        return out

    def head(self, key: str) -> dict[str, Any] | None:
        r = self.wire.request("HEAD", key)
        if r is not None and r.status == 404:
            return None  # a HEAD's 404 says no more than this (no body, no code)
        if r is not None and r.status == 200:
            return {
                "ContentLength": int(r.headers.get("content-length", 0)),
                "LastModified": _parse_timestamp(r.headers["last-modified"])
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

    def object_meta(
        self, entry: Entry, digest: str | None, preserve: Preserve | None
    ) -> dict[str, str]:
        meta: dict[str, str] = {}
        if preserve is None or preserve.times:
            meta[META_MTIME] = str(entry.mtime_ns)
            meta[META_RCLONE_MTIME] = f"{entry.mtime_ns // 10**9}.{entry.mtime_ns % 10**9:09d}"
        if entry.mode and (preserve is None or preserve.perms):
            meta[META_MODE] = f"{entry.mode & 0o7777:o}"
        if digest and is_digest(digest):
            meta[META_DIGEST] = digest
        return meta

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

    # -- the interface --------------------------------------------------------------------
    def bucket_exists(self, missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND) -> bool:
        """HEAD the bucket; a bodiless 403 is re-asked with a listing so bad keys read as AUTH_FAILED."""
        r = self.wire.request("HEAD", "")
        if r is not None and r.status in (200, 404):
            return r.status == 200
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except Boto.ClientError as exc:
            if error_code(exc) in MISSING_BUCKET | MISSING_KEY:
                return False
            if error_code(exc) not in ("403", "Forbidden"):
                raise self.err(exc, None, missing) from None
        except Exception as exc:
            raise self.err(exc, None, missing) from None
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            return True
        except Boto.ClientError as exc:
            if error_code(exc) in MISSING_BUCKET:
                return False
            raise self.err(exc, None, missing) from None
        except Exception as exc:
            raise self.err(exc, None, missing) from None

    def root_type(self) -> EntryType | None:
        """The root's type from its own HEAD and listing; the bucket is asked after only
        when they find nothing or fail, to tell a missing bucket from a missing prefix (a
        round trip fewer for every run that finds its root)."""
        if not self.prefix:
            return EntryType.DIR if self.bucket_exists() else None
        try:
            e = self.stat("")
        except FerryError:
            if not self.bucket_exists():
                return None
            raise
        if e is None and not self.bucket_exists():
            return None
        return e.type if e else None

    def _list(
        self, prefix: str, delimiter: str = "", max_keys: int = 0
    ) -> tuple[list[str], list[tuple[str, int, int]]]:
        """Common prefixes and objects (key, size, LastModified in ns) under `prefix`, every
        page (the first only with `max_keys`): on the wire, else through botocore."""
        got = self.wire.list_objects(prefix, delimiter, max_keys)
        if got is not None:
            objs = [(k, n, _ts_ns(_parse_timestamp(t)) if t else 0) for k, n, t in got.objects]
            return got.prefixes, objs
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        pages = (
            [self.client.list_objects_v2(MaxKeys=max_keys, **args)]
            if max_keys
            else self.client.get_paginator("list_objects_v2").paginate(**args)
        )
        prefixes: list[str] = []
        objects: list[tuple[str, int, int]] = []
        for page in pages:
            prefixes += [cp["Prefix"] for cp in page.get("CommonPrefixes", []) or []]
            objects += [
                (o["Key"], int(o["Size"]), _ts_ns(o.get("LastModified")))
                for o in page.get("Contents", []) or []
            ]
        return prefixes, objects

    def list_dir(self, rel: str) -> list[Entry]:
        prefix = self._dir_prefix(rel)
        files: list[Entry] = []
        dirs: list[Entry] = []
        where = f"{self.describe()} key prefix {prefix!r}"
        try:
            prefixes, objects = self._list(prefix, "/")
        except Exception as exc:
            raise self.err(exc, rel) from None
        for p in prefixes:
            name = p[len(prefix) : -1]
            if not name.startswith(INTERNAL_PREFIX):
                dirs.append(Entry(check_name(name, where), EntryType.DIR))
        for key, size, mtime_ns in objects:
            name = key[len(prefix) :]
            if name and not name.startswith(INTERNAL_PREFIX):  # "": the directory's marker
                files.append(Entry(check_name(name, where), EntryType.FILE, size, mtime_ns))
        return dirs + files

    def fill_meta(self, rel: str, entries: list[Entry]) -> None:
        """HEAD each object in parallel for Ferry's metadata (see the module docstring)."""
        if not self.ep.list_metadata:
            return
        prefix = self._dir_prefix(rel)

        def one(e: Entry) -> None:
            h = self.head(prefix + e.name)
            if h is not None and int(h.get("ContentLength", -1)) == e.size:
                _apply_meta(e, h.get("Metadata", {}) or {})

        try:
            for _ in self._pool.map(one, entries):
                pass
        except Exception as exc:
            raise self.err(exc, rel) from None

    def stat(self, rel: str) -> Entry | None:
        name = (
            rel.rsplit("/", 1)[-1]
            if rel
            else (self.prefix.rsplit("/", 1)[-1] if self.prefix else "")
        )
        try:
            if rel or self.prefix:
                h = self.head(self.key(rel))
                if h is not None:
                    return self._entry_from_head(name, h)
            prefixes, objects = self._list(self._dir_prefix(rel), max_keys=1)
        except Exception as exc:
            raise self.err(exc, rel) from None
        if prefixes or objects or not (rel or self.prefix):
            return Entry(name, EntryType.DIR)
        return None

    def open_read(self, rel: str, entry: Entry) -> Reader:
        if entry.size == 0 and self.ep.list_metadata:
            # Nothing to GET: the metadata a lazy listing left out needs its own HEAD.
            try:
                h = self.head(self.key(rel))
            except Exception as exc:
                raise self.err(exc, rel) from None
            if h is not None and int(h.get("ContentLength", -1)) == 0:
                _apply_meta(entry, h.get("Metadata", {}) or {})
        return S3Reader(self, self.key(rel), rel, entry)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        if entry.size <= SINGLE_PUT_MAX:
            return SinglePutWriter(self, rel, entry)
        return MultipartWriter(self, rel, entry, resume_key)

    def mkdir(self, rel: str) -> None:
        return None  # prefixes exist implicitly; empty directories cannot be represented

    def remove(self, rel: str, entry: Entry) -> None:
        # A directory can only be a console-made marker object ("dir/"); deleting a
        # missing key succeeds, so virtual directories need nothing else.
        try:
            self.delete(self.key(rel) + ("/" if entry.type == EntryType.DIR else ""))
        except Exception as exc:
            raise self.err(exc, rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def delete(self, key: str) -> None:
        r = self.wire.request("DELETE", key)
        if r is None or r.status not in (200, 204):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        """Metadata-only change of an object: an in-place copy with replaced metadata."""
        if entry.type != EntryType.FILE:
            return
        key = self.key(rel)
        try:
            h = self.head(key)
            if h is None:
                return
            meta = dict(h.get("Metadata", {}) or {})
            meta.update(self.object_meta(entry, meta.get(META_DIGEST), preserve))
            self.copy_object(self.bucket, key, key, int(h.get("ContentLength", 0)), meta)
        except Exception as exc:
            raise self.err(exc, rel, ErrorKind.DESTINATION_NOT_FOUND) from None

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

            parts = list(self._pool.map(one, range(-(-size // part))))
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

    def same_service(self, other: Backend) -> bool:
        """Whether objects of `other` can be server-side copied here with these credentials."""
        if not isinstance(other, S3Backend):
            return False
        a, b = self.ep, other.ep
        return (a.endpoint_url, a.region, a.profile, a.credentials_file) == (
            b.endpoint_url,
            b.region,
            b.profile,
            b.credentials_file,
        )

    def copy_from(
        self, src: Backend, src_rel: str, entry: Entry, rel: str, preserve: Preserve
    ) -> None:
        assert isinstance(src, S3Backend)
        if not entry.digest and src.ep.list_metadata:
            src.fill_meta(src_rel.rpartition("/")[0], [entry])  # the lazy listing's metadata
        try:
            self.copy_object(
                src.bucket,
                src.key(src_rel),
                self.key(rel),
                entry.size,
                self.object_meta(entry, entry.digest, preserve),
            )
        except Exception as exc:
            raise self.err(exc, rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def prepare_destination(self) -> None:
        if not self.bucket_exists(ErrorKind.DESTINATION_NOT_FOUND):
            raise FerryError(
                ErrorKind.DESTINATION_NOT_FOUND,
                f"{self.describe()}: bucket {self.bucket!r} does not exist",
            )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.wire.close()


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}


def _parse_timestamp(text: str) -> datetime.datetime:
    """S3's two timestamp forms without dateutil (botocore's default parser, which costs
    more than the rest of a listing entry): ISO 8601 in XML, RFC 1123 in headers."""
    try:
        if text[:1].isdigit():
            return datetime.datetime.fromisoformat(text)
        _, day, month, year, hms, zone = text.split()  # "Sun, 06 Nov 1994 08:49:37 GMT"
        h, m, sec = hms.split(":")
        if zone != "GMT":
            raise ValueError(text)
        return datetime.datetime(
            int(year), _MONTHS[month], int(day), int(h), int(m), int(sec), tzinfo=datetime.UTC
        )
    except (ValueError, TypeError, IndexError, KeyError):
        from ferry.mover.backends.s3_client import parse_timestamp

        return parse_timestamp(text)


def _ts_ns(ts: Any) -> int:
    if ts is None:
        return 0
    return int(ts.timestamp()) * 10**9


def _apply_meta(e: Entry, meta: dict[str, str]) -> None:
    if meta.get(META_MTIME, "").isdigit():
        e.mtime_ns = int(meta[META_MTIME])
    elif META_RCLONE_MTIME in meta:
        try:
            sec, _, frac = meta[META_RCLONE_MTIME].partition(".")
            e.mtime_ns = int(sec) * 10**9 + int((frac + "000000000")[:9] or 0)
        except ValueError:
            pass
    try:
        e.mode = int(meta.get(META_MODE, "0"), 8)
    except ValueError:
        e.mode = 0
    d = meta.get(META_DIGEST)
    e.digest = d if is_digest(d) else None


class S3Reader(Reader):
    """Ranged GETs; the first response's ETag pins the version for the rest (If-Match).

    The first response also completes the entry's metadata (mtime, mode, digest) that a
    lazy listing left out, before anything is committed with it."""

    def __init__(self, be: S3Backend, key: str, rel: str, entry: Entry) -> None:
        self.be, self.key, self.rel, self.size = be, key, rel, entry.size
        self.entry = entry
        self.etag: str | None = None
        self._changed: str | None = None

    def _get(self, offset: int, length: int) -> Any:
        args: dict[str, Any] = {
            "Bucket": self.be.bucket,
            "Key": self.key,
            "Range": f"bytes={offset}-{offset + length - 1}",
        }
        if self.etag:
            args["IfMatch"] = self.etag
        resp = self.be.client.get_object(**args)
        self._seen(resp.get("ContentRange"), resp.get("ETag"), resp.get("Metadata"))
        return resp

    def _seen(self, content_range: str | None, etag: str | None, meta: dict | None) -> None:
        """Check a response's object size; the first one pins the ETag and gives metadata."""
        total = str(content_range or "").rpartition("/")[2]
        if total.isdigit() and int(total) != self.size:
            self._changed = f"size changed from {self.size} to {total}"
            raise FerryError(
                ErrorKind.SOURCE_CHANGED, f"{self.be.describe()}: object {self._changed}", self.rel
            )
        if self.etag is None:
            self.etag = etag
            if self.be.ep.list_metadata:
                _apply_meta(self.entry, meta or {})

    def _wire_get(self, offset: int, length: int) -> Response | None:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if self.etag:
            headers["If-Match"] = self.etag
        r = self.be.wire.request("GET", self.key, headers, limit=length)
        if r is None or r.status not in (200, 206) or len(r.body) != length:
            return None  # botocore asks again, and owns whatever went wrong
        return r

    def read_at(self, offset: int, length: int) -> bytes:
        length = min(length, self.size - offset)
        if length <= 0:
            return b""
        try:
            r = self._wire_get(offset, length)
            if r is not None:
                self._seen(r.headers.get("content-range"), r.headers.get("etag"), r.meta())
                return r.body
            return bytes(self._get(offset, length)["Body"].read())
        except Exception as exc:
            raise self.be.err(exc, self.rel) from None

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[bytes | memoryview]:
        """One ranged GET, streamed: on the wire into a per-thread buffer, else botocore's."""
        length = min(length, self.size - offset)
        if length <= 0:
            return
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if self.etag:
            headers["If-Match"] = self.etag
        got = self.be.wire.stream(self.key, headers)
        if got is None or got[0].status not in (200, 206):
            yield from self._iter_botocore(offset, length, piece)
            return
        r, body = got
        try:
            if int(r.headers.get("content-length", -1)) != length:
                raise FerryError(ErrorKind.TRANSIENT, f"{self.be.describe()}: bad range", self.rel)
            self._seen(r.headers.get("content-range"), r.headers.get("etag"), r.meta())
            view = thread_buffer(self.be.tls, piece)
            done = 0
            while done < length:
                n = body.readinto(view[: min(piece, length - done)])
                if not n:
                    raise FerryError(
                        ErrorKind.TRANSIENT, f"{self.be.describe()}: short read", self.rel
                    )
                done += n
                yield view[:n]
        except FerryError:
            raise
        except Exception as exc:
            raise self.be.err(exc, self.rel) from None
        finally:
            body.close()

    def _iter_botocore(self, offset: int, length: int, piece: int) -> Iterator[bytes]:
        try:
            body = self._get(offset, length)["Body"]
            got = 0
            while got < length:
                data = body.read(min(piece, length - got))
                if not data:
                    raise FerryError(
                        ErrorKind.TRANSIENT, f"{self.be.describe()}: short read", self.rel
                    )
                got += len(data)
                yield data
        except FerryError:
            raise
        except Exception as exc:
            raise self.be.err(exc, self.rel) from None

    def changed(self) -> str | None:
        return self._changed


class SinglePutWriter(Writer):
    """Small objects: buffer in memory, one PUT at commit with all metadata (digest included)."""

    def __init__(self, be: S3Backend, rel: str, entry: Entry) -> None:
        self.be, self.rel = be, rel
        self.buf = bytearray(entry.size)
        self.size = entry.size

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        buffer_write(self.buf, offset, data)

    def set_size(self, size: int) -> None:
        buffer_resize(self.buf, size)

    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        body = bytes(self.buf)
        args = {**self.be.put_args(), **self.be.checksum_args([body])}
        meta = self.be.object_meta(entry, digest, preserve)
        key = self.be.key(self.rel)
        headers = put_headers(args, meta)
        if headers is not None:
            r = self.be.wire.request("PUT", key, headers, body)
            if r is not None and r.status == 200:
                self.buf = bytearray()
                return
        try:
            self.be.client.put_object(
                Bucket=self.be.bucket,
                Key=key,
                Body=body,
                Metadata=meta,
                **args,
            )
        except Exception as exc:
            raise self.be.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None
        self.buf = bytearray()

    def abort(self, keep_partial: bool = False) -> None:
        self.buf = bytearray()

    def read_back(self, offset: int, length: int) -> bytes | None:
        return None
