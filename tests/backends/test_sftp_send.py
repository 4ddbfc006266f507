"""Uploads against a real sshd: channel data sealed by Ferry's GcmSender arrives intact and
survives key exchanges mid-file; a big file's pieces share their sessions' open handles."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from ferry.mover.backends import ssh_send
from ferry.mover.execute import STREAM_PIECE
from tests.backends.helpers import ok, transfer
from tests.backends.test_remote_fsync import Logged
from tests.backends.tree import CHUNK
from tests.servers import SSHServer

pytestmark = pytest.mark.servers


def _upload(srv: SSHServer, tmp_path: Path, size: int) -> tuple[bytes, Path]:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(size)
    (src / "f.bin").write_bytes(data)
    sub = f"send-{uuid.uuid4().hex[:8]}"
    ok(transfer(str(src), srv.uri(sub)))
    return data, srv.root / sub / "f.bin"


def _count(monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> list[int]:
    calls: list[int] = []
    orig = getattr(cls, name)

    def counted(self: Any, *a: Any) -> Any:
        calls.append(1)
        return orig(self, *a)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_upload_is_sealed_by_ferry(
    sshd_server: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usable: list[bool] = []
    check = ssh_send.GcmSender.usable
    monkeypatch.setattr(
        ssh_send.GcmSender, "usable", staticmethod(lambda c: usable.append(check(c)) or usable[-1])
    )
    sealed = _count(monkeypatch, ssh_send.GcmSender, "_seal")
    data, dest = _upload(sshd_server, tmp_path, 3 * 1024 * 1024 + 123)
    assert dest.read_bytes() == data
    assert usable and all(usable)  # sshd offers AES-GCM, which Ferry puts first
    assert len(sealed) >= len(data) // 32768  # every byte went through it


def test_key_exchanges_mid_upload(
    sshd_server: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paramiko.Packetizer, "REKEY_BYTES", 1024 * 1024)
    rekeys = _count(monkeypatch, paramiko.Packetizer, "_trigger_rekey")
    data, dest = _upload(sshd_server, tmp_path, 12 * 1024 * 1024)
    assert dest.read_bytes() == data
    assert len(rekeys) >= 4  # one per MiB sent on each connection, less what overlaps


@pytest.fixture(scope="module")
def logged_sftp() -> Iterator[Logged]:
    srv = Logged("sftp")
    try:
        yield srv
    finally:
        srv.close()


def test_write_handles_kept_between_pieces_and_closed_before_rename(
    logged_sftp: Logged, tmp_path: Path
) -> None:
    """A big file's pieces reuse the write handle their session already has open for it
    (an OPEN per piece was a round trip with nothing sent), and every handle is closed
    before the rename."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 * CHUNK + 1)
    pieces = 3 * -(-CHUNK // STREAM_PIECE) + 1  # three whole chunks and one byte
    (src / "f.bin").write_bytes(data)
    sub = f"kept-{uuid.uuid4().hex[:8]}"
    ok(transfer(str(src), logged_sftp.uri(sub)))
    final = logged_sftp.root / sub / "f.bin"
    assert final.read_bytes() == data
    log = logged_sftp.requests()
    at, tmp = next((i, old) for i, (k, old, new) in enumerate(log) if new == str(final))
    mine = [k for k, path, _ in log[:at] if path == tmp]
    assert 0 < mine.count("open") < pieces, (pieces, mine)
    assert mine.count("open") == mine.count("close"), mine
