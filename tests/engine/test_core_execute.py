"""In-process tests of the executor's commit and delete paths (ferry/mover/engine/: the
ledger, commit, wholefile, chunks, batches, deferred, dryrun; and the delete phase of
ferry/mover/transfer.py): what a committed file is booked as, full
verification, sync's deletes and type replacements, and --max-delete.

Real local trees under tmp_path, run in the test process (`transfer_between`), so that
`make mutate` sees which of these guarantees each line of the engine holds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends.base import Entry, Reader
from ferry.mover.backends.local import LocalBackend, LocalWriter
from ferry.mover.errors import ErrorKind
from ferry.mover.integrity import digest_bytes
from ferry.mover.options import Compare, ErrorPolicy, Fsync, MiB, Mode, Options, Preserve, Verify
from ferry.mover.plan import Action
from ferry.mover.progress import Sink, Snapshot
from ferry.mover.result import Summary
from ferry.mover.transfer import transfer_between
from tests.engine.treeutil import FlushLog, assert_same_tree

SYNC = Mode.SYNC


class LastSnapshot(Sink):
    last: Snapshot | None = None

    def update(self, snap: Snapshot) -> None:
        self.last = snap


def run(
    src: Path | LocalBackend, dst: Path | LocalBackend, sink: Sink | None = None, **opts: object
) -> Summary:
    s = src if isinstance(src, LocalBackend) else LocalBackend(str(src))
    d = dst if isinstance(dst, LocalBackend) else LocalBackend(str(dst))
    return transfer_between(lambda: (s, d), Options(**opts), sink)  # type: ignore[arg-type]


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# -- what a committed file is booked as --------------------------------------------------------

# Sizes that take each way through the executor with 1 MiB chunks: a batch of small files,
# one whole file streamed, one file in parallel chunks (and an empty one).
SIZES = {"empty": 0, "small": 100, "whole": 300 * 1024, "chunked": 2 * MiB + 5}


@pytest.mark.parametrize("verify", [Verify.INLINE, Verify.FULL, Verify.NONE])
def test_copies_and_updates_are_counted_and_listed(tmp_path: Path, verify: Verify) -> None:
    """filesCopied, filesUpdated, bytesTransferred, filesVerified, the progress totals and
    the manifest (one line per file at the destination, digest null where not read)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {name: os.urandom(n) for name, n in SIZES.items()})
    write(src, {"same": b"unchanged"})
    write(dst, {"small": b"old", "whole": b"old"})
    same = src / "same"
    os.makedirs(dst, exist_ok=True)
    (dst / "same").write_bytes(same.read_bytes())
    st = same.stat()
    os.utime(dst / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(dst / "same", st.st_mode)
    manifest = tmp_path / "manifest.jsonl"
    sink = LastSnapshot()
    s = run(src, dst, sink, chunk_size=MiB, verify=verify, manifest=str(manifest))
    assert s.exit_code == 0, s.errors
    assert_same_tree(src, dst)
    assert (s.files_copied, s.files_updated, s.files_skipped) == (2, 2, 1)
    assert s.bytes_transferred == sum(SIZES.values()) and s.bytes_resumed == 0
    assert s.files_verified == (0 if verify == Verify.NONE else 4)
    assert sink.last is not None
    assert (sink.last.files_done, sink.last.files_total) == (4, 4)
    assert (sink.last.bytes_done, sink.last.bytes_total) == (sum(SIZES.values()),) * 2
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(line["path"] for line in lines) == sorted([*SIZES, "same"])
    for line in lines:
        p = src / line["path"]
        assert line["size"] == p.stat().st_size
        assert line["mtimeNs"] == p.stat().st_mtime_ns
        if line["path"] == "same" or verify == Verify.NONE:
            assert line["digest"] is None
        else:
            assert line["digest"] == digest_bytes(p.read_bytes())


def test_the_executor_leaves_the_actions_as_planned(tmp_path: Path) -> None:
    """A checked file that differs, a replaced directory, a source completed before the
    write (a destination that wants the digest first): booked as updates, and the
    Actions keep their op and their entries."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"same_size": b"A" * 50, "big": os.urandom(2 * MiB + 5), "p": b"p" * 300})
    write(dst, {"same_size": b"B" * 50, "p/inner": b"i"})

    class DigestFirst(LocalBackend):
        limits = LocalBackend.limits._replace(digest_first_above=1)

    s, d = LocalBackend(str(src)), DigestFirst(str(dst))
    actions: list[Action] = []
    seen: list[tuple[Action, object, object, object, object]] = []

    def note(a: Action) -> None:
        actions.append(a)
        seen.append((a, a.op, a.src, a.dst, a.src.digest if a.src else None))

    done = transfer_between(
        lambda: (s, d),
        Options(chunk_size=MiB, mode=SYNC, compare=Compare.CHECKSUM),
        on_action=note,
    )
    assert done.exit_code == 0, done.errors
    assert_same_tree(src, dst)
    assert (done.files_copied, done.files_updated) == (1, 2)
    assert [(a, a.op, a.src, a.dst, a.src.digest if a.src else None) for a in actions] == seen


# -- --verify full ---------------------------------------------------------------------------


def test_full_verification_passes_what_landed_whole(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {name: os.urandom(n) for name, n in SIZES.items()})
    write(src, {"piece_and_a_bit": os.urandom(MiB + 1)})
    s = run(src, dst, chunk_size=MiB, verify=Verify.FULL)
    assert s.exit_code == 0, s.errors
    assert s.files_verified == 5
    assert_same_tree(src, dst)


class ShortWriter(LocalWriter):
    """Reads back one byte less than was written: a destination that lost the file's end."""

    def read_back(self, offset: int, length: int) -> bytes:
        return super().read_back(offset, length)[: max(0, self.size - 1 - offset)]


class ShortBackend(LocalBackend):
    def __init__(self, root: str, size: int) -> None:
        super().__init__(root)
        self.size = size

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> LocalWriter:
        w = ShortWriter(self, rel, resume_key)
        w.size = self.size  # type: ignore[attr-defined]
        return w


class BlindWriter(LocalWriter):
    """A destination that checks on its side and cannot read back (S3: its checksums)."""

    def read_back(self, offset: int, length: int) -> None:  # type: ignore[override]
        return None


class BlindBackend(LocalBackend):
    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> LocalWriter:
        return BlindWriter(self, rel, resume_key)


@pytest.mark.parametrize("size", [300 * 1024, 2 * MiB + 5], ids=["whole", "chunked"])
def test_full_verification_fails_a_short_destination(tmp_path: Path, size: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"f": os.urandom(size)})
    s = run(src, ShortBackend(str(dst), size), chunk_size=MiB, verify=Verify.FULL)
    assert s.exit_code == 9 and s.fatal is not None
    assert (s.fatal.kind, s.fatal.path) == (ErrorKind.VERIFY_MISMATCH, "f")
    assert str(s.fatal) == "f: destination bytes do not match the source digest"
    assert s.files_copied == 0 and not (dst / "f").exists()
    # A destination that cannot read back checks on its side: nothing to fail here.
    s = run(src, BlindBackend(str(tmp_path / "d2")), chunk_size=MiB, verify=Verify.FULL)
    assert s.exit_code == 0 and s.files_verified == 1


