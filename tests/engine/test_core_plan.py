"""In-process tests of the planner (ferry/mover/plan.py): what is copied, updated, skipped,
fixed in place, linked, replaced and deleted, decided from two listings.

The trees are in memory (tests/engine/memtree.py), so each case states exactly the
entries it is about and runs in milliseconds; `make mutate` runs these against single-line
changes of the planner (docs/design.md).
"""

from __future__ import annotations

import logging

import pytest

from ferry.mover.backends.base import Entry, EntryType, Holds
from ferry.mover.errors import ErrorKind
from ferry.mover.options import Compare, Mode, Options, Preserve, SymlinkPolicy
from ferry.mover.plan import Action, Op, Planner
from ferry.mover.scan import PairLister
from ferry.mover.shard import Sharder
from tests.engine.memtree import LOCAL, PLAIN, SECOND, D, F, L, T, Tree


def walk(
    src: Tree,
    dst: Tree,
    skipped: list[tuple[int, int]] | None = None,
    dst_exists: bool = True,
    **opts: object,
) -> tuple[list[Action], Planner]:
    options = Options(**opts)  # type: ignore[arg-type]
    # An existing destination is the default.
    planner = Planner(src, dst, options) if dst_exists else Planner(src, dst, options, False)
    if skipped is not None:
        planner.on_skipped = lambda files, nbytes: skipped.append((files, nbytes))
    lister = PairLister(src, dst)
    try:
        actions = list(planner.walk(lister))
    finally:
        lister.close()
    for a in actions:
        check_entries(a, src, dst if dst_exists else Tree({}))
    return actions, planner


def check_entries(a: Action, src: Tree, dst: Tree) -> None:
    """Every action carries the entries the executor needs: the source entry (a followed
    link's is what it points at), the destination's where there is one and it matters."""
    name = a.rel.rpartition("/")[2]
    if a.op == Op.ERROR:
        assert a.src is None and a.dst is None and a.error is not None, a
        return
    if a.op == Op.DELETE:
        assert a.src is None and a.dst is not None and a.dst.name == name, a
        assert a.dst.type == dst.entries[a.rel].type, a
        return
    assert a.src is not None and a.src.name == name, a
    real = a.rel
    for link, target in src.follow.items():  # what --links follow reads it as
        if (a.src.type != EntryType.SYMLINK and real == link) or real.startswith(link + "/"):
            real = target + real[len(link) :]
    want = src.entries[real]
    assert (a.src.type, a.src.size) == (want.type, want.size), a
    there = dst.entries.get(a.rel) if a.op not in (Op.COPY, Op.MKDIR) else None
    assert (a.dst.type if a.dst else None) == (there.type if there else None), a
    assert (a.dst.name if a.dst else name) == name, a
    assert (a.link_to is not None) == (a.op == Op.HARDLINK) and a.error is None, a


def ops(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.op.name, a.rel) for a in actions]


# -- what each entry becomes ---------------------------------------------------------------

SRC = {
    "a_new": F(),
    "b_same": F(size=10),
    "b_same2": F(size=3),
    "c_size": F(size=11),
    "d_newer": F(mtime=T + 1),
    "e_older": F(mtime=T - 1),
    "f_mode": F(mode=0o600),
    "g_dir": D(),
    "g_dir/x": F(size=7),
    "h_newdir": D(),
    "h_newdir/y": F(),
    "i_file_for_dir": F(),
    "j_dir_for_file": D(),
    "j_dir_for_file/z": F(),
    "k_link": L("a_new"),
    "l_samelink": L("x"),
    "m_otherlink": L("y"),
    "n_link_for_dir": L("x"),
    "o_file_for_link": F(),
    "p_fifo": Entry("", EntryType.OTHER, 0, T, 0o644),
}
DST = {
    "b_same": F(size=10),
    "b_same2": F(size=3),
    "c_size": F(),
    "d_newer": F(),
    "e_older": F(),
    "f_mode": F(),
    "g_dir": D(),
    "g_dir/x": F(size=7),
    "g_dir/old": F(),
    "i_file_for_dir": D(),
    "j_dir_for_file": F(),
    "l_samelink": L("x"),
    "m_otherlink": L("x"),
    "n_link_for_dir": D(),
    "o_file_for_link": L("x"),
    "p_fifo": F(),
    "q_extra": F(),
    "r_extradir": D(),
    "r_extradir/in": F(),
}
ROOT = [
    ("COPY", "a_new"),
    ("UPDATE", "c_size"),  # size differs
    ("UPDATE", "d_newer"),  # 1 ns newer
    ("UPDATE", "e_older"),  # 1 ns older
    ("META", "f_mode"),  # same content, other mode: fixed in place
    ("SKIP", "g_dir"),  # a directory on both sides: walked into
    ("MKDIR", "h_newdir"),
    ("REPLACE", "i_file_for_dir"),  # a file where the destination has a directory
    ("REPLACE", "j_dir_for_file"),  # a directory where it has a file: removed, then made
    ("MKDIR", "j_dir_for_file"),
    ("SYMLINK", "k_link"),
    ("SKIP", "l_samelink"),  # same target
    ("SYMLINK", "m_otherlink"),  # other target: made again
    ("REPLACE", "n_link_for_dir"),
    ("UPDATE", "o_file_for_link"),  # a file where the destination has a link
    # p_fifo: neither a file, a directory nor a link: nothing
]
BELOW = [
    # g_dir/x is unchanged; h_newdir and j_dir_for_file are new at the destination, which
    # is not listed there (the test's destination would fail to list them).
    ("COPY", "h_newdir/y"),
    ("COPY", "j_dir_for_file/z"),
]


