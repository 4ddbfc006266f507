"""In-process tests of the engine's core guarantees: the digest, resume journals, filters.

They run in the test process (no `python -m ferry.cli`), so `make mutate` can see which
tests cover which function: each asserts a documented guarantee (docs/cli.md, the module
docstrings), and the mutation run checks that breaking the code breaks a test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from ferry.mover.backends.local import LocalBackend
from ferry.mover.backends.resume.journal import Journal, validate_chunks
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.filters import FilterSet, Rule, rules_from_cli
from ferry.mover.integrity import (
    BLOCK_SIZE,
    ZERO_BLOCK_DIGEST,
    StreamHasher,
    block_digests,
    digest_bytes,
    digest_from_blocks,
    is_digest,
)
from ferry.mover.options import MiB, Mode, Options
from ferry.mover.plan import check_roots
from ferry.mover.transfer import transfer_between

# -- the Ferry digest ---------------------------------------------------------------------


def _reference_digest(data: bytes) -> str:
    """The digest exactly as docs/cli.md and integrity.py define it, written out again."""
    blocks = b"".join(
        blake3(data[i : i + 1024 * 1024]).digest() for i in range(0, len(data), 1024 * 1024)
    )
    return (
        "b3m1:"
        + blake3(b"ferry-digest-v1\0" + len(data).to_bytes(8, "little") + blocks).hexdigest()
    )


# Pinned values: digests are stored and compared across versions (`--checksum`, `verify`),
# so the definition must not drift.
KNOWN = {
    b"": "b3m1:425843456cedc3a4ea75c938efd70cb0f7aeb0ccfc17ee2e01bc5747652ed13d",
    b"abc": "b3m1:6c9c3945296d87891232135b2375b2e1da1a138f4b4b62f7da4c1fd8efc62d7e",
    bytes(BLOCK_SIZE)
    + b"x": "b3m1:072f94258b304aeda3862c5710fa056709a8393344ab7f923eb0ee52d781ad9e",
}


@pytest.mark.parametrize(
    "size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE + 7]
)
def test_digest_matches_its_definition(size: int) -> None:
    data = os.urandom(size)
    want = _reference_digest(data)
    assert digest_bytes(data) == want
    h = StreamHasher()
    h.update(data)
    assert h.size == size
    assert h.hexdigest() == want
    assert h.block_digests() == block_digests(data)
    assert len(block_digests(data)) == 32 * -(-size // BLOCK_SIZE)
    # Block digests given one by one (an iterable) or joined give the same value.
    blocks = block_digests(data)
    assert digest_from_blocks(size, [blocks[i : i + 32] for i in range(0, len(blocks), 32)]) == want
    assert digest_from_blocks(size, iter([blocks])) == want
    assert is_digest(want)


def test_digest_is_pinned() -> None:
    for data, want in KNOWN.items():
        assert digest_bytes(data) == want == _reference_digest(data)


@pytest.mark.parametrize(
    ("lead", "zeros"),
    [
        (0, 0),
        (0, 1),
        (0, BLOCK_SIZE),
        (0, 2 * BLOCK_SIZE + 3),
        (5, BLOCK_SIZE),
        (5, 3 * BLOCK_SIZE),
        (BLOCK_SIZE, BLOCK_SIZE - 1),
        (BLOCK_SIZE, 2 * BLOCK_SIZE),  # whole zero blocks after whole data blocks
    ],
)
def test_holes_hash_as_zeros(lead: int, zeros: int) -> None:
    """A sparse file's holes are fed as a count, not bytes: the digest must not change."""
    head = os.urandom(lead)
    h = StreamHasher()
    h.update(head)
    h.update_zeros(zeros)
    h.update(b"tail")
    data = head + bytes(zeros) + b"tail"
    assert h.size == len(data)
    assert h.hexdigest() == _reference_digest(data)
    assert blake3(bytes(BLOCK_SIZE)).digest() == ZERO_BLOCK_DIGEST


@pytest.mark.parametrize(
    "text",
    [None, "", "b3m1:", "b3m1:" + "0" * 63, "b3m1:" + "0" * 65, "b3m2:" + "0" * 64, "0" * 69],
)
def test_is_digest_refuses_what_is_not_one(text: str | None) -> None:
    assert not is_digest(text)


# -- resume journals -------------------------------------------------------------------------


