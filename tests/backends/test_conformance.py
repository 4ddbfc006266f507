"""The conformance suite: every backend, every direction, against real servers.

Like rclone's backend tests: a tricky tree goes out and comes back byte-exact
with the metadata each backend can hold; a second run moves nothing; sync
deletes; resume after a kill; bad credentials and dead servers fail clearly.
Every test runs twice: with the hand-written wire/ accelerators, and on each backend's
library alone (FERRY_ACCELERATORS=off).
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from ferry.mover.backends import ACCELERATORS_ENV
from ferry.mover.options import Mode, Verify
from tests.backends.conftest import BUCKET, REMOTE_KINDS, Remote
from tests.backends.helpers import cli, ok, transfer
from tests.backends.tree import MTIME, build, compare, file_digest

pytestmark = pytest.mark.servers


@pytest.fixture(autouse=True, params=["on", "off"], ids=["wire", "library"])
def accelerators(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both paths for every test: the environment reaches in-process transfers and the CLI."""
    monkeypatch.setenv(ACCELERATORS_ENV, str(request.param))
    return str(request.param)


def _round_trip(src_tree: Path, hops: list[Remote], back: Path) -> None:
    """src_tree -> hops[0] -> hops[1] ... -> back, each hop a fresh location."""
    uris = [str(src_tree)] + [r.uri(r.fresh()) for r in hops] + [str(back)]
    for a, b in itertools.pairwise(uris):
        ok(transfer(a, b))


def _expect(hops: list[Remote]) -> dict[str, object]:
    return {
        "precision_ns": max(r.mtime_precision_ns for r in hops),
        "modes": all(r.holds_modes for r in hops),
        "empty_dirs": all(r.holds_empty_dirs for r in hops),
    }


