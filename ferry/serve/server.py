"""The HTTP side of `ferry serve`: TLS handshakes, request bounds, routing, lifecycle.

A connection is accepted, handed to its own thread, and must complete a mutual TLS 1.3
handshake with a certificate from the CA before a single byte of HTTP is read. Requests
then have bounded bodies (Content-Length required, at most MAX_JSON for JSON and
MAX_BODY for data; no chunked bodies), and every failure is a 4xx/5xx with a JSON
`{"reason", "message"}`: one bad request never stops the server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ferry.mover.backends.ferry.errors import error_document, status_of
from ferry.mover.backends.ferry.protocol import (
    API,
    H_DIGEST,
    H_ENCODING,
    H_HANDLE,
    H_OFFSET,
    H_RAW,
    IDENTITY,
    MAX_BODY,
    MAX_CHUNK_LINE,
    MAX_JSON,
    MAX_PIECE,
    MAX_TRAILERS,
    ZSTD,
    as_int,
    codec,
    decode_piece,
    dumps,
    entry_to_json,
    loads,
    pack_batch,
    protocol_error,
    unframe_piece,
    unpack_batch,
)
from ferry.mover.backends.local import LocalBackend
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.integrity import digest_bytes
from ferry.serve.ops import Service, apply_delta, get_small, put_small, signature
from ferry.serve.paths import Root
from ferry.serve.tls import server_context

log = logging.getLogger("ferry")

HANDSHAKE_TIMEOUT = 15.0
STREAM_PIECE = 1 << 20  # a streamed range is read and sent in pieces of this size
IDLE_TIMEOUT = 600.0
MAX_CONNECTIONS = 64
JSON_ROUTES = {
    "stat",
    "acls",
    "list",
    "partial",
    "space",
    "open",
    "size",
    "done",
    "record",
    "commit",
    "abort",
    "mkdir",
    "remove",
    "meta",
    "symlink",
    "hardlink",
    "flush",
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FerryServer
    timeout = IDLE_TIMEOUT
    _body_read = False  # whether the current request's body was consumed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, an unknown method,
        oversize headers) as Ferry errors too, and the connection closed."""
        self.close_connection = True
        err = FerryError(ErrorKind.PROTOCOL, f"HTTP {code}: {message or 'bad request'}")
        log.info("%s: refused: %s", self.client_address[0], err)
        try:
            self._send(code, error_document(err), "application/json")
        except OSError:
            pass

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            route = self.path[len(API) :] if self.path.startswith(API) else None
            if method == "GET" and (self.headers.get("Content-Length") or "0") != "0":
                self.close_connection = True  # a GET's body is never read
            if method == "GET" and route == "hello":
                self._json(self.server.service.hello())
            elif method == "GET" and route == "stats":
                self._json(self.server.service.stats.doc())
            elif method != "POST" or route is None:
                self.close_connection = True
                raise FerryError(ErrorKind.PROTOCOL, f"no route {method} {self.path[:100]!r}")
            elif route == "write":
                self._write()
            elif route == "read":
                self._read()
            elif route == "signature":
                sig = signature(self.server.service, loads(self._body(MAX_JSON), "signature"))
                self._data(sig, {})
            elif route == "delta":
                self._delta()
            elif route == "probe":
                n = len(self._body(MAX_BODY))  # read and dropped: the client times it
                self.server.service.stats.add(wire_in=n)
                self._json({"bytes": n})
            elif route == "put_small":
                self._put_small()
            elif route == "get_small":
                self._get_small()
            elif route == "readback":
                data = self.server.service.readback(loads(self._body(MAX_JSON), "readback"))
                self._data(data, {H_RAW: str(len(data)), H_ENCODING: IDENTITY})
            elif route in JSON_ROUTES:
                doc = loads(self._body(MAX_JSON), route)
                self._json(getattr(self.server.service, route)(doc))
            else:
                raise FerryError(ErrorKind.PROTOCOL, f"no route {route[:100]!r}")
        except Exception as exc:
            err = as_ferry_error(exc)
            if err.kind in (ErrorKind.IO_ERROR,) and not isinstance(exc, (FerryError, OSError)):
                log.exception("%s: %s failed", self.client_address[0], self.path[:100])
            else:
                log.info("%s: %s refused: %s", self.client_address[0], self.path[:100], err)
            if not self._body_read:
                self.close_connection = True  # its unread body would be taken for a request
            try:
                self._send(status_of(err.kind), error_document(err), "application/json")
            except OSError:
                self.close_connection = True

    def _body(self, limit: int) -> bytes:
        """The request body, bounded: Content-Length required, no chunked encoding."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise protocol_error("chunked request bodies are not accepted; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            raise protocol_error("Content-Length is required")
        n = int(length)
        if n > limit:
            self.close_connection = True  # the unread body would be taken for a request
            raise protocol_error(f"request body of {n} bytes is over the limit of {limit}")
        data = self.rfile.read(n)
        self._body_read = True
        if len(data) != n:
            self.close_connection = True
            raise protocol_error(f"request body ended after {len(data)} of {n} bytes")
        return data

    def _write(self) -> None:
        handle = self.headers.get(H_HANDLE) or ""
        offset_text = self.headers.get(H_OFFSET) or ""
        body = self._body(MAX_BODY)
        if not offset_text.isdigit():
            raise protocol_error(f"{H_OFFSET} header missing or not a number")
        offset = as_int(int(offset_text), H_OFFSET)
        enc = self.headers.get(H_ENCODING)
        data = decode_piece(codec, body, enc, self.headers.get(H_RAW), MAX_PIECE)
        self.server.service.stats.add(wire_in=len(body), raw_in=len(data), zstd_in=int(enc == ZSTD))
        self.server.service.write(handle, offset, data)
        self._json({})

    def _read(self) -> None:
        doc = loads(self._body(MAX_JSON), "read")
        if doc.get("stream") is True:
            self._read_stream(doc)
            return
        data, whole = self.server.service.read(doc)
        headers = {H_RAW: str(len(data)), H_ENCODING: IDENTITY}
        body: bytes = data
        if doc.get("z") is True and self.server.service.zstd and len(data) >= 64:
            packed = codec().compress(data)
            if packed is not None:
                body, headers[H_ENCODING] = packed, ZSTD
        if whole:
            headers[H_DIGEST] = digest_bytes(data)
        self.server.service.stats.add(
            wire_out=len(body), raw_out=len(data), zstd_out=int(body is not data)
        )
        self._data(body, headers)

    def _chunks(self) -> Iterator[bytes]:
        """A chunked request body, chunk by chunk, each bounded by MAX_BODY (the one body
        without a Content-Length: a delta's length is known only at its end)."""
        if (self.headers.get("Transfer-Encoding") or "").strip().lower() != "chunked":
            self.close_connection = True
            raise protocol_error("this route takes a chunked body (Transfer-Encoding: chunked)")
        if self.headers.get("Content-Length") is not None:
            self.close_connection = True
            raise protocol_error("Content-Length and chunked encoding together")
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE + 1)
            if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\r\n"):
                self.close_connection = True
                raise protocol_error("a chunk's size line is too long or cut off")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_BODY:
                self.close_connection = True
                raise protocol_error(f"chunk size {size_text[:20]!r} is not 0..{MAX_BODY}")
            if size == 0:
                for _ in range(MAX_TRAILERS):
                    if self.rfile.readline(MAX_CHUNK_LINE + 1) in (b"\r\n", b"\n", b""):
                        self._body_read = True
                        return
                self.close_connection = True
                raise protocol_error("too many trailer lines")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                self.close_connection = True
                raise protocol_error("a chunk ended early or without CRLF")
            self.server.service.stats.add(wire_in=size)
            yield data

    def _delta(self) -> None:
        chunks = self._chunks()
        head = next(chunks, None)
        if head is None or len(head) > MAX_JSON:
            raise protocol_error("delta: the first chunk must be the JSON header")
        doc = loads(head, "delta")
        stats = self.server.service.stats

        def pieces() -> Iterator[bytes]:
            for chunk in chunks:
                data, packed = unframe_piece(codec, chunk)
                stats.add(raw_in=len(data), zstd_in=int(packed))
                yield data

        try:
            reply = apply_delta(self.server.service, doc, pieces())
        except Exception as exc:
            # The client reads the answer only once it has sent its whole body: answer now,
            # then read (and drop) the rest for a while, so it learns why (a full disk, a
            # damaged delta) instead of seeing its connection reset.
            err = as_ferry_error(exc)
            log.info("%s: delta refused: %s", self.client_address[0], err)
            self.close_connection = True
            self._send(status_of(err.kind), error_document(err), "application/json")
            _drain(chunks, DRAIN_SECONDS)
            return
        if next(chunks, None) is not None:  # past the delta's end mark: not ours to read
            self.close_connection = True
        self._json(reply)

    def _put_small(self) -> None:
        header, files, payload = unpack_batch(self._body(MAX_BODY), "put_small")

        def decode(body: bytes, enc: str | None, raw: str) -> bytes:
            return decode_piece(codec, body, enc, raw, MAX_PIECE)

        self._json({"outcomes": put_small(self.server.service, header, files, payload, decode)})

    def _get_small(self) -> None:
        doc = loads(self._body(MAX_JSON), "get_small")
        z = doc.get("z") is True and self.server.service.zstd
        got = get_small(self.server.service, doc, MAX_PIECE)
        meta: list[dict[str, object] | None] = []
        payloads: list[bytes] = []
        wire = raw = packed_n = 0
        for item in got:
            if item is None:
                meta.append(None)
                continue
            entry, data = item
            body, enc = data, IDENTITY
            if z and len(data) >= 64:
                packed = codec().compress(data)
                if packed is not None:
                    body, enc = packed, ZSTD
                    packed_n += 1
            meta.append(
                {
                    "entry": entry_to_json(entry),
                    "len": len(body),
                    "raw": len(data),
                    "enc": enc,
                    "digest": digest_bytes(data),
                }
            )
            payloads.append(body)
            wire += len(body)
            raw += len(data)
        self.server.service.stats.add(wire_out=wire, raw_out=raw, zstd_out=packed_n)
        self._data(pack_batch({"files": meta}, payloads), {})

    def _read_stream(self, doc: dict[str, object]) -> None:
        """A long range, raw, in one reply: its Content-Length is what the file holds of the
        range when the read starts; a file that shrinks meanwhile ends the connection early
        (the client sees a short reply and retries)."""
        reader, n = self.server.service.open_range(doc)
        try:
            offset = as_int(doc.get("offset"), "offset")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            left = n
            try:
                while left:
                    data = reader.read_at(offset, min(STREAM_PIECE, left))
                    if not data:
                        break
                    self.wfile.write(data)
                    offset += len(data)
                    left -= len(data)
            except OSError as exc:
                log.info("%s: streamed read ended: %s", self.client_address[0], exc)
            if left:  # the headers are out: only a short reply can say it failed
                self.close_connection = True
            self.server.service.stats.add(wire_out=n - left, raw_out=n - left)
        finally:
            reader.close()

    def _json(self, doc: object) -> None:
        self._send(200, dumps(doc), "application/json")

    def _data(self, body: bytes, headers: dict[str, str]) -> None:
        self._send(200, body, "application/octet-stream", headers)

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class FerryServer(ThreadingHTTPServer):
    """Each accepted connection: TLS handshake in its own thread, then HTTP requests."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], service: Service, ctx: ssl.SSLContext) -> None:
        self.service = service
        self.ctx = ctx
        self._active = threading.BoundedSemaphore(MAX_CONNECTIONS)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._active.acquire(blocking=False):
            log.warning("%s: over %d connections; refused", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._active.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._active.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.service.stats.add(refused=1)
            why = str(exc.reason) if isinstance(exc, ssl.SSLError) else type(exc).__name__
            log.warning("%s: TLS handshake refused (%s)", client_address[0], why)
            _linger(tls)
            return
        try:
            tls.settimeout(IDLE_TIMEOUT)
            Handler(tls, client_address, self)
        finally:
            tls.close()

    def service_actions(self) -> None:
        self.service.uploads.expire()


DRAIN_SECONDS = 30.0


def _drain(chunks: Iterator[bytes], seconds: float) -> None:
    """Read and drop what is left of a refused chunked body, for at most `seconds`."""
    end = time.monotonic() + seconds
    try:
        for _ in chunks:
            if time.monotonic() > end:
                return
    except (FerryError, OSError):
        return


def _linger(tls: ssl.SSLSocket) -> None:
    """Close a refused connection gently: a close with the client's first request still
    unread would reset it, and the reset would drop the TLS alert that says why it was
    refused (TLS 1.3 clients send their request before they hear the verdict)."""
    try:
        tls.shutdown(socket.SHUT_WR)  # the alert is out; plain TCP from here
        tls.settimeout(1.0)
        left = 1 << 20
        while left > 0:
            got = socket.socket.recv(tls, 65536)
            if not got:
                break
            left -= len(got)
    except OSError:
        pass
    finally:
        tls.close()


def serve(root: str, listen: str, cert: str, key: str, ca: str) -> int:
    """Run until SIGTERM or SIGINT. Prints `listening on HOST:PORT` once it accepts."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise FerryError(ErrorKind.USAGE, f"--listen {listen!r}: give HOST:PORT (port 0: any free)")
    ctx = server_context(cert, key, ca)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise as_ferry_error(exc, root) from exc
    if not os.path.isdir(root):
        raise FerryError(ErrorKind.USAGE, f"ROOT {root!r} is not a directory")
    service = Service(Root(root), LocalBackend(root))
    try:
        server = FerryServer((host.strip("[]") or "0.0.0.0", int(port_text)), service, ctx)
    except OSError as exc:
        raise FerryError(ErrorKind.USAGE, f"--listen {listen!r}: {exc.strerror}") from None
    bound_host, bound_port = server.socket.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"ferry serve: listening on {shown}:{bound_port}, root {root}", flush=True)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.25)
    finally:
        server.server_close()
        service.uploads.close()
    return 0
