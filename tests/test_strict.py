"""The README's test command fails on any skip; an explicitly partial run may skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.strict import PARTIAL_ENV

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.strict"]


def _pytest(tmp_path: Path, partial: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n"
        "def test_runs():\n    assert True\n"
        "def test_skips():\n    pytest.skip('no server here')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != PARTIAL_ENV}
    if partial:
        env[PARTIAL_ENV] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [*PYTEST, "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_skip_fails_a_strict_run(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, partial=False)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout
    assert "skipped in a strict run" in proc.stdout
    assert "test_skips" in proc.stdout


def test_a_partial_run_may_skip(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, partial=True)
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout
    assert "1 skipped" in proc.stdout


def test_unavailable_fails_unless_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.strict import unavailable

    monkeypatch.delenv(PARTIAL_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="no sshd"):
        unavailable("no sshd")
    monkeypatch.setenv(PARTIAL_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match="no sshd"):
        unavailable("no sshd")
