"""A `ferry://` endpoint: another machine's tree, served by `ferry serve` over mutual TLS.

The server is a thin front over a LocalBackend at its root, so this backend holds what a
local one holds (times, modes, owners, symlinks, hard links) and resumes the same way:
the partial file and its journal live at the server. Every answer is checked as untrusted
input (protocol.py): names that could escape the root, malformed numbers, oversize replies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ferry.mover.acl import AclText
from ferry.mover.backends.base import (
    KERNEL_WRITE_BACK,
    Acls,
    Backend,
    DeltaBasis,
    Durability,
    Entry,
    EntryType,
    GetSmall,
    Hardlinks,
    Holds,
    Limits,
    MeasuresLink,
    PutSmall,
    Reader,
    Resumable,
    SmallFile,
    Space,
    Symlinks,
    Writer,
    check_name,
    join,
)
from ferry.mover.backends.ferry.connections import TIMED_BODY, Connections
from ferry.mover.backends.ferry.errors import error_in_batch
from ferry.mover.backends.ferry.files import FerryReader, FerryWriter, Squeeze, encode
from ferry.mover.backends.ferry.protocol import (
    FEATURE_ACLS,
    FEATURE_BATCH,
    FEATURE_DELTA,
    FEATURE_PROBE,
    FEATURE_ZSTD,
    MAX_BATCH,
    MAX_BODY,
    MAX_JSON,
    MAX_PIECE,
    VERSION,
    acls_from_json,
    acls_to_json,
    as_int,
    codec,
    decode_piece,
    dumps,
    entry_from_json,
    entry_to_json,
    frame_piece,
    loads,
    pack_batch,
    preserve_to_json,
    protocol_error,
    unpack_batch,
)
from ferry.mover.endpoints import FerryEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import digest_bytes
from ferry.mover.options import Compress, Preserve
from ferry.mover.roots import RootId, ferry_root

PROBE_STREAMS = 4
PROBE_SLOW = 16e6  # bytes/s: a first probe round this slow is answer enough
MAX_KEPT_ACLS = 1 << 20  # listed entries' ACLs kept until asked for (a bound on memory)


class FerryBackend(Backend):
    """Optional capabilities: Symlinks, Hardlinks, Resumable, PutSmall and GetSmall (batches
    of small files in one request each: per-file round trips were most of a small file's
    cost), DeltaBasis (signatures and rebuilds at the server: only deltas cross),
    MeasuresLink (its uploads are timed; a probe is a throwaway upload), Acls where the
    server offers them (its hello's features: else `Holds.acls` is unset on this instance, so
    an older server makes `--preserve acls` refused, never silently dropped)."""

    holds = Holds(
        symlinks=True,
        hardlinks=True,
        permissions=True,
        owners=True,
        sparse=True,  # holes are not sent: the server sets the size and leaves them
        mtime_precision_ns=1,
        acls=True,  # where the server offers them (see __init__)
    )
    # A delta costs reading the basis at the server and the source here, but only what
    # changed crosses the wire: `--delta auto` weighs the two by the link (MeasuresLink).
    limits = Limits(chunk_writer=True, delta_pays=True)

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
        if FEATURE_ACLS not in self.features:  # an older server, or one without libacl
            self.holds = self.holds._replace(acls=False)
        # ACLs from listings, by path, until asked for (None: not wanted, see list_acls).
        self._listed_acls: dict[str, AclText | None] | None = None
        self._acls_lock = threading.Lock()

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
        """After `list_acls` (`--preserve acls`), each listing carries its entries' ACLs too:
        kept until `acls` asks for them, so a tree costs a request per directory."""
        want = self._listed_acls is not None
        doc = self._call("list", rel, path=self.path(rel), **({"acls": True} if want else {}))
        entries = doc.get("entries")
        if not isinstance(entries, list):
            raise protocol_error("list: entries must be an array", rel)
        where = f"{self.describe()}/{rel}"
        out = []
        for raw in entries:
            e = entry_from_json(raw, "listed entry")
            check_name(e.name, where)
            out.append(e)
        if want:
            acls = doc.get("acls")
            if not isinstance(acls, list) or len(acls) != len(out):
                raise protocol_error("list: acls must be an array, one per entry", rel)
            self._keep_acls(rel, out, acls)
        return out

    def _keep_acls(self, rel: str, entries: list[Entry], acls: list[Any]) -> None:
        got: dict[str, AclText | None] = {}
        for e, a in zip(entries, acls, strict=True):
            if e.type in (EntryType.FILE, EntryType.DIR):
                path = join(rel, e.name)
                got[path] = acls_from_json(a, f"{self.describe()}/{path}: acls")
        with self._acls_lock:
            listed = self._listed_acls
            if listed is None:
                return
            if len(listed) + len(got) > MAX_KEPT_ACLS:
                listed.clear()  # entries listed but never asked for (filtered out): forgotten
            listed.update(got)

    def stat(self, rel: str) -> Entry | None:
        doc = self._call("stat", rel, path=self.path(rel))
        raw = doc.get("entry")
        if raw is None:
            return None
        e = entry_from_json(raw)
        e.name = rel.rpartition("/")[2]
        return e

    def list_acls(self) -> None:
        """Listings from now on carry their entries' ACLs (where the server offers them)."""
        if self.holds.acls:
            with self._acls_lock:
                if self._listed_acls is None:
                    self._listed_acls = {}

    def acls(self, rel: str, is_dir: bool) -> AclText | None:
        """From the listing that named `rel` (taken once), else one request; the server's
        answer is untrusted text, parsed and validated as any peer's."""
        if not self.holds.acls:
            raise FerryError(ErrorKind.USAGE, "--preserve acls: the server offers no ACLs")
        with self._acls_lock:
            if self._listed_acls is not None and rel in self._listed_acls:
                return self._listed_acls.pop(rel)
        doc = self._call("acls", rel, path=self.path(rel))  # the server sees file or dir
        return acls_from_json(doc.get("acls"), f"{self.describe()}/{rel}: acls")

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
        self._call(
            "meta",
            rel,
            path=self.path(rel),
            entry=entry_to_json(entry),
            preserve=preserve_to_json(preserve),
            acls=acls_to_json(entry.acls) if preserve.acls else None,
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

    def put_small(self, files: list[SmallFile], preserve: Preserve) -> list[FerryError | None]:
        """Batches of files in one request each (as many as fit MAX_PIECE of encoded bytes)."""
        self._batches()
        out: list[FerryError | None] = []
        start = 0
        while start < len(files):
            metas: list[dict[str, Any]] = []
            payloads: list[bytes | memoryview] = []
            size = 0
            end = start
            while end < len(files) and len(metas) < MAX_BATCH:
                f = files[end]
                body, enc = encode(f.data, Squeeze(self.compress))
                if metas and size + len(body) > MAX_PIECE:
                    break
                metas.append(
                    {
                        "path": self.path(f.rel),
                        "entry": entry_to_json(f.entry),
                        "acls": acls_to_json(f.entry.acls) if preserve.acls else None,
                        "digest": f.digest,
                        "enc": enc,
                        "raw": len(f.data),
                        "len": len(body),
                    }
                )
                payloads.append(body)
                size += len(body)
                end += 1
            header = {
                "files": metas,
                "preserve": preserve_to_json(preserve),
                "fsync": self.durability.fsync_each,
            }
            reply = self.c.request("put_small", pack_batch(header, payloads))
            outcomes = loads(reply.body, "put_small").get("outcomes")
            if not isinstance(outcomes, list) or len(outcomes) != len(metas):
                raise protocol_error("put_small: one outcome per file expected")
            for f, o in zip(files[start:end], outcomes, strict=True):
                out.append(None if o is None else error_in_batch(o, f.rel, self.describe()))
            start = end
        return out

    def get_small(self, files: list[tuple[str, Entry]]) -> list[bytes | None]:
        """One request per batch; a file whose size or mtime at the server is not the
        listed one is None (the engine reads it on its own, which says what changed)."""
        self._batches()
        req = {"files": [self.path(r) for r, _ in files], "z": self.compress != Compress.OFF}
        reply = self.c.request("get_small", dumps(req), limit=MAX_BODY + MAX_JSON)
        _, metas, payload = unpack_batch(reply.body, "get_small")
        if len(metas) != len(files):
            raise protocol_error("get_small: one answer per file expected")
        out: list[bytes | None] = []
        pos = 0
        for (rel, listed), m in zip(files, metas, strict=True):
            if m is None:
                out.append(None)
                continue
            n = m["len"]
            body, pos = payload[pos : pos + n], pos + n
            e = entry_from_json(m.get("entry"))
            raw = as_int(m.get("raw"), "raw", 0, MAX_PIECE)
            enc = m.get("enc")
            data = decode_piece(codec, bytes(body), enc if isinstance(enc, str) else None, str(raw))
            if m.get("digest") != digest_bytes(data):
                raise FerryError(
                    ErrorKind.VERIFY_MISMATCH,
                    "the data received does not match the digest the server computed",
                    rel,
                )
            if e.size != listed.size or (listed.mtime_ns and e.mtime_ns != listed.mtime_ns):
                out.append(None)
                continue
            out.append(data)
        return out

    # -- DeltaBasis: the signature is computed and the file rebuilt at the server --------

    def signature(self, rel: str, entry: Entry, block_size: int | None) -> bytes:
        from ferry.mover.delta import max_encoded_size

        self._delta()
        req = {"path": self.path(rel), "entry": entry_to_json(entry), "block_size": block_size}
        limit = max_encoded_size(entry.size) + 1024
        return self.c.request("signature", dumps(req), path=rel, limit=limit).body

    def apply_delta(
        self, rel: str, entry: Entry, delta: Iterable[bytes], digest: str, preserve: Preserve
    ) -> int:
        """The delta streamed in one request (chunked: its length is known only at its end),
        after a first chunk holding the file's JSON header."""
        self._delta()
        head = dumps(
            {
                "path": self.path(rel),
                "entry": entry_to_json(entry),
                "digest": digest or None,
                "preserve": preserve_to_json(preserve),
                "acls": acls_to_json(entry.acls) if preserve.acls else None,
                "fsync": self.durability.fsync_each,
            }
        )

        squeeze = Squeeze(self.compress)

        def chunks() -> Iterator[bytes]:
            yield head
            for piece in delta:
                if piece:
                    body, enc = encode(piece, squeeze)
                    yield frame_piece(body, enc, len(piece))

        reply = self.c.request("delta", path=rel, stream=chunks())
        return as_int(loads(reply.body, "delta").get("reused"), "reused bytes")

    # -- MeasuresLink ---------------------------------------------------------------------

    def link_rate(self) -> float | None:
        return self.c.uploads.rate.rate()

    def probe_link(self) -> float | None:
        """Throwaway uploads the server drops, on up to PROBE_STREAMS connections at once
        (a large file goes whole in parallel chunks), opened beforehand: a round of 256 KiB
        each, then two of 2 MiB each unless the first ran under PROBE_SLOW (a link where a
        delta pays by far). The fastest round is the answer: a round is short, and a busy
        machine slows one now and then. Not mixed into `link_rate`, which file data alone
        measures. None where the server takes no probe."""
        if FEATURE_PROBE not in self.features:
            return None
        n = max(1, min(PROBE_STREAMS, self.ep.streams))
        best = 0.0
        with ThreadPoolExecutor(n, thread_name_prefix="ferry-probe") as pool:
            # n connections open first: TLS handshakes are not the link's rate.
            hello = [pool.submit(self.c.request, "hello", method="GET") for _ in range(n)]
            for f in hello:
                f.result()
            for size in (TIMED_BODY, 8 * TIMED_BODY, 8 * TIMED_BODY):
                body = bytes(size)
                started = time.monotonic()
                probes = [pool.submit(self.c.request, "probe", body) for _ in range(n)]
                for f in probes:
                    f.result()
                best = max(best, n * size / max(time.monotonic() - started, 1e-6))
                if best < PROBE_SLOW:
                    break
        return best

    def _delta(self) -> None:
        if FEATURE_DELTA not in self.features:
            raise FerryError(
                ErrorKind.USAGE,
                f"{self.describe()} does not rebuild files from deltas (--delta off)",
            )

    def _batches(self) -> None:
        """A server without batches: the engine then sends each file on its own."""
        if FEATURE_BATCH not in self.features:
            raise FerryError(ErrorKind.USAGE, f"{self.describe()} does not take batches")

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self.c.close()


# The optional capabilities FerryBackend has, checked by mypy here (rclone's "check the
# interfaces are satisfied" block) and at run time by tests/backends/test_capabilities.py.
if TYPE_CHECKING:

    def _has(
        b: FerryBackend,
    ) -> tuple[Symlinks, Hardlinks, Resumable, PutSmall, GetSmall, DeltaBasis, MeasuresLink, Acls]:
        return b, b, b, b, b, b, b, b