def test_plan_decides_each_entry(caplog: pytest.LogCaptureFixture) -> None:
    skipped: list[tuple[int, int]] = []
    with caplog.at_level(logging.WARNING, logger="ferry"):
        actions, planner = walk(Tree(SRC), Tree(DST), skipped)
    assert ops(actions) == ROOT + BELOW
    assert [r.getMessage() for r in caplog.records] == [
        "p_fifo: not a regular file, directory or symlink; skipped"
    ]
    # Unchanged files are counted, per directory, without an action each.
    assert skipped == [(2, 13), (1, 7)]
    assert (planner.skipped_files, planner.skipped_bytes) == (3, 20)
    by = {(a.op.name, a.rel): a for a in actions}
    assert by["COPY", "a_new"].dst is None and by["COPY", "a_new"].src is not None
    assert by["UPDATE", "c_size"].src.size == 11  # type: ignore[union-attr]
    assert by["UPDATE", "c_size"].dst.size == 10  # type: ignore[union-attr]
    assert by["MKDIR", "j_dir_for_file"].dst is None
    assert by["REPLACE", "j_dir_for_file"].dst.type == EntryType.FILE  # type: ignore[union-attr]
    assert all(a.read_rel is None and a.link_to is None and a.error is None for a in actions)
    # Without anyone to tell (no on_skipped), the counts are still kept.
    actions, planner = walk(Tree(SRC), Tree(DST))
    assert ops(actions) == ROOT + BELOW and planner.skipped_files == 3


def test_plan_without_the_fast_path_decides_the_same() -> None:
    """With filters (or a manifest) every entry gets an action: unchanged files a SKIP."""
    skipped: list[tuple[int, int]] = []
    for opts in ({"filters": ("- nothing-is-called-this",)}, {"manifest": "/nonexistent/m"}):
        actions, planner = walk(Tree(SRC), Tree(DST), skipped, **opts)
        want = list(ROOT)
        want[1:1] = [("SKIP", "b_same"), ("SKIP", "b_same2")]
        assert ops(actions) == [*want, ("SKIP", "g_dir/x"), *BELOW]
        assert planner.skipped_files == 0 and skipped == []


def test_sync_deletes_what_the_source_lacks_after_each_directory() -> None:
    actions, _ = walk(Tree(SRC), Tree(DST), mode=Mode.SYNC)
    deletes = [("DELETE", "q_extra"), ("DELETE", "r_extradir")]  # sorted, whole directories
    assert ops(actions) == [
        *ROOT,
        *deletes,
        ("DELETE", "g_dir/old"),
        *BELOW,
    ]
    assert [a.dst.type for a in actions if a.op == Op.DELETE] == [  # type: ignore[union-attr]
        EntryType.FILE,
        EntryType.DIR,
        EntryType.FILE,
    ]
    # A copy deletes nothing.
    assert Op.DELETE not in {a.op for a in walk(Tree(SRC), Tree(DST))[0]}


