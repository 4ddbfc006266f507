"""`--chmod` / `--chown`: rsync's syntax parsed and refused clearly, applied to what is
written, compared so a second run is a no-op, and checked by `ferry verify`."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.mover.endpoints import LocalEndpoint
from ferry.mover.errors import FerryError
from ferry.mover.metaxform import Chmod, Chown
from ferry.mover.options import Options
from ferry.mover.plan import Planner
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer
from ferry.mover.verify import Difference, verify_trees
from tests.asuser import as_user, shared_dir
from tests.conftest import run_ferry
from tests.engine.memtree import PLAIN, Tree
from tests.engine.memtree import D as Dir

F, D = False, True


@pytest.mark.parametrize(
    ("spec", "mode", "kind", "out"),
    [
        ("D755,F644", 0o600, F, 0o644),
        ("D755,F644", 0o700, D, 0o755),
        ("u+rwx,g-w,o=", 0o666, F, 0o740),
        ("Dg+s,Fo-rwx", 0o755, D, 0o2755),
        ("Dg+s,Fo-rwx", 0o757, F, 0o750),
        ("a+X", 0o644, F, 0o644),  # X: no execute bit to follow
        ("a+X", 0o744, F, 0o755),
        ("a+X", 0o600, D, 0o711),
        ("go=", 0o777, F, 0o700),
        ("+t", 0o755, D, 0o1755),
        ("u=rw,go=r", 0o777, F, 0o644),
        ("0", 0o777, F, 0),
        ("u-w+x", 0o644, F, 0o544),
    ],
)
def test_chmod_clauses(spec: str, mode: int, kind: bool, out: int) -> None:
    assert Chmod(spec).apply(mode, kind) == out


@pytest.mark.parametrize(
    ("spec", "part"),
    [
        ("", "empty"),
        ("D", "'D'"),
        ("F999", "'F999'"),
        ("u+q", "'u+q'"),
        ("755,x", "'x'"),
        ("D755,,F644", "''"),
        ("12345", "'12345'"),
        ("uz+r", "'uz+r'"),
    ],
)
def test_chmod_refused_naming_the_part(spec: str, part: str) -> None:
    with pytest.raises(FerryError) as err:
        Options(chmod=spec)
    assert "--chmod" in str(err.value) and part in str(err.value)


@given(st.text(alphabet="DFugoa+-=rwxXst01234567,9 q", max_size=30))
def test_chmod_fuzz(spec: str) -> None:
    """Any text is parsed or refused with a --chmod error; what parses yields a mode."""
    try:
        c = Chmod(spec)
    except FerryError as exc:
        assert "--chmod" in str(exc)
        return
    for kind in (F, D):
        assert 0 <= c.apply(0o644, kind) <= 0o7777


def test_chown_parse() -> None:
    assert Chown.parse("0:0") == Chown(0, 0)
    assert Chown.parse("root") == Chown(0, -1)
    assert Chown.parse(":0") == Chown(-1, 0)
    for bad, why in (
        (":", "expected USER:GROUP"),
        ("nosuchuser-xq:", "no such user"),
        (":nosuchgroup-xq", "no such group"),
        ("99999999999:", "out of range"),
    ):
        with pytest.raises(FerryError, match=why):
            Options(chown=bad)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.sh").write_text("#!/bin/sh\n")
    (root / "sub" / "b.txt").write_text("b")
    os.chmod(root / "a.sh", 0o700)
    os.chmod(root / "sub" / "b.txt", 0o600)
    os.chmod(root / "sub", 0o700)
    return root


def run(src: Path, dst: Path, **kw: object) -> Summary:
    return run_transfer(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(**kw))  # type: ignore[arg-type]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def verify(src: Path, dst: Path, **kw: object) -> list[Difference]:
    found: list[Difference] = []
    s = verify_trees(LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(**kw), found.append)  # type: ignore[arg-type]
    assert s.fatal is None
    return found


def test_chmod_local_copy_second_run_and_verify(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    s = run(src, dst, chmod="D755,Fa+X,Fgo+r")
    assert s.fatal is None and s.files_copied == 2
    assert mode(dst / "a.sh") == 0o755  # a+X follows the source's execute bit
    assert mode(dst / "sub" / "b.txt") == 0o644
    assert mode(dst / "sub") == 0o755
    assert mode(src / "sub" / "b.txt") == 0o600  # the source is untouched
    again = run(src, dst, chmod="D755,Fa+X,Fgo+r")
    assert (again.files_copied, again.files_updated, again.files_skipped) == (0, 0, 2)
    assert verify(src, dst, chmod="D755,Fa+X,Fgo+r") == []
    # Without the flag the modes differ from the source's: verify says so, a run fixes them.
    assert {d.path for d in verify(src, dst) if d.what == "mode"} == {"a.sh", "sub", "sub/b.txt"}
    os.chmod(dst / "sub" / "b.txt", 0o666)
    assert [d.path for d in verify(src, dst, chmod="D755,Fa+X,Fgo+r")] == ["sub/b.txt"]
    os.chmod(dst / "sub", 0o777)
    log = tmp_path / "audit.jsonl"
    fixed = run(src, dst, chmod="D755,Fa+X,Fgo+r", audit_log=str(log))
    assert fixed.fatal is None and mode(dst / "sub" / "b.txt") == 0o644
    assert mode(dst / "sub") == 0o755
    fixes = [(e["op"], e["path"]) for e in map(json.loads, log.read_text().splitlines())]
    assert sorted(op for op in fixes if op[0] != "skip") == [
        ("dirmeta", "sub"),
        ("meta", "sub/b.txt"),
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="--chown needs root")
def test_chown_local_copy_second_run_and_verify(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    s = run(src, dst, chown="1234:2345")
    assert s.fatal is None and s.files_copied == 2
    for p in (dst / "a.sh", dst / "sub", dst / "sub" / "b.txt"):
        assert (p.stat().st_uid, p.stat().st_gid) == (1234, 2345)
    again = run(src, dst, chown="1234:2345")
    assert (again.files_copied, again.files_updated, again.files_skipped) == (0, 0, 2)
    assert verify(src, dst, chown="1234:2345") == []
    os.chown(dst / "a.sh", 0, 0)
    assert [(d.path, d.what) for d in verify(src, dst, chown="1234:2345")] == [("a.sh", "owner")]


def test_chown_refused_without_root(src: Path) -> None:
    with shared_dir() as base:
        shutil.copytree(src, base / "src")
        os.chmod(base / "src", 0o755)
        dst = base / "dst"
        assert "--chown needs root" in as_user(
            lambda: str(run(base / "src", dst, chown="0:0").fatal)
        )
        assert not dst.exists()


def test_cli_plan_lists_the_mode_fix_and_refuses_bad_specs(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    run_ferry("copy", src, dst)
    plan = run_ferry("plan", src, dst, "--chmod", "F644")
    assert {line.split()[1] for line in plan.stdout.splitlines() if line.startswith("meta")} == {
        "a.sh",
        "sub/b.txt",
    }
    run_ferry("copy", src, dst, "--chmod", "F644")
    again = run_ferry("plan", src, dst, "--chmod", "F644", "--json")
    assert again.summary["filesSkipped"] == 2 and not again.stderr.count("meta ")
    assert run_ferry("verify", src, dst, "--chmod", "F644").rc == 0
    bad = run_ferry("copy", src, dst, "--chmod", "Dq", check_rc=2)
    assert "--chmod" in bad.stderr and "'Dq'" in bad.stderr
    bad = run_ferry("copy", src, dst, "--chown", "no-such-user-x:", check_rc=2)
    assert "--chown: no such user 'no-such-user-x'" in bad.stderr


@given(st.text(max_size=20))
def test_chown_fuzz(spec: str) -> None:
    """Any text is parsed to ids or refused with a --chown error."""
    try:
        c = Chown.parse(spec)
    except FerryError as exc:
        assert "--chown" in str(exc)
        return
    assert c.uid >= 0 or c.gid >= 0


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"chmod": "F644"}, "--chmod: the destination cannot hold modes"),
        ({"chown": "0:0"}, "--chown: the destination cannot hold owners"),
    ],
)
def test_refused_where_the_destination_cannot_hold_it(kw: dict[str, str], why: str) -> None:
    """Towards an object store (no modes, no owners) the flags are refused, not ignored."""
    with pytest.raises(FerryError, match=why):
        Planner(Tree({"": Dir()}), Tree({}, caps=PLAIN), Options(**kw))  # type: ignore[arg-type]
