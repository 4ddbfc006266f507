"""Block delta of a changed file (rsync's algorithm): only what changed crosses.

The basis side (the old copy) computes a signature (`signature.compute`: per block a rolling
weak sum and a 16-byte BLAKE3); the side with the new file finds the basis blocks in it at
any byte offset (`match.diff`) and sends copy and literal instructions (`format.encode_ops`);
the basis side checks them against bounds (`format.open_delta`), rebuilds under a temporary name
while hashing (`apply.apply`), and compares the Ferry digest with the source's.

Why NumPy (benchmarks/delta.py and its README section have the numbers): a per-byte Python
rolling sum with a lookup runs at ~3 MB/s on one core here. The matcher does per-offset
work only where the old alignment broke, and there computes the weak sum of every offset of
a span at once from two NumPy prefix sums (~2 ns an offset, plus the lookup); unchanged
stretches cost one BLAKE3 call per block (several GB/s). Signature + match then run at
775-850 MB/s on one core (256 MiB and 1 GiB, 5 % scattered changes + 1 MiB inserted), with the
same literal data as rsync. librsync's `rdiff`, the native alternative, took 3.4-3.6x
Ferry's signature + match + rebuild in the same runs, and would be a C library to bind
and ship; NumPy is one pinned wheel.

NumPy loads only when a delta runs: nothing on the `ferry --version` or whole-file paths
imports this package.
"""

from ferry.mover.delta.apply import apply
from ferry.mover.delta.format import (
    MAX_LITERAL,
    DeltaLimits,
    DeltaStream,
    decode,
    encode_ops,
    open_delta,
)
from ferry.mover.delta.match import diff
from ferry.mover.delta.ops import Copy, Literal, Op
from ferry.mover.delta.signature import (
    MAX_FILE_SIZE,
    Signature,
    block_size_for,
    compute,
    encoded_size,
    max_encoded_size,
)
from ferry.mover.delta.signature import decode as decode_signature
from ferry.mover.delta.signature import encode as encode_signature

__all__ = [
    "MAX_FILE_SIZE",
    "MAX_LITERAL",
    "Copy",
    "DeltaLimits",
    "DeltaStream",
    "Literal",
    "Op",
    "Signature",
    "apply",
    "block_size_for",
    "compute",
    "decode",
    "decode_signature",
    "diff",
    "encode_ops",
    "encode_signature",
    "encoded_size",
    "max_encoded_size",
    "open_delta",
]
