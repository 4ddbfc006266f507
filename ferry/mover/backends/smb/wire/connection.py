"""Tuning of smbprotocol: TCP_NODELAY and copy-free message signing on each connection the
SMB backend opens, and (process-wide) message headers packed and parsed with one struct call.
Hardening, process-wide too: answers on a signing or encrypting session must be signed or
encrypted (smbprotocol takes an unsigned plaintext answer as it comes).

Each replacement is installed only after a probe shows it computes exactly what
smbprotocol's own code does, so a changed smbprotocol keeps its own.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.metadata
import logging
import os
import socket
import struct
import types
from typing import Any, cast

import smbprotocol.connection
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from smbprotocol import Dialects
from smbprotocol.connection import SigningAlgorithms
from smbprotocol.exceptions import SMBException
from smbprotocol.header import Commands, Smb2Flags, SMB2HeaderRequest, SMB2HeaderResponse

from ferry.mover.backends.smb.errors import MalformedAnswer, UnprotectedAnswer
from ferry.mover.backends.smb.wire.messages import Field

SMALL_MESSAGE = 64 * 1024  # signed whole (one copy); larger ones (READ/WRITE data) in pieces


def tune_connection(conn: Any) -> None:
    _nodelay(conn)
    _fast_signing(conn)


def _nodelay(conn: Any) -> None:
    sock = getattr(conn.transport, "_sock", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def signature(
    conn: Any, b_header: bytes, key: bytes, message_id: int, response: bool, command: int
) -> bytes:
    """smbprotocol's Connection._generate_signature without copying the message: it builds
    the zeroed-signature copy with slices and concatenation, three copies of every 1 MiB
    READ/WRITE, which made up a third of the CPU of a big upload. Same MACs over the pieces."""
    view = memoryview(b_header)
    pieces = (view[:48], bytes(16), view[64:])
    if conn.dialect >= Dialects.SMB_3_1_1 and conn.signing_algorithm_id is not None:
        algo = conn.signing_algorithm_id
    elif conn.dialect >= Dialects.SMB_3_0_0:
        algo = SigningAlgorithms.AES_CMAC
    else:
        algo = SigningAlgorithms.HMAC_SHA256
    if algo == SigningAlgorithms.AES_GMAC:
        info = (1 if response else 0) | (2 if command == Commands.SMB2_CANCEL else 0)
        nonce = message_id.to_bytes(8, "little") + info.to_bytes(4, "little")
        if len(view) <= SMALL_MESSAGE:  # one call: 1 us instead of 5.5 for a GCM context
            return AESGCM(key).encrypt(nonce, b"", b"".join(pieces))
        enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        for piece in pieces:
            enc.authenticate_additional_data(piece)
        enc.finalize()
        return bytes(enc.tag)
    if algo == SigningAlgorithms.AES_CMAC:
        mac = cmac.CMAC(algorithms.AES(key))
        for piece in pieces:
            mac.update(cast(bytes, piece))  # any buffer at run time; typed as bytes
        return mac.finalize()
    h = hmac.new(key, digestmod=hashlib.sha256)
    for piece in pieces:
        h.update(piece)
    return h.digest()[:16]


def _fast_signing(conn: Any) -> None:
    """Sign and verify this connection's messages with `signature`, once a probe shows it
    computes exactly what smbprotocol's own method does for the negotiated algorithm (a
    changed smbprotocol keeps its own)."""
    own = conn._generate_signature
    fast = types.MethodType(signature, conn)
    key = os.urandom(16)
    try:
        same = all(
            fast(msg, key, 7, response, command) == own(msg, key, 7, response, command)
            for msg in (os.urandom(200), os.urandom(SMALL_MESSAGE + 200))
            for response in (False, True)
            for command in (Commands.SMB2_WRITE, Commands.SMB2_CANCEL)
        )
    except Exception:
        same = False
    if same:
        conn._generate_signature = fast


# -- headers ------------------------------------------------------------------------------

# The SMB2 sync headers (MS-SMB2 2.2.1.2), 64 bytes: field names as smbprotocol's Structures
_RESPONSE = struct.Struct("<4sHHIHHIIQIIQ16s")
_RESPONSE_FIELDS = (
    "protocol_id",
    "structure_size",
    "credit_charge",
    "status",
    "command",
    "credit_response",
    "flags",
    "next_command",
    "message_id",
    "reserved",
    "tree_id",
    "session_id",
    "signature",
)
_REQUEST = struct.Struct("<4sHHHHHHIIQIIQ16s")
_REQUEST_FIELDS = (
    "protocol_id",
    "structure_size",
    "credit_charge",
    "channel_sequence",
    "reserved",
    "command",
    "credit_request",
    "flags",
    "next_command",
    "message_id",
    "process_id",
    "tree_id",
    "session_id",
    "signature",
)


class _LightHeader:
    """An SMB2 header packed or parsed with one struct call. smbprotocol builds a Structure
    of 14-15 Field objects for each request and response (~50 us to set one up, ~100 us
    with the parse), a large part of the CPU a small file costs. Its connection only sets
    and reads fields, and packs; so do the callers of a response."""

    __slots__ = ("_values",)
    _values: dict[str, Field]

    def __getitem__(self, key: str) -> Field:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if value is None:  # as smbprotocol's fields take it: their zero value
            value = b"" if key == "data" else bytes(16) if key == "signature" else 0
        self._values[key].value = value

    def __len__(self) -> int:
        return 64 + len(self._values["data"].value)

    def __str__(self) -> str:
        shown = {k: v.value for k, v in self._values.items() if k != "data"}
        return f"{type(self).__name__} {shown} data={len(self._values['data'].value)} bytes"


class LightHeaderResponse(_LightHeader):
    """A received header. `pack` returns the bytes it was parsed from, which is what the
    signature check re-packs them to."""

    __slots__ = ("_raw",)

    def unpack(self, data: bytes) -> bytes:
        if len(data) < 64 or data[:4] != b"\xfeSMB":
            raise MalformedAnswer(f"not an SMB2 header ({len(data)} bytes)")
        self._raw = data
        self._values = {
            k: Field(v)
            for k, v in zip(_RESPONSE_FIELDS, _RESPONSE.unpack_from(data, 0), strict=True)
        }
        self._values["data"] = Field(data[64:])
        return b""

    def pack(self) -> bytes:
        return self._raw


class LightHeaderRequest(_LightHeader):
    """A header to send, with smbprotocol's defaults."""

    __slots__ = ()

    def __init__(self) -> None:
        self._values = {k: Field(0) for k in _REQUEST_FIELDS}
        self._values["protocol_id"].value = b"\xfeSMB"
        self._values["structure_size"].value = 64
        self._values["signature"].value = bytes(16)
        self._values["data"] = Field(b"")

    def pack(self) -> bytes:
        v = self._values
        return _REQUEST.pack(*(v[k].value for k in _REQUEST_FIELDS)) + v["data"].value


