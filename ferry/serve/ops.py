"""What `ferry serve` does for each route: LocalBackend's operations on checked paths.

Each function takes the peer's (already parsed, still untrusted) JSON document and returns
the reply document; data routes take or return bytes. Paths go through `Root.check` under
the root's lock; numbers through `protocol.as_int`.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ferry.mover import acl
from ferry.mover.backends.base import Entry, EntryType
from ferry.mover.backends.ferry.protocol import (
    FEATURE_ACLS,
    FEATURE_BATCH,
    FEATURE_DELTA,
    FEATURE_PROBE,
    FEATURE_ZSTD,
    MAX_BATCH,
    MAX_PIECE,
    MAX_TARGET,
    VERSION,
    acls_from_json,
    acls_to_json,
    as_int,
    as_str,
    entry_from_json,
    entry_to_json,
    preserve_from_json,
    protocol_error,
)
from ferry.mover.backends.local import LocalBackend, LocalReader
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.integrity import DIGEST_LEN, digest_bytes, is_digest
from ferry.serve.paths import Root
from ferry.serve.uploads import Upload, Uploads

Doc = dict[str, Any]
MAX_CHUNK = 1 << 40  # a resume chunk size a peer may name
MAX_RANGE = 1 << 30  # a streamed read's range (the engine's chunks are far smaller)


@dataclass(slots=True)
class Stats:
    """Bytes that crossed, for `GET /v1/stats` (tests and the benchmark read them)."""

    wire_in: int = 0  # request bodies of writes, as received
    raw_in: int = 0  # the same, decompressed
    zstd_in: int = 0  # pieces received compressed
    wire_out: int = 0  # read replies, as sent
    raw_out: int = 0
    zstd_out: int = 0
    refused: int = 0  # TLS handshakes refused
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, n in counts.items():
                setattr(self, k, getattr(self, k) + n)

    def doc(self) -> Doc:
        with self.lock:
            return {k: getattr(self, k) for k in self.__slots__ if k != "lock"}


@dataclass(slots=True)
class Service:
    root: Root
    local: LocalBackend
    uploads: Uploads = field(default_factory=Uploads)
    stats: Stats = field(default_factory=Stats)
    zstd: bool = True

    # -- reads ----------------------------------------------------------------------------

    def hello(self) -> Doc:
        return {
            "version": VERSION,
            "features": [
                FEATURE_BATCH,
                FEATURE_DELTA,
                FEATURE_PROBE,
                *([FEATURE_ZSTD] if self.zstd else []),
                *([FEATURE_ACLS] if acl.unavailable() is None else []),
            ],
        }

    def acls(self, doc: Doc) -> Doc:
        """The POSIX ACLs of a file or directory (null: none held there, or neither): the
        server decides which from what it finds. libacl follows a final symlink, so one
        there is refused as for a read."""
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"), follow_final=True)
            e = self.local.stat(rel)
            if e is None or e.type not in (EntryType.FILE, EntryType.DIR):
                return {"acls": None}
            return {"acls": acls_to_json(self.local.acls(rel, e.type == EntryType.DIR))}

    def stat(self, doc: Doc) -> Doc:
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"))
            e = self.local.stat(rel)
        return {"entry": None if e is None else entry_to_json(e)}

    def list(self, doc: Doc) -> Doc:
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"), follow_final=True)
            entries = self.local.list_dir(rel)
            if doc.get("acls") is not True:
                return {"entries": [entry_to_json(e) for e in entries]}
            acls = [self._acls_of(rel, e) for e in entries]
        return {"entries": [entry_to_json(e) for e in entries], "acls": acls}

    def _acls_of(self, parent: str, e: Entry) -> Any:
        """A listed entry's ACLs (`list` with "acls": one request per directory, not one
        per entry); null for what is neither file nor directory, or vanished since."""
        if e.type not in (EntryType.FILE, EntryType.DIR):
            return None
        rel = f"{parent}/{e.name}" if parent else e.name
        return acls_to_json(self.local.acls(rel, e.type == EntryType.DIR))

    def read(self, doc: Doc) -> tuple[bytes, bool]:
        """(bytes, whole file): the range asked for, shorter only at the end of the file."""
        offset = as_int(doc.get("offset"), "offset")
        length = as_int(doc.get("length"), "length", 0, MAX_PIECE)
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"), follow_final=True)
            reader = self.local.open_read(rel, Entry(rel, EntryType.FILE))
        try:
            if not stat.S_ISREG(os.fstat(reader.fd).st_mode):
                raise FerryError(ErrorKind.UNSAFE_PATH, "not a regular file", rel)
            data = reader.read_at(offset, length)
            whole = offset == 0 and len(data) == os.fstat(reader.fd).st_size
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc
        finally:
            reader.close()
        return data, whole

    def open_range(self, doc: Doc) -> tuple[LocalReader, int]:
        """An open file and how many bytes of the range asked for it holds now."""
        offset = as_int(doc.get("offset"), "offset")
        length = as_int(doc.get("length"), "length", 0, MAX_RANGE)
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"), follow_final=True)
            reader = self.local.open_read(rel, Entry(rel, EntryType.FILE))
        try:
            st = os.fstat(reader.fd)
            if not stat.S_ISREG(st.st_mode):
                raise FerryError(ErrorKind.UNSAFE_PATH, "not a regular file", rel)
        except BaseException:
            reader.close()
            raise
        return reader, max(0, min(length, st.st_size - offset))

    def partial(self, doc: Doc) -> Doc:
        key = as_str(doc.get("resume_key"), "resume_key", 256)
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"))
            return {"bytes": self.local.partial_bytes(rel, key) if rel else 0}

    def space(self, doc: Doc) -> Doc:
        s = self.local.free_space()
        return {"available": None} if s is None else s._asdict()

    # -- uploads --------------------------------------------------------------------------

    def open(self, doc: Doc) -> Doc:
        entry = entry_from_json(doc.get("entry"))
        key = doc.get("resume_key")
        if key is not None:
            key = as_str(key, "resume_key", 256)
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"))
            if not rel:
                raise FerryError(ErrorKind.UNSAFE_PATH, "cannot write the root itself")
            writer = self.local.open_write(rel, entry, resume_key=key)
        writer.durable = doc.get("fsync") is True
        handle = self.uploads.add(Upload(rel, writer, entry.size, key is not None))
        return {"handle": handle}

    def _upload(self, doc: Doc) -> Upload:
        return self.uploads.take(doc.get("handle"))

    def write(self, handle: str, offset: int, data: bytes) -> None:
        up = self.uploads.take(handle)
        try:
            up.writer.write_at(offset, data)
            up.received(offset, data)
        except OSError as exc:
            raise as_ferry_error(exc, up.rel) from exc
        finally:
            self.uploads.release(up)

    def size(self, doc: Doc) -> Doc:
        up = self._upload(doc)
        try:
            up.writer.set_size(as_int(doc.get("size"), "size"))
        finally:
            self.uploads.release(up)
        return {}

    def done(self, doc: Doc) -> Doc:
        up = self._upload(doc)
        try:
            if not up.resumable:
                raise protocol_error("done: the upload was opened without a resume key")
            chunks = up.writer.done_chunks(
                as_int(doc.get("chunk_size"), "chunk_size", 1, MAX_CHUNK)
            )
        finally:
            self.uploads.release(up)
        return {"chunks": {str(i): d.hex() for i, d in chunks.items()}}

    def record(self, doc: Doc) -> Doc:
        up = self._upload(doc)
        try:
            index = as_int(doc.get("index"), "index")
            try:
                digests = bytes.fromhex(as_str(doc.get("digests"), "digests", 1 << 20))
            except ValueError:
                raise protocol_error("digests must be hex") from None
            if len(digests) % DIGEST_LEN:
                raise protocol_error("digests of a wrong length")
            up.writer.record_chunk(index, digests)
        finally:
            self.uploads.release(up)
        return {}

    def readback(self, doc: Doc) -> bytes:
        up = self._upload(doc)
        try:
            offset = as_int(doc.get("offset"), "offset")
            length = as_int(doc.get("length"), "length", 0, MAX_PIECE)
            return up.writer.read_back(offset, length)
        finally:
            self.uploads.release(up)

    def commit(self, doc: Doc) -> Doc:
        entry = entry_from_json(doc.get("entry"))
        preserve = preserve_from_json(doc.get("preserve"))
        entry.acls = acls_from_json(doc.get("acls"))
        digest = doc.get("digest")
        if digest is not None and not (isinstance(digest, str) and is_digest(digest)):
            raise protocol_error("digest must be a Ferry digest (b3m1:...) or null")
        handle = doc.get("handle")
        up = self.uploads.drop(handle) if isinstance(handle, str) else None
        if up is None:
            raise FerryError(ErrorKind.TRANSIENT, "upload already committed or aborted")
        if up.busy:
            up.writer.abort(keep_partial=up.resumable)
            raise protocol_error("commit while writes of the file are still in progress")
        try:
            written = up.digest()
            if digest is not None and written != digest:
                up.writer.abort(keep_partial=False)
                raise FerryError(
                    ErrorKind.VERIFY_MISMATCH,
                    "the bytes the server wrote do not have the digest the client sent; "
                    "nothing was published",
                    up.rel,
                )
            with self.root.lock.shared():
                self.root.check(up.rel)  # no symlink planted in its directories meanwhile
                up.writer.commit(entry, written, preserve)
        except BaseException:
            up.writer.abort(keep_partial=False)
            raise
        return {"digest": written}

    def abort(self, doc: Doc) -> Doc:
        handle = doc.get("handle")
        up = self.uploads.drop(handle) if isinstance(handle, str) else None
        if up is not None:
            up.writer.abort(keep_partial=doc.get("keep") is True and up.resumable)
        return {}

    # -- the namespace --------------------------------------------------------------------

    def mkdir(self, doc: Doc) -> Doc:
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"))
            if rel:
                self.local.mkdir(rel)
        return {}

    def remove(self, doc: Doc) -> Doc:
        is_dir = doc.get("dir") is True
        with self.root.lock.shared():
            rel = self.root.check(doc.get("path"))
            if not rel:
                raise FerryError(ErrorKind.UNSAFE_PATH, "cannot remove the root itself")
            kind = EntryType.DIR if is_dir else EntryType.FILE
            self.local.remove(rel, Entry(rel.rpartition("/")[2], kind))
        return {}

    def meta(self, doc: Doc) -> Doc:
        entry = entry_from_json(doc.get("entry"))
        preserve = preserve_from_json(doc.get("preserve"))
        entry.xattrs = None  # not carried on this wire
        entry.acls = acls_from_json(doc.get("acls"))
        with self.root.lock.shared():
            follow = entry.type != EntryType.SYMLINK  # chmod and friends follow a link
            rel = self.root.check(doc.get("path"), follow_final=follow)
            if not follow:
                e = self.local.stat(rel)
                if e is None or e.type != EntryType.SYMLINK:
                    raise FerryError(ErrorKind.PROTOCOL, "meta of a symlink that is not one", rel)
            self.local.set_meta(rel, entry, preserve)
        return {}

    def symlink(self, doc: Doc) -> Doc:
        target = as_str(doc.get("target"), "target", MAX_TARGET)
        if "\x00" in target or not target:
            raise FerryError(ErrorKind.UNSAFE_PATH, "symlink target is empty or holds a NUL")
        with self.root.lock.exclusive():
            rel = self.root.check(doc.get("path"))
            if not rel:
                raise FerryError(ErrorKind.UNSAFE_PATH, "cannot replace the root")
            self.local.symlink(rel, target)
        return {}

    def hardlink(self, doc: Doc) -> Doc:
        with self.root.lock.exclusive():
            rel = self.root.check(doc.get("path"))
            existing = self.root.check(doc.get("existing"), what="existing")
            if not rel or not existing:
                raise FerryError(ErrorKind.UNSAFE_PATH, "cannot link the root")
            self.local.hardlink(rel, existing)
        return {}

    def flush(self, doc: Doc) -> Doc:
        self.local.flush()
        return {}


# -- batches of small files ----------------------------------------------------------------------

MAX_SMALL = 1 << 20  # a file get_small sends whole; larger ones the client reads on its own


def put_small(
    svc: Service, header: Doc, files: list[Any], payload: memoryview, decode: Any
) -> list[Doc | None]:
    """Each file written and published as open/write/commit would, its digest checked; one
    outcome per file (None, or the error document of its failure)."""
    preserve = preserve_from_json(header.get("preserve"))
    fsync = header.get("fsync") is True
    out: list[Doc | None] = []
    pos = 0
    for f in files:
        if f is None:
            raise protocol_error("put_small: a file cannot be null")
        n = f["len"]
        body, pos = payload[pos : pos + n], pos + n
        try:
            entry = entry_from_json(f.get("entry"))
            entry.acls = acls_from_json(f.get("acls"))
            raw = as_int(f.get("raw"), "raw", 0, MAX_PIECE)
            enc = f.get("enc")
            data = decode(bytes(body), enc if isinstance(enc, str) else None, str(raw))
            digest = f.get("digest")
            if digest is not None and not (isinstance(digest, str) and is_digest(digest)):
                raise protocol_error("digest must be a Ferry digest or null")
            written = digest_bytes(data)
            if digest is not None and digest != written:
                raise FerryError(ErrorKind.VERIFY_MISMATCH, "bytes received do not match digest")
            with svc.root.lock.shared():
                rel = svc.root.check(f.get("path"))
                if not rel:
                    raise FerryError(ErrorKind.UNSAFE_PATH, "cannot write the root itself")
                writer = svc.local.open_write(rel, entry)
                writer.durable = fsync
                try:
                    if data:
                        writer.write_at(0, data)
                    writer.commit(entry, written, preserve)
                except BaseException:
                    writer.abort()
                    raise
            svc.stats.add(wire_in=n, raw_in=len(data), zstd_in=int(enc == "zstd"))
            out.append(None)
        except Exception as exc:
            err = as_ferry_error(exc)
            out.append({"reason": err.kind.name, "message": str(err)})
    return out


def get_small(svc: Service, doc: Doc, budget: int) -> list[tuple[Entry, bytes] | None]:
    """Whole small files with their entries as stat'ed after the read (the client compares
    them with its listing); None for what cannot be sent this way, or past `budget` bytes."""
    files = doc.get("files")
    if not isinstance(files, list) or len(files) > MAX_BATCH:
        raise protocol_error(f"get_small: files must be an array of at most {MAX_BATCH}")
    out: list[tuple[Entry, bytes] | None] = []
    for f in files:
        if not isinstance(f, str):
            raise protocol_error("get_small: each file is a path")
        try:
            with svc.root.lock.shared():
                rel = svc.root.check(f, follow_final=True)
                reader = svc.local.open_read(rel, Entry(rel, EntryType.FILE))
            try:
                st = os.fstat(reader.fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size > min(MAX_SMALL, budget):
                    out.append(None)
                    continue
                data = reader.read_at(0, st.st_size + 1)
                after = os.fstat(reader.fd)
            finally:
                reader.close()
            if len(data) != after.st_size or after.st_mtime_ns != st.st_mtime_ns:
                out.append(None)
                continue
            e = Entry(rel.rpartition("/")[2], EntryType.FILE, after.st_size, after.st_mtime_ns)
            budget -= len(data)
            out.append((e, data))
        except FerryError as err:
            if err.kind in (ErrorKind.UNSAFE_PATH, ErrorKind.PROTOCOL):
                raise
            out.append(None)
        except OSError:
            out.append(None)
    return out


# -- deltas: the signature of a basis here, and a file rebuilt from a streamed delta ------------


def signature(svc: Service, doc: Doc) -> bytes:
    entry = entry_from_json(doc.get("entry"))
    block = doc.get("block_size")
    block_size = None if block is None else as_int(block, "block_size", 1, 1 << 30)
    with svc.root.lock.shared():
        rel = svc.root.check(doc.get("path"), follow_final=True)
        if not rel:
            raise FerryError(ErrorKind.UNSAFE_PATH, "the root is no file")
        return svc.local.signature(rel, entry, block_size)


def apply_delta(svc: Service, doc: Doc, pieces: Iterator[bytes]) -> Doc:
    """Rebuild a file from the delta's pieces (LocalBackend.apply_delta bounds and checks
    the stream, and the digest of the result)."""
    entry = entry_from_json(doc.get("entry"))
    preserve = preserve_from_json(doc.get("preserve"))
    digest = doc.get("digest")
    if digest is not None and not (isinstance(digest, str) and is_digest(digest)):
        raise protocol_error("digest must be a Ferry digest (b3m1:...) or null")
    entry.xattrs = None  # not carried on this wire
    entry.acls = acls_from_json(doc.get("acls"))
    with svc.root.lock.shared():
        rel = svc.root.check(doc.get("path"), follow_final=True)
        if not rel:
            raise FerryError(ErrorKind.UNSAFE_PATH, "the root is no file")
        reused = svc.local.apply_delta(rel, entry, pieces, digest or "", preserve)
    return {"reused": reused}
