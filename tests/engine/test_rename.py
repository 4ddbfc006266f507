"""`--rename`: rule syntax, order, collisions refused before any write, sync and the
second run with renamed names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.mover.endpoints import LocalEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Compare, Mode, Options
from ferry.mover.rename import Renamer, Rule
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer
from tests.conftest import run_ferry


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def dirs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def run(src: Path, dst: Path, *rules: str, **kw: object) -> Summary:
    return run_transfer(
        LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(rename=rules, **kw)
    )  # type: ignore[arg-type]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "notes.txt.d" / "inner").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "b.TXT").write_text("b")
    (root / "keep.bin").write_bytes(b"\0\1")
    (root / "notes.txt.d" / "c.txt").write_text("c")
    (root / "notes.txt.d" / "inner" / "d.txt").write_text("d")
    return root


# -- rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "name", "out"),
    [
        (["s/\\.txt$/.md/"], "a.txt", "a.md"),
        (["s/\\.txt$/.md/"], "a.txt.bak", "a.txt.bak"),
        (["s/a/b/", "s/b/c/"], "a", "c"),  # in order, each on the last one's result
        (["s/b/c/", "s/a/b/"], "a", "b"),
        (["s/o/0/"], "foo", "f0o"),  # the first match, as sed
        (["s/o/0/g"], "foo", "f00"),
        (["s/TXT/txt/i"], "a.Txt", "a.txt"),
        (["s/(\\w+)-(\\d+)/\\2-\\1/"], "log-42", "42-log"),
        (["s/(?P<y>\\d{4})/year\\g<y>/"], "r2024", "ryear2024"),
        (["s|x|y|"], "xx", "yx"),  # any delimiter
        (["s/\\//_/"], "a", "a"),  # an escaped delimiter is literal
        (["s#^#pre-#"], "f", "pre-f"),
    ],
)
def test_rules(rules: list[str], name: str, out: str) -> None:
    assert Renamer(rules)(name) == out


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("x/a/b/", "starts with 's' and a delimiter"),
        ("s", "starts with 's' and a delimiter"),
        ("sa/b/c/", "cannot be the delimiter"),
        ("s/a/b", "unterminated"),
        ("s/a/b/c/", "more than three"),
        ("s//b/", "regular expression is empty"),
        ("s/(/b/", "invalid regular expression"),
        ("s/a/\\2/", "invalid replacement"),
        ("s/a/b/x", "unknown flag(s) 'x'"),
    ],
)
def test_malformed_rules_are_refused_naming_the_rule(rule: str, why: str) -> None:
    with pytest.raises(FerryError) as exc:
        Rule.parse(rule)
    assert exc.value.kind == ErrorKind.USAGE
    assert str(exc.value).startswith(f"--rename {rule!r}: ") and why in str(exc.value)
    with pytest.raises(FerryError):
        Options(rename=(rule,))


@pytest.mark.parametrize("rule", ["s/.*//", "s/.*/../", "s/a/x\\/y/", "s/^/.~ferry./"])
def test_a_name_no_directory_can_hold_is_refused(rule: str) -> None:
    with pytest.raises(FerryError) as exc:
        Renamer([rule])("a")
    assert "not a name a directory can hold" in str(exc.value)


def test_cli_refuses_a_malformed_rule_before_anything(tmp_path: Path, src: Path) -> None:
    r = run_ferry("copy", src, tmp_path / "d", "--rename", "s/(/x/", check_rc=2)
    assert "--rename 's/(/x/': invalid regular expression" in r.stderr
    assert not (tmp_path / "d").exists()


# -- transfers -------------------------------------------------------------------------------


def test_names_of_files_and_directories_are_renamed(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "dst"
    s = run(src, dst, "s/\\.txt/.md/", "s/^keep/kept/")
    assert s.exit_code == 0 and s.files_copied == 5
    assert files(dst) == {
        "a.md": b"a",
        "b.TXT": b"b",
        "kept.bin": b"\0\1",
        "notes.md.d/c.md": b"c",
        "notes.md.d/inner/d.md": b"d",
    }
    assert dirs(dst) == {"notes.md.d", "notes.md.d/inner"}
    # metadata follows the renamed names
    assert os.stat(dst / "a.md").st_mtime_ns == os.stat(src / "a.txt").st_mtime_ns
    assert os.stat(dst / "notes.md.d").st_mtime_ns == os.stat(src / "notes.txt.d").st_mtime_ns


@pytest.mark.parametrize("compare", [Compare.SIZE_MTIME, Compare.CHECKSUM])
def test_second_run_has_nothing_to_do(tmp_path: Path, src: Path, compare: Compare) -> None:
    dst = tmp_path / "dst"
    rules = ("s/\\.txt/.md/",)
    assert run(src, dst, *rules, compare=compare).files_copied == 5
    again = run(src, dst, *rules, compare=compare)
    assert (again.files_copied, again.files_updated, again.bytes_transferred) == (0, 0, 0)
    assert again.files_skipped == 5
    plan = run_ferry("plan", "--sync", src, dst, "--rename", rules[0], "--json")
    assert plan.summary["filesCopied"] == plan.summary["filesDeleted"] == 0


def test_sync_deletes_by_renamed_names(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "dst"
    rules = ("s/\\.txt$/.md/",)
    run(src, dst, *rules, mode=Mode.SYNC)
    (dst / "extra.md").write_text("not in the source")
    (dst / "a.txt").write_text("the old name: extraneous now")
    (src / "notes.txt.d" / "c.txt").unlink()
    s = run(src, dst, *rules, mode=Mode.SYNC)
    assert s.exit_code == 0 and s.files_deleted == 3 and s.files_copied == 0
    assert files(dst) == {
        "a.md": b"a",
        "b.TXT": b"b",
        "keep.bin": b"\0\1",
        "notes.txt.d/inner/d.md": b"d",
    }
    # an updated source file updates its renamed copy
    (src / "a.txt").write_text("a, longer now")
    s = run(src, dst, *rules, mode=Mode.SYNC)
    assert s.files_updated == 1 and (dst / "a.md").read_text() == "a, longer now"


def test_a_collision_is_refused_before_anything_is_written(tmp_path: Path, src: Path) -> None:
    # The colliding pair sits in a directory the walk reaches last: still nothing is written.
    (src / "zz").mkdir()
    (src / "zz" / "x.txt").write_text("1")
    (src / "zz" / "x.md").write_text("2")
    dst = tmp_path / "dst"
    for mode in (Mode.COPY, Mode.SYNC):
        s = run(src, dst, "s/\\.txt$/.md/", mode=mode)
        assert s.fatal is not None and s.fatal.kind == ErrorKind.USAGE
        assert "maps both 'x.md' and 'x.txt' to 'x.md'" in str(s.fatal)
        assert s.fatal.path == f"{src}/zz"
        assert not dst.exists()
    r = run_ferry("plan", src, dst, "--rename", "s/\\.txt$/.md/", check_rc=2)
    assert "nothing was written" in r.stderr
    # two rules that together merge names collide as well
    (src / "zz" / "x.md").unlink()
    (src / "zz" / "y.txt").write_text("3")
    s = run(src, dst, "s/\\.txt$/.md/", "s/^[xy]/q/")
    assert s.fatal is not None and "to 'q.md'" in str(s.fatal) and not dst.exists()


def test_an_excluded_entry_takes_no_name(tmp_path: Path, src: Path) -> None:
    (src / "a.md").write_text("excluded")
    dst = tmp_path / "dst"
    s = run(src, dst, "s/\\.txt$/.md/", filters=("- /a.md",))
    assert s.exit_code == 0 and (dst / "a.md").read_text() == "a"


def test_single_file_into_a_directory_is_renamed(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "dst"
    r = run_ferry("copy", src / "a.txt", f"{dst}/", "--rename", "s/a/z/", "--json")
    assert r.summary["filesCopied"] == 1 and files(dst) == {"z.txt": b"a"}
    r = run_ferry("copy", src / "a.txt", f"{dst}/", "--rename", "s/a/z/", "--json")
    assert r.summary["filesSkipped"] == 1
    r = run_ferry("copy", src / "a.txt", dst / "n.txt", "--rename", "s/a/z/", check_rc=2)
    assert "--rename (spec rename) does not apply when the destination names the file" in r.stderr


# -- untrusted text: any rule either parses or is refused as usage; any name renames or is refused


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(min_size=1, max_size=60))
def test_any_rule_text_and_name_end_in_a_rule_or_a_usage_error(rule: str, name: str) -> None:
    try:
        renamer = Renamer([rule])
    except FerryError as exc:
        assert exc.kind == ErrorKind.USAGE and repr(rule) in str(exc)
        return
    try:
        out = renamer(name)
    except FerryError as exc:
        assert exc.kind == ErrorKind.USAGE
        return
    assert out == name or (out and "/" not in out and out not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from("/|#,:"), st.text(alphabet="ab/|#,:\\.", max_size=12))
def test_an_escaped_delimiter_is_literal(delim: str, text: str) -> None:
    escaped = text.replace("\\", "").replace(delim, "\\" + delim)
    if not escaped:
        return
    rule = Rule.parse(f"s{delim}{escaped}{delim}X{delim}")
    assert rule.pattern.pattern == text.replace("\\", "")


def test_an_excluded_name_the_rules_would_break_is_not_refused(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "dst"
    s = run(src, dst, "s/^keep\\.bin$//", filters=("- /keep.bin",))
    assert s.exit_code == 0 and "keep.bin" not in files(dst) and "a.txt" in files(dst)
    s = run(src, tmp_path / "other", "s/^keep\\.bin$//")
    assert s.fatal is not None and "not a name a directory can hold" in str(s.fatal)
    assert not (tmp_path / "other").exists()


def test_verify_compares_by_renamed_names(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "dst"
    rules = ("s/\\.txt$/.md/",)
    assert run(src, dst, *rules).exit_code == 0
    r = run_ferry("verify", src, dst, "--rename", rules[0])
    assert "5 files compared by content; identical" in r.stderr
    (dst / "notes.txt.d" / "c.md").write_text("C")
    (dst / "notes.txt.d" / "stray").write_text("s")
    r = run_ferry("verify", src, dst, "--rename", rules[0], check_rc=1)
    got = sorted(line.split()[:2] for line in r.stdout.splitlines() if "mtime" not in line)
    assert got == [["content", "notes.txt.d/c.md"], ["extra", "notes.txt.d/stray"]]
    # without the rules every renamed file is missing and its new name extra
    r = run_ferry("verify", src, dst, check_rc=1)
    assert "missing    a.txt" in r.stdout and "extra      a.md" in r.stdout


def test_an_error_before_any_work_prints_the_error_alone(tmp_path: Path) -> None:
    """Refused before anything was written: no line of zeros above the error."""
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    (src / "g").write_bytes(b"2")
    r = run_ferry("copy", src, tmp_path / "d", "--rename", "s/f/g/", check_rc=2)
    assert r.stderr.startswith("ferry: error: ") and "copied" not in r.stderr
    r = run_ferry("copy", tmp_path / "missing", tmp_path / "d", check_rc=3)
    assert r.stderr.startswith("ferry: error: ") and "copied" not in r.stderr
    r = run_ferry("copy", src, tmp_path / "d")
    assert "copy: 2 copied" in r.stderr and "B/s)" in r.stderr  # binary units, as sizes
