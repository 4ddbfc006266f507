"""`--preserve acls` on this machine's filesystem (ferry/mover/acl.py, the local backend, the
planner's metadata compare, `ferry verify`) and the destination root's metadata.

ACLs are set through Ferry's own libacl binding (setfacl is not installed). A filesystem
without ACLs fails these tests (skip only in a partial run, tests/strict.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.mover import acl
from ferry.mover.acl import AclText
from ferry.mover.endpoints import LocalEndpoint, parse_endpoint
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import PRESERVE_FLAGS, Delta, MiB, Mode, Options, Preserve
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer
from ferry.mover.verify import Difference, verify_trees
from tests.asuser import as_user, shared_dir
from tests.conftest import run_ferry
from tests.strict import unavailable

ACLS = Preserve(acls=True)
FILE_ACL = "u::rw-,u:4242:r--,g::r--,m::r--,o::---"
DIR_ACL = "u::rwx,g::r-x,g:4343:rwx,m::rwx,o::r-x"
DIR_DEFAULT = "u::rwx,g::r-x,g:4444:r-x,m::r-x,o::---"
ROOT_ACL = "u::rwx,u:4545:rwx,g::r-x,m::rwx,o::---"
OLD = 1_500_000_000_000_000_000  # an mtime, ns


def make_tree(src: Path) -> None:
    """ACLs on a small file (a batch), a chunked one, a directory (access and default) and
    the root; a file without one in that directory (it must not inherit its default)."""
    why = acl.unavailable()
    if why is not None:
        unavailable(why)
    (src / "sub").mkdir(parents=True)
    (src / "f").write_bytes(b"small")
    (src / "big").write_bytes(os.urandom(3 * MiB))
    (src / "sub" / "plain").write_bytes(b"no acl here")
    os.chmod(src / "sub" / "plain", 0o640)
    try:
        acl.set_path(str(src / "f"), AclText(FILE_ACL), False)
    except OSError as exc:
        unavailable(f"{src} holds no POSIX ACLs: {exc}")
    acl.set_path(str(src / "big"), AclText(FILE_ACL), False)
    acl.set_path(str(src / "sub"), AclText(DIR_ACL, DIR_DEFAULT), True)
    acl.set_path(str(src), AclText(ROOT_ACL), True)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    make_tree(src)
    os.utime(src, ns=(OLD, OLD))
    return src, tmp_path / "dst"


def copy(src: Path, dst: Path, **kw: object) -> Summary:
    options = Options(preserve=kw.pop("preserve", ACLS), chunk_size=MiB, **kw)  # type: ignore[arg-type]
    summary = run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), options)
    assert summary.fatal is None and summary.error_count == 0, (summary.fatal, summary.errors)
    return summary


def verify(src: Path, dst: Path, preserve: Preserve = ACLS) -> list[Difference]:
    found: list[Difference] = []
    summary = verify_trees(
        LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(preserve=preserve), found.append
    )
    assert summary.fatal is None, summary.fatal
    return found


def acls_of(root: Path) -> dict[str, AclText | None]:
    out: dict[str, AclText | None] = {".": acl.read_path(str(root), True)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = acl.read_path(p, name in dirs)
    return out


def ctimes(root: Path) -> dict[str, int]:
    """Change times: any chmod, ACL or write at the destination moves one."""
    out = {".": root.stat().st_ctime_ns}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = os.lstat(p).st_ctime_ns
    return out


def test_acls_copied_verified_and_a_second_run_is_a_no_op(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    copy(src, dst)
    assert acls_of(dst) == acls_of(src)
    assert acl.read_path(str(dst / "sub"), True) == AclText(DIR_ACL, DIR_DEFAULT)
    # The source's sub/plain has none; dst/sub's default ACL must not have given it one.
    assert acl.read_path(str(dst / "sub" / "plain"), False) == AclText()
    assert (dst / "sub" / "plain").stat().st_mode & 0o777 == 0o640
    assert verify(src, dst) == []
    before = ctimes(dst)
    again = copy(src, dst)
    assert again.files_copied == again.files_updated == again.bytes_transferred == 0
    assert ctimes(dst) == before  # nothing was set again, the root included


def test_a_changed_acl_is_reapplied_without_sending_data(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    copy(src, dst)
    acl.set_path(str(src / "f"), AclText("u::rw-,u:4242:rw-,g::r--,m::rw-,o::---"), False)
    acl.set_path(str(src / "big"), AclText(), False)  # an ACL removed at the source
    acl.set_path(str(src / "sub"), AclText(DIR_ACL), True)  # its default ACL removed
    found = {(d.path, d.what) for d in verify(src, dst)}
    # f's new mask (m::rw-) is its mode's group bits too; mtimes did not move.
    assert found == {("f", "acls"), ("f", "mode"), ("big", "acls"), ("sub", "acls")}, found
    s = copy(src, dst)
    assert s.bytes_transferred == 0 and s.files_copied == s.files_updated == 0, s
    assert acls_of(dst) == acls_of(src)
    assert acl.read_path(str(dst / "sub"), True) == AclText(DIR_ACL, "")
    assert verify(src, dst) == []


def test_a_file_rebuilt_from_a_delta_takes_its_new_acl(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    copy(src, dst)
    with open(src / "big", "r+b") as f:
        f.seek(1000)
        f.write(b"changed")
    acl.set_path(str(src / "big"), AclText("u::rw-,u:99:rwx,g::r--,m::rwx,o::---"), False)
    s = copy(src, dst, delta=Delta.ON)
    assert s.files_updated == 1 and s.bytes_matched > 2 * MiB, s
    assert acl.read_path(str(dst / "big"), False) == acl.read_path(str(src / "big"), False)
    assert verify(src, dst) == []


def test_verify_names_the_acl_that_differs(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    copy(src, dst)
    acl.set_path(str(dst / "sub"), AclText(DIR_ACL, "u::rwx,g::r-x,o::r-x"), True)
    acl.set_path(str(dst / "f"), AclText(), False)
    os.utime(dst / "sub", ns=(os.stat(src / "sub").st_mtime_ns,) * 2)
    r = run_ferry("verify", src, dst, "--preserve", "+acls", check_rc=1)
    lines = sorted(line.split(None, 2) for line in r.stdout.splitlines() if line.strip())
    assert lines == [
        ["acls", "f", f"(access {FILE_ACL} != none)"],
        ["acls", "sub", f"(default {DIR_DEFAULT} != u::rwx,g::r-x,o::r-x)"],
    ], r.stdout
    # Without the flag nothing of this is compared.
    assert run_ferry("verify", src, dst).rc == 0


def test_the_cli_copies_them_and_reports_a_second_run_as_nothing_to_do(
    trees: tuple[Path, Path],
) -> None:
    src, dst = trees
    run_ferry("copy", src, dst, "--preserve", "+acls", "--json")
    assert acls_of(dst) == acls_of(src)
    s = run_ferry("sync", src, dst, "--preserve", "+acls", "--json").summary
    assert s["filesCopied"] == s["filesUpdated"] == s["bytesTransferred"] == 0, s


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/x",
        "sftp://host/x",
        "smb://host/share/x",
    ],
)
@pytest.mark.parametrize("side", ["source", "destination"])
def test_refused_where_acls_cannot_be_held(uri: str, side: str, tmp_path: Path) -> None:
    """Refused before connecting (no server runs here), naming the endpoint's kind. A
    ferry:// server is asked what it offers instead (tests/wire/test_acls.py)."""
    local = LocalEndpoint(str(tmp_path))
    remote = parse_endpoint(uri)
    src, dst = (remote, local) if side == "source" else (local, remote)
    kind = uri.partition(":")[0]
    s = run_transfer(src, dst, Options(preserve=ACLS))
    assert s.fatal is not None and s.fatal.kind == ErrorKind.USAGE, s.fatal
    assert f"--preserve acls: {kind} endpoints cannot hold POSIX ACLs" in str(s.fatal)
    v = verify_trees(src, dst, Options(preserve=ACLS), lambda d: None)
    assert v.fatal is not None and "--preserve acls" in str(v.fatal), v.fatal


