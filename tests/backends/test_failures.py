"""Failures every backend must classify the same way, against real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ferry.mover.errors import ErrorKind
from ferry.mover.options import MiB
from tests.backends.conftest import BUCKET, Remote
from tests.backends.helpers import REPO, ok, server_tmpfs, transfer
from tests.backends.tree import CHUNK, compare, file_digest
from tests.servers.common import free_port
from tests.servers.proxy import TCPRelay

pytestmark = pytest.mark.servers

WRONG = "Wr0ng-S3cret-do-not-log"


def _small_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("hello")
    return src


def _bad_uri(remote: Remote, tmp_path: Path) -> str:
    """A URI for `remote` whose secret is wrong."""
    if remote.kind == "s3":
        creds = remote.server.write_credentials(tmp_path / "bad-creds", secret=WRONG)
        return f"s3://{BUCKET}/x?endpoint={remote.server.endpoint_url}&credentials_file={creds}"
    pw = tmp_path / "bad-password"
    pw.write_text(WRONG + "\n")
    srv = remote.server
    if remote.kind == "sftp":
        return (
            f"sftp://{srv.user}@127.0.0.1:{srv.port}{srv.root}/x?password_file={pw}"
            f"&known_hosts={srv.known_hosts}"
        )
    return f"smb://{srv.user}@127.0.0.1:{srv.port}/{srv.share}/x?password_file={pw}"


def test_bad_credentials(remote: Remote, tmp_path: Path) -> None:
    src = _small_src(tmp_path)
    uri = _bad_uri(remote, tmp_path)
    for a, b in ((str(src), uri), (uri, str(tmp_path / "out"))):
        s = transfer(a, b, retries=0)
        assert s.fatal is not None and s.fatal.kind == ErrorKind.AUTH_FAILED, s.to_json()
        text = json.dumps(s.to_json())
        assert WRONG not in text and WRONG not in str(s.fatal)
        assert "127.0.0.1" in str(s.fatal)  # names the endpoint
    proc = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "copy", str(src), uri, "--json", "-v"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == ErrorKind.AUTH_FAILED.exit_code, proc.stderr
    assert WRONG not in proc.stdout + proc.stderr


@pytest.mark.parametrize("remote", ["s3", "smb"], indirect=True)
def test_missing_bucket_or_share(remote: Remote, tmp_path: Path) -> None:
    src = _small_src(tmp_path)
    if remote.kind == "s3":
        uri = remote.uri("x").replace(f"s3://{BUCKET}/", "s3://no-such-bucket-ferry/")
    else:
        uri = remote.uri("x").replace(f"/{remote.server.share}/", "/nosuchshare/")
    s = transfer(str(src), uri, retries=0)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.DESTINATION_NOT_FOUND, s.to_json()
    assert "127.0.0.1" in str(s.fatal)
    s = transfer(uri, str(tmp_path / "out"), retries=0)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.SOURCE_NOT_FOUND, s.to_json()


@pytest.mark.parametrize("remote", ["sftp"], indirect=True)
def test_missing_sftp_directories(remote: Remote, tmp_path: Path) -> None:
    """SFTP has no bucket or share: a source directory that does not exist is fatal and
    named; a destination's missing directories are created."""
    sub = f"no-{uuid.uuid4().hex[:8]}/such/dir"
    s = transfer(remote.uri(sub), str(tmp_path / "out"), retries=0)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.SOURCE_NOT_FOUND, s.to_json()
    assert "127.0.0.1" in str(s.fatal)
    assert not (tmp_path / "out").exists()
    ok(transfer(str(_small_src(tmp_path)), remote.uri(sub), retries=0))
    assert (remote.server.root / sub / "f.txt").read_text() == "hello"


