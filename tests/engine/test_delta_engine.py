"""Updated files sent as block deltas through the engine (`--delta`): identical results,
the counters (`bytesTransferred` = encoded delta, `bytesMatched` = reused basis), refusals,
and a basis that changes or vanishes between its signature and the rebuild."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover.backends.base import Entry
from ferry.mover.backends.local import LocalBackend
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Compare, Delta, Options, Verify
from ferry.mover.result import Summary
from ferry.mover.transfer import transfer_between
from tests.engine.memtree import D, Tree

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent.parent
T0 = 1_700_000_000


class CountingBasis(LocalBackend):
    """A local destination that counts signatures and may change its basis after the
    signature was taken (`change(path, call)`)."""

    def __init__(self, root: Path, change: Callable[[str, int], None] | None = None) -> None:
        super().__init__(str(root))
        self.change = change
        self.signatures = 0

    def signature(self, rel: str, entry: Entry, block_size: int | None) -> bytes:
        sig = super().signature(rel, entry, block_size)
        self.signatures += 1
        if self.change:
            self.change(self.path(rel), self.signatures)
        return sig


def trees(tmp_path: Path, size: int = 6 * MiB) -> tuple[Path, Path, bytes]:
    """src/big (changed in one byte and 4 KiB inserted) and dst/big (the old version)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rnd = random.Random(size)
    old = rnd.randbytes(size)
    new = bytearray(old)
    new[size // 3] ^= 0xFF
    new[size // 2 : size // 2] = rnd.randbytes(4096)
    (dst / "big").write_bytes(old)
    (src / "big").write_bytes(bytes(new))
    os.utime(dst / "big", (T0, T0))
    os.utime(src / "big", (T0 + 60, T0 + 60))
    return src, dst, bytes(new)


def run(src: Path, dst: LocalBackend | Tree, **opts: object) -> Summary:
    opts.setdefault("retry_base_delay", 0.01)
    options = Options(**opts)  # type: ignore[arg-type]
    return transfer_between(lambda: (LocalBackend(str(src)), dst), options)


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".~ferry.")]


def test_delta_on_rebuilds_identical_and_counts_what_crossed(tmp_path):
    src, dst, new = trees(tmp_path)
    d = CountingBasis(dst)
    s = run(src, d, delta=Delta.ON)
    assert s.exit_code == 0, s.errors
    assert (dst / "big").read_bytes() == new
    assert os.stat(dst / "big").st_mtime == T0 + 60  # metadata as a whole-file commit sets it
    assert d.signatures == 1
    assert s.files_updated == 1 and s.files_verified == 1
    assert s.bytes_matched > len(new) - 64 * 1024
    assert 4096 < s.bytes_transferred < 64 * 1024  # the edits, not the file
    assert s.to_json()["bytesMatched"] == s.bytes_matched
    assert leftovers(dst) == []


def test_delta_auto_and_off_send_local_files_whole(tmp_path):
    src, dst, new = trees(tmp_path)
    for mode in (Delta.AUTO, Delta.OFF):
        os.utime(dst / "big", (T0, T0))
        d = CountingBasis(dst)
        s = run(src, d, delta=mode)
        assert s.exit_code == 0, s.errors
        assert (dst / "big").read_bytes() == new
        assert d.signatures == 0 and s.bytes_matched == 0
        assert s.bytes_transferred == len(new)


def test_small_and_new_files_go_whole_with_delta_on(tmp_path):
    src, dst, _ = trees(tmp_path)
    (src / "small").write_bytes(b"s" * 1000)
    (dst / "small").write_bytes(b"t" * 1000)
    (src / "fresh").write_bytes(os.urandom(200_000))
    d = CountingBasis(dst)
    s = run(src, d, delta=Delta.ON)
    assert s.exit_code == 0, s.errors
    assert d.signatures == 1  # "big" only
    assert (dst / "small").read_bytes() == b"s" * 1000
    assert (dst / "fresh").read_bytes() == (src / "fresh").read_bytes()


def test_checksum_compare_sends_a_same_size_change_as_a_delta(tmp_path):
    src, dst, _ = trees(tmp_path)
    same_size = bytearray((dst / "big").read_bytes())
    same_size[123_456] ^= 0x55
    (src / "big").write_bytes(bytes(same_size))
    os.utime(src / "big", (T0, T0))  # same size and mtime: only --checksum sees it
    d = CountingBasis(dst)
    s = run(src, d, delta=Delta.ON, compare=Compare.CHECKSUM)
    assert s.exit_code == 0, s.errors
    assert (dst / "big").read_bytes() == bytes(same_size)
    assert d.signatures == 1 and s.files_updated == 1 and s.bytes_transferred < 64 * 1024


def test_plan_computes_no_delta(tmp_path):
    src, dst, _ = trees(tmp_path)
    d = CountingBasis(dst)
    s = run(src, d, delta=Delta.ON, dry_run=True)
    assert s.exit_code == 0, s.errors
    assert s.files_updated == 1 and s.bytes_matched == 0
    assert d.signatures == 0


def test_delta_on_refused_where_the_destination_cannot_rebuild(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x" * 100_000)
    bucket = Tree({"": D()}, name="s3://bucket/prefix")  # an object store: no DeltaBasis
    s = run(tmp_path / "src", bucket, delta=Delta.ON)
    assert s.fatal is not None and s.fatal.kind == ErrorKind.USAGE
    assert "--delta on" in str(s.fatal) and "s3://bucket/prefix" in str(s.fatal)


def flip_byte(path: str, call: int) -> None:
    """A same-size change of the basis, after the first signature only."""
    if call == 1:
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"\x00\x01\x02")


