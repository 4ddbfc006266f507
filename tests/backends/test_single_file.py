"""A single file to and from each remote (S3, SFTP, SMB), and --rename there: the
parent + name split of every endpoint kind, on real servers."""

from __future__ import annotations

import os
from pathlib import Path

from ferry.mover.endpoints import parse_endpoint
from ferry.mover.errors import ErrorKind
from ferry.mover.options import Mode, Options
from ferry.mover.verify import Difference, verify_trees
from tests.backends.conftest import Remote
from tests.backends.helpers import ok, transfer
from tests.backends.tree import CHUNK


def test_single_file_up_down_and_again(remote: Remote, tmp_path: Path) -> None:
    f = tmp_path / "big.iso"
    f.write_bytes(os.urandom(2 * CHUNK + 123))  # chunked on the way
    base = remote.fresh("one")
    # into a directory named with '/' (made), and to a name (its parent made)
    assert ok(transfer(str(f), remote.uri(f"{base}/isos/"))).files_copied == 1
    assert ok(transfer(str(f), remote.uri(f"{base}/named.iso"))).files_copied == 1
    disk = remote.disk(base)
    if disk is not None:
        assert (disk / "isos" / "big.iso").read_bytes() == f.read_bytes()
        assert (disk / "named.iso").read_bytes() == f.read_bytes()
    # the second runs have nothing to do; an existing directory named without '/' is one
    for dst in (f"{base}/isos/", f"{base}/isos", f"{base}/named.iso"):
        again = ok(transfer(str(f), remote.uri(dst)))
        assert (again.files_copied, again.files_updated, again.files_skipped) == (0, 0, 1), dst
        assert again.bytes_transferred == 0
    found: list[Difference] = []
    s = verify_trees(
        parse_endpoint(str(f)),
        parse_endpoint(remote.uri(f"{base}/named.iso")),
        Options(),
        found.append,
    )
    assert s.exit_code == 0 and s.files_verified == 1 and found == []
    # down again: into a local directory, and to a name
    down = tmp_path / "down"
    down.mkdir()
    assert ok(transfer(remote.uri(f"{base}/named.iso"), str(down))).files_copied == 1
    assert (down / "named.iso").read_bytes() == f.read_bytes()
    ok(transfer(remote.uri(f"{base}/isos/big.iso"), str(tmp_path / "x" / "y.iso")))
    assert (tmp_path / "x" / "y.iso").read_bytes() == f.read_bytes()
    # a remote file onto itself, through its directory
    s = transfer(remote.uri(f"{base}/named.iso"), remote.uri(f"{base}/"))
    assert s.fatal is not None and s.fatal.kind == ErrorKind.OVERLAP


def test_rename_and_second_run_on_a_remote(remote: Remote, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d.txt").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "d.txt" / "b.txt").write_bytes(os.urandom(1000))
    sub = remote.fresh("ren")
    dst = remote.uri(sub)
    rules = ("s/\\.txt$/.md/",)
    assert ok(transfer(str(src), dst, Mode.SYNC, rename=rules)).files_copied == 2
    disk = remote.disk(sub)
    if disk is not None:
        got = {str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file()}
        assert got == {"a.md", "d.md/b.md"}
    again = ok(transfer(str(src), dst, Mode.SYNC, rename=rules))
    assert (again.files_copied, again.files_updated, again.files_deleted) == (0, 0, 0)
    assert again.files_skipped == 2 and again.bytes_transferred == 0
