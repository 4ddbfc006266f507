"""Directory listing ahead of the planner, on both sides at once.

The planner walks the tree depth-first and asks for one directory's pair of
listings at a time; `PairLister` has already queued the next directories of
both sides on a small thread pool, so listing latency (a syscall burst
locally, a round trip remotely) overlaps with planning and copying. At most
`window` directory pairs are listed ahead, so memory is bounded by the
widest directory, never by the size of the tree.

Backends with lazy metadata (S3: user metadata needs a HEAD per object) are
completed here, once both listings of a directory are in, for just the files
that will be compared: same name and size on both sides. A file only one side
has needs nothing more (its reader completes it from the first GET).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ferry.mover.backends.base import Backend, Entry, EntryType, LazyMeta, check_name
from ferry.mover.errors import FerryError, as_ferry_error

Listing = list[Entry] | FerryError


class PairLister:
    def __init__(
        self,
        src: Backend,
        dst: Backend | None,
        workers: int = 4,
        window: int = 64,
        rename: Callable[[str], str] | None = None,
    ) -> None:
        self.src = src
        self.dst = dst
        self.window = window
        self.rename = rename  # a source name -> its destination name (--rename)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="ferry-list")
        self._queued: deque[tuple[str, bool, str]] = deque()
        self._running: dict[str, Future[tuple[Listing, Listing]]] = {}
        self._lazy = isinstance(src, LazyMeta) or isinstance(dst, LazyMeta)

    def _list(self, backend: Backend, rel: str) -> Listing:
        try:
            entries = backend.list_dir(rel)
            for e in entries:
                check_name(e.name, rel or "/")
            return entries
        except Exception as exc:
            return as_ferry_error(exc, rel or backend.describe())

    def request(self, rel: str, dst_exists: bool, dst_rel: str | None = None) -> None:
        """Queue a directory (`dst_rel`: its destination path, when renamed); listings start
        in request order, up to `window` ahead."""
        self._queued.append((rel, dst_exists, rel if dst_rel is None else dst_rel))
        self._fill()

    def _fill(self) -> None:
        while self._queued and len(self._running) < self.window:
            rel, dst_exists, dst_rel = self._queued.popleft()
            self._running[rel] = self._start(rel, bool(self.dst and dst_exists), dst_rel)

    def _start(self, rel: str, with_dst: bool, dst_rel: str) -> Future[tuple[Listing, Listing]]:
        """List both sides in parallel; complete lazy metadata once both are in."""
        pair: Future[tuple[Listing, Listing]] = Future()
        sf = self._pool.submit(self._list, self.src, rel)
        df = self._pool.submit(self._list, self.dst, dst_rel) if with_dst and self.dst else None
        left = [1 if df is None else 2]
        lock = threading.Lock()

        def one_done(_: Future[Listing]) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            if sf.cancelled() or (df is not None and df.cancelled()):
                pair.cancel()  # the lister was closed
                return
            s, d = sf.result(), (df.result() if df is not None else [])
            if not (self._lazy and d):
                pair.set_result((s, d))
                return
            try:
                self._pool.submit(self._complete, rel, dst_rel, s, d, pair)
            except RuntimeError:
                pair.cancel()

        sf.add_done_callback(one_done)
        if df is not None:
            df.add_done_callback(one_done)
        return pair

    def _complete(
        self,
        rel: str,
        dst_rel: str,
        s: Listing,
        d: Listing,
        pair: Future[tuple[Listing, Listing]],
    ) -> None:
        try:
            if isinstance(s, list) and isinstance(d, list):
                by_name = {e.name: e for e in d if e.type == EntryType.FILE}
                rename = self.rename or str
                pairs = [
                    (e, o)
                    for e in s
                    if e.type == EntryType.FILE
                    and (o := by_name.get(rename(e.name))) is not None
                    and o.size == e.size
                ]
                if pairs:
                    if isinstance(self.src, LazyMeta):
                        self.src.fill_meta(rel, [e for e, _ in pairs])
                    if isinstance(self.dst, LazyMeta):
                        self.dst.fill_meta(dst_rel, [o for _, o in pairs])
        except Exception as exc:
            s = as_ferry_error(exc, rel or "/")
        pair.set_result((s, d))

    def get(self, rel: str) -> tuple[Listing, Listing]:
        while rel not in self._running:
            if not self._queued:
                raise KeyError(rel)
            self._fill()
            if rel not in self._running:
                # The window is full of directories requested before this one; they were
                # requested in walk order, so this only happens with out-of-order gets.
                self.window += 1
        pair = self._running.pop(rel)
        self._fill()
        return pair.result()

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
