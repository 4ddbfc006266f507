"""The shared wire definitions in-process: path rules, piece decoding bounds, entry and
batch shapes (what both sides trust only after these checks)."""

from __future__ import annotations

import posixpath

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from ferry.mover.backends.base import Entry, EntryType
from ferry.mover.backends.ferry.protocol import (
    MAX_PIECE,
    Codec,
    check_path,
    decode_piece,
    entry_from_json,
    entry_to_json,
    pack_batch,
    unpack_batch,
)
from ferry.mover.errors import ErrorKind, FerryError


@given(st.text(alphabet=st.sampled_from("ab./\\\x00~-"), max_size=30))
def test_an_accepted_path_stays_below_the_root(path: str) -> None:
    try:
        rel = check_path(path)
    except FerryError as err:
        assert err.kind in (ErrorKind.UNSAFE_PATH, ErrorKind.PROTOCOL)
        return
    joined = posixpath.normpath(posixpath.join("/root", rel))
    assert joined == "/root" or joined.startswith("/root/")
    assert "\x00" not in rel and not rel.startswith("/")
    assert all(p not in ("", ".", "..") for p in rel.split("/")) or rel == ""


@pytest.mark.parametrize(
    "path", ["..", "a/..", "/a", "a//b", ".", "a/./b", "x\x00", ".~ferry.a.part", "a" * 256]
)
def test_escaping_paths(path: str) -> None:
    with pytest.raises(FerryError) as info:
        check_path(path)
    assert info.value.kind == ErrorKind.UNSAFE_PATH


def test_names_that_are_not_separators_are_kept() -> None:
    assert check_path("a\\..\\b") == "a\\..\\b"  # one name on POSIX
    assert check_path("dir/...") == "dir/..."
    assert check_path("") == ""


def test_decoding_is_bounded_by_the_declared_length() -> None:
    codec = Codec()
    z = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    assert decode_piece(lambda: codec, z, "zstd", str(1 << 20)) == bytes(1 << 20)
    for raw in ("100", str((1 << 20) + 1), str(MAX_PIECE + 1), "-1", "x", None):
        with pytest.raises(FerryError) as info:
            decode_piece(lambda: codec, z, "zstd", raw)
        assert info.value.kind == ErrorKind.PROTOCOL
    with pytest.raises(FerryError):
        decode_piece(lambda: codec, b"abc", "identity", "2")
    with pytest.raises(FerryError):
        decode_piece(lambda: codec, b"abc", "br", "3")
    assert codec.compress(b"a" * 10_000) is not None


def test_entries_round_trip_and_refuse_nonsense() -> None:
    e = Entry("n", EntryType.SYMLINK, 0, -5, 0o777, 0, 0, 2, 9, 3, 1, target="t", digest=None)
    back = entry_from_json(entry_to_json(e))
    assert (back.name, back.type, back.mtime_ns, back.target, back.nlink) == ("n", 2, -5, "t", 2)
    good = entry_to_json(e)
    for i, bad in ((1, 9), (2, -1), (4, 0o17777), (2, True), (11, "a\x00b"), (12, 5)):
        doc = list(good)
        doc[i] = bad
        with pytest.raises(FerryError):
            entry_from_json(doc)
    with pytest.raises(FerryError):
        entry_from_json(good[:12])


def test_batches_add_up() -> None:
    body = pack_batch({"files": [{"len": 3}, None, {"len": 2}]}, [b"abc", b"de"])
    _, files, rest = unpack_batch(body, "t")
    assert len(files) == 3 and bytes(rest) == b"abcde"
    for bad in (
        pack_batch({"files": [{"len": 4}]}, [b"abc"]),
        pack_batch({"files": [{"len": 2}]}, [b"abc"]),
        pack_batch({"files": "x"}, []),
        b"\x00\x00",
        b"\x7f\xff\xff\xff{}",
    ):
        with pytest.raises(FerryError) as info:
            unpack_batch(bad, "t")
        assert info.value.kind == ErrorKind.PROTOCOL
