"""The client's TLS connections to one `ferry serve`: a small pool, one per engine worker.

Each connection is an `http.client.HTTPSConnection` (HTTP/1.1 keep-alive) on a mutual
TLS 1.3 context: the server must present a certificate from `tls_ca` for the host named
in the URI, and this client presents its own. A connection is lent to one request at a
time; one that failed mid-exchange is closed, never lent again.
"""

from __future__ import annotations

import http.client
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ferry.mover.backends.ferry.errors import error_from_reply, transport_error
from ferry.mover.backends.ferry.protocol import (
    API,
    MAX_REPLY_JSON,
    protocol_error,
    tls_reason,
)
from ferry.mover.endpoints import FerryEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.rate import Rate

CONNECT_TIMEOUT = 30.0
IO_TIMEOUT = 300.0  # a reply to one request (a commit hashes what it did not see written)
# Request bodies at least this large are timed (send to reply) for `uploads`: below it,
# the round trip, not the link, sets the time.
TIMED_BODY = 256 * 1024
UPLOAD_SAMPLE = 0.25  # seconds: a busy stretch of uploads is cut into samples this long


class Uploads:
    """The rate large request bodies reach the server, all streams together: their bytes
    over the time at least one of them was in flight (idle gaps, when the engine was
    reading or hashing, do not count). A long busy stretch gives a sample every
    UPLOAD_SAMPLE seconds."""

    def __init__(self) -> None:
        self.rate = Rate(min_bytes=4 * TIMED_BODY)
        self._lock = threading.Lock()
        self._flying = 0
        self._since = 0.0
        self._bytes = 0

    def begin(self) -> None:
        with self._lock:
            if self._flying == 0:
                self._since, self._bytes = time.monotonic(), 0
            self._flying += 1

    def end(self, nbytes: int) -> None:
        """One upload ended (nbytes 0: it failed)."""
        with self._lock:
            self._flying -= 1
            self._bytes += nbytes
            now = time.monotonic()
            if self._flying == 0 or now - self._since >= UPLOAD_SAMPLE:
                self.rate.add(self._bytes, now - self._since)
                self._since, self._bytes = now, 0


