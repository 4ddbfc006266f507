"""What every S3 API test server offers a test: endpoint, keys, a client, a credentials file."""

from __future__ import annotations

from pathlib import Path

from tests.servers.common import LOOPBACK, ServerProcess

REGION = "us-east-1"


class S3ApiServer(ServerProcess):
    port: int
    host: str = LOOPBACK  # the address it listens on and clients use
    access_key: str
    secret_key: str
    ca_bundle: str | None = None  # the certificate to trust, for a server on HTTPS

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.ca_bundle else 'http'}://{self.host}:{self.port}"

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
            verify=self.ca_bundle,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)
