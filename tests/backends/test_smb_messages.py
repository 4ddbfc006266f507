"""The struct-packed SMB2 bodies of the small-file compounds are byte for byte what
smbprotocol's Structures pack, and their answers parse to what smbprotocol reads. The
parsers of answers take any bytes a server may send: a value, or MalformedAnswer."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smbprotocol.file_info import FileBasicInformation, FileRenameInformation
from smbprotocol.open import (
    CloseFlags,
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    ImpersonationLevel,
    SMB2CloseRequest,
    SMB2CloseResponse,
    SMB2CreateRequest,
    SMB2CreateResponse,
    SMB2FlushRequest,
    SMB2ReadRequest,
    SMB2ReadResponse,
    SMB2SetInfoRequest,
    SMB2WriteRequest,
)
from smbprotocol.structure import DateTimeField

from ferry.mover.backends.smb.errors import MalformedAnswer, classify
from ferry.mover.backends.smb.wire import messages as m
from ferry.mover.backends.smb.wire.connection import LightHeaderResponse
from ferry.mover.errors import ErrorKind

FILE_ID = bytes(range(16))
NAME = "dir\\sub dir\\fä 😀.txt"


@pytest.mark.parametrize("name", [NAME, ""])
def test_create(name: str) -> None:
    own = SMB2CreateRequest()
    own["impersonation_level"] = ImpersonationLevel.Impersonation
    own["desired_access"] = 0x120089
    own["file_attributes"] = FileAttributes.FILE_ATTRIBUTE_NORMAL
    own["share_access"] = 7
    own["create_disposition"] = CreateDisposition.FILE_OVERWRITE_IF
    own["create_options"] = CreateOptions.FILE_NON_DIRECTORY_FILE
    own["buffer_path"] = name.encode("utf-16-le") or b"\0\0"  # as smbprotocol's Open does
    mine = m.create(
        name,
        0x120089,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        7,
        CreateDisposition.FILE_OVERWRITE_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
        ImpersonationLevel.Impersonation,
    )
    assert mine.pack() == own.pack() and len(mine) == len(own)


def test_read_write_flush_close() -> None:
    read = SMB2ReadRequest()
    read["length"], read["offset"], read["file_id"] = 70_000, 5, m.RELATED
    read["padding"] = b"\x50"
    mine = m.read(5, 70_000)
    assert mine.pack() == read.pack()
    # what smbprotocol's connection reads to charge credits
    assert (
        mine["length"].get_value() == 70_000 and mine["read_channel_info_length"].get_value() == 0
    )

    write = SMB2WriteRequest()
    write["offset"], write["file_id"], write["buffer"] = 12345, FILE_ID, b"some data"
    mine = m.write(12345, memoryview(b"some data"), FILE_ID)
    assert mine.pack() == write.pack() and mine["length"].get_value() == 9

    for attributes in (True, False):
        close = SMB2CloseRequest()
        close["file_id"] = FILE_ID
        if attributes:
            close["flags"] = CloseFlags.SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB
        assert m.close(FILE_ID, attributes).pack() == close.pack()

    flush = SMB2FlushRequest()
    flush["file_id"] = FILE_ID
    assert m.flush(FILE_ID).pack() == flush.pack()


def _set_info(info: FileBasicInformation | FileRenameInformation) -> bytes:
    req = SMB2SetInfoRequest()
    req["info_type"], req["file_info_class"] = info.INFO_TYPE, info.INFO_CLASS
    req["file_id"], req["buffer"] = FILE_ID, info
    return bytes(req.pack())


def test_set_info() -> None:
    mtime_ns = 1_600_000_000_123_456_700
    basic = FileBasicInformation()
    ft = mtime_ns // 100 + DateTimeField.EPOCH_FILETIME
    basic["last_access_time"] = basic["last_write_time"] = ft
    assert m.set_mtime(FILE_ID, mtime_ns).pack() == _set_info(basic)
    rename = FileRenameInformation()
    rename["replace_if_exists"] = True
    rename["file_name"] = NAME
    assert m.set_rename(FILE_ID, NAME).pack() == _set_info(rename)


def test_answers() -> None:
    created = SMB2CreateResponse()
    created["file_id"] = FILE_ID
    created["end_of_file"] = 4321
    created["file_attributes"] = FileAttributes.FILE_ATTRIBUTE_ARCHIVE
    raw = bytearray(created.pack())
    raw[24:32] = (133_000_000_001_234_567).to_bytes(8, "little")  # LastWriteTime
    assert m.created_file_id(bytes(raw)) == FILE_ID
    assert m.created_attributes(bytes(raw)) == (
        FileAttributes.FILE_ATTRIBUTE_ARCHIVE,
        4321,
        (133_000_000_001_234_567 - DateTimeField.EPOCH_FILETIME) * 100,
    )

    data = os.urandom(3000)
    read = SMB2ReadResponse()
    read["data_offset"] = 80  # as servers answer: right after the 16-byte fixed part
    read["buffer"] = data
    assert m.read_data(read.pack(), 3000) == data

    closed = SMB2CloseResponse()
    closed["end_of_file"] = 987_654
    raw = bytearray(closed.pack())
    raw[24:32] = (133_000_000_001_234_567).to_bytes(8, "little")  # LastWriteTime, 100 ns units
    own = SMB2CloseResponse()
    own.unpack(bytes(raw))
    size, mtime_ns = m.closed_size_mtime(bytes(raw))
    assert size == own["end_of_file"].get_value() == 987_654
    assert mtime_ns == (133_000_000_001_234_567 - DateTimeField.EPOCH_FILETIME) * 100
    seen = own["last_write_time"].get_value()  # smbprotocol's datetime, to the microsecond
    assert mtime_ns // 1000 == int(seen.timestamp()) * 10**6 + seen.microsecond


def _read_answer(data: bytes, offset: int = 80) -> bytes:
    read = SMB2ReadResponse()
    read["data_offset"] = offset
    read["buffer"] = data
    return bytes(read.pack())


def _patched(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value) :]


BAD_READS = {
    "data past the end": _patched(_read_answer(b"d" * 100), 4, (101).to_bytes(4, "little")),
    "offset past the end": _read_answer(b"d" * 100, offset=81),
    "offset inside the fixed part": _read_answer(b"d" * 100, offset=72),
    "offset before the body": _read_answer(b"d" * 100, offset=0),
    "more than asked for": _read_answer(b"d" * 1001),
    "short": _read_answer(b"d" * 100)[:10],
    "empty": b"",
    "wrong structure size": _patched(_read_answer(b"d" * 100), 0, (9).to_bytes(2, "little")),
}


@pytest.mark.parametrize("case", sorted(BAD_READS))
def test_read_answer_outside_its_message(case: str) -> None:
    """A READ answer's DataOffset/DataLength are the server's word: data they place outside
    the message (or beyond what was asked) is a classified protocol error, not a short or
    shifted slice (smbprotocol's own parser ignores DataOffset and slices what is there)."""
    with pytest.raises(MalformedAnswer) as caught:
        m.read_data(BAD_READS[case], 1000)
    err = classify(caught.value, "smb://server/share", "f")
    assert err.kind == ErrorKind.TRANSIENT and "malformed answer" in str(err)


def test_created_and_closed_answers_bounded() -> None:
    created = SMB2CreateResponse()
    created["file_id"] = FILE_ID
    raw = bytes(created.pack())
    for bad in (raw[:79], _patched(raw, 0, (88).to_bytes(2, "little")), b""):
        for parse in (m.created_file_id, m.created_attributes):
            with pytest.raises(MalformedAnswer):
                parse(bad)
    huge = _patched(raw, 48, (2**64 - 1).to_bytes(8, "little"))  # EndOfFile
    with pytest.raises(MalformedAnswer):
        m.created_attributes(huge)
    closed = bytes(SMB2CloseResponse().pack())
    for bad in (closed[:59], _patched(closed, 0, (61).to_bytes(2, "little"))):
        with pytest.raises(MalformedAnswer):
            m.closed_size_mtime(bad)
    with pytest.raises(MalformedAnswer):
        m.closed_size_mtime(_patched(closed, 24, (2**63).to_bytes(8, "little")))  # mtime


# -- property tests: random bytes and mutations of valid answers -------------------------------


def _valid_answers() -> list[bytes]:
    created = SMB2CreateResponse()
    created["file_id"] = FILE_ID
    created["end_of_file"] = 4321
    closed = SMB2CloseResponse()
    closed["end_of_file"] = 99
    return [_read_answer(os.urandom(300)), bytes(created.pack()), bytes(closed.pack())]


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid answer with bytes replaced, cut off or appended."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    raw = bytearray(draw(st.sampled_from(_valid_answers())))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(raw)))
    return bytes(raw[: len(raw) - cut if draw(st.booleans()) else len(raw)]) + draw(
        st.binary(max_size=64)
    )


PARSERS = [
    lambda a: m.read_data(a, 256),
    m.created_file_id,
    m.created_attributes,
    m.closed_size_mtime,
    lambda a: LightHeaderResponse().unpack(a),
]


@settings(max_examples=400, deadline=1000)
@given(answer=answers(), which=st.integers(0, len(PARSERS) - 1))
def test_parsers_take_any_bytes(answer: bytes, which: int) -> None:
    """Whatever a server sends, a parser returns a bounded value or raises MalformedAnswer
    (classified: TRANSIENT, the connection is dropped), never IndexError/struct.error."""
    try:
        out = PARSERS[which](answer)
    except MalformedAnswer:
        return
    if which == 0:
        assert isinstance(out, bytes) and len(out) <= min(256, len(answer))
    elif which in (2, 3):
        assert all(-(2**64) * 100 < v < 2**63 * 100 for v in out)


def test_light_header_refuses_short_or_foreign() -> None:
    for bad in (b"", b"\xfeSMB" + bytes(10), b"\xfdSMB" + bytes(100)):
        with pytest.raises(MalformedAnswer):
            LightHeaderResponse().unpack(bad)
