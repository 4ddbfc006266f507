"""A hostile network or a broken SMB server, against the real smbd: answers stripped of their
signature or decrypted into plaintext by a relay in the middle, READ answers whose data lies
outside the message, and local names that SMB would split at a backslash."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from smbprotocol.connection import Ciphers, Connection
from smbprotocol.header import Commands

from ferry.mover.backends.smb.backend import SMBBackend
from ferry.mover.endpoints import SMBEndpoint, parse_endpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import ErrorPolicy, MiB
from tests.backends.helpers import REPO, transfer
from tests.servers import SambaServer
from tests.servers.proxy import SMBAnswerRelay

SIGNED = 0x8  # SMB2_FLAGS_SIGNED
DATA = b"the real data " * 300


def _share_dir(srv: SambaServer, label: str) -> tuple[str, Path]:
    sub = f"{label}-{uuid.uuid4().hex[:8]}"
    d = srv.root / sub
    d.mkdir()
    st = os.stat(srv.root)
    os.chown(d, st.st_uid, st.st_gid)
    return sub, d


def _via(srv: SambaServer, relay: SMBAnswerRelay, sub: str, **opts: str) -> str:
    return srv.uri(sub, **opts).replace(f":{srv.port}/", f":{relay.port}/", 1)


def _headers(msg: bytes) -> Iterator[int]:
    """Where each SMB2 header of a (compound) message starts."""
    pos = 0
    while True:
        yield pos
        nxt = int.from_bytes(msg[pos + 20 : pos + 24], "little")
        if nxt == 0 or pos + nxt + 64 > len(msg):
            return
        pos += nxt


def _evil_read(msg: bytes, strip: bool) -> bytes | None:
    """msg with its first successful READ answer's data changed (and with `strip`, its SIGNED
    flag cleared and its signature zeroed), or None when it has none."""
    if msg[:4] != b"\xfeSMB":
        return None
    out = bytearray(msg)
    for pos in _headers(msg):
        command = int.from_bytes(msg[pos + 12 : pos + 14], "little")
        status = int.from_bytes(msg[pos + 8 : pos + 12], "little")
        flags = int.from_bytes(msg[pos + 16 : pos + 20], "little")
        if command == Commands.SMB2_READ and status == 0:
            start = pos + msg[pos + 64 + 2]  # DataOffset
            out[start : start + 4] = b"EVIL"
            if strip:
                out[pos + 16 : pos + 20] = (flags & ~SIGNED).to_bytes(4, "little")
                out[pos + 48 : pos + 64] = bytes(16)
            return bytes(out)
    return None


@pytest.mark.parametrize(
    ("strip", "said"),
    [(True, "not signed on a session that requires signing"), (False, "signature check")],
    ids=["unsigned", "bad-signature"],
)
def test_tampered_answer_on_signing_session(
    smbd_server: SambaServer, tmp_path: Path, strip: bool, said: str
) -> None:
    """A relay rewrites the data of one READ answer: stripped of its SIGNED flag (which
    smbprotocol alone accepts unchecked) or with the signature left to fail. The copy stops
    with AuthFailed, nothing is written, and the message says why."""
    sub, d = _share_dir(smbd_server, "sig")
    (d / "f.txt").write_bytes(DATA)
    relay = SMBAnswerRelay(smbd_server.port, lambda msg: _evil_read(msg, strip)).start()
    try:
        summary = transfer(_via(smbd_server, relay, sub), str(tmp_path / "dst"))
    finally:
        relay.stop()
    assert relay.tampered == 1
    assert summary.exit_code == ErrorKind.AUTH_FAILED.exit_code, summary.to_json()
    assert summary.fatal is not None and said in str(summary.fatal)
    assert not (tmp_path / "dst" / "f.txt").exists()


def test_plaintext_answer_on_encrypted_session(smbd_server: SambaServer) -> None:
    """On an encrypted session a relay replaces the encrypted answer to a read with its
    plaintext, data changed (the relay is handed the session key to build it; an attacker
    who guessed the message ids could forge one). smbprotocol alone takes a plaintext answer
    unchecked: it is refused, the connection dropped, and a new one reads the real data."""
    sub, d = _share_dir(smbd_server, "enc")
    (d / "f.txt").write_bytes(DATA)
    key: list[bytes] = []

    def decrypt(msg: bytes) -> bytes | None:
        if msg[:4] != b"\xfdSMB" or not key:
            return None
        # SMB3 transform (MS-SMB2 2.2.41): signature = GCM tag, nonce, AAD = bytes 20..52
        plain = AESGCM(key[0]).decrypt(msg[20:32], msg[52:] + msg[4:20], msg[20:52])
        return _evil_read(plain, strip=False)

    relay = SMBAnswerRelay(smbd_server.port, decrypt).start()
    ep = parse_endpoint(_via(smbd_server, relay, sub, encrypt="true"))
    assert isinstance(ep, SMBEndpoint)
    be = SMBBackend(ep)
    try:
        entry = be.stat("f.txt")
        assert entry is not None
        (conn,) = be.share._cache.values()
        assert conn.cipher_id in (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM)
        (session,) = conn.session_table.values()
        assert session.encrypt_data
        key.append(session.decryption_key)
        with pytest.raises(FerryError) as caught:
            be.open_read("f.txt", entry).read_at(0, entry.size)
        assert relay.tampered == 1
        assert caught.value.kind == ErrorKind.AUTH_FAILED
        assert "plaintext on an encrypted session" in str(caught.value)
        assert not be.share._cache  # dropped, not reused
        assert be.open_read("f.txt", entry).read_at(0, entry.size) == DATA
    finally:
        be.close()
        relay.stop()


def test_read_answer_outside_its_message(
    smbd_server: SambaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A READ answer cut short while its DataLength still claims the whole piece (a mock:
    this smbd does not send such answers, and signing stops a relay from making one): a
    Transient protocol error naming the cause, not a short read taken for a shrunk file."""
    sub, d = _share_dir(smbd_server, "rd")
    (d / "big").write_bytes(os.urandom(2 * MiB + 5))
    real = Connection.receive
    cut: list[int] = []

    def cut_short(self: Connection, request: Any, *args: Any, **kw: Any) -> Any:
        header = real(self, request, *args, **kw)
        if header["command"].get_value() == Commands.SMB2_READ and not cut:
            cut.append(1)
            header["data"] = header["data"].get_value()[:-100]
        return header

    be = SMBBackend(_ep(smbd_server, sub))
    try:
        entry = be.stat("big")
        assert entry is not None
        monkeypatch.setattr(Connection, "receive", cut_short)
        with pytest.raises(FerryError) as caught:
            b"".join(be.open_read("big", entry).iter_range(0, entry.size, MiB))
        assert cut and caught.value.kind == ErrorKind.TRANSIENT
        assert "outside its" in str(caught.value)
    finally:
        be.close()