def test_a_new_destination_is_not_listed() -> None:
    """Before the destination exists (dst_exists False) nothing is compared: all is new."""
    src = {"a": F(), "d": D(), "d/b": F()}
    actions, _ = walk(Tree(src), Tree({}, unlistable=("",)), dst_exists=False)
    assert ops(actions) == [("COPY", "a"), ("MKDIR", "d"), ("COPY", "d/b")]
    actions, _ = walk(Tree(src), Tree(dict(src)))
    assert ops(actions) == [("SKIP", "d")]


# -- modification times --------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("coarse", ["src", "dst"])
def test_mtime_tolerance_is_the_coarser_sides_precision(fast: bool, coarse: str) -> None:
    """A side that keeps times to 2 s (FAT, some SMB servers) makes differences under 2 s
    "the same time"; 2 s or more is a change (either way round)."""
    two = LOCAL._replace(mtime_precision_ns=2 * SECOND)
    src_caps, dst_caps = (two, LOCAL) if coarse == "src" else (LOCAL, two)
    src = {"a": F(), "b": F(), "c": F(), "d": F(), "e": F()}
    dst = {
        "a": F(mtime=T + 2 * SECOND - 1),
        "b": F(mtime=T - 2 * SECOND + 1),
        "c": F(mtime=T + 2 * SECOND),
        "d": F(mtime=T - 2 * SECOND),
        "e": F(),
    }
    opts = {} if fast else {"filters": ("- nothing-is-called-this",)}
    actions, _ = walk(Tree(src, src_caps), Tree(dst, dst_caps), **opts)
    skips = [] if fast else [("SKIP", "a"), ("SKIP", "b")]
    tail = [] if fast else [("SKIP", "e")]
    assert ops(actions) == [*skips, ("UPDATE", "c"), ("UPDATE", "d"), *tail]


def test_mtime_without_precision_still_counts_a_nanosecond() -> None:
    zero = LOCAL._replace(mtime_precision_ns=0)
    actions, planner = walk(Tree({"a": F()}, zero), Tree({"a": F(mtime=T + 1)}, zero))
    assert planner.window_ns == 1
    assert ops(actions) == [("UPDATE", "a")]


def test_times_not_preserved_are_not_compared() -> None:
    src = {"a": F(), "b": F(size=3)}
    dst = {"a": F(mtime=T + 5 * SECOND), "b": F(size=4, mtime=T + 5 * SECOND)}
    actions, _ = walk(Tree(src), Tree(dst), preserve=Preserve(times=False))
    assert ops(actions) == [("SKIP", "a"), ("UPDATE", "b")]


# -- --checksum ----------------------------------------------------------------------------

D1, D2 = "b3m1:" + "1" * 64, "b3m1:" + "2" * 64


def test_checksum_compares_digests_not_times() -> None:
    """`--checksum`: a file changed when its digest differs. Same size and time with another
    digest is an update; same digest with another time is a metadata fix; a digest that is
    not known yet is compared by reading (CHECK)."""
    src = {
        "a_same": F(digest=D1),
        "b_touched": F(digest=D1),
        "c_mode": F(digest=D1, mode=0o600),
        "d_other": F(digest=D1),
        "e_src_unknown": F(),
        "f_dst_unknown": F(digest=D1),
        "g_size": F(size=11, digest=D1),
        "h_new": F(digest=D1),
    }
    dst = {
        "a_same": F(digest=D1),
        "b_touched": F(digest=D1, mtime=T + SECOND),
        "c_mode": F(digest=D1),
        "d_other": F(digest=D2),
        "e_src_unknown": F(digest=D1),
        "f_dst_unknown": F(),
        "g_size": F(digest=D1),
    }
    actions, planner = walk(Tree(src), Tree(dst), compare=Compare.CHECKSUM)
    assert ops(actions) == [
        ("SKIP", "a_same"),
        ("META", "b_touched"),
        ("META", "c_mode"),
        ("UPDATE", "d_other"),
        ("CHECK", "e_src_unknown"),
        ("CHECK", "f_dst_unknown"),
        ("UPDATE", "g_size"),
        ("COPY", "h_new"),
    ]
    assert planner.skipped_files == 0
    # Within the tolerance, or with times not kept, another time is no difference.
    actions, _ = walk(
        Tree(src), Tree(dst), compare=Compare.CHECKSUM, preserve=Preserve(times=False)
    )
    assert ("SKIP", "b_touched") in ops(actions)


# -- metadata ------------------------------------------------------------------------------


DEFAULT, OWNERS = Preserve(), Preserve(owners=True)


