"""The hand-signed request path (s3_wire) on both S3 servers.

Every failure on the wire falls back to botocore, so a signing mistake would
only make runs slower, never wrong: these tests therefore assert that the wire
carried the calls (botocore saw no GetObject, PutObject, HeadObject or
listing, or was never even built) and that nothing turned it off, on names
that exercise the canonical URI and the listing's decoding.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends.base import Entry, EntryType, SmallFile
from ferry.mover.backends.s3 import backend as s3
from ferry.mover.backends.s3 import client as s3_client
from ferry.mover.backends.s3.wire.api import StaticCredentials
from ferry.mover.endpoints import parse_endpoint
from ferry.mover.errors import ErrorKind
from ferry.mover.options import Mode, Preserve
from tests.backends.conftest import BUCKET
from tests.backends.helpers import ok, transfer
from tests.backends.tree import CHUNK, build, compare
from tests.servers.proxy import TCPRelay
from tests.servers.versitygw import VersityServer

pytestmark = pytest.mark.servers


class Watch:
    """botocore's S3 calls, its clients and the backends made, in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.clients: list[s3_client.Client] = []
        self.made: list[s3.S3Backend] = []
        init, make = s3.S3Backend.__init__, s3_client.make_client

        def watched_init(be: s3.S3Backend, *a: Any, **k: Any) -> None:
            init(be, *a, **k)
            self.made.append(be)

        def watched_make(*a: Any, **k: Any) -> s3_client.Client:
            c = make(*a, **k)
            c.client.meta.events.register(
                "before-call.s3.*", lambda model, **_: self.calls.append(model.name)
            )
            self.clients.append(c)
            return c

        monkeypatch.setattr(s3.S3Backend, "__init__", watched_init)
        monkeypatch.setattr(s3_client, "make_client", watched_make)


