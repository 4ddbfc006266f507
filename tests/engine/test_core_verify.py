"""In-process tests of `ferry verify` (ferry/mover/verify.py): every kind of difference
docs/cli.md names, each reported once under its path, and what is not compared.

The trees are in memory (tests/engine/memtree.py): each case sets exactly the sizes,
times, modes, targets, contents and capabilities it is about.
"""

from __future__ import annotations

import logging

import pytest

from ferry.mover import verify
from ferry.mover.backends.base import Backend, Entry, EntryType, Holds
from ferry.mover.endpoints import Endpoint, LocalEndpoint
from ferry.mover.errors import ErrorKind
from ferry.mover.integrity import digest_bytes
from ferry.mover.options import Options, Preserve
from ferry.mover.progress import Sink, Snapshot
from ferry.mover.result import Summary
from tests.engine.memtree import LOCAL, PLAIN, SECOND, D, F, L, T, Tree

SAME = b"0123456789"


class Last(Sink):
    last: Snapshot | None = None
    finished: Summary | None = None

    def update(self, snap: Snapshot) -> None:
        self.last = snap

    def finish(self, summary: Summary) -> None:
        self.finished = summary


def run(
    src: Tree,
    dst: Tree,
    monkeypatch: pytest.MonkeyPatch,
    sink: Sink | None = None,
    fatal: bool = False,
    **opts: object,
) -> tuple[list[tuple[str, str, str]], Summary]:
    trees = {"src": src, "dst": dst}

    def open_backend(ep: Endpoint, **_: object) -> Backend:  # accelerators=
        assert isinstance(ep, LocalEndpoint)
        return trees[ep.path]

    monkeypatch.setattr(verify, "open_backend", open_backend)
    found: list[verify.Difference] = []
    summary = verify.verify_trees(
        LocalEndpoint("src"),
        LocalEndpoint("dst"),
        Options(**opts),  # type: ignore[arg-type]
        found.append,
        sink,
    )
    assert summary.differences == len(found)
    assert (summary.fatal is not None) == fatal, summary.fatal
    assert 0 < summary.elapsed_seconds < 60
    return sorted((d.what, d.path, d.detail) for d in found), summary


def files(entries: dict[str, Entry], data: dict[str, bytes]) -> dict[str, bytes]:
    """Contents for every file entry that has none given: SAME."""
    return {r: data.get(r, SAME) for r, e in entries.items() if e.type == EntryType.FILE} | data


def test_identical_trees_have_no_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = {"a": F(), "d": D(), "d/b": F(size=3), "l": L("a")}
    data = files(tree, {"d/b": b"abc"})
    sink = Last()
    found, summary = run(Tree(tree, data=data), Tree(dict(tree), data=data), monkeypatch, sink)
    assert found == []
    assert sink.finished is summary
    assert sink.last is not None and sink.last.scan_complete
    assert (sink.last.files_done, sink.last.files_total) == (2, 2)
    assert (sink.last.bytes_done, sink.last.bytes_total) == (13, 13)
    assert (summary.exit_code, summary.files_verified, summary.fatal) == (0, 2, None)
    assert summary.operation == "verify"


def test_every_kind_of_difference_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    src = {
        "a_missing": F(),
        "c_type": F(),
        "d_size": F(),
        "e_content": F(),
        "f_mtime": F(),
        "f_older": F(),
        "g_mode": F(mode=0o600),
        "h_target": L("here"),
        "h_linkmode": L("x", mode=0o777),
        "i_unreadable": F(),
        "j_dir": D(),
        "k_dirmode": D(mode=0o700),
        "n_missing_dir": D(),
        "n_missing_dir/x": F(),
        "o_sub": D(),
        "o_sub/p": F(),
        "o_sub/same": F(),
        "same": F(),
    }
    dst = {
        "b_extra": F(),
        "b_extra2": D(),
        "c_type": D(),
        "d_size": F(size=11, mtime=T + 1),  # a size difference is reported alone
        "e_content": F(),
        "f_mtime": F(mtime=T + 1),
        "f_older": F(mtime=T - 1),
        "g_mode": F(),
        "h_target": L("there"),
        "h_linkmode": L("x", mode=0o755),  # a link's mode is no difference
        "i_unreadable": F(),
        "j_dir": D(mtime=T + SECOND),
        "k_dirmode": D(),
        "o_sub": D(),
        "o_sub/q": F(),
        "o_sub/same": F(),
        "same": F(),
    }
    src_data = files(src, {})
    dst_data = files(dst, {"e_content": b"9876543210", "d_size": SAME + b"!"})
    del dst_data["i_unreadable"]
    found, summary = run(Tree(src, data=src_data), Tree(dst, data=dst_data), monkeypatch)
    h = digest_bytes(SAME)
    other = digest_bytes(b"9876543210")
    assert found == sorted(
        [
            ("missing", "a_missing", "not at the destination"),
            ("extra", "b_extra", "only at the destination"),
            ("extra", "b_extra2", "only at the destination"),
            ("type", "c_type", "file != dir"),
            ("size", "d_size", "10 != 11"),
            ("content", "e_content", f"{h[:17]}... != {other[:17]}..."),
            ("mtime", "f_mtime", f"{T} != {T + 1} ns"),
            ("mtime", "f_older", f"{T} != {T - 1} ns"),
            ("mode", "g_mode", "600 != 644"),
            ("target", "h_target", "'here' != 'there'"),
            ("unreadable", "i_unreadable", "i_unreadable: Permission denied (errno 13)"),
            ("mtime", "j_dir", f"{T} != {T + SECOND} ns"),
            ("mode", "k_dirmode", "700 != 755"),
            ("missing", "n_missing_dir", "not at the destination"),
            ("missing", "o_sub/p", "not at the destination"),
            ("extra", "o_sub/q", "only at the destination"),
        ]
    )
    assert summary.exit_code == 1 and summary.fatal is None
    # Read and compared: e_content, f_mtime, f_older, g_mode, o_sub/same, same.
    assert summary.files_verified == 6


