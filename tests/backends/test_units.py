"""Backend logic that needs no server: part numbering, coverage, error classification."""

from __future__ import annotations

import errno
import itertools
import os
import socket
import ssl
import subprocess
import sys
import tracemalloc
from pathlib import Path

import paramiko
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, SSLError
from smbprotocol import exceptions as smbexc

from ferry.mover.backends.base import check_name, copy_into
from ferry.mover.backends.s3 import credentials as s3_credentials
from ferry.mover.backends.s3 import errors as s3_errors
from ferry.mover.backends.s3 import meta as s3_meta
from ferry.mover.backends.s3 import multipart as s3_multipart
from ferry.mover.backends.sftp import connections as sftp
from ferry.mover.backends.smb import errors as smb_errors
from ferry.mover.endpoints import parse_endpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import GiB, MiB

WHERE = "s3://b/p at http://127.0.0.1:1"


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


@pytest.mark.parametrize("size", [1, 5 * MiB, 48 * GiB, 50 * GiB, 5 * 1024 * GiB])
def test_part_numbers_stay_within_limit(size: int) -> None:
    unit = s3_multipart.part_unit(size)
    assert unit % MiB == 0 and unit >= MiB
    assert (size - 1) // unit + 1 <= s3_multipart.MAX_PARTS


@pytest.mark.parametrize("seed", range(5))
def test_part_runs_cut_whole_buffers_and_keep_a_tail(seed: int) -> None:
    """Writes of any size packed into pooled buffers come out in order; every cut holds at
    least the target and leaves at least the minimum part behind."""
    import random

    rng = random.Random(seed)
    pool = s3_multipart.BufferPool(64, keep=4)
    run = s3_multipart._Run(1000)
    data = rng.randbytes(5000)
    out, pos = bytearray(), 0
    while pos < len(data):
        n = rng.randint(1, 150)
        run.add(memoryview(data)[pos : pos + n], pool)
        pos += n
        while (head := run.cut(200, 90)) is not None:
            cut = b"".join(bytes(b[:used]) for b, used in head)
            assert len(cut) >= 200 and run.n >= 90 and run.start == 1000 + len(out) + len(cut)
            out += cut
            pool.give([b for b, _ in head])
    out += b"".join(bytes(b[:used]) for b, used in run.bufs)
    assert bytes(out) == data


