"""SFTP replies from a hostile or broken server: bounded, checked, and fatal to the session.

The parsers are pure functions over bytes, driven by hypothesis with random bytes and
mutations of valid replies. The backend tests run Ferry's real client against a stand-in
server (tests/backends/sftp_peer.py: OpenSSH never sends such replies) that corrupts one
reply: the operation fails as transient, and the pool closes that session instead of
lending it again.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover.backends.base import Entry, EntryType
from ferry.mover.backends.sftp.backend import SFTPBackend
from ferry.mover.backends.sftp.connections import classify
from ferry.mover.backends.sftp.wire import session as w
from ferry.mover.backends.sftp.wire.ssh_send import BATCH, MAX_PACKET, GcmSender
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Preserve
from tests.backends.helpers import ok, transfer
from tests.backends.sftp_peer import Peer, Tamper, frame

U32 = struct.Struct(">I")


# -- the parsers, on bytes ---------------------------------------------------------------
def _string(b: bytes) -> bytes:
    return U32.pack(len(b)) + b


def _attrs(flags: int, size: int = 7, mtime: int = 9) -> bytes:
    out = U32.pack(flags)
    if flags & w.ATTR_SIZE:
        out += struct.pack(">Q", size)
    if flags & w.ATTR_UIDGID:
        out += struct.pack(">II", 1, 2)
    if flags & w.ATTR_PERMISSIONS:
        out += U32.pack(0o644)
    if flags & w.ATTR_ACMODTIME:
        out += struct.pack(">II", mtime, mtime)
    return out


rids = st.integers(0, 2**32 - 1)
valid_replies = st.one_of(
    st.builds(
        lambda rid, code, text: frame(w.STATUS, U32.pack(rid) + U32.pack(code) + text),
        rids,
        st.integers(0, 10),
        st.one_of(st.just(b""), st.binary(max_size=40).map(lambda t: _string(t) + _string(b""))),
    ),
    st.builds(
        lambda rid, h: frame(w.HANDLE, U32.pack(rid) + _string(h)),
        rids,
        st.binary(max_size=w.MAX_HANDLE),
    ),
    st.builds(
        lambda rid, d: frame(w.DATA, U32.pack(rid) + _string(d)), rids, st.binary(max_size=300)
    ),
    st.builds(
        lambda rid, flags: frame(w.ATTRS, U32.pack(rid) + _attrs(flags)), rids, st.integers(0, 15)
    ),
    st.builds(
        lambda rid, b: frame(w.EXTENDED_REPLY, U32.pack(rid) + b), rids, st.binary(max_size=80)
    ),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid reply, then truncated, cut short, extended, or with bytes overwritten."""
    msg = bytearray(draw(valid_replies))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["cut", "grow", "poke", "length", "inner"]))
        if how == "cut" and msg:
            del msg[draw(st.integers(0, len(msg) - 1)) :]
        elif how == "grow":
            msg += draw(st.binary(min_size=1, max_size=20))
        elif how == "poke" and msg:
            msg[draw(st.integers(0, len(msg) - 1))] = draw(st.integers(0, 255))
        elif how == "length" and len(msg) >= 4:
            msg[0:4] = U32.pack(draw(st.integers(0, 2**32 - 1)))
        elif how == "inner" and len(msg) >= 13:
            msg[9:13] = U32.pack(draw(st.integers(0, 2**32 - 1)))
    return bytes(msg)


def _check(msg: bytes) -> None:
    """Parsing either gives a reply every later reader can use, or a ProtocolError."""
    try:
        kind, _, body = w.parse_reply(msg)
    except w.ProtocolError as exc:
        assert classify(exc, "sftp://peer").kind == ErrorKind.TRANSIENT
        return
    assert kind in (w.STATUS, w.HANDLE, w.DATA, w.ATTRS, w.EXTENDED_REPLY)
    if kind == w.DATA:
        assert len(body) == len(msg) - 13
    elif kind == w.STATUS:
        assert isinstance(w.status_error(body), OSError)
        assert len(str(w.status_error(body))) < w.STATUS_TEXT + 50
    elif kind == w.ATTRS:
        w.parse_attrs(body)
    elif kind == w.HANDLE:
        assert len(body) <= w.MAX_HANDLE