def _meta(
    s: Entry,
    d: Entry,
    preserve: Preserve = DEFAULT,
    dst_caps: Holds = LOCAL,
    src_caps: Holds = LOCAL,
) -> bool:
    planner = Planner(Tree({}, src_caps), Tree({}, dst_caps), Options(preserve=preserve))
    return planner.meta_differs(s, d)


def test_meta_differs_by_mode() -> None:
    assert _meta(F(mode=0o600), F(mode=0o644))
    assert not _meta(F(mode=0o644), F(mode=0o644))
    assert not _meta(F(mode=0o600), F(mode=0o644), Preserve(perms=False))
    assert not _meta(F(mode=0o600), F(mode=0o644), dst_caps=LOCAL._replace(permissions=False))
    assert not _meta(F(mode=0), F(mode=0o644))  # a source without modes
    assert not _meta(L("x"), Entry("", EntryType.SYMLINK, 0, T, 0o755, 1000, 1000, target="x"))


def test_meta_differs_by_time() -> None:
    assert _meta(F(mtime=T + 1), F())
    assert _meta(F(mtime=T - 1), F())
    assert not _meta(F(mtime=T + 1), F(), Preserve(times=False))
    coarse = LOCAL._replace(mtime_precision_ns=SECOND)
    assert not _meta(F(mtime=T + SECOND - 1), F(), dst_caps=coarse)
    assert _meta(F(mtime=T + SECOND), F(), dst_caps=coarse)


def test_meta_differs_by_owner() -> None:
    assert _meta(F(uid=1), F(uid=2), OWNERS)
    assert _meta(F(gid=1), F(gid=2), OWNERS)
    assert _meta(F(uid=0, gid=0), F(uid=1000, gid=0), OWNERS)  # root is an owner like any
    assert not _meta(F(uid=1), F(uid=1), OWNERS)
    assert not _meta(F(uid=1), F(uid=2))  # owners not asked for
    assert not _meta(F(uid=1), F(uid=2), OWNERS, dst_caps=LOCAL._replace(owners=False))
    assert not _meta(F(uid=-1, gid=-1), F(uid=2), OWNERS)  # a source without owners


def _with_xattrs(s: dict[str, bytes] | None, d: dict[str, bytes] | None) -> tuple[Entry, Entry]:
    a, b = F(), F()
    a.xattrs, b.xattrs = s, d
    return a, b


def test_meta_differs_by_xattrs() -> None:
    x = Preserve(xattrs=True)
    assert _meta(*_with_xattrs({"user.a": b"1"}, {"user.a": b"2"}), x)
    assert _meta(*_with_xattrs({"user.a": b"1"}, {}), x)
    assert not _meta(*_with_xattrs({"user.a": b"1"}, {"user.a": b"1"}), x)
    assert not _meta(*_with_xattrs(None, {"user.a": b"1"}), x)  # not read
    assert not _meta(*_with_xattrs({"user.a": b"1"}, None), x)
    assert not _meta(*_with_xattrs({"user.a": b"1"}, {}), x, src_caps=PLAIN)
    assert not _meta(*_with_xattrs({"user.a": b"1"}, {}), x, dst_caps=PLAIN)
    assert not _meta(*_with_xattrs({"user.a": b"1"}, {}))  # not asked for


def test_changed_owners_are_fixed_in_place() -> None:
    src = {"u": F(uid=1), "g": F(gid=1), "same": F()}
    dst = {"u": F(uid=2), "g": F(gid=2), "same": F()}
    actions, planner = walk(Tree(src), Tree(dst), preserve=OWNERS)
    assert ops(actions) == [("META", "g"), ("META", "u")]
    assert planner.skipped_files == 1
    actions, _ = walk(Tree(src), Tree(dst))  # owners not kept: nothing to do
    assert ops(actions) == []


