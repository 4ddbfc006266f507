"""SFTP small-file writes against a real sshd: buffered until commit, then OPEN and one
channel write of WRITE + FSETSTAT + CLOSE, then the rename; a failure or an abort leaves
nothing at the final name."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from ferry.mover.backends import sftp_wire
from ferry.mover.backends.base import INTERNAL_PREFIX, Entry, EntryType
from ferry.mover.backends.sftp import SFTPBackend
from ferry.mover.endpoints import SFTPEndpoint, parse_endpoint
from ferry.mover.errors import FerryError
from ferry.mover.options import Preserve
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
