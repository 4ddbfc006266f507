"""Space before the first byte (--min-free, --no-preflight) and sync's --max-delete, on real
filesystems: small tmpfs mounts (CI runs as root) stand in for a nearly full volume."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.mover import transfer as transfer_mod
from ferry.mover.backends.base import Entry, EntryType, Space
from ferry.mover.backends.local import LocalBackend
from ferry.mover.endpoints import LocalEndpoint
from ferry.mover.engine.chunks import resume_key_for
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import block_digests
from ferry.mover.options import (
    DEFAULT_MIN_FREE,
    GiB,
    MiB,
    MinFree,
    Mode,
    Options,
    Verify,
    parse_size,
)
from ferry.mover.shard import path_shard
from ferry.mover.space import fits_whole_source
from ferry.mover.transfer import run_transfer
from tests.conftest import run_ferry
from tests.engine.treeutil import assert_same_tree


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """mount(size) -> a fresh tmpfs of that many bytes: a real filesystem to run out of."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        mnt = tmp_path / f"fs{len(mounts)}"
        mnt.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True
        )
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _files(root: Path, sizes: dict[str, int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, size in sizes.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
    return root


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# ---- the check, local --------------------------------------------------------------------


def test_refused_before_anything_is_written(tmp_path: Path, tmpfs) -> None:
    """12 MiB into 8 MiB: exit 6 with both numbers and the flag to change, and the
    destination is not even created."""
    src = _files(tmp_path / "src", {"a/one": 4 * MiB, "a/two": 4 * MiB, "three": 4 * MiB})
    fs = tmpfs(8 * MiB)
    r = run_ferry("copy", src, fs / "dst", "--json", check_rc=6)
    s = r.summary
    assert s["reason"] == "DestinationFull" and s["exitCode"] == 6
    need = 12 * MiB + 4096  # the files and directory a/, in whole 4 KiB pages
    assert f"({need} bytes)" in s["message"], s["message"]
    assert f"({_free(fs)} bytes) is free" in s["message"], s["message"]
    assert "--min-free" in s["message"] and "--no-preflight" in s["message"]
    assert s["filesCopied"] == 0
    assert list(fs.iterdir()) == [], "the preflight wrote something"
    r = run_ferry("plan", src, fs / "dst", "--json", check_rc=6)  # plan says the same
    assert r.summary["reason"] == "DestinationFull" and f"({need} bytes)" in r.summary["message"]


def test_reserve_size_percentage_and_no_preflight(tmp_path: Path, tmpfs) -> None:
    """10 MiB into 16 MiB fits, but not with 8 MiB (or 50 %) kept free; --no-preflight skips
    the check and the copy is whole."""
    src = _files(tmp_path / "src", {f"f{i}": 2 * MiB for i in range(5)})
    fs = tmpfs(16 * MiB)
    dst = fs / "dst"
    for reserve in ("8M", "50%"):
        r = run_ferry("copy", src, dst, "--json", "--min-free", reserve, check_rc=6)
        assert f"minFree {reserve if reserve.endswith('%') else '8.0 MiB'}" in r.summary["message"]
        assert f"({8 * MiB} bytes) must stay free" in r.summary["message"]
        assert not dst.exists()
    run_ferry("copy", src, dst, "--json", "--min-free", "40%", "--no-preflight", check_rc=2)
    run_ferry("copy", src, dst, "--json", "--min-free", "8M", "--no-preflight", check_rc=2)
    run_ferry("copy", src, dst, "--json", "--no-preflight")
    assert_same_tree(src, dst)


def test_default_reserve_and_a_fitting_copy(tmp_path: Path, tmpfs) -> None:
    src = _files(tmp_path / "src", {"d/e/f": 3 * MiB, "g": 1000})
    fs = tmpfs(8 * MiB)
    run_ferry("copy", src, fs / "dst", "--json")  # 1 % of 8 MiB stays free: fits
    assert_same_tree(src, fs / "dst")


def test_changed_files_need_their_growth_and_what_is_in_flight(tmp_path: Path, tmpfs) -> None:
    """Six changed 3 MiB files on a 24 MiB volume holding their old copies (6 MiB free).
    Counting every byte to write (18 MiB) would refuse; one at a time each needs its old
    copy's room only while it is written, so with one transfer at a time it runs (and
    succeeds, so the estimate is not optimistic); with four at once it is refused."""
    names = {f"f{i}": 3 * MiB for i in range(6)}
    fs = tmpfs(24 * MiB)
    dst = _files(fs / "dst", names)
    src = _files(tmp_path / "src", names)  # new content, same sizes, newer mtimes
    r = run_ferry("copy", src, dst, "--json", "--min-free", "0", "--transfers", "4", check_rc=6)
    assert f"({12 * MiB} bytes)" in r.summary["message"]
    r = run_ferry("copy", src, dst, "--json", "--min-free", "0", "--transfers", "1")
    assert r.summary["filesUpdated"] == 6
    assert_same_tree(src, dst)


def test_a_resumable_partial_needs_only_its_rest(tmp_path: Path, tmpfs) -> None:
    """A 16 MiB file of which an earlier run left 12 MiB in a partial: with 12 MiB free
    the rest fits, and the copy resumes and completes."""
    chunk = 2 * MiB
    src = _files(tmp_path / "src", {"big": 16 * MiB})
    data = (src / "big").read_bytes()
    fs = tmpfs(32 * MiB)
    dst = fs / "dst"
    dst.mkdir()
    st = os.stat(src / "big")
    entry = Entry("big", EntryType.FILE, size=st.st_size, mtime_ns=st.st_mtime_ns)
    backend = LocalBackend(str(dst))
    key = resume_key_for(entry, chunk, Verify.INLINE)
    w = backend.open_write("big", entry, resume_key=key)
    assert w.done_chunks(chunk) == {}
    w.set_size(entry.size)
    for i in range(6):
        piece = data[i * chunk : (i + 1) * chunk]
        w.write_at(i * chunk, piece)
        w.record_chunk(i, block_digests(piece))
    w.abort(keep_partial=True)
    assert backend.partial_bytes("big", key) == 12 * MiB
    (fs / "filler").write_bytes(b"x" * (_free(fs) - 12 * MiB))
    assert _free(fs) == 12 * MiB
    r = run_ferry("copy", src, dst, "--json", "--chunk-size", "2M", "--min-free", "0")
    assert r.summary["bytesResumed"] == 12 * MiB
    assert (dst / "big").read_bytes() == data


def test_a_plan_too_big_to_hold_is_walked_again(tmp_path: Path, monkeypatch) -> None:
    """Past PREFLIGHT_HOLD actions the counting walk keeps none and the transfer walks
    afresh: the same result, unchanged files counted once."""
    src = _files(tmp_path / "src", {f"d{i}/f{j}": 100 + j for i in range(4) for j in range(10)})
    dst = tmp_path / "dst"
    opts = Options(min_free=MinFree(size=0))
    s = run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), opts)
    assert s.exit_code == 0 and s.files_copied == 40
    for j in range(5):
        (src / "d0" / f"new{j}").write_bytes(b"n" * j)
    monkeypatch.setattr(transfer_mod, "PREFLIGHT_HOLD", 3)
    monkeypatch.setattr(transfer_mod, "fits_whole_source", lambda *_: False)  # count exactly
    s = run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), opts)
    assert s.exit_code == 0, s.to_json()
    assert (s.files_copied, s.files_skipped) == (5, 40)
    assert_same_tree(src, dst)
    monkeypatch.setattr(transfer_mod, "PREFLIGHT_HOLD", 1000)
    (src / "d1" / "new").write_bytes(b"m")
    s = run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), opts)  # all held
    assert (s.exit_code, s.files_copied, s.files_skipped) == (0, 1, 45)
    assert_same_tree(src, dst)