def _journal(tmp_path: Path, key: str = "v1:k") -> Journal:
    return Journal(str(tmp_path / "j"), key)


def test_journal_round_trip(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    assert j.load() == {}  # no journal yet: nothing to resume
    j.start({2: b"\x02" * 32, 0: b"\x00" * 64})
    j.record(5, b"\x05" * 32)
    j.record(1, b"")
    j.close()
    j.close()  # idempotent
    lines = (tmp_path / "j").read_bytes().split(b"\n")
    assert json.loads(lines[0]) == {"v": 1, "key": "v1:k"}
    assert lines[1:3] == [b"0 " + b"00" * 64, b"2 " + b"02" * 32]  # sorted
    assert not (tmp_path / "j.new").exists()
    again = _journal(tmp_path)
    assert again.load() == {0: b"\x00" * 64, 2: b"\x02" * 32, 5: b"\x05" * 32, 1: b""}


def test_journal_start_keeps_only_what_survived(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.start({0: b"a" * 32, 1: b"b" * 32})
    j.close()
    j = _journal(tmp_path)
    assert set(j.load()) == {0, 1}
    j.start({1: b"b" * 32})  # chunk 0 failed validation
    j.record(3, b"c" * 32)
    j.close()
    assert _journal(tmp_path).load() == {1: b"b" * 32, 3: b"c" * 32}


def test_journal_for_another_source_version_is_discarded(tmp_path: Path) -> None:
    j = _journal(tmp_path, "v1:old")
    j.start({0: b"a" * 32})
    j.close()
    assert _journal(tmp_path, "v1:new").load() == {}
    assert _journal(tmp_path, "v1:old").load() == {0: b"a" * 32}


@pytest.mark.parametrize(
    "header", [b"", b"{not json", b"[]", b"null", b"1", b'"v1:k"', b'{"v": 1}']
)
def test_journal_with_a_bad_header_is_discarded(tmp_path: Path, header: bytes) -> None:
    """A journal is state on the destination: a damaged one means "start over", not a crash."""
    (tmp_path / "j").write_bytes(header + b"\n0 " + b"ab" * 32 + b"\n")
    assert _journal(tmp_path).load() == {}


def test_journal_torn_and_damaged_lines_are_ignored(tmp_path: Path) -> None:
    good = b"cd" * 32
    body = b"\n".join(
        [
            json.dumps({"v": 1, "key": "v1:k"}).encode(),
            b"0 " + good,
            b"x " + good,  # not an index
            b"1 zz",  # not hex
            b"2 " + good,
            b"3 " + good[:9],  # torn mid-line by a kill
        ]
    )
    (tmp_path / "j").write_bytes(body)
    assert _journal(tmp_path).load() == {
        0: bytes.fromhex(good.decode()),
        2: bytes.fromhex(good.decode()),
    }


def test_journal_remove_leaves_nothing(tmp_path: Path) -> None:
    fresh = _journal(tmp_path)
    fresh.close()  # never started: nothing to close
    fresh.remove()
    with pytest.raises(OSError):
        fresh.record(0, b"")  # never started: no file to write to
    broken = _journal(tmp_path)
    with pytest.raises(AttributeError):
        broken.start({0: "not bytes"})  # type: ignore[dict-item]  # killed mid-rewrite
    assert (tmp_path / "j.new").exists()
    broken.remove()
    assert list(tmp_path.iterdir()) == []
    j = _journal(tmp_path)
    j.start({0: b"a" * 32})
    (tmp_path / "j.new").write_bytes(b"left by a kill")
    j.remove()
    assert list(tmp_path.iterdir()) == []
    j.remove()  # nothing there: still fine
    with pytest.raises(OSError):
        j.record(1, b"")  # closed by remove


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        assert offset >= 0 and length > 0, (offset, length)
        return data[offset : offset + length]

    return read_at


def test_validate_chunks_rehashes_and_drops_bad_chunks() -> None:
    chunk = 2 * BLOCK_SIZE
    data = bytearray(os.urandom(3 * chunk + 100))  # the last chunk is short
    digests = {i: block_digests(bytes(data[i * chunk : (i + 1) * chunk])) for i in range(4)}
    # Damaged lines first: one bad entry must not stop the check of the others.
    recorded = {-1: digests[0], 7: b"", **digests}  # no such chunk; beyond the partial's end
    data[chunk + 5] ^= 0xFF  # chunk 1 changed on disk after it was journaled
    good = validate_chunks(recorded, chunk, len(data), _reader(bytes(data)))
    assert good == {0: digests[0], 2: digests[2], 3: digests[3]}


def test_validate_chunks_drops_short_reads_and_empty_tails() -> None:
    chunk = BLOCK_SIZE
    data = os.urandom(2 * chunk)
    recorded = {0: block_digests(data[:chunk]), 1: block_digests(data[chunk:]), 2: b""}
    # The partial is shorter than its size claims: chunk 1 cannot be read whole.
    good = validate_chunks(recorded, chunk, 2 * chunk, _reader(data[: chunk + 10]))
    assert good == {0: recorded[0]}
    # A chunk starting exactly at the end holds no bytes: it is not "done", even if its
    # recorded digests (none) match the empty read.
    assert validate_chunks({2: b""}, chunk, 2 * chunk, lambda o, n: b"") == {}
    # A last chunk of one byte is a chunk like any other.
    one = data[: chunk + 1]
    tail = {1: block_digests(one[chunk:])}
    assert validate_chunks(tail, chunk, chunk + 1, _reader(one)) == tail


def test_resume_keeps_good_chunks_and_recopies_the_rest(tmp_path: Path) -> None:
    """End to end in-process: a partial and its journal are resumed; a chunk whose bytes
    changed is copied again; a journal for another source version is not trusted."""
    chunk = 2 * MiB
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    payload = os.urandom(4 * chunk + 123)
    (src / "f.bin").write_bytes(payload)
    st = os.stat(src / "f.bin")
    key = f"v1:{st.st_size}:{st.st_mtime_ns}:{chunk}:inline"
    opts = Options(chunk_size=chunk)

    def plant(key: str) -> None:
        part = bytearray(payload[: 3 * chunk])
        part[chunk + 1] ^= 0xFF  # chunk 1 rotted
        (dst / ".~ferry.f.bin.part").write_bytes(bytes(part))
        j = Journal(str(dst / ".~ferry.f.bin.journal"), key)
        j.start({i: block_digests(payload[i * chunk : (i + 1) * chunk]) for i in range(3)})
        j.close()
        with open(dst / ".~ferry.f.bin.journal", "ab") as f:
            f.write(b"3 0a")  # torn line

    plant(key)
    s = transfer_between(lambda: (LocalBackend(str(src)), LocalBackend(str(dst))), opts)
    assert s.exit_code == 0, s.errors
    assert s.bytes_resumed == 2 * chunk  # chunks 0 and 2
    assert s.bytes_transferred == len(payload) - 2 * chunk
    assert (dst / "f.bin").read_bytes() == payload
    assert sorted(p.name for p in dst.iterdir()) == ["f.bin"]

    (dst / "f.bin").unlink()
    plant(key.replace(str(st.st_mtime_ns), str(st.st_mtime_ns + 1)))  # another version
    s = transfer_between(lambda: (LocalBackend(str(src)), LocalBackend(str(dst))), opts)
    assert s.exit_code == 0, s.errors
    assert s.bytes_resumed == 0
    assert (dst / "f.bin").read_bytes() == payload
    assert sorted(p.name for p in dst.iterdir()) == ["f.bin"]


# -- filters -------------------------------------------------------------------------------


def _f(*lines: str) -> FilterSet:
    return FilterSet.parse(list(lines))


def test_filter_first_match_wins() -> None:
    assert not _f("- a.txt", "+ a.txt").include_file("a.txt")
    assert _f("+ a.txt", "- a.txt").include_file("a.txt")
    assert not _f("- *", "+ *.py").include_file("x.py")


def test_filter_default_depends_on_includes() -> None:
    assert _f().include_file("x") and not _f()
    assert _f("- *.tmp").include_file("x")  # only excludes: the rest is in
    assert not _f("+ *.py").include_file("x")  # includes: implicit "- **" at the end
    assert _f("+ *.py").include_file("x.py")
    assert bool(_f("- x"))


def test_filter_anchoring() -> None:
    anchored = _f("- /a.txt")
    assert not anchored.include_file("a.txt")
    assert anchored.include_file("d/a.txt")
    floating = _f("- a.txt")
    assert not floating.include_file("a.txt") and not floating.include_file("d/e/a.txt")
    assert floating.include_file("xa.txt") and floating.include_file("a.txt.bak")


def test_filter_wildcards() -> None:
    star = _f("- /*.py")
    assert not star.include_file("x.py") and star.include_file("d/x.py")  # `*`: one segment
    deep = _f("- /d/**.py")
    assert not deep.include_file("d/e/f/x.py") and deep.include_file("e/x.py")
    q = _f("- /?.c")
    assert not q.include_file("a.c") and q.include_file("ab.c") and q.include_file("/.c")
    cls = _f("- /[ab].c", "- /[!xy].h", "- /[^xy].o")
    assert not cls.include_file("a.c") and cls.include_file("c.c")
    assert not cls.include_file("z.h") and cls.include_file("x.h")
    assert not cls.include_file("z.o") and cls.include_file("y.o")
    alt = _f("- /{a,bc}.txt")
    assert not alt.include_file("a.txt") and not alt.include_file("bc.txt")
    assert alt.include_file("b.txt") and alt.include_file("{a,bc}.txt")
    literal = _f("- /a,b}.txt", "- /x\\*y", "- /p.q")
    assert not literal.include_file("a,b}.txt")
    assert not literal.include_file("x*y") and literal.include_file("xzy")
    assert literal.include_file("pxq")  # `.` is not a regex wildcard


@pytest.mark.parametrize(
    ("rule", "excluded", "kept"),
    [
        ("/**.py", ["x.py", "d/e/x.py"], ["xpy", "x.pyc"]),
        ("/]x[ab]", ["]xa"], ["]xc", "xa"]),
        ("/[ab]*[cd]", ["axyc", "bd"], ["c", "xc"]),
        ("/[a]", ["a"], ["b", "[a]"]),
        ("/[!a]", ["b"], ["a"]),
        ("/x[!]a]", ["xb"], ["x]", "xa"]),
        ("/[]ab]", ["]", "a"], ["c"]),  # `]` first in a class is a member
        ("/[!]a]", ["b", "c"], ["]", "a"]),
        ("/[^]a]", ["b"], ["]", "a"]),
        ("/[\\a]", ["\\", "a"], ["b", "X"]),  # a backslash in a class is a member
        ("/{a,{b,c}}.x", ["a.x", "b.x", "c.x"], ["{b,c}.x", "d.x"]),
        ("/a\\", ["a\\"], ["a"]),  # a trailing backslash is itself
        ("/x\\*", ["x*"], ["xy"]),
        ("/Xa", ["Xa"], ["a"]),
    ],
)
def test_filter_pattern_syntax(rule: str, excluded: list[str], kept: list[str]) -> None:
    f = _f("- " + rule)
    assert [p for p in excluded if f.include_file(p)] == []
    assert [p for p in kept if not f.include_file(p)] == []


def test_filter_names_with_newlines() -> None:
    """File names may hold any byte but `/` and NUL; a newline must not escape a rule."""
    f = _f("- secret", "- /top/**")
    assert not f.include_file("a\nb/secret")
    assert not f.include_file("top/x\ny")
    assert not _f("- *.tmp").include_file("x\ny.tmp")


def test_filter_directory_rules() -> None:
    dir_only = _f("- tmp/")
    assert dir_only.include_file("tmp")  # a file named tmp is not a directory
    assert not dir_only.include_dir("tmp") and not dir_only.include_dir("a/tmp")
    assert dir_only.include_dir("tmpx")
    tree = _f("- /cache/**")
    assert not tree.include_dir("cache") and not tree.include_file("cache/x/y")
    assert tree.include_dir("cacheX") and tree.include_dir("d/cache")
    everything = _f("- /**")  # not a directory rule: files excluded, descent still allowed
    assert everything.include_dir("x") and not everything.include_file("x")
    # An include rule for files may match below any directory: it stops the search.
    assert _f("+ *.py", "- build/").include_dir("build")
    assert not _f("- build/", "+ *.py").include_dir("build")
    assert _f("+ keep/", "- *").include_dir("keep")
    assert not _f("- /aX//").include_dir("aX")
    short = _f("- a/**")  # the shortest directory tree rule
    assert not short.include_dir("a") and not short.include_file("a/b")
    assert short.include_dir("ab") and short.include_file("ab/c")


def test_filter_rules_from_cli_order() -> None:
    rules = rules_from_cli(["*.py"], ["*.tmp"], ["+ a", "- b"])
    assert rules == ("- *.tmp", "+ *.py", "+ a", "- b")
    assert not FilterSet.parse(list(rules_from_cli(["*"], ["x"], []))).include_file("x")


def test_filter_comments_and_blank_lines() -> None:
    f = _f("", "   ", "# - x", "  ; - y", "- z")
    assert [r.pattern for r in f.rules] == ["z"]
    assert Rule.parse("  +   a b  ").pattern == "a b" and Rule.parse("+ a").include


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("+a", "expected '+ pattern'"),
        ("*  a", "expected '+ pattern'"),
        ("+ ", "expected '+ pattern'"),
        ("X a", "expected '+ pattern'"),
        ("+ [a/**", "unclosed '['"),
        ("+ [!]", "unclosed '['"),
        ("+ [ab", "unclosed '['"),
        ("+ {a", "unclosed '{'"),
        ("+ []", "unclosed '['"),
        ("- [z-a]", "filter rule"),
    ],
)
def test_bad_filter_rule_is_named(line: str, fragment: str) -> None:
    with pytest.raises(FerryError) as exc:
        FilterSet.parse([line])
    assert exc.value.kind == ErrorKind.USAGE
    assert fragment in str(exc.value) and repr(line) in str(exc.value)


