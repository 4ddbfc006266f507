"""`ferry verify`: compare two trees by content and metadata and list every difference."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ferry.mover.acl import AclText, refuse_unheld
from ferry.mover.backends import check_compress, open_backend
from ferry.mover.backends.base import (
    Backend,
    Entry,
    EntryType,
    join,
    read_acls,
    read_xattrs,
    want_acls,
)
from ferry.mover.endpoints import Endpoint
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.filters import Bounds, FilterSet, PathList, bounds_of
from ferry.mover.integrity import file_digest
from ferry.mover.metaapply import MetaTransform
from ferry.mover.options import Options
from ferry.mover.progress import Progress, Reporter, Sink
from ferry.mover.rename import Renamer
from ferry.mover.result import Summary
from ferry.mover.scan import PairLister
from ferry.mover.single import UNASKED, Asked, OneFile, open_pair

log = logging.getLogger("ferry")


@dataclass(slots=True, frozen=True)
class Difference:
    path: str
    # missing | extra | type | size | content | mtime | mode | owner | target | xattrs | acls
    # | unreadable; the destination root itself is path "" (shown as ".")
    what: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.what:<10} {self.path or '.'}" + (f"  ({self.detail})" if self.detail else "")


def _included(
    filters: FilterSet,
    rel: str,
    e: Entry,
    bounds: Bounds | None = None,
    listed: PathList | None = None,
) -> bool:
    if bounds and e.type == EntryType.FILE and not bounds.admits(e.size, e.mtime_ns):
        return False
    if listed is not None and not (
        listed.include_dir(rel) if e.type == EntryType.DIR else listed.include_file(rel)
    ):
        return False
    if not filters:
        return True
    return filters.include_dir(rel) if e.type == EntryType.DIR else filters.include_file(rel)


def _walk(
    src: Backend,
    dst: Backend,
    filters: FilterSet,
    one: OneFile | None = None,
    rename: Renamer | None = None,
    bounds: Bounds | None = None,
    listed: PathList | None = None,
) -> Iterator[tuple[str, str, Entry | None, Entry | None]]:
    """(destination path, source path, source entry, destination entry) of every pair, by
    the destination's names (`rename` maps a source name to its destination name)."""
    if one is not None:  # a single file: its pair, by the destination's name
        s = src.stat(one.read)
        if s is None:
            raise FerryError(ErrorKind.SOURCE_NOT_FOUND, "source does not exist", one.read)
        if bounds and s.type == EntryType.FILE and not bounds.admits(s.size, s.mtime_ns):
            return  # filtered by size or age, as copy leaves it
        yield one.write, one.read, s, dst.stat(one.write)
        return
    lister = PairLister(src, dst, rename=rename)
    try:
        lister.request("", True)
        stack = [("", "")]
        while stack:
            rel, dst_rel = stack.pop()
            s_list, d_list = lister.get(rel)
            if isinstance(s_list, FerryError) or isinstance(d_list, FerryError):
                err = s_list if isinstance(s_list, FerryError) else d_list
                assert isinstance(err, FerryError)
                raise err
            names: dict[str, str] | None = None
            if rename:
                kept = [
                    e.name
                    for e in s_list
                    if _included(filters, join(rel, e.name), e, bounds, listed)
                ]
                where = f"{src.describe().rstrip('/')}/{rel}" if rel else src.describe()
                names = rename.listing((e.name for e in s_list), kept, where)
            d_by = {e.name: e for e in d_list}
            subdirs = []
            for s in sorted(s_list, key=lambda e: e.name):
                child = join(rel, s.name)
                new = s.name if names is None else names[s.name]
                d = d_by.pop(new, None)
                if not _included(filters, child, s, bounds, listed):
                    continue
                dst_child = join(dst_rel, new)
                yield dst_child, child, s, d
                if s.type == EntryType.DIR and d is not None and d.type == EntryType.DIR:
                    subdirs.append((child, dst_child))
            for d in sorted(d_by.values(), key=lambda e: e.name):
                dst_child = join(dst_rel, d.name)
                if not _included(filters, dst_child, d, bounds, listed):
                    continue
                yield dst_child, dst_child, None, d
            for sub, dst_sub in subdirs:
                lister.request(sub, True, dst_sub)
            stack.extend(reversed(subdirs))
    finally:
        lister.close()