def test_xattrs_are_read_where_they_are_compared() -> None:
    """Preserved xattrs: read on both sides for entries on both sides, from the source for a
    new directory (a new file's travel with its data); a changed one is a metadata update."""
    src = {"f": F(), "same": F(), "new": F(), "d": D(), "nd": D(), "ln": L("f")}
    dst = {"f": F(), "same": F(), "d": D(), "ln": L("f")}
    sx = {"f": {"user.a": b"1"}, "same": {"user.a": b"1"}, "d": {"user.d": b"1"}}
    sx["nd"] = {"user.n": b"1"}
    dx = {"f": {"user.a": b"2"}, "same": {"user.a": b"1"}, "d": {"user.d": b"2"}}
    s, d = Tree(src, xattrs=sx), Tree(dst, xattrs=dx)
    actions, planner = walk(s, d, preserve=Preserve(xattrs=True))
    assert ops(actions) == [
        ("SKIP", "d"),
        ("META", "f"),
        ("SKIP", "ln"),
        ("MKDIR", "nd"),
        ("COPY", "new"),
        ("SKIP", "same"),
    ]
    assert sorted(s.xattrs_read) == ["d", "f", "nd", "same"]
    assert sorted(d.xattrs_read) == ["d", "f", "same"]
    by = {a.rel: a for a in actions}
    assert by["nd"].src.xattrs == {"user.n": b"1"}  # type: ignore[union-attr]
    assert by["d"].dst.xattrs == {"user.d": b"2"}  # type: ignore[union-attr]
    assert planner.meta_differs(by["d"].src, by["d"].dst)  # type: ignore[arg-type]
    # Not kept (or not held by one side): not read at all.
    for sc, dc, p in ((LOCAL, LOCAL, Preserve()), (PLAIN, LOCAL, Preserve(xattrs=True))):
        s, d = Tree(src, sc, xattrs=sx), Tree(dst, dc, xattrs=dx)
        walk(s, d, preserve=p)
        assert s.xattrs_read == d.xattrs_read == []


def test_xattrs_of_a_followed_link_are_read_where_it_points() -> None:
    src = {"real": F(), "ln": L("real")}
    s = Tree(src, xattrs={"real": {"user.a": b"1"}}, follow={"ln": "real"})
    d = Tree({"ln": F(), "real": F()}, xattrs={"ln": {"user.a": b"1"}, "real": {}})
    actions, _ = walk(s, d, preserve=Preserve(xattrs=True), symlinks=SymlinkPolicy.FOLLOW)
    assert ops(actions) == [("SKIP", "ln"), ("META", "real")]
    assert s.xattrs_read == ["real", "real"] and d.xattrs_read == ["ln", "real"]


# -- links ---------------------------------------------------------------------------------


def test_hard_links_are_linked_once_copied() -> None:
    src = {
        "a": F(nlink=2, ino=7, dev=1),
        "b": F(nlink=2, ino=7, dev=1),
        "c": F(nlink=2, ino=7, dev=2),  # another filesystem's inode 7
        "d": F(nlink=2, ino=8, dev=1),  # its other name is outside the tree
    }
    actions, planner = walk(Tree(src), Tree({}))
    assert ops(actions) == [("COPY", "a"), ("HARDLINK", "b"), ("COPY", "c"), ("COPY", "d")]
    assert actions[1].link_to == "a" and planner.dropped_flags() == []
    # Already linked at the destination: nothing to do.
    linked = {"a": F(nlink=2, ino=70), "b": F(nlink=2, ino=70), "c": F(), "d": F()}
    assert ops(walk(Tree(src), Tree(linked))[0]) == [
        ("SKIP", "a"),
        ("SKIP", "b"),
        ("SKIP", "c"),
        ("SKIP", "d"),
    ]
    # Two separate copies at the destination: the second becomes a link again.
    apart = {**linked, "b": F(nlink=1, ino=71)}
    assert ops(walk(Tree(src), Tree(apart))[0])[:2] == [("SKIP", "a"), ("HARDLINK", "b")]
    # The first name changed: it is copied, and the second linked to the new copy.
    changed = {**linked, "a": F(size=3, nlink=2, ino=70)}
    assert ops(walk(Tree(src), Tree(changed))[0])[:2] == [("UPDATE", "a"), ("HARDLINK", "b")]
    touched = {**linked, "a": F(mode=0o600, nlink=2, ino=70)}
    assert ops(walk(Tree(src), Tree(touched))[0])[:2] == [("META", "a"), ("SKIP", "b")]


def test_hard_links_to_a_destination_without_them_are_copies() -> None:
    src = {"a": F(nlink=2, ino=7), "b": F(nlink=2, ino=7)}
    no_links = LOCAL._replace(hardlinks=False)
    actions, planner = walk(Tree(src), Tree({}, no_links))
    assert ops(actions) == [("COPY", "a"), ("COPY", "b")]
    assert planner.dropped_flags() == ["hardlinks"]
    actions, planner = walk(Tree(src), Tree({}), preserve=Preserve(hardlinks=False))
    assert ops(actions) == [("COPY", "a"), ("COPY", "b")]
    assert planner.dropped_flags() == []
    # A source that cannot tell (no hard links of its own) has none to drop; nor a file
    # with one name.
    actions, planner = walk(Tree(src, no_links), Tree({}, no_links))
    assert planner.dropped_flags() == []
    actions, planner = walk(Tree({"solo": F()}), Tree({}, no_links))
    assert planner.dropped_flags() == []