def test_a_source_that_fits_whole_is_not_counted_file_by_file(tmp_path: Path) -> None:
    src = _files(tmp_path / "src", {"d/a": 4000, "b": 1})
    room = Space(available=10 * MiB, total=20 * MiB, block=4096)
    assert fits_whole_source(LocalBackend(str(src)), room, Options(min_free=MinFree(size=0)))
    # 2 files and a directory, 3 units: a byte short of them is too little.
    tight = Space(available=3 * 4096 - 1, total=20 * MiB, block=4096)
    assert not fits_whole_source(LocalBackend(str(src)), tight, Options(min_free=MinFree()))
    assert fits_whole_source(
        LocalBackend(str(src)), tight._replace(available=3 * 4096), Options(min_free=MinFree())
    )
    assert not fits_whole_source(
        LocalBackend(str(src)), room, Options(min_free=MinFree(size=15 * MiB))
    )


# ---- --min-free and friends: parsing --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reserve_of_1g"),
    [("5%", GiB // 20), ("0.5%", GiB // 200), ("0", 0), ("0%", 0), ("64M", 64 * MiB), ("1G", GiB)],
)
def test_min_free_parses(text: str, reserve_of_1g: int) -> None:
    assert MinFree.parse(text).reserve(GiB) == reserve_of_1g


@pytest.mark.parametrize("text", ["", "5x", "100%", "250%", "-1%", "nan%", "inf%", "%", "-5M"])
def test_min_free_refuses_nonsense(text: str) -> None:
    with pytest.raises(FerryError, match="--min-free") as exc:
        MinFree.parse(text)
    assert exc.value.kind == ErrorKind.USAGE


@pytest.mark.parametrize("text", ["infk", "nanG", "1e400"])
def test_sizes_refuse_infinity(text: str) -> None:
    with pytest.raises(FerryError, match="is not a size"):
        parse_size(text, "--min-free")


def test_default_reserve_is_one_percent() -> None:
    assert Options().min_free == DEFAULT_MIN_FREE and DEFAULT_MIN_FREE.reserve(100 * GiB) == GiB


def test_options_refuse_what_would_be_ignored() -> None:
    with pytest.raises(FerryError, match="--no-preflight"):
        Options(preflight=False, min_free=MinFree(size=MiB))
    with pytest.raises(FerryError, match="only to sync"):
        Options(mode=Mode.COPY, max_delete=3)
    with pytest.raises(FerryError, match="negative"):
        Options(mode=Mode.SYNC, max_delete=-1)


def test_cli_flags_where_they_mean_something(tmp_path: Path) -> None:
    src = _files(tmp_path / "src", {"f": 10})
    dst = tmp_path / "dst"
    r = run_ferry("copy", src, dst, "--max-delete", "3", check_rc=2)
    assert "--max-delete" in r.stderr
    r = run_ferry("plan", src, dst, "--max-delete", "3", check_rc=2)
    assert "only to sync" in r.stderr
    r = run_ferry("copy", src, dst, "--min-free", "12parsecs", check_rc=2)
    assert "--min-free" in r.stderr
    r = run_ferry("verify", src, dst, "--min-free", "5%", check_rc=2)
    assert not dst.exists()


@pytest.mark.parametrize(
    ("available", "total", "block"),
    [(-1, 10, 4096), (11, 10, 4096), (5, 10, 0), (5, 10, 1 << 30), (5, 1 << 90, 4096)],
)
def test_space_reports_that_cannot_be_right_are_unknown(
    available: int, total: int, block: int
) -> None:
    assert Space.checked(available, total, block) is None


def test_local_free_space_is_statvfs_of_the_nearest_existing_directory(tmp_path: Path) -> None:
    space = LocalBackend(str(tmp_path / "not" / "yet")).free_space()
    st = os.statvfs(tmp_path)
    assert space is not None
    assert space.total == st.f_blocks * st.f_frsize and space.block == st.f_frsize
    assert abs(space.available - st.f_bavail * st.f_frsize) < 64 * MiB


# ---- --max-delete -----------------------------------------------------------------------


def _doomed(tmp_path: Path) -> tuple[Path, Path]:
    """A source with one new file; a destination with 6 entries the source lacks: 3 files,
    a directory with a file and a symlink in it."""
    src = _files(tmp_path / "src", {"keep": 10, "new": 20})
    dst = _files(tmp_path / "dst", {"x1": 1, "x2": 2, "x3": 3, "xd/y": 4})
    (dst / "keep").write_bytes((src / "keep").read_bytes())
    os.utime(dst / "keep", ns=(os.stat(src / "keep").st_mtime_ns,) * 2)
    os.symlink("y", dst / "xd" / "link")
    return src, dst


def test_max_delete_over_the_limit_deletes_nothing(tmp_path: Path) -> None:
    src, dst = _doomed(tmp_path)
    before = sorted(p.name for p in dst.rglob("*"))
    r = run_ferry("plan", "--sync", src, dst, "--json", "--max-delete", "5", check_rc=14)
    assert r.summary["reason"] == "DeleteLimitExceeded"
    assert "6 entries" in r.summary["message"] and "--max-delete" in r.summary["message"]
    r = run_ferry("sync", src, dst, "--json", "--max-delete", "5", check_rc=14)
    s = r.summary
    assert s["reason"] == "DeleteLimitExceeded" and s["exitCode"] == 14
    assert "--max-delete" in s["message"] and "nothing was deleted" in s["message"]
    assert s["filesCopied"] == 1 and s["filesDeleted"] == 0
    assert (dst / "new").read_bytes() == (src / "new").read_bytes()  # the copies are done
    assert sorted(p.name for p in dst.rglob("*")) == sorted([*before, "new"])


def test_max_delete_at_the_limit_deletes(tmp_path: Path) -> None:
    src, dst = _doomed(tmp_path)
    run_ferry("plan", "--sync", src, dst, "--json", "--max-delete", "6")
    r = run_ferry("sync", src, dst, "--json", "--max-delete", "6")
    assert r.summary["filesDeleted"] == 5  # and the directory
    assert sorted(p.name for p in dst.iterdir()) == ["keep", "new"]


def test_max_delete_zero_still_syncs_what_deletes_nothing(tmp_path: Path) -> None:
    src = _files(tmp_path / "src", {"a": 1})
    dst = tmp_path / "dst"
    r = run_ferry("sync", src, dst, "--json", "--max-delete", "0")
    assert r.summary["filesCopied"] == 1
    (dst / "extra").write_bytes(b"x")
    run_ferry("sync", src, dst, "--json", "--max-delete", "0", check_rc=14)
    assert (dst / "extra").exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"maxDelete": 2}, "maxDelete"),
        ({"mode": "Sync", "maxDelete": -2}, "maxDelete"),
        ({"minFree": "101%"}, "minFree"),
        ({"preflight": False, "minFree": "1G"}, "minFree"),
    ],
)
def test_mover_spec_names_the_field(options: dict[str, object], field: str) -> None:
    from pydantic import ValidationError

    from ferry.mover.spec import TransferSpec

    doc = {
        "source": {"kind": "local", "path": "/a"},
        "destination": {"kind": "local", "path": "/b"},
        "options": options,
    }
    with pytest.raises(ValidationError) as exc:
        TransferSpec.model_validate(doc)
    assert exc.value.errors()[0]["loc"] == ("options", field)


