"""A `ferry://` endpoint: another machine's tree, served by `ferry serve` over mutual TLS.

The server is a thin front over a LocalBackend at its root, so this backend holds what a
local one holds (times, modes, owners, symlinks, hard links) and resumes the same way:
the partial file and its journal live at the server. Every answer is checked as untrusted
input (protocol.py): names that could escape the root, malformed numbers, oversize replies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferry.mover.backends.base import (
    KERNEL_WRITE_BACK,
    Backend,
    Durability,
    Entry,
    EntryType,
    Hardlinks,
    Holds,
    Limits,
    Reader,
    Resumable,
    Space,
    Symlinks,
    Writer,
    check_name,
    join,
)
from ferry.mover.backends.ferry.connections import Connections
from ferry.mover.backends.ferry.files import FerryReader, FerryWriter
from ferry.mover.backends.ferry.protocol import (
    FEATURE_ZSTD,
    VERSION,
    as_int,
    dumps,
    entry_from_json,
    loads,
    preserve_to_json,
    protocol_error,
)
from ferry.mover.endpoints import FerryEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Compress, Preserve
from ferry.mover.roots import RootId, ferry_root


class FerryBackend(Backend):
    """Optional capabilities: Symlinks, Hardlinks, Resumable."""

    holds = Holds(
        symlinks=True,
        hardlinks=True,
        permissions=True,
        owners=True,
        mtime_precision_ns=1,
    )
    limits = Limits(chunk_writer=True)

    def __init__(
        self,
        ep: FerryEndpoint,
        durability: Durability = KERNEL_WRITE_BACK,
        compress: Compress = Compress.AUTO,
    ) -> None:
        self.ep = ep
        self.durability = durability
        self.root = ep.path
        self.c = Connections(ep)
        try:
            hello = loads(self.c.request("hello", method="GET", limit=65536).body, "hello")
        except BaseException:
            self.c.close()
            raise
        version = hello.get("version")
        if version != VERSION:
            self.c.close()
            raise FerryError(
                ErrorKind.PROTOCOL,
                f"{self.describe()} speaks wire version {version!r}; this Ferry speaks {VERSION}",
            )
        features = hello.get("features")
        self.features = set(features) if isinstance(features, list) else set()
        zstd = FEATURE_ZSTD in self.features
        if compress == Compress.ON and not zstd:
            self.c.close()
            raise FerryError(
                ErrorKind.USAGE, f"--compress on: {self.describe()} does not offer zstd"
            )
        self.compress = compress if zstd else Compress.OFF

    def describe(self) -> str:
        return self.ep.describe()

    def path(self, rel: str) -> str:
        return join(self.root, rel) if rel else self.root

    def _call(self, route: str, rel: str | None = None, **fields: Any) -> dict[str, Any]:
        return loads(self.c.request(route, dumps(fields), path=rel).body, route)

    def root_id(self) -> RootId:
        return ferry_root(self.ep.host, self.ep.port, self.root)

    def root_type(self) -> EntryType | None:
        e = self.stat("")
        return e.type if e else None

    def prepare_destination(self) -> None:
        done = ""
        for part in self.root.split("/") if self.root else []:
            done = join(done, part)
            self._call("mkdir", done, path=done)

    def list_dir(self, rel: str) -> list[Entry]:
        doc = self._call("list", rel, path=self.path(rel))
        entries = doc.get("entries")
        if not isinstance(entries, list):
            raise protocol_error("list: entries must be an array", rel)
        where = f"{self.describe()}/{rel}"
        out = []
        for raw in entries:
            e = entry_from_json(raw, "listed entry")
            check_name(e.name, where)
            out.append(e)
        return out

    def stat(self, rel: str) -> Entry | None:
        doc = self._call("stat", rel, path=self.path(rel))
        raw = doc.get("entry")
        if raw is None:
            return None
        e = entry_from_json(raw)
        e.name = rel.rpartition("/")[2]
        return e

    def open_read(self, rel: str, entry: Entry) -> Reader:
        return FerryReader(self.c, self.path(rel), rel, entry, self.compress)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        fsync = self.durability.fsync_each
        return FerryWriter(self.c, self.path(rel), rel, entry, resume_key, self.compress, fsync)

    def mkdir(self, rel: str) -> None:
        self._call("mkdir", rel, path=self.path(rel))

    def remove(self, rel: str, entry: Entry) -> None:
        self._call("remove", rel, path=self.path(rel), dir=entry.type == EntryType.DIR)

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        from ferry.mover.backends.ferry.protocol import entry_to_json

        self._call(
            "meta",
            rel,
            path=self.path(rel),
            entry=entry_to_json(entry),
            preserve=preserve_to_json(preserve),
        )

    def symlink(self, rel: str, target: str) -> None:
        self._call("symlink", rel, path=self.path(rel), target=target)

    def hardlink(self, rel: str, existing: str) -> None:
        self._call("hardlink", rel, path=self.path(rel), existing=self.path(existing))

    def partial_bytes(self, rel: str, resume_key: str) -> int:
        doc = self._call("partial", rel, path=self.path(rel), resume_key=resume_key)
        return as_int(doc.get("bytes"), "partial bytes")

    def free_space(self) -> Space | None:
        doc = self._call("space")
        if doc.get("available") is None:
            return None
        return Space.checked(
            as_int(doc.get("available"), "available"),
            as_int(doc.get("total"), "total"),
            as_int(doc.get("block"), "block", 1),
        )

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self.c.close()


# The optional capabilities FerryBackend has, checked by mypy here (rclone's "check the
# interfaces are satisfied" block) and at run time by tests/backends/test_capabilities.py.
if TYPE_CHECKING:

    def _has(b: FerryBackend) -> tuple[Symlinks, Hardlinks, Resumable]:
        return b, b, b
