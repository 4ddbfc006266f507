"""S3 (and S3-compatible) backend: botocore (boto3's core) plus a lean request path.

The data path (GETs, HEADs, PUTs of small objects and of multipart parts,
listings, deletes) goes over `wire.api`; botocore's client (`client`) does
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

import os
from typing import TYPE_CHECKING, Any

from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    KERNEL_WRITE_BACK,
    Backend,
    Durability,
    Entry,
    EntryType,
    GetSmall,
    Holds,
    LazyMeta,
    Limits,
    PutSmall,
    Reader,
    Resumable,
    ServerSideCopy,
    SmallFile,
    Writer,
    check_name,
)
from ferry.mover.backends.s3.errors import MISSING_BUCKET, MISSING_KEY, Boto, error_code
from ferry.mover.backends.s3.files import S3Reader, SinglePutWriter
from ferry.mover.backends.s3.meta import (
    META_DIGEST,
    apply_meta,
    object_meta,
    parse_timestamp,
    ts_ns,
)
from ferry.mover.backends.s3.multipart import PART_PIECE, BufferPool, MultipartWriter
from ferry.mover.backends.s3.session import MAX_PART, MAX_PARTS, MIN_PART, S3Session
from ferry.mover.backends.s3.wire.api import put_headers
from ferry.mover.endpoints import S3Endpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import S3_UPLOAD_CHUNK, MiB, Preserve
from ferry.mover.roots import RootId, s3_root

# Chunks of a big upload, unless the run names a size: each transfer holds its chunk until
# the part is sent (it is hashed and signed whole). 8 MiB, as boto3's parts: a 256 MiB upload
# peaked at 123 MiB RSS instead of 188 MiB with 16 MiB chunks, at the same speed.
UPLOAD_CHUNK = S3_UPLOAD_CHUNK
SINGLE_PUT_MAX = 8 * MiB  # at or below: buffer and PUT once at commit


class S3Backend(Backend):
    """Objects as files. Optional capabilities: ServerSideCopy, PutSmall, GetSmall (on the
    wire; without it each batch answers "not this way" and the engine goes file by file),
    Resumable (multipart uploads), LazyMeta (user metadata costs a HEAD)."""

    holds = Holds(
        stores_digest=True,
        mtime_precision_ns=1,
        atomic_rename=True,
        permissions=True,
        empty_dirs=False,
    )
    limits = Limits(
        chunk_writer=True,
        digest_first_above=SINGLE_PUT_MAX,
        min_chunk_size=MIN_PART,
        default_chunk_size=UPLOAD_CHUNK,
        max_chunk_size=MAX_PART,
        max_chunks=MAX_PARTS,
        read_streams=4,  # rclone's --multi-thread-streams default
    )

    def __init__(
        self,
        ep: S3Endpoint,
        durability: Durability = KERNEL_WRITE_BACK,
        accelerators: bool = True,
        max_workers: int = 16,
    ) -> None:
        self.ep = ep
        self.durability = durability  # an answered PUT is durable: nothing to ask for
        self.session = S3Session(ep, accelerators, max_workers)
        self.part_buffers = BufferPool(PART_PIECE, keep=16)

    def describe(self) -> str:
        return self.session.describe()

    def root_id(self) -> RootId:
        """Without ?endpoint=, botocore takes one from the environment when it is set there."""
        ep = self.ep
        url = (
            ep.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return s3_root(url, ep.region, ep.bucket, ep.prefix)

    def _entry_from_head(self, name: str, head: dict[str, Any]) -> Entry:
        meta = head.get("Metadata", {}) or {}
        size = int(head.get("ContentLength", 0))
        e = Entry(name, EntryType.FILE, size=size, mtime_ns=ts_ns(head.get("LastModified")))
        apply_meta(e, meta)
        return e

    def put_small(self, files: list[SmallFile], preserve: Preserve) -> list[FerryError | None]:
        """Pipelined PUTs on the wire, each with all its metadata (as SinglePutWriter)."""
        calls: list[tuple[str, dict[str, str], bytes]] = []
        put_args = self.session.put_args()
        for f in files:
            args = {**put_args, **self.session.checksum_args([f.data])}
            headers = put_headers(args, object_meta(f.entry, f.digest, preserve))
            if headers is None:  # botocore's to send, one at a time
                return [FerryError(ErrorKind.USAGE, "not for the wire", f.rel) for f in files]
            calls.append((self.session.key(f.rel), headers, f.data))
        return [
            None
            if r is not None and r.status == 200
            else FerryError(
                ErrorKind.TRANSIENT, f"{self.describe()}: not written in a batch", f.rel
            )
            for f, r in zip(files, self.session.wire.pipeline("PUT", calls), strict=True)
        ]

    def get_small(self, files: list[tuple[str, Entry]]) -> list[bytes | None]:
        """Pipelined GETs on the wire; an answer that is not the whole object as listed is
        None (read again on its own, which tells what changed)."""
        gets = [
            (self.session.key(rel), {"Range": f"bytes=0-{e.size - 1}"})
            for rel, e in files
            if e.size
        ]
        biggest = max((e.size for _, e in files), default=0)
        answers = iter(self.session.wire.pipeline("GET", [(k, h, b"") for k, h in gets], biggest))
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
                    apply_meta(e, r.meta())
                out.append(r.body)
        return out

    def bucket_exists(self, missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND) -> bool:
        """HEAD the bucket; a bodiless 403 is re-asked with a listing so bad keys read as AUTH_FAILED."""
        r = self.session.wire.request("HEAD", "")
        if r is not None and r.status in (200, 404):
            return r.status == 200
        try:
            self.session.client.head_bucket(Bucket=self.session.bucket)
            return True
        except Boto.ClientError as exc:
            if error_code(exc) in MISSING_BUCKET | MISSING_KEY:
                return False
            if error_code(exc) not in ("403", "Forbidden"):
                raise self.session.err(exc, None, missing) from None
        except Exception as exc:
            raise self.session.err(exc, None, missing) from None
        try:
            self.session.client.list_objects_v2(Bucket=self.session.bucket, MaxKeys=1)
            return True
        except Boto.ClientError as exc:
            if error_code(exc) in MISSING_BUCKET:
                return False
            raise self.session.err(exc, None, missing) from None
        except Exception as exc:
            raise self.session.err(exc, None, missing) from None

    def root_type(self) -> EntryType | None:
        """The root's type from its own HEAD and listing; the bucket is asked after only
        when they find nothing or fail, to tell a missing bucket from a missing prefix (a
        round trip fewer for every run that finds its root)."""
        if not self.session.prefix:
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
        got = self.session.wire.list_objects(prefix, delimiter, max_keys)
        if got is not None:
            objs = [(k, n, ts_ns(parse_timestamp(t)) if t else 0) for k, n, t in got.objects]
            return got.prefixes, objs
        args: dict[str, Any] = {"Bucket": self.session.bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        pages = (
            [self.session.client.list_objects_v2(MaxKeys=max_keys, **args)]
            if max_keys
            else self.session.client.get_paginator("list_objects_v2").paginate(**args)
        )
        prefixes: list[str] = []
        objects: list[tuple[str, int, int]] = []
        for page in pages:
            prefixes += [cp["Prefix"] for cp in page.get("CommonPrefixes", []) or []]
            objects += [
                (o["Key"], int(o["Size"]), ts_ns(o.get("LastModified")))
                for o in page.get("Contents", []) or []
            ]
        return prefixes, objects

    def list_dir(self, rel: str) -> list[Entry]:
        prefix = self.session.dir_prefix(rel)
        files: list[Entry] = []
        dirs: list[Entry] = []
        where = f"{self.describe()} key prefix {prefix!r}"
        try:
            prefixes, objects = self._list(prefix, "/")
        except Exception as exc:
            raise self.session.err(exc, rel) from None
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
        prefix = self.session.dir_prefix(rel)

        def one(e: Entry) -> None:
            h = self.session.head(prefix + e.name)
            if h is not None and int(h.get("ContentLength", -1)) == e.size:
                apply_meta(e, h.get("Metadata", {}) or {})

        try:
            for _ in self.session.pool.map(one, entries):
                pass
        except Exception as exc:
            raise self.session.err(exc, rel) from None

    def stat(self, rel: str) -> Entry | None:
        name = (
            rel.rsplit("/", 1)[-1]
            if rel
            else (self.session.prefix.rsplit("/", 1)[-1] if self.session.prefix else "")
        )
        try:
            if rel or self.session.prefix:
                h = self.session.head(self.session.key(rel))
                if h is not None:
                    return self._entry_from_head(name, h)
            prefixes, objects = self._list(self.session.dir_prefix(rel), max_keys=1)
        except Exception as exc:
            raise self.session.err(exc, rel) from None
        if prefixes or objects or not (rel or self.session.prefix):
            return Entry(name, EntryType.DIR)
        return None

    def open_read(self, rel: str, entry: Entry) -> Reader:
        if entry.size == 0 and self.ep.list_metadata:
            # Nothing to GET: the metadata a lazy listing left out needs its own HEAD.
            try:
                h = self.session.head(self.session.key(rel))
            except Exception as exc:
                raise self.session.err(exc, rel) from None
            if h is not None and int(h.get("ContentLength", -1)) == 0:
                apply_meta(entry, h.get("Metadata", {}) or {})
        return S3Reader(self.session, self.session.key(rel), rel, entry)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        if entry.size <= SINGLE_PUT_MAX:
            return SinglePutWriter(self.session, rel, entry)
        return MultipartWriter(self.session, self.part_buffers, rel, entry, resume_key)

    def mkdir(self, rel: str) -> None:
        return None  # prefixes exist implicitly; empty directories cannot be represented

    def remove(self, rel: str, entry: Entry) -> None:
        # A directory can only be a console-made marker object ("dir/"); deleting a
        # missing key succeeds, so virtual directories need nothing else.
        try:
            self.session.delete(
                self.session.key(rel) + ("/" if entry.type == EntryType.DIR else "")
            )
        except Exception as exc:
            raise self.session.err(exc, rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        """Metadata-only change of an object: an in-place copy with replaced metadata."""
        if entry.type != EntryType.FILE:
            return
        key = self.session.key(rel)
        try:
            h = self.session.head(key)
            if h is None:
                return
            meta = dict(h.get("Metadata", {}) or {})
            meta.update(object_meta(entry, meta.get(META_DIGEST), preserve))
            self.session.copy_object(
                self.session.bucket, key, key, int(h.get("ContentLength", 0)), meta
            )
        except Exception as exc:
            raise self.session.err(exc, rel, ErrorKind.DESTINATION_NOT_FOUND) from None

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
            self.session.copy_object(
                src.session.bucket,
                src.session.key(src_rel),
                self.session.key(rel),
                entry.size,
                object_meta(entry, entry.digest, preserve),
            )
        except Exception as exc:
            raise self.session.err(exc, rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def prepare_destination(self) -> None:
        if not self.bucket_exists(ErrorKind.DESTINATION_NOT_FOUND):
            raise FerryError(
                ErrorKind.DESTINATION_NOT_FOUND,
                f"{self.describe()}: bucket {self.session.bucket!r} does not exist",
            )

    def partial_bytes(self, rel: str, resume_key: str) -> int:
        """Parts of an unfinished upload are not counted against a destination's space (S3
        reports none to check)."""
        return 0

    def close(self) -> None:
        self.session.close()


# The optional capabilities S3Backend has, checked by mypy here (rclone's "check the interfaces
# are satisfied" block) and at run time by tests/backends/test_capabilities.py.
if TYPE_CHECKING:

    def _has(b: S3Backend) -> tuple[ServerSideCopy, PutSmall, GetSmall, Resumable, LazyMeta]:
        return b, b, b, b, b
