"""What crosses the wire between a `ferry://` client and `ferry serve`, defined once.

HTTP/1.1 over mutual TLS frames every exchange; this module holds the rest both sides
share: the routes, the limits a peer must stay within, the JSON shapes of entries and
options, and the one binary encoding (a piece of file data, raw or zstd, with its raw
length declared and bounded). Everything decoded here came from a peer and is checked:
a wrong type, an out-of-range number or a path that could leave the root is a
`ErrorKind.PROTOCOL` or `ErrorKind.UNSAFE_PATH` error, never an exception of another kind.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from ferry.mover import acl
from ferry.mover.acl import AclText
from ferry.mover.backends.base import INTERNAL_PREFIX, Entry, EntryType
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import MiB, Preserve

API = "/v1/"
VERSION = 1
FEATURE_ZSTD = "zstd"
FEATURE_BATCH = "batch"  # put_small / get_small
FEATURE_DELTA = "delta"  # signature / delta (DeltaBasis)
FEATURE_PROBE = "probe"  # a throwaway upload the client times (MeasuresLink)
FEATURE_ACLS = "acls"  # POSIX ACLs: the "acls" route, and "acls" beside an entry it writes
MAX_CHUNK_LINE = 1024  # a chunked body's size line (with extensions)
MAX_TRAILERS = 16

# Limits both sides enforce on what the other sends.
MAX_PIECE = 8 * MiB  # raw bytes of one read or write request
MAX_BODY = MAX_PIECE + 64 * 1024  # any request body (a piece may grow a little compressed)
MAX_JSON = 1 * MiB  # a JSON request body
MAX_REPLY_JSON = 256 * MiB  # a JSON reply (a listing of a very wide directory)
MAX_PATH = 4096  # bytes of a relative path
MAX_NAME = 255  # bytes of one component
MAX_TARGET = 4096  # bytes of a symlink target
MAX_BATCH = 256  # files in one put_small / get_small
I64 = 1 << 63

# Headers of data requests and replies.
H_RAW = "X-Ferry-Raw-Length"
H_ENCODING = "X-Ferry-Encoding"  # "identity" or "zstd"
H_DIGEST = "X-Ferry-Digest"  # the Ferry digest of the raw bytes of a read
H_HANDLE = "X-Ferry-Handle"
H_OFFSET = "X-Ferry-Offset"
IDENTITY = "identity"
ZSTD = "zstd"

# A chunk is sent compressed only when that saves at least this much of it.
SHRINK = 0.9
ZSTD_LEVEL = 1  # fast: the wire is usually faster than a higher level's compressor
MAX_WINDOW = 8 * MiB  # the largest zstd window a decompressor accepts (memory bound)


def protocol_error(message: str, path: str | None = None) -> FerryError:
    return FerryError(ErrorKind.PROTOCOL, message, path)


# -- paths ---------------------------------------------------------------------------------


def check_path(rel: object, what: str = "path") -> str:
    """A relative path a peer sent, refused unless it names something below the root:
    `/`-separated, no leading `/`, no empty, `.` or `..` component, no NUL, no Ferry
    internal name, within the length caps. A backslash is an ordinary byte on POSIX, so a
    name holding one stays a single name inside the root."""
    if not isinstance(rel, str):
        raise protocol_error(f"{what} must be a string")
    if rel == "":
        return rel
    try:
        size = len(rel.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} is not a valid file name") from None
    if size > MAX_PATH:
        raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} is longer than {MAX_PATH} bytes")
    if "\x00" in rel:
        raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} holds a NUL byte")
    if rel.startswith("/"):
        raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} {rel!r} is absolute")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} {rel!r} has an empty, . or .. part")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} has a name over {MAX_NAME} bytes")
        if part.startswith(INTERNAL_PREFIX):
            raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} {rel!r} names a Ferry internal file")
    return rel


# -- numbers and JSON -------------------------------------------------------------------------


def as_int(value: object, what: str, low: int = 0, high: int = I64 - 1) -> int:
    if type(value) is not int or not low <= value <= high:
        raise protocol_error(f"{what} must be a whole number from {low} to {high}")
    return value


def as_str(value: object, what: str, limit: int = MAX_PATH) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise protocol_error(f"{what} must be a string of at most {limit} characters")
    return value


def dumps(doc: object) -> bytes:
    # ensure_ascii keeps names with surrogate escapes (non-UTF-8 bytes) encodable.
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def loads(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise protocol_error(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise protocol_error(f"{what}: expected a JSON object")
    return doc


# -- entries ------------------------------------------------------------------------------------

_ENTRY_INTS = (
    ("size", 0, I64 - 1),
    ("mtime_ns", -I64, I64 - 1),
    ("mode", 0, 0o7777),
    ("uid", -1, (1 << 32) - 1),
    ("gid", -1, (1 << 32) - 1),
    ("nlink", 0, (1 << 32) - 1),
    ("ino", 0, (1 << 64) - 1),
    ("dev", 0, (1 << 64) - 1),
    ("blocks", -1, I64 - 1),
)


def entry_to_json(e: Entry) -> list[Any]:
    """An entry as a compact array: name, type, the numbers of _ENTRY_INTS, target, digest."""
    return [
        e.name,
        int(e.type),
        e.size,
        e.mtime_ns,
        e.mode & 0o7777,
        e.uid,
        e.gid,
        e.nlink,
        e.ino,
        e.dev,
        e.blocks,
        e.target,
        e.digest,
    ]


def entry_from_json(doc: object, what: str = "entry") -> Entry:
    if not isinstance(doc, list) or len(doc) != 13:
        raise protocol_error(f"{what} must be an array of 13 fields")
    name = as_str(doc[0], f"{what} name", MAX_NAME * 4)
    kind = as_int(doc[1], f"{what} type", 0, len(EntryType) - 1)
    nums = [
        as_int(v, f"{what} {n}", lo, hi)
        for v, (n, lo, hi) in zip(doc[2:11], _ENTRY_INTS, strict=True)
    ]
    target = doc[11]
    if target is not None:
        target = as_str(target, f"{what} symlink target", MAX_TARGET)
        if "\x00" in target:
            raise FerryError(ErrorKind.UNSAFE_PATH, f"{what} symlink target holds a NUL byte")
    digest = None if doc[12] is None else as_str(doc[12], f"{what} digest", 128)
    size, mtime_ns, mode, uid, gid, nlink, ino, dev, blocks = nums
    return Entry(
        name,
        EntryType(kind),
        size,
        mtime_ns,
        mode,
        uid,
        gid,
        nlink,
        ino,
        dev,
        blocks,
        target=target,
        digest=digest,
    )


def acls_to_json(a: AclText | None) -> list[str] | None:
    """An entry's ACLs beside it in a request or reply: [access, default], or null."""
    return None if a is None else [a.access, a.default]