@pytest.mark.parametrize("remote", ["sftp", "smb"], indirect=True)
def test_server_disk_full(remote: Remote, tmp_path: Path) -> None:
    """The server's filesystem fills up (a real one: a small tmpfs mounted below the server's
    root; CI runs as root). Each run ends DestinationFull naming the endpoint (SMB says so;
    SFTP v3 answers a bare FAILURE, which Ferry checks with statvfs@openssh.com), with
    whole files under final names and no temp or partial left taking space: small files
    that run out of room after their OPEN (inside an SFTP batch), then a chunked file."""
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    for i in range(40):
        (small / f"s{i:02d}").write_bytes(os.urandom(64 * 1024))
    (big / "big").write_bytes(os.urandom(3 * CHUNK))
    with server_tmpfs(remote.server, "full") as (sub, mnt):
        (mnt / "filler").write_bytes(b"x" * 3 * MiB)  # 1 MiB left: about 15 small files
        for src in (small, big):
            # Past the check before writing, which would refuse it: the server's answers.
            s = transfer(str(src), remote.uri(f"{sub}/{src.name}"), retries=0, preflight=False)
            assert s.exit_code == ErrorKind.DESTINATION_FULL.exit_code, s.to_json()
            assert s.errors and {e.kind for e in s.errors} == {ErrorKind.DESTINATION_FULL}
            assert all("127.0.0.1" in str(e) for e in s.errors)
        kept = [p for p in mnt.rglob("*") if p.is_file() and p.name != "filler"]
        assert kept, "no small file fitted: nothing shows what a full disk leaves"
        for p in kept:
            assert not p.name.startswith(".~ferry."), f"left {p.name} taking space"
            assert p.read_bytes() == (tmp_path / p.relative_to(mnt)).read_bytes(), f"torn {p}"


def test_unreachable_host(remote: Remote, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    if remote.kind == "s3":
        uri = f"s3://{BUCKET}/x?endpoint=http://127.0.0.1:{port}&credentials_file={remote.creds}"
    else:
        srv = remote.server
        uri = remote.uri("x").replace(f":{srv.port}/", f":{port}/")
    t0 = time.monotonic()
    s = transfer(str(_small_src(tmp_path)), uri, retries=1)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.TRANSIENT, s.to_json()
    assert f"127.0.0.1:{port}" in str(s.fatal)
    assert time.monotonic() - t0 < 60


def test_unsafe_s3_keys(remotes, tmp_path: Path) -> None:
    """Keys with `..` or empty segments are rejected, not followed. S3 stores any key; a
    gateway over a filesystem (versitygw) cannot, so these keys are planted in moto."""
    r = remotes("s3-moto")
    sub = r.fresh("unsafe")
    c = r.server.client()
    c.put_object(Bucket=BUCKET, Key=f"{sub}/ok.txt", Body=b"fine")
    c.put_object(Bucket=BUCKET, Key=f"{sub}/a/../../escape.txt", Body=b"evil")
    out = tmp_path / "out" / "inner"
    s = transfer(r.uri(sub), str(out))
    assert s.exit_code == ErrorKind.UNSAFE_PATH.exit_code, s.to_json()
    assert not (tmp_path / "out" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    c.put_object(Bucket=BUCKET, Key=f"{sub}2//abs.txt", Body=b"evil")
    s = transfer(r.uri(f"{sub}2"), str(tmp_path / "out2"))
    assert s.exit_code == ErrorKind.UNSAFE_PATH.exit_code, s.to_json()


def _big_file(tmp_path: Path, size: int) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    p = src / "big.bin"
    with open(p, "wb") as f:
        block = os.urandom(MiB)
        for i in range(size // MiB):
            f.write(block[i % 7 :] + block[: i % 7])
    return src


def _ferry(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", *args, "--chunk-size", "5M", "--transfers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["to", "from"])
def test_kill_and_resume(remote: Remote, direction: str, tmp_path: Path) -> None:
    """SIGKILL `ferry copy` once progress shows bytes; the re-run resumes, not restarts."""
    size = 60 * MiB
    src = _big_file(tmp_path, size)
    if direction == "from":
        staged = remote.uri(remote.fresh())
        ok(transfer(str(src), staged))
        a, b = staged, str(tmp_path / "dst")
    else:
        a, b = str(src), remote.uri(remote.fresh())
    _kill_midway(a, b)
    relay = TCPRelay(remote.server.port).start()
    try:
        if direction == "from":
            summary = _rerun(_via(remote, relay, a, tmp_path), b)
        else:
            summary = _rerun(a, _via(remote, relay, b, tmp_path))
    finally:
        relay.stop()
    resumed = summary["bytesResumed"]
    assert resumed > 0 and summary["bytesTransferred"] == size - resumed, summary
    # What crossed the wire proves the resume: the rest of the file, not all of it.
    crossed = relay.received if direction == "from" else relay.sent
    assert size - resumed <= crossed <= (size - resumed) * 1.05 + 2 * MiB, (crossed, summary)
    back = tmp_path / "back"
    ok(transfer(b, str(back)))
    assert file_digest(back / "big.bin") == file_digest(src / "big.bin")
    _assert_no_resume_state(remote, b if direction == "to" else None, tmp_path / "dst")


def _via(remote: Remote, relay: TCPRelay, uri: str, tmp_path: Path) -> str:
    """The same location, reached through `relay` (which counts the bytes)."""
    port = remote.server.port
    if remote.kind == "sftp":  # the host key is known under the relay's port too
        hosts = tmp_path / "known_hosts.relay"
        text = Path(remote.server.known_hosts).read_text()
        hosts.write_text(text + text.replace(f":{port} ", f":{relay.port} "))
        uri = uri.replace(str(remote.server.known_hosts), str(hosts))
    return uri.replace(f"127.0.0.1:{port}", f"127.0.0.1:{relay.port}")


def _assert_no_resume_state(remote: Remote, uri: str | None, local_dst: Path) -> None:
    """After success nothing of the resume machinery is left: no partial, journal or
    state file, and (S3) no open multipart upload or state object."""
    if uri is None:
        assert not list(local_dst.rglob(".~ferry.*")), list(local_dst.rglob("*"))
        return
    sub = uri.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    if remote.kind == "s3":
        client = remote.server.client()
        uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=sub).get("Uploads", [])
        assert uploads == [], uploads
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=sub)["Contents"]]
        assert keys == [f"{sub}/big.bin"], keys
        return
    disk = remote.disk(sub)
    assert disk is not None
    assert sorted(p.name for p in disk.rglob("*")) == ["big.bin"], list(disk.rglob("*"))


