"""Untrusted input the other way round: a server with a valid certificate that answers
nonsense. The client refuses it with a clear error and writes nothing outside its
destination."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import zstandard

from ferry.mover import acl
from ferry.mover.backends.ferry.protocol import H_DIGEST, H_ENCODING, H_RAW
from tests.conftest import run_ferry
from tests.strict import unavailable
from tests.wire.certs import Certs

DIR = ["", 1, 0, 1_600_000_000_000_000_000, 0o755, -1, -1, 2, 0, 0, -1, None, None]


def file_entry(name: str, size: int) -> list[Any]:
    return [name, 0, size, 1_600_000_000_000_000_000, 0o644, -1, -1, 1, 0, 0, -1, None, None]


Reply = tuple[int, dict[str, str], bytes]


class Fake:
    def __init__(self, certs: Certs, answer: Callable[[str, bytes], Reply]) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(certs.ca))
        ctx.load_cert_chain(str(certs.server.cert), str(certs.server.key))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                status, headers, data = outer.answer(self.path.removeprefix("/v1/"), body)
                self.send_response(status)
                headers = {"Content-Length": str(len(data)), **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        self.answer = answer
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.socket.getsockname()[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, certs: Certs) -> str:
        c = certs.client
        return (
            f"ferry://127.0.0.1:{self.port}/x?tls_cert={c.cert}&tls_key={c.key}&tls_ca={certs.ca}"
        )


def js(doc: object) -> Reply:
    return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()


def base(route: str, body: bytes) -> Reply | None:
    if route == "hello":
        return js({"version": 1, "features": ["zstd", "batch"]})
    if route == "stat":
        return js({"entry": DIR})
    return None


@pytest.fixture
def fake(certs: Certs) -> Iterator[Callable[[Callable[[str, bytes], Reply | None]], Fake]]:
    made: list[Fake] = []

    def make(extra: Callable[[str, bytes], Reply | None]) -> Fake:
        def answer(route: str, body: bytes) -> Reply:
            got = extra(route, body) or base(route, body)
            return got or (500, {}, b"")

        f = Fake(certs, answer)
        made.append(f)
        return f

    yield make
    for f in made:
        f.httpd.shutdown()


def listing(*entries: list[Any]) -> Callable[[str, bytes], Reply | None]:
    def extra(route: str, body: bytes) -> Reply | None:
        return js({"entries": list(entries)}) if route == "list" else None

    return extra


@pytest.mark.parametrize("name", ["..", "a/../../b", "", ".", "x\x00y"])
def test_escaping_names_in_a_listing(tmp_path: Path, certs: Certs, fake: Any, name: str) -> None:
    f = fake(listing(file_entry(name, 3)))
    dst = tmp_path / "inner" / "dst"
    r = run_ferry("copy", f.url(certs), dst, "--json", check_rc=None)
    assert r.rc in (8, 15), r.stdout + r.stderr  # UnsafePath or ProtocolError
    assert r.summary["reason"] in ("UnsafePath", "ProtocolError")
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["dst", "inner"], ["inner"])


def test_malformed_entries_and_replies(tmp_path: Path, certs: Certs, fake: Any) -> None:
    for extra in (
        listing(["f", 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, None, None]),
        listing("not an entry"),
        lambda route, body: (
            (200, {"Content-Type": "application/json"}, b"{broken") if route == "list" else None
        ),
        lambda route, body: (
            (200, {"Content-Length": str(1 << 40)}, b"") if route == "list" else None
        ),
    ):
        r = run_ferry("copy", fake(extra).url(certs), tmp_path / "d", "--json", check_rc=15)
        assert r.summary["reason"] == "ProtocolError"


def test_reads_that_lie(tmp_path: Path, certs: Certs, fake: Any) -> None:
    """A whole-file read whose digest does not match, and a zstd piece that decompresses to
    more than it declares: refused, and no file is published."""
    data = b"x" * 5000
    bomb = zstandard.ZstdCompressor().compress(bytes(50 << 20))

    def wrong_digest(route: str, body: bytes) -> Reply | None:
        if route == "list":
            return js({"entries": [file_entry("f", len(data))]})
        if route == "read":
            h = {H_RAW: str(len(data)), H_ENCODING: "identity", H_DIGEST: "b3m1:" + "0" * 64}
            return 200, h, data
        return None

    def zstd_bomb(route: str, body: bytes) -> Reply | None:
        if route == "list":
            return js({"entries": [file_entry("f", len(data))]})
        if route in ("read", "get_small"):
            return 200, {H_RAW: str(len(data)), H_ENCODING: "zstd"}, bomb
        return None

    for extra, reason in ((wrong_digest, "VerifyMismatch"), (zstd_bomb, "ProtocolError")):
        dst = tmp_path / reason
        r = run_ferry(
            "copy", fake(extra).url(certs), dst, "--json", "--retries", "0", check_rc=None
        )
        assert r.rc != 0
        text = r.stdout + r.stderr
        assert reason in text, text
        assert not (dst / "f").exists()


def test_a_server_without_acls_makes_preserve_acls_refused(
    tmp_path: Path, certs: Certs, fake: Any
) -> None:
    """An older `ferry serve` (its hello offers no "acls"): refused by name as a source and
    as a destination, never copied without them."""
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))
    f = fake(listing())
    (tmp_path / "src").mkdir()
    for cmd, args in (
        ("copy", (tmp_path / "src", f.url(certs))),
        ("copy", (f.url(certs), tmp_path / "dst")),
        ("verify", (tmp_path / "src", f.url(certs))),
    ):
        r = run_ferry(cmd, *args, "--preserve", "+acls", check_rc=2)
        assert "--preserve acls: this endpoint cannot hold POSIX ACLs" in r.stderr, r.stderr
        assert "ferry://127.0.0.1" in r.stderr, r.stderr
    assert not (tmp_path / "dst").exists()


def test_acls_from_a_server_come_with_its_listings(tmp_path: Path, certs: Certs, fake: Any) -> None:
    """One request per directory: a file's ACL from the listing (this server answers no
    `acls` request but the root's), set on the copy."""
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))
    text = "u::rw-,u:4242:r--,g::r--,m::r--,o::---"
    asked: list[str] = []

    def extra(route: str, body: bytes) -> Reply | None:
        if route == "hello":
            return js({"version": 1, "features": ["acls"]})
        if route == "list":
            assert json.loads(body).get("acls") is True
            return js({"entries": [file_entry("f", 0)], "acls": [[text, ""]]})
        if route == "acls":
            asked.append(json.loads(body)["path"])
            return js({"acls": ["", ""]})
        return None

    dst = tmp_path / "dst"
    dst.mkdir()
    try:
        acl.set_path(str(dst), acl.AclText(), True)
    except OSError as exc:
        unavailable(f"no POSIX ACLs here: {exc}")
    run_ferry("copy", fake(extra).url(certs), dst, "--preserve", "+acls")
    assert acl.read_path(str(dst / "f"), False) == acl.AclText(text)
    assert asked == ["x"], asked  # the root's only


@pytest.mark.parametrize(
    "listed",
    [
        {"acls": [["u:root:rwx,g::r--,o::---", ""]]},  # a name: would be looked up
        {"acls": [["u::rw-,g::r--", ""]]},  # libacl would not take it
        {"acls": [["u::rw-"]]},
        {"acls": []},  # not one per entry
        {},  # none at all
    ],
)
def test_hostile_acls_from_a_server_are_refused(
    tmp_path: Path, certs: Certs, fake: Any, listed: dict[str, Any]
) -> None:
    """A server that offers ACLs and lists text libacl would not take, a name to look up
    or a wrong shape: refused, nothing written with it."""
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))

    def extra(route: str, body: bytes) -> Reply | None:
        if route == "hello":
            return js({"version": 1, "features": ["acls"]})
        if route == "list":
            return js({"entries": [file_entry("f", 3)], **listed})
        if route == "acls":
            return js({"acls": None})
        return None

    r = run_ferry(
        "copy", fake(extra).url(certs), tmp_path / "dst", "--preserve", "+acls", check_rc=None
    )
    assert r.rc == 15 and "acls" in r.stderr, r.stdout + r.stderr  # ProtocolError
    assert not (tmp_path / "dst" / "f").exists()