# -- sync: deletes -----------------------------------------------------------------------------


class Recorder(LocalBackend):
    """A destination that notes what it removes and lists, and fails where told."""

    def __init__(
        self, root: str, fail_remove: str | None = None, fail_list: str | None = None
    ) -> None:
        super().__init__(root)
        self.removed: list[str] = []
        self.listed: list[str] = []
        self.fail_remove, self.fail_list = fail_remove, fail_list

    def remove(self, rel: str, entry: Entry) -> None:
        if rel == self.fail_remove:
            raise OSError(errno.EACCES, "Permission denied")
        self.removed.append(rel)
        super().remove(rel, entry)

    def list_dir(self, rel: str) -> list[Entry]:
        self.listed.append(rel)
        if rel == self.fail_list:
            raise OSError(errno.EACCES, "Permission denied")
        return super().list_dir(rel)


def _doomed_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A source, and a destination holding 7 entries the source does not have: a file,
    a directory tree (a file, a directory, a file in it, a symlink out of the tree), and a
    file in a directory both have. 5 of them are not directories, 26 bytes in all."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    write(src, {"a": b"a" * 100, "keep/k": b"k"})
    write(dst, {"x": b"x" * 5, "d/a": b"a" * 7, "d/e/b": b"b" * 11, "keep/old": b"o" * 3})
    write(outside, {"precious": b"p"})
    os.symlink(outside, dst / "d" / "ln")
    return src, dst, outside


