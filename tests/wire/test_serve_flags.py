"""`ferry serve`'s logging flags take effect (a real server, real requests)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.wire.conftest import Certs, Server


def _stats_then_log(tmp_path: Path, certs: Certs, *args: str) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    s = Server(tmp_path / "root", certs, tmp_path / "serve.log", *args).start()
    try:
        s.stats()
    finally:
        s.stop()
    return s.log()


def test_verbose_logs_each_request(tmp_path: Path, certs: Certs) -> None:
    quiet = _stats_then_log(tmp_path / "a", certs)
    assert "/v1/stats" not in quiet
    loud = _stats_then_log(tmp_path / "b", certs, "-vv")
    assert '"GET /v1/stats HTTP/1.1" 200' in loud


def test_log_format_json_makes_every_log_line_json(tmp_path: Path, certs: Certs) -> None:
    out = _stats_then_log(tmp_path, certs, "-vv", "--log-format", "json")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("/v1/stats" in r["message"] for r in records), out
    assert all(r["level"] for r in records)
