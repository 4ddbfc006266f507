"""Ferry over its own wire (`ferry serve` on loopback, mutual TLS) against `rsync -a` over
ssh to the test sshd, same data, same run.

    .venv/bin/python -m benchmarks.wire [--big-mib 256] [--small 2000] [--repeat N]

Cases: a mixed tree (many small files and a few large ones) and one large file, each sent
new and then changed (a tenth of the small files rewritten, a region of each large file
overwritten). rsync runs as people run it (`rsync -a -e ssh`, its delta algorithm on for
changed files, no fsync); Ferry with `--fsync none` to match (no fsync either). Both
servers share the machine's cores with their clients. Prints each time and Ferry/rsync.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import compile_ferry  # noqa: E402
from tests.servers import SSHServer  # noqa: E402
from tests.wire.certs import make_certs  # noqa: E402

FERRY = [sys.executable, "-m", "ferry.cli"]
TARGET = 0.7  # the goal: Ferry's time at most this share of rsync's


def make_tree(root: Path, small: int, large: int, large_mib: int) -> None:
    """Small files of 1-64 KiB (half text, half random) in 20 directories, plus large ones."""
    rnd = os.urandom(1 << 20)
    line = b"2026-12-07 ferry benchmark line with some words that repeat\n"
    for i in range(small):
        d = root / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        size = 1024 * (1 + (i * 37) % 64)
        data = (line * (size // len(line) + 1))[:size] if i % 2 else rnd[i : i + size]
        (d / f"f{i:06d}").write_bytes(data)
    for i in range(large):
        write_large(root / f"large{i}.bin", large_mib, seed=i)


def write_large(path: Path, mib: int, seed: int) -> None:
    block = os.urandom(1 << 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(block[(i + seed) % 97 :] + block[: (i + seed) % 97])


def change(root: Path) -> None:
    """Rewrite every tenth small file and overwrite 1 MiB in the middle of each large one."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        if p.name.startswith("large") or p.name.startswith("big"):
            with open(p, "r+b") as f:
                f.seek(p.stat().st_size // 2)
                f.write(os.urandom(1 << 20))
        elif int(p.name[1:]) % 10 == 0:
            p.write_bytes(os.urandom(p.stat().st_size))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    os.sync()  # nobody pays for the previous run's write-back
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-800:]}")
    return dt


class Serve:
    """`ferry serve` on a free loopback port."""

    def __init__(self, root: Path, certs_dir: Path) -> None:
        self.certs = make_certs(certs_dir)
        self.root = root
        log = open(certs_dir / "serve.log", "w")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            [
                *FERRY,
                "serve",
                str(root),
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                str(self.certs.server.cert),
                "--tls-key",
                str(self.certs.server.key),
                "--tls-ca",
                str(self.certs.ca),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"listening on [\d.]+:(\d+)", (certs_dir / "serve.log").read_text())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("ferry serve did not start: " + (certs_dir / "serve.log").read_text())

    def url(self, path: str) -> str:
        c = self.certs
        q = f"tls_cert={c.client.cert}&tls_key={c.client.key}&tls_ca={c.ca}"
        return f"ferry://127.0.0.1:{self.port}/{path}?{q}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=256, help="the one large file")
    ap.add_argument("--small", type=int, default=2000, help="small files in the mixed tree")
    ap.add_argument("--large", type=int, default=4, help="large files in the mixed tree")
    ap.add_argument("--large-mib", type=int, default=32, help="their size")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the report shows medians")
    args = ap.parse_args()
    compile_ferry()
    tmp = Path(tempfile.mkdtemp(prefix="ferry-wire-bench-"))
    os.chmod(tmp, 0o755)
    srv = SSHServer().start()
    serve: Serve | None = None
    try:
        (tmp / "served").mkdir()
        (tmp / "certs").mkdir()
        serve = Serve(tmp / "served", tmp / "certs")
        ssh = (
            f"ssh -p {srv.port} -i {srv.user_key} -o UserKnownHostsFile={srv.known_hosts} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes"
        )
        rows: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.repeat):
            data = tmp / f"data{rnd}"
            make_tree(data / "tree", args.small, args.large, args.large_mib)
            write_large(data / "one" / "big.bin", args.big_mib, seed=7)
            os.system(f"chmod -R a+rX {data}")
            for case in ("tree", "one"):
                src = data / case
                for phase in ("new", "changed"):
                    if phase == "changed":
                        change(src)
                    dest = f"r{rnd}-{case}"
                    rsync = ["rsync", "-a", "-e", ssh, f"{src}/"]
                    rsync.append(f"{srv.user}@127.0.0.1:{srv.root}/{dest}/")
                    ferry = [*FERRY, "copy", str(src), serve.url(dest), "--fsync", "none"]
                    # Whoever goes second finds the source in the page cache: alternate.
                    if rnd % 2:
                        t_ferry, t_rsync = timed(ferry), timed(rsync)
                    else:
                        t_rsync, t_ferry = timed(rsync), timed(ferry)
                    rows.setdefault((case, phase), []).extend([t_ferry, t_rsync])
                    print(
                        f"  {case:5} {phase:8} ferry {t_ferry:7.2f}s  rsync {t_rsync:7.2f}s  "
                        f"ratio {t_ferry / t_rsync:5.2f}",
                        flush=True,
                    )
        n_small = args.small
        print(
            f"\nmixed tree: {n_small} small files + {args.large} x {args.large_mib} MiB; "
            f"one file: {args.big_mib} MiB; medians of {args.repeat} round(s)"
        )
        print(f"{'case':16} {'ferry s':>8} {'rsync s':>8} {'ferry/rsync':>12}  target <= {TARGET}")
        for (case, phase), times in rows.items():
            f = statistics.median(times[0::2])
            r = statistics.median(times[1::2])
            verdict = "ok" if f / r <= TARGET else "MISSED"
            print(f"{case + ' ' + phase:16} {f:8.2f} {r:8.2f} {f / r:12.2f}  {verdict}")
    finally:
        if serve is not None:
            serve.close()
        srv.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
