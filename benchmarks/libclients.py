"""Plain boto3 and paramiko transfers, run by `benchmarks.backends` as processes of their own.

    python -m benchmarks.libclients boto3 up|down LOCAL BUCKET PREFIX
    python -m benchmarks.libclients paramiko up|down LOCAL REMOTE_DIR

A user's script pays for the interpreter, the library's import and the
connection, as Ferry and the command-line tools do, so these clients are
timed the same way. Where to connect comes from the environment (nothing
secret on a command line): AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
BENCH_S3_ENDPOINT for boto3; BENCH_SFTP_HOST, _PORT, _USER, _KEY and
_KNOWN_HOSTS for paramiko.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def boto3_copy(direction: str, local: Path, bucket: str, prefix: str) -> None:
    import boto3

    c = boto3.client("s3", endpoint_url=os.environ["BENCH_S3_ENDPOINT"], region_name="us-east-1")
    if direction == "up":
        for p in sorted(q for q in local.rglob("*") if q.is_file()):
            c.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local)}")
        return
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            p = local / o["Key"][len(prefix) + 1 :]
            p.parent.mkdir(parents=True, exist_ok=True)
            c.download_file(bucket, o["Key"], str(p))


def paramiko_copy(direction: str, local: Path, remote: str) -> None:
    import paramiko

    env = os.environ
    c = paramiko.SSHClient()
    c.load_host_keys(env["BENCH_SFTP_KNOWN_HOSTS"])
    c.connect(
        env["BENCH_SFTP_HOST"],
        int(env["BENCH_SFTP_PORT"]),
        env["BENCH_SFTP_USER"],
        key_filename=env["BENCH_SFTP_KEY"],
        allow_agent=False,
        look_for_keys=False,
    )
    s = c.open_sftp()
    if direction == "up":
        s.mkdir(remote)
        for p in sorted(local.rglob("*")):
            target = f"{remote}/{p.relative_to(local)}"
            if p.is_dir():
                s.mkdir(target)
            else:
                s.put(str(p), target)
    else:

        def walk(remote: str, local: Path) -> None:
            local.mkdir(parents=True, exist_ok=True)
            for a in s.listdir_attr(remote):
                if (a.st_mode or 0) & 0o040000:
                    walk(f"{remote}/{a.filename}", local / a.filename)
                else:
                    s.get(f"{remote}/{a.filename}", str(local / a.filename))

        walk(remote, local)
    c.close()


def main(argv: list[str]) -> None:
    tool, direction, local, *rest = argv
    clients: dict[str, Any] = {"boto3": boto3_copy, "paramiko": paramiko_copy}
    clients[tool](direction, Path(local), *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
