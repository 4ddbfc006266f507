"""Files being written by peers: a bounded table of LocalBackend writers, by handle.

Each upload hashes the blocks it receives whole (the Ferry digest's 1 MiB blocks), so at
commit only blocks it did not see written (resumed chunks, holes, unaligned writes) are
read back: the digest of what is on disk is checked against the peer's before the file
is published. Idle uploads expire (their partials kept for a resume), so a peer that
vanishes holds no descriptors forever.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field

from blake3 import blake3

from ferry.mover.backends.local import LocalWriter
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import BLOCK_SIZE, digest_from_blocks

log = logging.getLogger("ferry")

MAX_UPLOADS = 256
IDLE_EXPIRY = 600.0  # seconds without a request before an upload is dropped


@dataclass(slots=True, eq=False)
class Upload:
    rel: str
    writer: LocalWriter
    size: int  # the size the peer announced: a block ending there is whole
    resumable: bool
    blocks: dict[int, bytes] = field(default_factory=dict)  # block index -> BLAKE3, as received
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)
    busy: int = 0  # requests in progress: never expired under them

    def received(self, offset: int, data: bytes) -> None:
        """Note the digests of whole blocks in a write; blocks it touches partly are unknown."""
        end = offset + len(data)
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE if data else -1
        digests: dict[int, bytes] = {}
        view = memoryview(data)
        for b in range(first, last + 1):
            start, stop = b * BLOCK_SIZE, min((b + 1) * BLOCK_SIZE, self.size)
            if start >= offset and (stop <= end) and stop > start:
                digests[b] = blake3(view[start - offset : stop - offset]).digest()
        with self.lock:
            for b in range(first, last + 1):
                self.blocks.pop(b, None)
            self.blocks.update(digests)

    def digest(self) -> str:
        """The Ferry digest of the file as written: blocks seen, the rest read back."""
        fd = self.writer.fileno()
        size = os.fstat(fd).st_size
        with self.lock:
            known = dict(self.blocks)
        parts = []
        for b in range(-(-size // BLOCK_SIZE)):
            d = known.get(b) if size == self.size else None
            if d is None:
                d = blake3(os.pread(fd, BLOCK_SIZE, b * BLOCK_SIZE)).digest()
            parts.append(d)
        return digest_from_blocks(size, b"".join(parts))


class Uploads:
    """The table, bounded by MAX_UPLOADS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_handle: dict[str, Upload] = {}

    def add(self, up: Upload) -> str:
        self.expire()
        with self._lock:
            if len(self._by_handle) >= MAX_UPLOADS:
                full = True
            else:
                full = False
                handle = secrets.token_hex(16)
                self._by_handle[handle] = up
        if full:
            up.writer.abort(keep_partial=up.resumable)
            raise FerryError(
                ErrorKind.TRANSIENT, f"the server has {MAX_UPLOADS} uploads open; try again"
            )
        return handle

    def take(self, handle: object) -> Upload:
        """The upload of a handle, marked busy (give it back with `release`)."""
        with self._lock:
            up = self._by_handle.get(handle) if isinstance(handle, str) else None
            if up is None:
                raise FerryError(
                    ErrorKind.TRANSIENT, "unknown or expired upload handle (open the file again)"
                )
            up.busy += 1
            return up

    def release(self, up: Upload) -> None:
        with self._lock:
            up.busy -= 1
            up.used = time.monotonic()

    def drop(self, handle: str) -> Upload | None:
        with self._lock:
            return self._by_handle.pop(handle, None)

    def expire(self, older: float = IDLE_EXPIRY) -> None:
        now = time.monotonic()
        with self._lock:
            old = [h for h, u in self._by_handle.items() if u.busy == 0 and now - u.used > older]
            gone = [self._by_handle.pop(h) for h in old]
        for up in gone:
            log.info("%s: upload idle for %.0f s; dropped (a partial is kept)", up.rel, older)
            up.writer.abort(keep_partial=up.resumable)

    def close(self) -> None:
        self.expire(older=-1.0)
