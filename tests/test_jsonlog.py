"""Structured logs on request: `--log-format json` / `FERRY_LOG_FORMAT=json` make every line
the CLI, a mover (`ferry run`) and the operator write on stderr one JSON object with level
and message, and the object it is about where known; a remembered secret never shows, in
any field. Real processes and real kopf records; nothing mocked."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest

from ferry.mover import jsonlog, redact
from ferry.operator import logs
from ferry.operator.main import mover_settings, parser

REPO = Path(__file__).resolve().parent.parent
SECRET = 'Js0n-S3cr3t"/\\x'  # quote and backslash: JSON escapes them


def ferry(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (jsonlog.ENV, "FERRY_TRANSFERJOB")}
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**base, **(env or {})},
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no output"
    docs = []
    for line in lines:
        doc = json.loads(line)  # every line one object: a text line fails here
        assert isinstance(doc, dict) and doc["level"] and "message" in doc, line
        docs.append(doc)
    return docs


def tree(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_text("x" * 100 * (i + 1))
    return src, tmp_path / "dst"


def test_cli_copy_logs_json_lines(tmp_path: Path) -> None:
    src, dst = tree(tmp_path)
    done = ferry(["copy", str(src), str(dst), "--log-format", "json", "-vv", "--progress", "none"])
    assert done.returncode == 0, done.stderr
    docs = json_lines(done.stderr)
    assert any(d["message"].startswith("copy: 3 copied") for d in docs), docs
    assert {d["level"] for d in docs} <= {"debug", "info", "warning", "error"}
    assert all(d["time"].endswith("Z") for d in docs)
    # Text stays the default.
    dst2 = tmp_path / "dst2"
    text = ferry(["copy", str(src), str(dst2), "--progress", "none"])
    assert text.stderr.startswith("copy: 3 copied"), text.stderr


def test_environment_chooses_json_and_a_bad_value_is_named(tmp_path: Path) -> None:
    src, dst = tree(tmp_path)
    failed = ferry(["copy", str(tmp_path / "missing"), str(dst)], {jsonlog.ENV: "json"})
    assert failed.returncode != 0
    errors = [d for d in json_lines(failed.stderr) if d["level"] == "error"]
    assert errors and not errors[0]["message"].startswith("ferry:")
    bad = ferry(["copy", str(src), str(dst)], {jsonlog.ENV: "xml"})
    assert bad.returncode == 2 and "FERRY_LOG_FORMAT must be one of text, json" in bad.stderr
    flag = ferry(["copy", str(src), str(dst), "--log-format", "xml"])
    assert flag.returncode == 2 and "--log-format" in flag.stderr


def test_mover_lines_name_their_transferjob(tmp_path: Path) -> None:
    """`ferry run` as a mover pod runs it: the operator passes FERRY_LOG_FORMAT=json and
    FERRY_TRANSFERJOB. Its status patches go to a closed loopback port here (they never fail
    the transfer; their warnings are log lines too)."""
    src, dst = tree(tmp_path)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "source": {"kind": "local", "path": str(src)},
                "destination": {"kind": "local", "path": str(dst)},
            }
        )
    )
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t0ken")
    env = {
        jsonlog.ENV: "json",
        "FERRY_TRANSFERJOB": "team/copy-a",
        "FERRY_TERMINATION_LOG": str(tmp_path / "term"),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "9",
        "FERRY_SA_DIR": str(sa),
        "FERRY_STATUS_INTERVAL": "0.1",
    }
    done = ferry(["run", "--spec", str(spec), "-v"], env)
    assert done.returncode == 0, done.stderr
    docs = json_lines(done.stderr)
    ref = {"kind": "TransferJob", "namespace": "team", "name": "copy-a"}
    assert all(d.get("object") == ref for d in docs), docs
    assert any(d.get("event") == "progress" and d["message"] == "progress" for d in docs), docs
    assert json.loads(done.stdout)["filesCopied"] == 3  # the summary stays on stdout
    # A spec it cannot read: the error is a JSON line too.
    bad = ferry(["run", "--spec", str(tmp_path / "missing.json")], env)
    assert bad.returncode == 2
    (err,) = json_lines(bad.stderr)
    assert err["level"] == "error" and "cannot read spec" in err["message"]
    assert err["object"] == ref


@pytest.fixture
def root_logging() -> Any:
    """kopf.configure replaces the root handlers and level: put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_operator_json_lines_carry_the_object_and_no_secret(
    root_logging: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redact, "_secrets", ())
    redact.remember(SECRET)
    before = set(root_logging.handlers)
    logs.configure(verbose=True, log_format="json")
    (handler,) = set(root_logging.handlers) - before  # kopf's, with Ferry's formatter
    assert isinstance(handler, logging.StreamHandler)
    assert isinstance(handler.formatter, jsonlog.JsonFormatter)
    out = io.StringIO()
    handler.setStream(out)
    body = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"namespace": "team", "name": "copy-a", "uid": "u1"},
    }
    # kopf's per-object logger, as handlers get it (the local one posts no Events).
    objlog = kopf.LocalObjectLogger(body=kopf.Body(body), settings=kopf.OperatorSettings())
    objlog.warning("reconcile failed: %s", f"token={SECRET}")
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        logging.getLogger("ferry.operator").exception("without an object")
    first, second = json_lines(out.getvalue())
    assert first["level"] == "warning" and first["logger"] == "kopf.objects"
    assert first["object"] == {"kind": "TransferJob", "namespace": "team", "name": "copy-a"}
    assert first["message"] == "reconcile failed: token=***"
    assert "object" not in second and "RuntimeError: boom ***" in second["error"]
    raw = out.getvalue()
    assert SECRET not in raw and json.dumps(SECRET)[1:-1] not in raw and "Js0n-S3cr3t" not in raw


def test_operator_passes_json_to_movers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(jsonlog.ENV, raising=False)
    args = parser().parse_args(["--log-format", "json"])
    assert mover_settings(args, jsonlog.choose(args.log_format)).env[jsonlog.ENV] == "json"
    plain = parser().parse_args([])
    assert jsonlog.ENV not in mover_settings(plain, jsonlog.choose(plain.log_format)).env
    monkeypatch.setenv(jsonlog.ENV, "json")
    assert jsonlog.choose(None) == "json"