def _kill_midway(a: str, b: str) -> None:
    """Start `ferry copy a b` and SIGKILL it once progress shows 30 MiB done."""
    proc = _ferry(["copy", a, b, "--progress", "json", "--bwlimit", "12M"])
    assert proc.stderr is not None
    done = 0
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if line.startswith("{"):
            done = json.loads(line).get("bytesDone", 0)
            if done >= 30 * MiB:
                break
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert done >= 30 * MiB, "never saw progress"


def _rerun(a: str, b: str) -> dict:
    rerun = _ferry(["copy", a, b, "--json", "--progress", "none"])
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sftp", "smb"])
def test_resume_rechecks_partial(kind: str, remotes, tmp_path: Path) -> None:
    """A partial whose bytes changed on the server after the kill is not trusted on the
    journal's word: the damaged chunk is copied again, the others are resumed."""
    remote = remotes(kind)
    src = _big_file(tmp_path, 60 * MiB)
    sub = remote.fresh()
    _kill_midway(str(src), remote.uri(sub))
    disk = remote.disk(sub)
    assert disk is not None
    partials = [p for p in disk.iterdir() if p.name.endswith(".part")]
    assert len(partials) == 1, list(disk.iterdir())
    journals = [p for p in disk.iterdir() if p.name.endswith(".journal")]
    assert len(journals) == 1, list(disk.iterdir())
    recorded = json.loads(journals[0].read_bytes())["chunks"]
    assert "0" in recorded and len(recorded) >= 2, recorded  # what the kill left on record
    with open(partials[0], "r+b") as f:
        f.seek(MiB)
        f.write(b"\0" * 4096)  # inside chunk 0, which was recorded long before the kill
    summary = _rerun(str(src), remote.uri(sub))
    # every recorded chunk is resumed but the damaged one (--chunk-size 5M)
    assert summary["bytesResumed"] == (len(recorded) - 1) * 5 * MiB, (summary, recorded)
    assert file_digest(disk / "big.bin") == file_digest(src / "big.bin")


