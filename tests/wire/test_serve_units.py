"""The server's pieces in-process: the upload table's bound and expiry, and the digest an
upload computes from what it received (whole blocks hashed on arrival, the rest read back)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover.backends.base import Entry, EntryType
from ferry.mover.backends.local import LocalBackend
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import BLOCK_SIZE, digest_bytes
from ferry.serve import uploads as up_mod
from ferry.serve.paths import Root
from ferry.serve.uploads import Upload, Uploads


def _upload(tmp: Path, name: str, size: int, key: str | None = None) -> Upload:
    local = LocalBackend(str(tmp))
    entry = Entry(name, EntryType.FILE, size)
    return Upload(name, local.open_write(name, entry, resume_key=key), size, key is not None)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 3 * BLOCK_SIZE + 100),
    writes=st.lists(
        st.tuples(st.integers(0, 4 * BLOCK_SIZE), st.integers(0, 2 * BLOCK_SIZE)), max_size=6
    ),
)
def test_the_digest_is_of_what_is_on_disk(
    tmp_path: Path, size: int, writes: list[tuple[int, int]]
) -> None:
    """Aligned, unaligned, overlapping and rewritten pieces, any order: the digest at commit
    is always the digest of the file's bytes."""
    up = _upload(tmp_path, "f", size)
    try:
        content = bytearray(size)
        up.writer.set_size(size)
        # first the whole file in block-aligned pieces, then arbitrary rewrites
        for off in range(0, size, BLOCK_SIZE):
            piece = os.urandom(min(BLOCK_SIZE, size - off))
            up.writer.write_at(off, piece)
            up.received(off, piece)
            content[off : off + len(piece)] = piece
        for off, n in writes:
            off, n = min(off, size), min(n, max(0, size - min(off, size)))
            piece = os.urandom(n)
            up.writer.write_at(off, piece)
            up.received(off, piece)
            content[off : off + n] = piece
        assert up.digest() == digest_bytes(bytes(content))
    finally:
        up.writer.abort()


def test_the_table_is_bounded_and_idle_uploads_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up_mod, "MAX_UPLOADS", 3)
    table = Uploads()
    handles = [table.add(_upload(tmp_path, f"f{i}", 10)) for i in range(3)]
    with pytest.raises(FerryError) as info:
        table.add(_upload(tmp_path, "f3", 10))
    assert info.value.kind == ErrorKind.TRANSIENT
    busy = table.take(handles[0])  # in use: never expired under a request
    table.expire(older=-1.0)
    with pytest.raises(FerryError):
        table.take(handles[1])
    table.release(busy)
    assert table.take(handles[0]) is busy
    table.release(busy)
    table.close()
    assert not list(tmp_path.iterdir()), "expired uploads leave no temp files"


def test_an_expired_resumable_upload_keeps_its_partial(tmp_path: Path) -> None:
    table = Uploads()
    up = _upload(tmp_path, "big", 4, key="k1")
    up.writer.done_chunks(BLOCK_SIZE)
    up.writer.write_at(0, b"abcd")
    table.add(up)
    table.expire(older=-1.0)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_root_check_refuses_links_below_root(tmp_path: Path) -> None:
    root = Root(str(tmp_path))
    (tmp_path / "d").mkdir()
    os.symlink("/", tmp_path / "l")
    assert root.check("d/x") == "d/x"
    assert root.check("l") == "l"  # stat, remove and replace never follow it
    for path, follow in (("l/x", False), ("l", True), ("d/../l/x", False)):
        with pytest.raises(FerryError) as info:
            root.check(path, follow_final=follow)
        assert info.value.kind == ErrorKind.UNSAFE_PATH
