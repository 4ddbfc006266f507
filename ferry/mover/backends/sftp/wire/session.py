"""SFTP v3 on the wire: the requests Ferry frames itself for bulk data and small files.

paramiko's SFTPFile path (a prefetch thread per readv, 4- and n-byte channel reads that
memmove the rest of the buffered window, a Message object per reply) cost more CPU than
the cipher on 2 cores, so `Session` writes READ/WRITE/OPEN/CLOSE/LSTAT/(F)SETSTAT requests
straight to paramiko's channel and parses the replies from the payloads as they arrive
(`LeanPipe`), with request ids from the SFTPClient's own counter (its own calls stay in
step). Packet layout: draft-ietf-secsh-filexfer-02; request sizes: OpenSSH's
limits@openssh.com.

Replies are untrusted: `next_reply` checks a reply's declared length against the protocol's
maximum before buffering for it, and `parse_reply` every field against the reply's length.
A reply that breaks the framing, or answers a request not asked, raises `ProtocolError`
and marks the session `broken`: the pool closes it instead of lending it again.
"""

from __future__ import annotations

import errno
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator

import paramiko
from paramiko.buffered_pipe import PipeTimeout

from ferry.mover.backends.sftp.session import (
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    KEPT_HANDLES,
    MAX_REQUEST,
    Handle,
    Put,
    Stat,
)
from ferry.mover.backends.sftp.wire.ssh_send import channel_sender
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import MiB

FALLBACK_REQUEST = 128 * 1024  # read/write length for servers without limits@openssh.com
READ_DEPTH = 16  # READ requests in flight per stream (about WINDOW bytes)
READ_REFILL = 8  # ...sent again this many at a time
WRITE_DEPTH = 16  # unacknowledged WRITE requests per stream
RECV = 8 * MiB  # a cap only: a LeanPipe read returns one whole payload
MAX_REPLY = 256 * 1024  # longest reply length a server may declare (OpenSSH's SFTP_MAX_MSG_LENGTH)
MAX_HANDLE = 256  # draft-02: a handle is at most 256 bytes
STATUS_TEXT = 200  # bytes of a server's status message that reach an error message

# SFTP v3 packet types and flags (draft-ietf-secsh-filexfer-02)
OPEN, CLOSE, READ, WRITE, LSTAT, SETSTAT, FSETSTAT, REMOVE = 3, 4, 5, 6, 7, 9, 10, 13
EXTENDED = 200
STATUS, HANDLE, DATA, ATTRS, EXTENDED_REPLY = 101, 102, 103, 105, 201
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
ATTR_FIELDS = ((ATTR_SIZE, 8), (ATTR_UIDGID, 8), (ATTR_PERMISSIONS, 4), (ATTR_ACMODTIME, 8))
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED = 0, 1, 2, 3
FX_OP_UNSUPPORTED = 8
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
HEAD = struct.Struct(">IBI")  # length, type, request id
RANGE = struct.Struct(">QI")  # offset, length


Body = bytes | memoryview  # a reply's body: DATA bodies are views into what arrived
Reply = tuple[int, int, Body]  # type, request id, body


class ProtocolError(paramiko.SSHException):
    """A reply that breaks SFTP's framing or layout, or answers a request not asked: the
    session is out of step with its server. Transient (sftp.classify): the work is retried
    on a fresh session, and this one is closed."""


