"""Ferry over its own wire (`ferry serve` on loopback, mutual TLS) against `rsync -a` over
ssh to the test sshd, same data, same run.

    .venv/bin/python -m benchmarks.wire [--big-mib 256] [--small 2000] [--repeat N]

Cases: a mixed tree (many small files and a few large ones) and one large file, each sent
new and then changed (a tenth of the small files rewritten, a region of each large file
overwritten). rsync runs as people run it (`rsync -a -e ssh`, its delta algorithm on for
changed files, no fsync); Ferry with `--fsync none` to match (no fsync either). Both
servers share the machine's cores with their clients. Prints each time and Ferry/rsync.
`--delta auto,on` times Ferry both ways in the same rounds (each to its own destination)
and shows the MiB each reused from the basis (a delta's work).
"""

from __future__ import annotations

import argparse
import json
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


def timed(cmd: list[str], env: dict[str, str] | None = None, out: list[str] | None = None) -> float:
    """Seconds `cmd` took; its stdout appended to `out` if given."""
    os.sync()  # nobody pays for the previous run's write-back
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-800:]}")
    if out is not None:
        out.append(p.stdout)
    return dt


def matched_mib(stdout: str) -> float:
    """bytesMatched of a `ferry --json` summary (the last JSON line), in MiB."""
    doc = json.loads(stdout.strip().splitlines()[-1])
    return float(doc.get("bytesMatched", 0)) / 2**20


