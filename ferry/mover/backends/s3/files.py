"""S3 readers and the small-object writer; big objects go up as multipart uploads
(`multipart`). Both take the endpoint's `S3Session`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ferry.mover.backends.base import (
    Entry,
    Reader,
    Writer,
    buffer_resize,
    buffer_write,
    thread_buffer,
)
from ferry.mover.backends.s3.meta import apply_meta, object_meta
from ferry.mover.backends.s3.session import S3Session
from ferry.mover.backends.s3.wire.api import Response, put_headers
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Preserve


class S3Reader(Reader):
    """Ranged GETs; the first response's ETag pins the version for the rest (If-Match).

    The first response also completes the entry's metadata (mtime, mode, digest) that a
    lazy listing left out, before anything is committed with it."""

    def __init__(self, s: S3Session, key: str, rel: str, entry: Entry) -> None:
        self.s, self.key, self.rel, self.size = s, key, rel, entry.size
        self.entry = entry
        self.etag: str | None = None
        self._changed: str | None = None

    def _get(self, offset: int, length: int) -> Any:
        args: dict[str, Any] = {
            "Bucket": self.s.bucket,
            "Key": self.key,
            "Range": f"bytes={offset}-{offset + length - 1}",
        }
        if self.etag:
            args["IfMatch"] = self.etag
        resp = self.s.client.get_object(**args)
        self._seen(resp.get("ContentRange"), resp.get("ETag"), resp.get("Metadata"))
        return resp

    def _seen(self, content_range: str | None, etag: str | None, meta: dict | None) -> None:
        """Check a response's object size; the first one pins the ETag and gives metadata."""
        total = str(content_range or "").rpartition("/")[2]
        if total.isdigit() and int(total) != self.size:
            self._changed = f"size changed from {self.size} to {total}"
            raise FerryError(
                ErrorKind.SOURCE_CHANGED, f"{self.s.describe()}: object {self._changed}", self.rel
            )
        if self.etag is None:
            self.etag = etag
            if self.s.ep.list_metadata:
                apply_meta(self.entry, meta or {})

    def _wire_get(self, offset: int, length: int) -> Response | None:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if self.etag:
            headers["If-Match"] = self.etag
        r = self.s.wire.request("GET", self.key, headers, limit=length)
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
            raise self.s.err(exc, self.rel) from None

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[bytes | memoryview]:
        """One ranged GET, streamed: on the wire into a per-thread buffer, else botocore's."""
        length = min(length, self.size - offset)
        if length <= 0:
            return
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if self.etag:
            headers["If-Match"] = self.etag
        got = self.s.wire.stream(self.key, headers)
        if got is None or got[0].status not in (200, 206):
            yield from self._iter_botocore(offset, length, piece)
            return
        r, body = got
        try:
            if int(r.headers.get("content-length", -1)) != length:
                raise FerryError(ErrorKind.TRANSIENT, f"{self.s.describe()}: bad range", self.rel)
            self._seen(r.headers.get("content-range"), r.headers.get("etag"), r.meta())
            view = thread_buffer(self.s.tls, piece)
            done = 0
            while done < length:
                n = body.readinto(view[: min(piece, length - done)])
                if not n:
                    raise FerryError(
                        ErrorKind.TRANSIENT, f"{self.s.describe()}: short read", self.rel
                    )
                done += n
                yield view[:n]
        except FerryError:
            raise
        except Exception as exc:
            raise self.s.err(exc, self.rel) from None
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
                        ErrorKind.TRANSIENT, f"{self.s.describe()}: short read", self.rel
                    )
                got += len(data)
                yield data
        except FerryError:
            raise
        except Exception as exc:
            raise self.s.err(exc, self.rel) from None

    def changed(self) -> str | None:
        return self._changed


class SinglePutWriter(Writer):
    """Small objects: buffer in memory, one PUT at commit with all metadata (digest included)."""

    def __init__(self, s: S3Session, rel: str, entry: Entry) -> None:
        self.s, self.rel = s, rel
        self.buf = bytearray(entry.size)
        self.size = entry.size

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        buffer_write(self.buf, offset, data)

    def set_size(self, size: int) -> None:
        buffer_resize(self.buf, size)

    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        body = bytes(self.buf)
        args = {**self.s.put_args(), **self.s.checksum_args([body])}
        meta = object_meta(entry, digest, preserve)
        key = self.s.key(self.rel)
        headers = put_headers(args, meta)
        if headers is not None:
            r = self.s.wire.request("PUT", key, headers, body)
            if r is not None and r.status == 200:
                self.buf = bytearray()
                return
        try:
            self.s.client.put_object(
                Bucket=self.s.bucket,
                Key=key,
                Body=body,
                Metadata=meta,
                **args,
            )
        except Exception as exc:
            raise self.s.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None
        self.buf = bytearray()

    def abort(self, keep_partial: bool = False) -> None:
        self.buf = bytearray()

    def read_back(self, offset: int, length: int) -> bytes | None:
        return None