@pytest.fixture(params=["direct", "probe"])
def wire_start(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """How the wire starts: without botocore (no AWS config file), or from the URL botocore
    presigns (an AWS config file exists, so its region and CA bundle rules apply)."""
    config = tmp_path / "aws-config"
    if request.param == "probe":
        config.write_text("[default]\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return str(request.param)


def test_small_objects_go_over_the_wire(
    s3_kind: str, wire_start: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up (multipart uploads and resume sidecar included), re-sync (HEADs) and down (long
    ranged reads included) all go over the wire."""
    r = remotes(s3_kind)
    src = tmp_path / "src"
    build(src, big=False, posix_names=s3_kind == "s3-moto")
    sub = r.fresh("wire")
    w = Watch(monkeypatch)
    ok(transfer(str(src), r.uri(sub)))
    again = ok(transfer(str(src), r.uri(sub)))
    assert again.files_copied == again.files_updated == 0
    back = tmp_path / "back"
    ok(transfer(r.uri(sub), str(back)))
    # The one file above the chunk size went as a multipart upload, created and completed
    # over the wire too: botocore made no call (and without an AWS config, no client).
    assert [p for p in src.rglob("*") if p.is_file() and p.stat().st_size > CHUNK]
    assert w.calls == []
    assert w.clients == [] or wire_start == "probe"
    assert w.made and all(not b.session.wire.off for b in w.made)
    assert compare(src, back, empty_dirs=False) == []


def test_small_runs_never_build_botocore(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small objects up, re-synced, synced with deletes, and down, from keys in a file and a
    plain endpoint: botocore's client (0.3 s of every start) is never built."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    r = remotes(s3_kind)
    src = tmp_path / "src"
    for name in ("a.txt", "dir/b c.bin", "dir/ü+%41.txt", "dir/deeper/empty"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode() * 100 if "empty" not in name else b"")
    sub = r.fresh("nobotocore")
    w = Watch(monkeypatch)
    ok(transfer(str(src), r.uri(sub)))
    (src / "a.txt").unlink()
    synced = ok(transfer(str(src), r.uri(sub), Mode.SYNC))
    assert synced.files_deleted == 1 and synced.files_copied == 0
    back = tmp_path / "back"
    ok(transfer(r.uri(sub), str(back)))
    assert compare(src, back, empty_dirs=False) == []
    assert w.clients == [] and w.made and all(not b.session.wire.off for b in w.made)


def test_listing_pages(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory of more keys than one ListObjectsV2 page (1,000) lists whole on the wire."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    r = remotes(s3_kind)
    sub = r.fresh("pages")
    be = s3.S3Backend(parse_endpoint(r.uri(sub)))
    try:
        assert not be.session.wire.off
        names = {f"k{i:05d}" for i in range(1003)} | {"sub/x"}
        with ThreadPoolExecutor(8) as pool:
            puts = list(
                pool.map(
                    lambda n: be.session.wire.request("PUT", be.session.key(n), {}, b""), names
                )
            )
        assert all(p is not None and p.status == 200 for p in puts)
        listed = be.list_dir("")
        assert be.session._client is None and not be.session.wire.off
    finally:
        be.close()
    assert sorted(e.name for e in listed) == sorted({n.split("/")[0] for n in names})


def test_rejected_signature_turns_the_wire_off(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests the server refuses on the wire (signed with a wrong secret here) are asked
    again through botocore, which gets them right: the run succeeds, the wire stays off."""
    r = remotes(s3_kind)
    src = tmp_path / "src"
    build(src, big=False, posix_names=False)
    sub = r.fresh("offwire")
    w = Watch(monkeypatch)
    init = s3.S3Backend.__init__

    def wrong_secret(be: s3.S3Backend, *a: Any, **k: Any) -> None:
        init(be, *a, **k)
        assert not be.session.wire.off
        be.session.wire.credentials = StaticCredentials(r.server.access_key, "not-the-secret")

    monkeypatch.setattr(s3.S3Backend, "__init__", wrong_secret)
    ok(transfer(str(src), r.uri(sub)))
    assert w.made[0].session.wire.off
    assert {"PutObject", "UploadPart"} <= set(w.calls)
    back = tmp_path / "back"
    ok(transfer(r.uri(sub), str(back)))
    assert compare(src, back, empty_dirs=False) == []


def test_abandoned_stream_leaves_the_connection_usable(
    remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ranged read stopped half-way (an error or a cancel in the engine) must not leave its
    unread body on the thread's connection for the next request to trip over."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    r = remotes("s3")
    sub = r.fresh("abandon")
    be = s3.S3Backend(parse_endpoint(r.uri(sub)))
    try:
        data = bytes(range(256)) * 4096  # 1 MiB
        assert be.session.wire.request("PUT", be.session.key("one"), {}, data) is not None
        reader = be.open_read("one", Entry("one", EntryType.FILE, size=len(data)))
        pieces = reader.iter_range(0, len(data), 64 * 1024)
        assert bytes(next(pieces)) == data[: 64 * 1024]
        pieces.close()
        assert reader.read_at(100, 10) == data[100:110]
        assert b"".join(bytes(p) for p in reader.iter_range(0, len(data), 1 << 20)) == data
        assert be.session._client is None  # all of it on the wire
    finally:
        be.close()


def _through(r: Any, relay: TCPRelay, tmp_path: Path) -> s3.S3Backend:
    """An S3 backend on the test bucket whose connections go through `relay`."""
    creds = r.server.write_credentials(tmp_path / "creds")
    uri = f"s3://{BUCKET}/?endpoint=http://127.0.0.1:{relay.port}&credentials_file={creds}"
    return s3.S3Backend(parse_endpoint(uri))


def test_idle_connection_closed_by_the_server(remotes, tmp_path: Path) -> None:
    """A keep-alive connection the server dropped is reopened once, not reported or handed
    to botocore."""
    r = remotes("s3")
    relay = TCPRelay(r.server.port).start()
    try:
        be = _through(r, relay, tmp_path)
        assert not be.session.wire.off
        key = f"{r.fresh('idle')}/k.txt"
        put = be.session.wire.request("PUT", key, {}, b"hello")
        assert put is not None and put.status == 200
        relay.restart()  # resets every open connection, as a server restart would
        try:
            got = be.session.wire.request("GET", key)
        finally:
            be.close()
        assert got is not None and got.status == 200 and got.body == b"hello"
    finally:
        relay.stop()


_GONE = b"<?xml version='1.0'?><Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"
NO_SUCH_UPLOAD = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    + f"Content-Length: {len(_GONE)}\r\n\r\n".encode()
    + _GONE
)


@pytest.mark.parametrize("forgets", [False, True], ids=["repeat-succeeds", "upload-gone"])
def test_completion_whose_answer_was_lost(
    remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forgets: bool
) -> None:
    """The server completes a multipart upload but the answer never arrives. Asked again,
    these servers answer success; S3 may instead say the upload is gone (canned here, as no
    server at hand does). Either way the object made of exactly our parts is the success:
    not a failed file, not a second upload. The wire does not send the POST again (the server
    acted on it): botocore does, once, and a refusal is checked against the object."""
    r = remotes("s3")
    relay = TCPRelay(r.server.port).start()
    try:
        creds = r.server.write_credentials(tmp_path / "creds")
        sub = r.fresh("lostanswer")
        src = tmp_path / "src"
        src.mkdir()
        data = os.urandom(12 << 20)  # above the single-PUT size: a multipart upload
        (src / "big.bin").write_bytes(data)
        complete = f"POST /{BUCKET}/{sub}/big.bin?uploadId=".encode()
        relay.lose_answer_to(complete, then=NO_SUCH_UPLOAD if forgets else None)
        w = Watch(monkeypatch)
        url = f"http://127.0.0.1:{relay.port}"
        s = ok(transfer(str(src), f"s3://{BUCKET}/{sub}?endpoint={url}&credentials_file={creds}"))
    finally:
        relay.stop()
    assert relay.lost == 1 and s.files_copied == 1
    assert "CreateMultipartUpload" not in w.calls
    assert w.calls.count("CompleteMultipartUpload") == 1
    assert relay.seen == 2  # once on the wire, once by botocore
    back = tmp_path / "back"
    ok(transfer(r.uri(sub), str(back)))
    assert (back / "big.bin").read_bytes() == data


@pytest.mark.parametrize("call", ["create", "complete"])
def test_posts_are_not_sent_twice_by_the_wire(remotes, tmp_path: Path, call: str) -> None:
    """A POST (creating or completing a multipart upload) written whole on a kept-alive
    connection whose answer is lost (dropped after the server acted) is not sent again by
    the wire, as a GET or PUT would be: it answers "unknown", for the caller's botocore
    fallback and its checks (see test_completion_whose_answer_was_lost)."""
    r = remotes("s3")
    relay = TCPRelay(r.server.port).start()
    try:
        be = _through(r, relay, tmp_path)
        key = f"{r.fresh('post')}/big.bin"
        try:
            if call == "create":
                assert be.bucket_exists()  # a HEAD: the connection is kept alive
                relay.lose_answer_to(f"POST /{BUCKET}/{key}?uploads".encode())
                assert be.session.wire.create_upload(key, {}) is None
            else:
                upload = be.session.wire.create_upload(key, {})
                assert upload is not None
                query = {"partNumber": "1", "uploadId": upload}
                part = be.session.wire.request("PUT", key, {}, b"x" * 10, query)
                assert part is not None and part.status == 200
                relay.lose_answer_to(f"POST /{BUCKET}/{key}?uploadId=".encode())
                assert not be.session.wire.complete_upload(
                    key, upload, [(1, part.headers["etag"], None)], None
                )
            assert not be.session.wire.off
        finally:
            be.close()
    finally:
        relay.stop()
    assert relay.lost == 1 and relay.seen == 1


def test_https_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS on the wire: the named CA bundle is trusted and the data path stays on the wire;
    without the bundle the self-signed server is refused, naming the endpoint."""
    srv = VersityServer(tls=True).start()
    try:
        srv.create_bucket(BUCKET)
        assert srv.ca_bundle is not None
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_CA_BUNDLE", srv.ca_bundle)
        creds = srv.write_credentials(tmp_path / "creds")
        uri = f"s3://{BUCKET}/tls?endpoint={srv.endpoint_url}&credentials_file={creds}"
        src = tmp_path / "src"
        build(src, big=False)
        w = Watch(monkeypatch)
        ok(transfer(str(src), uri))
        back = tmp_path / "back"
        ok(transfer(uri, str(back)))
        assert compare(src, back, empty_dirs=False) == []
        assert w.calls == w.clients == []
        assert w.made and all(not b.session.wire.off and b.session.wire.https for b in w.made)
        monkeypatch.delenv("AWS_CA_BUNDLE")
        refused = transfer(uri, str(tmp_path / "refused"), retries=0)
        assert refused.exit_code != 0
        text = str(refused.fatal) + " ".join(e.message for e in refused.errors)
        assert srv.endpoint_url in text and "certificate" in text.lower(), text
    finally:
        srv.close()


def test_small_objects_read_in_one_pipeline(
    remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_small answers each object as a reader would (its stored mtime and mode applied),
    and leaves to the one-at-a-time way what it cannot vouch for: an object that is not the
    size listed, one that is gone, an empty one (its metadata needs a HEAD)."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    r = remotes("s3")
    sub = r.fresh("getmany")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}").write_bytes(bytes([i]) * (100 + i))
        os.utime(
            src / f"f{i:02d}", ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i)
        )
    (src / "empty").write_bytes(b"")
    ok(transfer(str(src), r.uri(sub)))
    be = s3.S3Backend(parse_endpoint(r.uri(sub)))
    try:
        listed = {e.name: e for e in be.list_dir("")}
        be.remove("f03", listed["f03"])
        listed["f05"].size += 1  # the listing is stale
        names = sorted(listed)
        got = dict(zip(names, be.get_small([(n, listed[n]) for n in names]), strict=True))
    finally:
        be.close()
    assert got.pop("f03") is None and got.pop("f05") is None and got.pop("empty") is None
    for name, data in got.items():
        i = int(name[1:])
        assert data == bytes([i]) * (100 + i)
        assert listed[name].mtime_ns == 1_600_000_000_123_456_789 + i
        assert listed[name].mode == 0o644


def test_no_keys_anywhere(remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without keys there is nothing to sign with: the wire is off from the start, botocore
    looks for keys along its chain, and the run fails as AuthFailed naming the endpoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    r = remotes("s3")
    uri = f"s3://{BUCKET}/nokeys?endpoint={r.server.endpoint_url}"
    w = Watch(monkeypatch)
    summary = transfer(uri, str(tmp_path / "out"), retries=0)
    assert w.made and all(b.session.wire.off for b in w.made)
    assert summary.fatal is not None and summary.fatal.kind == ErrorKind.AUTH_FAILED
    assert r.server.endpoint_url in str(summary.fatal)


def test_small_objects_written_in_one_pipeline(
    remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put_small writes each object as SinglePutWriter would (metadata, additional checksum),
    and an object the server refuses is an error of its own, the others written."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    r = remotes("s3")
    sub = r.fresh("putmany")
    mtime = 1_600_000_000_123_456_789
    files = [
        SmallFile(
            f"f{i:02d}",
            Entry(f"f{i:02d}", EntryType.FILE, 50 + i, mtime, 0o640),
            bytes([i]) * (50 + i),
            None,
        )
        for i in range(20)
    ]
    files.insert(7, SmallFile("k" * 1100, Entry("k" * 1100, EntryType.FILE, 1, mtime), b"x", None))
    be = s3.S3Backend(parse_endpoint(r.uri(sub)))
    try:
        outcomes = be.put_small(files, Preserve())
        listed = {e.name: e for e in be.list_dir("")}
    finally:
        be.close()
    assert [f.rel for f, err in zip(files, outcomes, strict=True) if err] == ["k" * 1100]
    assert sorted(listed) == [f"f{i:02d}" for i in range(20)]
    back = tmp_path / "back"
    ok(transfer(r.uri(sub), str(back)))
    for i in range(20):
        p = back / f"f{i:02d}"
        assert p.read_bytes() == bytes([i]) * (50 + i)
        assert p.stat().st_mtime_ns == mtime and p.stat().st_mode & 0o7777 == 0o640
