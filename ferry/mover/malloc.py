"""glibc heap tuning for a process that moves data in megabyte buffers.

With glibc's defaults a 1 MiB temporary buffer is often a fresh mmap: page
faults and zeroing on every request. Client libraries copy each request a few
times (smbprotocol: every READ/WRITE message), so an SMB upload spent more
time in the kernel than in Python (0.8-1.1 s of system time per 256 MiB,
0.3 s after this). Set once at the command's entry point, process-wide, and
only when nobody chose otherwise through MALLOC_* environment variables;
costs ~10 MB of resident memory.
"""

from __future__ import annotations

import ctypes
import os

from ferry.mover.options import MiB

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Keep buffers up to 4 MiB in the heap; return whether the setting was applied."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # the option numbers are glibc's
            return False
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, 4 * MiB) and libc.mallopt(M_TRIM_THRESHOLD, 32 * MiB)
        )
    except (OSError, AttributeError):
        return False
