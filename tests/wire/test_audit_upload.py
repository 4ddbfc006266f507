"""`ferry run` with a file audit log at a ferry:// destination (a `ferry serve`): uploaded
over the wire when the run ends, kept out of the sync, replaced by the next run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_ferry
from tests.pod.test_run_audit import audit_lines, pod_env
from tests.wire.conftest import Server


def _run(tmp_path: Path, server: Server, options: dict[str, Any]) -> dict[str, Any]:
    doc = {
        "source": {"kind": "local", "path": str(tmp_path / "src")},
        "destination": {
            "kind": "ferry",
            "host": "127.0.0.1",
            "port": server.port,
            "path": "dst",
            "tlsCert": str(server.certs.client.cert),
            "tlsKey": str(server.certs.client.key),
            "tlsCa": str(server.certs.ca),
        },
        "options": options,
    }
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(doc))
    return run_ferry("run", "--spec", spec, env=pod_env(tmp_path / "t")).summary


def test_the_audit_log_is_uploaded_over_the_wire(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name in ("a", "d/c"):
        (src / name).write_text(name * 10)
    plan = _run(tmp_path, server, {"mode": "Sync", "dryRun": True, "auditLog": "log/a"})
    assert plan["auditLog"] == "log/a"
    audit = server.root / "dst" / "log" / "a"
    assert {e["result"] for e in audit_lines(audit.read_text())} == {"planned"}
    assert sorted(p.name for p in (server.root / "dst").iterdir()) == ["log"]

    first = _run(tmp_path, server, {"mode": "Sync", "auditLog": "log/a"})
    assert first["filesCopied"] == 2
    lines = audit_lines(audit.read_text())
    assert sorted(e["path"] for e in lines if e["op"] == "copy") == ["a", "d/c"]
    assert {e["result"] for e in lines} != {"planned"}  # the plan's file was replaced

    again = _run(tmp_path, server, {"mode": "Sync", "auditLog": "log/a"})
    assert again["filesDeleted"] == 0 and again["filesCopied"] == 0
    assert not any(e["op"] == "copy" or "log" in e["path"] for e in audit_lines(audit.read_text()))