@settings(max_examples=400, deadline=None)
@given(valid_replies)
def test_valid_replies_parse(msg: bytes) -> None:
    kind, rid, body = w.parse_reply(msg)
    assert (kind, rid) == (msg[4], U32.unpack_from(msg, 5)[0])
    assert bytes(body) == (msg[13:] if kind in (w.DATA, w.HANDLE) else msg[9:])
    _check(msg)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=64), mutated()))
def test_random_and_mutated_replies_parse_or_raise_protocol_errors(msg: bytes) -> None:
    _check(msg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=40), mutated(), valid_replies), max_size=12))
def test_stream_of_replies_is_bounded_and_never_stalls(chunks: list[bytes]) -> None:
    """Whatever arrives, in whatever pieces: every call takes a reply out, waits for more
    with less than one whole reply held, or raises a ProtocolError."""
    inbox = w._Chunks()
    for chunk in chunks:
        inbox.add(chunk)
        try:
            while (got := w.next_reply(inbox)) is not None:
                assert got[0] in (w.STATUS, w.HANDLE, w.DATA, w.ATTRS, w.EXTENDED_REPLY)
        except w.ProtocolError:
            return
        assert len(inbox) < 4 + w.MAX_REPLY


def test_a_declared_length_beyond_the_maximum_fails_before_the_body_arrives() -> None:
    inbox = w._Chunks()
    inbox.add(U32.pack(w.MAX_REPLY + 1) + bytes([w.DATA]))
    with pytest.raises(w.ProtocolError, match="longer than"):
        w.next_reply(inbox)


# -- the backend against a hostile server ------------------------------------------------
@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    p = Peer()
    try:
        yield p
    finally:
        p.close()


def once(kind: int, bad: Callable[[bytes], bytes]) -> Tamper:
    """Replace the first reply of `kind` (its body: request id, then fields) with `bad`'s."""
    done: list[bool] = []

    def tamper(t: int, body: bytes) -> bytes | None:
        if t != kind or done:
            return None
        done.append(True)
        return bad(body)

    return tamper