def test_copy_into_makes_no_temporary_copy() -> None:
    """Slice assignment into a bytearray copies the source first: fresh memory for every
    piece of every part, most of a big upload's page faults."""
    buf = bytearray(4 * MiB)
    data = os.urandom(MiB)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        copy_into(buf, 1000, memoryview(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert buf[1000 : 1000 + MiB] == data and not any(buf[:1000])
    assert peak - before < 64 * 1024


def test_sftp_backend_imports_paramiko_without_invoke_or_metadata() -> None:
    """paramiko only needs invoke for ssh_config `Match exec`, and importlib.metadata for its
    own version; loading them costs every run. Its version (in the SSH client id) is the
    installed one all the same, and both modules can still be imported afterwards."""
    code = (
        "import sys; from ferry.mover.backends.sftp import import_paramiko; import_paramiko(); "
        "import paramiko, paramiko.config as c; "
        "assert c.invoke is None and 'invoke' not in sys.modules; "
        "assert 'importlib.metadata' not in sys.modules, 'metadata'; "
        "from importlib.metadata import version; "
        "assert paramiko.__version__ == version('paramiko'), paramiko.__version__; "
        "import invoke"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_s3_backend_loads_no_botocore_or_http_client() -> None:
    """The wire carries small-object runs: botocore, http.client and the email package
    (~40 ms of every start) load only when a run needs botocore."""
    code = (
        "import sys, ferry.mover.backends.s3.backend, ferry.mover.transfer; "
        "print(sorted(m for m in ('botocore', 'http.client', 'email') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize(
    "text",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "1994-11-06T08:49:37.000Z", "Sunday, 06-Nov-94 08:49:37 GMT"],
)
def test_s3_timestamps(text: str) -> None:
    """Header dates are parsed without the email package; other forms go to botocore's parser."""
    got = s3_meta.parse_timestamp(text)
    assert got.timestamp() == 784111777 and got.utcoffset() is not None


def test_covers() -> None:
    parts = [(0, 10), (10, 25), (30, 40)]
    assert s3_multipart._covers(parts, 0, 25)
    assert s3_multipart._covers(parts, 12, 20)
    assert not s3_multipart._covers(parts, 20, 31)
    assert s3_multipart._covers(parts, 30, 40)


def _bad_cert() -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    e.verify_message = "self-signed certificate"
    return e


def _untrusted_botocore() -> Exception:
    """What botocore raises for an endpoint whose certificate is not trusted."""
    return SSLError(endpoint_url="https://s3.example", error=_bad_cert())


def _untrusted_chained() -> Exception:
    """What the hand-written S3 path raises: the certificate failure as the cause."""
    try:
        try:
            raise _bad_cert()
        except ssl.SSLError as e:
            raise ConnectionError("connect failed") from e
    except ConnectionError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("InvalidAccessKeyId", 403), ErrorKind.AUTH_FAILED),
        (client_error("SignatureDoesNotMatch", 403), ErrorKind.AUTH_FAILED),
        (client_error("AccessDenied", 403), ErrorKind.PERMISSION),
        (client_error("NoSuchBucket", 404), ErrorKind.SOURCE_NOT_FOUND),
        (client_error("SlowDown", 503), ErrorKind.TRANSIENT),
        (client_error("InternalError", 500), ErrorKind.TRANSIENT),
        (client_error("PreconditionFailed", 412), ErrorKind.SOURCE_CHANGED),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ErrorKind.TRANSIENT),
        (NoCredentialsError(), ErrorKind.AUTH_FAILED),
        (_untrusted_botocore(), ErrorKind.AUTH_FAILED),
        (_untrusted_chained(), ErrorKind.AUTH_FAILED),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), ErrorKind.TRANSIENT),
    ],
)
def test_s3_classify(exc: Exception, kind: ErrorKind) -> None:
    s3_errors.Boto.load()  # as building a client does: nothing raises botocore's errors before
    err = s3_errors.classify(exc, WHERE)
    assert err.kind == kind
    assert WHERE in str(err)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (paramiko.AuthenticationException("no"), ErrorKind.AUTH_FAILED),
        (paramiko.SSHException("Error reading SSH protocol banner"), ErrorKind.TRANSIENT),
        (EOFError(), ErrorKind.TRANSIENT),
        (TimeoutError(), ErrorKind.TRANSIENT),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ErrorKind.TRANSIENT),
        (FileNotFoundError(errno.ENOENT, "No such file"), ErrorKind.SOURCE_NOT_FOUND),
        (PermissionError(errno.EACCES, "denied"), ErrorKind.PERMISSION),
    ],
)
def test_sftp_classify(exc: BaseException, kind: ErrorKind) -> None:
    assert sftp.classify(exc, "sftp://u@h:22/p").kind == kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (smbexc.SMBConnectionClosed(), ErrorKind.TRANSIENT),
        (ValueError("Failed to connect to '127.0.0.1:1': refused"), ErrorKind.TRANSIENT),
        (smbexc.SMBAuthenticationError("bad"), ErrorKind.AUTH_FAILED),
        (smbexc.SMBOSError(0xC000007F, "f"), ErrorKind.DESTINATION_FULL),  # STATUS_DISK_FULL
        (smbexc.SMBOSError(0xC0000044, "f"), ErrorKind.DESTINATION_FULL),  # quota exceeded
    ],
)
def test_smb_classify(exc: BaseException, kind: ErrorKind) -> None:
    assert smb_errors.classify(exc, "smb://h:445/share").kind == kind


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "x\x00"])
def test_unsafe_listing_names(name: str) -> None:
    with pytest.raises(FerryError) as info:
        check_name(name, WHERE)
    assert info.value.kind == ErrorKind.UNSAFE_PATH


