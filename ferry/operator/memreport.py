"""Where the operator's memory goes: one log line per interval, for measuring (off by default).

`FERRY_MEMORY_REPORT_SECONDS=N` in the operator's environment turns it on: every
N seconds it logs the process's RSS beside what glibc's malloc holds (in use and
free but kept: fragmentation and per-thread arenas show there), Python's own
allocator (live blocks, objects the collector tracks), and, when Python runs
with `PYTHONTRACEMALLOC=1`, the top allocation sites. RSS far above what is in
use means memory freed but not given back, not objects kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
import tracemalloc
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "FERRY_MEMORY_REPORT_SECONDS"
MIB = 1024 * 1024


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True)
class Malloc:
    """glibc malloc's totals over all arenas, bytes."""

    in_use: int
    free_kept: int
    mmapped: int


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def malloc_stats() -> Malloc | None:
    """None where the C library has no mallinfo2 (not glibc >= 2.33)."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return Malloc(in_use=info.uordblks, free_kept=info.fordblks, mmapped=info.hblkhd)


def trim() -> bool:
    """Give glibc's free pages back to the system (`malloc_trim(0)`, every arena); False where
    the C library has none. glibc gives back only the top of a heap by itself, so after a
    burst the freed memory in the middle stays in the RSS."""
    libc = _libc()
    fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_size_t]
    fn(0)
    return True


def start_trimmer(interval: float = 60.0, threshold: int = 32 * MIB) -> threading.Thread:
    """Trim every `interval` seconds while malloc keeps more than `threshold` bytes free.

    The operator's image runs Python with PYTHONMALLOC=malloc (the chart sets it): with
    Python's own allocator, a 1,000-TransferJob burst's high-water mark stayed in the RSS for
    good (an arena goes back only when all its blocks are free; measured 357 MiB at rest with
    a third of the peak's objects left); in glibc's heap it can be given back.
    """

    never = threading.Event()  # the thread lives as long as the process (a daemon thread)

    def loop() -> None:
        while not never.wait(interval):
            m = malloc_stats()
            if m is not None and m.free_kept > threshold:
                trim()
                log.debug("malloc_trim: %.1f MiB were free and kept", m.free_kept / MIB)

    thread = threading.Thread(target=loop, name="memtrim", daemon=True)
    thread.start()
    return thread


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def report(top: int = 8) -> str:
    """One line: RSS, malloc, Python blocks and objects, the top traced sites."""
    parts = [f"rss={rss_bytes() / MIB:.1f}MiB"]
    m = malloc_stats()
    if m is not None:
        parts.append(
            f"malloc in-use={m.in_use / MIB:.1f}MiB free-kept={m.free_kept / MIB:.1f}MiB "
            f"mmapped={m.mmapped / MIB:.1f}MiB"
        )
    # Counting objects by type walks them all holding the GIL (seconds at 1,000 TransferJobs,
    # measured: it starved the event loop); the count alone is a C loop.
    parts.append(f"python-blocks={sys.getallocatedblocks()} gc-objects={len(gc.get_objects())}")
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        parts.append(f"traced={current / MIB:.1f}MiB peak={peak / MIB:.1f}MiB")
        stats = tracemalloc.take_snapshot().statistics("traceback")[:top]
        parts.append(
            "sites=" + "; ".join(f"{_site(s.traceback)}={s.size / MIB:.1f}MiB" for s in stats)
        )
    return " ".join(parts)


def _site(frames: tracemalloc.Traceback) -> str:
    """The allocating line and the innermost ferry/kopf frames that led to it (with
    PYTHONTRACEMALLOC=N, N frames are kept: the allocating line alone is mostly json's)."""

    def short(f: tracemalloc.Frame) -> str:
        return f"{'/'.join(f.filename.rsplit('/', 2)[-2:])}:{f.lineno}"

    ordered = list(frames)  # oldest first
    ours = [f for f in ordered[:-1] if "/ferry/" in f.filename or "/kopf/" in f.filename]
    return "<".join(short(f) for f in [ordered[-1], *reversed(ours[-2:])])


def start_from_env() -> threading.Thread | None:
    """Start the reporting thread if `FERRY_MEMORY_REPORT_SECONDS` asks for it."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        interval = float(raw)
    except ValueError:
        raise SystemExit(f"{ENV}={raw!r}: expected a number of seconds") from None
    if interval <= 0:
        raise SystemExit(f"{ENV}={raw!r}: expected a positive number of seconds")
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            log.info("memory: %s", report())

    thread = threading.Thread(target=loop, name="memreport", daemon=True)
    thread.start()
    return thread