def test_sync_deletes_whole_trees_children_first(tmp_path: Path) -> None:
    src, dst, outside = _doomed_tree(tmp_path)
    rec = Recorder(str(dst))
    sink = LastSnapshot()
    s = run(src, rec, sink, mode=SYNC)
    assert s.exit_code == 0, s.errors
    assert_same_tree(src, dst)
    assert (outside / "precious").read_bytes() == b"p"  # the symlink went, not through it
    assert (s.files_copied, s.files_deleted, s.bytes_deleted) == (2, 5, 26)
    assert sorted(rec.removed) == sorted(["x", "d", "d/a", "d/e", "d/e/b", "d/ln", "keep/old"])
    for i, rel in enumerate(rec.removed):  # a directory goes after everything in it
        assert not [r for r in rec.removed[i:] if r.startswith(rel + "/")], rec.removed
    assert sink.last is not None and sink.last.files_done == sink.last.files_total == 2


@pytest.mark.parametrize("policy", [ErrorPolicy.ABORT, ErrorPolicy.SKIP])
def test_a_delete_that_fails_stops_the_deletes(tmp_path: Path, policy: ErrorPolicy) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a"})
    write(dst, {"b": b"b", "c": b"c", "d": b"d"})
    rec = Recorder(str(dst), fail_remove="c")
    s = run(src, rec, mode=SYNC, error_policy=policy)
    assert rec.removed == ["b"]
    assert sorted(p.name for p in dst.iterdir()) == ["a", "c", "d"]
    assert [(e.path, e.kind) for e in s.errors] == [("c", ErrorKind.PERMISSION)]
    assert "Permission denied" in s.errors[0].message
    assert s.files_failed == 0 and s.files_deleted == 1  # a delete is not a failed file
    assert s.exit_code == (5 if policy == ErrorPolicy.ABORT else 1)