class _Chunks:
    """Received bytes, kept as the separate payloads they arrived in and consumed from the
    front: what lies inside one payload is handed out as a view of it, without a copy."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: deque[memoryview] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, data: bytes) -> None:
        if data:
            self.parts.append(memoryview(data))
            self.size += len(data)

    def peek(self, n: int) -> bytes:
        """The first n bytes (at most what is held), left in place."""
        out = b""
        for part in self.parts:
            out += part[: n - len(out)]
            if len(out) == n:
                break
        return out

    def take(self, n: int) -> memoryview:
        """The first n bytes (n <= len), removed: a view into one payload, or one joined
        copy where they span several."""
        self.size -= n
        first = self.parts[0]
        if len(first) >= n:
            if len(first) == n:
                self.parts.popleft()
            else:
                self.parts[0] = first[n:]
            return first[:n]
        pieces: list[memoryview] = []
        while n:
            part = self.parts[0]
            if len(part) <= n:
                pieces.append(self.parts.popleft())
                n -= len(part)
            else:
                pieces.append(part[:n])
                self.parts[0] = part[n:]
                n = 0
        return memoryview(b"".join(pieces))


class LeanPipe:
    """What paramiko's Channel asks of its receive buffer (BufferedPipe: feed, read with a
    timeout, read_ready, set_event, empty, close, len), without copying what arrives.
    BufferedPipe copied every byte three times (array frombytes, slice, tobytes); a read
    here returns one payload as it came (or its first `nbytes`), a short read as sockets
    give, which paramiko's own readers loop over and Session parses across."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._buf = _Chunks()
        self._event: threading.Event | None = None
        self._closed = False

    def _signal(self) -> None:
        if self._event is not None:
            if self._closed or self._buf:
                self._event.set()
            else:
                self._event.clear()

    def set_event(self, event: threading.Event) -> None:
        with self._cv:
            self._event = event
            self._signal()

    def feed(self, data: bytes) -> None:
        with self._cv:
            self._buf.add(data)
            self._signal()
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._cv:
            return bool(self._buf)

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._cv:
            if not self._cv.wait_for(lambda: self._buf or self._closed, timeout):
                raise PipeTimeout()
            if not self._buf:
                return b""  # closed
            view = self._buf.take(min(nbytes, len(self._buf.parts[0])))
            self._signal()
        whole = isinstance(view.obj, bytes) and len(view) == len(view.obj)
        return view.obj if whole else view.tobytes()  # type: ignore[return-value]

    def empty(self) -> bytes:
        with self._cv:
            out = self._buf.take(len(self._buf)).tobytes() if self._buf else b""
            self._signal()
            return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._signal()
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return len(self._buf)


def lean_channel(chan: paramiko.Channel) -> None:
    """Swap the channel's receive buffer for a LeanPipe between requests (an SFTP server
    sends nothing unasked), carrying over anything it holds."""
    old, new = chan.in_buffer, LeanPipe()
    event = getattr(old, "_event", None)  # set by Channel.fileno(), for select()
    if event is not None:
        new.set_event(event)
    chan.in_buffer = new  # type: ignore[assignment]
    new.feed(old.empty())


def sftp_string(b: bytes) -> bytes:
    return U32.pack(len(b)) + b