def _xattrs_differ(a: dict[str, bytes] | None, b: dict[str, bytes] | None) -> str:
    """Which attribute names differ (never their values, which may be large or binary).
    None (a filesystem without xattrs) holds none."""
    a, b = a or {}, b or {}
    names = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
    if not names:
        return ""
    shown = ", ".join(
        f"{n!r}" + (" missing" if n not in b else " extra" if n not in a else " differs")
        for n in names[:5]
    )
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _acls_differ(a: AclText | None, b: AclText | None) -> str:
    """Which ACL differs and how ("" when equal, or where a side holds none)."""
    if a is None or b is None or a == b:
        return ""
    return "; ".join(
        f"{kind} {x or 'none'} != {y or 'none'}"
        for kind, x, y in (("access", a.access, b.access), ("default", a.default, b.default))
        if x != y
    )


def root_is_ours(d: Entry) -> bool:
    """Whether this user may set the destination root's metadata: its owner or root (an owner
    a storage does not report, uid -1, counts as ours)."""
    return d.uid < 0 or os.geteuid() in (0, d.uid)


def _roots(src: Backend, dst: Backend) -> Iterator[tuple[str, str, Entry | None, Entry | None]]:
    """The roots themselves, compared like any directory (a copy sets the destination's),
    unless the destination's belongs to another user: a copy leaves such a root as it is (a
    volume's mount point owned by root, written by a non-root mover)."""
    s = src.stat("")
    if s is None or s.type != EntryType.DIR:
        return
    d = dst.stat("")
    if d is not None and not root_is_ours(d):
        return
    yield "", "", s, d


