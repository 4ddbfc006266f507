"""Ferry's S3/SFTP/SMB backends against the clients people use today, same run, same server.

    .venv/bin/python -m benchmarks.backends [--big-mib 256] [--small 500] [--only s3,sftp,smb]
                                            [--repeat N] [--s3-server versitygw|moto]

Starts versitygw (or moto), sshd and smbd on loopback (tests/servers), then times one
large file and many small files up and down with Ferry, rclone (remotes
configured through RCLONE_CONFIG_* environment variables: nothing with a
secret is written to a config file), OpenSSH sftp/scp, smbclient, plain boto3
upload_file/download_file and paramiko put/get (benchmarks/libclients.py),
every one timed as a process. Prints MB/s (10^6 bytes/s) and files/s and
Ferry's ratio to each. Both S3 servers share the machine's two
cores with the clients: compare clients with each other, not with AWS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import compile_ferry  # noqa: E402
from benchmarks.datasets import discard  # noqa: E402
from tests.servers import MotoServer, SambaServer, SSHServer, VersityServer  # noqa: E402
from tests.servers.s3api import S3ApiServer  # noqa: E402

BUCKET = "bench"
FERRY = [sys.executable, "-m", "ferry.cli"]
LIBCLIENT = [sys.executable, "-m", "benchmarks.libclients"]  # plain boto3 / paramiko


def make_data(root: Path, big_mib: int, small: int) -> tuple[Path, Path]:
    big = root / "big"
    big.mkdir(parents=True)
    block = os.urandom(1 << 20)
    with open(big / "big.bin", "wb") as f:
        for i in range(big_mib):
            f.write(block[i % 97 :] + block[: i % 97])
    many = root / "many"
    for i in range(small):
        d = many / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.dat").write_bytes(os.urandom(8192))
    return big, many


def run(cmd: list[str], env: dict[str, str] | None = None, input: str | None = None) -> float:
    full = {**os.environ, **(env or {})}
    if cmd[0] == "rclone":
        full.pop(
            "AWS_CA_BUNDLE", None
        )  # rclone 1.60 cannot load a CA bundle for a plain-HTTP endpoint
    t = time.perf_counter()
    p = subprocess.run(
        cmd,
        env=full,
        input=input,
        text=True,
        capture_output=True,
        cwd=REPO,
    )
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-800:]}")
    return dt


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
        self.big, self.many = make_data(self.tmp / "data", args.big_mib, args.small)
        self.big_bytes = args.big_mib << 20
        self.trash = self.tmp / "trash"  # deleted with the rest of tmp, after the report
        self.rows: list[tuple[str, str, str, float]] = []  # backend, case, tool, seconds

    def out_dir(self) -> Path:
        return self.tmp / "out" / uuid.uuid4().hex[:8]

    def record(self, backend: str, case: str, tool: str, fn: Callable[[], float]) -> None:
        # Nobody pays for an earlier tool's write-back (Ferry's end-of-run flush would).
        os.sync()
        try:
            secs = fn()
        except Exception as exc:
            print(f"  {backend:5} {case:12} {tool:16} FAILED: {str(exc)[:300]}", flush=True)
            return
        self.rows.append((backend, case, tool, secs))
        n = self.big_bytes / 1e6 if case.startswith("big") else self.args.small
        unit = "MB/s" if case.startswith("big") else "files/s"
        extra = ""
        if case.endswith("-down"):
            # Ferry flushes what it downloaded before it exits; the others leave it to the
            # kernel. "-down+sync" rows count the time until the data is on disk for all.
            t = time.perf_counter()
            os.sync()
            flush = time.perf_counter() - t
            self.rows.append((backend, case + "+sync", tool, secs + flush))
            extra = f"  +sync {flush:5.2f}s"
        print(
            f"  {backend:5} {case:12} {tool:16} {secs:7.2f}s {n / secs:9.1f} {unit}{extra}",
            flush=True,
        )

    def cases(
        self,
        backend: str,
        tools: Mapping[str, tuple[Callable[[Path, str], float], Callable[[str, Path], float]]],
        stored: Callable[[str], Path | None],
    ) -> None:
        """For each tool: upload big, download big, upload many, download many (fresh remote
        dirs); `--repeat` rounds, the tool order rotated each round so no tool always runs
        first (or right after the heaviest one).

        Each pair's download and the server's copy (`stored`: where the server keeps a
        remote dir, all servers being local) are moved into the trash before the next
        measurement, off the clock, their big files truncated: kept, they filled the page
        cache through the run (~27 GiB in five rounds), and on this kind of VM buffered
        writes slow down as it grows. They are not deleted until the end: the next tool's
        file creates would pay for the freed inodes (datasets.discard)."""
        names = list(tools)
        for r in range(self.args.repeat):
            for tool in names[r % len(names) :] + names[: r % len(names)]:
                up, down = tools[tool]
                for label, src in (("big", self.big), ("many", self.many)):
                    dest, out = uuid.uuid4().hex[:8], self.out_dir()
                    self.record(backend, f"{label}-up", tool, partial(up, src, dest))
                    self.record(backend, f"{label}-down", tool, partial(down, dest, out))
                    for done in (out, stored(dest)):
                        if done is not None:
                            discard(done, self.trash)

    def ferry_pair(
        self, uri: Callable[[str], str], base: bool = False
    ) -> tuple[Callable[[Path, str], float], Callable[[str, Path], float]]:
        """Upload and download with `ferry copy`; with `base`, the checkout given by
        `--baseline` (first on the path; -P keeps the working directory off it)."""
        cmd = [sys.executable, "-P", "-m", "ferry.cli"] if base else FERRY
        env = {"PYTHONPATH": str(self.args.baseline)} if base else None

        def up(src: Path, dest: str) -> float:
            return run([*cmd, "copy", str(src), uri(dest), "--progress", "none"], env)

        def down(dest: str, out: Path) -> float:
            return run([*cmd, "copy", uri(dest), str(out), "--progress", "none"], env)

        return up, down

    def report(self) -> None:
        print(f"\nFerry vs others (median of {self.args.repeat}; ratio > 1: Ferry faster)")
        samples: dict[tuple[str, str], dict[str, list[float]]] = {}
        for b, c, t, s in self.rows:
            samples.setdefault((b, c), {}).setdefault(t, []).append(s)
        by = {
            k: {t: statistics.median(v) for t, v in tools.items()} for k, tools in samples.items()
        }
        for (b, c), tools in sorted(by.items()):
            if "ferry" not in tools:
                continue
            parts = [f"{t} {tools[t] / tools['ferry']:.2f}x" for t in tools if t != "ferry"]
            n = self.big_bytes / 1e6 if c.startswith("big") else self.args.small
            unit = "MB/s" if c.startswith("big") else "files/s"
            print(f"  {b:5} {c:11} ferry {n / tools['ferry']:8.1f} {unit:7} | " + ", ".join(parts))


# -- S3 ------------------------------------------------------------------------------------


def bench_s3(b: Bench) -> None:
    server: type[S3ApiServer] = {"versitygw": VersityServer, "moto": MotoServer}[b.args.s3_server]
    srv = server()
    srv.start()
    try:
        srv.create_bucket(BUCKET)
        creds = srv.write_credentials(b.tmp / "aws-creds")
        ep = srv.endpoint_url
        renv = {
            "RCLONE_CONFIG_BS3_TYPE": "s3",
            "RCLONE_CONFIG_BS3_PROVIDER": "Other",
            "RCLONE_CONFIG_BS3_ACCESS_KEY_ID": srv.access_key,
            "RCLONE_CONFIG_BS3_SECRET_ACCESS_KEY": srv.secret_key,
            "RCLONE_CONFIG_BS3_ENDPOINT": ep,
            "RCLONE_CONFIG_BS3_REGION": "us-east-1",
            "RCLONE_CONFIG_BS3_FORCE_PATH_STYLE": "true",
        }

        def furi(prefix: str) -> str:
            return f"s3://{BUCKET}/{prefix}?endpoint={ep}&credentials_file={creds}"

        ferry_up, ferry_down = b.ferry_pair(furi)
        base_pair = b.ferry_pair(furi, base=True)

        def rclone_up(src: Path, dest: str) -> float:
            return run(
                ["rclone", "copy", str(src), f"bs3:{BUCKET}/{dest}", "--transfers", "8"], renv
            )

        def rclone_down(dest: str, out: Path) -> float:
            return run(
                ["rclone", "copy", f"bs3:{BUCKET}/{dest}", str(out), "--transfers", "8"], renv
            )

        benv = {
            "AWS_ACCESS_KEY_ID": srv.access_key,
            "AWS_SECRET_ACCESS_KEY": srv.secret_key,
            "BENCH_S3_ENDPOINT": ep,
        }

        def boto_up(src: Path, dest: str) -> float:
            return run([*LIBCLIENT, "boto3", "up", str(src), BUCKET, dest], benv)

        def boto_down(dest: str, out: Path) -> float:
            return run([*LIBCLIENT, "boto3", "down", str(out), BUCKET, dest], benv)

        tools = {
            "ferry": (ferry_up, ferry_down),
            **({"ferry@base": base_pair} if b.args.baseline else {}),
            "rclone": (rclone_up, rclone_down),
            "boto3": (boto_up, boto_down),
        }
        data = srv.data / BUCKET if isinstance(srv, VersityServer) else None  # moto: in memory
        b.cases("s3", tools, lambda dest: data / dest if data else None)
    finally:
        srv.close()


# -- SFTP ----------------------------------------------------------------------------------


def bench_sftp(b: Bench) -> None:
    srv = SSHServer().start()
    try:
        ssh_opts = [
            "-i",
            str(srv.user_key),
            "-o",
            f"UserKnownHostsFile={srv.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
        ]
        renv = {
            "RCLONE_CONFIG_BSFTP_TYPE": "sftp",
            "RCLONE_CONFIG_BSFTP_HOST": "127.0.0.1",
            "RCLONE_CONFIG_BSFTP_PORT": str(srv.port),
            "RCLONE_CONFIG_BSFTP_USER": srv.user,
            "RCLONE_CONFIG_BSFTP_KEY_FILE": str(srv.user_key),
            "RCLONE_CONFIG_BSFTP_KNOWN_HOSTS_FILE": str(srv.known_hosts),
        }
        root = srv.root

        ferry_up, ferry_down = b.ferry_pair(srv.uri)
        base_pair = b.ferry_pair(srv.uri, base=True)

        def rclone_up(src: Path, dest: str) -> float:
            return run(
                ["rclone", "copy", str(src), f"bsftp:{root}/{dest}", "--transfers", "8"], renv
            )

        def rclone_down(dest: str, out: Path) -> float:
            return run(
                ["rclone", "copy", f"bsftp:{root}/{dest}", str(out), "--transfers", "8"], renv
            )

        def sftp_up(src: Path, dest: str) -> float:
            return run(
                ["sftp", "-P", str(srv.port), *ssh_opts, "-b", "-", f"{srv.user}@127.0.0.1"],
                input=f"put -r {src} {root}/{dest}\n",
            )

        def sftp_down(dest: str, out: Path) -> float:
            out.mkdir(parents=True)
            return run(
                ["sftp", "-P", str(srv.port), *ssh_opts, "-b", "-", f"{srv.user}@127.0.0.1"],
                input=f"get -r {root}/{dest} {out}\n",
            )

        def scp_up(src: Path, dest: str) -> float:
            return run(
                [
                    "scp",
                    "-q",
                    "-r",
                    "-P",
                    str(srv.port),
                    *ssh_opts,
                    str(src),
                    f"{srv.user}@127.0.0.1:{root}/{dest}",
                ]
            )

        def scp_down(dest: str, out: Path) -> float:
            return run(
                [
                    "scp",
                    "-q",
                    "-r",
                    "-P",
                    str(srv.port),
                    *ssh_opts,
                    f"{srv.user}@127.0.0.1:{root}/{dest}",
                    str(out),
                ]
            )

        penv = {
            "BENCH_SFTP_HOST": "127.0.0.1",
            "BENCH_SFTP_PORT": str(srv.port),
            "BENCH_SFTP_USER": srv.user,
            "BENCH_SFTP_KEY": str(srv.user_key),
            "BENCH_SFTP_KNOWN_HOSTS": str(srv.known_hosts),
        }

        def pk_up(src: Path, dest: str) -> float:
            return run([*LIBCLIENT, "paramiko", "up", str(src), f"{root}/{dest}"], penv)

        def pk_down(dest: str, out: Path) -> float:
            return run([*LIBCLIENT, "paramiko", "down", str(out), f"{root}/{dest}"], penv)

        tools = {
            "ferry": (ferry_up, ferry_down),
            **({"ferry@base": base_pair} if b.args.baseline else {}),
            "rclone": (rclone_up, rclone_down),
            "openssh-sftp": (sftp_up, sftp_down),
            "scp": (scp_up, scp_down),
            "paramiko": (pk_up, pk_down),
        }
        b.cases("sftp", tools, lambda dest: root / dest)
    finally:
        srv.close()


# -- SMB -----------------------------------------------------------------------------------


def bench_smb(b: Bench) -> None:
    srv = SambaServer().start()
    try:
        obscured = subprocess.run(
            ["rclone", "obscure", "-"], input=srv.password, text=True, capture_output=True
        ).stdout.strip()
        renv = {
            "RCLONE_CONFIG_BSMB_TYPE": "smb",
            "RCLONE_CONFIG_BSMB_HOST": "127.0.0.1",
            "RCLONE_CONFIG_BSMB_PORT": str(srv.port),
            "RCLONE_CONFIG_BSMB_USER": srv.user,
            "RCLONE_CONFIG_BSMB_PASS": obscured,
        }
        auth = b.tmp / "smb-auth"
        auth.write_text(f"username = {srv.user}\npassword = {srv.password}\n")
        os.chmod(auth, 0o600)
        smbc = ["smbclient", f"//127.0.0.1/{srv.share}", "-p", str(srv.port), "-A", str(auth)]

        ferry_up, ferry_down = b.ferry_pair(srv.uri)
        base_pair = b.ferry_pair(srv.uri, base=True)

        def rclone_up(src: Path, dest: str) -> float:
            return run(
                ["rclone", "copy", str(src), f"bsmb:{srv.share}/{dest}", "--transfers", "8"], renv
            )

        def rclone_down(dest: str, out: Path) -> float:
            return run(
                ["rclone", "copy", f"bsmb:{srv.share}/{dest}", str(out), "--transfers", "8"], renv
            )

        def smbc_up(src: Path, dest: str) -> float:
            return run(
                [*smbc, "-c", f"mkdir {dest}; cd {dest}; lcd {src}; prompt OFF; recurse ON; mput *"]
            )

        def smbc_down(dest: str, out: Path) -> float:
            out.mkdir(parents=True)
            return run([*smbc, "-c", f"cd {dest}; lcd {out}; prompt OFF; recurse ON; mget *"])

        tools = {
            "ferry": (ferry_up, ferry_down),
            **({"ferry@base": base_pair} if b.args.baseline else {}),
            "rclone": (rclone_up, rclone_down),
            "smbclient": (smbc_up, smbc_down),
        }
        b.cases("smb", tools, lambda dest: srv.root / dest)
    finally:
        srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--only", default="s3,sftp,smb")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the report shows medians")
    ap.add_argument(
        "--s3-server",
        choices=("versitygw", "moto"),
        default="versitygw",
        help="versitygw: a real S3 server storing files on disk; moto: the in-memory emulator",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run ferry from the checkout at DIR (ferry@base): a refactor against the code "
        "it replaced, same run",
    )
    args = ap.parse_args()
    compile_ferry()
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "ferry" / "cli.py").is_file():
            ap.error(f"--baseline {args.baseline}: not a Ferry checkout (no ferry/cli.py)")
        compile_ferry(args.baseline)
    b = Bench(args)
    try:
        print(f"one file of {args.big_mib} MiB; {args.small} files of 8 KiB")
        for name in args.only.split(","):
            {"s3": bench_s3, "sftp": bench_sftp, "smb": bench_smb}[name](b)
        b.report()
    finally:
        shutil.rmtree(b.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
