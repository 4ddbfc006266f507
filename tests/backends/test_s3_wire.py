"""The hand-signed single-object path (s3_wire) on both S3 servers.

Every failure on the wire falls back to botocore, so a signing mistake would
only make runs slower, never wrong: these tests therefore assert that the wire
carried the calls (botocore saw no GetObject, PutObject or HeadObject) and
that nothing turned it off, on names that exercise the canonical URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends import s3
from ferry.mover.backends.s3_wire import S3Wire
from tests.backends.conftest import BUCKET
from tests.backends.helpers import ok, transfer
from tests.backends.tree import CHUNK, build, compare
from tests.servers.proxy import TCPRelay

pytestmark = pytest.mark.servers


def _watch(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[s3.S3Backend]]:
    """Record botocore's S3 calls and the backends made, in this process."""
    calls: list[str] = []
    made: list[s3.S3Backend] = []
    init = s3.S3Backend.__init__

    def watched(self: s3.S3Backend, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        made.append(self)
        self.client.meta.events.register(
            "before-call.s3.*", lambda model, **_: calls.append(model.name)
        )

    monkeypatch.setattr(s3.S3Backend, "__init__", watched)
    return calls, made


def test_small_objects_go_over_the_wire(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up, re-sync (HEADs) and down: botocore only lists and handles the multipart file
    (its resume sidecar is a small object, so that goes over the wire too)."""
    r = remotes(s3_kind)
    src = tmp_path / "src"
    build(src, big=False, posix_names=s3_kind == "s3-moto")
    sub = r.fresh("wire")
    calls, made = _watch(monkeypatch)
    ok(transfer(str(src), r.uri(sub)))
    again = ok(transfer(str(src), r.uri(sub)))
    assert again.files_copied == again.files_updated == 0
    back = tmp_path / "back"
    ok(transfer(r.uri(sub), str(back)))
    assert not {"PutObject", "HeadObject"} & set(calls), " ".join(calls)
    # GETs through botocore: only the long ranges of the one file above the chunk size.
    big = [p for p in src.rglob("*") if p.is_file() and p.stat().st_size > CHUNK]
    assert len(big) == 1 and calls.count("GetObject") <= s3.S3Backend.caps.read_streams
    assert made and all(b.wire is not None and not b.wire.off for b in made)
    assert compare(src, back, empty_dirs=False) == []


def test_rejected_signature_turns_the_wire_off(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests the server refuses on the wire (signed with a wrong secret here) are asked
    again through botocore, which gets them right: the run succeeds, the wire stays off."""
    from botocore.credentials import Credentials

    r = remotes(s3_kind)
    src = tmp_path / "src"
    build(src, big=False, posix_names=False)
    sub = r.fresh("offwire")
    calls, made = _watch(monkeypatch)
    probe = S3Wire.probe

    def wrong_secret(*a: Any, **k: Any) -> S3Wire | None:
        w = probe(*a, **k)
        assert w is not None
        w.credentials = Credentials(r.server.access_key, "not-the-secret")
        return w

    monkeypatch.setattr(S3Wire, "probe", wrong_secret)
    ok(transfer(str(src), r.uri(sub)))
    assert made[0].wire is not None and made[0].wire.off
    assert "PutObject" in calls
    back = tmp_path / "back"
    ok(transfer(r.uri(sub), str(back)))
    assert compare(src, back, empty_dirs=False) == []


def test_idle_connection_closed_by_the_server(remotes, tmp_path: Path) -> None:
    """A keep-alive connection the server dropped is reopened once, not reported or handed
    to botocore."""
    r = remotes("s3")
    relay = TCPRelay(r.server.port).start()
    try:
        creds = r.server.write_credentials(tmp_path / "creds")
        from ferry.mover.endpoints import parse_endpoint

        be = s3.S3Backend(
            parse_endpoint(
                f"s3://{BUCKET}/?endpoint=http://127.0.0.1:{relay.port}&credentials_file={creds}"
            )
        )
        assert be.wire is not None
        key = f"{r.fresh('idle')}/k.txt"
        put = be.wire.request("PUT", key, {}, b"hello")
        assert put is not None and put.status == 200
        relay.restart()  # resets every open connection, as a server restart would
        try:
            got = be.wire.request("GET", key)
        finally:
            be.close()
        assert got is not None and got.status == 200 and got.body == b"hello"
    finally:
        relay.stop()
