"""moto_server: a real HTTP S3 API on loopback (no real S3 server is installable here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.servers.common import ServerError, ServerProcess, free_port, wait_until

REGION = "us-east-1"
# The first requests are unauthenticated (they create the IAM user and its key);
# everything after is signed and checked, so bad credentials fail for real.
_BOOTSTRAP_ACTIONS = 3
_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


class MotoServer(ServerProcess):
    """One moto_server process. Data lives in its memory: a restart loses it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-moto-"))
        self.log = self.dir / "moto.log"
        self.access_key = ""
        self.secret_key = ""

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

    def client_env(self) -> dict[str, str]:
        """Environment for a client process: the standard AWS variables."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def write_credentials(self, path: Path, secret: str | None = None) -> Path:
        """An AWS shared-credentials file, as a mounted Secret would provide it."""
        access, secret = self.access_key, secret or self.secret_key
        path.write_text(
            f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n"
        )
        return path

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)
