"""One byte range from a reader to a writer: pieces, hashing, kernel copy, holes, rate limit.

Bytes pass through user space in pieces per worker (hashed inline, one read of the
source), or not at all when both ends are local (`copy_file_range`).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable

from ferry.mover.backends.base import Reader, Writer, thread_buffer
from ferry.mover.bwtable import BwSchedule, BwTable
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import BLOCK_SIZE, StreamHasher
from ferry.mover.progress import Progress

# Files larger than a direct single read stream through a per-worker buffer of this size
# (the default of Options.buffer_size, --buffer-size).
# Each piece is read, hashed and then sent or written, three passes over it: 2 MiB stays in
# a core's L2 cache (2 MiB here) between them, 4 MiB did not (256 MiB SFTP upload -7%, SMB
# and local copies -3 to -5%, S3 unchanged; alternated runs).
STREAM_PIECE = 2 * BLOCK_SIZE
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


class RateLimiter:
    """A token bucket shared by all workers; `take` blocks until the bytes may pass.

    The rate comes from a `BwSchedule` (a plain int: always that rate), asked on every
    take, so a timetable's boundary changes the rate without restarting anything; 0 lets
    everything through. `clock` is the bucket's (monotonic) time, injected by tests."""

    def __init__(self, rate: int | BwSchedule, clock: Callable[[], float] = time.monotonic) -> None:
        self.schedule = rate if isinstance(rate, BwSchedule) else BwSchedule(BwTable.constant(rate))
        self.clock = clock
        self.rate = 0  # the rate applied by the last take
        self.tokens = 0.0
        self.stamp = clock()
        self.lock = threading.Lock()

    def admit(self, n: int) -> float:
        """Count `n` bytes in; the seconds the caller must wait before they pass."""
        with self.lock:
            rate = self.schedule.rate()
            now = self.clock()
            if rate != self.rate:  # a boundary: the new rate from here, no debt carried
                self.rate, self.tokens = rate, 0.0
            elif rate:
                burst = rate / 10  # at most a tenth of a second ahead of the limit
                self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
            if not rate:
                return 0.0
            self.tokens -= n
            return -self.tokens / rate if self.tokens < 0 else 0.0

    def take(self, n: int, cancel: threading.Event) -> None:
        wait = self.admit(n)
        if wait > 0:
            cancel.wait(wait)


def segments(start: int, end: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """Split [start, end) into data and hole segments."""
    out: list[tuple[int, int, bool]] = []
    pos = start
    for off, length in ranges:
        a, b = max(off, start), min(off + length, end)
        if a >= b:
            continue
        if a > pos:
            out.append((pos, a, False))
        out.append((a, b, True))
        pos = b
    if pos < end:
        out.append((pos, end, False))
    return out


class Streamer:
    """Copies byte ranges for every worker of a run (it keeps no per-file state)."""

    def __init__(
        self,
        progress: Progress,
        cancel: threading.Event,
        hashing: bool,
        limiter: RateLimiter | None,
        piece: int = STREAM_PIECE,
    ) -> None:
        self.piece = piece  # Options.buffer_size
        self.progress = progress
        self.cancel = cancel
        self.hashing = hashing
        self.limiter = limiter
        self.kernel_copy = hasattr(os, "copy_file_range")  # off once a filesystem refuses it
        self._tls = threading.local()

    def copy(
        self,
        reader: Reader,
        writer: Writer,
        offset: int,
        length: int,
        ranges: list[tuple[int, int]] | None,
        fresh: bool,
        halted: Callable[[], bool] | None = None,
    ) -> bytes | None:
        """Copy [offset, offset+length) and return its block digests (None when not hashing).

        Holes (from `ranges`) are neither read nor written when the writer is fresh and
        pre-sized; their digests are added as zero blocks. `halted` says whether another
        part of the same file failed (then this one stops too)."""
        hasher = StreamHasher() if self.hashing else None
        end = offset + length
        parts = (
            segments(offset, end, ranges) if ranges is not None and fresh else [(offset, end, True)]
        )
        rfd, wfd = reader.fileno(), writer.fileno()
        moved = [0]

        def advance(n: int) -> None:
            moved[0] += n
            self.progress.advance(n)

        try:
            for seg_start, seg_end, is_data in parts:
                if not is_data:
                    if hasher:
                        hasher.update_zeros(seg_end - seg_start)
                    advance(seg_end - seg_start)
                    continue
                pos = seg_start
                if self.kernel_copy and rfd is not None and wfd is not None:
                    pos = self._kernel_copy(rfd, wfd, seg_start, seg_end, halted, hasher, advance)
                    if pos == seg_end:
                        continue
                for piece in reader.iter_range(pos, seg_end - pos, self.piece):
                    if self.cancel.is_set() or (halted is not None and halted()):
                        raise FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")
                    if hasher:
                        hasher.update(piece)
                    if self.limiter:
                        self.limiter.take(len(piece), self.cancel)
                    writer.write_at(pos, piece)
                    pos += len(piece)
                    advance(len(piece))
                if pos != seg_end:
                    raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while copying")
        except BaseException:
            self.progress.advance(-moved[0])  # a retry moves these bytes again
            raise
        return hasher.block_digests() if hasher else None

    def _kernel_copy(
        self,
        rfd: int,
        wfd: int,
        start: int,
        end: int,
        halted: Callable[[], bool] | None,
        hasher: StreamHasher | None,
        advance: Callable[[int], None],
    ) -> int:
        """Copy in the kernel (no bytes through user space); when hashing, hash the bytes as
        they now are at the destination, read back from the page cache. On this kind of
        machine that is several times faster than read + write, and it checks the write.
        Returns how far it got: short of `end` only when the filesystem cannot do it."""
        step = self.piece if (hasher is not None or self.limiter) else 64 << 20
        view = thread_buffer(self._tls, self.piece) if hasher is not None else None
        pos = start
        while pos < end:
            if self.cancel.is_set() or (halted is not None and halted()):
                raise FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")
            want = min(end - pos, step)
            if self.limiter:
                self.limiter.take(want, self.cancel)
            try:
                n = os.copy_file_range(rfd, wfd, want, pos, pos)
            except OSError as exc:
                if exc.errno in _NO_KERNEL_COPY:
                    self.kernel_copy = False
                    return pos
                raise
            if n == 0:
                raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while copying")
            if view is not None and hasher is not None:
                got = os.preadv(wfd, [view[:n]], pos)
                if got != n:
                    raise FerryError(
                        ErrorKind.VERIFY_MISMATCH, "destination shorter than what was written"
                    )
                hasher.update(view[:n])
            pos += n
            advance(n)
        return pos