def verify_trees(
    src_ep: Endpoint,
    dst_ep: Endpoint,
    options: Options,
    report: Callable[[Difference], None],
    sink: Sink | None = None,
) -> Summary:
    summary = Summary(operation="verify")
    sink = sink or Sink()
    progress = Progress()
    started = time.monotonic()
    lock = threading.Lock()
    opened: list[Backend] = []

    def differ(d: Difference) -> None:
        with lock:
            summary.differences += 1
            report(d)

    try:
        with Reporter(progress, sink):
            check_compress(options.compress, src_ep, dst_ep)

            def opener(ep: Endpoint) -> Backend:
                return open_backend(
                    ep, accelerators=options.accelerators, compress=options.compress
                )

            pair = open_pair(src_ep, dst_ep, opener, opener, opened, options)
            src, dst, one = pair.src, pair.dst, pair.one
            for b, kind, known in (
                (src, ErrorKind.SOURCE_NOT_FOUND, pair.src_type),
                (dst, ErrorKind.DESTINATION_NOT_FOUND, UNASKED),
            ):
                found = b.root_type() if isinstance(known, Asked) else known
                if found != EntryType.DIR:
                    raise FerryError(kind, "does not exist or is not a directory", b.describe())

            window = max(src.holds.mtime_precision_ns, dst.holds.mtime_precision_ns, 1)
            # A --chmod gives every entry a mode, whether the source holds one or not.
            perms = (
                options.preserve.perms
                and (src.holds.permissions or options.chmod is not None)
                and dst.holds.permissions
            )
            xform = MetaTransform(options.chmod, options.chown)
            owners = options.chown is not None and dst.holds.owners
            times = options.preserve.times
            # Object stores have no directories of their own: nothing holds a time or a mode.
            dir_meta_held = src.holds.empty_dirs and dst.holds.empty_dirs
            dir_meta = times and dir_meta_held
            acls = options.preserve.acls
            if acls:  # open_pair refused kinds that cannot; a ferry:// server is asked here
                refuse_unheld((src.holds.acls, src.describe()), (dst.holds.acls, dst.describe()))
                want_acls(src, dst)
            xattrs = options.preserve.xattrs and src.holds.xattrs and dst.holds.xattrs
            if options.preserve.xattrs and not xattrs:
                lacking = src if not src.holds.xattrs else dst
                log.warning("%s cannot hold xattrs; they are not compared", lacking.describe())
            pending: list[tuple[str, Future[tuple[str, str]], Entry]] = []
            with ThreadPoolExecutor(options.transfers, thread_name_prefix="ferry-verify") as pool:

                def digest_pair(rel: str, read: str, s: Entry, d: Entry) -> tuple[str, str]:
                    a, b = file_digest(src, read, s), file_digest(dst, rel, d)
                    progress.advance(s.size, 1)
                    return a, b

                def collect(limit: int) -> None:
                    while len(pending) > limit:
                        rel, fut, _s = pending.pop(0)
                        try:
                            a, b = fut.result()
                        except Exception as exc:
                            differ(Difference(rel, "unreadable", str(as_ferry_error(exc, rel))))
                            continue
                        summary.files_verified += 1
                        if a != b:
                            differ(Difference(rel, "content", f"{a[:17]}... != {b[:17]}..."))

                rename = Renamer(options.rename) if options.rename and one is None else None
                filters = FilterSet.parse(options.filters)
                listed = PathList(options.files_from) if options.files_from is not None else None
                roots = _roots(src, dst) if one is None and dir_meta_held else iter(())
                walked = _walk(src, dst, filters, one, rename, bounds_of(options), listed)
                for rel, read, s, d in itertools.chain(roots, walked):
                    if rel in options.protect:
                        continue  # the run's own file (an audit log kept there)
                    if s is None:
                        differ(Difference(rel, "extra", "only at the destination"))
                        continue
                    if xform:
                        xform.apply(s)
                    if d is None:
                        if s.type != EntryType.DIR or dst.holds.empty_dirs:
                            differ(Difference(rel, "missing", "not at the destination"))
                        continue
                    if s.type != d.type:
                        differ(
                            Difference(
                                rel, "type", f"{s.type.name.lower()} != {d.type.name.lower()}"
                            )
                        )
                        continue
                    if s.type == EntryType.SYMLINK and s.target != d.target:
                        differ(Difference(rel, "target", f"{s.target!r} != {d.target!r}"))
                    if s.type == EntryType.FILE:
                        progress.planned(1, s.size)
                        if s.size != d.size:
                            differ(Difference(rel, "size", f"{s.size} != {d.size}"))
                            continue
                        pending.append((rel, pool.submit(digest_pair, rel, read, s, d), s))
                        collect(options.transfers * 4)
                        if times and abs(s.mtime_ns - d.mtime_ns) >= window:
                            differ(Difference(rel, "mtime", f"{s.mtime_ns} != {d.mtime_ns} ns"))
                    elif (
                        dir_meta
                        and s.type == EntryType.DIR
                        and abs(s.mtime_ns - d.mtime_ns) >= window
                    ):
                        differ(Difference(rel, "mtime", f"{s.mtime_ns} != {d.mtime_ns} ns"))
                    dir_ok = s.type != EntryType.DIR or (
                        src.holds.empty_dirs and dst.holds.empty_dirs
                    )
                    if perms and dir_ok and s.type != EntryType.SYMLINK and s.mode != d.mode:
                        differ(Difference(rel, "mode", f"{s.mode:o} != {d.mode:o}"))
                    if owners and s.type != EntryType.SYMLINK and (s.uid, s.gid) != (d.uid, d.gid):
                        differ(Difference(rel, "owner", f"{s.uid}:{s.gid} != {d.uid}:{d.gid}"))
                    if xattrs and s.type in (EntryType.FILE, EntryType.DIR):
                        why = _xattrs_differ(read_xattrs(src, read), read_xattrs(dst, rel))
                        if why:
                            differ(Difference(rel, "xattrs", why))
                    if acls and s.type in (EntryType.FILE, EntryType.DIR):
                        is_dir = s.type == EntryType.DIR
                        try:
                            why = _acls_differ(
                                read_acls(src, read, is_dir), read_acls(dst, rel, is_dir)
                            )
                        except FerryError as err:
                            differ(Difference(rel, "unreadable", str(err)))
                            continue
                        if why:
                            differ(Difference(rel, "acls", why))
                progress.scan_complete = True
                collect(0)
    except Exception as exc:
        summary.fatal = as_ferry_error(exc)
    finally:
        for b in opened:
            with contextlib.suppress(Exception):
                b.close()
    summary.elapsed_seconds = time.monotonic() - started
    sink.finish(summary)
    return summary