def test_all_leaves_acls_out_unless_added(tmp_path: Path) -> None:
    """As rsync's -a leaves out -A: `all` keeps working towards S3, `all,+acls` is refused."""
    assert not Preserve.parse("all").acls and not Preserve().acls
    assert Preserve.parse("all").flags() == [f for f in PRESERVE_FLAGS if f != "acls"]
    assert Preserve.parse("all,+acls").flags() == list(PRESERVE_FLAGS)
    assert not Preserve.parse("all,-owners").owners
    with pytest.raises(FerryError, match="after 'all' give"):
        Preserve.parse("all,owners")
    r = run_ferry("copy", tmp_path, "s3://bucket/x", "--preserve", "all,+acls", check_rc=2)
    assert "--preserve acls: s3 endpoints cannot hold POSIX ACLs" in r.stderr, r.stderr


def test_refused_when_libacl_cannot_be_loaded(
    trees: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = trees
    monkeypatch.setattr(acl, "_load", lambda: "libacl (libacl.so.1) cannot be loaded: gone")
    s = run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(preserve=ACLS))
    assert s.fatal is not None and "libacl (libacl.so.1) cannot be loaded" in str(s.fatal)
    assert not dst.exists()


# -- the destination root's own metadata (with and without ACLs) ---------------------------------


