"""Directory listing ahead of the planner, on both sides at once.

The planner walks the tree depth-first and asks for one directory's pair of
listings at a time; `PairLister` has already queued the next directories of
both sides on a small thread pool, so listing latency (a syscall burst
locally, a round trip remotely) overlaps with planning and copying. At most
`window` directory pairs are listed ahead, so memory is bounded by the
widest directory, never by the size of the tree.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from ferry.mover.backends.base import Backend, Entry, check_name
from ferry.mover.errors import FerryError, as_ferry_error

Listing = list[Entry] | FerryError


class PairLister:
    def __init__(
        self, src: Backend, dst: Backend | None, workers: int = 4, window: int = 64
    ) -> None:
        self.src = src
        self.dst = dst
        self.window = window
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="ferry-list")
        self._queued: deque[tuple[str, bool]] = deque()
        self._running: dict[str, tuple[Future[Listing], Future[Listing] | None]] = {}

    def _list(self, backend: Backend, rel: str) -> Listing:
        try:
            entries = backend.list_dir(rel)
            for e in entries:
                check_name(e.name, rel or "/")
            return entries
        except Exception as exc:
            return as_ferry_error(exc, rel or backend.describe())

    def request(self, rel: str, dst_exists: bool) -> None:
        """Queue a directory; listings start in request order, up to `window` ahead."""
        self._queued.append((rel, dst_exists))
        self._fill()

    def _fill(self) -> None:
        while self._queued and len(self._running) < self.window:
            rel, dst_exists = self._queued.popleft()
            sf = self._pool.submit(self._list, self.src, rel)
            df = self._pool.submit(self._list, self.dst, rel) if (self.dst and dst_exists) else None
            self._running[rel] = (sf, df)

    def get(self, rel: str) -> tuple[Listing, Listing]:
        while rel not in self._running:
            if not self._queued:
                raise KeyError(rel)
            self._fill()
            if rel not in self._running:
                # The window is full of directories requested before this one; they were
                # requested in walk order, so this only happens with out-of-order gets.
                self.window += 1
        sf, df = self._running.pop(rel)
        self._fill()
        return sf.result(), (df.result() if df else [])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def list_tree(backend: Backend, rel: str) -> list[tuple[str, Entry]]:
    """Everything below `rel`, children before their directory (for deleting a subtree)."""
    out: list[tuple[str, Entry]] = []
    for e in backend.list_dir(rel):
        check_name(e.name, rel)
        child = f"{rel}/{e.name}"
        if e.type == 1:  # EntryType.DIR
            out.extend(list_tree(backend, child))
        out.append((child, e))
    return out
