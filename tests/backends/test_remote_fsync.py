"""`--fsync file` to SFTP and SMB: every file's data is flushed on the server
(fsync@openssh.com; an SMB2 FLUSH, which smbd turns into fsync) after its last write and
before its rename into place, whichever way it was written (batched small files, buffered,
whole, in chunks from several connections). Read from the servers' own request logs:
OpenSSH's sftp-server at VERBOSE, Samba's full_audit module."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends.base import INTERNAL_PREFIX
from ferry.mover.options import Fsync
from tests.backends.helpers import ok, transfer
from tests.backends.tree import CHUNK
from tests.servers import SambaServer, SSHServer

pytestmark = pytest.mark.servers

SIZES = {
    "small/a": 1000,  # batched where the backend takes batches
    "small/empty": 0,
    "buffered": 500 * 1024,  # written whole at commit
    "whole": 3 << 20,  # written at offset 0, through its own handle
    "chunked": 2 * CHUNK + 12345,  # chunks from several connections
}
Request = tuple[str, str, str | None]  # open | close | fsync | rename, path, new path
_SFTP = re.compile(r'^(open|close|fsync|posix-rename old|rename old) "([^"]*)"(?: new "([^"]*)")?')
_SMB_KINDS = {"openat": "open", "close": "close", "fsync": "fsync", "fsync_send": "fsync"}


def _sftp_requests(srv: SSHServer) -> list[Request]:
    out: list[Request] = []
    for line in srv.sftp_log_file.read_text(errors="replace").splitlines():
        m = _SFTP.match(line)
        if m:
            kind = m[1].split()[0]
            out.append(("rename" if kind.endswith("rename") else kind, m[2], m[3]))
    return out


def _smb_requests(srv: SambaServer) -> list[Request]:
    """full_audit lines: audit|op|ok|[r|w|]path[|new path]"""
    out: list[Request] = []
    for line in srv.log.read_text(errors="replace").splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or parts[0] != "audit":
            continue
        op, args = parts[1], [a for a in parts[3:] if a not in ("r", "w")]
        if op == "renameat" and len(args) == 2:
            out.append(("rename", args[0], args[1]))
        elif op in _SMB_KINDS and args:
            out.append((_SMB_KINDS[op], args[0], None))
    return out


class Logged:
    """A server that logs the requests it serves, and the root its URIs point below."""

    def __init__(self, kind: str, options: str = "") -> None:
        self.kind = kind
        if kind == "sftp":
            self.sftp = SSHServer(sftp_options=options, sftp_log=True).start()
            self.root = self.sftp.root
        else:
            self.smb = SambaServer(audit=True).start()
            self.root = self.smb.root

    def uri(self, sub: str) -> str:
        return self.sftp.uri(sub) if self.kind == "sftp" else self.smb.uri(sub)

    def requests(self) -> list[Request]:
        return _sftp_requests(self.sftp) if self.kind == "sftp" else _smb_requests(self.smb)

    def close(self) -> None:
        (self.sftp if self.kind == "sftp" else self.smb).close()


@pytest.fixture(scope="module", params=["sftp", "smb"])
def logged(request: pytest.FixtureRequest) -> Iterator[Logged]:
    srv = Logged(request.param)
    try:
        yield srv
    finally:
        srv.close()


def _tree(root: Path) -> dict[str, bytes]:
    files = {rel: os.urandom(size) for rel, size in SIZES.items()}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _same(dest: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    assert list(dest.rglob(f"{INTERNAL_PREFIX}*")) == []


def test_each_file_flushed_before_its_rename(logged: Logged, tmp_path: Path) -> None:
    files = _tree(tmp_path)
    sub = f"sync-{uuid.uuid4().hex[:8]}"
    ok(transfer(str(tmp_path), logged.uri(sub), fsync=Fsync.FILE, transfers=4))
    dest = logged.root / sub
    _same(dest, files)
    log = logged.requests()
    renamed = {new: old for kind, old, new in log if kind == "rename" and new}
    for rel in files:
        tmp = renamed[str(dest / rel)]
        assert os.path.basename(tmp).startswith(INTERNAL_PREFIX)
        at = max(i for i, (kind, old, _) in enumerate(log) if kind == "rename" and old == tmp)
        mine = [kind for kind, path, _ in log[:at] if path == tmp]
        assert "fsync" in mine, (rel, mine)
        after = mine[len(mine) - mine[::-1].index("fsync") :]
        # Nothing opened after the flush, only handles closed before the rename: the flushing
        # one, and on SFTP the write handles other sessions kept between pieces (each of
        # their writes acknowledged before the commit that flushes).
        assert set(after) <= {"close"}, (rel, mine)


def test_no_flush_asked_by_default(logged: Logged, tmp_path: Path) -> None:
    files = _tree(tmp_path)
    sub = f"nosync-{uuid.uuid4().hex[:8]}"
    ok(transfer(str(tmp_path), logged.uri(sub), transfers=4))
    dest = logged.root / sub
    _same(dest, files)
    mine = [kind for kind, path, _ in logged.requests() if path.startswith(f"{dest}/")]
    assert mine.count("rename") >= len(files)  # the log saw this copy
    assert "fsync" not in mine


@pytest.fixture(scope="module")
def sshd_denying_fsync() -> Iterator[Logged]:
    srv = Logged("sftp", "-P fsync")
    try:
        yield srv
    finally:
        srv.close()


def test_sftp_server_declining_fsync_is_said_once(
    sshd_denying_fsync: Logged, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The copy still succeeds; the user is told once that nothing was flushed."""
    files = _tree(tmp_path)
    sub = f"denied-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="ferry"):
        ok(transfer(str(tmp_path), sshd_denying_fsync.uri(sub), fsync=Fsync.FILE, transfers=4))
    _same(sshd_denying_fsync.root / sub, files)
    said = [r.getMessage() for r in caplog.records if "fsync@openssh.com" in r.getMessage()]
    assert len(said) == 1 and "declines" in said[0], said


@pytest.mark.parametrize("logged", ["smb"], indirect=True)
def test_smb_flush_through_smbclient(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the compound path cannot open the file (a symlink on the path for the client to
    follow, injected as in test_smb_compound: Samba follows symlinks itself), the file is
    written and flushed through smbclient's own handles, still before the rename."""
    from smbprotocol import exceptions as smbexc
    from smbprotocol.header import Commands

    from ferry.mover.backends.smb.share import Share

    real = Share.exchange

    def stop_at_symlink(tree: Any, bodies: list[Any]) -> list[Any]:
        if bodies[0].COMMAND == Commands.SMB2_CREATE:
            return [smbexc.StoppedOnSymlink() for _ in bodies]
        return real(tree, bodies)

    monkeypatch.setattr(Share, "exchange", staticmethod(stop_at_symlink))
    files = {rel: os.urandom(size) for rel, size in (("one", 1000), ("two", 3 << 20))}
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    sub = f"smbclient-{uuid.uuid4().hex[:8]}"
    ok(transfer(str(tmp_path), logged.uri(sub), fsync=Fsync.FILE))
    dest = logged.root / sub
    _same(dest, files)
    log = logged.requests()
    for rel in files:
        tmp = next(old for kind, old, new in log if kind == "rename" and new == str(dest / rel))
        at = max(i for i, (kind, old, _) in enumerate(log) if kind == "rename" and old == tmp)
        assert "fsync" in [kind for kind, path, _ in log[:at] if path == tmp], rel
