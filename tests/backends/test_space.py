"""Free space as SFTP and SMB servers report it, the check before writing to them, and
sync's --max-delete at a remote destination: against the real sshd and smbd."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.mover.backends import open_backend
from ferry.mover.backends.base import Backend
from ferry.mover.endpoints import parse_endpoint
from ferry.mover.errors import ErrorKind
from ferry.mover.options import MiB, MinFree, Mode
from tests.backends.conftest import Remote
from tests.backends.helpers import ok, server_tmpfs, transfer

pytestmark = pytest.mark.servers


@contextlib.contextmanager
def _backend(remote: Remote, sub: str) -> Iterator[Backend]:
    b = open_backend(parse_endpoint(remote.uri(sub)))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def small_share(remote: Remote) -> Iterator[tuple[str, Path]]:
    """A 4 MiB tmpfs below the server's root, owned by the server's user: (sub, mount)."""
    with server_tmpfs(remote.server, "small") as share:
        yield share


@pytest.mark.parametrize("remote", ["sftp", "smb"], indirect=True)
def test_free_space_is_what_the_server_filesystem_has(remote: Remote, small_share) -> None:
    """statvfs@openssh.com / FileFsFullSizeInformation give the numbers of the filesystem
    holding the root, or its nearest existing parent before the root is created."""
    sub, mnt = small_share
    (mnt / "filler").write_bytes(b"x" * MiB)
    for where in (sub, f"{sub}/not/yet"):
        with _backend(remote, where) as b:
            space = b.free_space()
            st = os.statvfs(mnt)
            assert space is not None, where
            assert space.total == st.f_blocks * st.f_frsize == 4 * MiB, (where, space)
            assert space.available == st.f_bavail * st.f_frsize == 3 * MiB, (where, space)
            assert space.block > 0


@pytest.mark.parametrize("remote", ["sftp", "smb"], indirect=True)
def test_refused_before_anything_is_written(remote: Remote, small_share, tmp_path: Path) -> None:
    sub, mnt = small_share
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(MiB + 1))
    (src / "d").mkdir()
    (src / "d" / "g").write_bytes(os.urandom(500 * 1024))
    (mnt / "filler").write_bytes(b"x" * MiB)  # 3 MiB free, 3.5 MiB wanted
    s = transfer(str(src), remote.uri(f"{sub}/dst"), retries=0)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.DESTINATION_FULL, s.to_json()
    assert f"({3 * MiB} bytes) is free" in str(s.fatal) and "127.0.0.1" in str(s.fatal)
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"], "the preflight wrote something"
    (mnt / "filler").unlink()  # now it fits, with 1 % of 4 MiB left over
    ok(transfer(str(src), remote.uri(f"{sub}/dst"), retries=0))
    assert (mnt / "dst" / "d" / "g").read_bytes() == (src / "d" / "g").read_bytes()
    (mnt / "dst" / "f0").unlink()
    s = transfer(str(src), remote.uri(f"{sub}/dst"), min_free=MinFree(percent=90))
    assert s.fatal is not None and s.fatal.kind == ErrorKind.DESTINATION_FULL, s.to_json()
    assert not (mnt / "dst" / "f0").exists()


@pytest.mark.parametrize("remote", ["sftp", "smb"], indirect=True)
def test_max_delete_at_a_remote(remote: Remote, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_bytes(b"k")
    sub = remote.fresh("maxdel")
    ok(transfer(str(src), remote.uri(sub)))
    disk = remote.server.root / sub
    pw = pwd.getpwnam(remote.server.user)
    for name in ("x1", "x2", "xd", "xd/y"):
        p = disk / name
        p.mkdir() if name == "xd" else p.write_bytes(b"x")
        os.chown(p, pw.pw_uid, pw.pw_gid)  # the server's user may delete them
    (src / "new").write_bytes(b"n")
    s = transfer(str(src), remote.uri(sub), mode=Mode.SYNC, max_delete=3)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.DELETE_LIMIT, s.to_json()
    assert s.exit_code == 14 and s.files_deleted == 0 and s.files_copied == 1
    assert sorted(p.name for p in disk.rglob("*")) == ["keep", "new", "x1", "x2", "xd", "y"]
    ok(transfer(str(src), remote.uri(sub), mode=Mode.SYNC, max_delete=4))
    assert sorted(p.name for p in disk.rglob("*")) == ["keep", "new"]