# -- roots -----------------------------------------------------------------------------------


def _check(src: Path, dst: Path, mode: Mode = Mode.COPY) -> bool:
    return check_roots(LocalBackend(str(src)), LocalBackend(str(dst)), Options(mode=mode), "copy")


@pytest.mark.parametrize(
    ("src", "dst", "mode", "kind", "fragment", "named"),
    [
        (
            "missing",
            "out",
            Mode.COPY,
            ErrorKind.SOURCE_NOT_FOUND,
            "source does not exist",
            "missing",
        ),
        ("file", "out", Mode.COPY, ErrorKind.USAGE, "(give it as an endpoint instead)", "file"),
        ("tree", "tree", Mode.COPY, ErrorKind.OVERLAP, "the same directory", "tree"),
        ("tree", "tree/sub", Mode.COPY, ErrorKind.OVERLAP, "inside the source", "tree/sub"),
        ("tree", "tree/sub", Mode.SYNC, ErrorKind.OVERLAP, "inside the source", "tree/sub"),
        ("tree/sub", "tree", Mode.SYNC, ErrorKind.OVERLAP, "delete around it", "tree/sub"),
        ("tree", "file", Mode.COPY, ErrorKind.USAGE, "exists and is not a directory", "file"),
    ],
)
def test_roots_refused_before_anything_is_written(
    tmp_path: Path, src: str, dst: str, mode: Mode, kind: ErrorKind, fragment: str, named: str
) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a").write_bytes(b"a")
    (tmp_path / "file").write_bytes(b"f")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(FerryError) as exc:
        _check(tmp_path / src, tmp_path / dst, mode)
    assert exc.value.kind == kind and exc.value.args[0].endswith(fragment)
    assert exc.value.path == str(tmp_path / named)  # the root at fault is named
    s = transfer_between(
        lambda: (LocalBackend(str(tmp_path / src)), LocalBackend(str(tmp_path / dst))),
        Options(mode=mode),
    )
    assert s.fatal is not None and s.fatal.kind == kind
    assert s.exit_code == kind.exit_code
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_roots_allowed(tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert _check(tmp_path / "tree" / "sub", tmp_path / "tree")  # copy up into the parent
    assert _check(tmp_path / "tree", tmp_path / "other", Mode.SYNC)
    assert not _check(tmp_path / "tree", tmp_path / "new")  # the destination does not exist yet


class UnknownRoot(LocalBackend):
    """A backend that cannot say which namespace its root is in (root_id None)."""

    def root_id(self) -> None:  # type: ignore[override]
        return None


def test_roots_that_cannot_be_known_are_not_guessed(tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    tree, sub = str(tmp_path / "tree"), str(tmp_path / "tree" / "sub")
    opts = Options()
    assert check_roots(UnknownRoot(tree), LocalBackend(sub), opts, "copy")
    assert check_roots(LocalBackend(tree), UnknownRoot(sub), opts, "copy")
