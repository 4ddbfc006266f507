"""Block deltas across the wire: the server computes the signature of its copy and rebuilds
the file from the delta, so only what changed crosses (counted at the server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_ferry
from tests.wire.conftest import Server

MiB = 1024 * 1024


def test_a_changed_file_sends_only_its_delta(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    old = os.urandom(24 * MiB)
    (src / "image.bin").write_bytes(old)
    run_ferry("copy", src, server.url("dst"))
    # overwrite 64 KiB in two places and insert 100 KiB in the middle
    new = bytearray(old)
    new[1 * MiB : 1 * MiB + 65536] = os.urandom(65536)
    new[20 * MiB : 20 * MiB + 65536] = os.urandom(65536)
    new[12 * MiB : 12 * MiB] = os.urandom(100 * 1024)
    (src / "image.bin").write_bytes(bytes(new))
    before = server.stats()
    r = run_ferry("copy", src, server.url("dst"), "--delta", "on", "--json").summary
    crossed = server.stats()["wire_in"] - before["wire_in"]
    assert r["filesUpdated"] == 1 and r["filesFailed"] == 0, r
    assert r["bytesMatched"] > 20 * MiB, r
    assert r["bytesTransferred"] < 2 * MiB, r
    assert crossed < 2 * MiB, crossed
    assert (server.root / "dst" / "image.bin").read_bytes() == bytes(new)
    run_ferry("verify", src, server.url("dst"))
    assert not list((server.root / "dst").glob(".~ferry.*"))

    off = run_ferry("copy", src, server.url("whole"), "--delta", "off", "--json").summary
    assert off["bytesMatched"] == 0


def test_a_delta_against_a_basis_that_is_a_symlink_is_refused(
    tmp_path: Path, server: Server
) -> None:
    """The basis is opened at the server without following links."""
    outside = server.root.parent / "outside.bin"
    outside.write_bytes(os.urandom(MiB))
    (server.root / "dst").mkdir()
    os.symlink(outside, server.root / "dst" / "f.bin")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(outside.read_bytes()[:-10] + b"0123456789")
    r = run_ferry("copy", src, server.url("dst"), "--delta", "on", "--json", check_rc=None)
    # the planner sees a symlink where a file goes: it replaces it, never reads through it
    assert (server.root / "dst" / "f.bin").read_bytes() == (src / "f.bin").read_bytes()
    assert outside.read_bytes()[-10:] != b"0123456789"
    assert r.rc == 0, r.stderr


def test_a_delta_refused_mid_stream_reports_why(tmp_path: Path, server: Server) -> None:
    """The server answers a damaged delta at once and reads the rest of the stream away, so
    the client gets the real error (ProtocolError), not a reset connection (Transient)."""
    from ferry.mover.backends.base import Entry, EntryType
    from ferry.mover.backends.ferry.backend import FerryBackend
    from ferry.mover.endpoints import FerryEndpoint, parse_endpoint
    from ferry.mover.errors import ErrorKind, FerryError
    from ferry.mover.options import Preserve

    (server.root / "f.bin").write_bytes(os.urandom(MiB))
    ep = parse_endpoint(server.url(""))
    assert isinstance(ep, FerryEndpoint)
    backend = FerryBackend(ep)
    try:
        entry = Entry("f.bin", EntryType.FILE, 40 * MiB, 1)
        garbage = (b"not a delta" if i == 0 else bytes(MiB) for i in range(40))
        with pytest.raises(FerryError) as info:
            backend.apply_delta("f.bin", entry, garbage, "", Preserve())
        assert info.value.kind == ErrorKind.PROTOCOL, info.value
    finally:
        backend.close()


def test_delta_literals_cross_compressed(tmp_path: Path, server: Server) -> None:
    """New text in a changed file is literal data of the delta: zstd'd like any piece."""
    src = tmp_path / "src"
    src.mkdir()
    old = os.urandom(8 * MiB)
    (src / "mixed.bin").write_bytes(old)
    run_ferry("copy", src, server.url("dst"))
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(60_000))
    new = old[: 4 * MiB] + text + old[4 * MiB :]
    (src / "mixed.bin").write_bytes(new)
    before = server.stats()
    r = run_ferry("copy", src, server.url("dst"), "--delta", "on", "--json").summary
    after = server.stats()
    assert r["bytesMatched"] >= 7 * MiB, r
    assert after["zstd_in"] > before["zstd_in"]
    assert after["wire_in"] - before["wire_in"] < len(text) / 3
    assert (server.root / "dst" / "mixed.bin").read_bytes() == new
    off = run_ferry("copy", src, server.url("dst2"), "--compress", "off", "--json").summary
    assert off["filesFailed"] == 0


