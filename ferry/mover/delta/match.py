"""Find the basis blocks in a new file, at any byte offset: the delta's sender side.

A greedy walk like rsync's, with no per-byte Python loop. Two modes:
- continuation: after block j matched at `pos`, block j+1 is tried at `pos + L` by its
  strong hash alone (one BLAKE3 call per block; unchanged stretches cost only that);
- probe: where continuation fails, blocks j+2.. are tried in the old alignment (an overwrite
  ends there); only the offsets before the one found are searched;
- search: where that fails too, the weak sum of every offset of a span (16 KiB, doubling
  to 512 KiB while nothing matches) is computed at once with NumPy from two prefix sums
  (`a_k = P1[k+L] - P1[k]`, `b_k = (k+L)·a_k - (P2[k+L] - P2[k])`, P2 the prefix sum of
  i·x_i, all mod 2^32), looked up through a bit filter and then exactly
  (searchsorted on the sorted signature sums), and only those candidates are confirmed with
  the strong hash, in order; the first confirmed one ends the search.
The new file is read once, in 1 MiB pieces, in order (so the caller can hash it on the way:
`observe`); memory is the pending literal (flushed at 1 MiB) plus one span and one piece.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from blake3 import blake3

from ferry.mover.delta.ops import Copy, Literal, Op
from ferry.mover.delta.signature import STRONG_LEN, ReadAt, Signature
from ferry.mover.errors import ErrorKind, FerryError

MAX_LITERAL = 1 << 20  # literal pieces emitted (format.MAX_LITERAL accepts them)
READ_PIECE = 1 << 20  # below the 4 MiB past which `ferry` has malloc map memory afresh
MIN_SPAN = 16 << 10
MAX_SPAN = 512 << 10  # its NumPy temporaries (4 bytes an offset) stay below 4 MiB too
PROBE = 8  # blocks tried ahead in the old alignment before a span search...
PROBE_BYTES = 4 << 20  # ...within this many bytes (the window holds them)
_FIB = np.uint32(0x9E3779B1)  # Fibonacci hashing: the filter slot from all 32 bits
_BIT = (1 << np.arange(8)).astype(np.uint8)


class _Index:
    """Weak sums of the signature's full blocks: a bit filter (2^22 bits, 512 KiB: it stays
    in a core's L2 cache between spans, where a byte-per-slot table of the same reach was
    evicted and cost 10 ns per offset), then an exact lookup of the few that pass."""

    def __init__(self, sig: Signature) -> None:
        self.full = sig.file_size // sig.block_size
        weak = sig.weak[: self.full]
        self.order = np.argsort(weak, kind="stable")
        self.sorted = weak[self.order]
        # <= 1/64 false hits to 64K blocks (512 KiB); bigger signatures get up to 4 MiB
        bits = min(max(self.full.bit_length() + 6, 16), max(22, self.full.bit_length() + 4), 25)
        self.shift = np.uint32(32 - bits)
        table = np.zeros(1 << bits, dtype=bool)
        table[self._slot(weak)] = True
        self.filter = np.packbits(table, bitorder="little")
        self.strong = np.frombuffer(sig.strong, dtype=np.uint8).reshape(-1, STRONG_LEN)

    def _slot(self, weak: np.ndarray) -> np.ndarray:
        return (weak * _FIB) >> self.shift

    def candidates(self, weak: np.ndarray) -> np.ndarray:
        """Offsets (into `weak`) whose sum is some full block's."""
        slot = self._slot(weak)
        byte = self.filter[slot >> 3]
        hit = np.flatnonzero(byte & _BIT[slot & 7])
        if not hit.size:
            return hit
        w = weak[hit]
        at = np.minimum(np.searchsorted(self.sorted, w), len(self.sorted) - 1)
        return hit[self.sorted[at] == w]

    def find(self, weak: int, strong: bytes) -> int:
        """The index of a full block with these sums, or -1."""
        lo = int(np.searchsorted(self.sorted, weak, "left"))
        hi = int(np.searchsorted(self.sorted, weak, "right"))
        idx = self.order[lo:hi]
        same = np.flatnonzero(
            (self.strong[idx] == np.frombuffer(strong, dtype=np.uint8)).all(axis=1)
        )
        return int(idx[same[0]]) if same.size else -1


class _Roller:
    """The weak sum at every offset of a piece, from two prefix sums."""

    def __init__(self, block_size: int) -> None:
        self.L = block_size
        self.ramp = np.arange(MAX_SPAN + block_size, dtype=np.uint32)

    def weak(self, data: np.ndarray) -> np.ndarray:
        """len(data) - L + 1 sums: of data[k:k+L] for each k."""
        n, L = len(data), self.L
        x = data.astype(np.uint32)  # then a uint32 cumsum: faster than one from uint8
        p1 = np.zeros(n + 1, dtype=np.uint32)
        np.cumsum(x, out=p1[1:])
        p2 = np.zeros(n + 1, dtype=np.uint32)
        np.cumsum(self.ramp[:n] * x, out=p2[1:])
        a = p1[L:] - p1[:-L]
        b = self.ramp[L : n + 1] * a - (p2[L:] - p2[:-L])
        return (a & 0xFFFF) | (b << 16)