def test_known_digests_are_compared_without_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = digest_bytes(b"1"), digest_bytes(b"2")
    src = {"a": F(digest=one), "b": F(digest=one)}
    dst = {"a": F(digest=one), "b": F(digest=two)}
    found, summary = run(Tree(src), Tree(dst), monkeypatch)  # no contents: nothing readable
    assert found == [("content", "b", f"{one[:17]}... != {two[:17]}...")]
    assert summary.files_verified == 2


def test_a_file_shorter_than_listed_is_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    src = {"short": F()}
    found, summary = run(
        Tree(src, data={"short": SAME}), Tree(dict(src), data={"short": SAME[:5]}), monkeypatch
    )
    assert found == [("unreadable", "short", "short: size changed while reading")]
    assert summary.files_verified == 0 and summary.exit_code == 1


def test_many_files_are_all_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """More files than the pending window (transfers * 4): none is dropped on the way."""
    src = {f"f{i:03}": F() for i in range(40)}
    dst_data = files(src, {"f007": b"x" * 10, "f039": b"y" * 10})
    found, summary = run(
        Tree(src, data=files(src, {})), Tree(dict(src), data=dst_data), monkeypatch, transfers=2
    )
    assert [(w, p) for w, p, _ in found] == [("content", "f007"), ("content", "f039")]
    assert summary.files_verified == 40


def test_within_the_coarser_precision_times_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    coarse = LOCAL._replace(mtime_precision_ns=2 * SECOND)
    src = {"a": F(), "b": F(), "c": F(), "d": D(), "e": D()}
    dst = {
        "a": F(mtime=T + 2 * SECOND - 1),
        "b": F(mtime=T - 2 * SECOND),
        "c": F(mtime=T + 2 * SECOND),
        "d": D(mtime=T - 2 * SECOND + 1),
        "e": D(mtime=T + 2 * SECOND),
    }
    for sc, dc in ((coarse, LOCAL), (LOCAL, coarse)):
        found, _ = run(
            Tree(src, sc, data=files(src, {})), Tree(dst, dc, data=files(dst, {})), monkeypatch
        )
        assert [(w, p) for w, p, _ in found] == [("mtime", "b"), ("mtime", "c"), ("mtime", "e")]


def test_times_are_compared_to_the_nanosecond_without_a_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zero = LOCAL._replace(mtime_precision_ns=0)
    src = {"a": F(), "b": F()}
    dst = {"a": F(), "b": F(mtime=T + 1)}
    data = files(src, {})
    found, _ = run(Tree(src, zero, data=data), Tree(dst, zero, data=data), monkeypatch)
    assert [(w, p) for w, p, _ in found] == [("mtime", "b")]


def test_what_is_not_kept_is_not_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    src = {"a": F(mode=0o600), "d": D(mode=0o700), "new": D(), "f": D(), "f/x": F()}
    dst = {"a": F(mtime=T + 1), "d": D(mtime=T + 1), "f": D()}
    data = files(src, {})

    def kinds(src_caps: Holds, dst_caps: Holds, **opts: object) -> list[tuple]:
        found, _ = run(
            Tree(src, src_caps, data=data), Tree(dst, dst_caps, data=data), monkeypatch, **opts
        )
        return [(w, p) for w, p, _ in found]

    missing = [("missing", "f/x")]
    everything = [("mode", "a"), ("mtime", "a"), ("mode", "d"), ("mtime", "d")]
    assert kinds(LOCAL, LOCAL) == sorted([*everything, ("missing", "new"), *missing])
    assert kinds(LOCAL, LOCAL, preserve=Preserve(times=False)) == sorted(
        [("mode", "a"), ("mode", "d"), ("missing", "new"), *missing]
    )
    assert kinds(LOCAL, LOCAL, preserve=Preserve(perms=False)) == sorted(
        [("mtime", "a"), ("mtime", "d"), ("missing", "new"), *missing]
    )
    no_modes = LOCAL._replace(permissions=False)
    for sc, dc in ((no_modes, LOCAL), (LOCAL, no_modes)):
        assert kinds(sc, dc) == sorted(
            [("mtime", "a"), ("mtime", "d"), ("missing", "new"), *missing]
        )
    # An object store holds no directories: no directory time, mode or absence to report.
    store = PLAIN._replace(permissions=True, empty_dirs=False)
    assert kinds(store, LOCAL) == sorted(
        [("mode", "a"), ("mtime", "a"), ("missing", "new"), *missing]
    )
    assert kinds(LOCAL, store) == sorted([("mode", "a"), ("mtime", "a"), *missing])