def acls_from_json(doc: object, what: str = "acls") -> AclText | None:
    """A peer's ACLs, each text bounded and validated by `acl.parse` (a PROTOCOL error, a
    400 at the server, naming what is wrong); null for none read or sent."""
    if doc is None:
        return None
    if not isinstance(doc, list) or len(doc) != 2:
        raise protocol_error(f"{what} must be an array of two ACL texts (access, default) or null")
    access = _peer_acl(as_str(doc[0], f"{what} access", acl.MAX_TEXT), f"{what}: access ACL")
    default = _peer_acl(as_str(doc[1], f"{what} default", acl.MAX_TEXT), f"{what}: default ACL")
    return AclText(access, default)


def _peer_acl(text: str, what: str) -> str:
    """`acl.parse`'s refusal of a peer's text is the peer's fault: a PROTOCOL error."""
    try:
        return acl.parse(text, what)
    except FerryError as err:
        raise protocol_error(err.args[0]) from None


def preserve_to_json(p: Preserve) -> list[str]:
    return p.flags()


def preserve_from_json(doc: object) -> Preserve:
    if not isinstance(doc, list) or not all(isinstance(f, str) for f in doc):
        raise protocol_error("preserve must be an array of flag names")
    names = set(Preserve._fields)
    unknown = [f for f in doc if f not in names]
    if unknown:
        raise protocol_error(f"preserve: unknown flag {unknown[0]!r}")
    return Preserve(**{f: f in doc for f in Preserve._fields})


# -- file data -----------------------------------------------------------------------------------


class Codec:
    """zstd for pieces of file data: compress if it pays, decompress within a bound.

    zstandard's (de)compressor objects are not thread-safe: one Codec per thread."""

    def __init__(self) -> None:
        import zstandard

        self._z = zstandard
        self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._d = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)

    def compress(self, data: bytes | memoryview) -> bytes | None:
        """The compressed piece, or None when it would not shrink below SHRINK of its size."""
        out = self._c.compress(data)
        return out if len(out) <= len(data) * SHRINK else None

    def decompress(self, data: bytes | memoryview, raw_len: int) -> bytes:
        """Exactly `raw_len` bytes from a zstd frame, or a PROTOCOL error: never more output
        than declared (a lying peer cannot make this allocate past the piece limit)."""
        try:
            reader = self._d.stream_reader(memoryview(data), read_across_frames=True)
            out = reader.read(raw_len + 1) if raw_len else reader.read(1)
            while len(out) < raw_len + 1:
                more = reader.read(raw_len + 1 - len(out))
                if not more:
                    break
                out += more
        except self._z.ZstdError as exc:
            raise protocol_error(f"compressed data is damaged: {exc}") from None
        if len(out) != raw_len:
            raise protocol_error(
                f"compressed data holds {'more' if len(out) > raw_len else len(out)} bytes, "
                f"not the {raw_len} declared"
            )
        return out


