"""`--audit-log`: one JSON line per decision and action, read back and matched against the
run's summary (counts per op, bytes), for a copy, a sync, a dry run and stdout."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends.base import Entry
from ferry.mover.backends.local import LocalBackend, LocalReader
from ferry.mover.endpoints import LocalEndpoint
from ferry.mover.engine.audit import AuditLog
from ferry.mover.options import ErrorPolicy, MiB, Mode, Options, Verify
from ferry.mover.redact import MASK, remember
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer, transfer_between
from tests.conftest import run_ferry
from tests.engine.test_faults import ChangingReader, FailingReader

FIELDS = {"time", "op", "path", "size", "bytes", "digest", "result", "error", "attempt"}


def lines(text: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in text.splitlines() if line.strip()]
    for d in out:
        assert set(d) == FIELDS
    return out


def run(src: Path, dst: Path, log: Path, **kw: Any) -> Summary:
    return run_transfer(
        LocalEndpoint(str(src)), LocalEndpoint(str(dst)), Options(audit_log=str(log), **kw)
    )


def matches(summary: Summary, entries: list[dict[str, Any]], result: str) -> None:
    """The log says what the summary counts: per op, and the bytes that crossed."""
    assert {e["result"] for e in entries} == {result}
    ops = Counter(e["op"] for e in entries)
    assert ops["copy"] == summary.files_copied
    assert ops["update"] == summary.files_updated
    assert ops["skip"] + ops["meta"] == summary.files_skipped
    assert ops["delete"] == summary.files_deleted
    assert ops["mkdir"] == summary.dirs_created
    assert ops["link"] == summary.links_created
    sent = sum(e["bytes"] for e in entries if e["op"] in ("copy", "update"))
    assert sent == summary.bytes_transferred
    assert sum(e["size"] for e in entries if e["op"] == "delete") == summary.bytes_deleted


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"a" * 1000)
    (root / "sub" / "b.txt").write_text("bee")
    (root / "link").symlink_to("a.bin")
    return root


def test_copy_then_sync_read_back(src: Path, tmp_path: Path) -> None:
    dst, log = tmp_path / "dst", tmp_path / "audit.jsonl"
    first = run(src, dst, log)
    assert first.fatal is None and first.files_copied == 2
    entries = lines(log.read_text())
    matches(first, entries, "done")
    by_path = {e["path"]: e for e in entries}
    assert by_path["a.bin"]["size"] == 1000 and by_path["a.bin"]["digest"]
    assert by_path["a.bin"]["attempt"] == 1
    # Append-only: a second run (a sync that deletes and skips) adds its own lines.
    (dst / "extra.txt").write_text("gone soon")
    (src / "sub" / "b.txt").write_text("changed!")
    second = run(src, dst, log, mode=Mode.SYNC)
    assert second.fatal is None
    assert (second.files_updated, second.files_deleted, second.files_skipped) == (1, 1, 2)
    after = lines(log.read_text())
    assert after[: len(entries)] == entries
    matches(second, after[len(entries) :], "done")


def test_dry_run_writes_its_plan(src: Path, tmp_path: Path) -> None:
    dst, log = tmp_path / "dst", tmp_path / "plan.jsonl"
    plan = run(src, dst, log, dry_run=True)
    assert plan.fatal is None and plan.files_copied == 2 and not dst.exists()
    entries = lines(log.read_text())
    matches(plan, entries, "planned")
    assert {e["path"] for e in entries} >= {"a.bin", "sub", "sub/b.txt", "link"}


def test_stdout_and_json_refused(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    r = run_ferry("copy", src, dst, "--audit-log", "-")
    entries = lines(r.stdout)  # nothing but audit lines on stdout
    assert Counter(e["op"] for e in entries)["copy"] == 2
    plan = run_ferry("plan", src, tmp_path / "new", "--audit-log", "-")
    planned = lines(plan.stdout)  # the plan's listing went to stderr
    assert {e["result"] for e in planned} == {"planned"} and "copy     a.bin" in plan.stderr
    refused = run_ferry("copy", src, dst, "--audit-log", "-", "--json", check_rc=2)
    assert "--audit-log" in refused.stderr and "--json" in refused.stderr
    bad = run_ferry(
        "copy", src, dst, "--audit-log", str(tmp_path / "no" / "dir" / "x"), check_rc=None
    )
    assert bad.rc != 0 and "--audit-log" in bad.stderr


def test_credentials_never_in_it(tmp_path: Path) -> None:
    remember("s3cr3t-token-value")
    log = tmp_path / "a.jsonl"
    audit = AuditLog(str(log))
    audit.write("error", "x", "failed", error="sftp://bob:hunter22@host/x said s3cr3t-token-value")
    audit.close()
    text = log.read_text()
    assert "hunter22" not in text and "s3cr3t-token-value" not in text and MASK in text


def test_retry_and_failure_lines(tmp_path: Path) -> None:
    """A retried file says which attempt succeeded; a failed one its error, both counted."""
    src, dst, log = tmp_path / "src", tmp_path / "dst", tmp_path / "a.jsonl"
    src.mkdir()
    (src / "growing.log").write_bytes(os.urandom(3 * MiB))
    (src / "bad.bin").write_bytes(os.urandom(5 * MiB))
    ChangingReader.changed_once = False

    class Both(LocalBackend):
        def open_read(self, rel: str, entry: Entry) -> LocalReader:
            if rel == "bad.bin":
                return FailingReader(self.path(rel), rel, entry)
            return ChangingReader(self.path(rel), rel, entry)

    summary = transfer_between(
        lambda: (Both(str(src)), LocalBackend(str(dst))),
        Options(retry_base_delay=0.01, error_policy=ErrorPolicy.SKIP, audit_log=str(log)),
    )
    assert ChangingReader.changed_once and summary.files_failed == 1
    entries = lines(log.read_text())
    matches(summary, [e for e in entries if e["op"] not in ("retry", "error")], "done")
    retried = [e for e in entries if e["op"] == "retry"]
    assert retried and retried[0]["path"] == "growing.log" and retried[0]["error"]
    done = next(e for e in entries if e["op"] == "copy" and e["path"] == "growing.log")
    assert done["attempt"] == 2
    failed = [e for e in entries if e["op"] == "error"]
    assert [(e["path"], e["result"]) for e in failed] == [("bad.bin", "failed")]
    assert failed[0]["error"]


def test_a_log_inside_the_destination_is_never_synced_away(src: Path, tmp_path: Path) -> None:
    """A sync's destination that holds the audit log (CLI or TransferJob) keeps it: it is
    neither deleted (the source lacks it), nor compared, nor in its own lines; its directory
    stays too. Through a symlinked path as well (resolved before comparing)."""
    dst = tmp_path / "dst"
    log = dst / "logs" / "audit.jsonl"
    log.parent.mkdir(parents=True)
    (tmp_path / "via").symlink_to(dst)
    first = run(src, dst, tmp_path / "via" / "logs" / "audit.jsonl", mode=Mode.SYNC)
    second = run(src, dst, log, mode=Mode.SYNC, verify=Verify.FULL)
    assert first.files_copied > 0 and second.files_deleted == 0 and second.exit_code == 0
    text = log.read_text()
    assert all(not d["path"].startswith("logs") for d in lines(text))
    assert Counter(d["op"] for d in lines(text))["copy"] == first.files_copied
