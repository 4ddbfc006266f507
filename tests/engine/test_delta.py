"""Block delta (ferry.mover.delta): random edits rebuild byte-identical files with the right
digest, deltas are small where they should be, and hostile signature and delta bytes give a
FerryError within a memory bound, never a crash."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover import delta
from ferry.mover.delta import format as fmt
from ferry.mover.delta import match, signature
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import StreamHasher, digest_bytes

MiB = 1 << 20


def reader(data: bytes):
    return lambda off, n: data[off : off + n]


def encoded_delta(basis: bytes, new: bytes, block_size: int | None = None) -> list[bytes]:
    sig = delta.compute(reader(basis), len(basis), block_size)
    sig = delta.decode_signature(delta.encode_signature(sig), 64 * MiB)
    seen = StreamHasher()
    ops = delta.diff(sig, reader(new), len(new), seen.update)
    chunks = list(
        delta.encode_ops(
            ops, block_size=sig.block_size, basis_size=len(basis), digest=seen.hexdigest
        )
    )
    assert seen.size == len(new)  # observe saw every byte once, in order
    return chunks


def rebuild(basis: bytes, new_size: int, block_size: int, chunks: list[bytes]) -> tuple[bytes, str]:
    out = bytearray()

    def write_at(off: int, data: bytes | memoryview) -> None:
        assert off == len(out)
        out.extend(data)

    stream = delta.open_delta(chunks, len(basis), new_size)
    assert stream.block_size == block_size
    size, digest = delta.apply(reader(basis), len(basis), block_size, stream, write_at)
    assert size == len(out)
    assert stream.digest == digest_bytes(bytes(out))  # the sender's digest, from the end mark
    return bytes(out), digest


def roundtrip(basis: bytes, new: bytes, block_size: int | None = None) -> int:
    """Rebuild `new` from `basis` through the encoded forms; return the encoded delta size."""
    bs = block_size or delta.block_size_for(len(basis))
    chunks = encoded_delta(basis, new, block_size)
    out, digest = rebuild(basis, len(new), bs, chunks)
    assert out == new
    assert digest == digest_bytes(new)
    return sum(len(c) for c in chunks)


# -- random edits ------------------------------------------------------------------------------

EDITS = ("overwrite", "insert", "delete", "truncate", "append", "all-new")


def edit(data: bytes, kind: str, at: float, length: int, rnd: random.Random) -> bytes:
    pos = int(at * len(data))
    fresh = rnd.randbytes(length)
    if kind == "overwrite":
        return data[:pos] + fresh + data[pos + length :]
    if kind == "insert":
        return data[:pos] + fresh + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + length :]
    if kind == "truncate":
        return data[:pos]
    if kind == "append":
        return data + fresh
    return fresh  # all-new


basis_bytes = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(seed % 40_000)),
    # low entropy: repeated blocks and weak-sum collisions everywhere
    st.integers(0, 20_000).map(lambda n: (b"ab" * n)[:n]),
    st.integers(0, 20_000).map(bytes),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    basis=basis_bytes,
    edits=st.lists(
        st.tuples(st.sampled_from(EDITS), st.floats(0, 1), st.integers(0, 3000)), max_size=4
    ),
    block_size=st.sampled_from([None, 256, 512, 1000, 4096]),
    seed=st.integers(0, 2**16),
)
def test_random_edits_rebuild_identical(basis, edits, block_size, seed):
    rnd = random.Random(seed)
    new = basis
    for kind, at, length in edits:
        new = edit(new, kind, at, length, rnd)
    roundtrip(basis, new, block_size)


@pytest.mark.parametrize(
    "basis,new",
    [(b"", b""), (b"", b"x" * 5000), (b"x" * 5000, b""), (b"same" * 3000, b"same" * 3000)],
)
def test_empty_sides(basis, new):
    roundtrip(basis, new, 256)


def test_unchanged_file_is_all_copies():
    data = random.Random(1).randbytes(3 * MiB + 123)
    sig = delta.compute(reader(data), len(data))
    ops = list(delta.diff(sig, reader(data), len(data)))
    assert ops == [delta.Copy(0, sig.count)]


def test_one_byte_change_in_6mb_is_small():
    basis = random.Random(2).randbytes(6_000_000)
    new = bytearray(basis)
    new[3_000_001] ^= 0xFF
    assert roundtrip(basis, bytes(new)) < 64 * 1024


def test_1mib_insertion_in_32mib_costs_about_1mib():
    rnd = random.Random(3)
    basis = rnd.randbytes(32 * MiB)
    new = basis[: 16 * MiB + 777] + rnd.randbytes(MiB) + basis[16 * MiB + 777 :]
    assert roundtrip(basis, new) < 1.2 * MiB


def test_overwrites_between_single_unchanged_blocks():
    """The probe ahead in the old alignment stops at the first block that matches: here
    blocks 1-2 and 4 changed, so block 3 is copied and block 4 sent."""
    rnd = random.Random(11)
    bs = 1024
    basis = rnd.randbytes(8 * bs)
    new = bytearray(basis)
    for block in (1, 2, 4, 6):
        new[block * bs + 100 : block * bs + 900] = rnd.randbytes(800)
    sig = delta.compute(reader(basis), len(basis), bs)
    ops = list(delta.diff(sig, reader(bytes(new)), len(new)))
    copies = [op for op in ops if isinstance(op, delta.Copy)]
    assert copies == [delta.Copy(0, 1), delta.Copy(3, 1), delta.Copy(5, 1), delta.Copy(7, 1)]
    assert roundtrip(basis, bytes(new), bs) < 4 * bs + 200


def test_long_literal_runs_are_flushed_and_matching_resumes():
    rnd = random.Random(10)
    basis = rnd.randbytes(256 * 1024)
    new = basis[:100_000] + rnd.randbytes(3 * MiB + 17) + basis[100_000:]
    sig = delta.compute(reader(basis), len(basis))
    ops = list(delta.diff(sig, reader(new), len(new)))
    literals = [len(op.data) for op in ops if isinstance(op, delta.Literal)]
    assert max(literals) <= fmt.MAX_LITERAL
    assert sum(literals) < 3 * MiB + 17 + 2 * sig.block_size
    assert roundtrip(basis, new) < 3 * MiB + 2 * sig.block_size + 1000


def test_matcher_memory_is_bounded_whatever_the_file_size():
    """A 48 MiB file that matches nothing: the window, one search span's NumPy temporaries
    and the pending literal, never the file."""
    basis = random.Random(12).randbytes(MiB)
    sig = delta.compute(reader(basis), len(basis))
    tracemalloc.start()
    try:
        literal = 0
        for op in delta.diff(sig, lambda off, n: random.Random(off).randbytes(n), 48 * MiB):
            assert isinstance(op, delta.Literal)
            literal += len(op.data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert literal == 48 * MiB
    assert peak < 32 * MiB


def test_moved_blocks_are_found_at_any_offset():
    rnd = random.Random(4)
    basis = rnd.randbytes(2 * MiB)
    new = rnd.randbytes(12_345) + basis[MiB:] + rnd.randbytes(333) + basis[:MiB]
    assert roundtrip(basis, new) < 12_345 + 333 + 2 * delta.block_size_for(len(basis)) + 1000


def test_rolling_weak_sums_equal_block_sums():
    """The matcher's all-offsets sums agree with the signature's per-block sums."""
    data = random.Random(5).randbytes(50_000)
    for bs in (256, 1024, 4096):
        sig = delta.compute(reader(data), len(data), bs)
        weak = match._Roller(bs).weak(np.frombuffer(data, dtype=np.uint8))
        full = len(data) // bs
        assert (weak[np.arange(full) * bs] == sig.weak[:full]).all()


@pytest.mark.parametrize(
    "size,expected",
    [(0, 2048), (6_000_000, 2048), (256 * MiB, 16384), (1 << 30, 32768), (1 << 44, 16 * MiB)],
)
def test_block_size_for(size, expected):
    assert delta.block_size_for(size) == expected


# -- a file or basis that changes --------------------------------------------------------------


def test_source_that_shrinks_while_diffing_is_source_changed():
    basis = random.Random(6).randbytes(100_000)
    sig = delta.compute(reader(basis), len(basis), 1024)
    with pytest.raises(FerryError) as err:
        list(delta.diff(sig, reader(basis[:50_000]), len(basis)))
    assert err.value.kind == ErrorKind.SOURCE_CHANGED


def test_basis_changed_after_signature_gives_another_digest():
    rnd = random.Random(7)
    basis = rnd.randbytes(200_000)
    new = basis[:1000] + b"new" + basis[1000:]
    chunks = encoded_delta(basis, new, 1024)
    changed = bytearray(basis)
    changed[150_000] ^= 1
    stream = delta.open_delta(chunks, len(basis), len(new))
    out = bytearray()
    _, digest = delta.apply(
        reader(bytes(changed)), len(basis), 1024, stream, lambda off, d: out.extend(d)
    )
    assert digest != stream.digest == digest_bytes(new)
    with pytest.raises(FerryError) as err:
        rebuild(basis[:100_000], len(new), 1024, chunks)
    assert err.value.kind == ErrorKind.SOURCE_CHANGED  # retryable: a new signature is taken
    assert "basis changed since its signature" in str(err.value)


# -- hostile input -----------------------------------------------------------------------------


def valid_signature() -> bytes:
    data = random.Random(8).randbytes(10_000)
    return delta.encode_signature(delta.compute(reader(data), len(data), 1024))


def valid_delta() -> tuple[list[bytes], fmt.DeltaLimits]:
    rnd = random.Random(9)
    basis = rnd.randbytes(10_000)
    new = basis[:3000] + rnd.randbytes(500) + basis[3000:]
    return encoded_delta(basis, new, 1024), fmt.DeltaLimits(1024, len(basis), len(new))


def mutated(data: st.DataObject, good: bytes, insert_max: int) -> bytearray:
    """`good` with 1-4 random flips, cuts and insertions, drawn from `data`."""
    blob = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob)))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and at < len(blob):
            blob[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del blob[at:]
        else:
            blob[at:at] = data.draw(st.binary(max_size=insert_max))
    return blob


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fuzzed_signature_is_refused_cleanly(data):
    good = valid_signature()
    blob = mutated(data, good, insert_max=8)
    try:
        sig = delta.decode_signature(bytes(blob), len(good) + 64)
    except FerryError as err:
        assert err.kind == ErrorKind.PROTOCOL
    else:
        assert sig.count == signature.block_count(sig.file_size, sig.block_size)
        assert len(sig.strong) == sig.count * signature.STRONG_LEN


@pytest.mark.parametrize(
    "fields,words",
    [
        ((b"XSIG", 1, 16, 0, 1024, 10_000, 10), "wrong magic"),
        ((b"FSIG", 2, 16, 0, 1024, 10_000, 10), "version 2"),
        ((b"FSIG", 1, 16, 0, 100, 10_000, 100), "block size 100"),
        ((b"FSIG", 1, 16, 0, 1024, 10_000, 11), "declares 11 blocks"),
        ((b"FSIG", 1, 16, 0, 256, 1 << 40, 1 << 32 - 1), "exceeds the signature bound"),
        ((b"FSIG", 1, 16, 0, 1024, 10_000, 10), "is 24 bytes"),
    ],
)
def test_signature_header_errors_name_the_problem(fields, words):
    with pytest.raises(FerryError) as err:
        delta.decode_signature(struct.pack("<4sBBHIQI", *fields), 1 << 20)
    assert err.value.kind == ErrorKind.PROTOCOL
    assert words in str(err.value)


def test_signature_over_max_size_is_refused_before_parsing():
    good = valid_signature()
    with pytest.raises(FerryError, match="exceeds"):
        delta.decode_signature(good, len(good) - 1)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fuzzed_delta_is_refused_cleanly(data):
    chunks, limits = valid_delta()
    blob = mutated(data, b"".join(chunks), insert_max=12)
    cut = data.draw(st.integers(1, 64))
    pieces = [bytes(blob[i : i + cut]) for i in range(0, len(blob), cut)]
    try:
        ops = list(delta.decode(pieces, limits))
    except FerryError as err:
        # SOURCE_CHANGED: the header names another basis size (retried with a new signature)
        assert err.kind in (ErrorKind.PROTOCOL, ErrorKind.SOURCE_CHANGED)
    else:
        total = sum(
            limits.copy_len(op) if isinstance(op, delta.Copy) else len(op.data) for op in ops
        )
        assert total == limits.size


HDR = struct.pack("<4sB3xIQ", b"FDLT", 1, 1024, 10_000)


def endless(head: bytes, filler: bytes) -> Iterator[bytes]:
    yield head
    while True:
        yield filler


@pytest.mark.parametrize(
    "head,filler,words",
    [
        # a literal longer than the cap: refused before its bytes are read
        (HDR + struct.pack("<BI", 2, 0xFFFFFFFF), b"\0" * 65536, "literal of"),
        # literals without end: refused once past the expected size
        (HDR, struct.pack("<BI", 2, 4096) + b"x" * 4096, "exceeds the expected"),
        # copies without end
        (HDR, struct.pack("<BII", 1, 0, 1) * 100, "exceeds the expected"),
        (HDR, struct.pack("<BII", 1, 99, 1), "copies blocks 99..99"),
        (HDR, struct.pack("<BII", 1, 0, 0), "copies blocks 0..-1"),
        (HDR, b"\x07", "unknown delta instruction 7"),
        (HDR[:8] + struct.pack("<IQ", 100, 10_000), b"", "block size 100"),
        (HDR[:8] + struct.pack("<IQ", 1024, 9_999), b"", "basis changed since its signature"),
        (b"XDLT" + HDR[4:], b"", "wrong magic"),
        (b"FDLT\x09" + HDR[5:], b"", "version 9"),
    ],
)
def test_hostile_delta_streams_are_bounded(head, filler, words):
    limits = fmt.DeltaLimits(1024, 10_000, 20_000)
    tracemalloc.start()
    try:
        with pytest.raises(FerryError) as err:
            for _ in delta.decode(endless(head, filler), limits):
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.kind in (ErrorKind.PROTOCOL, ErrorKind.SOURCE_CHANGED)
    assert words in str(err.value)
    assert peak < 2 * MiB


def test_delta_end_checks():
    chunks, limits = valid_delta()
    blob = b"".join(chunks)
    with pytest.raises(FerryError, match="after the end"):
        list(delta.decode([blob, b"x"], limits))
    with pytest.raises(FerryError, match="ends inside"):
        list(delta.decode([blob[:-3]], limits))
    with pytest.raises(FerryError, match="expected"):
        list(delta.decode([blob], fmt.DeltaLimits(1024, limits.basis_size, limits.size + 1)))
    with pytest.raises(FerryError, match="end mark says"):
        list(delta.decode([blob[:-40] + struct.pack("<Q", 1) + blob[-32:]], limits))
    with pytest.raises(FerryError, match="signature had 2048"):
        list(delta.decode([blob], fmt.DeltaLimits(2048, limits.basis_size, limits.size)))


def test_literals_are_cut_to_the_cap():
    new = os.urandom(3 * MiB + 5)
    chunks = encoded_delta(b"", new)
    ops = list(delta.decode(chunks, fmt.DeltaLimits(2048, 0, len(new))))
    assert all(isinstance(op, delta.Literal) and len(op.data) <= fmt.MAX_LITERAL for op in ops)
