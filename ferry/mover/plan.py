"""Walk both trees and decide, per entry: copy, update, skip, fix metadata, link or delete.

The planner is a generator: it yields actions as it walks, so copying starts
while the scan is still going and memory never holds the whole tree. Deletes
are yielded too, but the executor holds them back until every copy succeeded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter

from ferry.mover.acl import refuse_unheld
from ferry.mover.backends.base import (
    Backend,
    Entry,
    EntryType,
    ResolvesLinks,
    join,
    read_acls,
    read_xattrs,
    want_acls,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.filters import Bounds, FilterSet, PathList, bounds_of
from ferry.mover.metaapply import MetaTransform
from ferry.mover.options import (
    DEFAULT_PRESERVE,
    PRESERVE_FLAGS,
    Compare,
    Mode,
    Options,
    Preserve,
    SymlinkPolicy,
)
from ferry.mover.rename import Renamer
from ferry.mover.roots import Overlap, RootId, overlap
from ferry.mover.scan import PairLister
from ferry.mover.shard import Sharder
from ferry.mover.single import UNASKED, Asked, OneFile

log = logging.getLogger("ferry")


_by_name = attrgetter("name")

# What becomes of a preserved property the destination cannot hold (warned once per kind).
_NOT_KEPT = {
    "owners": "owners; files keep the writer's owner",
    "xattrs": "xattrs; they are not copied",
    "perms": "permission bits; they are not kept",
    "links": "symlinks; skipping them (use --links follow)",
    "hardlinks": "hard links; each linked name is copied as a file of its own",
    "sparse": "sparse files; holes are written out as zeros",
}


class Op(Enum):
    COPY = "copy"  # new at the destination
    UPDATE = "update"  # exists, content differs
    CHECK = "check"  # same size; compare digests, then copy or skip
    SKIP = "skip"
    META = "meta"  # same content, metadata differs
    MKDIR = "mkdir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    DELETE = "delete"
    REPLACE = "replace"  # the destination has another type here: remove it, then copy (sync only)
    ERROR = "error"


@dataclass(slots=True, eq=False, repr=False)
class Action:
    """One decision of the planner. The executor reads it and never changes it."""

    op: Op
    rel: str
    src: Entry | None = None
    dst: Entry | None = None
    read_rel: str | None = None  # where to read when it differs from rel (followed symlinks)
    link_to: str | None = None  # hard link target (destination-relative)
    error: FerryError | None = None

    def __repr__(self) -> str:
        return f"Action({self.op.name}, {self.rel!r})"


class Planner:
    def __init__(
        self,
        src: Backend,
        dst: Backend,
        options: Options,
        dst_exists: bool = True,
        one: OneFile | None = None,
    ) -> None:
        self.src = src
        self.dst = dst
        self.o = options
        self.one = one  # a single file as the source: one action, no walk
        self.rename = Renamer(options.rename)
        xform = MetaTransform(options.chmod, options.chown)
        self.xform = xform if xform else None
        if options.chown is not None:
            refuse_chown(dst)
        if options.chmod is not None and not dst.holds.permissions:
            raise FerryError(
                ErrorKind.USAGE, "--chmod: the destination cannot hold modes", dst.describe()
            )
        self.filters = FilterSet.parse(options.filters)
        bounds = bounds_of(options)
        self.bounds: Bounds | None = bounds if bounds else None  # None: one test per entry
        self.listed = PathList(options.files_from) if options.files_from is not None else None
        self.protected = frozenset(options.protect)
        # A protected file's directories are never deleted either (it would go with them).
        self.protected_dirs = frozenset(
            p.rsplit("/", i)[0] for p in options.protect for i in range(1, p.count("/") + 1)
        )
        self.dst_exists = dst_exists
        self.window_ns = max(src.holds.mtime_precision_ns, dst.holds.mtime_precision_ns, 1)
        self.links_ok = options.preserve.links and options.symlinks == SymlinkPolicy.PRESERVE
        self.hardlinks_ok = (
            options.preserve.hardlinks and src.holds.hardlinks and dst.holds.hardlinks
        )
        # Read per entry only when kept on both sides: two syscalls or more per entry.
        self.xattrs = options.preserve.xattrs and src.holds.xattrs and dst.holds.xattrs
        if options.preserve.acls:
            refuse_unheld((src.holds.acls, src.describe()), (dst.holds.acls, dst.describe()))
            want_acls(src, dst)
        self.acls = options.preserve.acls
        self._hardlinks: dict[tuple[int, int], tuple[str, int | None]] = {}
        self._followed: set[tuple[int, int]] = set()
        self.sharder = (
            Sharder(options.shard_index, options.shard_count) if options.shard_count > 1 else None
        )
        self.skipped_files = 0
        self.skipped_bytes = 0
        self.on_skipped: Callable[[int, int], None] | None = None
        # Unchanged plain files are counted in bulk unless something needs to see each one.
        self._fast_skip = (
            not self.filters
            and self.bounds is None
            and self.listed is None
            and self.sharder is None
            and options.compare == Compare.SIZE_MTIME
            and not options.update
            and options.preserve.times
            and options.manifest is None
            and (dst.holds.permissions or not options.preserve.perms)
            and not self.xattrs
            and not self.acls
            and options.audit_log is None  # the audit log has a line for each file
        )
        # Preserved properties the destination does not keep: owners, xattrs and perms are
        # known now; links, hard links and holes once an entry has them.
        self.dropped: set[str] = set()
        p, holds = options.preserve, dst.holds
        for flag, held in (
            ("owners", holds.owners),
            ("xattrs", holds.xattrs),
            ("perms", holds.permissions),
        ):
            if getattr(p, flag) and not held:
                self.drop(flag)
        self._holes_dropped = p.sparse and not holds.sparse and src.holds.sparse
        self._hardlinks_dropped = p.hardlinks and src.holds.hardlinks and not holds.hardlinks

    def drop(self, flag: str) -> None:
        """Note (and warn, once per kind) that a preserved property is not kept. A default
        nobody asked for (perms towards SMB) is only noted: the summary still names it."""
        if flag not in self.dropped:
            self.dropped.add(flag)
            asked = self.o.preserve != Preserve() or flag not in DEFAULT_PRESERVE
            level = logging.WARNING if asked else logging.INFO
            log.log(level, "%s cannot hold %s", self.dst.describe(), _NOT_KEPT[flag])

    def dropped_flags(self) -> list[str]:
        return [f for f in PRESERVE_FLAGS if f in self.dropped]

    def _mine(self, rel: str, size: int) -> bool:
        return self.sharder is None or self.sharder.owns(rel, size)

    def walk(self, lister: PairLister) -> Iterator[Action]:
        if self.one is not None:
            yield from self._single(self.one)
            return
        lister.request("", self.dst_exists)
        # (source path, destination path): they differ below a renamed directory.
        stack: list[tuple[str, str]] = [("", "")]
        rename = self.rename if self.rename else None
        while stack:
            rel, dst_rel = stack.pop()
            src_list, dst_list = lister.get(rel)
            if isinstance(src_list, FerryError):
                yield Action(Op.ERROR, dst_rel, error=src_list)
                continue
            if isinstance(dst_list, FerryError):
                yield Action(Op.ERROR, dst_rel, error=dst_list)
                continue
            names: dict[str, str] | None = None
            if rename is not None:
                try:
                    names = self.renamed(rel, src_list)
                except FerryError as err:
                    yield Action(Op.ERROR, dst_rel, error=err)
                    continue
            dst_by_name = {e.name: e for e in dst_list}
            subdirs: list[tuple[str, bool, str]] = []
            src_list.sort(key=_by_name)
            skipped_files = skipped_bytes = 0
            fast = self._fast_skip
            window = self.window_ns
            xform = self.xform
            for s in src_list:
                if xform is not None:
                    xform.apply(s)
                d = dst_by_name.pop(s.name if names is None else names[s.name], None)
                if (
                    fast
                    and d is not None
                    and s.type == d.type == EntryType.FILE
                    and s.nlink == 1
                    and s.size == d.size
                    and abs(s.mtime_ns - d.mtime_ns) < window
                    and (s.mode == d.mode or not self.o.preserve.perms)
                    and (not self.o.preserve.owners or (s.uid, s.gid) == (d.uid, d.gid))
                ):
                    # The common no-op case, decided without an Action: counted, not yielded.
                    skipped_files += 1
                    skipped_bytes += s.size
                    continue
                child = f"{rel}/{s.name}" if rel else s.name
                dst_child = child if names is None else join(dst_rel, names[s.name])
                read_rel = child if dst_child != child else None
                for action in self._decide(dst_child, s, d, read_rel):
                    if (
                        action.op in (Op.MKDIR, Op.SKIP)
                        and action.src is not None
                        and action.src.type == EntryType.DIR
                    ):
                        subdirs.append((child, action.op == Op.SKIP, dst_child))
                    yield action
            if skipped_files:
                self.skipped_files += skipped_files
                self.skipped_bytes += skipped_bytes
                if self.on_skipped is not None:
                    self.on_skipped(skipped_files, skipped_bytes)
            if self.o.mode == Mode.SYNC:
                for d in sorted(dst_by_name.values(), key=lambda e: e.name):
                    child = join(dst_rel, d.name)
                    if (
                        not self._mine(child, d.size)
                        or (self.excluded(child, d) and not self.o.delete_excluded)
                        or child in self.protected
                        or child in self.protected_dirs
                    ):
                        continue
                    yield Action(Op.DELETE, child, dst=d)
            for src_sub, exists, dst_sub in subdirs:
                lister.request(src_sub, exists, dst_sub)
            stack.extend((src_sub, dst_sub) for src_sub, _, dst_sub in reversed(subdirs))

    def renamed(self, rel: str, listing: list[Entry]) -> dict[str, str]:
        """Each source name of a directory -> its destination name, refusing two that the
        rules make one (entries the filters leave out take no name)."""
        kept = [e.name for e in listing if not self.excluded(join(rel, e.name), e)]
        where = self.src.describe()
        where = f"{where.rstrip('/')}/{rel}" if rel else where
        return self.rename.listing((e.name for e in listing), kept, where)

    def check_renames(self) -> None:
        """Walk the source's listings once before anything is written, so a rename
        collision (or a name the rules make unusable) stops the run with nothing done."""
        stack = [""]
        while stack:
            rel = stack.pop()
            listing = self.src.list_dir(rel)
            self.renamed(rel, listing)
            stack.extend(
                join(rel, e.name)
                for e in listing
                if e.type == EntryType.DIR and not self.excluded(join(rel, e.name), e)
            )

    def _single(self, one: OneFile) -> Iterator[Action]:
        """The one action of a file source: its name read, the destination's name written."""
        s = self.src.stat(one.read)
        if s is None:
            raise FerryError(ErrorKind.SOURCE_NOT_FOUND, "source does not exist", one.read)
        d = self.dst.stat(one.write) if self.dst_exists else None
        if self.xform is not None:
            self.xform.apply(s)
        yield from self._decide(one.write, s, d, one.read)

    def excluded(self, rel: str, e: Entry) -> bool:
        if (
            self.bounds is not None
            and e.type == EntryType.FILE
            and not self.bounds.admits(e.size, e.mtime_ns)
        ):
            return True
        if self.listed is not None and not (
            self.listed.include_dir(rel)
            if e.type == EntryType.DIR
            else self.listed.include_file(rel)
        ):
            return True
        if not self.filters:
            return False
        if e.type == EntryType.DIR:
            return not self.filters.include_dir(rel)
        return not self.filters.include_file(rel)

    def _decide(
        self, rel: str, s: Entry, d: Entry | None, read_rel: str | None = None
    ) -> Iterator[Action]:
        """`rel` is the destination's path; `read_rel` the source's where it differs."""
        src_rel = read_rel or rel
        if rel in self.protected or (rel in self.protected_dirs and s.type != EntryType.DIR):
            return  # the run's own file (options.protect): never written, compared or deleted
        if self.excluded(src_rel, s):
            if (
                self.o.delete_excluded
                and d is not None
                and self.one is None
                and self._mine(rel, d.size)
            ):
                yield Action(Op.DELETE, rel, dst=d)  # sync --delete-excluded
            return
        if s.type == EntryType.SYMLINK and not self.links_ok:
            if self.o.symlinks != SymlinkPolicy.FOLLOW:
                return
            resolved = (
                self.src.resolve_link(read_rel or rel, s)
                if isinstance(self.src, ResolvesLinks)
                else None
            )
            if resolved is None:
                log.warning("%s: symlink is dangling or points outside the source; skipped", rel)
                return
            read_rel, s = resolved
            if self.xform is not None:
                self.xform.apply(s)
            if s.type == EntryType.DIR:
                if (s.dev, s.ino) in self._followed:
                    log.warning("%s: symlinked directory already copied; skipped (loop?)", rel)
                    return
                self._followed.add((s.dev, s.ino))
        if self.xattrs:
            self._read_xattrs(rel, read_rel, s, d)
        if self.acls:
            try:
                self._read_acls(rel, read_rel, s, d)
            except FerryError as err:  # this entry's failure, under the error policy
                yield Action(Op.ERROR, rel, error=err)
                return
        if s.type == EntryType.DIR:
            if d is None:
                yield Action(Op.MKDIR, rel, s, None)
            elif d.type == EntryType.DIR:
                yield Action(Op.SKIP, rel, s, d)
            else:
                yield Action(Op.REPLACE, rel, s, d)
                yield Action(Op.MKDIR, rel, s, None)
            return
        if s.type == EntryType.OTHER:
            log.warning("%s: not a regular file, directory or symlink; skipped", rel)
            return
        if not self._mine(src_rel, s.size):
            return
        if s.type == EntryType.SYMLINK:
            if not self.dst.holds.symlinks:
                self.drop("links")
                return
            if d is not None and d.type == EntryType.DIR:
                yield Action(Op.REPLACE, rel, s, d)
            elif d is not None and d.type == EntryType.SYMLINK and d.target == s.target:
                yield self._meta_or_skip(rel, s, d)
            else:
                yield Action(Op.SYMLINK, rel, s, d)
            return
        # A regular file.
        if s.nlink > 1 and self._hardlinks_dropped:
            self.drop("hardlinks")
        if self._holes_dropped and s.blocks >= 0 and s.size - s.blocks * 512 >= 4096:
            self.drop("sparse")
        if self.hardlinks_ok and s.nlink > 1:
            key = (s.dev, s.ino)
            first = self._hardlinks.get(key)
            if first is not None:
                first_rel, first_dst_ino = first
                if d is not None and first_dst_ino is not None and d.ino == first_dst_ino:
                    yield Action(Op.SKIP, rel, s, d)
                else:
                    yield Action(Op.HARDLINK, rel, s, d, link_to=first_rel)
                return
        action = self._compare_file(rel, s, d)
        action.read_rel = read_rel
        if self.hardlinks_ok and s.nlink > 1:
            unchanged = action.op in (Op.SKIP, Op.META) and d is not None
            self._hardlinks[(s.dev, s.ino)] = (rel, d.ino if unchanged and d is not None else None)
        yield action

    def _read_xattrs(self, rel: str, read_rel: str | None, s: Entry, d: Entry | None) -> None:
        """Load the xattrs the comparison and set_meta need: both sides' where both exist, a
        new directory's source ones (a new file's travel with its data, from its reader)."""
        if s.type not in (EntryType.FILE, EntryType.DIR):
            return
        if d is not None and d.type == s.type:
            s.xattrs = read_xattrs(self.src, read_rel or rel)
            d.xattrs = read_xattrs(self.dst, rel)
        elif s.type == EntryType.DIR:
            s.xattrs = read_xattrs(self.src, read_rel or rel)

    def _read_acls(self, rel: str, read_rel: str | None, s: Entry, d: Entry | None) -> None:
        """Load the ACLs of a file or directory: the source's always (a new file is
        written with them), the destination's where it has the same type (compared)."""
        if s.type not in (EntryType.FILE, EntryType.DIR):
            return
        is_dir = s.type == EntryType.DIR
        s.acls = read_acls(self.src, read_rel or rel, is_dir)
        if d is not None and d.type == s.type:
            d.acls = read_acls(self.dst, rel, is_dir)

    def root_pair(self) -> tuple[Entry, Entry | None] | None:
        """The source root and the destination root (None: created by this run), whose
        mode, times, owner and ACLs the run sets as rsync does for `src/` into `dst/`; None
        for a single file, or where either side has no directories of its own (S3)."""
        if self.one is not None or not (self.src.holds.empty_dirs and self.dst.holds.empty_dirs):
            return None
        s = self.src.stat("")
        if s is None or s.type != EntryType.DIR:
            return None
        d = self.dst.stat("") if self.dst_exists else None
        if self.dst_exists and (d is None or d.type != EntryType.DIR):
            return None  # a root that stats as nothing (a share's) or is a link: left alone
        if self.xform is not None:
            self.xform.apply(s)
        if self.xattrs:
            self._read_xattrs("", None, s, d)
        if self.acls:
            self._read_acls("", None, s, d)
        return s, d

    def _compare_file(self, rel: str, s: Entry, d: Entry | None) -> Action:
        if d is None:
            return Action(Op.COPY, rel, s, None)
        if d.type == EntryType.DIR:
            return Action(Op.REPLACE, rel, s, d)
        if d.type != EntryType.FILE:
            return Action(Op.UPDATE, rel, s, d)
        if self.o.update and d.mtime_ns - s.mtime_ns >= self.window_ns:
            return Action(Op.SKIP, rel, s, d)  # newer at the destination: --update keeps it
        if s.size != d.size:
            return Action(Op.UPDATE, rel, s, d)
        if self.o.compare == Compare.SIZE:
            return self._meta_or_skip(rel, s, d, times=False)
        if self.o.compare == Compare.CHECKSUM:
            if s.digest and d.digest:
                return (
                    self._meta_or_skip(rel, s, d)
                    if s.digest == d.digest
                    else Action(Op.UPDATE, rel, s, d)
                )
            return Action(Op.CHECK, rel, s, d)
        if self.o.preserve.times and abs(s.mtime_ns - d.mtime_ns) >= self.window_ns:
            return Action(Op.UPDATE, rel, s, d)
        return self._meta_or_skip(rel, s, d)

    def _meta_or_skip(self, rel: str, s: Entry, d: Entry, times: bool = True) -> Action:
        if self.meta_differs(s, d, times):
            return Action(Op.META, rel, s, d)
        return Action(Op.SKIP, rel, s, d)

    def meta_differs(self, s: Entry, d: Entry, times: bool = True) -> bool:
        """Whether preserved metadata differs (`times=False`: --size-only, mtimes aside)."""
        p = self.o.preserve
        if (
            p.perms
            and self.dst.holds.permissions
            and s.mode
            and s.type != EntryType.SYMLINK
            and s.mode != d.mode
        ):
            return True
        if times and p.times and abs(s.mtime_ns - d.mtime_ns) >= self.window_ns:
            return True
        if self.xattrs and s.xattrs is not None and d.xattrs is not None and s.xattrs != d.xattrs:
            return True
        if self.acls and s.acls is not None and d.acls is not None and s.acls != d.acls:
            return True
        return bool(
            p.owners and self.dst.holds.owners and s.uid >= 0 and (s.uid, s.gid) != (d.uid, d.gid)
        )


