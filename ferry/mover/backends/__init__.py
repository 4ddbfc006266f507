"""Backends: one module per storage, opened from an endpoint.

Heavy client libraries (botocore, paramiko, smbprotocol) load only when an
endpoint of that kind is used, so local copies start fast.
"""

from __future__ import annotations

import sys

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
        import_paramiko()
        from ferry.mover.backends.sftp import SFTPBackend

        return SFTPBackend(endpoint)
    if isinstance(endpoint, SMBEndpoint):
        from ferry.mover.backends.smb import SMBBackend

        return SMBBackend(endpoint)
    raise TypeError(f"no backend for {endpoint!r}")


def import_paramiko() -> None:
    """Import paramiko without invoke, which paramiko loads only to run ssh_config's `Match
    exec` (Ferry reads no ssh_config) and which brings yaml, unittest.mock and more: 50-80 ms
    of every SFTP run. Anyone importing invoke later still gets it."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        return
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
    try:
        import paramiko  # noqa: F401
    finally:
        del sys.modules["invoke"]
