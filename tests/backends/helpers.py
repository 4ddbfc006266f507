"""Running transfers in-process and through the CLI for the conformance suite."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ferry.mover.endpoints import parse_endpoint
from ferry.mover.options import Mode, Options
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer
from tests.backends.tree import CHUNK

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def server_tmpfs(server: Any, prefix: str, size: str = "4m") -> Iterator[tuple[str, Path]]:
    """A small tmpfs below an SFTP/SMB server's root, owned by the server's user, so the
    server's own disk fills up for real: (sub, mount point)."""
    sub = f"{prefix}-{uuid.uuid4().hex[:8]}"
    mnt = Path(server.root) / sub
    mnt.mkdir()
    pw = pwd.getpwnam(server.user)
    opts = f"size={size},uid={pw.pw_uid},gid={pw.pw_gid},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True)
    try:
        yield sub, mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


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
