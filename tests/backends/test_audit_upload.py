"""`ferry run` with a file audit log at a remote destination (s3, sftp, smb): the lines go
to a temp file in the pod and are uploaded through the destination's backend when the run
ends; the file is never copied onto, compared or deleted by a sync, each run replaces it,
a dry run leaves the plan there, and a failed upload is reported without a secret and
without failing a transfer that succeeded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.backends.conftest import BUCKET, Remote
from tests.conftest import run_ferry
from tests.pod.test_run_audit import audit_lines, pod_env, seed_tree

SECRET = "Sup3rS3cretAuditValue"


def dest_spec(remote: Remote, sub: str) -> dict[str, Any]:
    """The mover spec's destination for `sub` on this remote."""
    srv = remote.server
    if remote.kind == "s3":
        return {
            "kind": "s3",
            "bucket": BUCKET,
            "prefix": sub,
            "endpointUrl": srv.endpoint_url,
            "credentialsFile": str(remote.creds),
        }
    if remote.kind == "sftp":
        return {
            "kind": "sftp",
            "host": "127.0.0.1",
            "port": srv.port,
            "path": f"{srv.root}/{sub}",
            "user": srv.user,
            "keyFile": str(srv.user_key),
            "knownHostsFile": str(srv.known_hosts),
        }
    return {
        "kind": "smb",
        "host": "127.0.0.1",
        "port": srv.port,
        "share": srv.share,
        "path": sub,
        "user": srv.user,
        "passwordFile": str(srv.password_file),
    }


def _spec(tmp_path: Path, dest: dict[str, Any], options: dict[str, Any]) -> Path:
    doc = {"source": {"kind": "local", "path": str(tmp_path / "src")}, "destination": dest}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**doc, "options": options}))
    return path


def _read_back(tmp_path: Path, remote: Remote, sub: str, rel: str) -> str:
    """The destination's file `rel` as the backends read it: copied back with ferry."""
    back = tmp_path / f"back-{len(list(tmp_path.glob('back-*')))}"
    src = dest_spec(remote, sub)
    doc = {"source": src, "destination": {"kind": "local", "path": str(back)}}
    spec = tmp_path / "back.json"
    spec.write_text(json.dumps({**doc, "options": {"filesFrom": [rel]}}))
    run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t-back"))
    return (back / rel).read_text()


def test_the_audit_log_is_uploaded_and_survives_a_second_sync(
    tmp_path: Path, remote: Remote
) -> None:
    seed_tree(tmp_path)
    sub = remote.fresh("audit")
    spec = _spec(tmp_path, dest_spec(remote, sub), {"mode": "Sync", "auditLog": "logs/a.jsonl"})
    r = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    assert r.summary["filesCopied"] == 3 and r.summary["auditLog"] == "logs/a.jsonl"
    first = audit_lines(_read_back(tmp_path, remote, sub, "logs/a.jsonl"))
    assert sorted(e["path"] for e in first if e["op"] == "copy") == ["a", "b", "d/c"]
    # The source has neither the file nor its directory: a sync would delete both.
    r2 = run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t"))
    assert r2.summary["filesDeleted"] == 0 and r2.summary["filesCopied"] == 0
    second = audit_lines(_read_back(tmp_path, remote, sub, "logs/a.jsonl"))
    # replaced, not appended: the second run's lines only, none about the log itself
    assert second and not any(e["op"] == "copy" for e in second)
    assert not any("logs" in e["path"] for e in first + second)


def test_a_dry_run_uploads_its_plan(tmp_path: Path, remote: Remote) -> None:
    seed_tree(tmp_path)
    sub = remote.fresh("plan")
    opts = {"mode": "Sync", "dryRun": True, "auditLog": "plan.jsonl"}
    r = run_ferry(
        "run", "--spec", _spec(tmp_path, dest_spec(remote, sub), opts), env=pod_env(tmp_path / "t")
    )
    assert r.summary["dryRun"] is True and r.summary["auditLog"] == "plan.jsonl"
    plan = audit_lines(_read_back(tmp_path, remote, sub, "plan.jsonl"))
    assert sorted(e["path"] for e in plan if e["op"] == "copy") == ["a", "b", "d/c"]
    assert {e["result"] for e in plan} == {"planned"}


def test_a_source_file_of_the_logs_name_is_not_copied_onto_it(
    tmp_path: Path, remote: Remote
) -> None:
    src = seed_tree(tmp_path)
    (src / "audit.jsonl").write_text("not the log\n")
    sub = remote.fresh("name")
    opts = {"mode": "Sync", "auditLog": "audit.jsonl"}
    r = run_ferry(
        "run", "--spec", _spec(tmp_path, dest_spec(remote, sub), opts), env=pod_env(tmp_path / "t")
    )
    assert r.summary["filesCopied"] == 3
    text = _read_back(tmp_path, remote, sub, "audit.jsonl")
    assert "not the log" not in text and all(e["path"] != "audit.jsonl" for e in audit_lines(text))


def test_a_failed_upload_is_reported_and_the_copy_still_succeeds(
    tmp_path: Path, remotes: Any
) -> None:
    """The log's directory is a file at the destination: the copy succeeds, the upload
    cannot, and the result says so."""
    remote = remotes("sftp")
    src = seed_tree(tmp_path)
    sub = remote.fresh("blocked")
    (src / "logs").write_text("a file where the directory goes")
    run_ferry(
        "run", "--spec", _spec(tmp_path, dest_spec(remote, sub), {}), env=pod_env(tmp_path / "t")
    )
    (src / "logs").unlink()
    opts = {"auditLog": "logs/a.jsonl"}
    r = run_ferry(
        "run", "--spec", _spec(tmp_path, dest_spec(remote, sub), opts), env=pod_env(tmp_path / "t")
    )
    assert r.summary["status"] == "ok" and r.summary["filesSkipped"] == 3
    assert "auditLog" not in r.summary
    assert "audit log could not be kept at logs/a.jsonl" in r.summary["auditLogError"]
    assert "could not be kept" in r.stderr


def test_a_failed_run_and_upload_say_so_without_the_secret(tmp_path: Path, remotes: Any) -> None:
    remote = remotes("s3")
    seed_tree(tmp_path)
    creds = tmp_path / "bad-creds"
    creds.write_text(
        f"[default]\naws_access_key_id = {remote.server.access_key}\n"
        f"aws_secret_access_key = {SECRET}\n"
    )
    dest = {**dest_spec(remote, remote.fresh("bad")), "credentialsFile": str(creds)}
    log = tmp_path / "t"
    r = run_ferry(
        "run",
        "--spec",
        _spec(tmp_path, dest, {"auditLog": "a.jsonl"}),
        env=pod_env(log),
        check_rc=None,
    )
    assert r.rc != 0 and r.summary["reason"] == "AuthFailed"
    assert "audit log could not be kept at a.jsonl" in r.summary["auditLogError"]
    assert SECRET not in r.stdout + r.stderr + log.read_text()