def test_symlink_policies(caplog: pytest.LogCaptureFixture) -> None:
    src = {"f": F(), "ln": L("f"), "dangling": L("nowhere"), "d": D(), "d2": D()}
    src.update({"d/x": F(), "ld1": L("d"), "ld2": L("d2"), "ld3": L("d")})
    follow = {"ln": "f", "ld1": "d", "ld2": "d2", "ld3": "d"}
    src["d2"].ino, src["d"].ino = 2, 1

    def run(**opts: object) -> list[tuple[str, str]]:
        actions, _ = walk(Tree(src, follow=follow), Tree({}), **opts)
        return ops(actions)

    dirs = [("MKDIR", "d"), ("MKDIR", "d2"), ("COPY", "f")]
    assert run() == [
        *dirs[:2],
        ("SYMLINK", "dangling"),
        ("COPY", "f"),
        ("SYMLINK", "ld1"),
        ("SYMLINK", "ld2"),
        ("SYMLINK", "ld3"),
        ("SYMLINK", "ln"),
        ("COPY", "d/x"),
    ]
    assert run(symlinks=SymlinkPolicy.SKIP) == [*dirs, ("COPY", "d/x")]
    assert run(preserve=Preserve(links=False)) == [*dirs, ("COPY", "d/x")]
    # Followed: a link is copied as what it points at, read from there; a dangling one is
    # skipped; a directory reached through a second link is not copied again (a loop ends).
    with caplog.at_level(logging.WARNING, logger="ferry"):
        actions, _ = walk(Tree(src, follow=follow), Tree({}), symlinks=SymlinkPolicy.FOLLOW)
    assert [r.getMessage() for r in caplog.records] == [
        "dangling: symlink is dangling or points outside the source; skipped",
        "ld3: symlinked directory already copied; skipped (loop?)",
    ]
    assert ops(actions) == [
        ("MKDIR", "d"),
        ("MKDIR", "d2"),
        ("COPY", "f"),
        ("MKDIR", "ld1"),
        ("MKDIR", "ld2"),
        ("COPY", "ln"),
        ("COPY", "d/x"),
        ("COPY", "ld1/x"),
    ]
    by = {a.rel: a for a in actions}
    assert by["ln"].read_rel == "f" and by["f"].read_rel is None
    assert by["ln"].src.type == EntryType.FILE  # type: ignore[union-attr]
    assert by["ld1"].src.type == EntryType.DIR  # type: ignore[union-attr]


def test_symlinks_to_a_destination_without_them_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = {"a": L("x"), "b": L("y"), "f": F()}
    with caplog.at_level(logging.INFO, logger="ferry"):
        actions, planner = walk(Tree(src), Tree({}, PLAIN))
    assert ops(actions) == [("COPY", "f")]
    assert planner.dropped_flags() == ["perms", "links"]
    # Once per kind, and only noted (INFO) for defaults nobody asked for.
    notes = [r for r in caplog.records if "symlinks" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in notes] == [
        (logging.INFO, "tree cannot hold symlinks; skipping them (use --links follow)")
    ]


@pytest.mark.parametrize(
    ("preserve", "level"),
    [(Preserve(), logging.INFO), (Preserve(owners=True, xattrs=True), logging.WARNING)],
)
def test_what_a_destination_cannot_hold_is_named_once(
    caplog: pytest.LogCaptureFixture, preserve: Preserve, level: int
) -> None:
    src = {"a": F(size=8192, blocks=0), "b": F(size=8192, blocks=0), "l": L("a")}
    with caplog.at_level(logging.INFO, logger="ferry"):
        _, planner = walk(Tree(src), Tree({}, PLAIN), preserve=preserve)
    asked = [f for f in ("owners", "xattrs") if getattr(preserve, f)]
    assert planner.dropped_flags() == ["perms", *asked, "links", "sparse"]
    got = sorted((r.levelno, r.getMessage()) for r in caplog.records)
    assert got == sorted(
        (level if f not in asked else logging.WARNING, f"tree cannot hold {what}")
        for f, what in [
            ("perms", "permission bits; they are not kept"),
            ("owners", "owners; files keep the writer's owner"),
            ("xattrs", "xattrs; they are not copied"),
            ("links", "symlinks; skipping them (use --links follow)"),
            ("sparse", "sparse files; holes are written out as zeros"),
        ]
        if f in ("perms", "links", "sparse", *asked)
    )