class Serve:
    """`ferry serve` on a free port of `host` (loopback unless told)."""

    def __init__(self, root: Path, certs_dir: Path, host: str = "127.0.0.1") -> None:
        self.certs = make_certs(certs_dir, server_ips=(host,))
        self.root = root
        self.host = host
        log = open(certs_dir / "serve.log", "w")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            [
                *FERRY,
                "serve",
                str(root),
                "--listen",
                f"{host}:0",
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
        return f"ferry://{self.host}:{self.port}/{path}?{q}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- the shaped link: a network namespace behind a rate-limited veth pair -------------------

NETNS = "ferry-bench-client"
HOST_IF, CLIENT_IF = "fbench0", "fbench1"
HOST_IP, CLIENT_IP = "10.199.77.1", "10.199.77.2"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class ShapedLink:
    """The clients run in NETNS; the servers listen on HOST_IP at the other end of a veth
    pair whose both directions are shaped to `rate` by tbf. (netem, for the issue's 20 ms
    of delay, is not in every kernel: this VM's has no sch_netem, so the link here is
    rate-limited only.)"""

    def __init__(self, rate: str) -> None:
        self.rate = rate

    def __enter__(self) -> ShapedLink:
        self.__exit__()
        sh("ip", "netns", "add", NETNS)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", CLIENT_IF)
        sh("ip", "link", "set", CLIENT_IF, "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        inside = ("ip", "netns", "exec", NETNS)
        sh(*inside, "ip", "addr", "add", f"{CLIENT_IP}/30", "dev", CLIENT_IF)
        sh(*inside, "ip", "link", "set", CLIENT_IF, "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        tbf = ("root", "tbf", "rate", self.rate, "burst", "64kb", "latency", "100ms")
        sh("tc", "qdisc", "add", "dev", HOST_IF, *tbf)
        sh(*inside, "tc", "qdisc", "add", "dev", CLIENT_IF, *tbf)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)

    @staticmethod
    def wire_bytes() -> int:
        stats = Path("/sys/class/net") / HOST_IF / "statistics"
        return sum(int((stats / f).read_text()) for f in ("rx_bytes", "tx_bytes"))


def shaped(args: argparse.Namespace, tmp: Path) -> None:
    """Compressible data over the shaped link: Ferry with zstd (--compress auto) against
    rsync -z over ssh, and each without compression; time and bytes on the wire."""
    data = tmp / "shaped"
    (data / "logs").mkdir(parents=True)
    n = 0
    for i in range(8):
        lines = []
        size = 0
        while size < args.shaped_mib << 20:
            line = (
                f"2026-12-07T14:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}Z INFO "
                f"request id={n * 7919 % 1000003} path=/api/v1/items/{n % 4099} "
                f"status={200 if n % 17 else 404} ms={n * 31 % 997}\n"
            )
            lines.append(line)
            size += len(line)
            n += 1
        (data / "logs" / f"app{i}.log").write_text("".join(lines))
    os.system(f"chmod -R a+rX {tmp}")
    raw = sum(p.stat().st_size for p in (data / "logs").iterdir())
    with ShapedLink(args.rate):
        srv = SSHServer(host=HOST_IP).start()
        serve: Serve | None = None
        try:
            (tmp / "served-shaped").mkdir()
            (tmp / "certs-shaped").mkdir()
            serve = Serve(tmp / "served-shaped", tmp / "certs-shaped", HOST_IP)
            ssh = (
                f"ssh -p {srv.port} -i {srv.user_key} -o UserKnownHostsFile={srv.known_hosts} "
                "-o StrictHostKeyChecking=yes -o BatchMode=yes"
            )
            inside = ["ip", "netns", "exec", NETNS]
            dest = f"{srv.user}@{HOST_IP}:{srv.root}"
            runs = {
                "ferry (zstd auto)": [*FERRY, "copy", str(data), serve.url("z"), "--fsync", "none"],
                "rsync -z": ["rsync", "-az", "-e", ssh, f"{data}/", f"{dest}/z/"],
                "ferry --compress off": [
                    *FERRY,
                    "copy",
                    str(data),
                    serve.url("raw"),
                    "--fsync",
                    "none",
                    "--compress",
                    "off",
                ],
                "rsync (no -z)": ["rsync", "-a", "-e", ssh, f"{data}/", f"{dest}/raw/"],
            }
            print(
                f"\nshaped link ({args.rate} each way, tbf; no added delay): "
                f"{raw / 2**20:.0f} MiB of logs"
            )
            print(f"{'tool':22} {'seconds':>8} {'MiB on wire':>12}")
            for name, cmd in runs.items():
                before = ShapedLink.wire_bytes()
                secs = timed([*inside, *cmd])
                moved = ShapedLink.wire_bytes() - before
                print(f"{name:22} {secs:8.2f} {moved / 2**20:12.2f}", flush=True)
        finally:
            if serve is not None:
                serve.close()
            srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=256, help="the one large file")
    ap.add_argument("--small", type=int, default=2000, help="small files in the mixed tree")
    ap.add_argument("--large", type=int, default=4, help="large files in the mixed tree")
    ap.add_argument("--large-mib", type=int, default=32, help="their size")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the report shows medians")
    ap.add_argument(
        "--delta",
        default="auto",
        help="Ferry's --delta, or several comma-separated, each timed in the same rounds to "
        "a destination of its own (on: every changed file as a delta, what auto did on the "
        "wire before it weighed the link)",
    )
    ap.add_argument(
        "--shaped",
        action="store_true",
        help="instead: compressible data over a rate-limited veth pair (needs root, ip, tc)",
    )
    ap.add_argument("--rate", default="100mbit", help="the shaped link's rate (tc units)")
    ap.add_argument("--shaped-mib", type=int, default=16, help="MiB per log file (8 files)")
    args = ap.parse_args()
    compile_ferry()
    tmp = Path(tempfile.mkdtemp(prefix="ferry-wire-bench-"))
    os.chmod(tmp, 0o755)
    if args.shaped:
        try:
            shaped(args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
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
        modes = [m.strip() for m in args.delta.split(",") if m.strip()]
        if not modes or not set(modes) <= {"auto", "on", "off"}:
            raise SystemExit("--delta: auto, on, off, or several of them comma-separated")
        # (case, phase) -> tool -> seconds of each round; tool "rsync" or "ferry <mode>"
        rows: dict[tuple[str, str], dict[str, list[float]]] = {}
        matched: dict[tuple[str, str, str], list[float]] = {}
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
                    runs: list[tuple[str, list[str]]] = [
                        (
                            f"ferry {mode}",
                            [
                                *FERRY,
                                "copy",
                                str(src),
                                serve.url(f"{dest}-{mode}"),
                                *("--fsync", "none", "--delta", mode, "--json"),
                            ],
                        )
                        for mode in modes
                    ]
                    runs.append(("rsync", rsync))
                    # Whoever goes first finds the source less warm: rotate the order by round.
                    k = rnd % len(runs)
                    got = rows.setdefault((case, phase), {})
                    line = []
                    for tool, cmd in runs[k:] + runs[:k]:
                        out: list[str] = []
                        got.setdefault(tool, []).append(timed(cmd, out=out))
                        if tool != "rsync":
                            key = (case, phase, tool)
                            matched.setdefault(key, []).append(matched_mib(out[0]))
                    for tool in (t for t, _ in runs):
                        line.append(f"{tool} {got[tool][-1]:6.2f}s")
                    print(f"  {case:5} {phase:8} " + "  ".join(line), flush=True)
        print(
            f"\nmixed tree: {args.small} small files + {args.large} x {args.large_mib} MiB; "
            f"one file: {args.big_mib} MiB; medians of {args.repeat} round(s); "
            "ferry/rsync (MiB reused from the basis: deltas)"
        )
        head = "".join(f"{'ferry ' + m:>24}" for m in modes)
        print(f"{'case':16} {'rsync s':>8}{head}  target <= {TARGET}")
        for (case, phase), tools in rows.items():
            r = statistics.median(tools["rsync"])
            cells = []
            for m in modes:
                f = statistics.median(tools[f"ferry {m}"])
                mib = statistics.median(matched[(case, phase, f"ferry {m}")])
                cells.append(f"{f:6.2f}s {f / r:5.2f} ({mib:5.0f})")
            print(f"{case + ' ' + phase:16} {r:8.2f}" + "".join(f"{c:>24}" for c in cells))
    finally:
        if serve is not None:
            serve.close()
        srv.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