def _ep(srv: SambaServer, sub: str) -> SMBEndpoint:
    ep = parse_endpoint(srv.uri(sub))
    assert isinstance(ep, SMBEndpoint)
    return ep


def test_backslash_name_is_refused_not_split(smbd_server: SambaServer, tmp_path: Path) -> None:
    """A local file `a\\b.txt` is one name; SMB would take the backslash as a separator and
    write a/b.txt. It is reported as UnsafePath (as are a directory `d\\e` and the other
    names SMB cannot hold) and the rest is copied."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a\\b.txt").write_bytes(b"one name")
    (src / "a" / "other.txt").write_bytes(b"other")
    (src / "ok.txt").write_bytes(b"ok")
    (src / "q?.txt").write_bytes(b"q")
    (src / "d\\e").mkdir()
    (src / "d\\e" / "f.txt").write_bytes(b"f")
    sub, d = _share_dir(smbd_server, "bs")
    for split in ("a", "d"):  # where a split name would land
        (d / split).mkdir()
        os.chown(d / split, os.stat(d).st_uid, os.stat(d).st_gid)
    summary = transfer(str(src), smbd_server.uri(sub), error_policy=ErrorPolicy.SKIP)
    assert summary.exit_code == ErrorKind.PARTIAL.exit_code, summary.to_json()
    errors = {e.path: e for e in summary.errors}
    assert sorted(errors) == ["a\\b.txt", "d\\e", "d\\e/f.txt", "q?.txt"]
    assert all(e.kind == ErrorKind.UNSAFE_PATH for e in errors.values())
    assert "backslash" in errors["a\\b.txt"].message
    assert not (d / "a" / "b.txt").exists() and os.listdir(d / "d") == []
    assert (d / "ok.txt").read_bytes() == b"ok"
    assert (d / "a" / "other.txt").read_bytes() == b"other"


@pytest.mark.parametrize("char", list('\\:*?"<>|\x01\x1f'))
def test_names_smb_cannot_hold(char: str) -> None:
    be = SMBBackend(parse_endpoint("smb://u@127.0.0.1:1/share/dir"))  # type: ignore[arg-type]
    calls: list[Callable[[], Any]] = [
        lambda: be.share.path(f"d/x{char}y"),
        lambda: be.share.share_rel(f"x{char}y"),
    ]
    for call in calls:
        with pytest.raises(FerryError) as caught:
            call()
        assert caught.value.kind == ErrorKind.UNSAFE_PATH and caught.value.path
    assert be.share.share_rel("d/ünï ☃.txt") == "dir\\d\\ünï ☃.txt"


def test_strict_answers_in_use(smbd_server: SambaServer) -> None:
    """The check is installed on the smbprotocol it was written against (pyproject pins it):
    an upgrade fails here instead of silently dropping to the library's own checks."""
    from ferry.mover.backends.smb.wire.connection import STRICT_TESTED, strict_answers

    be = SMBBackend(_ep(smbd_server, ""))
    try:
        assert be.root_type() is not None
    finally:
        be.close()
    assert strict_answers()
    assert getattr(Connection.verify_signature, "ferry_strict", False)
    assert STRICT_TESTED in (REPO / "pyproject.toml").read_text()