def test_sync_replaces_what_changed_type(tmp_path: Path) -> None:
    """A file, a link or a directory where the destination has another type: a sync
    removes the old entry (a directory with everything in it) and makes the new one."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"p": b"p" * 300, "r/f": b"f"})
    os.symlink("somewhere", src / "q")
    write(dst, {"p/inner": b"i" * 9, "q/inner": b"j" * 4, "r": b"r"})
    sink = LastSnapshot()
    s = run(src, dst, sink, mode=SYNC)
    assert s.exit_code == 0, s.errors
    assert_same_tree(src, dst)
    assert (s.files_copied, s.files_updated, s.links_created) == (1, 1, 1)
    assert (s.files_deleted, s.bytes_deleted) == (2, 13)  # p/inner and q/inner
    assert sink.last is not None
    assert (sink.last.files_done, sink.last.files_total) == (2, 2)
    assert (sink.last.bytes_done, sink.last.bytes_total) == (301, 301)


@pytest.mark.parametrize("policy", [ErrorPolicy.ABORT, ErrorPolicy.SKIP])
def test_copy_never_removes_a_directory_for_a_file(tmp_path: Path, policy: ErrorPolicy) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"p": b"p", "r/f": b"f"})
    write(dst, {"p/inner": b"i", "r": b"r"})
    s = run(src, dst, error_policy=policy)
    assert (dst / "p" / "inner").read_bytes() == b"i"
    assert [(e.path, e.kind) for e in s.errors] == [("p", ErrorKind.USAGE)]
    assert s.errors[0].message == (
        "destination has a directory where the source has a file; use sync to replace it"
    )
    assert s.files_failed == 1
    if policy == ErrorPolicy.SKIP:
        assert s.exit_code == 1
        assert (dst / "r" / "f").read_bytes() == b"f"  # a file where a directory goes: replaced
    else:
        assert s.exit_code == 2


# -- --max-delete ------------------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True], ids=["sync", "plan"])
def test_max_delete_counts_entries_and_refuses_past_it(tmp_path: Path, dry_run: bool) -> None:
    """7 entries to delete (a directory counts with everything in it): a limit of 7 lets
    them go; 6 deletes nothing, still copies, and exits 14 saying why."""
    src, dst, _ = _doomed_tree(tmp_path)
    before = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    s = run(src, dst, mode=SYNC, max_delete=6, dry_run=dry_run)
    assert s.exit_code == 14 and s.fatal is not None
    assert (s.fatal.kind, s.fatal.path) == (ErrorKind.DELETE_LIMIT, str(dst))
    assert "more than --max-delete / maxDelete 6" in str(s.fatal)
    assert "would delete 7 entries" in str(s.fatal) or "at least 7 entries" in str(s.fatal)
    after = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    if dry_run:
        assert after == before
    else:
        assert str(s.fatal) == (
            f"{dst}: sync would delete at least 7 entries, more than --max-delete / maxDelete "
            "6 allows: nothing was deleted; the copies are done. Check that the source is "
            "what you meant, or raise the limit"
        )
        assert s.files_copied == 2 and s.files_deleted == 0
        assert (dst / "a").exists() and (dst / "x").exists() and (dst / "d" / "e" / "b").exists()
    s = run(src, dst, mode=SYNC, max_delete=7, dry_run=dry_run)
    assert s.exit_code == 0, s.errors
    assert (s.files_deleted, s.bytes_deleted) == (5, 26)
    if not dry_run:
        assert_same_tree(src, dst)


def test_max_delete_zero_allows_none(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a"})
    write(dst, {"b": b"b"})
    s = run(src, dst, mode=SYNC, max_delete=0)
    assert s.exit_code == 14 and (dst / "b").exists() and (dst / "a").exists()
    assert "at least 1 entries" in str(s.fatal)
    s = run(src, dst, mode=SYNC, max_delete=1)
    assert s.exit_code == 0 and not (dst / "b").exists()


def test_max_delete_does_not_list_a_doomed_tree_to_the_end(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a"})
    write(dst, {f"big/{i}/f": b"f" for i in range(5)})
    rec = Recorder(str(dst))
    s = run(src, rec, mode=SYNC, max_delete=2)
    assert s.exit_code == 14
    assert "at least 6 entries" in str(s.fatal)  # big and its 5 subdirectories: enough
    assert [r for r in rec.listed if r.startswith("big")] == ["big"]


def test_a_directory_counts_with_what_is_in_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a"})
    write(dst, {"d/1": b"1", "d/2": b"2"})
    for limit in (1, 2):
        s = run(src, dst, mode=SYNC, max_delete=limit)
        assert s.exit_code == 14 and (dst / "d" / "1").exists(), limit
    s = run(src, dst, mode=SYNC, max_delete=3)
    assert s.exit_code == 0 and not (dst / "d").exists()


def test_deletes_that_cannot_be_counted_do_not_run(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a"})
    write(dst, {"b_file": b"b", "z_dir/f": b"f"})
    rec = Recorder(str(dst), fail_list="z_dir")
    s = run(src, rec, mode=SYNC, max_delete=100)
    assert s.fatal is not None and s.exit_code == 5
    assert (s.fatal.kind, s.fatal.path) == (ErrorKind.PERMISSION, str(dst))
    assert rec.removed == [] and (dst / "b_file").exists() and (dst / "a").exists()


def test_xattrs_are_copied_on_request_only(tmp_path: Path) -> None:
    """--preserve +xattrs copies a file's extended attributes; by default none are."""
    src = tmp_path / "src"
    write(src, {"f": os.urandom(300 * 1024), "small": b"s"})
    for name in ("f", "small"):
        os.setxattr(src / name, "user.ferry", b"kept")
    s = run(src, tmp_path / "plain")
    assert s.exit_code == 0, s.errors
    assert [os.listxattr(tmp_path / "plain" / n) for n in ("f", "small")] == [[], []]
    s = run(src, tmp_path / "kept", preserve=Preserve(xattrs=True))
    assert s.exit_code == 0, s.errors
    for name in ("f", "small"):
        assert os.getxattr(tmp_path / "kept" / name, "user.ferry") == b"kept"


# -- when the delete phase runs at all ---------------------------------------------------------


class Unreadable(LocalBackend):
    """A source where one file cannot be read, or one directory cannot be listed."""

    def __init__(self, root: str, bad: str) -> None:
        super().__init__(root)
        self.bad = bad

    def open_read(self, rel: str, entry: Entry) -> Reader:
        if rel == self.bad:
            raise OSError(errno.EIO, "Input/output error")
        return super().open_read(rel, entry)

    def list_dir(self, rel: str) -> list[Entry]:
        if rel == self.bad:
            raise OSError(errno.EACCES, "Permission denied")
        return super().list_dir(rel)


