"""One keep-alive HTTP/1.1 client connection, for the S3 wire.

http.client made a small request cost 230 µs of CPU against ~140 µs with this (a
signed GET of an 8 KiB object from versitygw, signing included): it
reads every response through a fresh file object, line by line, and parses the
header block with the email package, whose import with http.client's is ~20 ms of
every run's start. Only what S3 answers is understood here: a status line and
headers; bodies framed by Content-Length, chunked, or by the end of the connection;
HEAD and 204/304 answers without a body; 1xx answers skipped; `Connection: close`.

Whatever the server sends is untrusted: the status line, header names and values, lengths
and chunk sizes are checked strictly (a sign, an underscore or a space is not a digit),
heads, header counts, trailers and bodies read whole are bounded, and any such fault is a
`ProtocolError` that closes the connection. What we send is checked too: a CR, LF or NUL in
a request target or header value would split the request, so it is refused before sending.
"""

from __future__ import annotations

import re
import select
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, NoReturn
from urllib.parse import urlsplit

from ferry.mover.errors import ErrorKind, FerryError

if TYPE_CHECKING:
    import ssl

Pieces = Sequence[bytes | memoryview]  # a request body, in pieces
RECV = 64 * 1024
JOIN_BELOW = 64 * 1024  # bodies up to this size go out in the same write as the head
MAX_HEAD = 64 * 1024  # a response head, a chunk's size line, or all trailers
MAX_HEADERS = 256  # header lines in a head (S3 sends ~15, metadata included)
MAX_INTERIM = 16  # 1xx answers before the final one
MAX_BODY = 64 * 1024 * 1024  # a body read whole (`read_body`) unless the caller says otherwise
_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 5.6.2)
_DIGITS = re.compile(r"[0-9]{1,19}")  # a Content-Length: no sign, underscore or space
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")  # a chunk size, below 2**60
_UNSAFE = re.compile(r"[\x00\r\n]")  # what would split or end a request head
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")  # request header names, joined
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})  # RFC 9110 9.2.2


class ProtocolError(ConnectionError):
    """The peer closed the connection early or answered something that is not HTTP/1.x."""


class NotSent(ProtocolError):
    """The request was not written whole: the server cannot have acted on it."""


