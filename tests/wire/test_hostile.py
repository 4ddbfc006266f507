"""A hostile peer with a valid certificate: raw requests no Ferry client would send.

Whatever it sends, the server answers with a clear 4xx/5xx JSON error, keeps serving, and
nothing outside ROOT changes (the directory around ROOT is snapshotted before and after).
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover.backends.ferry.protocol import H_ENCODING, H_HANDLE, H_OFFSET, H_RAW, MAX_BODY
from ferry.mover.errors import ErrorKind
from ferry.mover.integrity import digest_bytes
from tests.wire.conftest import Server

FILE_ENTRY = ["f", 0, 5, 1_600_000_000_000_000_000, 0o644, -1, -1, 1, 0, 0, -1, None, None]


class Peer:
    """One kept-alive mutual-TLS connection that reconnects when the server closes it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn = server.connect()

    def send(
        self, route: str, body: bytes | str | object = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any] | bytes]:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        hdrs = {"Content-Length": str(len(data))}
        hdrs.update(headers or {})
        try:
            self.conn.putrequest("POST", f"/v1/{route}", skip_accept_encoding=True)
            for k, v in hdrs.items():
                self.conn.putheader(k, v)
            self.conn.endheaders(data)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = self.server.connect()
            raise
        if resp.will_close:
            self.conn.close()
            self.conn = self.server.connect()
        if resp.getheader("Content-Type") == "application/json":
            return resp.status, json.loads(raw)
        return resp.status, raw

    def json(self, route: str, doc: object) -> tuple[int, dict[str, Any]]:
        status, reply = self.send(route, doc)
        assert isinstance(reply, dict), reply
        return status, reply


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if Path(p) == skip:
                continue  # ROOT's own times change with what is made inside it
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def around(server: Server) -> Any:
    """The directory around ROOT, with a file and a directory a peer would love to reach."""
    outside = server.root.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for peers")
    before = snapshot(server.root.parent, server.root)
    yield outside
    assert snapshot(server.root.parent, server.root) == before, "something outside ROOT changed"
    assert "Traceback" not in server.log()


def refused(status: int, reply: object, kind: ErrorKind) -> None:
    assert isinstance(reply, dict), reply
    assert (reply.get("reason"), status) == (kind.name, status), reply
    assert 400 <= status < 600 and reply.get("message")