@pytest.mark.slow
def test_server_restarted_mid_transfer(remote: Remote, tmp_path: Path) -> None:
    """The server goes away mid-file and comes back on the same port: retries finish the copy."""
    size = 40 * MiB
    src = _big_file(tmp_path, size)
    relay: TCPRelay | None = None
    if remote.kind == "s3":
        relay = TCPRelay(remote.server.port).start()
        dst = (
            f"s3://{BUCKET}/{remote.fresh()}?endpoint=http://127.0.0.1:{relay.port}"
            f"&credentials_file={remote.creds}"
        )
        restart = relay.restart
    else:
        dst = remote.uri(remote.fresh())
        restart = remote.server.restart
    from ferry.mover.endpoints import parse_endpoint
    from ferry.mover.options import Options
    from ferry.mover.progress import Sink
    from ferry.mover.transfer import run_transfer

    seen = threading.Event()

    class Watch(Sink):
        def update(self, snap):
            if snap.bytes_done >= 8 * MiB:
                seen.set()

        def finish(self, summary):
            seen.set()

    result: list = []
    opts = Options(chunk_size=CHUNK, bwlimit=10 * MiB, retries=6, retry_base_delay=0.2, transfers=2)
    t = threading.Thread(
        target=lambda: result.append(
            run_transfer(parse_endpoint(str(src)), parse_endpoint(dst), opts, sink=Watch())
        )
    )
    t.start()
    try:
        assert seen.wait(120)
        restart()
    finally:
        t.join(300)
    s = result[0]
    assert s.exit_code == 0, s.to_json()  # the engine's retries carried the same run through
    back = tmp_path / "back"
    ok(transfer(dst, str(back)))
    assert compare(src, back, modes=False, precision_ns=10**9) == []
    if relay is not None:
        relay.stop()


@pytest.mark.parametrize("remote", ["sftp"], indirect=True)
def test_sftp_host_keys_are_strict(remote: Remote, tmp_path: Path) -> None:
    """An unknown host key and a changed one are both refused as AuthFailed with a hint,
    before any file is read or written; only the explicit opt-out connects without one."""
    src = _small_src(tmp_path)
    srv = remote.server
    unknown = tmp_path / "known_hosts.unknown"
    unknown.write_text("[other.example]:22 " + _fresh_host_key() + "\n")
    changed = tmp_path / "known_hosts.changed"
    changed.write_text(f"[127.0.0.1]:{srv.port} " + _fresh_host_key() + "\n")
    for hosts, words in ((unknown, "not in"), (changed, "does not match")):
        sub = remote.fresh("hostkey")
        s = transfer(str(src), remote.uri(sub, known_hosts=str(hosts)), retries=0)
        assert s.fatal is not None and s.fatal.kind == ErrorKind.AUTH_FAILED, s.to_json()
        assert words in str(s.fatal) and "127.0.0.1" in str(s.fatal)
        if words == "not in":
            assert "insecure_ignore_host_key" in str(s.fatal)  # the hint
        assert not (Path(srv.root) / sub).exists()
    sub = remote.fresh("hostkey")
    ok(
        transfer(
            str(src), remote.uri(sub, known_hosts=str(unknown), insecure_ignore_host_key="true")
        )
    )
    assert (Path(srv.root) / sub).is_dir()


def _fresh_host_key() -> str:
    """A new key of the test server's type (ed25519), as a known_hosts entry's key part."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


DOWNLOAD = [sys.executable, "-m", "ferry.cli", "copy", "--retries", "0", "--chunk-size", "5M"]
DOWNLOAD += ["--transfers", "1", "--bwlimit", "8M", "--progress", "json"]


@pytest.mark.parametrize("remote", ["s3"], indirect=True)
def test_s3_object_replaced_during_download(remote: Remote, tmp_path: Path) -> None:
    """An object overwritten while its ranges are being read is SourceChanged (exit 7): the
    later ranges are pinned to the first answer's ETag, so old and new bytes never mix."""
    size = 40 * MiB
    src = _big_file(tmp_path, size)
    sub = remote.fresh()
    ok(transfer(str(src), remote.uri(sub)))
    dst = tmp_path / "dst"
    proc = subprocess.Popen(
        [*DOWNLOAD, remote.uri(sub), str(dst)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line).get("bytesDone", 0) >= 5 * MiB:
            break
        assert time.monotonic() < deadline, "never saw progress"
    remote.server.client().put_object(Bucket=BUCKET, Key=f"{sub}/big.bin", Body=os.urandom(size))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ErrorKind.SOURCE_CHANGED.exit_code, err
    assert "changed" in err
    assert not (dst / "big.bin").exists()
