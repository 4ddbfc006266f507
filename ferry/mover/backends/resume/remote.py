"""Resume state for remote backends, kept beside the partial as a small JSON blob.

SFTP and SMB partials are files on the server, S3 partials are multipart
uploads; either way the state must live at the destination so another process
or pod can resume. Whole-blob rewrites are throttled (a killed run loses at
most the last interval's records, which are simply redone) because a remote
write per chunk would cost a round trip each.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from ferry.mover.backends.resume.journal import validate_chunks

SAVE_INTERVAL = 0.5


class RemoteState:
    """A dict persisted through `save(bytes)`; loaded from `load() -> bytes | None`."""

    def __init__(
        self, key: str, load: Callable[[], bytes | None], save: Callable[[bytes], None]
    ) -> None:
        self.key = key
        self._save = save
        self._lock = threading.Lock()
        self._last = 0.0
        self._dirty = False
        self.data: dict[str, Any] = {}
        self.previous: dict[str, Any] | None = None  # state of another source version, to clean up
        self._timer: threading.Timer | None = None
        self._closed = False
        raw = None
        try:
            raw = load()
        except Exception:
            raw = None
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and doc.get("key") == key:
                self.data = doc
            elif isinstance(doc, dict):
                self.previous = doc
        self.data["key"] = key

    def update(self, fn: Callable[[dict[str, Any]], None], force: bool = False) -> None:
        """Apply fn to the state; persist now if forced or the interval has passed,
        else within the interval from a timer (so a kill loses at most that much)."""
        with self._lock:
            fn(self.data)
            self._dirty = True
            wait = SAVE_INTERVAL - (time.monotonic() - self._last)
            if force or wait <= 0:
                self._flush_locked()
            elif self._timer is None and not self._closed:
                self._timer = threading.Timer(wait, self._deferred)
                self._timer.daemon = True
                self._timer.start()

    def chunks(self) -> dict[int, bytes]:
        """Chunk index -> block digests, as recorded by a random-access writer (SFTP, SMB)."""
        return {int(i): bytes.fromhex(h) for i, h in dict(self.data.get("chunks", {})).items()}

    def valid_chunks(
        self, chunk_size: int, size: int, read_back: Callable[[int, int], bytes | memoryview]
    ) -> dict[int, bytes]:
        """The recorded chunks whose bytes, read back from the partial, still hash as recorded
        (a server that lost writes, or a partial someone touched, is not trusted on its word);
        the others are forgotten so they are copied again."""
        recorded = self.chunks()
        if not recorded or not chunk_size:
            return {}
        good = validate_chunks(recorded, chunk_size, size, read_back)
        if len(good) != len(recorded):
            keep = {str(i): d.hex() for i, d in good.items()}
            self.update(lambda d: d.__setitem__("chunks", keep), force=True)
        return good

    def add_chunk(self, index: int, block_digests: bytes) -> None:
        hexd = block_digests.hex()
        self.update(lambda d: d.setdefault("chunks", {}).__setitem__(str(index), hexd))

    def _deferred(self) -> None:
        with self._lock:
            self._timer = None
            if self._dirty and not self._closed:
                try:
                    self._flush_locked()
                except Exception:
                    pass

    def close(self) -> None:
        """No more saves (call before deleting the state): cancels a pending timer."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def flush(self) -> None:
        with self._lock:
            if self._dirty:
                self._flush_locked()

    def _flush_locked(self) -> None:
        self._save(json.dumps(self.data, separators=(",", ":")).encode())
        self._last = time.monotonic()
        self._dirty = False
