"""Block delta of a changed file (rsync's algorithm): only what changed crosses.

The basis side (the old copy) computes a signature (`signature.compute`: per block a rolling
weak sum and a 16-byte BLAKE3); the side with the new file finds the basis blocks in it at
any byte offset (`match.diff`) and sends copy and literal instructions (`format.encode_ops`);
the basis side checks them against bounds (`format.decode`), rebuilds under a temporary name
while hashing (`apply.apply`), and compares the Ferry digest with the source's.

Why NumPy: a per-byte Python rolling sum runs at ~5 MB/s on one core; the weak sum of every
offset of a span computed from two NumPy prefix sums runs at ~150-200 MB/s, and unchanged
stretches need no per-offset work at all (the next block is checked by its strong hash,
BLAKE3 at several GB/s). benchmarks/delta.py measures signature + match at 350-450 MB/s on
one core against rsync (see benchmarks/README.md). librsync (`rdiff`) would be a native
library to bind, but is slower than rsync itself in the same benchmark and has no Python
binding kept up to date; NumPy is one pinned wheel.

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
    Signature,
    block_size_for,
    compute,
    encoded_size,
)
from ferry.mover.delta.signature import decode as decode_signature
from ferry.mover.delta.signature import encode as encode_signature

__all__ = [
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
    "open_delta",
]
