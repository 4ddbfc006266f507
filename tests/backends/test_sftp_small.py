"""SFTP small-file writes against a real sshd: buffered until commit, then OPEN and one
channel write of WRITE + FSETSTAT + CLOSE, then the rename; batches of them in three
channel writes; a failure or an abort leaves nothing at the final name."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from ferry.mover.backends.base import INTERNAL_PREFIX, Entry, EntryType, SmallFile
from ferry.mover.backends.sftp.backend import SFTPBackend
from ferry.mover.backends.sftp.wire import session as sftp_wire
from ferry.mover.endpoints import SFTPEndpoint, parse_endpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import ErrorPolicy, Preserve
from tests.backends.helpers import transfer
from tests.servers import SSHServer

pytestmark = pytest.mark.servers

MTIME = 1_600_000_000_000_000_000


def _backend(srv: SSHServer, sub: str) -> SFTPBackend:
    ep = parse_endpoint(srv.uri(sub))
    assert isinstance(ep, SFTPEndpoint)
    return SFTPBackend(ep)


def _entry(name: str, size: int) -> Entry:
    return Entry(name, EntryType.FILE, size=size, mtime_ns=MTIME, mode=0o640)


def test_small_file_written_in_one_batch(
    sshd_server: SSHServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[int] = []
    send = sftp_wire.Session._send

    def watched(self: sftp_wire.Session, kind: int, *a: Any, **k: Any) -> int:
        sent.append(kind)
        return int(send(self, kind, *a, **k))

    monkeypatch.setattr(sftp_wire.Session, "_send", watched)
    sub = f"small-{uuid.uuid4().hex[:8]}"
    be = _backend(sshd_server, sub)
    d = sshd_server.root / sub
    try:
        be.prepare_destination()
        (d / "over").write_bytes(b"old contents")
        for name, data in (("small", b"s" * 300_000), ("empty", b""), ("over", b"new")):
            w = be.open_write(name, _entry(name, len(data)))
            if data:
                w.write_at(0, data)
            sent.clear()
            w.commit(_entry(name, len(data)), None, Preserve())
            writes = -(-len(data) // (255 * 1024))
            assert sent == [sftp_wire.OPEN] + [sftp_wire.WRITE] * writes + [
                sftp_wire.FSETSTAT,
                sftp_wire.CLOSE,
            ], name
            assert (d / name).read_bytes() == data
            st = os.stat(d / name)
            assert st.st_mtime_ns == MTIME and st.st_mode & 0o7777 == 0o640
        # Aborted before commit: nothing was sent, nothing is left.
        w = be.open_write("gone", _entry("gone", 5))
        w.write_at(0, b"12345")
        sent.clear()
        w.abort()
        assert sent == [] and not (d / "gone").exists()
        # Into a directory that does not exist: an error, and no file anywhere.
        w = be.open_write("no/such/dir/f", _entry("f", 5))
        w.write_at(0, b"12345")
        with pytest.raises(FerryError):
            w.commit(_entry("f", 5), None, Preserve())
        w.abort()
    finally:
        be.close()
    assert sorted(p.name for p in d.iterdir()) == ["empty", "over", "small"]
    assert not any(p.name.startswith(INTERNAL_PREFIX) for p in d.iterdir())


def _leftovers(d: Path) -> list[str]:
    return [str(p) for p in d.rglob(f"{INTERNAL_PREFIX}*")]


def _put(be: SFTPBackend, files: dict[str, bytes]) -> list[FerryError | None]:
    batch = [SmallFile(rel, _entry(rel, len(b)), b, None) for rel, b in files.items()]
    return be.put_small(batch, Preserve())


def _check(d: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (d / rel).read_bytes() == data, rel
        st = os.stat(d / rel)
        assert st.st_mtime_ns == MTIME and st.st_mode & 0o7777 == 0o640, rel


@pytest.fixture
def channel_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the SSH channel writes of sessions opened from here on (clear it to
    start counting)."""
    writes: list[int] = []
    make = sftp_wire.channel_sender

    def watched_sender(chan: paramiko.Channel) -> Any:
        sendall = make(chan)

        def watched(parts: Any) -> None:
            writes.append(sum(len(p) for p in parts))
            sendall(parts)

        return watched

    monkeypatch.setattr(sftp_wire, "channel_sender", watched_sender)
    return writes


def test_batch_in_three_channel_writes(sshd_server: SSHServer, channel_writes: list[int]) -> None:
    sub = f"batch-{uuid.uuid4().hex[:8]}"
    be = _backend(sshd_server, sub)
    d = sshd_server.root / sub
    files = {
        "big": os.urandom(300_000),  # two WRITEs
        "empty": b"",
        "over": b"new",
        "sub/\u00fc \u00f1 \u6587.txt": b"unicode",
        "ro/f": b"permission denied",
        "missing/f": b"no such directory",
        "isdir": b"a directory is in the way",
    }
    try:
        be.prepare_destination()
        for sub_dir in ("sub", "ro", "isdir", "isdir/inside"):
            be.mkdir(sub_dir)
        (d / "over").write_bytes(b"old contents")
        os.chmod(d / "ro", 0o555)
        channel_writes.clear()
        outcomes = dict(zip(files, _put(be, files), strict=True))
        writes = len(channel_writes)
    finally:
        be.close()
    # The OPENs, the writes and closes, the renames and removes; then one statvfs, as the
    # failure of "isdir" was a bare one (SFTP's answer for a full disk too).
    assert writes == 4
    kinds = {rel: outcomes.pop(rel) for rel in ("ro/f", "missing/f", "isdir")}
    assert {rel: e.kind if e else None for rel, e in kinds.items()} == {
        "ro/f": ErrorKind.PERMISSION,
        "missing/f": ErrorKind.DESTINATION_NOT_FOUND,
        "isdir": ErrorKind.IO_ERROR,
    }
    assert all(e is not None and e.path == rel for rel, e in kinds.items())
    assert all(e is None for e in outcomes.values()), outcomes
    _check(d, {rel: files[rel] for rel in outcomes})
    assert not (d / "ro" / "f").exists() and not (d / "missing").exists()
    assert (d / "isdir" / "inside").is_dir()
    assert _leftovers(d) == []