def test_endpoint_options() -> None:
    ep = parse_endpoint(
        "s3://b/p?endpoint=http://127.0.0.1:9&checksum=none&list_metadata=false&sse=aws:kms"
    )
    assert ep.kind == "s3" and ep.checksum == "none" and ep.list_metadata is False  # type: ignore[union-attr]
    ep = parse_endpoint("sftp://u@h:2222/srv?sessions=8&insecure_ignore_host_key=true")
    assert ep.sessions == 8 and ep.insecure_ignore_host_key  # type: ignore[union-attr]
    ep = parse_endpoint("smb://u@h/share/dir?encrypt=true&require_signing=false")
    assert ep.encrypt and not ep.require_signing  # type: ignore[union-attr]


def test_credentials_directory(tmp_path) -> None:
    (tmp_path / "access-key-id").write_text("AKIA1\n")
    (tmp_path / "secret-access-key").write_text("s3cr3t\n")
    creds = s3_credentials.read_credentials(str(tmp_path), None)
    assert creds == {"aws_access_key_id": "AKIA1", "aws_secret_access_key": "s3cr3t"}
    bad = tmp_path / "file"
    bad.write_text("[other]\naws_access_key_id = x\n")
    with pytest.raises(FerryError) as info:
        s3_credentials.read_credentials(str(bad), None)
    assert info.value.kind == ErrorKind.AUTH_FAILED and "s3cr3t" not in str(info.value)


def test_sftp_socket_acknowledges_reads_at_once() -> None:
    """paramiko reads through a wrapper that turns delayed ACKs off after every read (sshd's
    Nagle waits for them: 40 ms per connection), and passes everything else through."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        wrapped = sftp._quick_acks(client)
        wrapped.settimeout(5.0)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # delayed ACKs, as idle
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0
        peer.sendall(b"hello")
        assert wrapped.recv(5) == b"hello"
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
        assert wrapped.gettimeout() == 5.0 and wrapped.fileno() == client.fileno()
    finally:
        for s in (client, peer, server):
            s.close()


def test_lean_pipe_hands_over_what_arrived() -> None:
    """The SFTP channel's LeanPipe: every byte fed comes out once, in order, at most `nbytes`
    a read, a whole payload as the very object fed (no copy); it times out, closes and
    signals its event as paramiko's BufferedPipe does."""
    import threading

    from paramiko.buffered_pipe import PipeTimeout

    from ferry.mover.backends.sftp.wire.session import LeanPipe

    pipe, event = LeanPipe(), threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    pieces = [b"abc", b"", os.urandom(1000), b"i" * 10]
    for p in pieces:
        pipe.feed(p)
    assert event.is_set() and len(pipe) == 1013
    got = [pipe.read(2, 0), pipe.read(100, 0), pipe.read(4096, 0), pipe.read(4096, 0)]
    assert b"".join(got) == b"".join(pieces)
    assert [len(g) for g in got] == [2, 1, 1000, 10] and got[2] is pieces[2]
    assert len(pipe) == 0 and not event.is_set()
    with pytest.raises(PipeTimeout):
        pipe.read(1, 0)
    pipe.feed(b"end")
    pipe.close()
    assert (pipe.read(10), pipe.read(10)) == (b"end", b"")


def test_sftp_replies_parsed_across_payloads() -> None:
    """A reply split over several payloads, and several replies in one: the parser's buffer
    gives each message whole, a view into its payload where it lies inside one."""
    from ferry.mover.backends.sftp.wire.session import _Chunks

    msgs = [os.urandom(n) for n in (5, 300, 7, 1)]  # at 0, 5, 305, 312
    stream = b"".join(msgs)
    bounds = [0, 3, 4, 200, 306, len(stream)]
    payloads = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    box = _Chunks()
    for p in payloads:
        box.add(p)
    assert len(box) == len(stream) and box.peek(4) == stream[:4]
    out = [box.take(len(m)) for m in msgs]
    assert [bytes(o) for o in out] == msgs and len(box) == 0
    assert out[3].obj is payloads[-1]  # inside one payload: a view, not a copy


def test_a_misspelt_accelerator_switch_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FERRY_ACCELERATORS takes on or off; "false" is not silently "on", and nothing is written."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    env = {**os.environ, "FERRY_ACCELERATORS": "false"}
    p = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "copy", str(tmp_path / "src"), str(tmp_path / "dst")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2, p.stderr
    assert "FERRY_ACCELERATORS='false': must be on or off" in p.stderr
    assert not (tmp_path / "dst").exists()
