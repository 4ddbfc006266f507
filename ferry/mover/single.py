"""A single file as the source: where it is read, and where it goes (rsync's rule).

The engine opens backends at directories and plans actions by paths below them, reading
from `Action.read_rel` where that differs from the path written. A file source is opened
at its parent and becomes one action: read its name there, write the destination name.

The destination follows rsync: an existing directory, or one written with a trailing
'/', receives the file under its own name; anything else names the file itself (its
parent exists or is created, as a destination directory is). A sync of one file is a
copy of it: there is nothing around it to delete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ferry.mover.acl import refuse_kinds
from ferry.mover.backends.base import Backend, EntryType
from ferry.mover.endpoints import (
    Endpoint,
    LocalEndpoint,
    names_directory,
    plain,
    split_endpoint,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Options
from ferry.mover.rename import Renamer


@dataclass(frozen=True, slots=True)
class OneFile:
    """The one file of a transfer: `read` below the source's root, `write` below the
    destination's."""

    read: str
    write: str


class Asked(Enum):
    NOT = "not asked"


UNASKED = Asked.NOT  # a root type nobody has asked the backend for yet


@dataclass(slots=True)
class Opened:
    """The two backends of a transfer, and the file when the source is one. `src_type`
    is the source root's type as found while opening (saves asking again)."""

    src: Backend
    dst: Backend
    one: OneFile | None = None
    src_type: EntryType | Asked | None = UNASKED


def refuse_unusable(options: Options, name: str) -> None:
    """Options that act on a tree cannot apply to one file: refused, naming the flag."""
    o = options
    asked = [
        (bool(o.filters), "--include/--exclude/--filter-from (spec filters)"),
        (o.files_from is not None, "--files-from"),
        (o.delete_excluded, "--delete-excluded"),
        (o.shard_count > 1, "sharding (spec shards)"),
        (o.max_delete is not None, "--max-delete (spec maxDelete)"),
        (o.allow_empty_source, "--allow-empty-source (spec allowEmptySource)"),
    ]
    for given, flag in asked:
        if given:
            raise FerryError(
                ErrorKind.USAGE, f"{flag} does not apply to a single file as the source", name
            )


def _read_at(ep: Endpoint) -> tuple[Endpoint, str, str] | None:
    """Where a file source is read: its parent, the name read there, and the name it is
    written under. A local file named through a symlink is read where the link points
    (as cp does) and keeps the link's name."""
    named = split_endpoint(ep)
    if named is None:
        return None
    if isinstance(ep, LocalEndpoint) and os.path.islink(path := ep.path.rstrip("/")):
        real = split_endpoint(LocalEndpoint(os.path.realpath(path)))
        if real is not None:
            return real[0], real[1], named[1]
    return named[0], named[1], named[1]


def _close(b: Backend, opened: list[Backend]) -> None:
    opened.remove(b)
    with contextlib.suppress(Exception):
        b.close()


def open_pair(
    src_ep: Endpoint,
    dst_ep: Endpoint,
    open_src: Callable[[Endpoint], Backend],
    open_dst: Callable[[Endpoint], Backend],
    opened: list[Backend],
    options: Options,
) -> Opened:
    """Open both sides. A directory source opens both endpoints as they are; a file source
    opens its parent, and the destination as rsync would read it (module docstring).
    Every backend opened is appended to `opened` (the caller closes them)."""
    if options.preserve.acls:  # refused before connecting anywhere
        refuse_kinds(src_ep.kind, dst_ep.kind)
    src = open_src(plain(src_ep))
    opened.append(src)
    st = src.root_type()
    at = _read_at(src_ep) if st == EntryType.FILE else None
    if at is None:
        dst = open_dst(plain(dst_ep))
        opened.append(dst)
        return Opened(src, dst, None, st)
    parent, read, name = at
    refuse_unusable(options, src.describe())
    _close(src, opened)
    src = open_src(parent)
    opened.append(src)
    if options.rename:
        name = Renamer(options.rename)(name)
    dst = open_dst(plain(dst_ep))
    opened.append(dst)
    target = None if names_directory(dst_ep) else split_endpoint(dst_ep)
    if target is None or dst.root_type() == EntryType.DIR:
        # Into the directory named (a link to one included), or a root: a bucket, a share.
        return Opened(src, dst, OneFile(read, name), EntryType.DIR)
    if options.rename:
        raise FerryError(
            ErrorKind.USAGE,
            "--rename (spec rename) does not apply when the destination names the file "
            "(end it with '/' to copy into a directory)",
            dst.describe(),
        )
    _close(dst, opened)
    dst_parent, dst_name = target
    dst = open_dst(dst_parent)
    opened.append(dst)
    return Opened(src, dst, OneFile(read, dst_name), EntryType.DIR)
