"""SFTP over paramiko: `backend` (the Backend), `connections` (the session pool its readers and
writers take), `files` (reader and writer), `session` (what they ask of a pooled session),
and its two implementations: `wire/` (the hand-written SFTP framing and SSH packet sealing
that carry the data path) and `library` (paramiko's SFTPClient alone, accelerators off).

Importing this package imports paramiko the fast way (`import_paramiko`), before any of its
modules imports paramiko the ordinary way.
"""

from __future__ import annotations

import os
import sys
import types


def import_paramiko() -> None:
    """Import paramiko without invoke and importlib.metadata.

    paramiko loads invoke only to run ssh_config's `Match exec` (Ferry reads no ssh_config),
    and invoke brings yaml, unittest.mock and more: 50-80 ms of every SFTP run. It loads
    importlib.metadata (the email package, zipfile...) only to look up its own version:
    ~11 ms, where the name of its dist-info directory says the same. Anyone importing
    either later still gets the real module."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        return
    stubs: dict[str, types.ModuleType | None] = {"invoke": None}  # `import invoke` fails
    if "importlib.metadata" not in sys.modules:
        stubs["importlib.metadata"] = _metadata_stub()
    sys.modules.update(stubs)  # type: ignore[arg-type]
    try:
        import paramiko  # noqa: F401
    finally:
        for name, stub in stubs.items():
            if name in sys.modules and sys.modules[name] is stub:
                del sys.modules[name]


def _metadata_stub() -> types.ModuleType:
    """An importlib.metadata whose version() reads the version from the dist-info directory
    beside the package being imported, and asks the real module where there is none."""

    def version(name: str) -> str:
        module = sys.modules.get(name)
        site = os.path.dirname(os.path.dirname(getattr(module, "__file__", None) or "."))
        prefix = name.replace("-", "_").lower() + "-"
        try:
            found = [
                d[len(prefix) : -len(".dist-info")]
                for d in os.listdir(site)
                if d.lower().startswith(prefix) and d.endswith(".dist-info")
            ]
        except OSError:
            found = []
        if len(found) == 1:
            return found[0]
        del sys.modules["importlib.metadata"]  # the real one takes its place
        from importlib.metadata import version as real

        return real(name)

    stub = types.ModuleType("importlib.metadata")
    stub.version = version  # type: ignore[attr-defined]
    return stub


import_paramiko()
