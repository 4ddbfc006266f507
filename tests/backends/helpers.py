"""Running transfers in-process and through the CLI for the conformance suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ferry.mover.endpoints import parse_endpoint
from ferry.mover.options import Mode, Options
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer
from tests.backends.tree import CHUNK

REPO = Path(__file__).resolve().parents[2]


def transfer(src: str, dst: str, mode: Mode = Mode.COPY, **kw: Any) -> Summary:
    opts = Options(mode=mode, chunk_size=CHUNK, retry_base_delay=0.05, **kw)
    return run_transfer(parse_endpoint(src), parse_endpoint(dst), opts)


def ok(summary: Summary) -> Summary:
    assert summary.exit_code == 0, summary.to_json()
    return summary


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> tuple[int, dict[str, Any], str]:
    """Run `ferry ARGS --json`; return (exit code, summary JSON, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ferry.cli", *args, "--json", "--progress", "none"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    try:
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = {}
    return proc.returncode, summary, proc.stderr