def test_round_trip_tricky_tree(backend: Remote, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(src, posix_names=not backend.windows_names)
    dst = backend.uri(backend.fresh())
    first = ok(transfer(str(src), dst))
    assert first.files_copied > 20
    again = ok(transfer(str(src), dst))
    assert again.bytes_transferred == 0 and again.files_copied == 0, again.to_json()
    # A changed file is replaced in place (over an existing destination file).
    changed = src / "sizes" / sorted(p.name for p in (src / "sizes").iterdir())[3]
    changed.write_bytes(b"changed" * 1000)
    os.utime(changed, ns=(MTIME + 7 * 10**9, MTIME + 7 * 10**9))
    upd = ok(transfer(str(src), dst))
    assert upd.files_updated == 1 and upd.files_copied == 0, upd.to_json()
    back = tmp_path / "back"
    ok(transfer(dst, str(back)))
    assert compare(src, back, **_expect([backend])) == []  # type: ignore[arg-type]
    # What came back carries the backend's mtimes: copying it back out moves nothing either.
    assert ok(transfer(dst, str(back))).bytes_transferred == 0


PAIRS = [
    ("s3", "sftp"),
    ("sftp", "smb"),
    ("smb", "s3"),
    ("sftp", "s3"),
    ("s3", "smb"),
    ("smb", "sftp"),
    ("s3", "s3"),
]


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_pairs(a: str, b: str, remotes, tmp_path: Path) -> None:
    ra, rb = remotes(a), remotes(b)
    src = tmp_path / "src"
    build(src, posix_names=not (ra.windows_names or rb.windows_names), big=False)
    back = tmp_path / "back"
    _round_trip(src, [ra, rb], back)
    assert compare(src, back, **_expect([ra, rb])) == []  # type: ignore[arg-type]


def test_full_verify_reads_back(remote: Remote, tmp_path: Path) -> None:
    """--verify full reads each file back from the destination (S3: the server checks the
    parts' checksums instead) and passes on a good copy, partial reads included."""
    src = tmp_path / "src"
    build(src, big=False, posix_names=not remote.windows_names)
    s = ok(transfer(str(src), remote.uri(remote.fresh("full")), verify=Verify.FULL))
    assert s.files_copied > 10 and s.files_verified == s.files_copied


def test_sync_deletes(backend: Remote, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(src, big=False, posix_names=False)
    extra = tmp_path / "extra"
    shutil.copytree(src, extra)
    (extra / "gone.txt").write_text("delete me")
    (extra / "gonedir" / "sub").mkdir(parents=True)
    (extra / "gonedir" / "sub" / "f").write_text("x")
    dst = backend.uri(backend.fresh())
    ok(transfer(str(extra), dst))
    s = ok(transfer(str(src), dst, mode=Mode.SYNC))
    assert s.files_deleted >= 2, s.to_json()
    back = tmp_path / "back"
    ok(transfer(dst, str(back)))
    assert not (back / "gone.txt").exists() and not (back / "gonedir").exists()
    assert compare(src, back, **_expect([backend])) == []  # type: ignore[arg-type]


def test_cli_verify_and_plan(remote: Remote, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(src, big=False, posix_names=not remote.windows_names)
    dst = remote.uri(remote.fresh())
    code, summary, err = cli("plan", str(src), dst)
    assert code == 0 and summary["dryRun"] and "copy" in err, (summary, err)
    code, summary, err = cli("verify", str(src), dst)
    assert code != 0, "plan must not have written anything"
    code, summary, err = cli("copy", str(src), dst, "--chunk-size", "5M")
    assert code == 0 and summary["filesCopied"] > 10, (summary, err)
    code, summary, err = cli("verify", str(src), dst)
    assert code == 0, (summary, err)  # directory times and modes only where directories exist
    code, summary, err = cli("copy", str(src), dst, "--include", "sizes/**", "--checksum")
    assert code == 0 and summary["bytesTransferred"] == 0, (summary, err)


# Every flag but acls, which a remote refuses (`--preserve all` included: test_acls.py).
ALL_BUT_ACLS = "times,perms,owners,xattrs,links,hardlinks,sparse"
# What each remote cannot hold of them (links: symlinks; S3 keeps modes).
NOT_KEPT = {
    "s3": ["owners", "xattrs", "links", "hardlinks", "sparse"],
    "sftp": ["owners", "xattrs", "hardlinks", "sparse"],
    "smb": ["perms", "owners", "xattrs", "links", "hardlinks", "sparse"],
}


def test_preserve_not_kept_is_reported(remote: Remote, tmp_path: Path) -> None:
    """Owners, xattrs, hard links, holes (and symlinks, modes) a destination cannot hold are
    named: a warning each, once, and `preserveDropped` in the summary; a plan says so too."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_text("data")
        os.link(src / f"f{i}", src / f"linked{i}")
        os.setxattr(src / f"f{i}", "user.tag", b"x")
    os.symlink("f0", src / "sym")
    with open(src / "holes.img", "wb") as f:
        f.truncate(8 << 20)
        f.write(b"start")
    expected = NOT_KEPT[remote.kind]
    code, summary, err = cli(
        "plan", str(src), remote.uri(remote.fresh()), "--preserve", ALL_BUT_ACLS
    )
    assert code == 0 and summary["preserveDropped"] == expected, (summary, err)
    dst = remote.uri(remote.fresh())
    code, summary, err = cli("copy", str(src), dst, "--preserve", ALL_BUT_ACLS)
    assert code == 0 and summary["preserveDropped"] == expected, (summary, err)
    warnings = [line for line in err.splitlines() if "cannot hold" in line]
    assert len(warnings) == len(expected), err
    code, summary, err = cli("verify", str(src), dst, "--preserve", ALL_BUT_ACLS)
    assert "cannot hold xattrs; they are not compared" in err, err
    code, summary, err = cli("copy", str(src), remote.uri(remote.fresh()), "--preserve", "none")
    assert code == 0 and summary["preserveDropped"] == [] and "cannot hold" not in err, err


@pytest.mark.parametrize("remote", ["smb"], indirect=True)
def test_defaults_a_destination_cannot_hold_are_named_not_warned(
    remote: Remote, tmp_path: Path
) -> None:
    """Permission bits are kept by default; towards SMB, which has none, a plain copy names
    them in the summary without warning on every run (a warning is for what was asked)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    code, summary, err = cli("copy", str(src), remote.uri(remote.fresh()))
    assert code == 0 and summary["preserveDropped"] == ["perms"], (summary, err)
    assert "cannot hold" not in err, err
    code, summary, err = cli("copy", str(src), remote.uri(remote.fresh()), "--preserve", "+xattrs")
    assert code == 0 and "cannot hold permission bits" in err, err


def test_local_destination_keeps_everything(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    os.link(src / "f", src / "g")
    code, summary, err = cli("copy", str(src), str(tmp_path / "dst"), "--preserve", "all")
    assert code == 0 and summary["preserveDropped"] == [] and "cannot hold" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("kind", REMOTE_KINDS)
def test_sparse_multi_gib(kind: str, remotes, tmp_path: Path) -> None:
    """A 2 GiB file that is mostly hole arrives byte-exact (no remote here keeps holes, so
    this is about size, offsets and part boundaries)."""
    r = remotes(kind)
    src = tmp_path / "src"
    src.mkdir()
    p = src / "sparse.img"
    size = 2 << 30
    with open(p, "wb") as f:
        f.truncate(size)
        for off in (0, 700 << 20, (1 << 30) + 12345, size - 4096):
            f.seek(off)
            f.write(os.urandom(4096))
    sub = r.fresh("sparse")
    ok(transfer(str(src), r.uri(sub)))
    disk = r.disk(sub)
    assert disk is not None
    assert (disk / "sparse.img").stat().st_size == size
    assert file_digest(disk / "sparse.img") == file_digest(p)
    assert ok(transfer(str(src), r.uri(sub))).bytes_transferred == 0


def test_s3_objects_interoperate(remotes, tmp_path: Path) -> None:
    """Plain boto3 (checksum-validating) reads what Ferry wrote, and sees Ferry's metadata."""
    r = remotes("s3")
    src = tmp_path / "src"
    build(src, big=False)
    sub = r.fresh("interop")
    ok(transfer(str(src), r.uri(sub)))
    c = r.server.client()
    for rel in ("sizes/s03-10485761", "plain.txt".join(["names/", ""])):
        obj = c.get_object(Bucket=BUCKET, Key=f"{sub}/{rel}")
        assert obj["Body"].read() == (src / rel).read_bytes()
        meta = obj["Metadata"]
        assert int(meta["ferry-mtime-ns"]) == (src / rel).stat().st_mtime_ns
        assert meta["ferry-digest"].startswith("b3m1:")
        assert int(meta["ferry-mode"], 8) == (src / rel).stat().st_mode & 0o7777


S3_OPTIONS = [
    {"sse": "AES256", "storage_class": "STANDARD_IA"},
    {"checksum": "sha256"},
    {"checksum": "none", "list_metadata": "false"},
]


@pytest.mark.parametrize(
    "opts", S3_OPTIONS, ids=["sse-storage-class", "sha256", "no-checksum-no-head"]
)
def test_s3_options(opts: dict[str, str], remotes, tmp_path: Path) -> None:
    """Encryption, storage class and checksum choices reach the server; data round-trips.
    moto, unlike versitygw, applies SSE and storage classes, so those are checked there."""
    r = remotes("s3-moto" if "sse" in opts else "s3")
    src = tmp_path / "src"
    build(src, big=False, posix_names=False)
    sub = r.fresh("opts")
    ok(transfer(str(src), r.uri(sub, **opts)))
    head = r.server.client().head_object(Bucket=BUCKET, Key=f"{sub}/sizes/s03-10485761")
    if "sse" in opts:
        assert head["ServerSideEncryption"] == "AES256"
        assert head["StorageClass"] == "STANDARD_IA"
    back = tmp_path / "back"
    ok(transfer(r.uri(sub, **opts), str(back)))
    same_mtimes = opts.get("list_metadata") != "false"  # without HEADs, mtimes are upload times
    diffs = compare(
        src, back, modes=same_mtimes, empty_dirs=False, precision_ns=1 if same_mtimes else 10**18
    )
    assert diffs == []
