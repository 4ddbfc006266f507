"""Session fixtures: the real servers, and one `Remote` per backend kind.

Servers start once per session on free loopback ports. If one cannot start,
the tests that need it fail (skip only with `FERRY_TESTS_PARTIAL=1`, see
`tests/strict.py`): a missing server must never turn a run green.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import MotoServer, SambaServer, SSHServer, VersityServer
from tests.strict import unavailable

BUCKET = "ferry-test"
KINDS = ["local", "s3", "sftp", "smb"]
REMOTE_KINDS = ["s3", "sftp", "smb"]


def _start(cls: type) -> Any:
    srv = cls()
    try:
        srv.start()
    except Exception as exc:
        srv.close()
        unavailable(f"{cls.__name__} could not start: {exc} (run: bash tests/servers/install.sh)")
    return srv


def _s3_server(cls: type) -> Iterator[Any]:
    srv = _start(cls)
    srv.create_bucket(BUCKET)
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def versity_server() -> Iterator[VersityServer]:
    """The S3 server of the "s3" kind: a real gateway storing objects as files."""
    yield from _s3_server(VersityServer)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """The "s3-moto" kind: for what versitygw accepts but does not apply (SSE, storage class)."""
    yield from _s3_server(MotoServer)


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SSHServer]:
    srv = _start(SSHServer)
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def smbd_server() -> Iterator[SambaServer]:
    srv = _start(SambaServer)
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ferry-conf-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Remote:
    """One backend kind: how to name a fresh location on it, and what it can hold."""

    kind: str
    server: Any = None
    creds: Path | None = None
    base: Path | None = None  # where the data lands on the local disk (local, sftp, smb)
    opts: dict[str, str] = field(default_factory=dict)

    def fresh(self, label: str = "t") -> str:
        """A new, empty sub-location (relative name)."""
        return f"{label}-{uuid.uuid4().hex[:8]}"

    def uri(self, sub: str, **opts: str) -> str:
        if self.kind == "local":
            assert self.base is not None
            return str(self.base / sub)
        if self.kind == "s3":
            q = {"endpoint": self.server.endpoint_url, "credentials_file": str(self.creds), **opts}
            return f"s3://{BUCKET}/{sub}?" + "&".join(f"{k}={v}" for k, v in q.items())
        return str(self.server.uri(sub, **opts))

    def disk(self, sub: str) -> Path | None:
        """The directory holding `sub` on this machine's disk, when the backend stores files there."""
        if self.kind == "local":
            assert self.base is not None
            return self.base / sub
        if self.kind in ("sftp", "smb"):
            return Path(self.server.root) / sub
        if isinstance(self.server, VersityServer):  # objects are files under bucket dirs
            return self.server.data / BUCKET / sub
        return None

    @property
    def holds_modes(self) -> bool:
        return self.kind in ("local", "sftp", "s3")

    @property
    def holds_empty_dirs(self) -> bool:
        return self.kind != "s3"

    @property
    def mtime_precision_ns(self) -> int:
        return {"local": 1, "s3": 1, "sftp": 10**9, "smb": 1000}[self.kind]

    @property
    def windows_names(self) -> bool:
        return self.kind == "smb"


def make_remote(request: pytest.FixtureRequest, kind: str, workdir: Path) -> Remote:
    if kind == "local":
        base = workdir / "local"
        base.mkdir(exist_ok=True)
        return Remote("local", base=base)
    if kind in ("s3", "s3-moto"):
        srv = request.getfixturevalue("versity_server" if kind == "s3" else "moto_server")
        creds = workdir / f"{kind}-credentials"
        if not creds.exists():
            srv.write_credentials(creds)
        return Remote("s3", server=srv, creds=creds)
    if kind == "sftp":
        return Remote("sftp", server=request.getfixturevalue("sshd_server"))
    if kind == "smb":
        return Remote("smb", server=request.getfixturevalue("smbd_server"))
    raise ValueError(kind)


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, workdir: Path) -> Remote:
    return make_remote(request, request.param, workdir)


@pytest.fixture(params=REMOTE_KINDS)
def remote(request: pytest.FixtureRequest, workdir: Path) -> Remote:
    return make_remote(request, request.param, workdir)


@pytest.fixture(params=["s3", "s3-moto"], ids=["versitygw", "moto"])
def s3_kind(request: pytest.FixtureRequest) -> str:
    """Both S3 servers, for the S3-specific tests."""
    return str(request.param)


@pytest.fixture
def remotes(request: pytest.FixtureRequest, workdir: Path):
    """Factory: remotes('s3') for tests that pair backends; remotes('s3-moto') for moto."""
    return lambda kind: make_remote(request, kind, workdir)
