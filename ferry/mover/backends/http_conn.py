"""One keep-alive HTTP/1.1 client connection, for the S3 wire.

http.client made a small request cost 230 µs of CPU against ~140 µs with this (a
signed GET of an 8 KiB object from versitygw, signing included): it
reads every response through a fresh file object, line by line, and parses the
header block with the email package, whose import with http.client's is ~20 ms of
every run's start. Only what S3 answers is understood here: a status line and
headers; bodies framed by Content-Length, chunked, or by the end of the connection;
HEAD and 204/304 answers without a body; 1xx answers skipped; `Connection: close`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl

Pieces = Sequence[bytes | memoryview]  # a request body, in pieces
RECV = 64 * 1024
JOIN_BELOW = 64 * 1024  # bodies up to this size go out in the same write as the head
MAX_HEAD = 64 * 1024


class ProtocolError(ConnectionError):
    """The peer closed the connection early or answered something that is not HTTP/1.x."""


class Head(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case; repeated headers joined with ", "


class Connection:
    """A connection to `netloc`, opened on first use and again after the peer closes it.

    A response's body must be read to its end (`read_body`, or `readinto` until 0) before
    the next request; `close` is the way out of one that is not wanted."""

    def __init__(
        self, netloc: str, tls: ssl.SSLContext | None, connect_timeout: float, timeout: float
    ) -> None:
        u = urlsplit("//" + netloc)
        self.netloc = netloc
        self.host = u.hostname or ""
        self.port = u.port or (443 if tls else 80)
        self.tls = tls
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()  # received, not yet consumed
        self.done = True  # the last response's body has been read
        self._keep = True
        self._chunked = False
        self._left: int | None = 0  # body bytes (of this chunk) still due; None: until close
        self._chunk_end = False  # a chunk's CRLF is due before the next size line

    def connect(self) -> None:
        # An ASCII host goes to getaddrinfo as bytes: as str it is IDNA-encoded, whose codec
        # import (~1 ms) would be the first request's.
        host = self.host.encode() if self.host.isascii() else self.host
        sock = socket.create_connection(
            (host, self.port),  # type: ignore[arg-type]  # getaddrinfo takes bytes
            timeout=self.connect_timeout,
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock, self.done = sock, True
        self._buf.clear()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buf.clear()
        self.done = True

    # -- requests ----------------------------------------------------------------------------
    def request(self, method: str, target: str, headers: dict[str, str], body: Pieces = ()) -> Head:
        """Send a request and read the answer's head."""
        sock = self.ready()
        head = self.head_bytes(method, target, headers)
        size = sum(len(p) for p in body)
        if size <= JOIN_BELOW:
            sock.sendall(b"".join([head, *body]) if size else head)
        else:
            sock.sendall(head)
            for p in body:
                sock.sendall(p)
        return self.response(method)

    def ready(self) -> socket.socket:
        """The socket, connected afresh unless it is idle and clean (an unread answer, or
        bytes nobody asked for, mean starting again)."""
        if self.sock is None or not self.done or self._buf:
            self.close()
            self.connect()
        assert self.sock is not None
        return self.sock

    def head_bytes(self, method: str, target: str, headers: dict[str, str]) -> bytes:
        """A request head; `Host` is the netloc, as signed."""
        return "".join(
            [
                f"{method} {target} HTTP/1.1\r\nHost: {self.netloc}\r\n",
                *(f"{k}: {v}\r\n" for k, v in headers.items()),
                "\r\n",
            ]
        ).encode("latin-1")

    def send(self, data: bytes) -> None:
        """More pipelined requests (RFC 9112 9.3.2) after `ready`: their answers come in
        order, each head read with `response` once the body before it has been read."""
        if self.sock is None:
            raise ProtocolError("the server closed a pipelined connection")
        self.sock.sendall(data)

    def _fill(self) -> bool:
        assert self.sock is not None
        d = self.sock.recv(RECV)
        self._buf += d
        return bool(d)

    def _find(self, sep: bytes, what: str) -> int:
        """Where `sep` starts in what was received, reading on until it is there."""
        buf = self._buf
        end = buf.find(sep)
        while end < 0:
            if len(buf) > MAX_HEAD:
                raise ProtocolError(f"{what} too long")
            if not self._fill():
                raise ProtocolError(f"connection closed in {what}")
            end = buf.find(sep)
        return end

    def _line(self) -> bytes:
        end = self._find(b"\r\n", "a chunk's framing")
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def response(self, method: str) -> Head:
        """The head of the next answer (to a `method` request); its body is read next."""
        buf = self._buf
        while True:
            end = self._find(b"\r\n\r\n", "a response head")
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
                raise ProtocolError(f"not an HTTP/1.x answer: {lines[0][:40]!r}")
            status = int(rest[:3])
            headers: dict[str, str] = {}
            name = ""
            for line in lines[1:]:
                if line[:1] in (b" ", b"\t") and name:  # an obsolete folded continuation
                    headers[name] += " " + line.strip().decode("latin-1")
                    continue
                k, sep, v = line.partition(b":")
                if not sep:
                    raise ProtocolError(f"malformed header line {line[:40]!r}")
                name = k.strip().lower().decode("latin-1")
                value = v.strip().decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if not 100 <= status < 200:
                break
        conn = headers.get("connection", "").lower()
        self._keep = "close" not in conn and (version == b"HTTP/1.1" or "keep-alive" in conn)
        self._chunked = False
        self._chunk_end = False
        if method == "HEAD" or status in (204, 304):
            self._left = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked, self._left = True, 0
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("malformed Content-Length") from None
        else:
            self._left, self._keep = None, False
        self.done = False
        if self._left == 0 and not self._chunked:
            self._finish()
        return Head(status, headers)

    # -- bodies ------------------------------------------------------------------------------
    def _finish(self) -> None:
        self.done = True
        if not self._keep:
            self.close()

    def _next_chunk(self) -> int:
        """The next chunk's size (the size line read); 0 at the last, trailers consumed."""
        if self._chunk_end:
            if self._line():
                raise ProtocolError("chunk longer than its size")
            self._chunk_end = False
        try:
            n = int(self._line().partition(b";")[0].strip(), 16)
        except ValueError:
            raise ProtocolError("malformed chunk size") from None
        if n == 0:
            while self._line():  # trailers, up to the empty line
                pass
        self._chunk_end = n > 0
        return n

    def readinto(self, view: memoryview) -> int:
        """The next bytes of the body into `view`; 0 once it has all been read."""
        if self.done:
            return 0
        if self._chunked and self._left == 0:
            self._left = self._next_chunk()
            if self._left == 0:
                self._finish()
                return 0
        want = len(view) if self._left is None else min(len(view), self._left)
        if self._buf:
            n = min(want, len(self._buf))
            view[:n] = self._buf[:n]
            del self._buf[:n]
        else:
            assert self.sock is not None
            n = self.sock.recv_into(view[:want]) if want else 0
            if n == 0:
                if self._left is None:  # the body ends with the connection
                    self._finish()
                    return 0
                raise ProtocolError("connection closed in a response body")
        if self._left is not None:
            self._left -= n
            if self._left == 0 and not self._chunked:
                self._finish()
        return n

    def read_body(self) -> bytes:
        """The whole body of the answer whose head was read last."""
        if self.done:
            return b""
        n = self._left
        if not self._chunked and n is not None and len(self._buf) >= n:
            data = bytes(self._buf[:n])  # the usual small answer: already here
            del self._buf[:n]
            self._left = 0
            self._finish()
            return data
        out = bytearray()
        piece = bytearray(RECV)
        view = memoryview(piece)
        while got := self.readinto(view):
            out += view[:got]
        return bytes(out)
