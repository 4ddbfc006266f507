"""copy, sync, plan and verify with ferry:// as destination and as source, real processes."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import run_ferry
from tests.wire.conftest import Server

MTIME = 1_600_000_000_123_456_789


def make_tree(src: Path) -> None:
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "small.txt").write_text("hello\n")
    (src / "sub" / "text").write_bytes(b"line\n" * 200_000)  # 1 MB, compressible
    (src / "sub" / "deep" / "rand").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "big").write_bytes(os.urandom(20 * 1024 * 1024 + 5))  # chunked (over 16 MiB)
    (src / "zero").write_bytes(b"")
    (src / "name with \\ backslash").write_text("kept as one name")
    os.symlink("sub/text", src / "link")
    os.symlink("/etc/passwd", src / "abs-link")
    os.link(src / "small.txt", src / "hard")
    (src / "sub" / "text").chmod(0o640)
    (src / "sub" / "deep").chmod(0o750)
    for p in (src / "small.txt", src / "sub" / "text", src / "big"):
        os.utime(p, ns=(MTIME, MTIME))


def same_tree(a: Path, b: Path) -> None:
    names_a = sorted(str(p.relative_to(a)) for p in a.rglob("*"))
    names_b = sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    assert names_a == names_b
    for name in names_a:
        pa, pb = a / name, b / name
        sa, sb = pa.lstat(), pb.lstat()
        assert oct(sa.st_mode) == oct(sb.st_mode), name
        if pa.is_symlink():
            assert os.readlink(pa) == os.readlink(pb), name
        elif pa.is_file():
            assert pa.read_bytes() == pb.read_bytes(), name
            assert sa.st_mtime_ns == sb.st_mtime_ns, name


def test_copy_to_and_from_ferry(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    make_tree(src)
    dest = server.url("dst")
    r = run_ferry("copy", src, dest, "--json").summary
    assert (r["filesCopied"], r["linksCreated"], r["filesFailed"]) == (6, 3, 0), r
    same_tree(src, server.root / "dst")
    served = server.root / "dst"
    assert os.stat(served / "hard").st_ino == os.stat(served / "small.txt").st_ino

    again = run_ferry("copy", src, dest, "--json").summary
    assert again["filesCopied"] == 0 and again["bytesTransferred"] == 0
    assert again["filesSkipped"] >= 8

    run_ferry("verify", src, dest)
    back = tmp_path / "back"
    r = run_ferry("copy", dest, back, "--json").summary
    assert (r["filesCopied"], r["linksCreated"], r["filesFailed"]) == (6, 3, 0), r
    same_tree(src, back)
    run_ferry("verify", dest, back)
    assert not list(served.rglob(".~ferry.*")), "no partials or temps left behind"


def test_sync_and_plan_with_deletes(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    make_tree(src)
    dest = server.url("dst")
    run_ferry("copy", src, dest)
    (src / "small.txt").write_text("changed, and longer\n")
    (src / "sub" / "deep" / "rand").unlink()
    (src / "new").write_bytes(b"n" * 1000)

    plan = run_ferry("plan", "--sync", src, dest, "--json").summary
    assert plan["filesDeleted"] == 1 and plan["filesCopied"] == 1 and plan["filesUpdated"] == 1
    assert (server.root / "dst" / "sub" / "deep" / "rand").exists(), "plan changes nothing"

    r = run_ferry("sync", src, dest, "--json").summary
    assert r["filesDeleted"] == 1 and r["filesCopied"] == 1 and r["filesUpdated"] == 1
    same_tree(src, server.root / "dst")
    diff = run_ferry("verify", src, dest, check_rc=None)
    assert diff.rc == 0, diff.stderr

    (server.root / "dst" / "small.txt").write_text("tampered at the server\n")
    os.utime(server.root / "dst" / "small.txt", ns=(MTIME, MTIME))
    bad = run_ferry("verify", src, dest, check_rc=1)
    assert "small.txt" in bad.stdout + bad.stderr


def test_sync_from_ferry_to_local(tmp_path: Path, server: Server) -> None:
    make_tree(server.root / "tree")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale").write_text("goes")
    r = run_ferry("sync", server.url("tree"), dst, "--json").summary
    assert r["filesDeleted"] == 1
    same_tree(server.root / "tree", dst)


def test_bad_endpoints_are_refused_by_name(tmp_path: Path, server: Server) -> None:
    r = run_ferry("copy", tmp_path, f"ferry://127.0.0.1:{server.port}/x?tls_ca=a", check_rc=2)
    assert "tls_cert=FILE" in r.stderr and "tls_key=FILE" in r.stderr
    r = run_ferry("copy", tmp_path, server.url("x", colour="blue"), check_rc=2)
    assert "unknown option 'colour'" in r.stderr
    r = run_ferry("copy", tmp_path, server.url("../up"), check_rc=2)
    assert "inside the server's root" in r.stderr
    r = run_ferry("copy", tmp_path, tmp_path / "o", "--compress", "on", check_rc=2)
    assert "--compress on" in r.stderr


def test_verify_full_fsync_file_and_ferry_to_ferry(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    make_tree(src)
    r = run_ferry(
        "copy", src, server.url("full"), "--verify", "full", "--fsync", "file", "--json"
    ).summary
    assert r["filesVerified"] == 6 and r["filesFailed"] == 0, r
    same_tree(src, server.root / "full")
    # one server to itself, another path: both ends are ferry://
    r = run_ferry("copy", server.url("full"), server.url("again"), "--json").summary
    assert r["filesCopied"] == 6 and r["filesFailed"] == 0, r
    same_tree(src, server.root / "again")
    # the same path on both sides is refused as an overlap
    r = run_ferry("copy", server.url("full"), server.url("full/sub"), check_rc=4)
    assert "inside the source" in r.stderr


def test_holes_of_a_sparse_file_stay_holes_at_the_server(tmp_path: Path, server: Server) -> None:
    """Keeping holes (sparse is preserved by default) only the data crosses; the server
    sets the size and the holes stay unallocated there (its file system permitting).
    With --preserve=-sparse they cross as zeros."""
    mib = 1 << 20
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.write(os.urandom(mib))
        f.seek(40 * mib)
        f.write(os.urandom(mib))
        f.truncate(64 * mib)  # a hole at the end too
    want = (src / "disk.img").read_bytes()
    before = server.stats()
    r = run_ferry("copy", src, server.url("kept"), "--preserve", "+sparse", "--json").summary
    crossed = server.stats()["wire_in"] - before["wire_in"]
    assert r["filesCopied"] == 1 and "sparse" not in r["preserveDropped"], r
    assert crossed < 4 * mib, crossed
    out = server.root / "kept" / "disk.img"
    assert out.read_bytes() == want
    assert out.stat().st_blocks * 512 < 8 * mib, "holes were filled in"
    run_ferry("verify", src, server.url("kept"))

    before = server.stats()
    run_ferry("copy", src, server.url("filled"), "--compress", "off", "--preserve=-sparse")
    assert server.stats()["wire_in"] - before["wire_in"] >= 64 * mib
    assert (server.root / "filled" / "disk.img").read_bytes() == want


def test_a_ferry_destination_root_gets_the_source_roots_mode_and_times(
    tmp_path: Path, server: Server
) -> None:
    """As rsync for `src/` into `dst/`: the served directory written into takes the source
    root's mode and mtime, on the first run and after it drifted; a second run is a no-op."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.chmod(src, 0o750)
    os.utime(src, ns=(MTIME, MTIME))
    dest = server.url("dst")
    run_ferry("copy", src, dest, "--json")
    served = server.root / "dst"
    assert (served.stat().st_mode & 0o7777, served.stat().st_mtime_ns) == (0o750, MTIME)
    assert run_ferry("verify", src, dest).rc == 0
    os.chmod(served, 0o755)
    assert "mode       ." in run_ferry("verify", src, dest, check_rc=1).stdout
    run_ferry("copy", src, dest, "--json")
    assert served.stat().st_mode & 0o7777 == 0o750
    ctime = served.stat().st_ctime_ns
    run_ferry("copy", src, dest, "--json")
    assert served.stat().st_ctime_ns == ctime
