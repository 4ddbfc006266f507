"""`ferry run` as a mover pod runs it: a spec file in; the summary on stdout and in the
termination message; a spec it cannot use refused with the failure document in both places."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import run_ferry


def _env(log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FERRY_TRANSFERJOB", "TRACEPARENT")}
    return {**env, "FERRY_TERMINATION_LOG": str(log)}


def test_run_copies_and_leaves_the_summary_as_termination_message(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_text(f"file {i}")
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "source": {"kind": "local", "path": str(src)},
                "destination": {"kind": "local", "path": str(dst)},
                "options": {"mode": "Copy"},
            }
        )
    )
    log = tmp_path / "termination-log"
    r = run_ferry("run", "--spec", spec, env=_env(log))
    assert sorted(p.name for p in dst.iterdir()) == ["f0", "f1", "f2"]
    assert r.summary["filesCopied"] == 3 and r.summary["exitCode"] == 0
    assert json.loads(log.read_text()) == r.summary
    # progress went to stderr as JSON lines
    assert any(json.loads(line).get("event") == "progress" for line in r.stderr.splitlines())


def test_run_copies_a_single_file_into_a_directory_with_renames(tmp_path: Path) -> None:
    """What a TransferJob naming a file runs: the pod's spec, a file, a '/' directory."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.iso").write_bytes(b"iso" * 1000)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "source": {"kind": "local", "path": str(tmp_path / "src" / "big.iso")},
                "destination": {"kind": "local", "path": f"{tmp_path}/out/"},
                "options": {"mode": "Sync", "rename": ["s/\\.iso$/.img/"]},
            }
        )
    )
    r = run_ferry("run", "--spec", spec, env=_env(tmp_path / "log"))
    assert r.summary["filesCopied"] == 1 and r.summary["filesDeleted"] == 0
    assert (tmp_path / "out" / "big.img").read_bytes() == b"iso" * 1000


def test_a_bad_spec_is_a_usage_error_in_both_places(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("source: {kind: local, path: /x}\ndestination: {kind: nowhere}\n")
    log = tmp_path / "termination-log"
    r = run_ferry("run", "--spec", spec, env=_env(log), check_rc=2)
    doc = {"status": "failed", "reason": "InvalidSpec", "exitCode": 2}
    assert {k: r.summary[k] for k in doc} == doc
    assert "destination" in r.summary["message"]
    assert json.loads(log.read_text()) == r.summary
    assert r.stderr.startswith("ferry: error: ")


def test_an_unreadable_spec_is_a_usage_error(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    r = run_ferry("run", "--spec", tmp_path / "missing.json", env=_env(log), check_rc=2)
    assert r.summary["message"].startswith(str(tmp_path / "missing.json"))
    assert json.loads(log.read_text())["reason"] == "InvalidSpec"


def test_yaml_errors_say_where_not_what(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("source: {kind: local\n  password: hunter2: [\n")
    log = tmp_path / "termination-log"
    r = run_ferry("run", "--spec", spec, env=_env(log), check_rc=2)
    assert "invalid YAML at line" in r.summary["message"]
    assert "hunter2" not in r.stdout + r.stderr + log.read_text()
