"""`--fsync file` to SFTP: every file's data is flushed on the server (fsync@openssh.com)
after its last write and before its rename into place, whichever way it was written
(a batch of small ones, buffered, whole, in chunks). Read from the log OpenSSH's
sftp-server keeps of the requests it serves."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.mover.backends.base import INTERNAL_PREFIX
from ferry.mover.options import Fsync
from tests.backends.helpers import ok, transfer
from tests.backends.tree import CHUNK
from tests.servers import SSHServer

pytestmark = pytest.mark.servers

SIZES = {
    "small/a": 1000,  # batched (put_many)
    "small/empty": 0,
    "buffered": 500 * 1024,  # written whole at commit (write_small)
    "whole": 3 << 20,  # written at offset 0, flushed at commit (sync_file)
    "chunked": 2 * CHUNK + 12345,  # chunks from several sessions, flushed at commit
}
_LINE = re.compile(r'^(open|close|fsync|posix-rename old|rename old) "([^"]*)"(?: new "([^"]*)")?')


def _tree(root: Path) -> dict[str, bytes]:
    files = {rel: os.urandom(size) for rel, size in SIZES.items()}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _requests(srv: SSHServer) -> list[tuple[str, str, str | None]]:
    """(request, path, new path) for the requests sftp-server logged, in order."""
    out = []
    for line in srv.sftp_log_file.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            out.append((m[1].split()[0], m[2], m[3]))
    return out


def _server(options: str = "") -> Iterator[SSHServer]:
    srv = SSHServer(sftp_options=options, sftp_log=True).start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def logged_sshd() -> Iterator[SSHServer]:
    yield from _server()


@pytest.fixture(scope="module")
def sshd_denying_fsync() -> Iterator[SSHServer]:
    yield from _server("-P fsync")


def test_each_file_flushed_before_its_rename(logged_sshd: SSHServer, tmp_path: Path) -> None:
    files = _tree(tmp_path)
    sub = f"sync-{uuid.uuid4().hex[:8]}"
    ok(transfer(str(tmp_path), logged_sshd.uri(sub), fsync=Fsync.FILE, transfers=4))
    dest = logged_sshd.root / sub
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    log = _requests(logged_sshd)
    renamed = {new: old for req, old, new in log if req in ("posix-rename", "rename") and new}
    finals = {str(dest / rel) for rel in files}
    assert finals <= renamed.keys()
    for final in finals:
        tmp = renamed[final]
        assert os.path.basename(tmp).startswith(INTERNAL_PREFIX)
        rename_at = max(
            i for i, (req, old, _) in enumerate(log) if req.endswith("rename") and old == tmp
        )
        mine = [req for req, path, _ in log[:rename_at] if path == tmp]
        assert "fsync" in mine, (final, mine)
        after = mine[len(mine) - mine[::-1].index("fsync") :]
        # Nothing opened or written after the flush: at most the flushing handle's CLOSE.
        assert after in ([], ["close"]), (final, mine)


def test_no_flush_asked_by_default(logged_sshd: SSHServer, tmp_path: Path) -> None:
    files = _tree(tmp_path)
    sub = f"nosync-{uuid.uuid4().hex[:8]}"
    ok(transfer(str(tmp_path), logged_sshd.uri(sub), transfers=4))
    dest = logged_sshd.root / sub
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    mine = [req for req, path, _ in _requests(logged_sshd) if path.startswith(f"{dest}/")]
    assert mine.count("close") >= len(files)  # the log saw this copy's writes
    assert "fsync" not in mine


def test_server_declining_fsync_is_said_once(
    sshd_denying_fsync: SSHServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The copy still succeeds; the user is told once that nothing was flushed."""
    files = _tree(tmp_path)
    sub = f"denied-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="ferry"):
        ok(transfer(str(tmp_path), sshd_denying_fsync.uri(sub), fsync=Fsync.FILE, transfers=4))
    dest = sshd_denying_fsync.root / sub
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    assert list(dest.rglob(f"{INTERNAL_PREFIX}*")) == []
    said = [r.getMessage() for r in caplog.records if "fsync@openssh.com" in r.getMessage()]
    assert len(said) == 1 and "declines" in said[0], said