def test_basis_changed_after_signature_is_retried(tmp_path):
    src, dst, new = trees(tmp_path)
    d = CountingBasis(dst, flip_byte)
    s = run(src, d, delta=Delta.ON)
    assert s.exit_code == 0, s.errors
    assert (dst / "big").read_bytes() == new
    assert d.signatures == 2  # the rebuild's digest differed: a retry, with a new signature


def test_basis_truncated_after_signature_is_retried(tmp_path):
    src, dst, new = trees(tmp_path)

    def truncate(path: str, call: int) -> None:
        if call == 1:
            os.truncate(path, 1000)

    d = CountingBasis(dst, truncate)
    s = run(src, d, delta=Delta.ON)
    assert s.exit_code == 0, s.errors
    assert (dst / "big").read_bytes() == new
    assert d.signatures == 2


def test_basis_vanished_after_signature_falls_back_to_whole_file(tmp_path):
    src, dst, new = trees(tmp_path)

    def remove(path: str, call: int) -> None:
        os.unlink(path)

    d = CountingBasis(dst, remove)
    s = run(src, d, delta=Delta.ON)
    assert s.exit_code == 0, s.errors
    assert (dst / "big").read_bytes() == new
    assert d.signatures == 1 and s.bytes_matched == 0
    assert s.bytes_transferred == len(new)


def test_basis_changing_on_every_attempt_fails_cleanly(tmp_path):
    src, dst, new = trees(tmp_path)

    def always(path: str, call: int) -> None:
        with open(path, "r+b") as f:
            f.seek(call * 100_000)  # a block the delta copies (earlier damage goes as literal)
            f.write(b"\xaa\xbb")

    d = CountingBasis(dst, always)
    s = run(src, d, delta=Delta.ON, retries=2)
    assert s.files_failed == 1
    assert s.errors[0].kind == ErrorKind.SOURCE_CHANGED
    assert d.signatures == 3
    assert (dst / "big").read_bytes() != new  # never published from a changed basis
    assert os.stat(dst / "big").st_size == 6 * MiB  # the old file, with the test's changes
    assert leftovers(dst) == []


def ferry(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ferry.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_delta_flag_and_lean_start_up(tmp_path):
    src, dst, new = trees(tmp_path, 2 * MiB)
    done = ferry("copy", str(src), str(dst), "--delta", "on", "--json", "--progress", "none")
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["bytesMatched"] > 0 and doc["bytesTransferred"] < 64 * 1024
    assert (dst / "big").read_bytes() == new
    assert "numpy" in done.stderr  # importtime: the delta ran, and loaded NumPy
    bad = ferry("copy", str(src), str(dst), "--delta", "sometimes")
    assert bad.returncode == 2 and "--delta" in bad.stderr
    # NumPy loads only when a delta runs: not for --version, nor for a whole-file copy.
    assert "numpy" not in ferry("--version").stderr
    (src / "big").write_bytes(b"changed" * 100_000)
    whole = ferry("copy", str(src), str(dst), "--json", "--progress", "none")
    assert whole.returncode == 0 and json.loads(whole.stdout)["bytesMatched"] == 0
    assert "numpy" not in whole.stderr


def test_delta_with_verify_full_reads_the_rebuilt_file_back(tmp_path):
    src, dst, new = trees(tmp_path)
    s = run(src, CountingBasis(dst), delta=Delta.ON, verify=Verify.FULL)
    assert s.exit_code == 0, s.errors
    assert (dst / "big").read_bytes() == new and s.files_verified == 1 and s.bytes_matched > 0


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["overwrite", "insert", "delete"]),
            st.floats(0, 1),
            st.integers(1, 70_000),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_random_edits_through_the_engine(tmp_path_factory, seed, edits):
    root = tmp_path_factory.mktemp("edits")
    (root / "src").mkdir()
    (root / "dst").mkdir()
    rnd = random.Random(seed)
    old = rnd.randbytes(rnd.randrange(64 * 1024, 600_000))
    new = old
    for kind, at, length in edits:
        pos = int(at * len(new))
        if kind == "overwrite":
            new = new[:pos] + rnd.randbytes(length) + new[pos + length :]
        elif kind == "insert":
            new = new[:pos] + rnd.randbytes(length) + new[pos:]
        else:
            new = new[:pos] + new[pos + length :]
    (root / "dst" / "f").write_bytes(old)
    (root / "src" / "f").write_bytes(new)
    os.utime(root / "dst" / "f", (T0, T0))
    s = run(root / "src", CountingBasis(root / "dst"), delta=Delta.ON)
    assert s.exit_code == 0, s.errors
    assert (root / "dst" / "f").read_bytes() == new
    assert s.bytes_matched + s.bytes_transferred >= len(new)  # every byte came from somewhere


def test_the_basis_is_not_read_through_a_symlinked_directory(tmp_path):
    """Signatures and a delta's copies read the basis only inside the root: a directory
    symlinked out of it is not followed, so no block from outside can land in a file inside,
    and no signature of an outside file is given."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = random.Random(13).randbytes(200_000)
    (outside / "f").write_bytes(secret)
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    from ferry.mover import delta
    from ferry.mover.integrity import digest_bytes

    sig = delta.compute(lambda off, n: secret[off : off + n], len(secret))
    chunks = delta.encode_ops(
        [delta.Copy(0, sig.count)],
        block_size=sig.block_size,
        basis_size=len(secret),
        digest=lambda: digest_bytes(secret),
    )
    backend = LocalBackend(str(root))
    entry = backend.stat("link/f")
    assert entry is not None
    with pytest.raises(FerryError, match="Not a directory"):  # O_NOFOLLOW on "link"
        backend.apply_delta("link/f", entry, chunks, "", Options().preserve)
    with pytest.raises(FerryError, match="Not a directory"):
        backend.signature("link/f", entry, None)
    assert (outside / "f").read_bytes() == secret