@pytest.fixture(scope="module")
def sshd_without_posix_rename() -> Iterator[SSHServer]:
    srv = SSHServer(sftp_options="-P posix-rename").start()
    try:
        yield srv
    finally:
        srv.close()


def test_batch_on_a_server_without_posix_rename(sshd_without_posix_rename: SSHServer) -> None:
    """Every rename in the batch is refused; each file is then put in place the plain way."""
    srv = sshd_without_posix_rename
    sub = f"plain-{uuid.uuid4().hex[:8]}"
    be = _backend(srv, sub)
    d = srv.root / sub
    files = {f"f{i}": os.urandom(i * 100) for i in range(5)}
    try:
        be.prepare_destination()
        (d / "f3").write_bytes(b"replaced")
        assert _put(be, files) == [None] * 5
    finally:
        be.close()
    _check(d, files)
    assert _leftovers(d) == []


def test_copy_reports_the_files_a_batch_could_not_write(
    sshd_server: SSHServer, tmp_path: Path
) -> None:
    """Files that fail in a batch go again one by one: reported once each, the rest copied."""
    src = tmp_path / "src"
    for sub_dir in ("ok", "ro"):
        (src / sub_dir).mkdir(parents=True)
        for i in range(20):
            (src / sub_dir / f"f{i}").write_bytes(os.urandom(1000 + i))
    sub = f"engine-{uuid.uuid4().hex[:8]}"
    d = sshd_server.root / sub
    be = _backend(sshd_server, sub)
    try:
        be.prepare_destination()
        be.mkdir("ro")
    finally:
        be.close()
    os.chmod(d / "ro", 0o555)
    summary = transfer(str(src), sshd_server.uri(sub), error_policy=ErrorPolicy.SKIP)
    assert summary.files_copied == 20 and summary.files_failed == 20
    assert sorted(e.path or "" for e in summary.errors) == sorted(f"ro/f{i}" for i in range(20))
    assert {e.kind for e in summary.errors} == {ErrorKind.PERMISSION}
    for i in range(20):
        assert (d / "ok" / f"f{i}").read_bytes() == (src / "ok" / f"f{i}").read_bytes()
    assert list((d / "ro").iterdir()) == []


def test_batch_read_in_two_channel_writes(
    sshd_server: SSHServer, channel_writes: list[int]
) -> None:
    """get_small reads a batch with two channel writes; a file that is gone, or whose size or
    mtime is not the listed one, is None (read again on its own)."""
    sub = f"read-{uuid.uuid4().hex[:8]}"
    d = sshd_server.root / sub
    d.mkdir()
    files = {f"f{i}": os.urandom(i * 50_000) for i in range(8)}  # 0 to 350 KB: 0-2 READs
    for name, data in files.items():
        (d / name).write_bytes(data)
    be = _backend(sshd_server, sub)
    try:
        listed = {e.name: e for e in be.list_dir("")}
        (d / "f1").unlink()
        (d / "f2").write_bytes(b"rewritten")
        os.utime(d / "f3", (1, 1))
        names = sorted(listed)
        channel_writes.clear()
        got = dict(zip(names, be.get_small([(n, listed[n]) for n in names]), strict=True))
        writes = len(channel_writes)
    finally:
        be.close()
    assert writes == 2
    assert {n for n, data in got.items() if data is None} == {"f1", "f2", "f3"}
    assert all(got[n] == files[n] for n in files if n not in ("f1", "f2", "f3"))


def test_copy_reports_the_files_a_batch_could_not_read(
    sshd_server: SSHServer, tmp_path: Path
) -> None:
    """A file the batched read could not get goes again on its own: reported once, with the
    server's reason, and every other file copied."""
    sub = f"unreadable-{uuid.uuid4().hex[:8]}"
    d = sshd_server.root / sub
    d.mkdir()
    for i in range(30):
        (d / f"f{i:02d}").write_bytes(os.urandom(500 + i))
    os.chmod(d / "f07", 0)  # sshd serves as the test user, who may not read it now
    summary = transfer(sshd_server.uri(sub), str(tmp_path / "out"), error_policy=ErrorPolicy.SKIP)
    assert summary.files_copied == 29 and summary.files_failed == 1
    assert [(e.path, e.kind) for e in summary.errors] == [("f07", ErrorKind.PERMISSION)]
    for i in range(30):
        if i != 7:
            assert (tmp_path / "out" / f"f{i:02d}").read_bytes() == (d / f"f{i:02d}").read_bytes()
    assert not (tmp_path / "out" / "f07").exists()
