"""Failures that must lose nothing: disk full, I/O errors, files changing, kills mid-file."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.mover.backends.base import Entry
from ferry.mover.backends.local import LocalBackend, LocalReader, LocalWriter
from ferry.mover.options import MiB, Options, Verify
from ferry.mover.progress import Sink, Snapshot
from ferry.mover.transfer import transfer_between
from tests.conftest import FERRY, run_ferry
from tests.engine.treeutil import FlushLog, assert_same_tree


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_once_journaled(proc: subprocess.Popen[bytes], journal: Path, chunks: int = 2) -> None:
    """SIGKILL a running copy as soon as its journal records `chunks` finished chunks."""
    try:
        wait_for(
            lambda: journal.exists() and len(journal.read_bytes().splitlines()) > chunks,
            60,
            "journaled chunks",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


def final_files_are_whole(src: Path, dst: Path) -> None:
    """Every file under a final name at dst is a complete copy of its source."""
    for p in dst.rglob("*"):
        if p.is_file() and not p.name.startswith(".~ferry."):
            assert p.read_bytes() == (src / p.relative_to(dst)).read_bytes(), f"torn file {p}"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MiB filesystem to fill up (tmpfs; we run as root in CI)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_destination_full_fails_cleanly(tmp_path: Path, small_fs: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(3 * MiB))
    (src / "huge.bin").write_bytes(os.urandom(20 * MiB))
    dst = small_fs / "dst"
    r = run_ferry("copy", src, dst, "--json", "--chunk-size", "2M", "--no-preflight", check_rc=6)
    assert r.summary["reason"] == "DestinationFull"
    assert "huge.bin" in r.stdout or any("No space" in e["message"] for e in r.summary["errors"])
    final_files_are_whole(src, dst)
    assert not [p for p in dst.rglob(".~ferry.*")], "left a partial file on a full disk"


class FailingReader(LocalReader):
    """Raises EIO at an offset: a fault we cannot provoke on a healthy disk (hence a wrapper)."""

    fail_at = 2 * MiB

    def fileno(self) -> None:  # type: ignore[override]
        return None  # force bytes through iter_range, where the fault is injected

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[memoryview]:
        for data in super().iter_range(offset, length, piece):
            if offset + len(data) > self.fail_at:
                raise OSError(errno.EIO, "Input/output error")
            offset += len(data)
            yield data


class FailingBackend(LocalBackend):
    def open_read(self, rel: str, entry: Entry) -> LocalReader:
        if rel == "bad.bin":
            return FailingReader(self.path(rel), rel, entry)
        return super().open_read(rel, entry)


def test_io_error_is_reported_and_leaves_no_torn_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "good.bin").write_bytes(os.urandom(MiB))
    (src / "bad.bin").write_bytes(os.urandom(5 * MiB))
    summary = transfer_between(
        lambda: (FailingBackend(str(src)), LocalBackend(str(dst))),
        Options(error_policy=Options().error_policy.SKIP),
    )
    assert summary.exit_code == 1
    assert [(e.path, e.kind.reason) for e in summary.errors] == [("bad.bin", "IOError")]
    assert not (dst / "bad.bin").exists()
    assert (dst / "good.bin").read_bytes() == (src / "good.bin").read_bytes()
    abort = transfer_between(
        lambda: (FailingBackend(str(src)), LocalBackend(str(tmp_path / "d2"))), Options()
    )
    assert abort.exit_code == 10 and abort.fatal is not None and abort.fatal.path == "bad.bin"


class ChangingReader(LocalReader):
    """Appends to its own source file while it is being read, the first time only."""

    changed_once = False

    def fileno(self) -> None:  # type: ignore[override]
        return None  # force bytes through iter_range, where the change is made

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[memoryview]:
        for data in super().iter_range(offset, length, piece):
            yield data
            if not ChangingReader.changed_once:
                ChangingReader.changed_once = True
                with open(f"/proc/self/fd/{self.fd}", "ab") as f:
                    f.write(b"more data appended during the copy")


class ChangingBackend(LocalBackend):
    def open_read(self, rel: str, entry: Entry) -> LocalReader:
        return ChangingReader(self.path(rel), rel, entry)


def test_file_changing_while_read_is_retried(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "growing.log").write_bytes(os.urandom(3 * MiB))
    ChangingReader.changed_once = False
    sink = LastSnapshot()
    summary = transfer_between(
        lambda: (ChangingBackend(str(src)), LocalBackend(str(dst))),
        Options(retry_base_delay=0.01),
        sink,
    )
    assert ChangingReader.changed_once
    assert summary.exit_code == 0, summary.errors
    assert (dst / "growing.log").read_bytes() == (src / "growing.log").read_bytes()
    assert (src / "growing.log").read_bytes().endswith(b"during the copy")
    # The failed attempt's bytes are not counted twice.
    assert sink.last is not None and sink.last.bytes_done == (src / "growing.log").stat().st_size


class LastSnapshot(Sink):
    last: Snapshot | None = None

    def update(self, snap: Snapshot) -> None:
        self.last = snap


def test_file_that_keeps_changing_is_reported(tmp_path: Path) -> None:
    class Always(LocalReader):
        def changed(self) -> str:
            return "modified while copying"

    class AlwaysBackend(LocalBackend):
        def open_read(self, rel: str, entry: Entry) -> LocalReader:
            return Always(self.path(rel), rel, entry)

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "hot").write_bytes(b"x" * 100)
    summary = transfer_between(
        lambda: (AlwaysBackend(str(src)), LocalBackend(str(dst))),
        Options(retries=2, retry_base_delay=0.01),
    )
    assert summary.fatal is not None and summary.fatal.kind.reason == "SourceChanged"
    assert (summary.fatal.path, str(summary.fatal)) == ("hot", "hot: modified while copying")
    assert summary.exit_code == 7
    assert not (dst / "hot").exists()


class RottingWriter(LocalWriter):
    """Flips one written byte on the disk before the first read-back: the corruption that
    only reading the destination back can catch (the inline digest saw the right bytes)."""

    def read_back(self, offset: int, length: int) -> bytes:
        if not getattr(self, "rotted", False):
            self.rotted = True
            (byte,) = os.pread(self.fd, 1, 100)
            os.pwrite(self.fd, bytes([byte ^ 0xFF]), 100)
        return super().read_back(offset, length)


class RottingBackend(LocalBackend):
    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> LocalWriter:
        return RottingWriter(self, rel, resume_key)


@pytest.mark.parametrize("size", [1 * MiB, 24 * MiB], ids=["whole", "chunked"])
def test_full_verification_catches_bytes_rotted_at_the_destination(
    tmp_path: Path, size: int
) -> None:
    """--verify full reads the destination back: a flipped byte fails the file with
    VerifyMismatch (exit 9) and the bad copy never appears under its final name."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(size))
    opts = Options(verify=Verify.FULL, chunk_size=4 * MiB)
    summary = transfer_between(lambda: (LocalBackend(str(src)), RottingBackend(str(dst))), opts)
    assert summary.exit_code == 9, summary.errors
    assert summary.fatal is not None
    assert (summary.fatal.path, summary.fatal.kind.reason) == ("f.bin", "VerifyMismatch")
    assert summary.files_copied == 0
    assert not (dst / "f.bin").exists()
    inline = transfer_between(
        lambda: (LocalBackend(str(src)), RottingBackend(str(tmp_path / "d2"))),
        Options(verify=Verify.INLINE, chunk_size=4 * MiB),
    )
    assert inline.exit_code == 0  # inline hashing alone cannot see it: the test's premise


