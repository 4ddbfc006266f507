"""A plan counts what the copy it plans does: `ferry plan` / `--dry-run` and `ferry copy`
/ `ferry sync` book through the same ledger (ferry/mover/engine/ledger.py), so their
numbers cannot drift apart.

In-process (`transfer_between`), so that `make mutate` sees these guarantees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.mover.backends.local import LocalBackend
from ferry.mover.options import Compare, ErrorPolicy, MiB, Mode, Options
from ferry.mover.plan import Action, Op
from ferry.mover.result import Summary
from ferry.mover.transfer import transfer_between
from tests.engine.treeutil import assert_same_tree, snapshot

# Every counter of the summary a plan states in advance (a plan reads and verifies nothing).
COUNTERS = (
    "filesCopied",
    "filesUpdated",
    "filesSkipped",
    "filesDeleted",
    "filesFailed",
    "dirsCreated",
    "linksCreated",
    "bytesTransferred",
    "bytesSkipped",
    "bytesDeleted",
    "errorCount",
)


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def same_times(src: Path, dst: Path, rel: str) -> None:
    st = os.lstat(src / rel)
    os.utime(dst / rel, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def mixed_trees(tmp_path: Path) -> tuple[Path, Path]:
    """New, changed (another size; same size, other bytes), unchanged, deleted, symlink
    (new and unchanged), big enough for chunks, a new directory, and entries whose type
    changed (a directory where the source has a file or a link, a file where it has a
    directory)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(
        src,
        {
            "new": b"n" * 10,
            "sub/new": os.urandom(300 * 1024),
            "newdir/f": b"f",
            "grown": b"g" * 20,
            "same_size": b"A" * 50,
            "unchanged": b"u" * 30,
            "big": os.urandom(2 * MiB + 5),
            "dir_for_file/x": b"x",
            "file_for_dir": b"y" * 7,
        },
    )
    write(
        dst,
        {
            "grown": b"g" * 5,
            "same_size": b"B" * 50,
            "unchanged": b"u" * 30,
            "stale": b"s" * 3,
            "stale_dir/a": b"a" * 4,
            "stale_dir/b/c": b"c" * 6,
            "dir_for_file": b"old",
            "file_for_dir/inner": b"i" * 9,
            "link_for_dir/inner": b"j" * 2,
        },
    )
    os.symlink("new", src / "link_new")
    os.symlink("unchanged", src / "link_same")
    os.symlink("new", src / "link_for_dir")
    os.symlink("unchanged", dst / "link_same")
    for rel in ("unchanged", "link_same"):
        same_times(src, dst, rel)
    os.utime(dst / "same_size", ns=(1, 1))  # older: an update by time; by content under checksum
    return src, dst


def run(src: Path, dst: Path, actions: list[Action] | None = None, **opts: object) -> Summary:
    s, d = LocalBackend(str(src)), LocalBackend(str(dst))
    return transfer_between(
        lambda: (s, d),
        Options(chunk_size=MiB, error_policy=ErrorPolicy.SKIP, **opts),  # type: ignore[arg-type]
        on_action=actions.append if actions is not None else None,
    )


def counts(s: Summary) -> dict[str, object]:
    doc = s.to_json()
    return {k: doc[k] for k in COUNTERS}


@pytest.mark.parametrize("mode", [Mode.COPY, Mode.SYNC])
@pytest.mark.parametrize("compare", [Compare.SIZE_MTIME, Compare.CHECKSUM])
def test_the_plan_counts_what_the_copy_does(tmp_path: Path, mode: Mode, compare: Compare) -> None:
    src, dst = mixed_trees(tmp_path)
    before = snapshot(dst)
    shown: list[Action] = []
    planned = run(src, dst, shown, mode=mode, compare=compare, dry_run=True)
    assert snapshot(dst) == before, "the plan changed the destination"
    ops = {a.rel: a.op for a in shown}  # what `ferry plan` prints: checked files resolved
    assert Op.CHECK not in ops.values() and ops["same_size"] == Op.UPDATE
    assert ops.get("unchanged") == (Op.SKIP if compare == Compare.CHECKSUM else None)
    done = run(src, dst, mode=mode, compare=compare)
    assert counts(planned) == counts(done)
    assert planned.dry_run and planned.files_verified == 0
    if mode == Mode.SYNC:
        assert done.exit_code == 0, done.errors
        assert_same_tree(src, dst)
        assert (done.files_copied, done.files_updated) == (5, 3)
        assert (done.files_deleted, done.links_created) == (5, 2)
    else:  # a copy refuses to remove a directory for a file or a link (and goes on: skip)
        assert [e.path for e in done.errors] == ["file_for_dir", "link_for_dir"]
        assert [e.path for e in planned.errors] == ["file_for_dir", "link_for_dir"]
    again = run(src, dst, mode=mode, compare=compare, dry_run=True)
    assert counts(again) == counts(run(src, dst, mode=mode, compare=compare))