def test_filters_limit_what_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    src = {"a.tmp": F(), "b": F(), "skip": D(), "skip/x": F(), "sub": D(), "sub/c.tmp": F()}
    dst = {"extra.tmp": F(), "skip": D(), "sub": D(), "zz": F()}
    found, _ = run(
        Tree(src, data=files(src, {})),
        Tree(dst),
        monkeypatch,
        filters=("- *.tmp", "- /skip/"),
    )
    assert found == [
        ("extra", "zz", "only at the destination"),
        ("missing", "b", "not at the destination"),
    ]


def test_xattrs_are_compared_when_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = {"a": F(), "d": D(), "l": L("a"), "same": F()}
    sx = {"a": {"user.a": b"1", "user.b": b"1"}, "d": {"user.d": b"1"}, "same": {"user.s": b""}}
    sx["l"] = {"user.l": b"1"}
    dx = {"a": {"user.a": b"2", "user.c": b"1"}, "d": {}, "same": {"user.s": b""}}
    data = files(src, {})
    x = Preserve(xattrs=True)
    found, _ = run(
        Tree(src, xattrs=sx, data=data),
        Tree(dict(src), xattrs=dx, data=data),
        monkeypatch,
        preserve=x,
    )
    assert found == [
        ("xattrs", "a", "'user.a' differs, 'user.b' missing, 'user.c' extra"),
        ("xattrs", "d", "'user.d' missing"),
    ]
    for sc in (LOCAL, PLAIN):  # not asked for: not compared, nothing to warn about
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ferry"):
            found, _ = run(
                Tree(src, sc, xattrs=sx, data=data),
                Tree(dict(src), xattrs=dx, data=data),
                monkeypatch,
            )
        assert found == [] and caplog.records == []
    for sc, dc, lacking in ((PLAIN, LOCAL, "src"), (LOCAL, PLAIN, "dst")):
        s = Tree(src, sc, xattrs=sx, data=data, name="src")
        d = Tree(dict(src), dc, xattrs=dx, data=data, name="dst")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ferry"):
            found, _ = run(s, d, monkeypatch, preserve=x)
        assert [w for w, _, _ in found if w == "xattrs"] == []
        assert s.xattrs_read == d.xattrs_read == []
        assert [r.getMessage() for r in caplog.records] == [
            f"{lacking} cannot hold xattrs; they are not compared"
        ]


def test_xattr_differences_are_summarised() -> None:
    assert verify._xattrs_differ(None, None) == ""
    assert verify._xattrs_differ({"a": b"1"}, {"a": b"1"}) == ""
    assert verify._xattrs_differ(None, {"a": b""}) == "'a' extra"
    assert verify._xattrs_differ({"a": b""}, None) == "'a' missing"
    many = {f"n{i}": b"1" for i in range(7)}
    assert verify._xattrs_differ(many, {}) == (
        "'n0' missing, 'n1' missing, 'n2' missing, 'n3' missing, 'n4' missing and 2 more"
    )
    assert verify._xattrs_differ(dict(list(many.items())[:5]), {}).endswith("'n4' missing")
    assert verify._xattrs_differ(dict(list(many.items())[:6]), {}).endswith("missing and 1 more")


def test_a_difference_prints_as_one_line() -> None:
    assert str(verify.Difference("a/b", "size", "1 != 2")) == "size       a/b  (1 != 2)"
    assert str(verify.Difference("a/b", "missing")) == "missing    a/b"


@pytest.mark.parametrize(
    ("side", "kind"),
    [("src", ErrorKind.SOURCE_NOT_FOUND), ("dst", ErrorKind.DESTINATION_NOT_FOUND)],
)
def test_a_missing_root_is_fatal(
    monkeypatch: pytest.MonkeyPatch, side: str, kind: ErrorKind
) -> None:
    trees = {s: Tree({"a": F()}, exists=s != side, name=s) for s in ("src", "dst")}
    found, summary = run(trees["src"], trees["dst"], monkeypatch, fatal=True)
    assert found == []
    assert str(summary.fatal) == f"{side}: does not exist or is not a directory"
    assert summary.fatal is not None and summary.fatal.kind == kind
    assert summary.fatal.path == side
    assert summary.exit_code == kind.exit_code


def test_a_directory_that_cannot_be_listed_is_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = {"d": D(), "d/x": F()}
    for s, d in ((("d",), ()), ((), ("d",))):
        _, summary = run(
            Tree(tree, unlistable=s), Tree(tree, unlistable=d), monkeypatch, fatal=True
        )
        assert summary.fatal is not None and summary.fatal.kind == ErrorKind.PERMISSION
        assert summary.fatal.path == "d" and summary.exit_code == 5