def refuse_chown(dst: Backend) -> None:
    """--chown needs a destination that holds owners and, on a local one, root."""
    if not dst.holds.owners:
        raise FerryError(
            ErrorKind.USAGE, "--chown: the destination cannot hold owners", dst.describe()
        )
    from ferry.mover.backends.local import LocalBackend

    if isinstance(dst, LocalBackend) and os.geteuid() != 0:
        raise FerryError(
            ErrorKind.USAGE, "--chown needs root (changing a file's owner is privileged)"
        )


def check_roots(
    src: Backend,
    dst: Backend,
    options: Options,
    operation: str,
    one: OneFile | None = None,
    src_type: EntryType | Asked | None = UNASKED,
) -> bool:
    """Refuse what cannot end well before touching anything. Returns whether dst exists.

    Overlapping roots are refused on every backend (ferry.mover.roots): a destination inside
    the source would copy into what is being read; a sync whose source is inside its
    destination would delete the source. A copy out of a subdirectory into its parent is
    allowed. With a single file (`one`, the roots being directories around it) only the
    file onto itself is refused. `src_type`: the source root's type when already known."""
    st = src.root_type() if isinstance(src_type, Asked) else src_type
    if st is None:
        raise FerryError(ErrorKind.SOURCE_NOT_FOUND, "source does not exist", src.describe())
    if st == EntryType.FILE and one is None:
        raise FerryError(
            ErrorKind.USAGE,
            "source is a single file, opened as a root (give it as an endpoint instead)",
            src.describe(),
        )
    if st != EntryType.DIR:
        raise FerryError(
            ErrorKind.USAGE, "source must be a directory or a regular file", src.describe()
        )
    a, b = src.root_id(), dst.root_id()
    if one is not None:
        return _check_one(src, dst, one, a, b)
    how = overlap(a, b) if a is not None and b is not None else None
    if how is Overlap.SAME or how is Overlap.DST_IN_SRC:
        raise FerryError(ErrorKind.OVERLAP, how.value, dst.describe())
    if how is Overlap.SRC_IN_DST and options.mode == Mode.SYNC:
        raise FerryError(
            ErrorKind.OVERLAP, f"{how.value}; sync would delete around it", src.describe()
        )
    dt = dst.root_type()
    if dt is not None and dt != EntryType.DIR:
        raise FerryError(
            ErrorKind.USAGE, "destination exists and is not a directory", dst.describe()
        )
    return dt is not None


def _check_one(
    src: Backend, dst: Backend, one: OneFile, a: RootId | None, b: RootId | None
) -> bool:
    """A single file: refused onto itself; the destination's directory is one or is new."""
    if a is not None and b is not None:
        read = RootId(a.space, a.parts + tuple(one.read.split("/")))
        write = RootId(b.space, b.parts + tuple(one.write.split("/")))
        if overlap(read, write) is Overlap.SAME:
            raise FerryError(
                ErrorKind.OVERLAP, "source and destination are the same file", dst.describe()
            )
    dt = dst.root_type()
    if dt is not None and dt != EntryType.DIR:
        raise FerryError(
            ErrorKind.USAGE, "the destination's directory is not a directory", dst.describe()
        )
    return dt is not None
