"""The backend interface: a small mandatory core plus optional capabilities.

Modelled on rclone's backends (fs/features.go). Every storage lists one directory at a time,
stats, reads by range, writes through a `Writer` that makes nothing visible at the final
name until `commit`, removes, and sets metadata: that is `Backend`. An operation only some
storages have (server-side copy, batches of small files, links, extended attributes,
resumable partials, lazy listings) is a small Protocol below, implemented only by the
backends that have it and checked with `isinstance`, so no backend carries a method that
only raises. What a storage can hold (`Holds`) and its limits (`Limits`) are plain values the
engine adapts to instead of guessing.

Paths are relative to the endpoint root, `/`-separated, never starting with
`/` and never containing `.` or `..` components; `""` is the root. Names that
are not valid UTF-8 travel as `str` with surrogate escapes (os.fsdecode), so
they round-trip byte-exact on POSIX backends.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Protocol, runtime_checkable

from ferry.mover.acl import AclText
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Preserve
from ferry.mover.roots import RootId

# Names the engine keeps beside destination files (partials, journals, temps).
# Destination listings hide them; they are never compared, copied or deleted by Sync.
INTERNAL_PREFIX = ".~ferry."


class EntryType(IntEnum):
    FILE = 0
    DIR = 1
    SYMLINK = 2
    OTHER = 3


@dataclass(slots=True, eq=False, repr=False)
class Entry:
    """One directory entry as a backend sees it. Listings hold them by the hundred thousand:
    slotted (no per-instance dict), and compared by identity as before (eq=False)."""

    name: str
    type: EntryType
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0  # permission bits (0 when the backend has none)
    uid: int = -1
    gid: int = -1
    nlink: int = 1
    ino: int = 0
    dev: int = 0
    blocks: int = -1  # 512-byte blocks allocated; -1 when unknown (sparse detection)
    target: str | None = None  # symlink target, verbatim
    digest: str | None = None  # Ferry digest kept by the backend (e.g. object metadata)
    # Extended attributes, read only when they are preserved and compared (a listing
    # leaves them None: reading them costs syscalls per entry).
    xattrs: dict[str, bytes] | None = None
    # POSIX ACLs (ferry.mover.acl), read like xattrs: only when preserved and compared.
    acls: AclText | None = None

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.type.name}, size={self.size}, mtime_ns={self.mtime_ns})"


class Holds(NamedTuple):
    """What the storage can hold, so what a run may preserve and compare there. An immutable
    value (tests derive variants with `_replace`)."""

    mtime_precision_ns: int = 1
    atomic_rename: bool = True
    symlinks: bool = False  # the backend then also implements `Symlinks`
    hardlinks: bool = False  # listings report links (nlink, ino); `Hardlinks` makes them
    permissions: bool = False
    owners: bool = False
    xattrs: bool = False  # the backend then also implements `Xattrs`
    acls: bool = False  # POSIX ACLs: the backend then also implements `Acls`
    sparse: bool = False
    empty_dirs: bool = True
    stores_digest: bool = False  # Entry.digest is filled from stored metadata


class Limits(NamedTuple):
    """How the storage wants to be written and read: chunking and streams."""

    chunk_writer: bool = False  # Writer.write_at may be called concurrently at any offset
    # Files above this size keep a digest only if it is known before writing starts
    # (S3 multipart uploads fix metadata at creation); 0: the digest is taken at commit.
    digest_first_above: int = 0
    max_chunk_size: int = 0  # 0: no limit of its own
    min_chunk_size: int = 0  # e.g. S3's 5 MiB minimum part
    # Chunk size when the run names none; 0: options.DEFAULT_CHUNK_SIZE. A writer that holds
    # each chunk in memory until it is sent (S3's parts) wants smaller ones.
    default_chunk_size: int = 0
    max_chunks: int = 0  # e.g. S3's 10,000 parts; 0: no limit
    # Each ranged read is a request with a fixed cost (and on some servers a cost in the
    # object's size): big files are read in at most this many long ranges; 0: by chunk size.
    read_streams: int = 0
    # `--delta auto` weighs block deltas here (where the destination is a DeltaBasis):
    # writing there may cost more than reading the basis where it lives. Whether a delta
    # pays for a given file is decided per file (engine/deltachoice.py).
    delta_pays: bool = False


@dataclass(frozen=True, slots=True)
class Durability:
    """How a destination makes writes durable, fixed when it is opened (the run's --fsync).

    fsync_each: Writer.commit (and put_small) make each file's data durable before
    publishing it (--fsync file). direct_writes: the run flushes before it reports success
    (--fsync end or file), so big files may go straight to the device."""

    fsync_each: bool = False
    direct_writes: bool = False


KERNEL_WRITE_BACK = Durability()  # the default: durable only when the engine flushes


class Space(NamedTuple):
    """Free space at a destination, as its storage reports it (statvfs and the like). An
    immutable value, like Holds (tests derive variants with `_replace`)."""

    available: int  # bytes this user may still write
    total: int  # the filesystem's (or share's) size in bytes
    block: int = 4096  # allocation unit: every file takes whole ones

    @classmethod
    def checked(cls, available: int, total: int, block: int) -> Space | None:
        """The reported numbers, or None where they cannot be right (a server's word is not
        trusted: a nonsense answer means "unknown", never a refusal or a pass)."""
        if not (0 < block <= 1 << 24 and 0 <= available <= total < 1 << 80):
            return None
        return cls(available, total, block)


@dataclass(frozen=True, slots=True)
class SmallFile:
    """A whole small file for `PutSmall.put_small`: its bytes already read, its digest taken."""

    rel: str
    entry: Entry
    data: bytes
    digest: str | None


class Reader(ABC):
    """An open source file. `read_at` may be called from several threads at once."""

    @abstractmethod
    def read_at(self, offset: int, length: int) -> bytes | memoryview:
        """Return up to `length` bytes at `offset`; shorter only at end of file."""

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[bytes | memoryview]:
        """Stream `length` bytes from `offset` in pieces of at most `piece` bytes.

        Remote readers override this to make one request per range; a yielded
        memoryview is only valid until the next piece is requested."""
        end = offset + length
        while offset < end:
            data = self.read_at(offset, min(piece, end - offset))
            if not data:
                return
            yield data
            offset += len(data)

    def xattrs(self) -> dict[str, bytes] | None:
        return None

    def fileno(self) -> int | None:
        """A local file descriptor, for copy_file_range and friends; None elsewhere."""
        return None

    def data_ranges(self, size: int) -> list[tuple[int, int]] | None:
        """(offset, length) of allocated data when the file has holes; None means all data."""
        return None

    def changed(self) -> str | None:
        """Say how the file changed since it was opened, or None if it did not."""
        return None

    def close(self) -> None:
        return None


class Writer(ABC):
    """A destination file being written. Nothing appears at the final name before commit."""

    @abstractmethod
    def write_at(self, offset: int, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        """Make the file visible at its final name, atomically, with entry's metadata."""

    @abstractmethod
    def abort(self, keep_partial: bool = False) -> None:
        """Forget the write. keep_partial leaves resume state for a later run."""

    def done_chunks(self, chunk_size: int) -> dict[int, bytes]:
        """Resume: chunk index -> concatenated block digests of chunks already durable."""
        return {}

    def record_chunk(self, index: int, block_digests: bytes) -> None:
        """Resume: note that chunk `index` is durably written."""
        return None

    def fileno(self) -> int | None:
        return None

    def set_xattrs(self, attrs: dict[str, bytes]) -> None:
        return None

    def set_size(self, size: int) -> None:
        """Final size, set before writing (holes at the end of sparse files)."""
        return None

    def read_back(self, offset: int, length: int) -> bytes | memoryview | None:
        """Read what was written (full verification); None when the backend cannot."""
        return None


class Backend(ABC):
    """The mandatory core every storage has. Optional operations are the Protocols below."""

    holds: Holds = Holds()
    limits: Limits = Limits()
    durability: Durability = KERNEL_WRITE_BACK
    # Readers and writers expose local file descriptors (kernel copy, worker processes).
    fileno_capable: bool = False

    @abstractmethod
    def describe(self) -> str:
        """Where this is, for messages: never contains a secret."""

    @abstractmethod
    def root_type(self) -> EntryType | None:
        """What the endpoint root is, or None if it does not exist."""

    def root_id(self) -> RootId | None:
        """Which namespace and path the root is (ferry.mover.roots), for the overlap check;
        None when the backend cannot tell."""
        return None

    @abstractmethod
    def list_dir(self, rel: str) -> list[Entry]:
        """The entries of one directory, any order, internal names hidden."""

    @abstractmethod
    def stat(self, rel: str) -> Entry | None: ...

    @abstractmethod
    def open_read(self, rel: str, entry: Entry) -> Reader: ...

    @abstractmethod
    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        """Start writing `rel`. With a resume_key, partial state whose key matches is kept
        (where the backend is `Resumable`)."""

    @abstractmethod
    def mkdir(self, rel: str) -> None:
        """Create a directory (parents exist); an existing directory is fine."""

    @abstractmethod
    def remove(self, rel: str, entry: Entry) -> None:
        """Remove a file, a symlink or an empty directory."""

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        """Apply entry's times/mode/owner (and, when preserved and read, its xattrs, exactly)
        to an existing entry (directories, metadata-only changes)."""
        return None

    def free_space(self) -> Space | None:
        """Free space where the destination root is (or would be created); None where the
        storage cannot tell (S3), and then nothing is checked before writing."""
        return None

    def flush(self) -> None:
        """Make everything written so far durable (called once, before deletes and success)."""
        return None

    def prepare_destination(self) -> None:
        """Create the root if it does not exist (bucket/share must already exist)."""
        return None

    def close(self) -> None:
        return None


# -- optional capabilities: a backend has one by implementing its method ---------------------


@runtime_checkable
class ServerSideCopy(Protocol):
    """Copies files of another backend of the same service without moving their bytes."""

    def same_service(self, other: Backend) -> bool:
        """Whether copy_from can copy files of `other`."""

    def copy_from(
        self, src: Backend, src_rel: str, entry: Entry, rel: str, preserve: Preserve
    ) -> None:
        """Server-side copy of `src_rel` of `src` (same_service) to `rel`, atomically."""


@runtime_checkable
class PutSmall(Protocol):
    """Writes a batch of whole small files in a few round trips, not a few per file."""

    def put_small(self, files: list[SmallFile], preserve: Preserve) -> list[FerryError | None]:
        """Each file published at its final name as `Writer.commit` would. One outcome per
        file, None for success; a failed file leaves nothing at its final name, and the
        engine sends it again on its own."""


@runtime_checkable
class GetSmall(Protocol):
    """Reads a batch of whole small files in a few round trips."""

    def get_small(self, files: list[tuple[str, Entry]]) -> list[bytes | None]:
        """Completing the entries' metadata as a reader would. One result per file; None
        where this way did not work, and the engine reads that file on its own (which
        reports what is wrong)."""


@runtime_checkable
class Symlinks(Protocol):
    """Makes symbolic links (`Holds.symlinks`)."""

    def symlink(self, rel: str, target: str) -> None: ...


@runtime_checkable
class Hardlinks(Protocol):
    """Makes hard links (`Holds.hardlinks`)."""

    def hardlink(self, rel: str, existing: str) -> None: ...


@runtime_checkable
class ResolvesLinks(Protocol):
    """Follows symlinks inside the root (--links follow)."""

    def resolve_link(self, rel: str, entry: Entry) -> tuple[str, Entry] | None:
        """(real relative path, entry) a symlink points at, if inside the root."""


@runtime_checkable
class Xattrs(Protocol):
    """Reads extended attributes of a path (`Holds.xattrs`); writers set them."""

    def xattrs(self, rel: str) -> dict[str, bytes] | None:
        """The extended attributes of a file or directory; None when unknown."""


@runtime_checkable
class Acls(Protocol):
    """Reads POSIX ACLs of a path (`Holds.acls`); set_meta and writers set them."""

    def acls(self, rel: str, is_dir: bool) -> AclText | None:
        """The access (and, of a directory, default) ACL; None where none can be held."""

    def list_acls(self) -> None:
        """A hint that ACLs will be read for what is listed from now on: a remote backend
        may then read them along with each listing (one request per directory)."""


@runtime_checkable
class Resumable(Protocol):
    """Partial writes survive a killed process (`Writer.done_chunks`)."""

    def partial_bytes(self, rel: str, resume_key: str) -> int:
        """Bytes a resumable partial of `rel` (open_write with `resume_key`) already holds at
        the destination: a resumed write needs that much less new space."""


@runtime_checkable
class DeltaBasis(Protocol):
    """Computes a basis file's signature where the file lives and rebuilds a file from a
    delta there (only deltas cross)."""

    def signature(self, rel: str, entry: Entry, block_size: int | None) -> bytes:
        """The encoded signature (`delta.signature.encode`) of the destination's current
        file `rel` (`entry`: as listed), in blocks of `block_size` (None: chosen from its
        size)."""

    def apply_delta(
        self, rel: str, entry: Entry, delta: Iterable[bytes], digest: str, preserve: Preserve
    ) -> int:
        """Rebuild `rel` from its current file and `delta` (the encoded delta stream's
        pieces) under a temporary name, check the result against `digest` (the source's
        Ferry digest; "" when the caller learns it only from the stream's end mark, which
        is checked always), set `entry`'s metadata as `Writer.commit` does and rename.
        Returns the basis bytes reused. A basis that changed since its signature is a
        retryable SOURCE_CHANGED error, and nothing is published."""


@runtime_checkable
class MeasuresLink(Protocol):
    """Times what crosses to the storage, so `--delta auto` can weigh a delta against
    sending a file whole by the link this run actually has."""

    def link_rate(self) -> float | None:
        """Bytes per second that file data reached the storage at recently (all streams
        together, while uploads were in flight), or None before enough was sent to say."""

    def probe_link(self) -> float | None:
        """Measure it now with small throwaway uploads (a few MiB); None where the storage
        takes no probe. The answer is returned, not mixed into `link_rate`."""


@runtime_checkable
class LazyMeta(Protocol):
    """list_dir leaves some metadata out (S3 user metadata costs a HEAD per object): the
    lister asks fill_meta for the entries it compares, readers complete the others."""

    def fill_meta(self, rel: str, entries: list[Entry]) -> None:
        """Complete entries of directory `rel` that the listing left partial."""


def read_xattrs(backend: Backend, rel: str) -> dict[str, bytes] | None:
    """The extended attributes of `rel` where the backend reads them, else None."""
    return backend.xattrs(rel) if isinstance(backend, Xattrs) else None


def want_acls(*backends: Backend) -> None:
    """Tell the backends that read ACLs that they will be asked for those of what they list."""
    for b in backends:
        if isinstance(b, Acls):
            b.list_acls()


def read_acls(backend: Backend, rel: str, is_dir: bool) -> AclText | None:
    """The POSIX ACLs of `rel` where the backend reads them, else None."""
    return backend.acls(rel, is_dir) if isinstance(backend, Acls) else None


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def check_name(name: str, where: str) -> str:
    """Refuse names that would escape a root: the only path check every backend shares."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise FerryError(ErrorKind.UNSAFE_PATH, f"unsafe name {name!r} in listing", where)
    return name


def thread_buffer(tls: threading.local, size: int) -> memoryview:
    """This thread's reusable buffer of at least `size` bytes: fresh memory for every piece
    costs a page fault per 4 KiB (more in a VM)."""
    buf: bytearray | None = getattr(tls, "buf", None)
    if buf is None or len(buf) < size:
        buf = tls.buf = bytearray(size)
    return memoryview(buf)


def copy_into(buf: bytearray, offset: int, data: bytes | memoryview) -> None:
    """buf[offset:offset+len(data)] = data, without the temporary copy of `data` that slice
    assignment into a bytearray makes (fresh memory, page faults and all, for every piece)."""
    view = memoryview(data).cast("B")
    with memoryview(buf) as dest:
        dest[offset : offset + len(view)] = view


def buffer_write(buf: bytearray, offset: int, data: bytes | memoryview) -> None:
    """`write_at` for a writer that holds a small file in memory until commit."""
    end = offset + len(data)
    if end > len(buf):
        buf.extend(bytes(end - len(buf)))
    copy_into(buf, offset, data)


def buffer_resize(buf: bytearray, size: int) -> None:
    """`set_size` for the same writers: truncate, or extend with zeros."""
    del buf[size:]
    buf.extend(bytes(size - len(buf)))
