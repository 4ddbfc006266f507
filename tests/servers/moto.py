"""moto_server: an S3 emulator that, unlike versitygw, applies SSE and storage classes and stores any key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.servers.common import ServerError, free_port, wait_until
from tests.servers.s3api import REGION, S3ApiServer

# The first requests are unauthenticated (they create the IAM user and its key);
# everything after is signed and checked, so bad credentials fail for real.
_BOOTSTRAP_ACTIONS = 3
_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


class MotoServer(S3ApiServer):
    """One moto_server process. Data lives in its memory: a restart loses it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-moto-"))
        self.log = self.dir / "moto.log"
        self.access_key = ""
        self.secret_key = ""

    def _binary(self) -> str:
        cand = Path(sys.executable).parent / "moto_server"
        found = str(cand) if cand.exists() else shutil.which("moto_server")
        if not found:
            raise ServerError("moto_server not found (pip install -e '.[dev]')")
        return found

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> MotoServer:
        env = {
            **os.environ,
            "AWS_DEFAULT_REGION": REGION,
            "INITIAL_NO_AUTH_ACTION_COUNT": str(_BOOTSTRAP_ACTIONS),
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self._binary(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_until(self._ready, timeout, f"moto_server on {self.port}", self.proc)
        self._bootstrap()
        return self

    def _bootstrap(self) -> None:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="ferry")
        key = iam.create_access_key(UserName="ferry")["AccessKey"]
        iam.put_user_policy(UserName="ferry", PolicyName="all", PolicyDocument=_POLICY)
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
