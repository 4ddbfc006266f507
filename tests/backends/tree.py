"""The tricky tree the conformance suite round-trips, and how to compare trees."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
CHUNK = 5 * MiB  # the suite's --chunk-size: S3's minimum part, so every backend chunks alike
MTIME = 1_600_000_000_123_456_789

# Names that every backend must carry; SMB (Windows rules) refuses ?*:"<>|\ and trailing dots.
NAMES_ALL = [
    "plain.txt",
    "ünïcødé ☃ 名前.txt",
    "spaces  and #hash %41 percent&amp;.bin",
    "[brackets] {braces} (parens) ~tilde+plus,comma;semi=eq@at!bang$dollar'quote",
    ".hidden",
    "-leading-dash",
    "x" * 200,
]
NAMES_POSIX = ["q?mark*star:colon", 'dq"lt<gt>pipe|', "back\\slash", "trailing.", "tab\there"]

SIZES = [
    0,
    1,
    MiB - 1,
    MiB,
    MiB + 1,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    8 * MiB + 1,
    2 * CHUNK,
    2 * CHUNK + 1,
    3 * CHUNK + 7,
]


def _data(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB pattern
    out = (block * (size // len(block) + 1))[:size]
    return out[:-1] + bytes([seed % 251]) if size else out


@dataclass
class Spec:
    rel: str
    size: int
    mode: int


def build(root: Path, posix_names: bool = True, big: bool = True) -> list[Spec]:
    """Write the tree under root; return what was written."""
    specs: list[Spec] = []
    root.mkdir(parents=True, exist_ok=True)
    names = NAMES_ALL + (NAMES_POSIX if posix_names else [])
    for i, name in enumerate(names):
        specs.append(Spec(f"names/{name}", 10 + i, 0o644))
    sizes = SIZES if big else [0, 1, MiB + 1, 2 * CHUNK + 1]
    for i, size in enumerate(sizes):
        specs.append(Spec(f"sizes/s{i:02d}-{size}", size, 0o640 if i % 2 else 0o755))
    specs.append(Spec("deep/a/b/c/d/e/leaf", 3, 0o600))
    specs.append(Spec("zero", 0, 0o644))
    for n, s in enumerate(specs):
        p = root / s.rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_data(s.size, n))
        os.chmod(p, s.mode)
        os.utime(p, ns=(MTIME + n * 10**9, MTIME + n * 10**9))
    (root / "emptydir").mkdir(exist_ok=True)
    for d in sorted({p for p in root.rglob("*") if p.is_dir()}, key=lambda p: -len(p.parts)):
        os.utime(d, ns=(MTIME, MTIME))
    return specs


def file_digest(p: Path) -> str:
    h = hashlib.blake2b()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def compare(
    a: Path, b: Path, *, precision_ns: int = 1, modes: bool = True, empty_dirs: bool = True
) -> list[str]:
    """Differences between two local trees: names, bytes, mtimes (to precision), modes."""
    diffs: list[str] = []

    def walk(root: Path) -> dict[str, os.stat_result]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = Path(dirpath, n)
                out[str(p.relative_to(root))] = p.lstat()
        return out

    ta, tb = walk(a), walk(b)
    if not empty_dirs:
        ta = {
            k: v
            for k, v in ta.items()
            if not (os.path.isdir(a / k) and not any((a / k).rglob("*")))
        }
    for rel in sorted(set(ta) | set(tb)):
        if rel not in tb:
            diffs.append(f"missing {rel!r}")
            continue
        if rel not in ta:
            diffs.append(f"extra {rel!r}")
            continue
        sa, sb = ta[rel], tb[rel]
        if os.path.isdir(a / rel):
            continue
        if sa.st_size != sb.st_size or file_digest(a / rel) != file_digest(b / rel):
            diffs.append(f"content {rel!r}")
        if sa.st_mtime_ns // precision_ns != sb.st_mtime_ns // precision_ns:
            diffs.append(f"mtime {rel!r}: {sa.st_mtime_ns} vs {sb.st_mtime_ns}")
        if modes and (sa.st_mode & 0o7777) != (sb.st_mode & 0o7777):
            diffs.append(f"mode {rel!r}: {sa.st_mode & 0o7777:o} vs {sb.st_mode & 0o7777:o}")
    return diffs