def _fill(h: Any, flags: tuple[int, ...], data: bytes, response: bool) -> Any:
    """Set every field of header `h` the way smbprotocol's connection does."""
    h["credit_charge"] = 1
    h["command"] = Commands.SMB2_READ
    h["credit_response" if response else "credit_request"] = 32
    if response:
        h["status"] = 0xC0000034
    h["message_id"] = 2**40 + 7
    h["tree_id"] = 5
    h["session_id"] = 2**50 + 3
    h["data"] = data
    h["next_command"] = 64 + len(data)
    for flag in flags:
        h["flags"].set_flag(flag)
    h["signature"] = data[:16].rjust(16, b"s")
    return h


_COMPARED = (
    "protocol_id",
    "credit_charge",
    "command",
    "flags",
    "message_id",
    "reserved",
    "tree_id",
    "session_id",
    "signature",
    "next_command",
    "data",
)


def _same_headers() -> bool:
    """Do the light headers pack and read sample headers exactly as smbprotocol's do?"""
    fl = Smb2Flags
    for flags, data in (
        ((fl.SMB2_FLAGS_SERVER_TO_REDIR, fl.SMB2_FLAGS_SIGNED), os.urandom(41)),
        ((fl.SMB2_FLAGS_SERVER_TO_REDIR, fl.SMB2_FLAGS_ASYNC_COMMAND), b""),
        ((fl.SMB2_FLAGS_RELATED_OPERATIONS,), os.urandom(1024)),
    ):
        own_req = _fill(SMB2HeaderRequest(), flags, data, False)
        light_req = _fill(LightHeaderRequest(), flags, data, False)
        raw = _fill(SMB2HeaderResponse(), flags, data, True).pack()
        own, light = SMB2HeaderResponse(), LightHeaderResponse()
        own.unpack(raw)
        light.unpack(raw)
        if not (
            light_req.pack() == own_req.pack()
            and all(light_req[k].get_value() == own_req[k].get_value() for k in _COMPARED)
            and light.pack() == own.pack() == raw
            and all(light[k].get_value() == own[k].get_value() for k in (*_COMPARED, "status"))
            and all(
                light["flags"].has_flag(f) == own["flags"].has_flag(f)
                for f in (fl.SMB2_FLAGS_SIGNED, fl.SMB2_FLAGS_ASYNC_COMMAND)
            )
        ):
            return False
    own_req, light_req = SMB2HeaderRequest(), LightHeaderRequest()
    for h in (own_req, light_req):
        h["session_id"] = h["tree_id"] = h["data"] = None  # a NEGOTIATE has neither
    return bool(light_req.pack() == own_req.pack())


