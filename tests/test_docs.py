"""The docs site builds strictly (a broken link, anchor or nav entry fails `make test`), and
the tables that restate code (exit codes and reasons) are the code's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ferry.mover.errors import ErrorKind
from ferry.operator.metrics import KNOWN_REASONS

REPO = Path(__file__).resolve().parent.parent


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _table(page: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table under `heading` in docs/<page>."""
    text = (REPO / "docs" / page).read_text()
    start = text.index(f"\n{heading}\n")
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def test_site_builds_strict(tmp_path: Path) -> None:
    done = _mkdocs(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    for page in ("quickstart", "troubleshooting", "security", "upgrade", "performance"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_strict_build_refuses_broken_links(tmp_path: Path) -> None:
    """The hook's checks of links out of docs/ and mkdocs' own checks both fail the build."""
    site = tmp_path / "repo"
    (site / "docs").mkdir(parents=True)
    (site / "scripts").mkdir()
    shutil.copy(REPO / "scripts/mkdocs_hooks.py", site / "scripts")
    (site / "notes.md").write_text("# Notes\n\n## Real heading\n")
    config = (REPO / "mkdocs.yml").read_text().split("\nnav:")[0]
    (site / "mkdocs.yml").write_text(config + "\nnav:\n  - Home: index.md\n")
    good = "[a](../notes.md) [b](../notes.md#real-heading) [c](#home)"
    (site / "docs/index.md").write_text(f"# Home\n\n{good}\n")
    done = _mkdocs(site / "mkdocs.yml", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "out/index.html").read_text()
    assert "https://github.com/ferry-dev/ferry/blob/main/notes.md#real-heading" in html
    bad = {
        "../gone.md": "gone.md, which is not in the repository",
        "../notes.md#no-heading": "notes.md#no-heading: no such heading",
        "other.md": "other.md",
        "#nowhere": "nowhere",
    }
    for link, said in bad.items():
        (site / "docs/index.md").write_text(f"# Home\n\n{good} [x]({link})\n")
        done = _mkdocs(site / "mkdocs.yml", tmp_path / "out")
        assert done.returncode != 0, link
        assert said in done.stderr, (link, done.stderr)


def test_troubleshooting_exit_codes_are_the_error_kinds() -> None:
    rows = _table("troubleshooting.md", "## Exit codes and reasons")
    documented = [(int(code), reason, retry) for code, reason, retry, _what in rows]
    expected = sorted((k.exit_code, k.reason, "yes" if k.retryable else "no") for k in ErrorKind)
    assert documented == expected, (
        "docs/troubleshooting.md's table drifted from ErrorKind (ferry/mover/errors.py); "
        "its rows should be:\n" + "\n".join(f"| {c} | {r} | {y} | ... |" for c, r, y in expected)
    )


def test_cli_exit_codes_are_the_error_kinds() -> None:
    rows = _table("cli.md", "## Exit codes")
    documented = sorted((int(code), reason) for code, reason, _ in rows if code != "0")
    assert documented == sorted((k.exit_code, k.reason) for k in ErrorKind)


def test_every_operator_failure_reason_is_explained() -> None:
    rows = _table(
        "troubleshooting.md",
        "Reasons the operator adds (no exit code: no mover ran, or it did not end on its own):",
    )
    documented = {r.strip("`") for cell, _ in rows for r in cell.split(", ")}
    operator_only = KNOWN_REASONS - {k.reason for k in ErrorKind} - {"Completed"}
    assert operator_only | {"OOMKilled"} <= documented, operator_only - documented


def test_cli_profiles_table_is_the_profile_table() -> None:
    from ferry.mover.options import format_size, parse_size
    from ferry.mover.profiles import PROFILES

    rows = _table("cli.md", "| profile | transfers | streams | chunk size | buffer size | for |")
    assert [r[0].strip("`") for r in rows] == list(PROFILES)
    for name, transfers, streams, chunk, buffer, purpose in rows:
        p = PROFILES[name.strip("`")]
        assert (int(transfers), int(streams), purpose) == (p.transfers, p.streams, p.purpose)
        assert (0 if chunk == "destination's" else parse_size(chunk)) == p.chunk_size
        assert parse_size(buffer) == p.buffer_size, format_size(p.buffer_size)
