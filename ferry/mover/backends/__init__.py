"""Backends: one module per storage, opened from an endpoint.

Heavy client libraries (botocore, paramiko, smbprotocol) load only when an
endpoint of that kind is used, so local copies start fast.
"""

from __future__ import annotations

from ferry.mover.backends.base import Backend
from ferry.mover.endpoints import Endpoint, LocalEndpoint, S3Endpoint, SFTPEndpoint, SMBEndpoint


def open_backend(endpoint: Endpoint) -> Backend:
    if isinstance(endpoint, LocalEndpoint):
        from ferry.mover.backends.local import LocalBackend

        return LocalBackend(endpoint.path)
    if isinstance(endpoint, S3Endpoint):
        from ferry.mover.backends.s3 import S3Backend

        return S3Backend(endpoint)
    if isinstance(endpoint, SFTPEndpoint):
        from ferry.mover.backends.sftp import SFTPBackend

        return SFTPBackend(endpoint)
    if isinstance(endpoint, SMBEndpoint):
        from ferry.mover.backends.smb import SMBBackend

        return SMBBackend(endpoint)
    raise TypeError(f"no backend for {endpoint!r}")