class UnsafeRequest(FerryError):
    """A request target or header value holds a CR, LF or NUL: refused before sending. The
    message names the header, never its value (which may be a credential)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.USAGE, message)


def _refuse(method: str, target: str, netloc: str, headers: dict[str, str]) -> NoReturn:
    """The `UnsafeRequest` for a head that failed the quick check, naming what is wrong."""
    for what, text in (("method", method), ("target (object key)", target), ("Host", netloc)):
        if _UNSAFE.search(text) or (what != "Host" and " " in text):
            raise UnsafeRequest(f"HTTP request {what} holds a CR, LF, NUL or space")
    for k, v in headers.items():
        if not _NAME.fullmatch(k) or not k:
            raise UnsafeRequest(f"HTTP request header name {k[:64]!r} is not a token")
        if _UNSAFE.search(v):
            raise UnsafeRequest(f"HTTP request header {k!r} holds a CR, LF or NUL")
    raise AssertionError("no fault found")


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
        """Send a request and read the answer's head. `NotSent` if it could not be written
        whole (safe to send again, whatever the method); any other OSError once it was."""
        head = self.head_bytes(method, target, headers)
        sock = self.ready(idle_checked=method not in IDEMPOTENT)
        size = sum(len(p) for p in body)
        self.done = False  # from here on the connection is in the middle of an exchange
        try:
            if size <= JOIN_BELOW:
                sock.sendall(b"".join([head, *body]) if size else head)
            else:
                sock.sendall(head)
                for p in body:
                    sock.sendall(p)
        except OSError as exc:
            self.close()
            raise NotSent(f"request not sent whole: {exc}") from exc
        return self.response(method)

    def ready(self, idle_checked: bool = False) -> socket.socket:
        """The socket, connected afresh unless it is idle and clean (an unread answer, or
        bytes nobody asked for, mean starting again). With `idle_checked`, also afresh when
        the server has already closed the idle connection (a request that must not be sent
        twice should not find that out only after it was written)."""
        if (
            self.sock is None
            or not self.done
            or self._buf
            or (idle_checked and _readable(self.sock))
        ):
            self.close()
            self.connect()
        assert self.sock is not None
        return self.sock

    def head_bytes(self, method: str, target: str, headers: dict[str, str]) -> bytes:
        """A request head; `Host` is the netloc, as signed. `UnsafeRequest` where a CR, LF or
        NUL would end a line early (a header smuggled in by a value)."""
        if (
            _UNSAFE.search("".join([method, target, self.netloc, *headers.values()]))
            or " " in target
            or not _NAME.fullmatch("".join(headers))
            or "" in headers
        ):
            _refuse(method, target, self.netloc, headers)
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
        self.done = False
        self.sock.sendall(data)

    def _fail(self, why: str) -> ProtocolError:
        """A fault in what the server sent: the connection is closed, never reused."""
        self.close()
        return ProtocolError(why)

    def _fill(self) -> bool:
        if self.sock is None:
            raise ProtocolError("the connection was closed")
        d = self.sock.recv(RECV)
        self._buf += d
        return bool(d)

    def _find(self, sep: bytes, what: str, limit: int = MAX_HEAD) -> int:
        """Where `sep` starts in what was received, reading on until it is there."""
        buf = self._buf
        end = buf.find(sep, 0, limit + len(sep))
        while end < 0:
            if len(buf) >= limit + len(sep):
                raise self._fail(f"{what} too long")
            if not self._fill():
                raise self._fail(f"connection closed in {what}")
            end = buf.find(sep, 0, limit + len(sep))
        return end

    def _line(self, limit: int = MAX_HEAD) -> bytes:
        end = self._find(b"\r\n", "a chunk's framing", limit)
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def response(self, method: str) -> Head:
        """The head of the next answer (to a `method` request); its body is read next."""
        buf = self._buf
        for _ in range(MAX_INTERIM + 1):
            end = self._find(b"\r\n\r\n", "a response head")
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            m = _STATUS.fullmatch(lines[0])
            if m is None:
                raise self._fail(f"not an HTTP/1.x answer: {lines[0][:40]!r}")
            if len(lines) > MAX_HEADERS + 1:
                raise self._fail(f"more than {MAX_HEADERS} header lines")
            status = int(m[2])
            headers: dict[str, str] = {}
            name = ""
            for line in lines[1:]:
                if b"\r" in line or b"\n" in line or b"\0" in line:
                    raise self._fail(f"CR, LF or NUL in header line {line[:40]!r}")
                if line[:1] in (b" ", b"\t") and name:  # an obsolete folded continuation
                    headers[name] += " " + line.strip(b" \t").decode("latin-1")
                    continue
                k, sep, v = line.partition(b":")
                if not sep or not _TOKEN.fullmatch(k):
                    raise self._fail(f"malformed header line {line[:40]!r}")
                name = k.lower().decode("latin-1")
                value = v.strip(b" \t").decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if status == 101:
                raise self._fail("switching protocols, which was not asked for")
            if not 100 <= status < 200:
                break
        else:
            raise self._fail(f"more than {MAX_INTERIM} interim (1xx) answers")
        conn = headers.get("connection", "").lower()
        self._keep = "close" not in conn and (m[1] == b"1" or "keep-alive" in conn)
        self._chunked = False
        self._chunk_end = False
        te = headers.get("transfer-encoding")
        if method == "HEAD" or status in (204, 304):
            self._left = 0
        elif te is not None:
            if te.lower() != "chunked":
                raise self._fail(f"unsupported Transfer-Encoding {te[:40]!r}")
            self._chunked, self._left = True, 0
            if "content-length" in headers:  # RFC 9112 6.3: a smuggling sign; not reused
                self._keep = False
        elif "content-length" in headers:
            self._left = self._content_length(headers["content-length"])
        else:
            self._left, self._keep = None, False
        self.done = False
        if self._left == 0 and not self._chunked:
            self._finish()
        return Head(status, headers)

    def _content_length(self, value: str) -> int:
        """Digits only (not `int()`'s '+3', '1_0' or ' 5 '); repeats must agree."""
        values = {v.strip(" \t") for v in value.split(",")}
        if len(values) != 1:
            raise self._fail(f"Content-Length values disagree: {value[:40]!r}")
        v = values.pop()
        if not _DIGITS.fullmatch(v):
            raise self._fail(f"malformed Content-Length {v[:40]!r}")
        return int(v)

    # -- bodies ------------------------------------------------------------------------------
    def _finish(self) -> None:
        self.done = True
        if not self._keep:
            self.close()

    def _next_chunk(self) -> int:
        """The next chunk's size (the size line read); 0 at the last, trailers consumed."""
        if self._chunk_end:
            if self._line(0):
                raise self._fail("chunk longer than its size")
            self._chunk_end = False
        size = self._line().partition(b";")[0].rstrip(b" \t")
        if not _HEX.fullmatch(size):
            raise self._fail(f"malformed chunk size {size[:20]!r}")
        n = int(size, 16)
        if n == 0:
            left = MAX_HEAD  # all trailers together, up to the empty line
            while line := self._line(max(left, 0)):
                left -= len(line) + 2
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
            if self.sock is None:
                raise ProtocolError("the connection was closed")
            n = self.sock.recv_into(view[:want]) if want else 0
            if n == 0 and want:
                if self._left is None:  # the body ends with the connection
                    self._finish()
                    return 0
                raise self._fail("connection closed in a response body")
        if self._left is not None:
            self._left -= n
            if self._left == 0 and not self._chunked:
                self._finish()
        return n

    def read_body(self, limit: int = MAX_BODY) -> bytes:
        """The whole body of the answer whose head was read last; a `ProtocolError` (and the
        connection closed) if it is longer than `limit`."""
        if self.done:
            return b""
        n = self._left
        if not self._chunked and n is not None:
            if n > limit:
                raise self._fail(f"an answer of {n} bytes, above {limit}")
            if len(self._buf) >= n:
                data = bytes(self._buf[:n])  # the usual small answer: already here
                del self._buf[:n]
                self._left = 0
                self._finish()
                return data
        out = bytearray()
        piece = bytearray(min(RECV, limit + 1))
        view = memoryview(piece)
        while got := self.readinto(view):
            out += view[:got]
            if len(out) > limit:
                raise self._fail(f"an answer above {limit} bytes")
        return bytes(out)


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server's close (or bytes
    nobody asked for), either way not a connection to send on."""
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(0))
