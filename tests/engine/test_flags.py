"""rsync/rclone's usual flags: size and age bounds as filters (protected in sync)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.mover.endpoints import LocalEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.filters import PathList, parse_files_from
from ferry.mover.options import Compare, Mode, Options, parse_duration
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer
from ferry.mover.verify import verify_trees
from tests.conftest import run_ferry

DAY = 86400


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def run(src: Path, dst: Path, **kw: object) -> Summary:
    return run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(**kw))  # type: ignore[arg-type]


def aged(path: Path, data: bytes, days: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - days * DAY
    os.utime(path, (t, t))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    aged(root / "small.txt", b"x" * 10, 0)  # 10 B, new
    aged(root / "mid.bin", b"m" * 2048, 3)  # 2 KiB, 3 days
    aged(root / "sub" / "big.bin", b"b" * 20000, 10)  # ~19.5 KiB, 10 days
    return root


# -- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 7 * DAY), ("1h30m", 5400), ("90", 90)],
)
def test_durations_parse_in_rclone_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "1h-", "nan", "s", "1d 2h"])
def test_bad_durations_are_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(FerryError, match="--max-age") as exc:
        parse_duration(text, "--max-age")
    assert exc.value.kind == ErrorKind.USAGE


def test_min_above_max_is_refused() -> None:
    with pytest.raises(FerryError, match="--min-size is above --max-size"):
        Options(min_size=10, max_size=5)
    with pytest.raises(FerryError, match="--min-age is above --max-age"):
        Options(min_age=10.0, max_age=5.0)


# -- the filters -----------------------------------------------------------------------------


def test_size_bounds_select_files(src: Path, tmp_path: Path) -> None:
    s = run(src, tmp_path / "a", min_size=1024)
    assert files(tmp_path / "a") == {"mid.bin", "sub/big.bin"}
    assert s.files_copied == 2
    run(src, tmp_path / "b", max_size=2048)  # inclusive, as rclone's
    assert files(tmp_path / "b") == {"small.txt", "mid.bin"}
    run(src, tmp_path / "c", min_size=11, max_size=4096)
    assert files(tmp_path / "c") == {"mid.bin"}


def test_age_bounds_select_files(src: Path, tmp_path: Path) -> None:
    run(src, tmp_path / "a", min_age=DAY)
    assert files(tmp_path / "a") == {"mid.bin", "sub/big.bin"}
    run(src, tmp_path / "b", max_age=5.0 * DAY)
    assert files(tmp_path / "b") == {"small.txt", "mid.bin"}


def test_sync_does_not_delete_files_out_of_bounds(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    aged(dst / "old-extra.bin", b"o" * 5000, 30)  # out of --max-age: protected
    aged(dst / "new-extra.bin", b"n" * 10, 0)  # in bounds, not at the source: deleted
    s = run(src, dst, mode=Mode.SYNC, max_age=5.0 * DAY)
    assert files(dst) == {"small.txt", "mid.bin", "old-extra.bin"}
    assert s.files_deleted == 1


def test_second_run_is_a_no_op_and_verify_agrees(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    run(src, dst, min_size=1024)
    again = run(src, dst, min_size=1024)
    assert again.files_copied == again.files_updated == 0
    found: list[str] = []

    def verify(o: Options) -> int:
        a, b = LocalEndpoint(str(src)), LocalEndpoint(str(dst))
        return int(verify_trees(a, b, o, report=lambda d: found.append(d.path)).exit_code)

    assert verify(Options(min_size=1024)) == 0 and found == []
    # Without the bound, verify sees the file the bound left out.
    assert verify(Options()) != 0 and found == ["small.txt"]


def test_single_file_out_of_bounds_is_not_copied(src: Path, tmp_path: Path) -> None:
    run_transfer(
        LocalEndpoint(str(src / "small.txt")),
        LocalEndpoint(str(tmp_path / "one.txt")),
        Options(min_size=1024),
    )
    assert not (tmp_path / "one.txt").exists()


def test_cli_flags(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    run_ferry("copy", src, dst, "--min-size", "1K", "--max-age", "5d")
    assert files(dst) == {"mid.bin"}
    out = run_ferry("plan", src, tmp_path / "x", "--max-size", "1k").stdout
    assert "small.txt" in out and "mid.bin" not in out
    run_ferry("verify", src, dst, "--min-size", "1K", "--max-age", "5d")
    bad = run_ferry("copy", src, dst, "--min-age", "soon", check_rc=ErrorKind.USAGE.exit_code)
    assert "--min-age" in bad.stderr
    bad = run_ferry("sync", src, dst, "--max-size", "big", check_rc=ErrorKind.USAGE.exit_code)
    assert "--max-size" in bad.stderr


# -- --size-only and --update ----------------------------------------------------------------


def test_size_only_ignores_mtimes_but_not_sizes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    aged(src / "same.txt", b"new", 0)
    aged(dst / "same.txt", b"old", 5)  # same size, other content and mtime: left as it is
    aged(src / "grown.txt", b"longer", 0)
    aged(dst / "grown.txt", b"short", 0)
    s = run(src, dst, compare=Compare.SIZE)
    assert (dst / "same.txt").read_bytes() == b"old"
    assert (dst / "grown.txt").read_bytes() == b"longer"
    assert s.files_updated == 1 and s.files_skipped == 1
    # Without it, the mtime tells them apart.
    run(src, dst)
    assert (dst / "same.txt").read_bytes() == b"new"


def test_update_keeps_files_newer_at_the_destination(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    aged(src / "edited-there.txt", b"source", 3)
    aged(dst / "edited-there.txt", b"destination edit", 1)  # newer: kept
    aged(src / "stale-there.txt", b"source", 1)
    aged(dst / "stale-there.txt", b"older", 3)  # older: updated
    s = run(src, dst, update=True)
    assert (dst / "edited-there.txt").read_bytes() == b"destination edit"
    assert (dst / "stale-there.txt").read_bytes() == b"source"
    assert s.files_updated == 1
    run(src, dst)
    assert (dst / "edited-there.txt").read_bytes() == b"source"


def test_cli_size_only_and_update(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    aged(src / "f.txt", b"aaa", 3)
    aged(dst / "f.txt", b"bbbb", 1)
    out = run_ferry("plan", src, dst, "-u").stdout
    assert "f.txt" not in out
    run_ferry("copy", src, dst, "--update")
    assert (dst / "f.txt").read_bytes() == b"bbbb"
    aged(dst / "f.txt", b"bbb", 1)
    run_ferry("sync", src, dst, "--size-only")
    assert (dst / "f.txt").read_bytes() == b"bbb"
    bad = run_ferry(
        "copy", src, dst, "--size-only", "--checksum", check_rc=ErrorKind.USAGE.exit_code
    )
    assert "--size-only" in bad.stderr
    # verify compares content always: the flags are not its own.
    run_ferry("verify", src, dst, "--size-only", check_rc=2)


def test_the_mover_spec_names_size_only() -> None:
    from ferry.mover.spec import TransferSpec

    spec = {
        "source": {"kind": "local", "path": "a"},
        "destination": {"kind": "local", "path": "b"},
        "options": {"compare": "Size"},
    }
    assert TransferSpec.model_validate(spec).to_engine()[2].compare == Compare.SIZE


# -- --files-from ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for rel in ("a.txt", "b.txt", "d/c.txt", "d/e/f.txt", "g/h.txt", "g/i.txt"):
        aged(root / rel, rel.encode(), 1)
    return root


def listing(tmp_path: Path, *lines: str) -> Path:
    p = tmp_path / "list.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_files_from_copies_only_the_listed_paths(tree: Path, tmp_path: Path) -> None:
    lst = listing(tmp_path, "# wanted", "a.txt", "", "./d/e/f.txt", "/g/")
    dst = tmp_path / "dst"
    run_ferry("copy", tree, dst, "--files-from", lst)
    assert files(dst) == {"a.txt", "d/e/f.txt", "g/h.txt", "g/i.txt"}
    again = run_ferry("copy", tree, dst, "--files-from", lst, "--json")
    counts = json.loads(again.stdout)
    assert counts["filesCopied"] == 0 and counts["filesSkipped"] == 4
    run_ferry("verify", tree, dst, "--files-from", lst)
    run_ferry("verify", tree, dst, check_rc=1)  # without it, the unlisted are missing


def test_files_from_combines_with_excludes(tree: Path, tmp_path: Path) -> None:
    lst = listing(tmp_path, "a.txt", "g")
    dst = tmp_path / "dst"
    run_ferry("copy", tree, dst, "--files-from", lst, "--exclude", "i.txt")
    assert files(dst) == {"a.txt", "g/h.txt"}


def test_sync_with_files_from_protects_what_is_not_listed(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    aged(dst / "unlisted.txt", b"keep me", 1)
    aged(dst / "g" / "gone.txt", b"under a listed directory: deleted", 1)
    run_ferry("sync", tree, dst, "--files-from", listing(tmp_path, "a.txt", "g"))
    assert files(dst) == {"a.txt", "unlisted.txt", "g/h.txt", "g/i.txt"}


@pytest.mark.parametrize("line", ["../etc/passwd", "d/../a.txt", "d//c.txt", "/", "."])
def test_files_from_refuses_paths_outside_the_source(tree: Path, tmp_path: Path, line: str) -> None:
    bad = run_ferry(
        "copy",
        tree,
        tmp_path / "dst",
        "--files-from",
        listing(tmp_path, "a.txt", line),
        check_rc=ErrorKind.USAGE.exit_code,
    )
    assert "--files-from line 2" in bad.stderr
    assert not (tmp_path / "dst").exists()


def test_files_from_refused_for_a_single_file_and_a_missing_list(
    tree: Path, tmp_path: Path
) -> None:
    lst = listing(tmp_path, "a.txt")
    bad = run_ferry(
        "copy",
        tree / "a.txt",
        tmp_path / "x",
        "--files-from",
        lst,
        check_rc=ErrorKind.USAGE.exit_code,
    )
    assert "--files-from" in bad.stderr
    bad = run_ferry(
        "copy",
        tree,
        tmp_path / "x",
        "--files-from",
        tmp_path / "nope",
        check_rc=ErrorKind.USAGE.exit_code,
    )
    assert "--files-from" in bad.stderr


# -- --delete-excluded -----------------------------------------------------------------------


def test_delete_excluded_deletes_what_the_filters_leave_out(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    run_ferry("sync", tree, dst)
    aged(dst / "extra.log", b"only at the destination, excluded", 1)
    aged(dst / "keep.txt", b"only at the destination, included", 1)
    run_ferry("sync", tree, dst, "--exclude", "*.log", "--exclude", "g/")
    assert "extra.log" in files(dst) and "g/h.txt" in files(dst)  # protected
    run_ferry("sync", tree, dst, "--exclude", "*.log", "--exclude", "g/", "--delete-excluded")
    assert files(dst) == {"a.txt", "b.txt", "d/c.txt", "d/e/f.txt"}
    assert not (dst / "g").exists()


def test_delete_excluded_with_bounds(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    run(tree, dst, mode=Mode.SYNC)
    aged(dst / "big.bin", b"z" * 5000, 1)
    s = run(tree, dst, mode=Mode.SYNC, max_size=1024, delete_excluded=True)
    assert "big.bin" not in files(dst) and s.files_deleted == 1


def test_delete_excluded_refused_where_it_cannot_apply(tree: Path, tmp_path: Path) -> None:
    usage = ErrorKind.USAGE.exit_code
    bad = run_ferry("copy", tree, tmp_path / "x", "--delete-excluded", check_rc=usage)
    assert "--delete-excluded" in bad.stderr
    bad = run_ferry(
        "plan", tree, tmp_path / "x", "--delete-excluded", "--exclude", "a*", check_rc=usage
    )
    assert "--delete-excluded applies only to sync" in bad.stderr
    bad = run_ferry("sync", tree, tmp_path / "x", "--delete-excluded", check_rc=usage)
    assert "--delete-excluded without a filter" in bad.stderr
    assert not (tmp_path / "x").exists()
    run_ferry("sync", tree, tmp_path / "x")
    out = run_ferry("plan", "--sync", tree, tmp_path / "x", "--delete-excluded", "--exclude", "a*")
    assert out.stdout.split() == ["delete", "a.txt"]
    assert (tmp_path / "x" / "a.txt").exists()


# -- output: -q, -P, --log-file, --log-level, --stats ----------------------------------------


def test_quiet_drops_the_summary_not_the_errors(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    loud = run_ferry("copy", tree, dst)
    assert "copy:" in loud.stderr
    quiet = run_ferry("sync", tree, dst, "-q")
    assert quiet.stderr == "" and quiet.stdout == ""
    assert (
        run_ferry("verify", tree, dst, "--quiet").stderr
        + run_ferry("verify", tree, dst, "--quiet").stdout
        == ""
    )
    bad = run_ferry("copy", tmp_path / "missing", dst, "-q", check_rc=None)
    assert bad.rc != 0 and "error" in bad.stderr


def test_log_file_and_level(tree: Path, tmp_path: Path) -> None:
    log = tmp_path / "ferry.log"
    r = run_ferry("copy", tree, tmp_path / "dst", "--log-file", log, "--log-level", "debug")
    text = log.read_text()
    assert "INFO: " in text and "INFO: " in r.stderr  # below the default WARNING
    run_ferry("copy", tree, tmp_path / "dst2", "--log-file", log, "--log-level", "ERROR")
    assert log.read_text() == text  # appended: nothing at ERROR on a clean run
    bad = run_ferry("copy", tree, tmp_path / "x", "--log-level", "loud", check_rc=2)
    assert "--log-level" in bad.stderr
    bad = run_ferry("copy", tree, tmp_path / "x", "--log-level", "INFO", "-v", check_rc=2)
    assert "--log-level and -v" in bad.stderr
    bad = run_ferry("copy", tree, tmp_path / "x", "--log-file", tmp_path / "no" / "f", check_rc=2)
    assert "--log-file" in bad.stderr


def test_dash_p_is_the_bar(tree: Path, tmp_path: Path) -> None:
    from ferry.cli import build_parser

    assert build_parser("copy").parse_args(["copy", "a", "b", "-P"]).progress == "bar"
    r = run_ferry("copy", tree, tmp_path / "dst", "-P")
    assert "copy:" in r.stderr and "files" in r.stderr.split("copy:")[0]


def test_stats_prints_periodic_lines(tmp_path: Path) -> None:
    src = tmp_path / "src"
    aged(src / "f.bin", os.urandom(3 * 1024 * 1024), 1)
    # --bwlimit stretches the run to ~3 s: several 0.5 s intervals.
    r = run_ferry("copy", src, tmp_path / "dst", "--stats", "0.5s", "--bwlimit", "1M")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ferry: stats: ")]
    assert len(lines) >= 2, r.stderr
    assert "of 3.0 MiB" in lines[-1] and "files" in lines[-1]
    for bad in ("0", "soon"):
        err = run_ferry("copy", src, tmp_path / "x", "--stats", bad, check_rc=2)
        assert "--stats" in err.stderr


# -- fuzzing the parsers ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_parse_duration_returns_seconds_or_a_usage_error(text: str) -> None:
    try:
        seconds = parse_duration(text, "--max-age")
    except FerryError as exc:
        assert exc.kind == ErrorKind.USAGE and "--max-age" in str(exc)
    else:
        assert 0 <= seconds < float("inf")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab./#; \n\r\0", max_size=12), max_size=6))
def test_files_from_paths_stay_inside_the_source(lines: list[str]) -> None:
    try:
        paths = parse_files_from(lines)
    except FerryError as exc:
        assert exc.kind == ErrorKind.USAGE and "--files-from line" in str(exc)
        return
    for p in paths:
        parts = p.split("/")
        assert p and not p.startswith("/") and all(x not in ("", ".", "..") for x in parts)
        assert PathList(paths).include_file(p)