@pytest.mark.parametrize(
    ("size", "blocks", "dropped"),
    [(4096, 0, True), (4095, 0, False), (8192, 8, True), (8192, 9, False), (8192, -1, False)],
)
def test_holes_are_dropped_only_where_there_are_some(size: int, blocks: int, dropped: bool) -> None:
    """A file holds a hole when a 4 KiB block or more of its size is not allocated."""
    no_holes = LOCAL._replace(sparse=False)
    _, planner = walk(Tree({"a": F(size=size, blocks=blocks)}), Tree({}, no_holes))
    assert planner.dropped_flags() == (["sparse"] if dropped else [])
    # Nothing to drop when not asked for, or when the source keeps no holes either.
    _, planner = walk(
        Tree({"a": F(size=4096, blocks=0)}), Tree({}, no_holes), preserve=Preserve(sparse=False)
    )
    assert planner.dropped_flags() == []
    _, planner = walk(Tree({"a": F(size=4096, blocks=0)}, no_holes), Tree({}, no_holes))
    assert planner.dropped_flags() == []


# -- filters, shards, listing errors ---------------------------------------------------------


def test_excluded_entries_are_neither_copied_nor_deleted() -> None:
    src = {"a.txt": F(), "x.tmp": F(), "keep": D(), "keep/k": F(), "sub": D(), "sub/s.tmp": F()}
    dst = {"old.txt": F(), "junk.tmp": F(), "keep": D(), "keep/mine": F(), "zz": D(), "sub": D()}
    dst["sub/gone.tmp"] = F()
    filters = ("- *.tmp", "- /keep/")
    actions, _ = walk(Tree(src), Tree(dst), mode=Mode.SYNC, filters=filters)
    assert ops(actions) == [
        ("COPY", "a.txt"),
        ("SKIP", "sub"),
        ("DELETE", "old.txt"),
        ("DELETE", "zz"),
    ]


def test_shards_split_files_and_deletes_and_share_directories() -> None:
    src = {f"f{i}": F() for i in range(24)} | {"d": D(), "d/x": F(), "l": L("f0")}
    dst = {f"e{i}": F() for i in range(24)} | {"f0": F(size=1)}
    seen: list[set[tuple[str, str]]] = []
    for index in range(2):
        actions, planner = walk(
            Tree(src), Tree(dst), mode=Mode.SYNC, shard_index=index, shard_count=2
        )
        assert planner.sharder is not None
        mine = set(ops(actions))
        sharder = Sharder(index, 2)
        for op, rel in mine - {("MKDIR", "d")}:
            assert sharder.owns(rel, 0 if op == "DELETE" else 10), (op, rel)
        assert ("MKDIR", "d") in mine  # every shard makes the directories
        seen.append(mine - {("MKDIR", "d")})
    assert not seen[0] & seen[1]
    want = {("COPY", f"f{i}") for i in range(1, 24)} | {("DELETE", f"e{i}") for i in range(24)}
    assert seen[0] | seen[1] == want | {("UPDATE", "f0"), ("SYMLINK", "l"), ("COPY", "d/x")}


def test_a_directory_that_cannot_be_listed_is_an_error_and_the_walk_goes_on() -> None:
    tree = {"a": D(), "a/x": F(), "b": D(), "b/x": F(), "c": D(), "c/x": F()}
    src = Tree(tree, unlistable=("b",))
    dst = Tree({"a": D(), "b": D(), "c": D()}, unlistable=("a",))
    actions, _ = walk(src, dst, mode=Mode.SYNC)
    assert ops(actions) == [
        ("SKIP", "a"),
        ("SKIP", "b"),
        ("SKIP", "c"),
        ("ERROR", "a"),
        ("ERROR", "b"),
        ("COPY", "c/x"),
    ]
    errors = [a.error for a in actions if a.op == Op.ERROR]
    assert [(e.kind, e.path) for e in errors if e is not None] == [
        (ErrorKind.PERMISSION, "a"),
        (ErrorKind.PERMISSION, "b"),
    ]
