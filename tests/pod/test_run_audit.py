"""`ferry run` with a TransferJob's auditLog, chmod/chown and filesFrom: the audit log
kept under the destination's root (and never copied, compared or deleted by the sync that
writes it), or alone on stdout; a dry run's plan as JSON lines; filesFrom read as the CLI
reads --files-from."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ferry.mover import spec as ms
from tests.conftest import run_ferry


def pod_env(log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FERRY_TRANSFERJOB", "TRACEPARENT")}
    return {**env, "FERRY_TERMINATION_LOG": str(log)}


def _spec(tmp_path: Path, options: dict[str, Any], shard: dict[str, int] | None = None) -> Path:
    doc: dict[str, Any] = {
        "source": {"kind": "local", "path": str(tmp_path / "src")},
        "destination": {"kind": "local", "path": str(tmp_path / "dst")},
        "options": options,
    }
    if shard:
        doc["shard"] = shard
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(doc))
    return path


def seed_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name in ("a", "b", "d/c"):
        (src / name).write_text(name * 10)
    return src


def audit_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_audit_log_in_the_destination_survives_a_second_sync(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    spec = _spec(tmp_path, {"mode": "Sync", "auditLog": "logs/audit.jsonl"})
    r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    assert r.summary["filesCopied"] == 3
    audit = tmp_path / "dst" / "logs" / "audit.jsonl"
    first = audit_lines(audit.read_text())
    copied = sorted(e["path"] for e in first if e["op"] == "copy")
    assert copied == ["a", "b", "d/c"] and all(e["result"] == "done" for e in first)
    # The source has neither the file nor its directory: a sync would delete both.
    r2 = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    assert r2.summary["filesDeleted"] == 0 and r2.summary["filesCopied"] == 0
    second = audit_lines(audit.read_text())[len(first) :]
    assert second and not any("logs" in e["path"] for e in first + second)
    assert all(e["op"] == "skip" for e in second if e["path"] in ("a", "b", "d/c"))


def test_a_source_file_of_the_audit_logs_name_is_not_copied_onto_it(tmp_path: Path) -> None:
    src = seed_tree(tmp_path)
    (src / "audit.jsonl").write_text("not the log\n")
    spec = _spec(tmp_path, {"mode": "Sync", "auditLog": "audit.jsonl", "verify": "Full"})
    r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    assert r.summary["filesCopied"] == 3
    text = (tmp_path / "dst" / "audit.jsonl").read_text()
    assert "not the log" not in text and all(e["path"] != "audit.jsonl" for e in audit_lines(text))


def test_a_dry_run_gives_its_plan_as_json_lines_on_stdout(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    spec = _spec(tmp_path, {"mode": "Sync", "dryRun": True, "auditLog": "-"})
    log = tmp_path / "t"
    r = run_ferry("run", "--spec", spec, env=pod_env(log))
    plan = audit_lines(r.stdout)  # stdout holds the audit lines and nothing else
    assert sorted(e["path"] for e in plan if e["op"] == "copy") == ["a", "b", "d/c"]
    assert {e["result"] for e in plan} == {"planned"}
    assert not (tmp_path / "dst").exists()
    summary = json.loads(log.read_text())  # the summary: termination message and stderr
    assert summary["filesCopied"] == 3
    assert json.loads(r.stderr.strip().splitlines()[-1]) == summary


def test_a_dry_run_plan_in_the_destination_file(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    spec = _spec(tmp_path, {"dryRun": True, "auditLog": "plan.jsonl"})
    run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    plan = audit_lines((tmp_path / "dst" / "plan.jsonl").read_text())
    assert sorted(e["path"] for e in plan if e["op"] == "copy") == ["a", "b", "d/c"]
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["plan.jsonl"]


def test_shards_write_one_file_each(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    paths: list[str] = []
    for i in range(2):
        spec = _spec(tmp_path, {"mode": "Sync", "auditLog": "a.log"}, {"index": i, "count": 2})
        run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
        paths += [e["path"] for e in audit_lines((tmp_path / "dst" / f"a.log.{i}").read_text())]
    # "." is the destination root's metadata, set by each shard as rsync sets it
    assert sorted(p for p in paths if p not in ("d", ".")) == ["a", "b", "d/c"]
    assert not (tmp_path / "dst" / "a.log").exists()
    # a later shard's sync left the earlier shard's file alone
    assert (tmp_path / "dst" / "a.log.0").exists() and (tmp_path / "dst" / "a.log.1").exists()


def test_files_from_and_chmod(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    opts = {"filesFrom": ["# two of three", "a", "/d/c"], "chmod": "F600,D755"}
    run_ferry("run", "--spec", _spec(tmp_path, opts), env=pod_env(tmp_path / "t"))
    dst = tmp_path / "dst"
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == ["a", "d", "d/c"]
    assert stat.S_IMODE((dst / "a").stat().st_mode) == 0o600
    assert stat.S_IMODE((dst / "d").stat().st_mode) == 0o755


def test_chown_is_applied_as_root_and_refused_naming_it_otherwise(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    spec = _spec(tmp_path, {"chown": "1234:2345"})
    if os.geteuid() != 0:
        r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"), check_rc=2)
        assert "--chown needs root" in r.summary["message"]
        return
    run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    st = (tmp_path / "dst" / "d" / "c").stat()
    assert (st.st_uid, st.st_gid) == (1234, 2345)


BAD = [
    ({"auditLog": "../up"}, "auditLog must be a relative path"),
    ({"auditLog": "/abs"}, "auditLog must be a relative path"),
    ({"auditLog": "a//b"}, "auditLog must be a relative path"),
    ({"chmod": "F9"}, "chmod"),
    ({"chown": "a:b:c"}, "chown"),
    ({"filesFrom": ["ok", "x/../y"]}, "filesFrom line 2"),
]


@pytest.mark.parametrize(("options", "says"), BAD)
def test_the_spec_refuses_naming_the_field(options: dict[str, Any], says: str) -> None:
    doc = {
        "source": {"kind": "local", "path": "/s"},
        "destination": {"kind": "local", "path": "/d"},
        "options": options,
    }
    with pytest.raises(ValidationError) as exc:
        ms.TransferSpec.model_validate(doc)
    assert says in ms.spec_errors(exc.value)
    assert "--" not in ms.spec_errors(exc.value)


def test_a_file_audit_log_at_a_remote_destination_is_uploaded_not_opened() -> None:
    """At s3 the engine writes no file of its own (the pod uploads a temp file, see
    tests/backends/test_audit_upload.py); the name is still protected from the sync."""
    doc: dict[str, Any] = {
        "source": {"kind": "local", "path": "/s"},
        "destination": {"kind": "s3", "bucket": "bkt"},
        "options": {"auditLog": "x.log"},
        "shard": {"index": 1, "count": 2},
    }
    spec = ms.TransferSpec.model_validate(doc)
    options = spec.to_engine()[2]
    assert options.audit_log is None and options.protect == ("x.log.0", "x.log.1")
    assert spec.audit_upload() == "x.log.1"
    doc["options"] = {"auditLog": "-"}
    spec = ms.TransferSpec.model_validate(doc)
    assert spec.to_engine()[2].audit_log == "-" and spec.audit_upload() is None


def test_delete_excluded_and_a_rename_onto_the_name_leave_the_audit_log(tmp_path: Path) -> None:
    """Two more ways a sync could reach the file: its name excluded with --delete-excluded,
    and a source file renamed onto it."""
    src = seed_tree(tmp_path)
    (src / "x.txt").write_text("renamed onto the log")
    opts = {
        "mode": "Sync",
        "auditLog": "x.jsonl",
        "filters": ["- *.jsonl"],
        "deleteExcluded": True,
        "rename": ["s/\\.txt$/.jsonl/"],
    }
    spec = _spec(tmp_path, opts)
    for _ in range(2):
        r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
        assert r.summary["filesDeleted"] == 0
    lines = audit_lines((tmp_path / "dst" / "x.jsonl").read_text())
    assert {e["path"] for e in lines} >= {"a", "b", "d/c"}
    assert all(e["path"] != "x.jsonl" for e in lines)


def test_a_real_run_with_stdout_audit_leaves_stdout_to_the_audit_lines(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    spec = _spec(tmp_path, {"mode": "Sync", "auditLog": "-", "verify": "Full"})
    r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    lines = audit_lines(r.stdout)
    assert lines and all(set(e) >= {"time", "op", "path", "result"} for e in lines)
    assert sorted(e["path"] for e in lines if e["op"] == "copy") == ["a", "b", "d/c"]
    summary = json.loads((tmp_path / "t").read_text())
    assert summary["filesCopied"] == sum(e["op"] == "copy" for e in lines)


def test_a_file_destination_has_no_root_for_the_audit_log(tmp_path: Path) -> None:
    """A file source written to a name: refused naming auditLog; into a directory: kept there."""
    src = seed_tree(tmp_path)
    doc: dict[str, Any] = {
        "source": {"kind": "local", "path": str(src / "a")},
        "destination": {"kind": "local", "path": str(tmp_path / "out" / "renamed")},
        "options": {"auditLog": "audit.jsonl"},
    }
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(doc))
    r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"), check_rc=2)
    assert "auditLog: the destination names a file" in r.summary["message"]
    assert not (tmp_path / "out").exists()
    doc["destination"]["path"] += "/"
    spec.write_text(json.dumps(doc))
    run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    out = tmp_path / "out" / "renamed"
    assert (out / "a").read_text() == "a" * 10
    assert [e["path"] for e in audit_lines((out / "audit.jsonl").read_text())] == ["a"]


def test_a_file_source_written_to_a_remote_name_refuses_a_file_audit_log(tmp_path: Path) -> None:
    """The log would go below the object the file becomes: refused before anything runs."""
    (tmp_path / "f").write_text("x")
    doc = {
        "source": {"kind": "local", "path": str(tmp_path / "f")},
        "destination": {
            "kind": "s3",
            "bucket": "bkt",
            "prefix": "obj",
            "endpointUrl": "http://127.0.0.1:9",
        },
        "options": {"auditLog": "a.log"},
    }
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(doc))
    r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"), check_rc=2)
    assert "auditLog: the destination names a file" in r.summary["message"]


def test_files_from_a_mounted_file(tmp_path: Path) -> None:
    """filesFromConfigMap: the operator mounts the key and the spec names the file."""
    seed_tree(tmp_path)
    listed = tmp_path / "list"
    listed.write_text("; the mounted ConfigMap key\nb\n/d/\n")
    run_ferry(
        "run",
        "--spec",
        _spec(tmp_path, {"filesFromFile": str(listed)}),
        env=pod_env(tmp_path / "t"),
    )
    dst = tmp_path / "dst"
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == ["b", "d", "d/c"]
    listed.unlink()
    r = run_ferry(
        "run",
        "--spec",
        _spec(tmp_path, {"filesFromFile": str(listed)}),
        env=pod_env(tmp_path / "t"),
        check_rc=2,
    )
    assert "filesFromConfigMap: cannot read" in r.summary["message"]
