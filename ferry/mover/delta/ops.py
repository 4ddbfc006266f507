"""The two instructions of a delta: copy basis blocks, or insert literal bytes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Copy:
    """`count` consecutive basis blocks from block `index` (the basis's last block may be
    shorter than the block size)."""

    index: int
    count: int


@dataclass(frozen=True, slots=True)
class Literal:
    data: bytes


Op = Copy | Literal
