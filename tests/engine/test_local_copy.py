"""The engine end to end on local trees, through the real `ferry` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FERRY, run_ferry
from tests.engine.treeutil import assert_same_tree, snapshot

MiB = 1 << 20


def make_rich_tree(root: Path) -> None:
    (root / "docs/deep/er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs/readme.md").write_text("hello\n")
    (root / "docs/deep/er/data.bin").write_bytes(os.urandom(3 * MiB + 123))
    (root / "empty.txt").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(40 * MiB + 7))
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o751)
    os.chmod(root / "docs/deep", 0o700)
    os.symlink("docs/readme.md", root / "link-to-readme")
    os.symlink("/etc/passwd", root / "abs-link")
    os.link(root / "docs/readme.md", root / "hardlink.md")
    # A name that is not valid UTF-8 must arrive byte-exact.
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1.txt"), "wb") as f:
        f.write(b"latin-1 name")
    (root / "unicodé ✓ name with spaces.txt").write_text("u")
    with open(root / "sparse.img", "wb") as f:
        f.truncate(64 * MiB)
        f.seek(20 * MiB)
        f.write(b"island of data")
    os.utime(root / "docs/readme.md", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "docs", ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))


def test_copy_preserves_everything_and_second_run_moves_nothing(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    make_rich_tree(src)
    first = run_ferry("copy", src, dst, "--json", "--chunk-size", "4M").summary
    assert first["status"] == "ok"
    assert first["filesCopied"] == 8 and first["linksCreated"] == 3  # 2 symlinks + 1 hard link
    assert first["filesVerified"] == 8
    assert_same_tree(src, dst)
    assert os.stat(dst / "hardlink.md").st_ino == os.stat(dst / "docs/readme.md").st_ino
    assert os.stat(dst / "sparse.img").st_blocks * 512 < 4 * MiB, "holes were filled in"
    assert os.stat(dst / "docs/readme.md").st_mtime_ns == 1_600_000_000_123_456_789
    assert os.path.exists(os.path.join(os.fsencode(dst), b"caf\xe9-latin1.txt"))
    second = run_ferry("copy", src, dst, "--json").summary
    assert (
        second["bytesTransferred"] == 0
        and second["filesCopied"] == 0
        and second["filesUpdated"] == 0
    )
    assert (
        second["filesSkipped"] == first["filesCopied"] + 3
    )  # symlinks and the hard link count as entries
    assert run_ferry("verify", src, dst).rc == 0


def test_no_verify_uses_the_same_tree_result(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    make_rich_tree(src)
    s = run_ferry("copy", src, dst, "--no-verify", "--json", "--chunk-size", "4M").summary
    assert s["filesVerified"] == 0 and s["filesCopied"] == 8
    assert_same_tree(src, dst)


def test_update_changed_file_and_checksum_mode(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    (src / "a.txt").write_bytes(b"A" * 1000)
    run_ferry("copy", src, dst)
    st = os.stat(src / "a.txt")
    # Same size and mtime, different content: size+mtime cannot see it; verify and --checksum can.
    (dst / "a.txt").write_bytes(b"B" * 1000)
    os.utime(dst / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_ferry("copy", src, dst, "--json").summary["filesUpdated"] == 0
    v = run_ferry("verify", src, dst, check_rc=1)
    assert "content" in v.stdout and "a.txt" in v.stdout
    fixed = run_ferry("copy", src, dst, "--checksum", "--json").summary
    assert fixed["filesUpdated"] == 1
    assert (dst / "a.txt").read_bytes() == b"A" * 1000
    assert run_ferry("copy", src, dst, "--checksum", "--json").summary["filesUpdated"] == 0


def test_sync_deletes_last_and_never_outside(trees: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = trees
    (src / "keep").mkdir()
    (src / "keep/file").write_text("k")
    run_ferry("copy", src, dst)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("must survive")
    (dst / "stale.txt").write_text("old")
    (dst / "stale-dir/sub").mkdir(parents=True)
    (dst / "stale-dir/sub/x").write_text("x")
    os.symlink(
        outside, dst / "escape"
    )  # a link out of the destination: remove the link, not its target
    os.symlink(outside, dst / "keep/escape2")
    plan = run_ferry("plan", "--sync", src, dst)
    assert "delete   stale.txt" in plan.stdout and "delete   escape" in plan.stdout
    assert (dst / "stale.txt").exists(), "plan changed something"
    planned = run_ferry("plan", "--sync", src, dst, "--json", "--quiet").summary
    assert planned["filesDeleted"] == 4 and planned["bytesDeleted"] == 4  # "old" + "x" + 2 links
    s = run_ferry("sync", src, dst, "--json").summary
    assert s["filesDeleted"] == 4  # stale.txt, stale-dir/sub/x, and both links
    assert (outside / "precious").read_text() == "must survive"
    assert not (dst / "escape").exists() and not os.path.lexists(dst / "escape")
    assert_same_tree(src, dst)


def test_sync_refuses_empty_source_unless_told(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    dst.mkdir()
    (dst / "data").write_text("d")
    r = run_ferry("sync", src, dst, check_rc=2)
    assert "source is empty" in r.stderr and (dst / "data").exists()
    run_ferry("sync", src, dst, "--allow-empty-source")
    assert not (dst / "data").exists()


def test_sync_with_failed_copy_deletes_nothing(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    (src / "ok").write_text("fine")
    (src / "sub").mkdir()
    (src / "sub/f").write_text("x")
    run_ferry("copy", src, dst)
    (dst / "extra").write_text("only at dst")
    (src / "new").write_text("new")
    os.chmod(dst / "sub", 0o500)  # the copy into sub/ will fail for an unprivileged mover
    (src / "sub/g").write_text("g")
    r = run_unprivileged(["sync", str(src), str(dst), "--json", "--error-policy", "skip"])
    os.chmod(dst / "sub", 0o755)
    assert r.rc == 1, r.stderr
    assert r.summary["filesFailed"] == 1 and r.summary["filesDeleted"] == 0
    assert (dst / "extra").exists(), "sync deleted after a failed copy"
    assert (dst / "new").read_text() == "new"


def test_sync_deletes_nothing_when_a_source_directory_cannot_be_listed(
    trees: tuple[Path, Path],
) -> None:
    """An unlistable source directory looks empty: deleting its destination twin (or
    anything else) on that evidence would lose data."""
    src, dst = trees
    (src / "locked").mkdir()
    (src / "locked/f").write_text("f")
    (src / "ok").write_text("ok")
    run_ferry("copy", src, dst)
    (dst / "extra").write_text("only at dst")
    os.chmod(src / "locked", 0)
    try:
        r: Any = run_unprivileged(["sync", str(src), str(dst), "--json", "--error-policy", "skip"])
    finally:
        os.chmod(src / "locked", 0o755)
    assert r.rc == 1, r.stderr
    assert r.summary["filesDeleted"] == 0 and r.summary["errorCount"] == 1
    assert [e["path"].rsplit("/", 1)[-1] for e in r.summary["errors"]] == ["locked"]
    assert (dst / "extra").exists() and (dst / "locked/f").read_text() == "f"


def test_sync_never_deletes_through_a_symlinked_parent(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    """A destination directory replaced by a link to elsewhere: sync replaces the link,
    and what the link pointed at is left alone."""
    src, dst = trees
    (src / "sub").mkdir()
    (src / "sub/a").write_text("a")
    run_ferry("copy", src, dst)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("must survive")
    (dst / "sub/a").unlink()
    (dst / "sub").rmdir()
    os.symlink(outside, dst / "sub")
    run_ferry("sync", src, dst)
    assert (outside / "precious").read_text() == "must survive"
    assert not (outside / "a").exists()
    assert not (dst / "sub").is_symlink()
    assert_same_tree(src, dst)


def test_filters(trees: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = trees
    for rel in ("a.py", "b.log", "build/out.py", "pkg/c.py", "pkg/d.txt", "pkg/cache/e.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    rules = tmp_path / "rules"
    rules.write_text("# comment\n- /build/\n- cache/**\n+ *.py\n- **\n")
    run_ferry("copy", src, dst, "--filter-from", rules)
    got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert got == ["a.py", "pkg/c.py"]
    dst2 = tmp_path / "dst2"
    run_ferry("copy", src, dst2, "--exclude", "*.log", "--exclude", "pkg/**")
    got2 = sorted(str(p.relative_to(dst2)) for p in dst2.rglob("*") if p.is_file())
    assert got2 == ["a.py", "build/out.py"]


def test_manifest_and_json_summary(trees: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = trees
    (src / "x").write_bytes(b"x" * 10)
    (src / "y").write_bytes(os.urandom(5 * MiB))
    manifest = tmp_path / "m.jsonl"
    s = run_ferry("copy", src, dst, "--json", "--manifest", manifest).summary
    for key in (
        "filesCopied",
        "filesSkipped",
        "filesDeleted",
        "filesFailed",
        "bytesTransferred",
        "bytesSkipped",
        "elapsedSeconds",
        "bytesPerSecond",
        "errors",
    ):
        assert key in s
    assert s["bytesTransferred"] == 5 * MiB + 10
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    by_path = {d["path"]: d for d in lines}
    assert set(by_path) == {"x", "y"}
    assert by_path["x"]["size"] == 10 and by_path["x"]["digest"].startswith("b3m1:")
    assert by_path["y"]["mtimeNs"] == os.stat(src / "y").st_mtime_ns
    from ferry.mover.integrity import digest_bytes

    assert by_path["y"]["digest"] == digest_bytes((src / "y").read_bytes())


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["copy", "{tmp}/missing", "{tmp}/d"], 3, "source does not exist"),
        (["copy", "{src}", "{src}/inner"], 4, "destination is inside the source"),
        (["sync", "{src}", "{src}"], 4, "same directory"),
        (["copy", "{src}", "{tmp}/afile"], 2, "not a directory"),
        (["copy", "{src}", "{tmp}/d", "--chunk-size", "3.5k"], 2, "chunk size"),
        (["copy", "{src}", "{tmp}/d", "--bwlimit", "fast"], 2, "--bwlimit"),
        (["copy", "{src}", "{tmp}/d", "--preserve", "colour"], 2, "unknown flag"),
        (["copy", "{src}", "s3:///x"], 2, "no bucket"),
    ],
)
def test_bad_input_is_specific(
    trees: tuple[Path, Path], tmp_path: Path, args: list[str], code: int, text: str
) -> None:
    src, _ = trees
    (src / "f").write_text("f")
    (tmp_path / "afile").write_text("not a dir")
    argv = [a.format(tmp=tmp_path, src=src) for a in args]
    r = run_ferry(*argv, check_rc=code)
    assert text in r.stderr
    assert not (tmp_path / "d").exists() and not (src / "inner").exists()


def run_unprivileged(args: list[str]) -> object:
    """Run ferry as root without the capabilities that bypass file permissions, so
    permission errors are real (plain root reads and writes anything)."""
    drop = "-dac_override,-dac_read_search,-fowner"
    prefix = ["setpriv", f"--bounding-set={drop}", "--inh-caps=-all", "--"]
    import subprocess

    from tests.conftest import FERRY, FerryRun

    proc = subprocess.run([*prefix, *FERRY, *args], capture_output=True, text=True, timeout=300)
    return FerryRun(proc)


def test_unreadable_file_is_named_and_leaves_nothing(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    (src / "readable").write_text("r")
    (src / "secret").write_text("s")
    os.chown(src / "secret", 4321, 4321)
    os.chmod(src / "secret", 0o600)
    r = run_unprivileged(["copy", str(src), str(dst), "--json", "--error-policy", "skip"])
    assert r.rc == 1, r.stderr
    assert r.summary["filesFailed"] == 1
    err = r.summary["errors"][0]
    assert err["path"] == "secret" and err["reason"] == "PermissionDenied"
    assert not (dst / "secret").exists()
    assert (dst / "readable").read_text() == "r"
    assert [n for n in os.listdir(dst) if n.startswith(".~ferry")] == []
    r = run_unprivileged(["copy", str(src), str(dst)])
    assert r.rc == 5 and "secret" in r.stderr


def test_symlink_policies(trees: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = trees
    (src / "real").mkdir()
    (src / "real/f").write_text("inside")
    os.symlink("real/f", src / "inner-link")
    os.symlink("real", src / "dir-link")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, src / "outer-link")
    r = run_ferry("copy", src, dst, "--links", "follow")
    assert (dst / "inner-link").read_text() == "inside" and not os.path.islink(dst / "inner-link")
    assert (dst / "dir-link/f").read_text() == "inside" and not os.path.islink(dst / "dir-link")
    assert not os.path.lexists(dst / "outer-link"), "followed a link out of the tree"
    assert "outer-link" in r.stderr
    dst2 = tmp_path / "dst2"
    run_ferry("copy", src, dst2, "--links", "skip")
    assert sorted(os.listdir(dst2)) == ["real"]


def test_xattrs_and_owners_on_request(trees: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = trees
    f = src / "tagged"
    f.write_text("t")
    os.setxattr(f, "user.ferry-test", b"value")
    os.chown(f, 4321, 4321)
    run_ferry("copy", src, dst, "--preserve", "+xattrs,+owners")
    assert os.getxattr(dst / "tagged", "user.ferry-test") == b"value"
    assert (os.stat(dst / "tagged").st_uid, os.stat(dst / "tagged").st_gid) == (4321, 4321)
    dst2 = tmp_path / "d2"
    run_ferry("copy", src, dst2)
    assert "user.ferry-test" not in os.listxattr(dst2 / "tagged")


N_OWNED = 3 * 512  # past PROCESS_THRESHOLD: forked workers copy most of them


def test_owners_without_privilege_warn_once_and_go_on(trees: tuple[Path, Path]) -> None:
    """A mover that may not chown keeps its own owner, says so once (forked workers for
    small files included), and copies everything."""
    src, dst = trees
    for i in range(N_OWNED):
        (src / f"f{i}").write_text(str(i))
        os.chown(src / f"f{i}", 4321, 4321)
    no_chown = ["setpriv", "--bounding-set=-chown", "--inh-caps=-all", "--"]
    proc = subprocess.run(
        [*no_chown, *FERRY, "copy", str(src), str(dst), "--preserve", "+owners", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("cannot preserve owners") == 1, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["filesCopied"] == N_OWNED
    for i in range(N_OWNED):
        assert (dst / f"f{i}").read_text() == str(i)
        assert os.stat(dst / f"f{i}").st_uid == os.getuid()


def test_directory_xattrs_are_copied(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    (src / "sub").mkdir()
    (src / "sub/f").write_text("f")
    os.setxattr(src / "sub", "user.dir-tag", b"on a directory")
    run_ferry("copy", src, dst, "--preserve", "+xattrs")
    assert os.getxattr(dst / "sub", "user.dir-tag") == b"on a directory"


def test_changed_xattrs_are_resent_and_verified(trees: tuple[Path, Path]) -> None:
    """A changed, added or removed xattr on an otherwise unchanged file or directory is a
    metadata update (not a data copy), and `ferry verify` sees it until then."""
    src, dst = trees
    (src / "sub").mkdir()
    f = src / "sub/f"
    f.write_text("data")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.gone", b"x")
    os.setxattr(src / "sub", "user.d", b"1")
    run_ferry("copy", src, dst, "--preserve", "+xattrs")
    assert run_ferry("verify", src, dst, "--preserve", "+xattrs").rc == 0
    os.setxattr(f, "user.a", b"2")
    os.removexattr(f, "user.gone")
    os.setxattr(f, "user.new", b"n")
    os.setxattr(src / "sub", "user.d", b"2")
    v = run_ferry("verify", src, dst, "--preserve", "+xattrs", check_rc=1)
    assert "xattrs" in v.stdout and "sub/f" in v.stdout, v.stdout
    assert "'user.a' differs" in v.stdout and "'user.gone' extra" in v.stdout, v.stdout
    assert "'user.new' missing" in v.stdout, v.stdout
    assert sum(line.startswith("xattrs") for line in v.stdout.splitlines()) == 2, v.stdout
    # Without xattrs in --preserve, verify does not compare them.
    assert run_ferry("verify", src, dst).rc == 0
    plan = run_ferry("plan", src, dst, "--preserve", "+xattrs")
    assert "meta     sub/f" in plan.stdout, plan.stdout
    again = run_ferry("copy", src, dst, "--preserve", "+xattrs", "--json").summary
    assert again["bytesTransferred"] == 0 and again["filesUpdated"] == 0, again
    got = {n: os.getxattr(dst / "sub/f", n) for n in os.listxattr(dst / "sub/f")}
    assert got == {"user.a": b"2", "user.new": b"n"}
    assert os.getxattr(dst / "sub", "user.d") == b"2"
    assert run_ferry("verify", src, dst, "--preserve", "+xattrs").rc == 0


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("verify", ["--bwlimit", "1M"]),
        ("verify", ["--fsync", "none"]),
        ("verify", ["--manifest", "m.jsonl"]),
        ("verify", ["--chunk-size", "4M"]),
        ("verify", ["--retries", "1"]),
        ("verify", ["--error-policy", "skip"]),
        ("verify", ["--no-verify"]),
        ("verify", ["--checksum"]),
        ("verify", ["--links", "follow"]),
        ("verify", ["--allow-empty-source"]),
        ("plan", ["--bwlimit", "1M"]),
        ("plan", ["--fsync", "file"]),
        ("plan", ["--manifest", "m.jsonl"]),
        ("plan", ["--verify", "full"]),
        ("plan", ["--transfers", "4"]),
        ("copy", ["--allow-empty-source"]),
    ],
)
def test_commands_refuse_flags_they_would_ignore(
    trees: tuple[Path, Path], command: str, flag: list[str]
) -> None:
    src, _ = trees
    (src / "f").write_text("f")
    r = run_ferry(command, src, src, *flag, check_rc=2)
    assert "unrecognized arguments" in r.stderr and flag[0] in r.stderr, r.stderr


@pytest.mark.parametrize("flag", ["--bwlimit", "--chunk-size", "--preserve"])
def test_empty_values_are_refused_naming_the_flag(trees: tuple[Path, Path], flag: str) -> None:
    src, dst = trees
    (src / "f").write_text("f")
    r = run_ferry("copy", src, dst, f"{flag}=", check_rc=2)
    assert f"{flag} ''" in r.stderr, r.stderr
    assert not dst.exists(), "a refused run must not copy"


def test_progress_json_lines(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    (src / "f").write_bytes(os.urandom(MiB))
    r = run_ferry("copy", src, dst, "--progress", "json")
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert events and events[-1]["event"] == "progress"
    assert (
        events[-1]["bytesDone"] == MiB
        and events[-1]["filesDone"] == 1
        and events[-1]["scanComplete"]
    )


def test_snapshot_helper_sees_differences(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("1")
    (b / "f").write_text("2")
    with pytest.raises(AssertionError):
        assert_same_tree(a, b, times=False)
    assert snapshot(a, times=False) != snapshot(b, times=False)


def test_full_verification_reads_the_destination_back(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    (src / "small").write_bytes(os.urandom(1000))
    (src / "medium").write_bytes(os.urandom(3 * MiB + 1))
    (src / "large").write_bytes(os.urandom(10 * MiB))
    s = run_ferry("copy", src, dst, "--verify", "full", "--chunk-size", "2M", "--json").summary
    assert s["filesVerified"] == 3 and s["filesCopied"] == 3
    assert_same_tree(src, dst)


def test_bandwidth_limit_holds(trees: tuple[Path, Path]) -> None:
    """An upper bound on speed is a correctness property: the run may not be faster than asked."""
    src, dst = trees
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(MiB))
    s = run_ferry("copy", src, dst, "--bwlimit", "2M", "--json").summary
    assert s["bytesTransferred"] == 6 * MiB
    assert s["elapsedSeconds"] >= 6 / 2 * 0.85, s["elapsedSeconds"]


@pytest.mark.parametrize("mode", ["file", "none", "end"])
def test_fsync_modes_give_the_same_tree(trees: tuple[Path, Path], mode: str) -> None:
    src, dst = trees
    make_rich_tree(src)
    s = run_ferry("copy", src, dst, "--fsync", mode, "--json", "--chunk-size", "4M").summary
    assert s["filesCopied"] == 8
    assert_same_tree(src, dst)


def test_many_small_files_go_through_worker_processes(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    """Past the threshold, small local files are copied by forked workers: same results,
    same accounting, same error reporting as the threaded path."""
    from ferry.mover.engine.batches import PROCESS_THRESHOLD

    src, dst = trees
    count = PROCESS_THRESHOLD * 2 + 37
    for i in range(count):
        d = src / f"d{i % 13}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(i % 5000))
    (src / "d3/secret").write_text("not for the mover")
    os.chown(src / "d3/secret", 4321, 4321)
    os.chmod(src / "d3/secret", 0o600)
    manifest = tmp_path / "m.jsonl"
    r = run_unprivileged(
        [
            "copy",
            str(src),
            str(dst),
            "-v",
            "--json",
            "--error-policy",
            "skip",
            "--manifest",
            str(manifest),
        ]
    )
    assert r.rc == 1, r.stderr
    assert "worker processes" in r.stderr
    s = r.summary
    assert s["filesCopied"] == count and s["filesVerified"] == count and s["filesFailed"] == 1
    assert [(e["path"], e["reason"]) for e in s["errors"]] == [("d3/secret", "PermissionDenied")]
    assert s["bytesTransferred"] == sum(i % 5000 for i in range(count))
    lines = manifest.read_text().splitlines()
    assert len(lines) == count
    from ferry.mover.integrity import digest_bytes

    sample = json.loads(lines[100])
    assert sample["digest"] == digest_bytes((src / sample["path"]).read_bytes())
    st = os.stat(src / "d3")
    os.unlink(src / "d3/secret")  # the one file that could not be copied; keep d3's time as it was
    os.utime(src / "d3", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert_same_tree(src, dst)


def test_directory_that_cannot_be_created_follows_the_error_policy(
    trees: tuple[Path, Path],
) -> None:
    src, dst = trees
    (src / "a").mkdir()
    (src / "a/f").write_text("f")
    (src / "b").write_text("b")
    dst.mkdir()
    os.chmod(dst, 0o555)  # nothing can be created at the top of the destination
    try:
        r = run_unprivileged(["copy", str(src), str(dst), "--json", "--error-policy", "skip"])
    finally:
        os.chmod(dst, 0o755)
    assert r.rc == 1, r.stderr
    reasons = {e["path"]: e["reason"] for e in r.summary["errors"]}
    assert reasons.get("a") == "PermissionDenied" and reasons.get("b") == "PermissionDenied"
    assert reasons.get("a/f") == "DestinationNotFound"  # a consequence, reported, not fatal
    assert os.listdir(dst) == []


def test_plan_piped_into_a_reader_that_stops_ends_quietly(trees: tuple[Path, Path]) -> None:
    """`ferry plan SRC DST | head -1`: plan ends when head does, as `ls` would, with no
    error message, instead of reporting the broken pipe as a transient failure (exit 11)."""
    src, dst = trees
    for i in range(6000):  # ~130 KB of plan: more than a pipe holds, so plan must wait
        (src / f"f{i:04d}").write_bytes(b"x")
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*FERRY, "plan", str(src), str(dst)], stdout=w, stderr=subprocess.PIPE, text=True
    )
    os.close(w)
    with os.fdopen(r) as reader:
        first = reader.readline()  # then the reader goes away
    _, err = proc.communicate(timeout=60)
    assert first.startswith(("copy", "mkdir")), first
    assert proc.returncode == -signal.SIGPIPE, (proc.returncode, err)
    assert "error" not in err, err


def test_verify_names_every_kind_of_difference(trees: tuple[Path, Path]) -> None:
    """One difference of each kind `ferry verify` knows, each reported once under its
    path, and nothing else (exit 1)."""
    src, dst = trees
    for name in ("missing", "extra", "type", "size", "mtime", "mode", "unreadable", "content"):
        (src / name).write_bytes(b"same bytes")
    (src / "dir").mkdir()
    os.symlink("here", src / "target")
    run_ferry("copy", src, dst)
    assert run_ferry("verify", src, dst).rc == 0
    (dst / "missing").unlink()
    (dst / "extra.new").write_bytes(b"x")
    (dst / "type").unlink()
    (dst / "type").mkdir()
    (dst / "size").write_bytes(b"more bytes than before")
    os.utime(dst / "mtime", ns=(0, 1_000_000_000))
    os.chmod(dst / "mode", 0o600 if (src / "mode").stat().st_mode & 0o777 != 0o600 else 0o640)
    os.chmod(dst / "unreadable", 0)
    st = (src / "content").stat()
    (dst / "content").write_bytes(b"SAME BYTES")
    os.utime(dst / "content", ns=(st.st_atime_ns, st.st_mtime_ns))
    (dst / "target").unlink()
    os.symlink("there", dst / "target")
    os.utime(dst / "dir", ns=(0, 1_000_000_000))
    r: Any = run_unprivileged(["verify", str(src), str(dst)])
    assert r.rc == 1, (r.stdout, r.stderr)
    found = sorted(tuple(line.split()[:2]) for line in r.stdout.splitlines() if line.strip())
    assert found == sorted(
        [
            ("missing", "missing"),
            ("extra", "extra.new"),
            ("type", "type"),
            ("size", "size"),
            ("mtime", "mtime"),
            ("mode", "mode"),
            ("unreadable", "unreadable"),
            ("mode", "unreadable"),  # chmod 0 is a mode difference too
            ("content", "content"),
            ("target", "target"),
            ("mtime", "dir"),
            ("mtime", "."),  # the destination root: names were added and removed in it
        ]
    ), r.stdout