def path_bytes(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


FSYNC = sftp_string(b"fsync@openssh.com")  # then the handle: fsync(2) on the server
STATVFS = sftp_string(b"statvfs@openssh.com")  # then a path: statvfs(2) on the server


def attrs_size(body: Body, at: int = 0) -> int:
    """The length of the fixed fields of the ATTRS block at `at` (its flags say which are
    present; extended pairs, which Ferry does not read, are not counted)."""
    if len(body) < at + 4:
        raise ProtocolError("SFTP attributes shorter than their flags")
    flags = U32.unpack_from(body, at)[0]
    return 4 + sum(n for bit, n in ATTR_FIELDS if flags & bit)


def parse_reply(msg: Body) -> Reply:
    """One whole reply, its length field included, as (type, request id, body): a DATA body
    is just the data (a view into `msg`), others are bytes. Each field a reply of its type
    carries is checked against the reply's length: ProtocolError where one does not fit."""
    if len(msg) < HEAD.size:
        raise ProtocolError(f"SFTP reply shorter than its header ({len(msg)} bytes)")
    length, kind, rid = HEAD.unpack_from(msg, 0)
    if length != len(msg) - 4:
        raise ProtocolError("SFTP reply length disagrees with its framing")
    body = memoryview(msg)[HEAD.size :]
    if kind == EXTENDED_REPLY:
        return kind, rid, body.tobytes()  # free-form: its reader checks what it needs
    if kind not in (STATUS, HANDLE, DATA, ATTRS):
        raise ProtocolError(f"unexpected SFTP reply type {kind}")
    if kind == ATTRS:
        if len(body) < attrs_size(body):
            raise ProtocolError("SFTP attributes shorter than their flags say")
        return kind, rid, body.tobytes()
    if len(body) < 4:
        raise ProtocolError(f"SFTP reply of type {kind} too short ({len(body)} bytes)")
    n = U32.unpack_from(body, 0)[0]
    if kind == STATUS:
        # the code, then (servers older than draft-02 stop here) a message and a language tag
        if len(body) > 4 and (len(body) < 8 or U32.unpack_from(body, 4)[0] > len(body) - 8):
            raise ProtocolError("SFTP status message longer than its reply")
        return kind, rid, body.tobytes()
    if n != len(body) - 4:
        raise ProtocolError(f"SFTP reply of type {kind}: inner length disagrees with its reply's")
    if kind == HANDLE:
        if n > MAX_HANDLE:
            raise ProtocolError(f"SFTP handle longer than {MAX_HANDLE} bytes")
        return kind, rid, body[4:].tobytes()
    return kind, rid, body[4:]


def next_reply(inbox: _Chunks) -> Reply | None:
    """The first whole reply in `inbox`, taken out; None until all of it has arrived. Its
    declared length is checked first: a server cannot make the mover buffer more than
    MAX_REPLY for one reply."""
    if len(inbox) < 4:
        return None
    length = U32.unpack(inbox.peek(4))[0]
    if length < HEAD.size - 4:
        raise ProtocolError(f"SFTP reply shorter than its header ({length} bytes)")
    if length > MAX_REPLY:
        raise ProtocolError(f"SFTP reply longer than the protocol allows ({length} bytes)")
    if len(inbox) < 4 + length:
        return None
    return parse_reply(inbox.take(4 + length))


def parse_attrs(body: Body, at: int = 0) -> Stat:
    """The fields of an SFTP ATTRS reply that the backend uses (its layout checked by
    parse_reply)."""
    flags = U32.unpack_from(body, at)[0]
    at += 4
    size = mtime = None
    if flags & ATTR_SIZE:
        size = U64.unpack_from(body, at)[0]
        at += 8
    if flags & ATTR_UIDGID:
        at += 8
    if flags & ATTR_PERMISSIONS:
        at += 4
    if flags & ATTR_ACMODTIME:
        mtime = U32.unpack_from(body, at + 4)[0]
    return Stat(size, mtime)


def status_error(body: Body) -> OSError:
    """A STATUS reply's body (checked by parse_reply) as the OSError it stands for."""
    code = U32.unpack_from(body, 0)[0]
    text = ""
    if len(body) >= 8:
        raw = bytes(body[8 : 8 + min(U32.unpack_from(body, 4)[0], STATUS_TEXT)])
        text = "".join(c if c.isprintable() else "?" for c in raw.decode("utf-8", "replace"))
    if code == FX_NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, text or "No such file")
    if code == FX_PERMISSION_DENIED:
        return PermissionError(errno.EACCES, text or "Permission denied")
    if code == FX_OP_UNSUPPORTED:
        return OSError(errno.EOPNOTSUPP, text or "Operation unsupported")
    return OSError(f"SFTP status {code}: {text}")


def refused(exc: BaseException) -> bool:
    """A request the server declines as such: denied by its configuration (sftp-server -P)
    or unknown to it."""
    return isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EOPNOTSUPP)


