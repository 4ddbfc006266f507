"""Local filesystems (and PVCs mounted into a mover pod).

New files are created unnamed with O_TMPFILE and linked into place only when
complete, so a killed process leaves nothing at all behind; where O_TMPFILE
is missing or the name exists, a hidden temp name plus rename does the same.
Large files are written to a hidden `.part` file with a journal beside it so
a later run resumes mid-file. Deletes walk parent directories with
O_NOFOLLOW so no symlink can redirect them outside the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import mmap
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ferry.mover import acl
from ferry.mover.acl import AclText
from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    KERNEL_WRITE_BACK,
    Acls,
    Backend,
    DeltaBasis,
    Durability,
    Entry,
    EntryType,
    Hardlinks,
    Holds,
    Limits,
    Reader,
    ResolvesLinks,
    Resumable,
    Space,
    Symlinks,
    Writer,
    Xattrs,
    check_name,
    thread_buffer,
)
from ferry.mover.backends.resume.journal import Journal, validate_chunks
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import Preserve
from ferry.mover.roots import RootId, path_parts

log = logging.getLogger("ferry")

_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
_MAX_NAME = 255
# Largest single pwrite. The page cache sizes its folios by the write (a 4 MiB write gets 2 MiB
# folios, a 128 KiB one 128 KiB folios), and a VM with free page reporting hands whole free
# 2 MiB blocks back to its host: large folios come from those and wait on the host for every
# page. Downloading 256 MiB from S3 spent 0.8-1.4 s in the kernel with 4 MiB or 1 MiB writes
# once earlier downloads filled the page cache, 0.2-0.3 s with 32-256 KiB ones (rclone writes
# 32 KiB: 0.3-0.4 s).
WRITE_SLICE = 128 * 1024
# Files at least this large go straight to the disk (O_DIRECT) when the run flushes before it
# reports success (--fsync end or file): the bytes must reach the disk before then anyway.
# Written directly they stay out of the page cache, which a mover pod's memory limit counts
# (dirty pages it cannot drop fast enough end in an OOM kill), and the final flush has
# nothing left to write. On this project's VMs it also avoids growing the page cache (see
# above): a 256 MiB SFTP download took 0.9-1.2 s instead of 1.1-1.7 s.
DIRECT_MIN = 32 << 20
# Only where the filesystem is on a local block device (ext2/3/4, XFS, btrfs): on NFS, for
# one, O_DIRECT makes every write a synchronous round trip to the server.
_DIRECT_FS = (0xEF53, 0x58465342, 0x9123683E)
_ALIGN = 4096  # offsets, lengths and buffer addresses: covers 512-byte and 4 KiB sectors
_DIRECT_PIECE = 4 << 20  # page-aligned staging buffer, one per writing thread
_staging = threading.local()
_warned_owner = False
_PROC_FD: int | None = None
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _entry(name: str, st: os.stat_result) -> Entry:
    m = st.st_mode
    if stat.S_ISREG(m):
        kind = EntryType.FILE
    elif stat.S_ISDIR(m):
        kind = EntryType.DIR
    elif stat.S_ISLNK(m):
        kind = EntryType.SYMLINK
    else:
        kind = EntryType.OTHER
    return Entry(
        name,
        kind,
        st.st_size if kind == EntryType.FILE else 0,
        st.st_mtime_ns,
        stat.S_IMODE(m),
        st.st_uid,
        st.st_gid,
        st.st_nlink,
        st.st_ino,
        st.st_dev,
        st.st_blocks,
    )


def _forget_proc_fd() -> None:
    # /proc/self was resolved when the directory was opened: a forked child must open its own.
    global _PROC_FD
    _PROC_FD = None


os.register_at_fork(after_in_child=_forget_proc_fd)


def _link_fd(fd: int, path: str) -> None:
    """linkat(2) an O_TMPFILE inode into place; os.link on /proc/self/fd/N alone would call
    link(2), which links the magic symlink itself and fails with EXDEV."""
    global _PROC_FD
    if _PROC_FD is None:
        _PROC_FD = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.link(str(fd), path, src_dir_fd=_PROC_FD, follow_symlinks=True)


def _internal_name(name: str, suffix: str) -> str:
    """A hidden sibling name for `name`, shortened by hashing when it would be too long."""
    full = f"{INTERNAL_PREFIX}{name}.{suffix}"
    if len(os.fsencode(full)) <= _MAX_NAME:
        return full
    digest = hashlib.blake2b(os.fsencode(name), digest_size=16).hexdigest()
    return f"{INTERNAL_PREFIX}{digest}.{suffix}"


def _apply_meta_fd(fd: int, entry: Entry, preserve: Preserve, created: int = -1) -> None:
    """Owner, mode and times. `created`: the mode the file already has from its creation,
    which then needs no fchmod (a syscall per small file, each a GIL handoff)."""
    chowned = preserve.owners and entry.uid >= 0
    if chowned:
        _chown(lambda: os.fchown(fd, entry.uid, entry.gid))
    mode = entry.mode if preserve.perms and entry.mode else 0o666 & ~_UMASK
    settable = (preserve.perms and entry.mode) or entry.type == EntryType.FILE
    if settable and (chowned or mode != created):  # a chown clears set-id bits
        os.fchmod(fd, mode)
    if preserve.times:
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _chown(call: object) -> None:
    global _warned_owner
    try:
        call()  # type: ignore[operator]
    except PermissionError:
        if not _warned_owner:
            _warned_owner = True
            log.warning("cannot preserve owners without privilege; keeping the writer's owner")


def _read_xattrs(target: int | str) -> dict[str, bytes] | None:
    """All extended attributes of an open file or a path (not following a symlink); None
    where the filesystem has none or they cannot be read."""
    follow = isinstance(target, int)  # a descriptor takes no follow_symlinks=False
    try:
        names = os.listxattr(target, follow_symlinks=follow)
        return {n: os.getxattr(target, n, follow_symlinks=follow) for n in names}
    except OSError:
        return None


def _sync_xattrs(path: str, wanted: dict[str, bytes], rel: str) -> None:
    """Make path's extended attributes exactly `wanted`: set what differs, remove the rest."""
    have = _read_xattrs(path)
    if have is None:
        log.warning("%s: cannot read xattrs to update them", rel)
        return
    for name in have.keys() - wanted.keys():
        try:
            os.removexattr(path, name, follow_symlinks=False)
        except OSError as exc:
            log.warning("%s: cannot remove xattr %s: %s", rel, name, exc.strerror)
    for name, value in wanted.items():
        if have.get(name) != value:
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                log.warning("%s: cannot set xattr %s: %s", rel, name, exc.strerror)


