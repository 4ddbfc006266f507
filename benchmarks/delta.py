"""Delta benchmark: Ferry's block delta against rsync's (and librsync's `rdiff`), one run.

    .venv/bin/python -m benchmarks.delta [--size MiB] [--repeat N] [--json OUT] [--no-rdiff]

A basis of seeded incompressible bytes (`--size`, default 1024 MiB) and a new version
with 5 % of its bytes overwritten in scattered 64 KiB regions plus 1 MiB inserted in the
middle are generated under `benchmarks/.data/delta/` (not timed; reused when present).
Both files are read once first (warm cache), and `sync` runs before each timed run (so no
run is throttled by the dirty pages of the one before). Then:

- Ferry, in this process, on one core: the basis's signature (`delta.compute`), the match
  and encoding (`delta.diff` + `delta.encode_ops`: the encoded bytes are what would cross),
  and the rebuild into a new file (`delta.apply` through the decoder), each timed; the
  rebuilt file's digest is checked against the new file's (not timed).
- `ferry copy --delta on`: the whole engine in a process of its own (start-up, plan,
  signature, match, rebuild, commit), onto a copy of the basis (not timed); twice: with
  the default `--fsync end` (the rebuilt file goes to the disk with O_DIRECT and is flushed
  before success) and with `--fsync none` (left to the kernel's write-back, as rsync does).
- rsync: the basis copied to a destination (not timed), then
  `rsync --no-whole-file --ignore-times --stats NEW DEST` (wall time; "Literal data").
- rdiff, when installed: signature, delta and patch (wall time; delta file size).

Ferry, ferry copy and rsync run round-robin `--repeat` times (default 3); medians are
printed. Ratios printed (issue 22): Ferry's encoded delta / rsync's literal data (target <= 1.15),
Ferry time / rsync time (<= 1.0; sig + match, and with the rebuild), signature + match
throughput in MB/s of the new file (>= 300).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.datasets import DATA_DIR, MiB

KiB = 1024
REGION = 64 * KiB
INSERT = MiB
SEED = 22


def _stream(name: str, size: int, out: Any) -> None:
    """`size` bytes of a keyed BLAKE3 XOF stream named `name` written to `out`."""
    import blake3

    h = blake3.blake3(key=blake3.blake3(f"ferry-bench/delta/{name}".encode()).digest())
    for at in range(0, size, 8 * MiB):
        out.write(h.digest(length=min(8 * MiB, size - at), seek=at))


def generate(size: int, where: Path) -> tuple[Path, Path]:
    """The basis and the new file (cached under `where`, a marker written last)."""
    basis, new, marker = where / "basis", where / "new", where / "done.json"
    if marker.exists():
        return basis, new
    where.mkdir(parents=True, exist_ok=True)
    with open(basis, "wb") as out:
        _stream(f"basis-{size}", size, out)
    rnd = random.Random(SEED)
    slots = size // (2 * REGION)  # one region at a random place in each chosen slot
    regions = sorted(rnd.sample(range(slots), round(0.05 * size / REGION)))
    middle = size // 2 + 12_345
    with open(basis, "rb") as src, open(new, "wb") as out:
        at = 0
        edits = [(s * 2 * REGION + rnd.randrange(REGION), "overwrite") for s in regions]
        edits.append((middle, "insert"))
        for n, (pos, kind) in enumerate(sorted(edits)):
            out.write(src.read(pos - at))
            at = pos
            if kind == "insert":
                _stream(f"insert-{size}", INSERT, out)
            else:
                _stream(f"region-{size}-{n}", REGION, out)
                src.seek(REGION, os.SEEK_CUR)
                at += REGION
        shutil.copyfileobj(src, out, 8 * MiB)
    marker.write_text(json.dumps({"size": size, "regions": len(regions), "insert": middle}))
    return basis, new


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def write(fd: int, data: bytes | memoryview, off: int) -> None:
    while data:
        n = os.pwrite(fd, data, off)
        data, off = memoryview(data)[n:], off + n


def run_ferry(basis: Path, new: Path, out: Path) -> dict[str, float]:
    from ferry.mover import delta
    from ferry.mover.integrity import StreamHasher

    bfd, nfd = os.open(basis, os.O_RDONLY), os.open(new, os.O_RDONLY)
    try:
        bsize, nsize = os.fstat(bfd).st_size, os.fstat(nfd).st_size

        def read_basis(off: int, n: int) -> bytes:
            return os.pread(bfd, n, off)

        def read_new(off: int, n: int) -> bytes:
            return os.pread(nfd, n, off)

        os.sync()  # no earlier run's dirty pages to throttle this one's writes
        t0, c0 = time.perf_counter(), time.process_time()
        sig = delta.compute(read_basis, bsize)
        t1, c1 = time.perf_counter(), time.process_time()
        source = StreamHasher()
        ops = delta.diff(sig, read_new, nsize, source.update)
        chunks = list(
            delta.encode_ops(
                ops, block_size=sig.block_size, basis_size=bsize, digest=source.hexdigest
            )
        )
        t2, c2 = time.perf_counter(), time.process_time()
        encoded = sum(len(c) for c in chunks)
        ofd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            t3, c3 = time.perf_counter(), time.process_time()
            stream = delta.open_delta(chunks, bsize, nsize)
            size, digest = delta.apply(
                read_basis,
                bsize,
                sig.block_size,
                stream,
                lambda off, data: write(ofd, data, off),
            )
            t4, c4 = time.perf_counter(), time.process_time()
        finally:
            os.close(ofd)
    finally:
        os.close(bfd)
        os.close(nfd)
    if size != nsize or digest != source.hexdigest() or digest != stream.digest:
        sys.exit("ferry: the rebuilt file differs from the new file")
    return {
        "block_size": sig.block_size,
        "signature_s": t1 - t0,
        "match_s": t2 - t1,
        "apply_s": t4 - t3,
        "signature_cpu_s": c1 - c0,
        "match_cpu_s": c2 - c1,
        "apply_cpu_s": c4 - c3,
        "encoded_bytes": encoded,
        "signature_bytes": delta.encoded_size(bsize, sig.block_size),
    }


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def run_ferry_cli(basis: Path, new: Path, where: Path, fsync: str) -> dict[str, float]:
    """`ferry copy --delta on --fsync FSYNC` of the new file onto a copy of the basis: the
    whole engine (start-up, plan, signature, match, rebuild, commit)."""
    src, dest = where / "ferry-src", where / "ferry-dest"
    for d in (src, dest):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    os.link(new, src / "new")
    shutil.copyfile(basis, dest / "new")
    warm(dest / "new")
    os.sync()  # no earlier run's dirty pages to throttle this one's writes
    cmd = [sys.executable, "-m", "ferry.cli", "copy", str(src), str(dest), "--delta", "on"]
    cmd += ["--fsync", fsync, "--json", "--progress", "none"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    cpu = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(before)
    doc = json.loads(done.stdout)
    if doc["filesUpdated"] != 1 or not filecmp.cmp(new, dest / "new", shallow=False):
        sys.exit("ferry copy --delta on: the destination differs from the new file")
    for d in (src, dest):
        shutil.rmtree(d)
    return {
        "time_s": elapsed,
        "cpu_s": cpu,
        "bytes_transferred": doc["bytesTransferred"],
        "bytes_matched": doc["bytesMatched"],
    }


def run_rsync(basis: Path, new: Path, where: Path) -> dict[str, float] | None:
    if not shutil.which("rsync"):
        print("rsync not installed: skipped", file=sys.stderr)
        return None
    dest = where / "rsync-dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    shutil.copyfile(basis, dest / "new")
    warm(dest / "new")
    os.sync()  # no earlier run's dirty pages to throttle this one's writes
    cmd = ["rsync", "--no-whole-file", "--ignore-times", "--stats", str(new), str(dest / "new")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    cpu = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(before)
    shutil.rmtree(dest)

    def stat(name: str) -> int:
        m = re.search(rf"^{name}: ([\d,]+)", done.stdout, re.M)
        if not m:
            sys.exit(f"rsync --stats printed no {name!r}:\n{done.stdout}")
        return int(m.group(1).replace(",", ""))

    return {
        "time_s": elapsed,
        "cpu_s": cpu,
        "literal_bytes": stat("Literal data"),
        "matched_bytes": stat("Matched data"),
        "sent_bytes": stat("Total bytes sent"),
    }


def run_rdiff(basis: Path, new: Path, where: Path) -> dict[str, float] | None:
    if not shutil.which("rdiff"):
        print("rdiff not installed (Debian package rdiff): skipped", file=sys.stderr)
        return None
    sig, dlt, out = where / "rdiff.sig", where / "rdiff.delta", where / "rdiff.out"
    times = []
    for cmd in (
        ["rdiff", "signature", str(basis), str(sig)],
        ["rdiff", "delta", str(sig), str(new), str(dlt)],
        ["rdiff", "patch", str(basis), str(dlt), str(out)],
    ):
        os.sync()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        times.append(time.perf_counter() - t0)
    result = {
        "signature_s": times[0],
        "delta_s": times[1],
        "patch_s": times[2],
        "time_s": sum(times),
        "delta_bytes": dlt.stat().st_size,
    }
    for p in (sig, dlt, out):
        p.unlink()
    return result


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each number's median over the runs (sizes are the same in every run)."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="basis size in MiB (default 1024)")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    ap.add_argument("--no-rdiff", action="store_true", help="skip librsync's rdiff")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    args = ap.parse_args(argv)
    size = args.size * MiB
    where = DATA_DIR / "delta" / f"{args.size}m"
    print(f"generating {args.size} MiB basis and new version under {where} (not timed)...")
    basis, new = generate(size, where)
    warm(basis)
    warm(new)
    new_size = new.stat().st_size
    rebuilt = where / "ferry.out"
    runs: dict[str, list[dict[str, float]]] = {"ferry": [], "cli": [], "cli_none": [], "rsync": []}
    for _ in range(args.repeat):  # round-robin, so background load spreads over all three
        runs["ferry"].append(run_ferry(basis, new, rebuilt))
        rebuilt.unlink()
        runs["cli"].append(run_ferry_cli(basis, new, where, "end"))
        runs["cli_none"].append(run_ferry_cli(basis, new, where, "none"))
        done = run_rsync(basis, new, where)
        if done:
            runs["rsync"].append(done)
    ferry, cli = median_run(runs["ferry"]), median_run(runs["cli"])
    cli_none = median_run(runs["cli_none"])
    rsync = median_run(runs["rsync"]) if runs["rsync"] else None
    rdiff = None if args.no_rdiff else run_rdiff(basis, new, where)
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} runs, each number on its own")

    sig_match = ferry["signature_s"] + ferry["match_s"]
    total = sig_match + ferry["apply_s"]
    print(f"\nbasis {args.size} MiB, new {new_size / MiB:.1f} MiB, block {ferry['block_size']}")
    print(
        f"ferry: signature {ferry['signature_s']:.2f} s ({ferry['signature_bytes']} B), "
        f"match+encode {ferry['match_s']:.2f} s, rebuild {ferry['apply_s']:.2f} s; "
        f"encoded delta {ferry['encoded_bytes']:,} B"
    )
    cpu = ferry["signature_cpu_s"] + ferry["match_cpu_s"]
    print(
        f"       CPU: signature {ferry['signature_cpu_s']:.2f} s, match {ferry['match_cpu_s']:.2f} s, "
        f"rebuild {ferry['apply_cpu_s']:.2f} s"
    )
    print(
        f"       signature + match: {new_size / sig_match / 1e6:.0f} MB/s wall, "
        f"{new_size / cpu / 1e6:.0f} MB/s of CPU (target >= 300, one core)"
    )
    print(
        f"ferry copy --delta on: {cli['time_s']:.2f} s (CPU {cli['cpu_s']:.2f} s; --fsync none "
        f"{cli_none['time_s']:.2f} s, CPU {cli_none['cpu_s']:.2f} s), "
        f"bytesTransferred {cli['bytes_transferred']:,}, bytesMatched {cli['bytes_matched']:,}"
    )
    ratios: dict[str, float] = {"sig_match_mb_s": new_size / sig_match / 1e6}
    if rsync:
        print(
            f"rsync: {rsync['time_s']:.2f} s (CPU {rsync['cpu_s']:.2f} s, all its processes), literal data {rsync['literal_bytes']:,} B, "
            f"matched {rsync['matched_bytes']:,} B, sent {rsync['sent_bytes']:,} B"
        )
        ratios["delta_vs_rsync_literal"] = ferry["encoded_bytes"] / rsync["literal_bytes"]
        ratios["sig_match_vs_rsync_time"] = sig_match / rsync["time_s"]
        ratios["with_rebuild_vs_rsync_time"] = total / rsync["time_s"]
        ratios["ferry_copy_vs_rsync_time"] = cli["time_s"] / rsync["time_s"]
        ratios["ferry_copy_fsync_none_vs_rsync_time"] = cli_none["time_s"] / rsync["time_s"]
        print(
            f"ratios: encoded delta / rsync literal {ratios['delta_vs_rsync_literal']:.3f} "
            f"(target <= 1.15); ferry sig+match / rsync time "
            f"{ratios['sig_match_vs_rsync_time']:.2f}, with rebuild "
            f"{ratios['with_rebuild_vs_rsync_time']:.2f}, ferry copy / rsync "
            f"{ratios['ferry_copy_vs_rsync_time']:.2f} (--fsync none "
            f"{ratios['ferry_copy_fsync_none_vs_rsync_time']:.2f}) (target <= 1.0)"
        )
    if rdiff:
        print(
            f"rdiff: {rdiff['time_s']:.2f} s (signature {rdiff['signature_s']:.2f}, delta "
            f"{rdiff['delta_s']:.2f}, patch {rdiff['patch_s']:.2f}), delta {rdiff['delta_bytes']:,} B"
        )
    if args.json:
        doc = {"size_mib": args.size, "ferry": ferry, "ferry_copy": cli, "rsync": rsync}
        doc["ferry_copy_fsync_none"] = cli_none
        doc["runs"] = runs
        doc["rdiff"] = rdiff
        args.json.write_text(json.dumps(doc | {"ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
