"""Resume after a dropped connection: kill `ferry serve` or the client mid-file (waiting on
the server's resume journal, not on time), rerun, and the file completes from the chunks
already there (`bytesResumed` > 0) with the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FERRY, run_ferry
from tests.wire.conftest import Server, wait_for

SIZE = 48 * 1024 * 1024
CHUNK = "2M"


def journal_chunks(where: Path) -> int:
    """Chunk lines in the resume journals under `where` (the header line not counted)."""
    n = 0
    for j in where.rglob(".~ferry.*.journal"):
        try:
            n += max(0, len(j.read_bytes().splitlines()) - 1)
        except FileNotFoundError:
            continue
    return n


def start_copy(src: Path, dst: str, *extra: str) -> subprocess.Popen[str]:
    args = [*FERRY, "copy", str(src), dst, "--chunk-size", CHUNK, "--transfers", "2", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def big(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(SIZE))
    return src


def test_server_killed_mid_upload_resumes(tmp_path: Path, server: Server, big: Path) -> None:
    proc = start_copy(big, server.url("dst"), "--bwlimit", "8M", "--retries", "1")
    try:
        wait_for(lambda: journal_chunks(server.root) >= 3, "chunks journaled at the server")
        server.kill()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 and "connection" in err.lower(), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (server.root / "dst" / "big").exists(), "nothing published mid-file"
    server.start()  # the same port, a new process
    r = run_ferry("copy", big, server.url("dst"), "--chunk-size", CHUNK, "--json").summary
    assert r["bytesResumed"] >= 3 * 2 * 1024 * 1024 and r["filesCopied"] == 1, r
    assert (server.root / "dst" / "big").read_bytes() == (big / "big").read_bytes()
    assert journal_chunks(server.root) == 0


def test_client_killed_mid_upload_resumes(tmp_path: Path, server: Server, big: Path) -> None:
    proc = start_copy(big, server.url("dst"), "--bwlimit", "8M")
    try:
        wait_for(lambda: journal_chunks(server.root) >= 3, "chunks journaled at the server")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    r = run_ferry("copy", big, server.url("dst"), "--chunk-size", CHUNK, "--json").summary
    assert r["bytesResumed"] >= 3 * 2 * 1024 * 1024 and r["filesCopied"] == 1, r
    assert (server.root / "dst" / "big").read_bytes() == (big / "big").read_bytes()


def test_server_killed_mid_download_resumes(tmp_path: Path, server: Server) -> None:
    (server.root / "tree").mkdir()
    data = os.urandom(SIZE)
    (server.root / "tree" / "big").write_bytes(data)
    dst = tmp_path / "dst"
    proc = subprocess.Popen(
        [
            *FERRY,
            "copy",
            server.url("tree"),
            str(dst),
            "--chunk-size",
            CHUNK,
            "--transfers",
            "2",
            "--bwlimit",
            "8M",
            "--retries",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: journal_chunks(tmp_path) >= 3, "chunks journaled locally")
        server.kill()
        proc.communicate(timeout=120)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    server.start()
    r = run_ferry("copy", server.url("tree"), dst, "--chunk-size", CHUNK, "--json").summary
    assert r["bytesResumed"] >= 3 * 2 * 1024 * 1024, r
    assert (dst / "big").read_bytes() == data
