"""SMB small-file paths that run as compound requests against a real smbd: the whole-file read
whose CLOSE carries the after-copy check, and the writer that creates its temp file with the
first write and renames it through the same handle."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends.base import INTERNAL_PREFIX, Entry, EntryType
from ferry.mover.backends.smb.backend import SMBBackend
from ferry.mover.backends.smb.share import Share
from ferry.mover.endpoints import SMBEndpoint, parse_endpoint
from ferry.mover.options import Preserve
from tests.backends.helpers import ok, transfer
from tests.backends.tree import CHUNK, compare
from tests.servers import SambaServer

MTIME = 1_600_000_000_123_456_000


def _backend(srv: SambaServer, sub: str) -> SMBBackend:
    ep = parse_endpoint(srv.uri(sub))
    assert isinstance(ep, SMBEndpoint)
    return SMBBackend(ep)


def test_whole_file_read_sees_changes(smbd_server: SambaServer) -> None:
    sub = f"c-{uuid.uuid4().hex[:8]}"
    d = smbd_server.root / sub
    d.mkdir()
    os.chown(d, *_owner(smbd_server))
    (d / "a").write_bytes(b"x" * 5000)
    be = _backend(smbd_server, sub)
    try:
        entry = be.stat("a")
        assert entry is not None and entry.size == 5000
        reader = be.open_read("a", entry)
        assert reader.read_at(0, entry.size) == b"x" * 5000
        assert reader.changed() is None
        # Rewritten after the listing: the CLOSE's attributes no longer match it.
        (d / "a").write_bytes(b"y" * 5001)
        reader = be.open_read("a", entry)
        assert len(reader.read_at(0, entry.size)) == 5000
        assert reader.changed() == "file changed while copying"
        assert be.stat("missing") is None
    finally:
        be.close()


def test_writer_compound_commit_and_abort(smbd_server: SambaServer) -> None:
    sub = f"w-{uuid.uuid4().hex[:8]}"
    be = _backend(smbd_server, sub)
    try:
        be.prepare_destination()
        for name, data in (("small", b"s" * 3000), ("empty", b""), ("over", b"o" * 10)):
            entry = Entry(name, EntryType.FILE, size=len(data), mtime_ns=MTIME)
            w = be.open_write(name, entry)
            if data:
                w.write_at(0, data)
            w.commit(entry, None, Preserve())
        # Over an existing file (Samba refuses rename-with-replace there: the fallback runs).
        entry = Entry("over", EntryType.FILE, size=20, mtime_ns=MTIME)
        w = be.open_write("over", entry)
        w.write_at(0, b"n" * 20)
        w.commit(entry, None, Preserve())
        # Aborted after the first write created the temp file: nothing is left.
        w = be.open_write("gone", Entry("gone", EntryType.FILE, size=5, mtime_ns=MTIME))
        w.write_at(0, b"12345")
        w.abort()
        root = smbd_server.root / sub
        assert (root / "small").read_bytes() == b"s" * 3000
        assert (root / "empty").read_bytes() == b""
        assert (root / "over").read_bytes() == b"n" * 20
        assert sorted(os.listdir(root)) == ["empty", "over", "small"]
        assert not any(n.startswith(INTERNAL_PREFIX) for n in os.listdir(root))
        for name in ("small", "empty", "over"):
            assert os.stat(root / name).st_mtime_ns // 1000 == MTIME // 1000
    finally:
        be.close()


def _owner(srv: SambaServer) -> tuple[int, int]:
    st = os.stat(srv.root)
    return st.st_uid, st.st_gid


def test_copy_free_signature_matches_smbprotocol() -> None:
    """The signing shortcut computes what smbprotocol's own method does, for every algorithm."""
    import types

    from smbprotocol import Dialects
    from smbprotocol.connection import Connection, SigningAlgorithms
    from smbprotocol.header import Commands

    from ferry.mover.backends.smb.wire.connection import signature

    cases = [
        (Dialects.SMB_3_1_1, SigningAlgorithms.AES_GMAC),
        (Dialects.SMB_3_1_1, SigningAlgorithms.AES_CMAC),
        (Dialects.SMB_3_0_2, None),
        (Dialects.SMB_2_1_0, None),
    ]
    key = os.urandom(16)
    for dialect, algo in cases:
        conn = types.SimpleNamespace(dialect=dialect, signing_algorithm_id=algo)
        for msg in (os.urandom(200), os.urandom(70_000)):  # signed whole, and in pieces
            for response in (False, True):
                for command in (Commands.SMB2_READ, Commands.SMB2_CANCEL):
                    own = Connection._generate_signature(conn, msg, key, 9, response, command)  # type: ignore[arg-type]
                    assert signature(conn, msg, key, 9, response, command) == own


