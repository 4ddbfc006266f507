"""Write self-contained kubeconfig files (certificates embedded, no host paths)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from .pki import Pair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write(path: Path, server: str, ca: Path, client: Pair, user: str) -> Path:
    """A kubeconfig for `user` authenticating with `client` to `server`.

    Written as JSON, which every kubeconfig reader accepts (YAML is a superset).
    """
    name = "ferry-local"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    }
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)
    return path
