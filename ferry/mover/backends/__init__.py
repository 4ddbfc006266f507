"""Backends: one package per storage (local is one module), opened from an endpoint.

Heavy client libraries (botocore, paramiko, smbprotocol) load only when an
endpoint of that kind is used, so local copies start fast.
"""

from __future__ import annotations

import os

from ferry.mover.backends.base import KERNEL_WRITE_BACK, Backend, Durability
from ferry.mover.endpoints import (
    Endpoint,
    FerryEndpoint,
    LocalEndpoint,
    S3Endpoint,
    SFTPEndpoint,
    SMBEndpoint,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Compress

# FERRY_ACCELERATORS=off: every backend on its library path, whatever the options say.
ACCELERATORS_ENV = "FERRY_ACCELERATORS"


def accelerators_on(wanted: bool = True) -> bool:
    """Whether hand-written wire/ paths may be used: the option, unless the environment
    turns them off (a mover pod's environment can, without a new spec). Any other value
    than on or off is refused: a misspelt "false" must not leave them on unnoticed."""
    value = os.environ.get(ACCELERATORS_ENV, "on").strip().lower()
    if value not in ("on", "off"):
        raise FerryError(
            ErrorKind.USAGE, f"{ACCELERATORS_ENV}={value!r}: must be on or off (default on)"
        )
    return wanted and value == "on"


def open_backend(
    endpoint: Endpoint,
    durability: Durability = KERNEL_WRITE_BACK,
    accelerators: bool = True,
    compress: Compress = Compress.AUTO,
) -> Backend:
    """The backend of an endpoint. `durability`: how a destination makes writes durable
    (the run's --fsync); `accelerators`: False keeps every backend on its library path;
    `compress`: zstd on a ferry:// wire (--compress)."""
    wire = accelerators_on(accelerators)
    if isinstance(endpoint, LocalEndpoint):
        from ferry.mover.backends.local import LocalBackend

        return LocalBackend(endpoint.path, durability)
    if isinstance(endpoint, S3Endpoint):
        from ferry.mover.backends.s3.backend import S3Backend

        return S3Backend(endpoint, durability, accelerators=wire)
    if isinstance(endpoint, SFTPEndpoint):
        from ferry.mover.backends.sftp.backend import SFTPBackend

        return SFTPBackend(endpoint, durability, accelerators=wire)
    if isinstance(endpoint, SMBEndpoint):
        from ferry.mover.backends.smb.backend import SMBBackend

        return SMBBackend(endpoint, durability, accelerators=wire)
    if isinstance(endpoint, FerryEndpoint):
        from ferry.mover.backends.ferry.backend import FerryBackend

        return FerryBackend(endpoint, durability, compress)
    raise TypeError(f"no backend for {endpoint!r}")


def check_compress(compress: Compress, *endpoints: Endpoint) -> None:
    """--compress on asks for zstd on a ferry:// wire: refused when there is none."""
    if compress == Compress.ON and not any(isinstance(e, FerryEndpoint) for e in endpoints):
        raise FerryError(
            ErrorKind.USAGE,
            "--compress on (spec.compression) needs a ferry:// source or destination: "
            "other endpoints do not compress",
        )