def test_mover_spec_reaches_the_engine() -> None:
    from ferry.mover.spec import TransferSpec

    doc = {
        "source": {"kind": "local", "path": "/a"},
        "destination": {"kind": "local", "path": "/b"},
        "options": {"mode": "Sync", "maxDelete": 7, "minFree": "2G"},
    }
    _, _, o = TransferSpec.model_validate(doc).to_engine()
    assert (o.max_delete, o.min_free, o.preflight) == (7, MinFree(size=2 * GiB), True)
    doc["options"] = {"preflight": False}
    assert not TransferSpec.model_validate(doc).to_engine()[2].preflight


def test_each_shard_checks_its_part_against_its_share_of_the_room(tmp_path: Path, tmpfs) -> None:
    """4 x 3 MiB on 8 MiB, in two shards: f0 in one (3 MiB), the rest in the other (9 MiB).
    Either alone would fit; together they cannot, so each checks against its share of the
    room (in proportion to the source bytes it carries: 2 and 6 MiB) and is refused."""
    src = _files(tmp_path / "src", {f"f{i}": 3 * MiB for i in range(4)})
    assert [path_shard(f"f{i}", 2) for i in range(4)] == [0, 1, 1, 1]
    fs = tmpfs(8 * MiB)
    for index, part in ((0, 25), (1, 75)):
        opts = Options(min_free=MinFree(size=0), shard_index=index, shard_count=2)
        s = run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(fs / "dst")), opts)
        assert s.fatal is not None and s.fatal.kind == ErrorKind.DESTINATION_FULL, s.to_json()
        assert f"part of the room is {part}%" in str(s.fatal)
    assert list(fs.iterdir()) == []
    opts = Options(min_free=MinFree(size=0), shard_index=0, shard_count=2)
    s = run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(tmp_path / "big")), opts)
    assert s.exit_code == 0 and s.files_copied == 1