@pytest.mark.parametrize("exists", [False, True])
def test_the_destination_root_gets_the_source_roots_mode_and_times(
    tmp_path: Path, exists: bool
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.chmod(src, 0o750)
    os.utime(src, ns=(OLD, OLD))
    if exists:
        dst.mkdir(mode=0o777)
        os.chmod(dst, 0o777)
    copy(src, dst, preserve=Preserve())
    st = dst.stat()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o750, OLD)
    assert verify(src, dst, Preserve()) == []
    before = ctimes(dst)
    copy(src, dst, preserve=Preserve(), mode=Mode.SYNC)
    assert ctimes(dst) == before
    os.utime(dst, ns=(OLD + 10**9, OLD + 10**9))
    assert [(d.path, d.what) for d in verify(src, dst, Preserve())] == [("", "mtime")]
    copy(src, dst, preserve=Preserve())
    assert dst.stat().st_mtime_ns == OLD


def test_without_times_and_perms_the_root_is_left_alone(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    os.chmod(dst, 0o700)
    os.chmod(src, 0o755)
    os.utime(src, ns=(OLD, OLD))
    copy(src, dst, preserve=Preserve.parse("none"))
    st = dst.stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_mtime_ns != OLD


def test_a_single_file_leaves_its_destination_directory_alone(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_bytes(b"x")
    os.chmod(src, 0o700)
    os.chmod(dst, 0o755)
    os.utime(src, ns=(OLD, OLD))
    run_ferry("copy", src / "f", f"{dst}/")
    assert (dst / "f").read_bytes() == b"x"
    assert dst.stat().st_mode & 0o777 == 0o755 and dst.stat().st_mtime_ns != OLD


# -- untrusted ACL text ----------------------------------------------------------------------------

_ENTRY = st.one_of(
    st.sampled_from(["u::", "g::", "o::", "m::"]),
    st.integers(0, 2**32).map(lambda n: f"u:{n}:"),
    st.integers(0, 2**32).map(lambda n: f"g:{n}:"),
).flatmap(lambda tag: st.sampled_from(["r", "w", "x", "-"]).map(lambda p: tag + p * 3))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="ugmo:,rwx-0123456789", max_size=80),
        st.lists(_ENTRY, max_size=8).map(",".join),
        st.text(max_size=40),
    )
)
def test_parse_takes_only_valid_acls(text: str) -> None:
    """Anything a peer could send: either refused with a USAGE error, or made canonical
    (parsing that again gives the same text, which libacl takes back)."""
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))
    try:
        got = acl.parse(text, "peer ACL")
    except FerryError as err:
        assert err.kind == ErrorKind.USAGE and "peer ACL" in str(err)
        return
    assert acl.parse(got) == got
    assert len(got) <= acl.MAX_TEXT


def test_parse_bounds_and_canonical_form() -> None:
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))
    assert acl.parse("u::rw-,g::r--,o::---") == "u::rw-,g::r--,o::---"
    assert acl.parse("o::r,g:7:w,u::rw,g::r,m::rw") == "u::rw-,g::r--,g:7:-w-,m::rw-,o::r--"
    for bad in ("u:root:rwx,g::r,o::r", "u::rw-\n", "u::rw-," * 5000, "u::rw-,g::r--"):
        with pytest.raises(FerryError) as err:
            acl.parse(bad)
        assert err.value.kind == ErrorKind.USAGE


def test_an_acl_larger_than_the_filesystem_holds_is_that_files_error(
    trees: tuple[Path, Path],
) -> None:
    """ext4 keeps an ACL in one xattr (~500 entries): a longer valid one fails that file as an
    I/O error naming the cause, not as a full destination (which would stop the run)."""
    src, _ = trees
    text = ",".join(["u::rw-", "g::r--", "m::r--", "o::---"] + [f"u:{i}:r--" for i in range(1000)])
    assert acl.parse(text)  # valid: only the filesystem refuses it
    with pytest.raises(OSError, match="more ACL entries than this filesystem holds") as caught:
        acl.set_path(str(src / "f"), AclText(acl.parse(text)), False)
    assert as_ferry_error(caught.value).kind == ErrorKind.IO_ERROR


def test_a_root_owned_by_another_user_is_left_as_it_is() -> None:
    """A non-root mover writing into a volume whose mount point belongs to root: the files
    are copied, the root's mode and times are left (a warning, not an error), and verify
    does not count the root it could not have set."""
    with shared_dir() as base:
        src, dst = base / "src", base / "dst"
        src.mkdir(mode=0o755)
        (src / "f").write_bytes(b"x")
        os.chmod(src / "f", 0o644)
        os.utime(src, ns=(OLD, OLD))
        dst.mkdir()
        os.chmod(dst, 0o777)  # root's, writable by all: a volume's mount point

        def mover() -> str:
            s = run_transfer(
                LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(preserve=Preserve())
            )
            found: list[Difference] = []
            v = verify_trees(
                LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(), found.append
            )
            ok = s.fatal is None and s.error_count == 0 and s.files_copied == 1
            return repr((ok, v.fatal is None, len(found)))

        assert as_user(mover) == "(True, True, 0)"
        assert (dst / "f").read_bytes() == b"x"
        st = dst.stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o777)  # left as it was
