"""Property tests: random trees with odd names, sizes around chunk boundaries, links and modes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover.endpoints import LocalEndpoint
from ferry.mover.options import MiB, Mode, Options
from ferry.mover.transfer import run_transfer
from tests.engine.treeutil import assert_same_tree

CHUNK = MiB
SIZES = [
    0,
    1,
    4095,
    256 * 1024 - 1,
    256 * 1024,
    CHUNK - 1,
    CHUNK,
    2 * CHUNK - 1,
    2 * CHUNK,
    2 * CHUNK + 1,
    3 * CHUNK + 5,
]

name_bytes = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=12,
    ).map(lambda t: t.encode()),
    st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b and b"\x00" not in b),
).filter(lambda b: b not in (b".", b"..") and not b.startswith(b".~ferry.") and len(b) < 200)

entry = st.tuples(
    st.lists(name_bytes, min_size=1, max_size=3),  # path components
    st.sampled_from(["file", "file", "file", "link", "dir"]),
    st.sampled_from(SIZES),
    st.sampled_from([0o644, 0o600, 0o755, 0o444]),
)


def build(root: bytes, entries: list[tuple[list[bytes], str, int, int]]) -> None:
    for parts, kind, size, mode in entries:
        path = os.path.join(root, *parts)
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "dir":
                os.mkdir(path)
            elif kind == "link":
                os.symlink(parts[-1] + b".target", path)
            else:
                with open(path, "wb") as f:
                    f.write(
                        os.urandom(size)
                        if size < 64 * 1024
                        else (os.urandom(64 * 1024) * (size // (64 * 1024) + 1))[:size]
                    )
                os.chmod(path, mode)
        except (FileExistsError, NotADirectoryError, FileNotFoundError):
            continue  # a name collided with another entry (or sits under a dangling link): keep going


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.lists(entry, min_size=1, max_size=14),
    second=st.lists(entry, max_size=6),
    drop=st.integers(0, 5),
)
def test_copy_then_sync_yield_identical_trees(first: list, second: list, drop: int) -> None:
    tmp = tempfile.mkdtemp(prefix="ferry-prop-")
    try:
        src, dst = os.path.join(tmp, "src").encode(), os.path.join(tmp, "dst").encode()
        os.mkdir(src)
        build(src, first)
        opts = Options(chunk_size=CHUNK, transfers=3)
        s1 = run_transfer(LocalEndpoint(os.fsdecode(src)), LocalEndpoint(os.fsdecode(dst)), opts)
        assert s1.exit_code == 0, s1.errors
        assert_same_tree(src, dst)
        again = run_transfer(LocalEndpoint(os.fsdecode(src)), LocalEndpoint(os.fsdecode(dst)), opts)
        assert again.bytes_transferred == 0 and again.files_copied == again.files_updated == 0
        # Change the source: add entries, drop some, then sync must mirror it exactly.
        build(src, second)
        victims = sorted(
            p for p in Path(os.fsdecode(src)).rglob("*") if p.is_file() or p.is_symlink()
        )[:drop]
        for v in victims:
            v.unlink()
        if not os.listdir(src):
            return
        sync = Options(chunk_size=CHUNK, transfers=3, mode=Mode.SYNC)
        s2 = run_transfer(LocalEndpoint(os.fsdecode(src)), LocalEndpoint(os.fsdecode(dst)), sync)
        assert s2.exit_code == 0, s2.errors
        assert_same_tree(src, dst)
        again = run_transfer(LocalEndpoint(os.fsdecode(src)), LocalEndpoint(os.fsdecode(dst)), sync)
        assert again.bytes_transferred == 0 and again.files_deleted == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