def test_kill_and_resume_mid_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    payload = os.urandom(48 * MiB)
    (src / "big.bin").write_bytes(payload)
    journal = dst / ".~ferry.big.bin.journal"
    proc = subprocess.Popen(
        [
            *FERRY,
            "copy",
            str(src),
            str(dst),
            "--bwlimit",
            "8M",
            "--chunk-size",
            "4M",
            "--transfers",
            "2",
        ]
    )
    kill_once_journaled(proc, journal)
    assert not (dst / "big.bin").exists(), "a torn file appeared under the final name"
    assert (dst / ".~ferry.big.bin.part").exists()
    r = run_ferry("copy", src, dst, "--json", "--chunk-size", "4M")
    s = r.summary
    assert s["bytesResumed"] >= 8 * MiB, s
    assert s["bytesResumed"] % (4 * MiB) == 0
    assert s["bytesTransferred"] == 48 * MiB - s["bytesResumed"]
    assert (dst / "big.bin").read_bytes() == payload
    assert not list(dst.glob(".~ferry.*")), "resume state left behind after success"


def test_resume_discards_corrupted_chunks(tmp_path: Path) -> None:
    """A journaled chunk whose bytes no longer hash right is copied again, not trusted."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    payload = os.urandom(16 * MiB)
    (src / "f.bin").write_bytes(payload)
    proc = subprocess.Popen(
        [
            *FERRY,
            "copy",
            str(src),
            str(dst),
            "--bwlimit",
            "6M",
            "--chunk-size",
            "2M",
            "--transfers",
            "1",
        ]
    )
    journal = dst / ".~ferry.f.bin.journal"
    kill_once_journaled(proc, journal)
    part = dst / ".~ferry.f.bin.part"
    lines = journal.read_bytes().split(b"\n")[1:]  # after the header; a torn last line is no chunk
    chunks = [int(line.split()[0]) for line in lines if len(line.split()) == 2]
    assert chunks
    with open(part, "r+b") as f:  # flip bytes inside one journaled chunk
        f.seek(min(chunks) * 2 * MiB + 100)
        f.write(b"\xff" * 8)
    s = run_ferry("copy", src, dst, "--json", "--chunk-size", "2M").summary
    assert (dst / "f.bin").read_bytes() == payload
    assert not journal.exists() and not part.exists()
    # Exactly the good chunks were kept: resume works, and the bad one travelled again.
    assert s["bytesResumed"] == (len(chunks) - 1) * 2 * MiB, (chunks, s)
    assert s["bytesTransferred"] == 16 * MiB - s["bytesResumed"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_cleanly_keeps_the_partial_and_resumes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM (a pod's stop) and SIGINT (Ctrl-C) end with exit 130, no torn file under a
    final name, and a big file's partial and journal kept, so the next run resumes it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(MiB))
    payload = os.urandom(32 * MiB)  # >= 2 chunks of 4M: chunked and resumable
    (src / "big.bin").write_bytes(payload)
    journal = dst / ".~ferry.big.bin.journal"
    args = ["--bwlimit", "8M", "--chunk-size", "4M", "--transfers", "2", "--json"]
    proc = subprocess.Popen(
        [*FERRY, "copy", str(src), str(dst), *args], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: journal.exists() and len(journal.read_bytes().splitlines()) > 2,
            60,
            "journaled chunks",
        )
    finally:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    last = json.loads(out.strip().splitlines()[-1])
    assert (last["reason"], last["exitCode"], last["retryable"]) == ("Interrupted", 130, True)
    final_files_are_whole(src, dst)
    assert not (dst / "big.bin").exists()
    assert (dst / ".~ferry.big.bin.part").exists() and journal.exists()
    s = run_ferry("copy", src, dst, "--json", "--chunk-size", "4M").summary
    assert s["bytesResumed"] > 0 and s["bytesResumed"] % (4 * MiB) == 0, s
    total = sum(f.stat().st_size for f in src.iterdir())
    assert s["bytesTransferred"] + s["bytesResumed"] + s["bytesSkipped"] == total, s
    assert_same_tree(src, dst)
    assert not list(dst.glob(".~ferry.*")), "resume state left behind after success"


def test_flushed_once_for_a_copy_and_before_deletes_for_a_sync(tmp_path: Path) -> None:
    """One flush where nothing is deleted (after the directories' times); a sync's deletes
    wait for a flush of what was copied, and the end flushes again, deletes included even
    when nothing was copied."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in ("a", "b"):
        (src / name).write_bytes(name.encode() * 100)
    log: list[str] = []
    summary = transfer_between(lambda: (LocalBackend(str(src)), FlushLog(str(dst), log)), Options())
    assert summary.exit_code == 0 and log == ["flush"]
    (dst / "extra").write_bytes(b"x")
    (src / "c").write_bytes(b"c")
    log.clear()
    sync = Options(mode=Options().mode.SYNC)
    summary = transfer_between(lambda: (LocalBackend(str(src)), FlushLog(str(dst), log)), sync)
    assert summary.exit_code == 0 and summary.files_deleted == 1
    assert log == ["flush", "remove extra", "flush"]
    (dst / "extra2").write_bytes(b"x")  # a sync with nothing to copy, only a delete
    log.clear()
    summary = transfer_between(lambda: (LocalBackend(str(src)), FlushLog(str(dst), log)), sync)
    assert summary.exit_code == 0 and summary.files_deleted == 1
    assert log == ["remove extra2", "flush"]


STRACE = ["strace", "-f", "-qq", "-e", "trace=syncfs,fsync,fdatasync", "-o"]


@pytest.mark.parametrize(
    ("fsync", "syncfs", "per_file"), [("end", 1, 0), ("file", None, 4), ("none", 0, 0)]
)
def test_flushes_reach_the_kernel(
    tmp_path: Path, fsync: str, syncfs: int | None, per_file: int
) -> None:
    """The durability promise as the kernel sees it (strace, a fault-free probe): --fsync end
    ends with one syncfs, --fsync file flushes every file before it gets its name, none
    flushes nothing."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(per_file or 4):
        (src / f"f{i}").write_bytes(os.urandom(64 * 1024 + i))
    trace = tmp_path / "trace"
    subprocess.run(
        [*STRACE, str(trace), *FERRY, "copy", str(src), str(dst), "--fsync", fsync],
        check=True,
        timeout=120,
    )
    calls = [line.split(None, 1)[1].split("(")[0] for line in trace.read_text().splitlines()]
    data_flushes = calls.count("fdatasync") + calls.count("fsync")
    if syncfs is not None:
        assert calls.count("syncfs") == syncfs, calls
    assert data_flushes >= per_file, calls
    if fsync == "none":
        assert data_flushes == 0, calls
    assert_same_tree(src, dst)
