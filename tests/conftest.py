"""Shared pytest set-up: the engine's CLI as a subprocess, with the repo's venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FERRY = [sys.executable, "-m", "ferry.cli"]


class FerryRun:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def summary(self) -> dict[str, Any]:
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                return dict(json.loads(line))
        raise AssertionError(f"no JSON summary in stdout: {self.stdout!r} stderr: {self.stderr!r}")


def run_ferry(*args: str | os.PathLike[str], check_rc: int | None = 0, **kw: Any) -> FerryRun:
    proc = subprocess.run(
        [*FERRY, *map(str, args)], capture_output=True, text=True, timeout=300, **kw
    )
    result = FerryRun(proc)
    if check_rc is not None:
        assert proc.returncode == check_rc, (
            f"rc {proc.returncode} != {check_rc}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return result


@pytest.fixture
def ferry() -> Any:
    return run_ferry


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    return src, dst