def client_context(ep: FerryEndpoint) -> ssl.SSLContext:
    """TLS 1.3 only, the server verified against tls_ca, this client's certificate offered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    for what, value in (("tls_ca", ep.tls_ca), ("tls_cert", ep.tls_cert), ("tls_key", ep.tls_key)):
        if not value:
            raise FerryError(ErrorKind.USAGE, f"ferry:// endpoint needs {what}=FILE")
    try:
        ctx.load_verify_locations(cafile=ep.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise FerryError(
            ErrorKind.USAGE, f"cannot load tls_ca {ep.tls_ca!r}: {tls_reason(exc)}"
        ) from None
    try:
        ctx.load_cert_chain(str(ep.tls_cert), str(ep.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise FerryError(
            ErrorKind.USAGE,
            f"cannot load tls_cert {ep.tls_cert!r} with tls_key {ep.tls_key!r}: {tls_reason(exc)}",
        ) from None
    return ctx


@dataclass(slots=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class Connections:
    """At most `streams` keep-alive connections to the server, lent one request at a time.
    `uploads` times large bodies of file data (to the server's reply)."""

    def __init__(self, ep: FerryEndpoint) -> None:
        self.ep = ep
        self.where = f"ferry://{ep.host}:{ep.port}"
        self.ctx = client_context(ep)
        self._idle: queue.LifoQueue[http.client.HTTPSConnection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max(1, ep.streams))
        self._closed = False
        self.uploads = Uploads()

    def _connect(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(
            self.ep.host, self.ep.port, timeout=CONNECT_TIMEOUT, context=self.ctx
        )
        conn.connect()
        conn.sock.settimeout(IO_TIMEOUT)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    @contextmanager
    def lend(self) -> Iterator[tuple[http.client.HTTPSConnection, bool]]:
        """A connection and whether it was used before (and so may have been closed by the
        server while idle)."""
        with self._slots:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = None
            ok = False
            try:
                reused = conn is not None
                if conn is None:
                    conn = self._connect()
                yield conn, reused
                ok = True
            finally:
                if conn is not None:
                    if ok and not self._closed:
                        self._idle.put(conn)
                    else:
                        conn.close()

    def request(
        self,
        route: str,
        body: bytes | memoryview = b"",
        headers: dict[str, str] | None = None,
        path: str | None = None,
        limit: int = MAX_REPLY_JSON,
        method: str = "POST",
        stream: Iterable[bytes] | None = None,
        timed: bool = False,
    ) -> Reply:
        """One request; a non-200 reply raised as the FerryError it carries, a lost
        connection as TRANSIENT. The reply body is read only up to `limit` bytes. With
        `stream`, the body is those pieces, sent with chunked transfer encoding (and never
        sent twice: a generator is spent). `timed`: a body of file data whose
        time goes into `uploads` if it is large enough (a batch of small files is not: the
        server's per-file work, not the link, sets its time)."""
        hdrs = {"Content-Length": str(len(body))} if stream is None else {}
        if headers:
            hdrs.update(headers)
        timed = timed and stream is None and len(body) >= TIMED_BODY
        for attempt in range(1 if stream is not None else 2):
            reused = False
            if timed:
                self.uploads.begin()
            sent = 0
            try:
                with self.lend() as (conn, was_idle):
                    reused = was_idle
                    if stream is None:
                        conn.request(method, API + route, body=body, headers=hdrs)
                    else:
                        conn.request(
                            method, API + route, body=stream, headers=hdrs, encode_chunked=True
                        )
                    resp = conn.getresponse()
                    length = resp.getheader("Content-Length")
                    if length is None or not length.isdigit():
                        raise protocol_error(f"{self.where} sent a reply without Content-Length")
                    n = int(length)
                    if n > limit:
                        raise protocol_error(
                            f"{self.where} sent a {n}-byte reply to {route}, over {limit}"
                        )
                    data = resp.read(n)
                    if len(data) != n:
                        raise http.client.IncompleteRead(data, n - len(data))
                    if resp.will_close:
                        raise _Close(Reply(resp.status, resp.headers, data))
                    sent = len(body) if resp.status == 200 else 0
            except _Close as c:
                reply = c.reply
                sent = len(body) if reply.status == 200 else 0
            except (
                http.client.RemoteDisconnected,
                BrokenPipeError,
                ConnectionResetError,
                ssl.SSLEOFError,
            ) as exc:
                # A kept-alive connection the server closed meanwhile: once more on a fresh one.
                if attempt == 0 and reused and stream is None:
                    continue
                raise transport_error(exc, self.where, path) from None
            except FerryError:
                raise
            except Exception as exc:
                raise transport_error(exc, self.where, path) from None
            else:
                reply = Reply(resp.status, resp.headers, data)
            finally:
                if timed:
                    self.uploads.end(sent)
            if reply.status != 200:
                raise error_from_reply(reply.status, reply.body, self.where, path)
            return reply
        raise AssertionError("unreachable")

    def read_stream(
        self, route: str, body: bytes, length: int, piece: int, path: str | None = None
    ) -> Iterator[bytes]:
        """A reply body of exactly `length` bytes (the server says how many in its
        Content-Length, at most `length`), yielded in pieces as it arrives: one request for a
        long range instead of one per piece. A connection left before the end is closed."""
        with self.lend() as (conn, _):
            try:
                conn.request(
                    "POST", API + route, body=body, headers={"Content-Length": str(len(body))}
                )
                resp = conn.getresponse()
                size = resp.getheader("Content-Length")
                if size is None or not size.isdigit():
                    raise protocol_error(f"{self.where} sent a reply without Content-Length")
                n = int(size)
                if resp.status != 200:
                    data = resp.read(min(n, 65536))
                    raise error_from_reply(resp.status, data, self.where, path)
                if n > length:
                    raise protocol_error(f"{self.where} sent {n} bytes for a {length}-byte range")
                left = n
                while left:
                    data = resp.read(min(piece, left))
                    if not data:
                        raise http.client.IncompleteRead(b"", left)
                    left -= len(data)
                    yield data
                if resp.will_close:
                    conn.close()  # lent again, it connects afresh
            except GeneratorExit:
                raise  # lend() closes a connection left mid-reply
            except FerryError:
                raise
            except Exception as exc:
                raise transport_error(exc, self.where, path) from None

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class _Close(Exception):
    """A complete reply on a connection the server is closing (it is not lent again)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
