"""Big downloads to local disk: straight to the device when the run flushes anyway."""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
from pathlib import Path

import pytest

from ferry.mover.backends import local
from ferry.mover.backends.base import Durability, Entry, EntryType
from ferry.mover.options import Fsync, MiB, Preserve
from tests.backends.helpers import ok, transfer
from tests.strict import unavailable


def cached_bytes(path: Path) -> int:
    """How much of `path` is in the page cache (mincore on a private mapping of it)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        start = ctypes.c_char.from_buffer(mm)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        rc = libc.mincore(ctypes.addressof(start), size, vec)
        del start
        assert rc == 0, os.strerror(ctypes.get_errno())
        return sum(b & 1 for b in vec) * mmap.PAGESIZE
    finally:
        mm.close()


def on_block_fs(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return local._direct_fs(fd)
    finally:
        os.close(fd)


@pytest.mark.servers
@pytest.mark.parametrize("fsync", ["end", "none"])
def test_big_files_skip_the_page_cache_when_the_run_flushes(
    remotes, tmp_path: Path, fsync: str
) -> None:
    """When the run flushes before success, big files go straight to the disk and leave the
    page cache as it was; with --fsync none they stay write-back, as cp's do."""
    if not on_block_fs(tmp_path):
        unavailable("O_DIRECT is used on ext4, XFS and btrfs only; this tmp is elsewhere")
    r = remotes("sftp")
    sub = r.fresh("direct")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    data = os.urandom(local.DIRECT_MIN + 5 * MiB + 7)
    (src / "big.bin").write_bytes(data)
    ok(transfer(str(src), r.uri(sub)))
    ok(transfer(r.uri(sub), str(dst), fsync=Fsync(fsync)))
    cached = cached_bytes(dst / "big.bin")  # before the read below fills the cache
    if fsync == "none":
        assert cached >= len(data) // 2
    else:
        assert cached <= 2 * mmap.PAGESIZE  # the 7-byte tail (SFTP reads are whole blocks)
    assert (dst / "big.bin").read_bytes() == data


def test_direct_writes_of_awkward_pieces(tmp_path: Path) -> None:
    """Pieces of any size at any offset, in any order: blocks they cover whole go direct,
    their unaligned ends through the page cache, and the file holds exactly the bytes."""
    if not on_block_fs(tmp_path):
        unavailable("O_DIRECT is used on ext4, XFS and btrfs only; this tmp is elsewhere")
    be = local.LocalBackend(str(tmp_path), Durability(direct_writes=True))
    size = local.DIRECT_MIN + 3 * 261_120 + 11
    data = os.urandom(size)
    entry = Entry("f.bin", EntryType.FILE, size=size, mtime_ns=1_600_000_000_000_000_000)
    w = be.open_write("f.bin", entry)
    w.set_size(size)
    assert w.dfd >= 0
    pieces, pos = [], 0
    for n in [1, 4095, 4097, 261_120, 3 * 4096, 100] * 400:  # SFTP-sized and odd pieces
        if pos >= size:
            break
        pieces.append((pos, min(n, size - pos)))
        pos += n
    pieces.append((pos, max(0, size - pos)))
    for off, n in reversed(pieces):  # later chunks may land first
        w.write_at(off, memoryview(data)[off : off + n])
    w.commit(entry, None, Preserve())
    assert (tmp_path / "f.bin").read_bytes() == data


@pytest.mark.parametrize("mode", [0, 0o644, 0o600, 0o755])
def test_small_file_modes_set_at_creation_where_they_can_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    """A file without a mode of its own (from S3, say) gets the usual one, and a file whose
    mode is the usual one gets it at creation: no fchmod for either (a syscall, and a GIL
    handoff, per small file). Other modes are set before the file appears."""
    umask = os.umask(0o022)
    os.umask(umask)
    usual = 0o666 & ~umask
    calls: list[int] = []
    fchmod = os.fchmod
    monkeypatch.setattr(os, "fchmod", lambda fd, m: (calls.append(m), fchmod(fd, m)))
    be = local.LocalBackend(str(tmp_path))
    entry = Entry("f", EntryType.FILE, size=3, mtime_ns=1_600_000_000_000_000_000, mode=mode)
    w = be.open_write("f", entry)
    w.write_at(0, b"abc")
    w.commit(entry, None, Preserve())
    assert (tmp_path / "f").read_bytes() == b"abc"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == (mode or usual)
    assert len(calls) == (0 if mode in (0, usual) else 1), calls