def test_auto_on_a_throttled_link_takes_the_delta(tmp_path: Path, server: Server) -> None:
    """`--delta auto` weighs the link: the file is large enough that the run probes the
    link first (a throwaway upload the server counts), and --bwlimit caps what the probe
    measured on loopback, so the delta wins."""
    src = tmp_path / "src"
    src.mkdir()
    old = os.urandom(32 * MiB)  # at least deltachoice.PROBE_MIN_FILE
    (src / "image.bin").write_bytes(old)
    run_ferry("copy", src, server.url("dst"))
    new = old[: 16 * MiB] + os.urandom(64 * 1024) + old[16 * MiB :]
    (src / "image.bin").write_bytes(new)
    before = server.stats()
    r = run_ferry("copy", src, server.url("dst"), "--bwlimit", "8M", "--json").summary
    crossed = server.stats()["wire_in"] - before["wire_in"]
    assert r["filesUpdated"] == 1 and r["filesFailed"] == 0, r
    assert r["bytesMatched"] > 31 * MiB, r
    assert r["bytesTransferred"] < MiB, r
    assert MiB <= crossed < 19 * MiB, crossed  # the probe (1 + 16 MiB at most) and the delta
    assert (server.root / "dst" / "image.bin").read_bytes() == new


def test_the_probe_is_an_upload_the_server_drops(tmp_path: Path, server: Server) -> None:
    from ferry.mover.backends.ferry.backend import FerryBackend
    from ferry.mover.endpoints import FerryEndpoint, parse_endpoint

    ep = parse_endpoint(server.url(""))
    assert isinstance(ep, FerryEndpoint)
    backend = FerryBackend(ep)
    try:
        assert backend.link_rate() is None  # nothing sent yet
        before = server.stats()
        rate = backend.probe_link()
        assert rate is not None and rate > 0
        assert backend.link_rate() is None  # the probe answers; file data measures
        assert server.stats()["wire_in"] - before["wire_in"] >= MiB
        assert list(server.root.iterdir()) == []  # nothing written
    finally:
        backend.close()


def test_file_data_is_timed_and_batches_of_small_files_are_not(
    tmp_path: Path, server: Server
) -> None:
    """A batch's time is the server's work per file, not the link's: only pieces of file
    data (and the probe) tell `--delta auto` how fast the link is."""
    from ferry.mover.backends.base import Entry, EntryType, SmallFile
    from ferry.mover.backends.ferry.backend import FerryBackend
    from ferry.mover.endpoints import FerryEndpoint, parse_endpoint
    from ferry.mover.integrity import digest_bytes
    from ferry.mover.options import Preserve

    ep = parse_endpoint(server.url(""))
    assert isinstance(ep, FerryEndpoint)
    backend = FerryBackend(ep)
    try:
        small = []
        for i in range(100):
            data = os.urandom(30_000)
            entry = Entry(f"s{i}", EntryType.FILE, len(data), 1_600_000_000_000_000_000, 0o644)
            small.append(SmallFile(f"s{i}", entry, data, digest_bytes(data)))
        assert backend.put_small(small, Preserve()) == [None] * 100  # 3 MB in batches
        assert backend.link_rate() is None
        big = os.urandom(2 * MiB)
        entry = Entry("big", EntryType.FILE, len(big), 1_600_000_000_000_000_000, 0o644)
        w = backend.open_write("big", entry)
        w.write_at(0, big[:MiB])
        w.write_at(MiB, big[MiB:])
        w.commit(entry, digest_bytes(big), Preserve())
        rate = backend.link_rate()
        assert rate is not None and rate > 0
        assert (server.root / "big").read_bytes() == big
    finally:
        backend.close()
