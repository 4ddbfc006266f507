"""A single file as the source, on local paths: rsync's rule for where it goes, every
option that applies, the ones that cannot refused by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ferry.mover.endpoints import (
    FerryEndpoint,
    LocalEndpoint,
    S3Endpoint,
    SFTPEndpoint,
    SMBEndpoint,
    names_directory,
    parse_endpoint,
    plain,
    split_endpoint,
)
from ferry.mover.errors import ErrorKind
from ferry.mover.options import Mode, Options
from ferry.mover.transfer import run_transfer
from ferry.mover.verify import verify_trees
from tests.conftest import run_ferry

MiB = 1 << 20


@pytest.fixture
def f(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "sibling.txt").write_text("not to be copied")
    path = src / "f.bin"
    path.write_bytes(os.urandom(3 * MiB + 17))
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.chmod(path, 0o640)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def same_file(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes()
    sa, sb = a.stat(), b.stat()
    assert sa.st_mtime_ns == sb.st_mtime_ns and sa.st_mode == sb.st_mode


def copy(*args: str | Path, rc: int = 0) -> dict[str, object]:
    r = run_ferry("copy", *map(str, args), "--json", "--progress", "none", check_rc=rc)
    return r.summary


# -- where the file goes -------------------------------------------------------------------


def test_into_an_existing_directory(f: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    s = copy(f, dst)
    assert s["filesCopied"] == 1 and s["bytesTransferred"] == f.stat().st_size
    assert tree(dst) == {"f.bin": f.read_bytes()}  # its sibling stays behind
    same_file(f, dst / "f.bin")


def test_to_a_name_whose_parents_are_created(f: Path, tmp_path: Path) -> None:
    s = copy(f, tmp_path / "new" / "deeper" / "renamed.bin")
    assert s["filesCopied"] == 1
    assert tree(tmp_path / "new") == {"deeper/renamed.bin": f.read_bytes()}
    same_file(f, tmp_path / "new" / "deeper" / "renamed.bin")


def test_a_trailing_slash_names_a_directory_even_a_new_one(f: Path, tmp_path: Path) -> None:
    copy(f, f"{tmp_path}/made/")
    assert tree(tmp_path / "made") == {"f.bin": f.read_bytes()}
    # without the slash the same missing name is the file's new name
    copy(f, tmp_path / "named")
    assert (tmp_path / "named").read_bytes() == f.read_bytes()


def test_an_existing_file_at_the_name_is_updated(f: Path, tmp_path: Path) -> None:
    target = tmp_path / "old.bin"
    target.write_bytes(b"older and shorter")
    s = copy(f, target)
    assert s["filesUpdated"] == 1 and s["filesCopied"] == 0
    same_file(f, target)


def test_a_copy_beside_itself_under_another_name(f: Path) -> None:
    copy(f, f.parent / "twin.bin")
    same_file(f, f.parent / "twin.bin")


@pytest.mark.parametrize("dst", ["{f}", "{f.parent}", "{f.parent}/", "{f.parent}/../src/f.bin"])
def test_a_file_onto_itself_is_refused(f: Path, dst: str) -> None:
    before = f.read_bytes()
    r = run_ferry("copy", str(f), dst.format(f=f), check_rc=ErrorKind.OVERLAP.exit_code)
    assert "source and destination are the same file" in r.stderr
    assert f.read_bytes() == before and sorted(os.listdir(f.parent)) == ["f.bin", "sibling.txt"]


def test_a_symlink_named_as_source_is_read_through(f: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.bin"
    link.symlink_to(f)
    dst = tmp_path / "dst"
    dst.mkdir()
    copy(link, dst)
    assert not (dst / "link.bin").is_symlink()
    assert (dst / "link.bin").read_bytes() == f.read_bytes()


def test_a_symlink_to_a_directory_as_destination_receives_it(f: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    copy(f, tmp_path / "via")
    assert (real / "f.bin").read_bytes() == f.read_bytes()


# -- options that apply ----------------------------------------------------------------------


def test_second_run_has_nothing_to_do_and_a_change_is_seen(f: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.bin"
    copy(f, dst)
    again = copy(f, dst)
    assert (again["filesCopied"], again["filesUpdated"], again["filesSkipped"]) == (0, 0, 1)
    assert again["bytesTransferred"] == 0
    # same size and mtime, other bytes: only --checksum notices
    data = bytearray(f.read_bytes())
    data[5] ^= 0xFF
    st = f.stat()
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert copy(f, dst)["filesSkipped"] == 1
    s = copy(f, dst, "--checksum")
    assert s["filesUpdated"] == 1 and dst.read_bytes() == bytes(data)


def test_dry_run_and_plan_write_nothing(f: Path, tmp_path: Path) -> None:
    r = run_ferry("plan", str(f), str(tmp_path / "d" / "x.bin"))
    assert r.stdout.split() == ["copy", "x.bin", f"({f.stat().st_size}", "B)"]
    r = run_ferry("copy", "-n", str(f), str(tmp_path / "d/"), "--json")
    assert r.summary["filesCopied"] == 1 and r.summary["dryRun"] is True
    assert not (tmp_path / "d").exists()


def test_sync_of_one_file_deletes_nothing(f: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("stays")
    r = run_ferry("sync", str(f), str(dst), "--json")
    assert r.summary["filesCopied"] == 1 and r.summary["filesDeleted"] == 0
    assert sorted(os.listdir(dst)) == ["f.bin", "keep.txt"]
    assert "nothing is deleted" in run_ferry("sync", "--help").stdout.replace("\n", " ")


def test_manifest_verify_full_preserve_and_bwlimit(f: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    s = copy(
        f,
        tmp_path / "o.bin",
        "--manifest",
        manifest,
        "--verify",
        "full",
        "--preserve",
        "times",
        "--bwlimit",
        "64M",
    )
    assert s["filesVerified"] == 1
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [d["path"] for d in lines] == ["o.bin"] and lines[0]["size"] == f.stat().st_size
    assert (tmp_path / "o.bin").stat().st_mtime_ns == f.stat().st_mtime_ns


def test_delta_updates_one_file_in_place(f: Path, tmp_path: Path) -> None:
    dst = tmp_path / "o.bin"
    copy(f, dst)
    data = bytearray(f.read_bytes())
    data[MiB : MiB + 10] = b"0123456789"
    f.write_bytes(bytes(data))
    s = copy(f, dst, "--delta", "on")
    assert s["filesUpdated"] == 1 and s["bytesTransferred"] < MiB
    assert dst.read_bytes() == bytes(data)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["copy", "--exclude", "*.tmp"], "--include/--exclude/--filter-from"),
        (["copy", "--include", "*.bin"], "--include/--exclude/--filter-from"),
        (["sync", "--max-delete", "5"], "--max-delete"),
        (["sync", "--allow-empty-source"], "--allow-empty-source"),
        (["verify", "--exclude", "x"], "--include/--exclude/--filter-from"),
    ],
)
def test_options_that_cannot_apply_are_refused(
    f: Path, tmp_path: Path, args: list[str], flag: str
) -> None:
    r = run_ferry(*args, str(f), str(tmp_path / "dst/"), check_rc=ErrorKind.USAGE.exit_code)
    assert f"{flag} " in r.stderr and "does not apply to a single file" in r.stderr
    assert not (tmp_path / "dst").exists()


def test_sharding_is_refused(f: Path, tmp_path: Path) -> None:
    s = run_transfer(
        LocalEndpoint(str(f)),
        LocalEndpoint(str(tmp_path / "d")),
        Options(shard_index=0, shard_count=2),
    )
    assert s.fatal is not None and s.fatal.kind == ErrorKind.USAGE
    assert "sharding" in str(s.fatal) and not (tmp_path / "d").exists()


def test_sync_in_process_is_a_copy(f: Path, tmp_path: Path) -> None:
    s = run_transfer(
        LocalEndpoint(str(f)), LocalEndpoint(f"{tmp_path}/d/"), Options(mode=Mode.SYNC)
    )
    assert s.exit_code == 0 and s.files_copied == 1 and s.files_deleted == 0
    assert (tmp_path / "d" / "f.bin").read_bytes() == f.read_bytes()


def test_verify_compares_the_one_file(f: Path, tmp_path: Path) -> None:
    dst = tmp_path / "o.bin"
    copy(f, dst)
    r = run_ferry("verify", str(f), str(dst))
    assert "1 files compared by content; identical" in r.stderr
    found: list[str] = []
    assert verify_trees(LocalEndpoint(str(f)), LocalEndpoint(str(dst)), Options(), found.append)
    data = bytearray(dst.read_bytes())
    data[0] ^= 1
    dst.write_bytes(bytes(data))
    os.utime(dst, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))
    r = run_ferry("verify", str(f), str(dst), check_rc=1)
    assert r.stdout.split()[:2] == ["content", "o.bin"]
    # into a directory: compared under its own name there; missing is reported
    r = run_ferry("verify", str(f), str(tmp_path), check_rc=1)
    assert r.stdout.split()[:2] == ["missing", "f.bin"]


# -- endpoints: parent + name, defined once -----------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "parent", "name"),
    [
        ("/a/b/c.iso", LocalEndpoint("/a/b"), "c.iso"),
        ("/c.iso", LocalEndpoint("/"), "c.iso"),
        ("/a/b/", LocalEndpoint("/a"), "b"),
        ("s3://bk/isos/big.iso", S3Endpoint("bk", "isos"), "big.iso"),
        ("s3://bk/big.iso", S3Endpoint("bk", ""), "big.iso"),
        ("sftp://h/srv/f.bin", SFTPEndpoint("h", "/srv"), "f.bin"),
        ("sftp://h/f.bin", SFTPEndpoint("h", "/"), "f.bin"),
        ("sftp://h/~/f.bin", SFTPEndpoint("h", "."), "f.bin"),
        ("sftp://h/~/d/f.bin", SFTPEndpoint("h", "d"), "f.bin"),
        ("smb://h/share/d/f.bin", SMBEndpoint("h", "share", "d"), "f.bin"),
        ("smb://h/share/f.bin", SMBEndpoint("h", "share", ""), "f.bin"),
    ],
)
def test_split_endpoint(uri: str, parent: object, name: str) -> None:
    assert split_endpoint(parse_endpoint(uri)) == (parent, name)


def test_split_ferry_endpoint_and_roots() -> None:
    tls = "tls_cert=c&tls_key=k&tls_ca=a"
    fe = parse_endpoint(f"ferry://h:9/d/f.bin?{tls}")
    assert split_endpoint(fe) == (FerryEndpoint("h", 9, "d", "c", "k", "a"), "f.bin")
    for root in ("/", "s3://bk", "s3://bk/", "sftp://h/~", "smb://h/share/", f"ferry://h:9/?{tls}"):
        assert split_endpoint(parse_endpoint(root)) is None, root


@pytest.mark.parametrize(
    ("uri", "into"),
    [
        ("/a/b/", True),
        ("/a/b", False),
        ("/", False),
        ("s3://bk/isos/", True),
        ("s3://bk/isos", False),
        ("s3://bk/", False),
        ("sftp://h/srv/", True),
        ("smb://h/share/d/", True),
        ("smb://h/share/d", False),
        ("ferry://h:9/d/?tls_cert=c&tls_key=k&tls_ca=a", True),
    ],
)
def test_a_trailing_slash_names_a_directory(uri: str, into: bool) -> None:
    ep = parse_endpoint(uri)
    assert names_directory(ep) is into
    assert not names_directory(plain(ep))
