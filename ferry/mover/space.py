"""Space before the first byte: what a plan will take at the destination, and the check.

A transfer that runs a volume to 100 % fails there, and takes down whatever else writes
to it (an application sharing the PVC). So before writing, the plan's needs are added up
and compared with what the destination reports free, less a reserve (`--min-free`).

The need is an estimate, counted in the destination's allocation units: a new file takes
its size (its data only, when holes are kept), a directory one unit. A changed file is
written beside the old one and renamed over it, so it takes its growth for good and, while
it is in flight, the old copy as well: the largest such overlaps, as many as run at once,
are added. Bytes a resumable partial already holds are not needed again. Deletes free
space only after every copy, so they count for nothing.
"""

from __future__ import annotations

import heapq
import logging

from ferry.mover.backends.base import (
    Backend,
    Entry,
    EntryType,
    Resumable,
    Space,
    check_name,
    join,
)
from ferry.mover.engine.batches import SMALL
from ferry.mover.engine.chunks import chunk_size_for, resume_key_for
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Options, SymlinkPolicy, format_size
from ferry.mover.plan import Action, Op
from ferry.mover.shard import Sharder

log = logging.getLogger("ferry")


class SpaceNeed:
    """Bytes a plan will take at the destination, added up action by action."""

    def __init__(self, src: Backend, dst: Backend, options: Options, block: int) -> None:
        self.src, self.dst, self.o = src, dst, options
        self.block = max(1, block)
        self.sparse = options.preserve.sparse and dst.holds.sparse
        self.resumable = isinstance(dst, Resumable) and dst.limits.chunk_writer
        self.growth = 0  # what stays taken once the transfer is done
        self._overlaps: list[int] = []  # min-heap: the largest old copies held while in flight
        self._parallel = options.transfers
        self.resumed = 0

    @property
    def total(self) -> int:
        return self.growth + sum(self._overlaps)

    def _alloc(self, e: Entry, holes: bool) -> int:
        size = min(e.size, e.blocks * 512) if holes and e.blocks >= 0 else e.size
        return -(-size // self.block) * self.block

    def _partial(self, a: Action) -> int:
        s = a.src
        assert s is not None
        if not self.resumable or s.size < SMALL:
            return 0
        chunk = chunk_size_for(self.o, self.src, self.dst, s.size)
        if s.size < 2 * chunk:
            return 0
        assert isinstance(self.dst, Resumable)  # self.resumable
        held = self.dst.partial_bytes(a.rel, resume_key_for(s, chunk, self.o.verify))
        self.resumed += held
        return held

    def add(self, a: Action) -> None:
        op, s, d = a.op, a.src, a.dst
        if op == Op.MKDIR:
            self.growth += self.block
            return
        if s is None or s.type != EntryType.FILE:
            return
        if op == Op.COPY or (op == Op.REPLACE and d is not None and d.type == EntryType.DIR):
            self.growth += max(0, self._alloc(s, self.sparse) - self._partial(a))
        elif op in (Op.UPDATE, Op.CHECK):
            new = max(0, self._alloc(s, self.sparse) - self._partial(a))
            old = self._alloc(d, True) if d is not None and d.type == EntryType.FILE else 0
            self.growth += max(0, new - old)
            overlap = min(new, old)
            if overlap:
                heapq.heappush(self._overlaps, overlap)
                if len(self._overlaps) > self._parallel:
                    heapq.heappop(self._overlaps)


def fits_whole_source(src: Backend, space: Space, options: Options) -> bool:
    """Whether the destination has room even for all of the source, whatever the destination
    holds: every file in full, every directory and link a unit. Then no plan can need more,
    and the exact count (a walk of both trees, held up before the first byte) is not needed.
    A scan of the source alone is a third of such a walk; it stops once past the room."""
    if options.symlinks == SymlinkPolicy.FOLLOW:
        return False  # a followed link may bring in a whole tree again
    room = space.available - options.min_free.reserve(space.total)
    block = max(1, space.block)
    total = 0
    stack = [""]
    try:
        while stack:
            rel = stack.pop()
            for e in src.list_dir(rel):
                check_name(e.name, rel or "/")
                if e.type == EntryType.DIR:
                    stack.append(join(rel, e.name))
                total += -(-e.size // block) * block if e.type == EntryType.FILE else block
                if total > room:
                    return False
    except Exception:
        log.debug("source scan for the space check failed", exc_info=True)
        return False  # the walk that follows reports what is wrong
    log.info("all of the source (%s) fits at the destination", format_size(total))
    return True


def room_share(sharder: Sharder | None) -> float:
    """The part of the room one shard may take: shards write to one destination at once,
    each planning only its own files, so each gets a share in proportion to the source
    bytes it carries (which every shard knows alike)."""
    if sharder is None:
        return 1.0
    total = sum(sharder.loads)
    return sharder.loads[sharder.index] / total if total else 1 / sharder.count


def check_space(
    need: SpaceNeed, space: Space, options: Options, where: str, share: float = 1.0
) -> None:
    """Refuse (DestinationFull) a plan that would leave less than the reserve free."""
    reserve = options.min_free.reserve(space.total)
    n, free = need.total, space.available
    log.info(
        "%s: the transfer needs about %s, %s is free, %s (--min-free %s) stays free",
        where,
        format_size(n),
        format_size(free),
        format_size(reserve),
        options.min_free,
    )
    if n <= int((free - reserve) * share):
        return
    part = f" (this shard's part of the room is {share:.0%})" if share < 1 else ""
    raise FerryError(
        ErrorKind.DESTINATION_FULL,
        f"not enough free space: the transfer needs about {format_size(n)} ({n} bytes), "
        f"{format_size(free)} ({free} bytes) is free and {format_size(reserve)} ({reserve} "
        f"bytes) must stay free (--min-free / minFree {options.min_free}){part}; nothing "
        "was written. Make room, lower --min-free, or skip this check with --no-preflight "
        "(preflight: false)",
        where,
    )
