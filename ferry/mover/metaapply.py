"""`--chmod`/`--chown` applied to a source entry where it is read (planner, verify), so
every comparison and every executor path sees the destination's mode and owner."""

from __future__ import annotations

from ferry.mover.backends.base import Entry, EntryType
from ferry.mover.metaxform import Chmod, Chown

# Default modes where the source has none (an object store): what a new file gets.
_BASE = {EntryType.FILE: 0o644, EntryType.DIR: 0o755}


class MetaTransform:
    """Both transforms; `apply` rewrites a source entry's mode and owner in place."""

    def __init__(self, chmod: str | None, chown: str | None) -> None:
        self.chmod = Chmod(chmod) if chmod is not None else None
        self.chown = Chown.parse(chown) if chown is not None else None

    def __bool__(self) -> bool:
        return self.chmod is not None or self.chown is not None

    def apply(self, e: Entry) -> Entry:
        if e.type not in (EntryType.FILE, EntryType.DIR):
            return e
        if self.chmod is not None:
            e.mode = self.chmod.apply(e.mode or _BASE[e.type], e.type == EntryType.DIR)
        if self.chown is not None:
            if self.chown.uid >= 0:
                e.uid = self.chown.uid
            if self.chown.gid >= 0:
                e.gid = self.chown.gid
        return e