def light_headers() -> bool:
    """Have smbprotocol's connections pack request and parse response headers with the light
    classes, once a probe shows they pack and read sample headers alike; return whether
    they do. Process-wide: a connection's receive thread starts inside its `connect`,
    before it could be tuned; the async header (cancels) stays smbprotocol's."""
    module = smbprotocol.connection
    if module.SMB2HeaderResponse is LightHeaderResponse:
        return True
    try:
        same = _same_headers()
    except Exception:
        same = False
    if same:
        module.SMB2HeaderRequest = LightHeaderRequest
        module.SMB2HeaderResponse = LightHeaderResponse
    return same


def library_headers() -> None:
    """Give smbprotocol its own header classes back (accelerators off): light_headers is
    process-wide, so a run without accelerators undoes what an earlier one installed."""
    module = smbprotocol.connection
    module.SMB2HeaderRequest = SMB2HeaderRequest
    module.SMB2HeaderResponse = SMB2HeaderResponse


# -- answers must be protected as their requests were -----------------------------------------

STRICT_TESTED = "1.17.0"  # the smbprotocol whose receive loop strict_answers was read against
_ANY_MESSAGE = 0xFFFFFFFFFFFFFFFF  # an oplock break's MessageId: not an answer to a request
_STATUS_PENDING = 0x00000103  # an interim answer: no data, the final one is checked
log = logging.getLogger(__name__)


def check_protected(conn: Any, header: Any, session_id: int) -> None:
    """Refuse a plaintext answer that is not signed on a session whose requests go signed or
    encrypted (MS-SMB2 3.2.5.1.3: such an answer is discarded). smbprotocol verifies a
    signature only when the answer's SIGNED flag says there is one, so a man in the middle
    could strip the flag and rewrite any answer; on an encrypting session it takes a
    plaintext answer in place of the encrypted one. Called for plaintext answers only."""
    session = conn.session_table.get(session_id)
    if session is None:  # NEGOTIATE, or an echo outside any session: nothing is protected
        return
    command = header["command"].get_value()
    if header["message_id"].get_value() == _ANY_MESSAGE or command == Commands.SMB2_SESSION_SETUP:
        return  # smbprotocol checks the final SESSION_SETUP answer itself
    tree = session.tree_connect_table.get(header["tree_id"].get_value())
    if session.encrypt_data or (tree is not None and tree.encrypt_data):
        raise UnprotectedAnswer(
            f"server answer (command {command}) in plaintext on an encrypted session"
        )
    signed = header["flags"].has_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
    pending = header["status"].get_value() == _STATUS_PENDING
    if session.signing_required and session.signing_key and not signed and not pending:
        raise UnprotectedAnswer(
            f"server answer (command {command}) not signed on a session that requires signing"
        )


@functools.cache
def _strict_supported() -> bool:
    """Is the installed smbprotocol the one strict_answers was read against? (warns once)"""
    try:
        version = importlib.metadata.version("smbprotocol")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if version != STRICT_TESTED:
        log.warning(
            "smbprotocol %s is not %s: unsigned answers on signing sessions are not refused",
            version,
            STRICT_TESTED,
        )
    return version == STRICT_TESTED


def strict_answers() -> bool:
    """Have smbprotocol's connections check every plaintext answer with check_protected
    after their own signature check; return whether they do. Only on the smbprotocol
    version whose receive loop was read (it calls verify_signature for each plaintext
    answer and skips it for decrypted ones): another keeps the library's own checks, with
    a warning."""
    cls = smbprotocol.connection.Connection
    if getattr(cls.verify_signature, "ferry_strict", False):
        return True
    if not _strict_supported():
        return False
    own = cls.verify_signature

    def verify_signature(self: Any, header: Any, session_id: int, force: bool = False) -> None:
        try:
            own(self, header, session_id, force)  # a signed answer's signature is checked here
        except SMBException:
            command = header["command"].get_value()
            raise UnprotectedAnswer(
                f"server answer (command {command}) fails its signature check"
            ) from None
        if not force:
            check_protected(self, header, session_id)

    verify_signature.ferry_strict = True  # type: ignore[attr-defined]
    cls.verify_signature = verify_signature
    return True