class LocalReader(Reader):
    def __init__(self, path: str, rel: str, entry: Entry) -> None:
        self.rel = rel
        self.entry = entry
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc
        self._tls: threading.local | None = None  # per-thread buffers, made on first streamed read

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def readinto_at(self, offset: int, buf: memoryview) -> int:
        return os.preadv(self.fd, [buf], offset)

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[memoryview]:
        if self._tls is None:
            self._tls = threading.local()
        view = thread_buffer(self._tls, piece)
        end = offset + length
        while offset < end:
            n = os.preadv(self.fd, [view[: min(piece, end - offset)]], offset)
            if n <= 0:
                return
            yield view[:n]
            offset += n

    def fileno(self) -> int:
        return self.fd

    def data_ranges(self, size: int) -> list[tuple[int, int]] | None:
        if self.entry.blocks < 0 or self.entry.blocks * 512 >= size:
            return None
        ranges: list[tuple[int, int]] = []
        pos = 0
        try:
            while pos < size:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
                end = os.lseek(self.fd, start, os.SEEK_HOLE)
                ranges.append((start, min(end, size) - start))
                pos = end
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                return None
        return ranges

    def changed(self) -> str | None:
        st = os.fstat(self.fd)
        if st.st_size != self.entry.size:
            return f"size changed from {self.entry.size} to {st.st_size} while copying"
        if st.st_mtime_ns != self.entry.mtime_ns:
            return "modified while copying"
        return None

    def xattrs(self) -> dict[str, bytes] | None:
        return _read_xattrs(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _direct_fs(fd: int) -> bool:
    """Whether `fd` is on a filesystem where O_DIRECT writes are worth it (_DIRECT_FS)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    try:
        if ctypes.CDLL(None, use_errno=True).fstatfs(fd, buf) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return ctypes.c_long.from_buffer(buf).value in _DIRECT_FS


class LocalWriter(Writer):
    """Writes `final` via an unnamed O_TMPFILE, a hidden temp name, or a resumable `.part`."""

    def __init__(self, backend: LocalBackend, rel: str, resume_key: str | None) -> None:
        self.rel = rel
        self.final = backend.path(rel)
        self.dir, name = os.path.split(self.final)
        self.tmp: str | None = None
        self.created_mode = -1  # the mode the file was created with, where known
        self.journal: Journal | None = None
        self.durable = backend.durability.fsync_each
        self.direct = backend.durability.direct_writes
        self.dfd = -1  # the same file opened O_DIRECT, for big files (see DIRECT_MIN)
        self._recorded: dict[int, bytes] = {}
        self._xattrs: dict[str, bytes] = {}
        self.fd = -1
        try:
            if resume_key is not None:
                self.tmp = os.path.join(self.dir, _internal_name(name, "part"))
                self.journal = Journal(
                    os.path.join(self.dir, _internal_name(name, "journal")), resume_key
                )
                recorded = self.journal.load()
                self.fd = os.open(
                    self.tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
                )
                self._recorded = recorded
            else:
                self.fd = self._open_unnamed()
        except FileNotFoundError:
            raise FerryError(
                ErrorKind.DESTINATION_NOT_FOUND, "destination directory is missing", rel
            ) from None
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc

    def _open_unnamed(self) -> int:
        if _O_TMPFILE:
            try:
                # Nameless until linked, so created with the usual mode, which is then
                # mostly the final one.
                fd = os.open(self.dir, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o666)
                self.created_mode = 0o666 & ~_UMASK
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
        return self._open_named()

    def _open_named(self) -> int:
        name = os.path.basename(self.final)
        self.tmp = os.path.join(self.dir, _internal_name(name, os.urandom(4).hex() + ".tmp"))
        return os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def fileno(self) -> int:
        return self.fd

    def done_chunks(self, chunk_size: int) -> dict[int, bytes]:
        assert self.journal is not None
        size = os.fstat(self.fd).st_size
        good = validate_chunks(
            self._recorded, chunk_size, size, lambda o, n: os.pread(self.fd, n, o)
        )
        if not good:
            os.ftruncate(self.fd, 0)
        self.journal.start(good)
        return good

    def record_chunk(self, index: int, block_digests: bytes) -> None:
        if self.journal is not None:
            self.journal.record(index, block_digests)

    def set_size(self, size: int) -> None:
        """Size a fresh file that its chunks then fill at their offsets."""
        os.ftruncate(self.fd, size)
        if self.direct and size >= DIRECT_MIN and self.dfd < 0 and _direct_fs(self.fd):
            with contextlib.suppress(OSError):  # no O_DIRECT here: the page cache it is
                self.dfd = os.open(
                    f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC
                )

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self.dfd >= 0 and len(view) >= 2 * _ALIGN:
            # Whole aligned blocks go direct; the unaligned ends through the page cache.
            # A block is then written one way only, so the two never hold different bytes.
            head = -offset % _ALIGN
            body = (len(view) - head) // _ALIGN * _ALIGN
            self._write(offset, view[:head])
            try:
                self._write_direct(offset + head, view[head : head + body])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._close_direct()  # a stricter alignment than 4 KiB: stay buffered
                self._write(offset + head, view[head : head + body])
            offset += head + body
            view = view[head + body :]
        self._write(offset, view)

    def _write_direct(self, offset: int, view: memoryview) -> None:
        buf: memoryview | None = getattr(_staging, "buf", None)
        if buf is None:
            buf = _staging.buf = memoryview(mmap.mmap(-1, _DIRECT_PIECE))
        while view:
            n = min(len(view), _DIRECT_PIECE)
            buf[:n] = view[:n]
            n = os.pwrite(self.dfd, buf[:n], offset)
            view = view[n:]
            offset += n

    def _write(self, offset: int, view: memoryview) -> None:
        while view:
            n = os.pwrite(self.fd, view[:WRITE_SLICE], offset)
            view = view[n:]
            offset += n

    def read_back(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def set_xattrs(self, attrs: dict[str, bytes]) -> None:
        self._xattrs = attrs

    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        try:
            for k, v in self._xattrs.items():
                try:
                    os.setxattr(self.fd, k, v)
                except OSError as exc:
                    log.warning("%s: cannot set xattr %s: %s", self.rel, k, exc.strerror)
            # A file in a directory with a default ACL is not created with the usual mode.
            created = -1 if preserve.acls else self.created_mode
            _apply_meta_fd(self.fd, entry, preserve, created)
            if preserve.acls and entry.acls is not None:
                acl.set_fd(self.fd, entry.acls.access, self.rel)
            if self.durable:
                os.fdatasync(self.fd)
            if self.tmp is None:
                try:
                    _link_fd(self.fd, self.final)
                except FileExistsError:
                    # Updating an existing file: name the inode, then rename over.
                    self.tmp = os.path.join(
                        self.dir,
                        _internal_name(os.path.basename(self.final), os.urandom(4).hex() + ".tmp"),
                    )
                    _link_fd(self.fd, self.tmp)
                    os.replace(self.tmp, self.final)
                    self.tmp = None
            else:
                os.replace(self.tmp, self.final)
                self.tmp = None
            if self.journal is not None:
                self.journal.remove()
        except OSError as exc:
            self.abort()
            raise as_ferry_error(exc, self.rel) from exc
        finally:
            self._close()

    def abort(self, keep_partial: bool = False) -> None:
        self._close()
        if self.journal is not None:
            if keep_partial:
                self.journal.close()
                return
            self.journal.remove()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            self.tmp = None

    def _close_direct(self) -> None:
        if self.dfd >= 0:
            os.close(self.dfd)
            self.dfd = -1

    def _close(self) -> None:
        self._close_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalBackend(Backend):
    """Has every optional capability but batches and server-side copies (ServerSideCopy,
    PutSmall, GetSmall): a local file is a syscall away already."""

    holds = Holds(
        symlinks=True,
        hardlinks=True,
        permissions=True,
        owners=True,
        xattrs=True,
        acls=True,
        sparse=True,
        mtime_precision_ns=1,
    )
    limits = Limits(chunk_writer=True)
    fileno_capable = True

    def __init__(self, root: str, durability: Durability = KERNEL_WRITE_BACK) -> None:
        self.root = os.path.abspath(root)
        self.durability = durability

    def describe(self) -> str:
        return self.root

    def root_id(self) -> RootId:
        """Symlinks resolved, so two names of one directory are one root."""
        return RootId(("local",), path_parts(os.path.realpath(self.root)))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def root_type(self) -> EntryType | None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise as_ferry_error(exc, self.root) from exc
        return _entry("", st).type

    def prepare_destination(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise as_ferry_error(exc, self.root) from exc

    def list_dir(self, rel: str) -> list[Entry]:
        out: list[Entry] = []
        try:
            with os.scandir(self.path(rel)) as it:
                for de in it:
                    name = de.name
                    if name.startswith(INTERNAL_PREFIX):
                        continue
                    e = _entry(name, de.stat(follow_symlinks=False))
                    if e.type == EntryType.SYMLINK:
                        e.target = os.readlink(de.path)
                    out.append(e)
        except OSError as exc:
            raise as_ferry_error(exc, self.path(rel)) from exc
        return out

    def stat(self, rel: str) -> Entry | None:
        try:
            st = os.lstat(self.path(rel))
        except FileNotFoundError:
            return None
        e = _entry(rel.rpartition("/")[2], st)
        if e.type == EntryType.SYMLINK:
            e.target = os.readlink(self.path(rel))
        return e

    def open_read(self, rel: str, entry: Entry) -> LocalReader:
        return LocalReader(self.path(rel), rel, entry)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> LocalWriter:
        return LocalWriter(self, rel, resume_key)

    def mkdir(self, rel: str) -> None:
        try:
            os.mkdir(self.path(rel), 0o700)
        except FileExistsError:
            if not os.path.isdir(self.path(rel)) or os.path.islink(self.path(rel)):
                raise FerryError(
                    ErrorKind.UNSAFE_PATH, "exists and is not a directory", rel
                ) from None
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc

    def _parent_fd(self, rel: str) -> tuple[int, str]:
        """Open rel's parent by walking from the root without following any symlink."""
        parts = rel.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                check_name(part, rel)
                nfd = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, check_name(parts[-1], rel)

    def remove(self, rel: str, entry: Entry) -> None:
        try:
            fd, name = self._parent_fd(rel)
            try:
                if entry.type == EntryType.DIR:
                    os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc

    def xattrs(self, rel: str) -> dict[str, bytes] | None:
        return _read_xattrs(self.path(rel))

    def list_acls(self) -> None:
        """Nothing to prefetch: a local ACL read is a syscall."""

    def acls(self, rel: str, is_dir: bool) -> AclText | None:
        try:
            return acl.read_path(self.path(rel), is_dir)
        except FileNotFoundError:
            return None  # gone since it was listed: its copy reports that
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        p = self.path(rel)
        try:
            is_link = entry.type == EntryType.SYMLINK
            if preserve.xattrs and entry.xattrs is not None and not is_link:
                _sync_xattrs(p, entry.xattrs, rel)
            if preserve.owners and entry.uid >= 0:
                _chown(lambda: os.chown(p, entry.uid, entry.gid, follow_symlinks=False))
            if preserve.perms and entry.mode and not is_link:
                os.chmod(p, entry.mode)
            if preserve.acls and entry.acls is not None and not is_link:
                acl.set_path(p, entry.acls, entry.type == EntryType.DIR)
            if preserve.times:
                os.utime(p, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc

    def _replace_with(self, rel: str, make: object) -> None:
        final = self.path(rel)
        d, name = os.path.split(final)
        tmp = os.path.join(d, _internal_name(name, os.urandom(4).hex() + ".tmp"))
        try:
            make(tmp)  # type: ignore[operator]
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise as_ferry_error(exc, rel) from exc

    def symlink(self, rel: str, target: str) -> None:
        self._replace_with(rel, lambda tmp: os.symlink(target, tmp))

    def hardlink(self, rel: str, existing: str) -> None:
        src = self.path(existing)
        self._replace_with(rel, lambda tmp: os.link(src, tmp, follow_symlinks=False))

    def resolve_link(self, rel: str, entry: Entry) -> tuple[str, Entry] | None:
        real = os.path.realpath(self.path(rel))
        root = os.path.realpath(self.root)
        if not real.startswith(root + "/"):
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        return real[len(root) + 1 :], _entry(entry.name, st)

    def free_space(self) -> Space | None:
        """statvfs of the root, or of its nearest existing parent before it is created."""
        path = self.root
        while True:
            try:
                st = os.statvfs(path)
                break
            except FileNotFoundError:
                if path == os.path.dirname(path):
                    return None
                path = os.path.dirname(path)
            except OSError:
                return None
        unit = st.f_frsize or st.f_bsize
        return Space.checked(st.f_bavail * unit, st.f_blocks * unit, unit)

    def partial_bytes(self, rel: str, resume_key: str) -> int:
        """The `.part` a resumable write reuses (or truncates, for another source version)."""
        parent, name = os.path.split(self.path(rel))
        try:
            st = os.lstat(os.path.join(parent, _internal_name(name, "part")))
        except OSError:
            return 0
        return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0

    # -- DeltaBasis: the delta package (and NumPy) load only when a delta runs ----------------

    def signature(self, rel: str, entry: Entry, block_size: int | None) -> bytes:
        from ferry.mover.delta import signature

        bfd = self._open_basis(rel)
        try:
            sig = signature.compute(lambda off, n: os.pread(bfd, n, off), entry.size, block_size)
            st = os.fstat(bfd)
        finally:
            os.close(bfd)
        if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
            raise FerryError(
                ErrorKind.SOURCE_CHANGED, "the delta's basis changed while it was read", rel
            )
        return signature.encode(sig)

    def _open_basis(self, rel: str) -> int:
        """The basis of a delta, opened without following any symlink on the way: a peer
        must get no signature of, and no delta copies from, a file outside the root."""
        try:
            dfd, name = self._parent_fd(rel)
            try:
                bfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            finally:
                os.close(dfd)
        except FileNotFoundError:
            raise FerryError(ErrorKind.SOURCE_CHANGED, "the delta's basis vanished", rel) from None
        except OSError as exc:
            raise as_ferry_error(exc, rel) from exc
        if not stat.S_ISREG(os.fstat(bfd).st_mode):
            os.close(bfd)
            raise FerryError(ErrorKind.SOURCE_CHANGED, "the delta's basis is no longer a file", rel)
        return bfd

    def apply_delta(
        self, rel: str, entry: Entry, delta: Iterable[bytes], digest: str, preserve: Preserve
    ) -> int:
        from ferry.mover.delta import apply, open_delta

        bfd = self._open_basis(rel)
        try:
            st = os.fstat(bfd)
            stream = open_delta(delta, st.st_size, entry.size)
            writer = self.open_write(rel, entry)
            try:
                reused = [0]
                _, got = apply(
                    lambda off, n: os.pread(bfd, n, off),
                    st.st_size,
                    stream.block_size,
                    stream,
                    writer.write_at,
                    lambda n: reused.__setitem__(0, reused[0] + n),
                )
                if got != stream.digest or (digest and got != digest):
                    raise FerryError(
                        ErrorKind.SOURCE_CHANGED,
                        "the file rebuilt from the delta has another digest than the source "
                        "(the basis changed while rebuilding)",
                        rel,
                    )
                if preserve.xattrs and entry.xattrs:
                    writer.set_xattrs(entry.xattrs)
                writer.commit(entry, got, preserve)
            except BaseException:
                writer.abort()
                raise
        finally:
            os.close(bfd)
        return reused[0]

    def flush(self) -> None:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syncfs(fd) != 0:
                os.sync()
        except (OSError, AttributeError):
            os.sync()
        finally:
            os.close(fd)


# The optional capabilities LocalBackend has, checked by mypy here (rclone's "check the interfaces
# are satisfied" block) and at run time by tests/backends/test_capabilities.py.
if TYPE_CHECKING:

    def _has(
        b: LocalBackend,
    ) -> tuple[Symlinks, Hardlinks, ResolvesLinks, Xattrs, Acls, Resumable, DeltaBasis]:
        return b, b, b, b, b, b, b