_codecs = threading.local()


def codec() -> Codec:
    """This thread's zstd codec (zstandard's objects are not thread-safe)."""
    c: Codec | None = getattr(_codecs, "codec", None)
    if c is None:
        c = _codecs.codec = Codec()
    return c


def decode_piece(
    codec_for: Any, body: bytes, encoding: str | None, raw: str | None, limit: int = MAX_PIECE
) -> bytes:
    """The raw bytes of a piece a peer sent with its H_ENCODING and H_RAW headers."""
    try:
        raw_len = int(raw or "")
    except ValueError:
        raise protocol_error(f"{H_RAW} header missing or not a number") from None
    if not 0 <= raw_len <= limit:
        raise protocol_error(f"{H_RAW} {raw_len} is outside 0..{limit}")
    if encoding in (None, IDENTITY):
        if len(body) != raw_len:
            raise protocol_error(f"{len(body)} bytes sent, {raw_len} declared")
        return body
    if encoding != ZSTD:
        raise protocol_error(f"unknown {H_ENCODING} {encoding!r}")
    codec: Codec = codec_for()
    return codec.decompress(body, raw_len)


# -- delta streams: after the JSON header, each HTTP chunk one piece, raw or zstd --------------

RAW_PIECE = b"r"  # then the bytes
ZSTD_PIECE = b"z"  # then the raw length (4 bytes, big-endian) and a zstd frame


def frame_piece(body: bytes | memoryview, encoding: str, raw_len: int) -> bytes:
    """One piece of a delta stream as its own chunk of the chunked body."""
    if encoding == ZSTD:
        return b"".join([ZSTD_PIECE, raw_len.to_bytes(4, "big"), body])
    return b"".join([RAW_PIECE, body])


def unframe_piece(codec_for: Any, chunk: bytes) -> tuple[bytes, bool]:
    """(raw bytes, whether it came compressed) of one framed piece, bounded by MAX_PIECE."""
    flag = chunk[:1]
    if flag == RAW_PIECE:
        if len(chunk) - 1 > MAX_PIECE:
            raise protocol_error(f"a delta piece over {MAX_PIECE} bytes")
        return chunk[1:], False
    if flag == ZSTD_PIECE and len(chunk) >= 5:
        raw = int.from_bytes(chunk[1:5], "big")
        return decode_piece(codec_for, chunk[5:], ZSTD, str(raw)), True
    raise protocol_error("a delta piece must start with 'r' or 'z'")


# -- batches: a JSON header and the files' bytes in one body ---------------------------------

_HEADER_LEN = 4


def pack_batch(header: dict[str, Any], payloads: Sequence[bytes | memoryview]) -> bytes:
    """A 4-byte big-endian header length, the JSON header, then the payloads back to back
    (their lengths are in the header, one "len" per file, in order)."""
    head = dumps(header)
    return b"".join([len(head).to_bytes(_HEADER_LEN, "big"), head, *payloads])


def unpack_batch(body: bytes, what: str) -> tuple[dict[str, Any], list[dict[str, Any]], memoryview]:
    """(header, its "files" list, the payload area), checked: the header within MAX_JSON,
    at most MAX_BATCH files, and their declared lengths exactly filling the rest."""
    if len(body) < _HEADER_LEN:
        raise protocol_error(f"{what}: body too short for a batch header")
    n = int.from_bytes(body[:_HEADER_LEN], "big")
    if n > MAX_JSON or _HEADER_LEN + n > len(body):
        raise protocol_error(f"{what}: batch header length {n} is out of bounds")
    header = loads(body[_HEADER_LEN : _HEADER_LEN + n], what)
    files = header.get("files")
    if not isinstance(files, list) or len(files) > MAX_BATCH:
        raise protocol_error(f"{what}: files must be an array of at most {MAX_BATCH}")
    rest = memoryview(body)[_HEADER_LEN + n :]
    total = 0
    for f in files:
        if f is None:
            continue
        if not isinstance(f, dict):
            raise protocol_error(f"{what}: each file must be an object or null")
        total += as_int(f.get("len"), f"{what}: len", 0, MAX_BODY)
    if total != len(rest):
        raise protocol_error(f"{what}: files declare {total} bytes, the body holds {len(rest)}")
    return header, files, rest


def tls_reason(exc: BaseException) -> str:
    """Why a certificate, key or CA file did not load: an OSError's strerror or an
    SSLError's reason, never the file's contents."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or "not a PEM certificate or key")
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
