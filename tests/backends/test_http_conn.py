"""The S3 wire's HTTP/1.1 connection against a socket server that answers with exact bytes:
the framings S3 servers use, keep-alive and its end, answers cut short, and pipelined GETs
on a server that closes connections part-way."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover.backends.s3.wire.api import S3Wire, StaticCredentials
from ferry.mover.backends.s3.wire.http import (
    MAX_HEAD,
    Connection,
    ProtocolError,
    UnsafeRequest,
)
from ferry.mover.errors import ErrorKind


def _ok(doc: bytes, spaces: bytes = b"") -> bytes:
    body = spaces + b'<?xml version="1.0" encoding="UTF-8"?>' + doc
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


# path -> the raw answer (the server closes the connection after answers marked so)
ANSWERS: dict[str, tuple[bytes, bool]] = {
    "/length": (b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "e"\r\n\r\nhello', False),
    "/chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        False,
    ),
    "/interim": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-Amz-Meta-A: 1\r\n"
        b"X-Amz-Meta-A: 2\r\nX-Folded: one\r\n two\r\n\r\n",
        False,
    ),
    "/until-close": (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", True),
    "/close": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", True),
    "/cut": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True),
    "/garbage": (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True),
    # a multipart upload: created, completed, and failed after the 200 (spaces kept it open)
    "/b/big?uploads=": (
        _ok(
            b"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>big</Key>"
            b"<UploadId>u-1</UploadId></InitiateMultipartUploadResult>"
        ),
        False,
    ),
    "/b/big?uploadId=u-1": (
        _ok(
            b'<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"</CompleteMultipartUploadResult>",
            b"  \n  ",
        ),
        False,
    ),
    "/b/big?uploadId=u-2": (
        _ok(b"<Error><Code>InternalError</Code><Message>m</Message></Error>", b"  \n  "),
        False,
    ),
    "/b/denied": (
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 59\r\n\r\n"
        b"<Error><Code>SignatureDoesNotMatch</Code><Message/></Error>",
        False,
    ),
    **{
        f"/b/k{i}": (b"HTTP/1.1 206 Partial Content\r\nContent-Length: 2\r\n\r\n%02d" % i, False)
        for i in range(40)
    },
}


class RawServer:
    """Accepts connections and answers each request head with ANSWERS[path]."""

    def __init__(self, answers_per_connection: int = 0, announce: bool = False) -> None:
        self.limit = answers_per_connection  # then it closes the connection; 0: no limit
        self.announce = announce  # the last answer before such a close says `Connection: close`
        self.closed = 0  # connections this server has closed
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head)
        self.bodies: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            self._answer(conn, number)
        finally:
            conn.close()
            self.closed += 1

    def _answer(self, conn: socket.socket, number: int) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = conn.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            self.requests.append((number, head))
            line = head.split(b"\r\n")[0].decode()
            method, path = line.split()[:2]
            length = [
                int(h.split(b":")[1])
                for h in head.split(b"\r\n")
                if h.lower().startswith(b"content-length:")
            ]
            n = length[0] if length else 0
            while len(buf) < n:
                buf += conn.recv(65536)
            self.bodies.append(buf[:n])
            buf = buf[n:]
            answer, close = ANSWERS[path]
            if method == "HEAD":
                answer = answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
            last = sum(n == number for n, _ in self.requests) == self.limit
            if last and self.announce:
                status, _, rest = answer.partition(b"\r\n")
                answer = status + b"\r\nConnection: close\r\n" + rest
            conn.sendall(answer)
            if close or last:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    s = RawServer()
    yield s
    s.close()


def _conn(server: RawServer) -> Connection:
    return Connection(f"127.0.0.1:{server.port}", None, 5.0, 5.0)


def test_framings_on_one_kept_alive_connection(server: RawServer) -> None:
    c = _conn(server)
    try:
        head = c.request("GET", "/length", {"X-Amz-Date": "now"})
        assert head.status == 200 and head.headers["etag"] == '"e"'
        assert c.read_body() == b"hello"
        assert c.request("GET", "/chunked", {}).status == 200
        assert c.read_body() == b"hello, world"
        head = c.request("GET", "/interim", {})
        assert head.status == 204 and head.headers["x-amz-meta-a"] == "1, 2"
        assert head.headers["x-folded"] == "one two"
        assert c.read_body() == b""
        head = c.request("HEAD", "/length", {})  # a length, and no body after it
        assert head.headers["content-length"] == "5" and c.done
        # a body streamed in small pieces, chunked
        c.request("GET", "/chunked", {})
        got, piece = b"", bytearray(3)
        while n := c.readinto(memoryview(piece)):
            got += piece[:n]
        assert got == b"hello, world"
        c.request("PUT", "/length", {"Content-Length": "6"}, [b"abc", memoryview(b"def")])
        assert c.read_body() == b"hello"
    finally:
        c.close()
    assert server.connections == 1
    first = server.requests[0][1].decode()
    assert first.startswith("GET /length HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}" in first and "X-Amz-Date: now" in first


def test_answers_that_end_the_connection(server: RawServer) -> None:
    c = _conn(server)
    try:
        c.request("GET", "/until-close", {})
        assert c.read_body() == b"all of it" and c.sock is None
        c.request("GET", "/close", {})
        assert c.read_body() == b"ok" and c.sock is None
        c.request("GET", "/length", {})  # a new connection, opened on its own
        assert c.read_body() == b"hello"
        c.request("GET", "/cut", {})
        with pytest.raises(ProtocolError, match="closed in a response body"):
            c.read_body()
        c.close()
        with pytest.raises(ProtocolError, match="not an HTTP"):
            c.request("GET", "/garbage", {})
        c.close()
        # an answer left unread is not mistaken for the next one's
        c.request("GET", "/chunked", {})
        assert c.request("GET", "/length", {}).status == 200 and c.read_body() == b"hello"
    finally:
        c.close()
    assert server.connections == 6


@pytest.mark.parametrize("announce", [False, True], ids=["silent", "connection-close"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("limit", [0, 7, 1])
def test_pipelined_requests_across_closed_connections(
    limit: int, method: str, announce: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 GETs or PUTs go out 16 at a time; a server that closes each connection after `limit`
    answers (a keep-alive request limit, as nginx's keepalive_requests; the last answer says
    `Connection: close` where `announce`d) still answers them all, on fresh connections,
    each request acted on once."""
    server = RawServer(answers_per_connection=limit, announce=announce)
    sends: list[int] = []
    send = Connection.send

    def watched(c: Connection, data: bytes) -> None:
        sends.append(data.count(b"\r\n\r\n"))
        send(c, data)

    monkeypatch.setattr(Connection, "send", watched)
    wire = S3Wire.direct(
        f"http://127.0.0.1:{server.port}", "b", "us-east-1", StaticCredentials("a", "s"), None, 5
    )
    assert wire is not None
    try:
        bodies = [b"body %d" % i if method == "PUT" else b"" for i in range(40)]
        got = wire.pipeline(method, [(f"k{i}", {}, bodies[i]) for i in range(40)])
    finally:
        wire.close()
        server.close()
    assert [r.body if r else None for r in got] == [b"%02d" % i for i in range(40)]
    assert max(sends) == 16  # never more in flight than the pipeline's depth
    assert server.connections == (1 if limit == 0 else -(-40 // limit))
    heads = [h for _, h in server.requests]
    assert len(heads) == 40  # none acted on twice (requests behind a close are not acted on)
    assert all(h.startswith(method.encode() + b" /b/k") for h in heads)
    assert all(b"Authorization: AWS4-HMAC-SHA256 Credential=a/" in h for h in heads)
    assert sorted({int(h.split(b" ")[1][4:]) for h in heads}) == list(range(40))
    if method == "PUT":  # every body arrived whole, framed by its Content-Length
        assert sorted(set(server.bodies)) == sorted(bodies)


def test_pipeline_on_a_server_that_answers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections closed before any answer: no answers (asked again one at a time by the
    caller), after one fresh connection, not a loop."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def refuse() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=refuse, daemon=True).start()
    wire = S3Wire.direct(
        f"http://127.0.0.1:{server.getsockname()[1]}",
        "b",
        "us-east-1",
        StaticCredentials("a", "s"),
        None,
        5,
    )
    assert wire is not None
    try:
        assert wire.pipeline("GET", [(f"k{i}", {}, b"") for i in range(5)]) == [None] * 5
    finally:
        wire.close()
        server.close()
    assert len(accepted) == 1


def test_multipart_upload_created_and_completed(server: RawServer) -> None:
    """The upload id comes from the result document; a completion counts only when its 200
    carries a result, not the error S3 may send after the 200 (spaces kept it open)."""
    wire = S3Wire.direct(
        f"http://127.0.0.1:{server.port}", "b", "us-east-1", StaticCredentials("a", "s"), None, 5
    )
    assert wire is not None
    parts: list[tuple[int, str, str | None]] = [(1, '"e1"', "AAAAAA=="), (2, '"e&2"', None)]
    try:
        assert wire.create_upload("big", {"x-amz-meta-a": "1"}) == "u-1"
        assert wire.complete_upload("big", "u-1", parts, "CRC32")
        assert not wire.complete_upload("big", "u-2", parts, "CRC32")
    finally:
        wire.close()
    create, complete = server.requests[0][1], server.requests[1][1]
    assert create.startswith(b"POST /b/big?uploads= ") and b"x-amz-meta-a: 1" in create
    assert complete.startswith(b"POST /b/big?uploadId=u-1 ")
    assert server.bodies[1] == (
        b"<CompleteMultipartUpload>"
        b'<Part><PartNumber>1</PartNumber><ETag>"e1"</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32>'
        b"</Part>"
        b'<Part><PartNumber>2</PartNumber><ETag>"e&amp;2"</ETag></Part>'
        b"</CompleteMultipartUpload>"
    )
    assert len({n for n, _ in server.requests}) == 1  # all on one kept-alive connection


def test_pipelined_requests_refused_for_their_signature(server: RawServer) -> None:
    """A signature the server refuses turns the wire off (botocore signs the rest), whether
    the request went alone or in a pipeline."""
    wire = S3Wire.direct(
        f"http://127.0.0.1:{server.port}", "b", "us-east-1", StaticCredentials("a", "s"), None, 5
    )
    assert wire is not None
    try:
        got = wire.pipeline("GET", [("denied", {}, b"")] * 3)
        assert [r.status if r else None for r in got] == [403] * 3
        assert wire.off
        assert wire.pipeline("GET", [("k1", {}, b"")]) == [None]  # off: nothing is sent
    finally:
        wire.close()
    assert len(server.requests) == 3


def _head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


# Answers no server may send: each is a ProtocolError, and the connection is closed.
HOSTILE = {
    "length-negative": _head(b"HTTP/1.1 200 OK", b"Content-Length: -5") + b"hello",
    "length-plus": _head(b"HTTP/1.1 200 OK", b"Content-Length: +3") + b"abc",
    "length-underscore": _head(b"HTTP/1.1 200 OK", b"Content-Length: 1_0") + b"0123456789",
    "length-inner-space": _head(b"HTTP/1.1 200 OK", b"Content-Length: 1 0") + b"0123456789",
    "length-superscript": _head(b"HTTP/1.1 200 OK", b"Content-Length: \xb2") + b"ab",
    "length-huge": _head(b"HTTP/1.1 200 OK", b"Content-Length: " + b"9" * 20),
    "length-disagree": _head(b"HTTP/1.1 200 OK", b"Content-Length: 2", b"Content-Length: 3")
    + b"abc",
    "chunk-negative": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    + b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk-plus": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    + b"+5\r\nhello\r\n0\r\n\r\n",
    "chunk-0x": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-underscore": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    + b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
    "chunk-huge": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    + b"f" * 17
    + b"\r\nhello\r\n",
    "chunk-too-long": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    + b"3\r\nhello\r\n0\r\n\r\n",
    "trailers-endless": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    + b"0\r\n"
    + b"X-T: 0123456789012345678901234567890123456789\r\n" * 2000
    + b"\r\n",
    "coding-unknown": _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, chunked")
    + b"5\r\nhello\r\n0\r\n\r\n",
    "status-short": _head(b"HTTP/1.1 20 OK", b"Content-Length: 0"),
    "status-600": _head(b"HTTP/1.1 600 Nope", b"Content-Length: 0"),
    "status-glued": _head(b"HTTP/1.1 200OK", b"Content-Length: 0"),
    "status-http2": _head(b"HTTP/2 200", b"Content-Length: 0"),
    "status-switching": _head(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: h2c"),
    "interim-endless": _head(b"HTTP/1.1 100 Continue") * 17 + _head(b"HTTP/1.1 204 No Content"),
    "name-space": _head(b"HTTP/1.1 200 OK", b"Content-Length : 5") + b"hello",
    "name-empty": _head(b"HTTP/1.1 200 OK", b": 5", b"Content-Length: 0"),
    "fold-first": _head(b"HTTP/1.1 200 OK", b" Content-Length: 0"),
    "value-nul": _head(b"HTTP/1.1 200 OK", b"X-Amz-Meta-A: a\0b", b"Content-Length: 0"),
    "value-lf": _head(b"HTTP/1.1 200 OK", b"X-Amz-Meta-A: a\nX-Evil: 1", b"Content-Length: 0"),
    "value-cr": _head(b"HTTP/1.1 200 OK", b"X-Amz-Meta-A: a\rX-Evil: 1", b"Content-Length: 0"),
    "headers-many": _head(b"HTTP/1.1 200 OK", *[b"X-%d: 1" % i for i in range(300)]) + b"",
    "head-endless": b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * (MAX_HEAD + 10),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_answers_are_protocol_errors(
    name: str, server: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lengths and chunk sizes with a sign, an underscore or too many digits, unknown codings,
    bad status lines, header names and values, and heads, trailers or interim answers
    without end: a ProtocolError, the connection closed (never reused), the next request on
    a fresh one. Python's int() would take '+3', '1_0', '-5' or '²'."""
    monkeypatch.setitem(ANSWERS, "/hostile", (HOSTILE[name], False))
    c = _conn(server)
    try:
        with pytest.raises(ProtocolError):
            c.request("GET", "/hostile", {})
            c.read_body()
        assert c.sock is None
        assert c.request("GET", "/length", {}).status == 200 and c.read_body() == b"hello"
    finally:
        c.close()
    assert server.connections == 2


def test_bodies_read_whole_are_bounded(server: RawServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer longer than the caller can take is refused, before reading where its length
    says so, and as it arrives where it does not."""
    monkeypatch.setitem(
        ANSWERS, "/huge", (_head(b"HTTP/1.1 200 OK", b"Content-Length: 1000000000"), False)
    )
    monkeypatch.setitem(
        ANSWERS,
        "/long-chunked",
        (
            _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
            + b"100\r\n"
            + b"x" * 256
            + b"\r\n0\r\n\r\n",
            False,
        ),
    )
    c = _conn(server)
    try:
        c.request("GET", "/huge", {})
        with pytest.raises(ProtocolError, match="above 1000"):
            c.read_body(1000)
        assert c.sock is None
        c.request("GET", "/long-chunked", {})
        with pytest.raises(ProtocolError, match="above 100"):
            c.read_body(100)
        c.request("GET", "/long-chunked", {})
        assert c.read_body(256) == b"x" * 256
    finally:
        c.close()


def test_unsafe_requests_are_refused_before_sending(server: RawServer) -> None:
    """A CR, LF or NUL in a header value or the target would let a value add headers (or a
    request): refused before anything is sent, naming the header and not its value."""
    c = _conn(server)
    try:
        for headers, target, what in [
            ({"x-amz-storage-class": "STANDARD\r\nX-Evil: 1"}, "/length", "x-amz-storage-class"),
            ({"x-amz-meta-a": "a\nb"}, "/length", "x-amz-meta-a"),
            ({"x-amz-security-token": "secret\0token"}, "/length", "x-amz-security-token"),
            ({"Bad Name": "1"}, "/length", "Bad Name"),
            ({}, "/length\r\nX-Evil: 1", "target"),
            ({}, "/length HTTP/1.0", "target"),
        ]:
            with pytest.raises(UnsafeRequest, match=what) as e:
                c.request("PUT", target, headers, [b"x"])
            assert e.value.kind is ErrorKind.USAGE
            assert "secret" not in str(e.value) and "Evil" not in str(e.value)
    finally:
        c.close()
    assert server.connections == 0 and server.requests == []


def test_keys_with_line_breaks_are_encoded(
    server: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file name may hold a LF or CR (or a listed key a NUL): in the target they are
    percent-encoded, so the request goes out whole; a secret that would break the head is
    refused without showing it."""
    monkeypatch.setitem(ANSWERS, "/b/a%0Ab%0Dc%00d", ANSWERS["/length"])
    wire = S3Wire.direct(
        f"http://127.0.0.1:{server.port}", "b", "us-east-1", StaticCredentials("a", "s"), None, 5
    )
    bad = S3Wire.direct(
        f"http://127.0.0.1:{server.port}",
        "b",
        "us-east-1",
        StaticCredentials("a", "s", "s3cr3t\r\nvalue"),
        None,
        5,
    )
    assert wire is not None and bad is not None
    try:
        r = wire.request("GET", "a\nb\rc\0d")
        assert r is not None and r.status == 200 and r.body == b"hello"
        with pytest.raises(UnsafeRequest, match="x-amz-security-token") as e:
            bad.request("GET", "k1")
        assert "s3cr3t" not in str(e.value)
    finally:
        wire.close()
        bad.close()
    assert len(server.requests) == 1
    assert server.requests[0][1].startswith(b"GET /b/a%0Ab%0Dc%00d HTTP/1.1\r\n")


def test_post_after_the_server_closed_the_idle_connection(server: RawServer) -> None:
    """A request that must not go twice (creating a multipart upload) is not sent on a
    kept-alive connection the server has already closed: it goes on a fresh one, once."""
    limited = RawServer(answers_per_connection=1)
    wire = S3Wire.direct(
        f"http://127.0.0.1:{limited.port}", "b", "us-east-1", StaticCredentials("a", "s"), None, 5
    )
    assert wire is not None
    try:
        assert wire.request("GET", "k1") is not None
        deadline = time.monotonic() + 10
        while limited.closed < 1:  # the server's close has happened (its FIN is on the way)
            assert time.monotonic() < deadline, "the server never closed the connection"
            time.sleep(0.01)
        assert wire.create_upload("big", {}) == "u-1"
    finally:
        wire.close()
        limited.close()
    assert [h.split(b" ")[0] for _, h in limited.requests] == [b"GET", b"POST"]
    assert limited.connections == 2


class _Replay:
    """A socket-like replay of `data` in pieces of the given sizes, then the end of the
    connection: the parser's input without a server, so that hypothesis can feed it fast."""

    def __init__(self, data: bytes, pieces: list[int]) -> None:
        self.data, self.pieces, self.pos, self.reads = data, pieces or [1 << 16], 0, 0

    def _take(self, n: int) -> bytes:
        size = min(n, self.pieces[self.reads % len(self.pieces)])
        self.reads += 1
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out

    def recv(self, n: int) -> bytes:
        return self._take(n)

    def recv_into(self, view: memoryview) -> int:
        got = self._take(len(view))
        view[: len(got)] = got
        return len(got)

    def close(self) -> None:
        pass


LIMIT = 4096  # the body bound the property tests read with
VALID = [a for a, _ in ANSWERS.values()] + [
    _head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Content-Length: 5")
    + b"5\r\nhello\r\n0\r\n\r\n"
]
TOKENS = [b"-", b"+", b"_", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\0", b";", b",", b":", b"0x"]
TOKENS += [b"9" * 20, b"f" * 17, b"\r\n\r\n", b"Content-Length: 7\r\n", b"HTTP/1.1 100 C\r\n\r\n"]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid answer (or two, pipelined) with a few bytes replaced, inserted or cut."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(1, 4))):
        # mostly where a number or a line starts: a length, a chunk size, a header
        starts = [m.end() for m in re.finditer(rb": |\r\n", data)]
        at = draw(st.sampled_from(starts) if starts else st.integers(0, len(data)))
        at = draw(st.sampled_from([at, draw(st.integers(0, len(data)))]))
        how = draw(st.sampled_from(["replace", "insert", "cut"]))
        if how == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            piece = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=4))
            data[at : at + (len(piece) if how == "replace" else 0)] = piece
    return bytes(data)


def _parse_all(data: bytes, pieces: list[int], method: str) -> None:
    """Read every answer in `data` as a client would, stopping at the first error or when
    the connection is closed or used up; asserts what must hold whatever the bytes."""
    c = Connection("127.0.0.1:1", None, 1.0, 1.0)
    replay = _Replay(data, pieces)
    c.sock = replay  # type: ignore[assignment]
    for _ in range(4):  # more answers than `data` can hold
        try:
            c.done = False
            head = c.response(method)
            framed = not c.done and not c._chunked and c._left is not None
            body = c.read_body(LIMIT)
        except ProtocolError:
            assert c.sock is None  # a fault never leaves the connection to be reused
            return
        assert len(body) <= LIMIT
        if framed:  # a body framed by its length: plain digits, and exactly that long
            (length,) = {v.strip() for v in head.headers["content-length"].split(",")}
            assert re.fullmatch("[0-9]+", length) and len(body) == int(length)
        if c.sock is None or replay.pos >= len(data):
            return
        # what was received and not consumed is never more than a head and a read
        assert len(c._buf) <= MAX_HEAD + (1 << 16)


_PROPERTY = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(
    st.binary(max_size=2048),
    st.lists(st.integers(1, 64), max_size=4),
    st.sampled_from(["GET", "HEAD", "PUT"]),
)
def test_random_bytes_only_classified_errors(data: bytes, pieces: list[int], method: str) -> None:
    """Any bytes at all: an answer, or a ProtocolError (a ConnectionError, so classified
    transient); never another exception, a hang (the deadline) or a read past the bounds."""
    _parse_all(b"HTTP/1.1 " + data if data[:1] == b"2" else data, pieces, method)


@_PROPERTY
@given(_mutated(), st.lists(st.integers(1, 64), max_size=4), st.sampled_from(["GET", "HEAD"]))
def test_mutated_answers_only_classified_errors(
    data: bytes, pieces: list[int], method: str
) -> None:
    """Valid answers with signs, underscores, line breaks, NULs, long numbers and stray
    framing spliced in: parsed, or a ProtocolError, within the deadline and the bounds."""
    _parse_all(data, pieces, method)