RID = slice(0, 4)
# name: (the type of the reply to replace, its replacement, what the error says)
CASES: dict[str, tuple[int, Callable[[bytes], bytes], str]] = {
    # a length that does not even cover the type and the request id
    "shorter-than-header": (
        w.DATA,
        lambda b: U32.pack(3) + bytes([w.DATA]) + b[:2],
        "shorter than its header",
    ),
    # 2 GiB declared: never buffered for (before, the session waited for it until timeout)
    "longer-than-maximum": (
        w.DATA,
        lambda b: U32.pack(2**31) + bytes([w.DATA]) + b,
        "longer than the protocol allows",
    ),
    # DATA whose inner length says less, or more, than the reply holds
    "data-inner-shorter": (
        w.DATA,
        lambda b: frame(w.DATA, b[RID] + U32.pack(len(b) - 9) + b[8:]),
        "inner length disagrees",
    ),
    "data-inner-longer": (
        w.DATA,
        lambda b: frame(w.DATA, b[RID] + U32.pack(len(b)) + b[8:]),
        "inner length disagrees",
    ),
    "more-data-than-asked": (
        w.DATA,
        lambda b: frame(w.DATA, b[RID] + _string(b[8:] + b"x")),
        "more data than asked",
    ),
    # the CLOSE's STATUS without a whole code, or with a message longer than itself
    "short-status": (w.STATUS, lambda b: frame(w.STATUS, b[RID] + b"\x00\x00"), "too short"),
    "status-text-overruns": (
        w.STATUS,
        lambda b: frame(w.STATUS, b[RID] + U32.pack(0) + U32.pack(1000) + b"ok"),
        "status message longer",
    ),
    # the LSTAT's ATTRS claims a size, ids, mode and times it does not carry
    "short-attrs": (
        w.ATTRS,
        lambda b: frame(w.ATTRS, b[RID] + U32.pack(0xF)),
        "attributes shorter",
    ),
    "handle-too-long": (
        w.HANDLE,
        lambda b: frame(w.HANDLE, b[RID] + _string(b"h" * 1000)),
        "handle longer",
    ),
    "unknown-reply-type": (w.STATUS, lambda b: frame(250, b), "unexpected SFTP reply type"),
    # a reply to a request never made
    "wrong-request-id": (
        w.STATUS,
        lambda b: frame(w.STATUS, U32.pack(U32.unpack(b[RID])[0] + 1000) + b[4:]),
        "reply to request",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_reply_fails_transient_and_the_session_is_not_reused(
    peer: Peer, case: str
) -> None:
    """read_at of a small file: OPEN (HANDLE), READ (DATA), CLOSE (STATUS), LSTAT (ATTRS)."""
    sub = f"hostile-{case}"
    (peer.root / sub).mkdir()
    data = os.urandom(5000)
    (peer.root / sub / "f").write_bytes(data)
    be = SFTPBackend(peer.endpoint(sub))
    try:
        entry = be.stat("f")  # connects: one session, back in the pool
        assert entry is not None and be.conns._idle.qsize() == 1
        first = next(iter(be.conns._all))
        connections = peer.connections
        kind, bad, says = CASES[case]
        peer.tamper = once(kind, bad)
        with pytest.raises(FerryError) as err:
            be.open_read("f", entry).read_at(0, entry.size)
        assert err.value.kind == ErrorKind.TRANSIENT, err.value
        assert says in str(err.value)
        assert "sftp://" in str(err.value)  # names the endpoint
        assert be.conns._idle.qsize() == 0 and not be.conns._all  # closed, not pooled
        assert not first.transport.is_active()
        peer.tamper = None
        assert be.open_read("f", entry).read_at(0, entry.size) == data  # a fresh session
        assert peer.connections == connections + 1
        assert be.conns._idle.qsize() == 1 and next(iter(be.conns._all)) is not first
    finally:
        peer.tamper = None
        be.close()


def test_a_broken_write_reply_drops_the_session(peer: Peer) -> None:
    """A small file's WRITE and CLOSE replies collected in one go (Session.write_small)."""
    (peer.root / "hostile-write").mkdir()
    be = SFTPBackend(peer.endpoint("hostile-write"))
    try:
        assert be.stat("") is not None  # connects: one session, back in the pool
        first = next(iter(be.conns._all))
        entry = Entry("w.bin", EntryType.FILE, size=7, mtime_ns=10**18, mode=0o644)
        writer = be.open_write("w.bin", entry)
        writer.write_at(0, b"payload")  # buffered: written with the commit
        peer.tamper = once(w.STATUS, CASES["short-status"][1])  # the first WRITE's
        with pytest.raises(FerryError) as err:
            writer.commit(entry, None, Preserve())
        assert err.value.kind == ErrorKind.TRANSIENT, err.value
        assert "too short" in str(err.value)
        assert first not in be.conns._all and not first.transport.is_active()
        assert be.conns._idle.qsize() == 0
    finally:
        peer.tamper = None
        be.close()


# -- the packet sealer against a server that declares a huge packet size ----------------
def test_sealer_buffers_are_capped_whatever_the_server_declares(tmp_path: Path) -> None:
    huge = Peer(max_packet=16 * 1024 * 1024)
    try:
        (huge.root / "up").mkdir()
        be = SFTPBackend(huge.endpoint("up"))
        try:
            assert be.stat("") is not None
            s = next(iter(be.conns._all))
            assert s.chan.out_max_packet_size == 16 * 1024 * 1024  # as the server declared
            sender = getattr(s.sendall, "__self__", None)
            assert isinstance(sender, GcmSender)  # the server negotiated AES-GCM
            assert len(sender.sealed) <= BATCH * (MAX_PACKET + 64)
            assert len(sender.plain) <= MAX_PACKET + 64
        finally:
            be.close()
        # and an upload through it arrives whole, in packets the server accepts
        src = tmp_path / "src"
        src.mkdir()
        data = os.urandom(3 * 1024 * 1024 + 11)
        (src / "f.bin").write_bytes(data)
        ok(transfer(str(src), huge.uri("up")))
        assert (huge.root / "up" / "f.bin").read_bytes() == data
    finally:
        huge.close()
