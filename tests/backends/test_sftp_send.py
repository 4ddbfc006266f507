"""Uploads against a real sshd: channel data sealed by Ferry's GcmSender arrives intact and
survives key exchanges mid-file, or goes through paramiko's own send under library versions
it was not tested with; its padding is random; a big file's pieces share their sessions'
open handles."""

from __future__ import annotations

import os
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from ferry.mover.backends.sftp.wire import ssh_send
from ferry.mover.engine.stream import STREAM_PIECE
from tests.backends.helpers import ok, transfer
from tests.backends.sftp_peer import USER, Peer
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


@pytest.mark.parametrize("fault", ["paramiko-version", "aesgcm-call"])
def test_untested_libraries_fall_back_to_paramikos_send(
    sshd_server: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """GcmSender mirrors one paramiko release's private state and calls what that
    cryptography offers: under anything else the upload goes through Channel.sendall. The
    other releases are faked (they cannot be installed beside the pinned ones)."""
    if fault == "paramiko-version":
        monkeypatch.setattr(paramiko, "__version__", "5.1.1")
    else:
        monkeypatch.setattr(ssh_send, "AESGCM_CALLS", (*ssh_send.AESGCM_CALLS, "encrypt_fused"))
    usable: list[bool] = []
    check = ssh_send.GcmSender.usable
    monkeypatch.setattr(
        ssh_send.GcmSender, "usable", staticmethod(lambda c: usable.append(check(c)) or usable[-1])
    )
    sealed = _count(monkeypatch, ssh_send.GcmSender, "_seal")
    sent = _count(monkeypatch, paramiko.Channel, "sendall")
    data, dest = _upload(sshd_server, tmp_path, 3 * 1024 * 1024 + 123)
    assert dest.read_bytes() == data
    assert usable and not any(usable)
    assert not sealed and sent


def test_padding_is_random(tmp_path: Path) -> None:
    """RFC 4253 section 6: padding is random. Two packets of the same size, decrypted with
    the connection's own key, carry different padding."""
    peer = Peer()
    sock = socket.create_connection(("127.0.0.1", peer.port))
    t = paramiko.Transport(sock)
    try:
        opts = t.get_security_options()
        opts.ciphers = tuple(c for c in opts.ciphers if "gcm" in c)  # as Ferry prefers
        t.start_client(timeout=10)
        t.auth_password(USER, "x")
        chan = t.open_session()
        assert ssh_send.GcmSender.usable(chan)
        sender = ssh_send.GcmSender(chan)
        pk: Any = t.packetizer
        writes: list[tuple[bytes, bytes]] = []  # what went out, the nonce after it
        write_all = pk.write_all

        def recorded(out: Any) -> None:
            writes.append((bytes(out), getattr(pk, ssh_send._P + "iv_out")))
            write_all(out)

        pk.write_all = recorded
        sender.sendall([b"a" * 1000])
        sender.sendall([b"a" * 1000])
        engine = getattr(pk, ssh_send._P + "block_engine_out")
        paddings = []
        for out, iv in writes:
            length = struct.unpack_from(">I", out)[0]
            assert len(out) == 4 + length + ssh_send.TAG  # one packet per write
            nonce = iv[:4] + (int.from_bytes(iv[4:], "big") - 1).to_bytes(8, "big")
            plain = engine.decrypt(nonce, out[4:], out[:4])
            pad = plain[0]
            assert plain[1 + 9 : -pad] == b"a" * 1000
            paddings.append(plain[-pad:])
        assert len(paddings) == 2 and len(paddings[0]) == len(paddings[1]) >= 4
        assert paddings[0] != paddings[1]
    finally:
        t.close()
        peer.close()
