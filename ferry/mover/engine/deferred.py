"""What waits until every copy has finished: hard links (their targets must exist),
sync's deletes and type replacements (only if nothing failed), and directory metadata
(last, deepest first, so adding contents cannot undo it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ferry.mover.backends.base import Backend, Entry, EntryType, Hardlinks, check_name
from ferry.mover.engine.context import Context
from ferry.mover.engine.wholefile import make_symlink, whole_file
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.plan import Action
from ferry.mover.scan import list_tree

log = logging.getLogger(__name__)


def _not_ours(exc: BaseException) -> bool:
    """A permission error: the run may not change this (an existing root owned by another
    user)."""
    return as_ferry_error(exc).kind == ErrorKind.PERMISSION


def doomed(dst: Backend, rel: str, e: Entry) -> Iterator[tuple[str, Entry]]:
    """What deleting `rel` removes, in the order it goes: a directory's contents (listed
    when it comes to it), then the entry itself."""
    if e.type == EntryType.DIR:
        yield from list_tree(dst, rel)
    yield rel, e


class Deferred:
    """The actions held back, and the work they become at the end of the run."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.deletes: list[Action] = []
        self.replaces: list[Action] = []  # a directory where the source has a file or link
        self.hardlinks: list[Action] = []
        self.dirs: list[tuple[str, Entry, Entry | None]] = []  # (path, source, destination)

    @property
    def has_deletes(self) -> bool:
        return bool(self.deletes or self.replaces)

    def finish_links(self) -> None:
        ctx = self.ctx
        for a in self.hardlinks:
            if ctx.cancel.is_set():
                return
            try:
                assert a.link_to is not None
                if not isinstance(ctx.dst, Hardlinks):
                    raise FerryError(
                        ErrorKind.USAGE, f"{ctx.dst.describe()} cannot hold hard links", a.rel
                    )
                ctx.dst.hardlink(a.rel, a.link_to)
                ctx.ledger.link_created(a.rel)
            except Exception as exc:
                ctx.ledger.fail(a.rel, exc)

    def run_deletes(self) -> None:
        """Sync's last step: remove what the source does not have, then type replacements.
        Returns once the replacements' copies are queued (the caller drains)."""
        ctx = self.ctx
        for a in self.deletes + self.replaces:
            if ctx.cancel.is_set():
                return
            assert a.dst is not None
            try:
                for rel, e in doomed(ctx.dst, a.rel, a.dst):
                    ctx.dst.remove(rel, e)
                    ctx.ledger.deleted(rel, e)
            except Exception as exc:
                ctx.ledger.fail(a.rel, exc, counts_file=False)
                return
        for a in self.replaces:
            assert a.src is not None
            if a.src.type == EntryType.SYMLINK:
                make_symlink(ctx, a)
            else:
                ctx.ledger.planned(1, a.src.size)
                ctx.tasks.submit(whole_file, ctx, a)

    def count_deletes(self, limit: int) -> int:
        """Entries run_deletes would remove (a directory with everything in it), counted
        until the count passes `limit`: a huge doomed tree is not listed to the end."""
        n = 0
        stack: list[str] = []
        for a in self.deletes + self.replaces:
            assert a.dst is not None
            n += 1
            if a.dst.type == EntryType.DIR:
                stack.append(a.rel)
            while stack and n <= limit:
                rel = stack.pop()
                for e in self.ctx.dst.list_dir(rel):
                    check_name(e.name, rel)
                    n += 1
                    if e.type == EntryType.DIR:
                        stack.append(f"{rel}/{e.name}")
            if n > limit:
                break
        return n

    def finish_dirs(self) -> None:
        """Directory metadata last, deepest first, so adding contents cannot undo it."""
        ctx = self.ctx
        for rel, s, d in reversed(self.dirs):
            fix = d is not None and ctx.meta_differs(s, d)
            if d is None or rel in ctx.ledger.touched or fix:
                try:
                    ctx.dst.set_meta(rel, s, ctx.options.preserve)
                    ctx.ledger.meta_written = True
                    if fix:
                        ctx.ledger.dir_meta_fixed(rel)
                except Exception as exc:
                    if rel == "" and d is not None and _not_ours(exc):
                        log.warning(
                            "the destination root's metadata is left as it is: %s (a root the "
                            "run may not change, as a volume's mount point owned by another "
                            "user)",
                            as_ferry_error(exc, "."),
                        )
                        continue
                    ctx.ledger.fail(rel, exc, counts_file=False)
