"""Deterministic work split for sharded transfers (one pod per shard of an Indexed Job).

Every shard scans the same source and must reach the same assignment with no
coordination. Files at or above `BIG` bytes are few and dominate the bytes,
so they are balanced explicitly: longest-processing-time greedy onto the
shard with the fewest bytes so far, after counting the hashed small files.
Everything else is assigned by a hash of its path, which balances by the law
of large numbers.
"""

from __future__ import annotations

from blake3 import blake3

BIG = 64 << 20


def path_shard(rel: str, count: int) -> int:
    h = blake3(rel.encode("utf-8", "surrogateescape")).digest(8)
    return int.from_bytes(h, "little") % count


class Sharder:
    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count
        self.big: dict[str, int] = {}
        self.loads = [0] * count

    def balance(self, small_bytes: list[int], big_files: list[tuple[str, int]]) -> None:
        """Assign big files given the small-file bytes each shard already has."""
        self.loads = list(small_bytes)
        for rel, size in sorted(big_files, key=lambda f: (-f[1], f[0])):
            target = min(range(self.count), key=lambda i: (self.loads[i], i))
            self.big[rel] = target
            self.loads[target] += size

    def owns(self, rel: str, size: int) -> bool:
        if size >= BIG and rel in self.big:
            return self.big[rel] == self.index
        return path_shard(rel, self.count) == self.index