class _Window:
    """The new file read once, in order, holding bytes from `keep` to what is needed."""

    def __init__(self, read_at: ReadAt, size: int, observe: Callable[[bytes], None] | None) -> None:
        self.read_at, self.size, self.observe = read_at, size, observe
        self.buf = b""
        self.start = 0  # file offset of buf[0]
        self.mv = memoryview(self.buf)

    @property
    def end(self) -> int:
        return self.start + len(self.buf)

    def ensure(self, end: int, keep: int) -> None:
        end = min(end, self.size)
        if end <= self.end:
            return
        parts: list[bytes | memoryview] = [self.mv[keep - self.start :]]
        have = self.end
        target = max(end, min(have + READ_PIECE, self.size))
        while have < target:
            want = min(READ_PIECE, target - have)
            data = self.read_at(have, want)
            if len(data) != want:
                raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while reading its delta")
            piece = bytes(data)  # a reader's memoryview may be reused by its next read
            if self.observe is not None:
                self.observe(piece)
            parts.append(piece)
            have += want
        self.mv.release()
        self.buf = b"".join(parts)
        self.start = keep
        self.mv = memoryview(self.buf)

    def view(self, lo: int, hi: int) -> memoryview:
        return self.mv[lo - self.start : hi - self.start]

    def array(self, lo: int, hi: int) -> np.ndarray:
        return np.frombuffer(self.buf, dtype=np.uint8, count=hi - lo, offset=lo - self.start)


def _strong(data: memoryview) -> bytes:
    return blake3(data).digest(STRONG_LEN)


def _probe(win: _Window, sig: Signature, pos: int, hint: int, keep: int) -> int:
    """The first k in 1..PROBE for which block hint+k is at pos + k*L, else 0."""
    L = sig.block_size
    last = min(PROBE, PROBE_BYTES // L, sig.file_size // L - 1 - hint, (win.size - pos) // L - 1)
    if last < 1:
        return 0
    win.ensure(pos + (last + 1) * L, keep)
    for k in range(1, last + 1):
        at = pos + k * L
        if _strong(win.view(at, at + L)) == sig.strong_of(hint + k):
            return k
    return 0


def diff(
    sig: Signature,
    read_at: ReadAt,
    size: int,
    observe: Callable[[bytes], None] | None = None,
) -> Iterator[Op]:
    """The ops that rebuild the `size`-byte file read through `read_at` from the basis of
    `sig`. `observe` sees every byte of the file once, in order (to hash it on the way)."""
    L = sig.block_size
    full = sig.file_size // L
    tail = sig.file_size - full * L
    tail_strong = sig.strong_of(full) if tail else b""
    index = _Index(sig) if full else None
    roller: _Roller | None = None
    win = _Window(read_at, size, observe)
    run_i = run_n = 0  # pending copy run
    pos = lit = 0  # literal pending from `lit` to `pos`
    hint = 0  # the block that would continue the last match
    span = MIN_SPAN

    def literal(lo: int, hi: int) -> Iterator[Op]:
        nonlocal run_n
        if lo >= hi:
            return
        if run_n:
            yield Copy(run_i, run_n)
            run_n = 0
        for at in range(lo, hi, MAX_LITERAL):
            upto = min(at + MAX_LITERAL, hi)
            win.ensure(upto, at)
            yield Literal(bytes(win.view(at, upto)))

    def copy(j: int) -> Iterator[Op]:
        nonlocal run_i, run_n
        if run_n and run_i + run_n == j:
            run_n += 1
            return
        if run_n:
            yield Copy(run_i, run_n)
        run_i, run_n = j, 1

    while pos < size:
        if hint < full and pos + L <= size:
            win.ensure(pos + L, lit)
            if _strong(win.view(pos, pos + L)) == sig.strong_of(hint):
                yield from literal(lit, pos)
                yield from copy(hint)
                pos = lit = pos + L
                hint += 1
                span = MIN_SPAN
                continue
        elif hint == full and tail and pos + tail <= size:
            win.ensure(pos + tail, lit)
            if _strong(win.view(pos, pos + tail)) == tail_strong:
                yield from literal(lit, pos)
                yield from copy(full)
                pos = lit = pos + tail
                hint = full + 1
                continue
        if index is None or pos + L > size:
            break
        # Where the old alignment resumes a few blocks on (an overwrite), only the offsets
        # before that block need a search; otherwise search spans that double.
        ahead = _probe(win, sig, pos, hint, lit) if hint < full else 0
        offsets = (ahead - 1) * L + 1 if ahead else min(span, size - L + 1 - pos)
        win.ensure(pos + offsets + L - 1, lit)
        if roller is None:
            roller = _Roller(L)
        weak = roller.weak(win.array(pos, pos + offsets + L - 1))
        found = -1
        for c in index.candidates(weak).tolist():
            found = index.find(int(weak[c]), _strong(win.view(pos + c, pos + c + L)))
            if found >= 0:
                yield from literal(lit, pos + c)
                yield from copy(found)
                pos = lit = pos + c + L
                hint = found + 1
                span = MIN_SPAN
                break
        if found < 0 and ahead:
            at = pos + ahead * L
            yield from literal(lit, at)
            yield from copy(hint + ahead)
            pos = lit = at + L
            hint += ahead + 1
            span = MIN_SPAN
        elif found < 0:
            pos += offsets
            span = min(2 * span, MAX_SPAN)
            if pos - lit >= MAX_LITERAL:
                yield from literal(lit, pos)
                lit = pos
    # The rest is literal, but for the basis's short last block at the very end.
    cut = size - tail if tail and size - tail >= lit and hint <= full else size
    yield from literal(lit, cut)
    if cut < size:
        win.ensure(size, cut)
        if _strong(win.view(cut, size)) == tail_strong:
            yield from copy(full)
        else:
            yield from literal(cut, size)
    win.ensure(size, size)
    if run_n:
        yield Copy(run_i, run_n)