@pytest.mark.parametrize("bad", ["sub/f", "sub"], ids=["copy-failed", "listing-failed"])
def test_sync_deletes_nothing_after_an_error(
    tmp_path: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that failed to copy, or a source directory that could not be listed (whose
    entries would all look deleted): nothing is deleted, everything else is copied."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a", "sub/f": b"f" * 300_000, "sub/g": b"g"})
    write(dst, {"extra": b"x", "sub/g": b"old", "sub/h": b"h"})
    with caplog.at_level(logging.WARNING, logger="ferry"):
        s = run(Unreadable(str(src), bad), dst, mode=SYNC, error_policy=ErrorPolicy.SKIP)
    assert "not deleting anything at the destination: the copy had errors" in [
        r.getMessage() for r in caplog.records
    ]
    assert s.exit_code == 1 and s.files_deleted == 0
    assert [e.path for e in s.errors] == [bad]
    assert (dst / "extra").exists() and (dst / "sub" / "h").exists()
    assert (dst / "a").read_bytes() == b"a"


def test_sync_of_an_empty_source_is_refused_unless_meant(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    write(dst, {"a": b"a", "d/b": b"b"})
    s = run(src, dst, mode=SYNC)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.USAGE and s.exit_code == 2
    assert str(s.fatal) == (
        f"{src}: source is empty: refusing to sync, which would delete everything at the "
        "destination (pass --allow-empty-source if that is what you want)"
    )
    assert (dst / "a").exists() and (dst / "d" / "b").exists()
    assert run(src, dst).exit_code == 0  # a copy of nothing is fine
    s = run(src, dst, mode=SYNC, allow_empty_source=True)
    assert s.exit_code == 0 and list(dst.iterdir()) == []
    assert (s.files_deleted, s.bytes_deleted) == (2, 2)


class Phases(Sink):
    """Notes the phases a run goes through and what each reported."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        attrs: dict[str, Any] = {}
        yield attrs
        self.seen.append((name, attrs))


def test_the_delete_phase_is_flushed_first_and_reported(tmp_path: Path) -> None:
    """What was copied is flushed before anything is deleted (--fsync end), and the
    deletes again at the end; a sync with nothing to delete has no delete phase and one
    flush; --fsync none flushes nothing."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a"})
    write(dst, {"extra": b"x" * 3})
    d, phases = FlushLog(str(dst)), Phases()
    s = run(src, d, phases, mode=SYNC)
    assert s.exit_code == 0 and s.files_deleted == 1
    assert d.log == ["flush", "remove extra", "flush"]
    assert phases.seen == [
        ("transfer", {"files": 1, "bytes": 1}),
        ("delete", {"files": 1}),
    ]
    write(src, {"b": b"b"})
    d, phases = FlushLog(str(dst)), Phases()
    s = run(src, d, phases, mode=SYNC)
    assert s.exit_code == 0 and s.files_copied == 1 and d.log == ["flush"]
    assert [name for name, _ in phases.seen] == ["transfer"]
    write(dst, {"extra": b"x"})
    write(src, {"c": b"c"})
    d = FlushLog(str(dst))
    s = run(src, d, mode=SYNC, fsync=Fsync.NONE)
    assert s.exit_code == 0 and d.log == ["remove extra"]


class DeletePhaseWatch(Sink):
    """Progress as `--progress json` sees it, often: notes when the phase is "delete"."""

    interval = 0.005

    def __init__(self) -> None:
        self.deleting = threading.Event()

    def update(self, snap: Snapshot) -> None:
        if snap.phase == "delete":
            self.deleting.set()


class WaitsForTheDeletePhase(LocalBackend):
    def __init__(self, root: str, watch: DeletePhaseWatch) -> None:
        super().__init__(root)
        self.watch = watch

    def remove(self, rel: str, entry: Entry) -> None:
        assert self.watch.deleting.wait(10), "progress never showed the delete phase"
        super().remove(rel, entry)


def test_progress_shows_the_delete_phase(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src, {"a": b"a"})
    write(dst, {"extra": b"x"})
    watch = DeletePhaseWatch()
    s = run(src, WaitsForTheDeletePhase(str(dst), watch), watch, mode=SYNC)
    assert s.exit_code == 0 and s.files_deleted == 1 and watch.deleting.is_set()