BAD_PATHS = [
    "../outside/secret.txt",
    "a/../../outside",
    "/etc/passwd",
    "a//b",
    "./a",
    "a/.",
    "a\x00b",
    ".~ferry.x.journal",
    "x" * 5000,
    "y" * 300,
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_escaping_paths_are_refused_on_every_route(server: Server, around: Path, path: str) -> None:
    peer = Peer(server)
    for route, doc in (
        ("stat", {"path": path}),
        ("list", {"path": path}),
        ("read", {"path": path, "offset": 0, "length": 10}),
        ("mkdir", {"path": path}),
        ("remove", {"path": path}),
        ("open", {"path": path, "entry": FILE_ENTRY, "resume_key": None}),
        ("symlink", {"path": path, "target": "/etc"}),
        ("hardlink", {"path": "ok", "existing": path}),
        ("meta", {"path": path, "entry": FILE_ENTRY, "preserve": ["perms"]}),
    ):
        status, reply = peer.json(route, doc)
        refused(status, reply, ErrorKind.UNSAFE_PATH)
    assert peer.json("mkdir", {"path": "fine"})[0] == 200


def test_a_planted_symlink_is_never_followed(server: Server, around: Path) -> None:
    peer = Peer(server)
    # planted by the peer itself (symlinks are data it may copy) ...
    assert peer.json("symlink", {"path": "evil", "target": str(around)})[0] == 200
    # ... or found on disk
    os.symlink(str(around), server.root / "found")
    for link in ("evil", "found"):
        for route, doc in (
            ("open", {"path": f"{link}/x", "entry": FILE_ENTRY, "resume_key": None}),
            ("open", {"path": f"{link}/y", "entry": FILE_ENTRY, "resume_key": "k"}),
            ("mkdir", {"path": f"{link}/d"}),
            ("list", {"path": link}),
            ("read", {"path": f"{link}/secret.txt", "offset": 0, "length": 100}),
            ("read", {"path": link, "offset": 0, "length": 100}),
            ("meta", {"path": link, "entry": FILE_ENTRY, "preserve": ["perms"]}),
            ("remove", {"path": f"{link}/secret.txt"}),
            ("symlink", {"path": f"{link}/l", "target": "x"}),
            ("hardlink", {"path": "h", "existing": f"{link}/secret.txt"}),
        ):
            status, reply = peer.json(route, doc)
            refused(status, reply, ErrorKind.UNSAFE_PATH)
    # a symlink's own metadata and the link itself may be handled
    link_entry = ["evil", 2, 0, 1_600_000_000_000_000_000, 0o777, -1, -1, 1, 0, 0, -1, "x", None]
    assert peer.json("meta", {"path": "evil", "entry": link_entry, "preserve": ["times"]})[0] == 200
    assert peer.json("remove", {"path": "evil"})[0] == 200
    assert (around / "secret.txt").read_text() == "not for peers"


def test_a_symlink_planted_between_open_and_commit(server: Server, around: Path) -> None:
    """The commit checks the path again: a directory swapped for a link meanwhile is refused."""
    peer = Peer(server)
    assert peer.json("mkdir", {"path": "d"})[0] == 200
    _, reply = peer.json("open", {"path": "d/f", "entry": FILE_ENTRY, "resume_key": None})
    handle = reply["handle"]
    data = b"hello"
    hdrs = {H_HANDLE: handle, H_OFFSET: "0", H_RAW: "5", H_ENCODING: "identity"}
    assert peer.send("write", data, hdrs)[0] == 200
    os.rmdir(server.root / "d")
    os.symlink(str(around), server.root / "d")
    status, reply = peer.json(
        "commit",
        {
            "handle": handle,
            "entry": FILE_ENTRY,
            "digest": digest_bytes(data),
            "preserve": ["times"],
        },
    )
    refused(status, reply, ErrorKind.UNSAFE_PATH)
    assert not (around / "f").exists()


def _open(peer: Peer, path: str = "f") -> str:
    status, reply = peer.json("open", {"path": path, "entry": FILE_ENTRY, "resume_key": None})
    assert status == 200, reply
    return str(reply["handle"])


def test_lying_lengths_and_encodings(server: Server, around: Path) -> None:
    peer = Peer(server)
    handle = _open(peer)
    z = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    for body, raw, enc in (
        (z, "100", "zstd"),  # decompresses to more than declared
        (z, str(2 << 20), "zstd"),  # to less
        (z, str(64 << 20), "zstd"),  # over the piece limit
        (b"not zstd at all", "15", "zstd"),
        (b"abc", "4", "identity"),
        (b"abc", "-3", "identity"),
        (b"abc", "3", "gzip"),
        (b"abc", "", "identity"),
    ):
        hdrs = {H_HANDLE: handle, H_OFFSET: "0", H_RAW: raw, H_ENCODING: enc}
        status, reply = peer.send("write", body, hdrs)
        refused(status, reply, ErrorKind.PROTOCOL)
    for offset in ("-1", "x", str(1 << 70)):
        hdrs = {H_HANDLE: handle, H_OFFSET: offset, H_RAW: "3", H_ENCODING: "identity"}
        refused(*peer.send("write", b"abc", hdrs), ErrorKind.PROTOCOL)
    hdrs = {H_HANDLE: "nope", H_OFFSET: "0", H_RAW: "3", H_ENCODING: "identity"}
    refused(*peer.send("write", b"abc", hdrs), ErrorKind.TRANSIENT)


def test_oversize_missing_and_chunked_bodies(server: Server, around: Path) -> None:
    peer = Peer(server)
    handle = _open(peer)
    # a Content-Length over the cap is refused before the body is read, and the connection
    # closed (its unread body cannot be taken for the next request)
    status, reply = peer.send("write", b"", {H_HANDLE: handle, "Content-Length": str(MAX_BODY + 1)})
    refused(status, reply, ErrorKind.PROTOCOL)
    status, reply = peer.send("stat", b"x" * 100, {"Content-Length": str(2 << 20)})
    refused(status, reply, ErrorKind.PROTOCOL)
    conn = server.connect()
    conn.putrequest("POST", "/v1/stat")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders(b'c\r\n{"path":"x"}\r\n0\r\n\r\n')
    resp = conn.getresponse()
    assert resp.status == 400 and json.loads(resp.read())["reason"] == "PROTOCOL"
    conn.close()
    conn = server.connect()
    conn.putrequest("POST", "/v1/stat")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 400 and "Content-Length" in json.loads(resp.read())["message"]
    conn.close()
    assert peer.json("stat", {"path": ""})[0] == 200, "still serving"


def test_the_probe_takes_a_bounded_body_and_writes_nothing(server: Server, around: Path) -> None:
    peer = Peer(server)
    status, reply = peer.send("probe", b"\0" * 300_000)
    assert status == 200 and reply == {"bytes": 300_000}
    status, reply = peer.send("probe", b"", {"Content-Length": str(MAX_BODY + 1)})
    refused(status, reply, ErrorKind.PROTOCOL)
    conn = server.connect()
    conn.putrequest("POST", "/v1/probe")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders(b"3\r\nabc\r\n0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 400 and json.loads(resp.read())["reason"] == "PROTOCOL"
    conn.close()
    assert list(server.root.iterdir()) == []
    assert peer.json("stat", {"path": ""})[0] == 200, "still serving"


def test_malformed_json_and_routes(server: Server, around: Path) -> None:
    peer = Peer(server)
    for route, body in (
        ("stat", "{not json"),
        ("stat", "[1, 2]"),
        ("stat", '{"path": 5}'),
        ("open", '{"path": "f", "entry": [1, 2]}'),
        ("open", json.dumps({"path": "f", "entry": [*FILE_ENTRY[:2], -5, *FILE_ENTRY[3:]]})),
        ("read", '{"path": "f", "offset": -1, "length": 1}'),
        ("read", '{"path": "f", "offset": 0, "length": 1e9}'),
        ("meta", json.dumps({"path": "f", "entry": FILE_ENTRY, "preserve": ["everything"]})),
        ("nosuchroute", "{}"),
        ("stat", "[" * 100_000),
    ):
        status, reply = peer.send(route, body)
        refused(status, reply, ErrorKind.PROTOCOL)


def test_a_wrong_digest_publishes_nothing(server: Server, around: Path) -> None:
    peer = Peer(server)
    handle = _open(peer, "g")
    hdrs = {H_HANDLE: handle, H_OFFSET: "0", H_RAW: "5", H_ENCODING: "identity"}
    assert peer.send("write", b"hello", hdrs)[0] == 200
    doc = {"handle": handle, "entry": FILE_ENTRY, "digest": digest_bytes(b"HELLO"), "preserve": []}
    refused(*peer.json("commit", doc), ErrorKind.VERIFY_MISMATCH)
    assert not (server.root / "g").exists()
    assert not list(server.root.iterdir())


def test_batches_refuse_escapes_and_lying_lengths(server: Server, around: Path) -> None:
    from ferry.mover.backends.ferry.protocol import pack_batch

    peer = Peer(server)
    ok = {"path": "ok", "entry": FILE_ENTRY, "digest": None, "enc": "identity", "raw": 5, "len": 5}
    bad = {**ok, "path": "../outside/planted"}
    status, reply = peer.send(
        "put_small", pack_batch({"files": [bad, ok], "preserve": []}, [b"evil!", b"hello"])
    )
    assert status == 200 and isinstance(reply, dict)
    first, second = reply["outcomes"]
    assert first["reason"] == "UNSAFE_PATH" and second is None
    assert (server.root / "ok").read_bytes() == b"hello"
    for files, payload in (
        ([{**ok, "len": 6}], [b"hello"]),  # declares more than the body holds
        ([{**ok, "len": -1}], [b""]),
        ([ok] * 300, [b"hello"] * 300),  # over MAX_BATCH
    ):
        refused(
            *peer.send("put_small", pack_batch({"files": files, "preserve": []}, payload)),
            ErrorKind.PROTOCOL,
        )
    refused(*peer.send("put_small", b"\xff\xff\xff\xff{}"), ErrorKind.PROTOCOL)
    lie = {**ok, "raw": 100, "enc": "zstd", "len": 9}
    status, reply = peer.send(
        "put_small",
        pack_batch(
            {"files": [lie], "preserve": []}, [zstandard.ZstdCompressor().compress(bytes(1000))[:9]]
        ),
    )
    assert status == 200 and isinstance(reply, dict)
    assert reply["outcomes"][0]["reason"] == "PROTOCOL"
    refused(*peer.json("get_small", {"files": ["../outside/secret.txt"]}), ErrorKind.UNSAFE_PATH)
    os.symlink(str(around / "secret.txt"), server.root / "peek")
    refused(*peer.json("get_small", {"files": ["peek"]}), ErrorKind.UNSAFE_PATH)


def test_streamed_reads_are_bounded(server: Server, around: Path) -> None:
    peer = Peer(server)
    data = os.urandom(3 << 20)
    (server.root / "r").write_bytes(data)
    status, body = peer.send(
        "read", {"path": "r", "offset": 1000, "length": 4 << 20, "stream": True}
    )
    assert status == 200 and body == data[1000:], "the file's part of the range, no more"
    status, body = peer.send("read", {"path": "r", "offset": 5 << 20, "length": 10, "stream": True})
    assert status == 200 and body == b""
    refused(
        *peer.json("read", {"path": "r", "offset": 0, "length": 1 << 31, "stream": True}),
        ErrorKind.PROTOCOL,
    )
    refused(
        *peer.json(
            "read", {"path": "../outside/secret.txt", "offset": 0, "length": 10, "stream": True}
        ),
        ErrorKind.UNSAFE_PATH,
    )
    os.symlink(str(around / "secret.txt"), server.root / "s")
    refused(
        *peer.json("read", {"path": "s", "offset": 0, "length": 10, "stream": True}),
        ErrorKind.UNSAFE_PATH,
    )
    (server.root / "d").mkdir()
    refused(
        *peer.json("read", {"path": "d", "offset": 0, "length": 10, "stream": True}),
        ErrorKind.UNSAFE_PATH,
    )


def _chunked(server: Server, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = server.connect()
    try:
        conn.putrequest("POST", "/v1/delta")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_delta_route_bounds(server: Server, around: Path) -> None:
    peer = Peer(server)
    (server.root / "basis").write_bytes(os.urandom(200_000))
    head = json.dumps({"path": "basis", "entry": FILE_ENTRY, "digest": None, "preserve": []})
    for body, kind in (
        (b"zz\r\n", ErrorKind.PROTOCOL),  # not a hex size
        (b"%x\r\n" % (MAX_BODY + 1), ErrorKind.PROTOCOL),  # a chunk over the cap
        (b"5" * 2000 + b"\r\n", ErrorKind.PROTOCOL),  # an endless size line
        (_chunk(b"{not json") + b"0\r\n\r\n", ErrorKind.PROTOCOL),
        (
            _chunk(head.encode()) + _chunk(b"garbage, not a delta") + b"0\r\n\r\n",
            ErrorKind.PROTOCOL,
        ),
        (
            _chunk(head.replace("basis", "../outside/secret.txt").encode()) + b"0\r\n\r\n",
            ErrorKind.UNSAFE_PATH,
        ),
    ):
        status, reply = _chunked(server, body)
        refused(status, reply, kind)
    refused(*peer.send("delta", head), ErrorKind.PROTOCOL)  # a Content-Length body
    refused(
        *peer.json(
            "signature", {"path": "../outside/secret.txt", "entry": FILE_ENTRY, "block_size": None}
        ),
        ErrorKind.UNSAFE_PATH,
    )
    os.symlink(str(around / "secret.txt"), server.root / "sig-link")
    refused(
        *peer.json("signature", {"path": "sig-link", "entry": FILE_ENTRY, "block_size": None}),
        ErrorKind.UNSAFE_PATH,
    )
    st = (server.root / "basis").stat()
    basis = ["basis", 0, st.st_size, st.st_mtime_ns, 0o644, -1, -1, 1, 0, 0, -1, None, None]
    status, sig = peer.send("signature", {"path": "basis", "entry": basis, "block_size": 4096})
    assert status == 200 and isinstance(sig, bytes) and len(sig) > 0
    assert peer.json("stat", {"path": "basis"})[0] == 200


_names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("./\\\x00~"),
    max_size=40,
)
_routes = st.sampled_from(
    [
        "stat",
        "list",
        "read",
        "mkdir",
        "remove",
        "open",
        "symlink",
        "hardlink",
        "meta",
        "done",
        "record",
        "size",
        "commit",
        "abort",
        "partial",
        "write",
        "readback",
        "probe",
    ]
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _names,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(_names, kids, max_size=5),
    max_leaves=20,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=_routes,
    path=_names,
    extra=st.dictionaries(
        st.sampled_from(
            [
                "offset",
                "length",
                "entry",
                "target",
                "existing",
                "handle",
                "preserve",
                "resume_key",
                "digest",
                "chunk_size",
                "index",
                "size",
            ]
        ),
        _json,
        max_size=4,
    ),
    headers=st.dictionaries(
        st.sampled_from([H_RAW, H_OFFSET, H_HANDLE, H_ENCODING]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
        max_size=4,
    ),
    body=st.binary(max_size=64),
)
def test_fuzzed_requests_get_clear_errors(
    server: Server,
    around: Path,
    route: str,
    path: str,
    extra: dict[str, Any],
    headers: dict[str, str],
    body: bytes,
) -> None:
    peer = getattr(server, "_peer", None) or Peer(server)
    server._peer = peer  # type: ignore[attr-defined]
    raw_body = route in ("write", "put_small")
    payload: bytes | dict[str, Any] = body if raw_body else {"path": path, **extra}
    status, reply = peer.send(route, payload, headers)
    if status != 200:
        assert isinstance(reply, dict) and reply["reason"] in ErrorKind.__members__, reply
        assert status < 500 or reply["reason"] in ("TRANSIENT", "IO_ERROR", "DESTINATION_FULL")
    assert peer.json("stat", {"path": ""})[0] == 200
