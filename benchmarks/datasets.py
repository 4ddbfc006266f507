"""Reproducible benchmark datasets.

Every dataset is a list of file groups (count x size, optionally spread over
sub-directories).  Content is a keyed BLAKE3 XOF stream seeded by the dataset
name and seed: incompressible, never repeating, identical on every machine,
and produced at well over 1 GB/s, so generating the 4 GiB `huge` dataset is
bounded by the disk, not by the generator.  File and directory mtimes are
fixed (with a nanosecond part), so two generations are byte- and
metadata-identical.

A generated dataset lives in ``benchmarks/.data/<name>[-quick]/src`` next to a
``spec.json`` marker written last; a dataset whose marker matches the spec and
whose tree has the expected file count and bytes is reused as is.  A stale or
partial dataset is *renamed* away into the trash directory (never deleted
here: see ``local.py`` on why deletes are deferred).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

GENERATOR_VERSION = 1
DATA_DIR = Path(__file__).resolve().parent / ".data"
MARKER = "spec.json"
# 2023-11-14T22:13:20Z; file j gets BASE + j seconds and a varying ns part.
BASE_MTIME_NS = 1_700_000_000 * 1_000_000_000


@dataclass(frozen=True)
class Group:
    """`count` files of `size` bytes under `name` ('' = the dataset root),
    spread evenly over `dirs` sub-directories (0 = all directly in `name`)."""

    name: str
    count: int
    size: int
    dirs: int = 0

    def paths(self) -> Iterator[str]:
        per_dir = -(-self.count // self.dirs) if self.dirs else self.count
        width = max(4, len(str(self.count - 1)))
        for i in range(self.count):
            parts = [self.name] if self.name else []
            if self.dirs:
                parts.append(f"d{i // per_dir:04d}")
            parts.append(f"f{i:0{width}d}.bin")
            yield "/".join(parts)


@dataclass(frozen=True)
class Spec:
    name: str
    groups: tuple[Group, ...]
    seed: int = 1
    quick: bool = False

    @property
    def files(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def total_bytes(self) -> int:
        return sum(g.count * g.size for g in self.groups)

    @property
    def dir_name(self) -> str:
        return f"{self.name}-quick" if self.quick else self.name

    def entries(self) -> Iterator[tuple[str, int]]:
        """(relative path, size) of every file, in generation order."""
        for g in self.groups:
            for p in g.paths():
                yield p, g.size

    def as_dict(self) -> dict[str, object]:
        return {
            "generator": GENERATOR_VERSION,
            "name": self.name,
            "seed": self.seed,
            "quick": self.quick,
            "groups": [asdict(g) for g in self.groups],
            "files": self.files,
            "bytes": self.total_bytes,
        }

    def describe(self) -> str:
        parts = []
        for g in self.groups:
            where = f" in {g.dirs} dirs" if g.dirs else ""
            parts.append(f"{g.count:,} x {human_bytes(g.size)}{where}")
        return f"{self.files:,} files, {human_bytes(self.total_bytes)} ({', '.join(parts)})"


FULL: dict[str, Spec] = {
    "mixed": Spec(
        "mixed",
        (
            Group("tiny", 1000, 1 * KiB, dirs=10),
            Group("medium", 100, 1 * MiB),
            Group("large", 10, 50 * MiB),
            Group("xl", 1, 1 * GiB),
        ),
    ),
    "huge": Spec("huge", (Group("", 1, 4 * GiB),)),
    "small": Spec("small", (Group("", 20_000, 4 * KiB, dirs=200),)),
    # The memory-scale tree: 200,000 empty files in 2,000 directories.
    "scale": Spec("scale", (Group("", 200_000, 0, dirs=2_000),)),
}


def _quick(spec: Spec) -> Spec:
    """1/10 scale: a tenth of the files; single big files a tenth of the size."""
    groups = []
    for g in spec.groups:
        if g.count == 1:
            groups.append(Group(g.name, 1, max(g.size // 10, 1), g.dirs))
        else:
            groups.append(
                Group(g.name, max(g.count // 10, 1), g.size, max(g.dirs // 10, 1) if g.dirs else 0)
            )
    return Spec(spec.name, tuple(groups), spec.seed, quick=True)


def spec_for(name: str, quick: bool = False, seed: int = 1) -> Spec:
    if name not in FULL:
        raise KeyError(f"unknown dataset {name!r} (known: {', '.join(FULL)})")
    base = FULL[name]
    if seed != base.seed:
        base = Spec(base.name, base.groups, seed, base.quick)
    return _quick(base) if quick else base


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- content ---------------------------------------------------------------


class _Stream:
    """A seeded, incompressible byte stream (keyed BLAKE3 in XOF mode)."""

    BLOCK = 8 * MiB

    def __init__(self, spec: Spec) -> None:
        import blake3  # in the ferry venv; imported here to keep `--help` fast

        key = blake3.blake3(f"ferry-bench/{spec.name}/{spec.seed}".encode()).digest()
        self._h = blake3.blake3(key=key)
        self._pos = 0
        self._buf = b""
        self._off = 0

    def take(self, n: int) -> memoryview:
        """The next `n` (<= BLOCK) bytes."""
        if self._off + n > len(self._buf):
            self._buf = self._h.digest(length=self.BLOCK, seek=self._pos)
            self._pos += self.BLOCK
            self._off = 0
        mv = memoryview(self._buf)[self._off : self._off + n]
        self._off += n
        return mv


def _mtime_ns(j: int) -> int:
    return BASE_MTIME_NS + j * 1_000_000_000 + (j * 7_919_003) % 1_000_000_000


def generate(spec: Spec, root: Path) -> None:
    """Write the dataset's tree under `root` (which must not exist)."""
    root.mkdir(parents=True)
    stream = _Stream(spec)
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for j, (rel, size) in enumerate(spec.entries()):
        parent = rel.rpartition("/")[0]
        if parent and parent not in made:
            (root / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        path = root / rel
        fd = os.open(path, flags, 0o644)
        try:
            left = size
            while left:
                chunk = stream.take(min(left, _Stream.BLOCK))
                done = 0
                while done < len(chunk):
                    done += os.write(fd, chunk[done:])
                left -= len(chunk)
        finally:
            os.close(fd)
        mt = _mtime_ns(j)
        os.utime(path, ns=(mt, mt))
    # Directory times last, deepest first, so creating children cannot bump them.
    dir_mt = _mtime_ns(spec.files)
    for d in sorted(made, key=lambda p: p.count("/"), reverse=True):
        os.utime(root / d, ns=(dir_mt, dir_mt))
    os.utime(root, ns=(dir_mt, dir_mt))


# --- trees -----------------------------------------------------------------


@dataclass
class TreeStats:
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    other: int = 0  # symlinks, fifos, ...


def tree_stats(root: Path) -> TreeStats:
    """Count regular files, their bytes, directories (below root) and others."""
    st = TreeStats()
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    st.dirs += 1
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    st.files += 1
                    st.bytes += e.stat(follow_symlinks=False).st_size
                else:
                    st.other += 1
    return st


def read_tree(root: Path, bufsize: int = 4 * MiB) -> int:
    """Read every file once (to warm the page cache); returns bytes read."""
    buf = bytearray(bufsize)
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


def dataset_dir(spec: Spec, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / spec.dir_name


def is_complete(spec: Spec, data_dir: Path = DATA_DIR) -> bool:
    base = dataset_dir(spec, data_dir)
    try:
        marker = json.loads((base / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker != spec.as_dict():
        return False
    st = tree_stats(base / "src")
    return st.files == spec.files and st.bytes == spec.total_bytes and st.other == 0


TRUNCATE_AT = 1 * MiB


def discard(path: Path, trash: Path) -> None:
    """Move a used tree into `trash` instead of deleting it, and give its big files' blocks
    back now (truncation frees blocks and page cache, not inodes): on ext4 without a
    journal, files created within ~60 s of a large delete are much slower to create, so a
    delete right before a timed run would be measured as part of it (shared notes)."""
    if not path.exists():
        return
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{path.name}.{time.time_ns()}"
    try:
        path.rename(target)
    except OSError:  # another filesystem: deleting is all that is left
        shutil.rmtree(path, ignore_errors=True)
        return
    for dirpath, _dirs, files in os.walk(target):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                if os.lstat(p).st_size >= TRUNCATE_AT:
                    os.truncate(p, 0)
            except OSError:
                pass


def ensure(
    spec: Spec, data_dir: Path = DATA_DIR, trash: Path | None = None, log: bool = True
) -> Path:
    """The dataset's source tree, generated unless a complete copy is cached."""
    base = dataset_dir(spec, data_dir)
    src = base / "src"
    if is_complete(spec, data_dir):
        return src
    if base.exists():
        # Stale or partial: rename it away; it is deleted with the trash.
        trash = trash or data_dir / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        base.rename(trash / f"{base.name}.stale.{time.time_ns()}")
    base.mkdir(parents=True)
    t0 = time.perf_counter()
    if log:
        print(f"generating {spec.dir_name}: {spec.describe()} ...", flush=True)
    generate(spec, src)
    os.sync()
    (base / MARKER).write_text(json.dumps(spec.as_dict(), indent=2) + "\n")
    if log:
        print(f"generated {spec.dir_name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return src