class Session:
    """One SSH connection with its SFTP channel, lent to one thread at a time.

    Bulk data bypasses paramiko's SFTPFile: requests are framed here and written to
    the channel, and replies are parsed from the channel's payloads. paramiko's per-reply
    path (4-byte and n-byte channel reads that memmove the rest of the buffer, a Message
    per reply, a prefetch thread per readv) cost more CPU than the cipher. Request ids
    come from the SFTPClient's counter, and every reply is consumed before the session
    goes back to the pool (`dirty` otherwise), so paramiko's own calls stay in step. A
    reply that breaks the protocol marks it `broken`: it never goes back.

    Writes given `fsync` ask for fsync@openssh.com on the handle before its CLOSE, in the
    same channel write; a server that declines it sets `fsync_refused` instead of failing
    the file."""

    __slots__ = (
        "broken",
        "buf",
        "chan",
        "dirty",
        "fsync_refused",
        "handles",
        "read_max",
        "sendall",
        "sftp",
        "transport",
        "write_max",
    )

    def __init__(self, transport: paramiko.Transport, sftp: paramiko.SFTPClient) -> None:
        self.transport, self.sftp = transport, sftp
        chan = sftp.get_channel()
        assert chan is not None
        lean_channel(chan)
        self.chan: paramiko.Channel = chan
        self.sendall = channel_sender(chan)
        self.buf = _Chunks()  # received, not yet parsed
        self.dirty = False
        self.broken = False  # a reply broke the protocol: close, never reuse
        self.fsync_refused = False
        # Write handles kept open between one writer's pieces, by writer: an OPEN per 2 MiB
        # piece was a round trip (~1 ms under load) in which the stream sent nothing.
        self.handles: dict[object, Handle] = {}
        self.read_max = self.write_max = FALLBACK_REQUEST

    def reusable(self) -> bool:
        return not (self.broken or self.dirty or self.buf)

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.transport.close()

    # -- framing ---------------------------------------------------------------------
    def _send(
        self,
        kind: int,
        body: bytes,
        data: bytes | memoryview = b"",
        batch: list[bytes | memoryview] | None = None,
    ) -> int:
        """Send one request (or add it to `batch`, sent later in one channel write)."""
        rid = self.sftp.request_number
        self.sftp.request_number = rid + 1
        head = HEAD.pack(5 + len(body) + len(data), kind, rid) + body
        if batch is not None:
            batch += (head, data) if data else (head,)
        else:
            self.sendall((head, data))
        return rid

    def _recv(self) -> Reply:
        """The next reply: (type, request id, body); a DATA body is just the data, as a view
        into the payload it arrived in where it lies inside one."""
        try:
            while (got := next_reply(self.buf)) is None:
                d = self.chan.recv(RECV)
                if not d:
                    raise EOFError("SFTP channel closed")
                self.buf.add(d)
        except ProtocolError:
            self.broken = True
            raise
        return got

    def _broken(self, text: str) -> ProtocolError:
        """The error for a reply that breaks the protocol; this session is done."""
        self.broken = True
        return ProtocolError(text)

    def reply(self, rid: int) -> tuple[int, bytes]:
        kind, got, body = self._recv()
        if got != rid:
            raise self._broken(f"SFTP reply to request {got}, expected {rid}")
        if kind == STATUS and U32.unpack_from(body, 0)[0] != FX_OK:
            raise status_error(body)
        return kind, bytes(body)  # no copy: only DATA bodies are views

    # -- requests ----------------------------------------------------------------------
    def query_limits(self) -> None:
        """Request sizes from limits@openssh.com where offered (OpenSSH: 255 KiB)."""
        rid = self._send(EXTENDED, sftp_string(b"limits@openssh.com"))
        try:
            kind, body = self.reply(rid)
        except OSError:
            return
        if kind == EXTENDED_REPLY and len(body) >= 32:
            _, rd, wr, _ = struct.unpack_from(">QQQQ", body, 0)
            if rd:
                # Whole 4 KiB blocks: a download's pieces then land aligned, and a local
                # destination writes them straight to the disk (local.DIRECT_MIN).
                self.read_max = min(rd, MAX_REQUEST) // 4096 * 4096 or min(rd, MAX_REQUEST)
            if wr:
                self.write_max = min(wr, MAX_REQUEST)

    def statvfs_fields(self, path: str) -> tuple[int, ...]:
        """statvfs(2) of the filesystem holding `path`, as the server answers it: bsize,
        frsize, blocks, bfree, bavail, files, ffree, favail (unchecked)."""
        kind, body = self.reply(self._send(EXTENDED, STATVFS + sftp_string(path_bytes(path))))
        if kind != EXTENDED_REPLY or len(body) < 64:
            raise self._broken(f"SFTP statvfs: unexpected reply {kind}")
        return struct.unpack_from(">8Q", body, 0)

    def statvfs(self, path: str) -> tuple[int, int]:
        """(bytes, inodes) this user may still take on the filesystem holding `path`."""
        bsize, frsize, _, _, bavail, _, _, favail = self.statvfs_fields(path)
        return bavail * (frsize or bsize), favail

    def open(self, path: str, flags: int) -> bytes:
        rid = self._send(OPEN, _open_body(path, flags))
        return self._handle(*self.reply(rid))

    def _handle(self, kind: int, body: Body) -> bytes:
        """The handle an OPEN's reply carries (its length checked by parse_reply)."""
        if kind != HANDLE:
            raise self._broken(f"SFTP open: unexpected reply {kind}")
        return bytes(body)

    def read(self, handle: bytes, offset: int, length: int, piece: int) -> Iterator[Body]:
        """Yield the bytes of [offset, offset+length) in order, READ_DEPTH requests ahead.

        Short replies (a server with a smaller cap) are completed with a further request."""
        self.dirty = True
        size = max(1, min(self.read_max, piece))
        hs = sftp_string(handle)
        end = offset + length
        pending: dict[int, tuple[int, int]] = {}
        early: dict[int, Body] = {}
        nxt = out = offset

        batch: list[bytes | memoryview] = []

        def ask(at: int, n: int) -> None:
            pending[self._send(READ, hs + RANGE.pack(at, n), batch=batch)] = (at, n)

        while pending or nxt < end:
            # Refilled half the depth at a time, in one channel write: a packet
            # (and a socket write, and an sshd read) per READ request cost more than that.
            if len(pending) <= READ_DEPTH - READ_REFILL:
                while nxt < end and len(pending) < READ_DEPTH:
                    n = min(size, end - nxt)
                    ask(nxt, n)
                    nxt += n
            if batch:
                self.sendall(batch)
                batch.clear()
            kind, rid, data = self._recv()
            try:
                at, n = pending.pop(rid)
            except KeyError:
                raise self._broken(f"SFTP reply to unknown request {rid}") from None
            if kind != DATA:
                if kind != STATUS:
                    raise self._broken(f"SFTP read: unexpected reply {kind}")
                if U32.unpack_from(data, 0)[0] == FX_EOF:
                    raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while reading")
                raise status_error(data)
            if not data:
                raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while reading")
            if len(data) > n:
                raise self._broken("SFTP read: more data than asked for")
            if len(data) < n:
                ask(at + len(data), n - len(data))
                size = min(size, len(data))
            if at != out:
                early[at] = data
                continue
            yield data
            out += len(data)
            while out in early:
                data = early.pop(out)
                yield data
                out += len(data)
        self.dirty = False

    def close_handle(self, handle: bytes) -> None:
        self.reply(self._send(CLOSE, sftp_string(handle)))

    def keep_handle(self, owner: object, handle: bytes) -> None:
        """Keep `owner`'s open handle for its next piece; the oldest kept one is closed
        beyond KEPT_HANDLES."""
        while len(self.handles) >= KEPT_HANDLES:
            self.close_handle(self.handles.pop(next(iter(self.handles))))
        self.handles[owner] = handle

    def close_handles(self, finished: Callable[[object], bool]) -> None:
        """Close the kept handles of owners that are finished, in one channel write. Their
        writes were each acknowledged already; a failed CLOSE loses nothing."""
        gone = [o for o in self.handles if finished(o)]
        if gone:
            batch: list[bytes | memoryview] = []
            rids = [self._send(CLOSE, sftp_string(self.handles.pop(o)), batch=batch) for o in gone]
            self._collect(batch, rids)

    def read_small(self, path: str, size: int) -> tuple[bytes, Stat | bool | None]:
        """A whole small file in two round trips: OPEN, then READs + CLOSE + LSTAT at once.

        Also returns the LSTAT taken after the reads: None if the file vanished, False if
        it cannot tell (no size in the reply)."""
        handle = self.open(path, FXF_READ)
        self.dirty = True
        hs = sftp_string(handle)
        step = self.read_max
        reads = [
            self._send(READ, hs + RANGE.pack(o, min(step, size - o))) for o in range(0, size, step)
        ]
        close = self._send(CLOSE, hs)
        lstat = self._send(LSTAT, sftp_string(path_bytes(path)))
        parts: list[Body] = []
        short = False  # parts after a short reply would land at the wrong offset
        error: BaseException | None = None
        for i, rid in enumerate(reads):
            kind, got, data = self._recv()
            if got != rid:
                raise self._broken(f"SFTP reply to request {got}, expected {rid}")
            asked = min(step, size - i * step)
            if kind == DATA:
                if len(data) > asked:
                    raise self._broken("SFTP read: more data than asked for")
                if not short:
                    parts.append(data)
                    short = len(data) < asked
            elif kind != STATUS:
                raise self._broken(f"SFTP read: unexpected reply {kind}")
            elif error is None:
                is_eof = kind == STATUS and U32.unpack_from(data, 0)[0] == FX_EOF
                error = (
                    FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while reading")
                    if is_eof
                    else status_error(data)
                )
        self.reply(close)
        try:
            kind, body = self.reply(lstat)
        except FileNotFoundError:
            kind, body = STATUS, b""
        self.dirty = False
        if error is not None:
            raise error
        out = b"".join(parts) if len(parts) != 1 else bytes(parts[0])
        if len(out) < size:
            # a server that shortened a read: fetch the rest the slow way
            rest = self.sftp.open(path, "rb")
            try:
                rest.seek(len(out))
                out += rest.read(size - len(out))
            finally:
                rest.close()
        st = parse_attrs(body) if kind == ATTRS else None
        return out, (False if st is not None and st.size is None else st)

    def write(self, handle: bytes, offset: int, data: bytes | memoryview, close: bool) -> None:
        """WRITE requests pipelined WRITE_DEPTH deep; returns when all are acknowledged.
        With `close`, the CLOSE rides behind the last write."""
        self.dirty = True
        mv = memoryview(data).cast("B")
        hs = sftp_string(handle)
        step = self.write_max
        pending: list[int] = []
        first = 0
        pos, total = 0, len(mv)
        error: BaseException | None = None

        def ack() -> None:
            nonlocal first, error
            rid = pending[first]
            first += 1
            try:
                self.reply(rid)
            except OSError as exc:
                if error is None:
                    error = exc

        while pos < total:
            n = min(step, total - pos)
            pending.append(self._send(WRITE, hs + RANGE.pack(offset + pos, n), mv[pos : pos + n]))
            pos += n
            while len(pending) - first >= WRITE_DEPTH:
                ack()
        if close:
            pending.append(self._send(CLOSE, hs))
        while first < len(pending):
            ack()
        self.dirty = False
        if error is not None:
            raise error

    def write_small(
        self,
        path: str,
        data: bytes | memoryview,
        mode: int | None,
        mtime: int | None,
        fsync: bool = False,
    ) -> None:
        """A whole small file in two round trips: OPEN (create, truncate), then its WRITEs, one
        FSETSTAT for mode and times (and the fsync) and the CLOSE in a single channel write;
        returns once all are acknowledged (the first failure is raised)."""
        handle = self.open(path, FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        self.dirty = True
        hs = sftp_string(handle)
        mv = memoryview(data).cast("B")
        batch: list[bytes | memoryview] = []
        rids = [
            self._send(
                WRITE,
                hs + RANGE.pack(o, min(self.write_max, len(mv) - o)),
                mv[o : o + self.write_max],
                batch,
            )
            for o in range(0, len(mv), self.write_max)
        ]
        attrs = _attrs(mode, mtime)
        if attrs:
            rids.append(self._send(FSETSTAT, hs + attrs, batch=batch))
        sync = self._send(EXTENDED, FSYNC + hs, batch=batch) if fsync else None
        if sync is not None:
            rids.append(sync)
        rids.append(self._send(CLOSE, hs, batch=batch))
        error: OSError | None = None
        for rid, (_, body) in zip(rids, self._collect(batch, rids), strict=True):
            error = error or (self._fsync_error(body) if rid == sync else _error(body))
        self.dirty = False
        if error is not None:
            raise error

    def sync_file(self, path: str) -> None:
        """fsync@openssh.com on a file written through other handles (the chunks of a large
        one): OPEN, then the fsync and the CLOSE in one channel write."""
        hs = sftp_string(self.open(path, FXF_WRITE))
        self.dirty = True
        batch: list[bytes | memoryview] = []
        rids = [self._send(EXTENDED, FSYNC + hs, batch=batch), self._send(CLOSE, hs, batch=batch)]
        (_, synced), (_, closed) = self._collect(batch, rids)
        self.dirty = False
        error = self._fsync_error(synced) or _error(closed)
        if error is not None:
            raise error

    def _fsync_error(self, body: Body | OSError) -> OSError | None:
        """An fsync's failure; None where it succeeded or the server declines fsync (noted in
        `fsync_refused`: the file is still written)."""
        if isinstance(body, OSError) and refused(body):
            self.fsync_refused = True
            return None
        return _error(body)

    def put_many(self, files: list[Put], fsync: bool = False) -> list[OSError | None]:
        """Several small files in three round trips however many they are: every OPEN, then
        every file's WRITEs, FSETSTAT (fsync) and CLOSE, then every posix-rename, each step in one
        channel write. A file that fails drops out of the later steps, its temp removed in
        the last one unless it was `written` (then only the rename failed); one outcome per
        file. Replies may come in any order."""
        self.dirty = True
        errors: list[OSError | None] = [None] * len(files)
        batch: list[bytes | memoryview] = []
        handles: dict[int, bytes] = {}
        opened = self._open_many([f.tmp for f in files], FXF_WRITE | FXF_CREAT | FXF_TRUNC, batch)
        for i, got in enumerate(opened):
            if isinstance(got, bytes):
                handles[i] = got
            else:
                errors[i] = got
        owner: list[int] = []  # file index of each request of this step
        rids: list[int] = []
        syncs: set[int] = set()
        for i, handle in handles.items():
            f, hs = files[i], sftp_string(handle)
            mv = memoryview(f.data).cast("B")
            for o in range(0, len(mv), self.write_max):
                n = min(self.write_max, len(mv) - o)
                rids.append(self._send(WRITE, hs + RANGE.pack(o, n), mv[o : o + n], batch))
                owner.append(i)
            attrs = _attrs(f.mode, f.mtime)
            if attrs:
                rids.append(self._send(FSETSTAT, hs + attrs, batch=batch))
                owner.append(i)
            if fsync:
                rid = self._send(EXTENDED, FSYNC + hs, batch=batch)
                syncs.add(rid)
                rids.append(rid)
                owner.append(i)
            rids.append(self._send(CLOSE, hs, batch=batch))
            owner.append(i)
        for i, rid, (_, body) in zip(owner, rids, self._collect(batch, rids), strict=True):
            errors[i] = errors[i] or (self._fsync_error(body) if rid in syncs else _error(body))
        owner, rids = [], []
        rename = sftp_string(b"posix-rename@openssh.com")
        for i in handles:
            tmp = sftp_string(path_bytes(files[i].tmp))
            if errors[i] is None:
                files[i].written = True
                body = rename + tmp + sftp_string(path_bytes(files[i].final))
                rids.append(self._send(EXTENDED, body, batch=batch))
                owner.append(i)
            else:
                rids.append(self._send(REMOVE, tmp, batch=batch))  # its outcome changes nothing
                owner.append(-1)
        for i, (_, body) in zip(owner, self._collect(batch, rids), strict=True):
            if i >= 0 and isinstance(body, OSError):
                errors[i] = body
        self.dirty = False
        return errors

    def get_many(self, files: list[tuple[str, int]]) -> list[tuple[bytes, Stat] | None]:
        """Whole small files of (path, size) in two round trips however many they are: every
        OPEN, then every file's READs, CLOSE and an LSTAT taken after the reads, each step in
        one channel write. A file is None where anything failed or came short."""
        self.dirty = True
        out: list[tuple[bytes, Stat] | None] = [None] * len(files)
        batch: list[bytes | memoryview] = []
        opened = self._open_many([p for p, _ in files], FXF_READ, batch)
        handles = {i: h for i, h in enumerate(opened) if isinstance(h, bytes)}
        owner: list[int] = []
        rids: list[int] = []
        for i, handle in handles.items():
            path, size = files[i]
            hs = sftp_string(handle)
            for o in range(0, size, self.read_max):
                n = min(self.read_max, size - o)
                rids.append(self._send(READ, hs + RANGE.pack(o, n), batch=batch))
                owner.append(i)
            rids.append(self._send(CLOSE, hs, batch=batch))
            rids.append(self._send(LSTAT, sftp_string(path_bytes(path)), batch=batch))
            owner += (i, i)
        parts: dict[int, list[Body]] = {i: [] for i in handles}
        failed: set[int] = set()
        for i, (kind, body) in zip(owner, self._collect(batch, rids), strict=True):
            if isinstance(body, OSError):
                failed.add(i)
            elif kind == DATA:
                parts[i].append(body)
            elif kind == ATTRS and i not in failed:
                data = b"".join(parts[i]) if len(parts[i]) != 1 else bytes(parts[i][0])
                if len(data) == files[i][1]:
                    out[i] = (data, parse_attrs(body))
        self.dirty = False
        return out

    def _open_many(
        self, paths: list[str], flags: int, batch: list[bytes | memoryview]
    ) -> list[bytes | OSError]:
        """OPEN every path in one channel write: a handle, or the error, for each."""
        rids = [self._send(OPEN, _open_body(p, flags), batch=batch) for p in paths]
        return [
            body if isinstance(body, OSError) else self._handle(kind, body)
            for kind, body in self._collect(batch, rids)
        ]

    def _collect(
        self, batch: list[bytes | memoryview], rids: list[int]
    ) -> list[tuple[int, Body | OSError]]:
        """Send `batch` in one channel write, then read one reply per request id: in the
        order of `rids`, a failed status as the OSError it stands for."""
        if batch:
            self.sendall(batch)
            batch.clear()
        got: dict[int, tuple[int, Body | OSError]] = {}
        want = set(rids)
        while len(got) < len(rids):
            kind, rid, body = self._recv()
            if rid not in want or rid in got:
                raise self._broken(f"SFTP reply to unknown request {rid}")
            failed = kind == STATUS and U32.unpack_from(body, 0)[0] != FX_OK
            got[rid] = (kind, status_error(body) if failed else body)
        return [got[r] for r in rids]

    def set_meta(self, path: str, mode: int | None, mtime: int | None) -> None:
        """One SETSTAT for mode and times (none where neither is given)."""
        attrs = _attrs(mode, mtime)
        if attrs:
            self.reply(self._send(SETSTAT, sftp_string(path_bytes(path)) + attrs))


def open_session(transport: paramiko.Transport, sftp: paramiko.SFTPClient) -> Session:
    """A wire Session on a new connection, its request sizes asked of the server."""
    s = Session(transport, sftp)
    s.query_limits()
    return s


def _error(body: Body | OSError) -> OSError | None:
    return body if isinstance(body, OSError) else None


def _open_body(path: str, flags: int) -> bytes:
    return sftp_string(path_bytes(path)) + U32.pack(flags) + U32.pack(0)


def _attrs(mode: int | None, mtime: int | None) -> bytes:
    """An ATTRS block with the permissions and times given; empty when neither is."""
    flags, attrs = 0, b""
    if mode is not None:
        flags |= ATTR_PERMISSIONS
        attrs += U32.pack(mode)
    if mtime is not None:
        flags |= ATTR_ACMODTIME
        attrs += U32.pack(mtime) * 2
    return U32.pack(flags) + attrs if flags else b""