def test_light_headers_in_use(smbd_server: SambaServer) -> None:
    """smbprotocol's connections pack and parse headers with the light classes (which the
    probe found to pack and read sample headers exactly as smbprotocol's Structures do), and
    errors still come back as the right exceptions through them."""
    import smbprotocol.connection

    from ferry.mover.backends.smb.wire.connection import (
        LightHeaderRequest,
        LightHeaderResponse,
        _same_headers,
    )

    assert _same_headers()
    be = _backend(smbd_server, "")
    try:
        assert be.stat("no-such-file") is None  # STATUS_OBJECT_NAME_NOT_FOUND, parsed light
        assert be.root_type() is not None
    finally:
        be.close()
    assert smbprotocol.connection.SMB2HeaderRequest is LightHeaderRequest
    assert smbprotocol.connection.SMB2HeaderResponse is LightHeaderResponse


def test_encrypted_session(smbd_server: SambaServer, tmp_path: Path) -> None:
    """encrypt=true: every message goes in an SMB3 transform (through the light headers
    too), both ways, for small files and for a large one read and written in pieces."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "small.txt").write_bytes(b"secret " * 100)
    (src / "d" / "big.bin").write_bytes(os.urandom(3 * CHUNK + 12345))
    uri = smbd_server.uri(f"enc-{uuid.uuid4().hex[:8]}", encrypt="true")
    ok(transfer(str(src), uri))
    back = tmp_path / "back"
    ok(transfer(uri, str(back)))
    assert compare(src, back, precision_ns=1000, modes=False, empty_dirs=False) == []
    ep = parse_endpoint(uri)
    assert isinstance(ep, SMBEndpoint)
    be = SMBBackend(ep)
    try:
        assert be.stat("small.txt") is not None
        sessions = [s for c in be.share._cache.values() for s in c.session_table.values()]
        assert sessions and all(s.encrypt_data for s in sessions)
    finally:
        be.close()


def test_symlink_stop_goes_through_smbclient(
    smbd_server: SambaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server may stop a CREATE at a symlink on the path (STATUS_STOPPED_ON_SYMLINK) for
    the client to follow. Samba follows them itself, so that answer is injected here (a
    mock, for a reply this server does not give): reads, writes and stats then go through
    smbclient, which follows symlinks, and the files arrive whole."""
    from smbprotocol import exceptions as smbexc
    from smbprotocol.header import Commands

    real = Share.exchange
    stopped: list[int] = []

    def stop_at_symlink(tree: Any, bodies: list[Any]) -> list[Any]:
        if bodies[0].COMMAND == Commands.SMB2_CREATE:
            stopped.append(len(bodies))
            return [smbexc.StoppedOnSymlink() for _ in bodies]
        return real(tree, bodies)

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(1000 + i))
    uri = smbd_server.uri(f"sym-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(Share, "exchange", staticmethod(stop_at_symlink))
    ok(transfer(str(src), uri))
    back = tmp_path / "back"
    ok(transfer(uri, str(back)))
    assert compare(src, back, precision_ns=1000, modes=False) == []
    assert len(stopped) >= 6  # each file's write and read met the symlink answer
