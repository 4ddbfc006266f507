"""Resume state for a partially written file: which chunks are durably done.

The journal sits beside the partial file at the destination, so a new
process (or a new pod on another node) finds it. It is append-only text: a
JSON header naming the source version it belongs to, then one line per
finished chunk with that chunk's block digests. Lines are not fsynced;
instead a resuming writer re-hashes each journaled chunk of the partial file
and keeps only those that still match, which is both cheaper than an fsync
per chunk and safe after a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable

from ferry.mover.integrity import block_digests


class Journal:
    def __init__(self, path: str, key: str) -> None:
        self.path = path
        self.key = key
        self._lock = threading.Lock()
        self._fd = -1

    def load(self) -> dict[int, bytes]:
        """Chunks recorded for this key; a journal for another source version is discarded."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return {}
        try:
            header = json.loads(lines[0])
        except ValueError:
            return {}
        if not isinstance(header, dict) or header.get("key") != self.key:
            return {}
        chunks: dict[int, bytes] = {}
        for line in lines[1:]:
            index, _, hexd = line.partition(b" ")
            try:
                chunks[int(index)] = bytes.fromhex(hexd.decode())
            except ValueError:
                continue  # a torn last line after a kill
        return chunks

    def start(self, keep: dict[int, bytes]) -> None:
        """Rewrite the journal with just the chunks that survived validation."""
        tmp = self.path + ".new"
        with open(tmp, "wb") as f:
            f.write(json.dumps({"v": 1, "key": self.key}).encode() + b"\n")
            for index, digests in sorted(keep.items()):
                f.write(b"%d %s\n" % (index, digests.hex().encode()))
        os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def record(self, index: int, digests: bytes) -> None:
        line = b"%d %s\n" % (index, digests.hex().encode())
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        for p in (self.path, self.path + ".new"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def validate_chunks(
    recorded: dict[int, bytes],
    chunk_size: int,
    size: int,
    read_at: Callable[[int, int], bytes | memoryview],
) -> dict[int, bytes]:
    """Keep the recorded chunks whose bytes in the partial file still hash as journaled."""
    good: dict[int, bytes] = {}
    for index, digests in recorded.items():
        offset = index * chunk_size
        length = min(chunk_size, size - offset)
        if offset < 0 or length <= 0:
            continue  # a damaged journal's line, or a chunk past the partial's end
        data = read_at(offset, length)
        if len(data) == length and block_digests(data) == digests:
            good[index] = digests
    return good
