"""Readers and writers of files at a `ferry serve`: each read or written piece is one
request on a pooled connection, zstd-compressed when that pays (`Squeeze`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from ferry.mover.backends.base import Entry, Reader, Writer
from ferry.mover.backends.ferry.connections import Connections
from ferry.mover.backends.ferry.protocol import (
    H_DIGEST,
    H_ENCODING,
    H_HANDLE,
    H_OFFSET,
    H_RAW,
    IDENTITY,
    MAX_PIECE,
    ZSTD,
    acls_to_json,
    as_int,
    as_str,
    codec,
    decode_piece,
    dumps,
    entry_from_json,
    entry_to_json,
    loads,
    preserve_to_json,
    protocol_error,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import DIGEST_LEN, digest_bytes
from ferry.mover.options import Compress, Preserve

# --compress auto: a file whose first this many pieces did not shrink is sent raw from then on.
AUTO_TRIES = 2


@dataclass(slots=True)
class Squeeze:
    """One file's compression decisions: `on` tries every piece, `auto` gives up after the
    file's first AUTO_TRIES pieces did not shrink, `off` (or a server without zstd) never."""

    mode: Compress
    failed: int = 0
    sent_compressed: int = 0

    def trying(self) -> bool:
        if self.mode == Compress.OFF:
            return False
        return self.mode == Compress.ON or self.failed < AUTO_TRIES or self.sent_compressed > 0

    def note(self, compressed: bool) -> None:
        if compressed:
            self.sent_compressed += 1
        else:
            self.failed += 1


def encode(data: bytes | memoryview, squeeze: Squeeze) -> tuple[bytes | memoryview, str]:
    """(body, encoding) of a piece to send."""
    if squeeze.trying() and len(data) >= 64:
        packed = codec().compress(data)
        squeeze.note(packed is not None)
        if packed is not None:
            return packed, ZSTD
    return data, IDENTITY


class FerryReader(Reader):
    """Stateless ranged reads by path; whole-file reads come with the server's digest."""

    def __init__(self, c: Connections, path: str, rel: str, entry: Entry, mode: Compress) -> None:
        self.c, self.path, self.rel, self.entry = c, path, rel, entry
        self.squeeze = Squeeze(mode)

    def read_at(self, offset: int, length: int) -> bytes:
        out: list[bytes] = []
        while length > 0:
            piece = self._read(offset, min(length, MAX_PIECE))
            out.append(piece)
            if len(piece) < min(length, MAX_PIECE):
                break
            offset += len(piece)
            length -= len(piece)
        return out[0] if len(out) == 1 else b"".join(out)  # b"" for nothing asked

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[bytes | memoryview]:
        """One streamed request for the range, unless pieces are still being tried for
        compression (each compressed piece is a request of its own)."""
        if self.squeeze.trying() or length <= piece:
            yield from super().iter_range(offset, length, piece)
            return
        req = {"path": self.path, "offset": offset, "length": length, "stream": True}
        yield from self.c.read_stream("read", dumps(req), length, piece, self.rel)

    def _read(self, offset: int, length: int) -> bytes:
        req = {"path": self.path, "offset": offset, "length": length, "z": self.squeeze.trying()}
        reply = self.c.request("read", dumps(req), path=self.rel, limit=MAX_PIECE + 65536)
        enc = reply.headers.get(H_ENCODING)
        data = decode_piece(codec, reply.body, enc, reply.headers.get(H_RAW), length)
        if req["z"]:
            self.squeeze.note(enc == ZSTD)
        digest = reply.headers.get(H_DIGEST)
        if digest is not None and digest != digest_bytes(data):
            raise FerryError(
                ErrorKind.VERIFY_MISMATCH,
                "the data received does not match the digest the server computed",
                self.rel,
            )
        return data

    def changed(self) -> str | None:
        doc = loads(self.c.request("stat", dumps({"path": self.path})).body, "stat")
        now = doc.get("entry")
        if now is None:
            return "file vanished while copying"
        e = entry_from_json(now)
        if e.size != self.entry.size:
            return f"size changed from {self.entry.size} to {e.size} while copying"
        if e.mtime_ns != self.entry.mtime_ns:
            return "modified while copying"
        return None


class FerryWriter(Writer):
    """An upload at the server: a handle to its LocalBackend writer there."""

    def __init__(
        self,
        c: Connections,
        path: str,
        rel: str,
        entry: Entry,
        resume_key: str | None,
        mode: Compress,
        fsync: bool,
    ) -> None:
        self.c, self.rel = c, rel
        self.squeeze = Squeeze(mode)
        req = {
            "path": path,
            "entry": entry_to_json(entry),
            "resume_key": resume_key,
            "fsync": fsync,
        }
        doc = loads(c.request("open", dumps(req), path=rel).body, "open")
        self.handle = as_str(doc.get("handle"), "upload handle", 64)
        if not self.handle.isalnum():
            raise protocol_error("upload handle must be alphanumeric")
        self._done = False

    def _call(self, route: str, **fields: object) -> bytes:
        return self.c.request(route, dumps({"handle": self.handle, **fields}), path=self.rel).body

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            piece = view[:MAX_PIECE]
            body, enc = encode(piece, self.squeeze)
            headers = {
                H_HANDLE: self.handle,
                H_OFFSET: str(offset),
                H_RAW: str(len(piece)),
                H_ENCODING: enc,
                "Content-Type": "application/octet-stream",
            }
            self.c.request("write", body, headers, path=self.rel, timed=True)
            offset += len(piece)
            view = view[len(piece) :]

    def set_size(self, size: int) -> None:
        self._call("size", size=size)

    def done_chunks(self, chunk_size: int) -> dict[int, bytes]:
        doc = loads(self._call("done", chunk_size=chunk_size), "done")
        chunks = doc.get("chunks")
        if not isinstance(chunks, dict):
            raise protocol_error("done: chunks must be an object")
        out: dict[int, bytes] = {}
        for k, v in chunks.items():
            if not (isinstance(k, str) and k.isdigit()):
                raise protocol_error("done: chunk index must be a number")
            hexd = as_str(v, "done: block digests", 1 << 20)
            try:
                out[as_int(int(k), "chunk index")] = bytes.fromhex(hexd)
            except ValueError:
                raise protocol_error("done: block digests must be hex") from None
            if len(out[int(k)]) % DIGEST_LEN:
                raise protocol_error("done: block digests of a wrong length")
        return out

    def record_chunk(self, index: int, block_digests: bytes) -> None:
        self._call("record", index=index, digests=block_digests.hex())

    def read_back(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            n = min(length, MAX_PIECE)
            reply = self.c.request(
                "readback",
                dumps({"handle": self.handle, "offset": offset, "length": n}),
                path=self.rel,
                limit=MAX_PIECE + 65536,
            )
            data = decode_piece(
                codec, reply.body, reply.headers.get(H_ENCODING), reply.headers.get(H_RAW), n
            )
            out += data
            if len(data) < n:
                break
            offset += n
            length -= n
        return bytes(out)

    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        self._done = True
        self._call(
            "commit",
            entry=entry_to_json(entry),
            digest=digest,
            preserve=preserve_to_json(preserve),
            acls=acls_to_json(entry.acls) if preserve.acls else None,
        )

    def abort(self, keep_partial: bool = False) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(FerryError):  # the server expires what it is not told
            self._call("abort", keep=keep_partial)
