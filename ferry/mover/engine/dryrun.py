"""A dry run (`ferry plan`, `--dry-run`): each action booked in the ledger as the executor
books it once done, and nothing done. The numbers of a plan are those of the copy it
plans (a copy that meets no error), because both count through the same ledger."""

from __future__ import annotations

from dataclasses import replace

from ferry.mover.backends.base import Backend, EntryType
from ferry.mover.engine.deferred import doomed
from ferry.mover.engine.ledger import Ledger
from ferry.mover.engine.wholefile import replace_refused, same_content
from ferry.mover.options import Options
from ferry.mover.plan import Action, Op


class DryRun:
    def __init__(self, src: Backend, dst: Backend, options: Options, ledger: Ledger) -> None:
        self.src, self.dst, self.o, self.ledger = src, dst, options, ledger
        self.deletes = 0  # entries a sync would remove, for --max-delete: directories count too

    def handle(self, a: Action) -> Action:
        """Book `a`; return it as it resolves (a checked file: SKIP or UPDATE), a new
        Action: the plan's own is not changed."""
        ledger, op = self.ledger, a.op
        if op == Op.CHECK:
            try:
                same = same_content(self.src, self.dst, a)
            except Exception as exc:
                ledger.fail(a.rel, exc)
                return a
            if same:
                ledger.skipped(a)
                return replace(a, op=Op.SKIP)
            self._copied(a)
            return replace(a, op=Op.UPDATE)
        if op in (Op.COPY, Op.UPDATE):
            self._copied(a)
        elif op in (Op.SKIP, Op.META):
            assert a.src is not None
            if a.src.type != EntryType.DIR:
                ledger.skipped(a)
        elif op == Op.MKDIR:
            ledger.dir_created(a.rel)
        elif op in (Op.SYMLINK, Op.HARDLINK):
            ledger.link_created(a.rel)
        elif op == Op.DELETE:
            self._deleted(a)
        elif op == Op.REPLACE:
            self._replaced(a)
        elif op == Op.ERROR:
            assert a.error is not None
            ledger.fail(a.rel, a.error, counts_file=False)
        return a

    def _copied(self, a: Action) -> None:
        assert a.src is not None
        self.ledger.planned(1, a.src.size)
        self.ledger.committed(a, a.src, None)

    def _deleted(self, a: Action) -> None:
        assert a.dst is not None
        for rel, e in doomed(self.dst, a.rel, a.dst):
            self.ledger.deleted(rel, e)
            self.deletes += 1

    def _replaced(self, a: Action) -> None:
        """As the executor: a file or link in the way goes uncounted (part of the update);
        a directory is refused by a copy, deleted by a sync and then the new entry made."""
        assert a.src is not None and a.dst is not None
        if a.dst.type != EntryType.DIR:
            return
        refused = replace_refused(self.o, a)
        if refused is not None:
            self.ledger.fail(a.rel, refused)
            return
        self._deleted(a)
        if a.src.type == EntryType.SYMLINK:
            self.ledger.link_created(a.rel)
        else:
            self._copied(a)
