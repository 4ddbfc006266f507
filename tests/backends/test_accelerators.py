"""The accelerator switch really keeps every backend off its hand-written wire/ code.

A deliberate fault: each wire/ entry point is wrapped so that, with FERRY_ACCELERATORS=off, a
call raises (and the transfer fails), and with the accelerators on it is counted (so the
test also shows the wrapped entry points are the ones the data path uses). For SFTP these are
the wire Session's constructor and its request sender (every request it frames goes through
`_send`), besides the channel buffer and the packet sealer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends import ACCELERATORS_ENV, accelerators_on
from ferry.mover.backends.s3.wire import api as s3_api
from ferry.mover.backends.s3.wire import http as s3_http
from ferry.mover.backends.sftp.wire import session as sftp_session
from ferry.mover.backends.sftp.wire import ssh_send
from ferry.mover.backends.smb import share as smb_share
from ferry.mover.backends.smb.wire import messages as smb_messages
from tests.backends.conftest import Remote
from tests.backends.helpers import ok, transfer

pytestmark = pytest.mark.servers

# kind -> the wire/ entry points of its backend: (owner, attribute, how the owner holds it)
WIRE: dict[str, list[tuple[Any, str, str]]] = {
    "s3": [
        (s3_api.S3Wire, "direct", "classmethod"),
        (s3_api.S3Wire, "probe", "classmethod"),
        (s3_http.Connection, "__init__", "function"),
    ],
    "sftp": [
        (sftp_session.Session, "__init__", "function"),
        (sftp_session.Session, "_send", "function"),
        (sftp_session, "lean_channel", "function"),
        (ssh_send.GcmSender, "__init__", "function"),
    ],
    "smb": [
        (smb_share.Share, "exchange", "staticmethod"),
        (smb_messages, "read_data", "function"),
        (smb_share, "tune_connection", "function"),
        (smb_share, "light_headers", "function"),
    ],
}
USED_WHEN_ON = {
    "s3": "Connection.__init__",
    "sftp": "Session._send",
    "smb": "Share.exchange",
}


def _guard(monkeypatch: pytest.MonkeyPatch, kind: str) -> Counter[str]:
    calls: Counter[str] = Counter()
    for owner, attr, how in WIRE[kind]:
        raw = owner.__dict__[attr]
        real: Callable[..., Any] = raw.__func__ if how in ("classmethod", "staticmethod") else raw
        name = (
            f"{owner.__name__.rpartition('.')[2]}.{attr}"  # "S3Wire.probe", "session.lean_channel"
        )

        def guarded(*a: Any, _real: Callable[..., Any] = real, _name: str = name, **k: Any) -> Any:
            if not accelerators_on():
                raise AssertionError(f"{_name} used with the accelerators off")
            calls[_name] += 1
            return _real(*a, **k)

        wrapped: Any = guarded
        if how == "classmethod":
            wrapped = classmethod(guarded)
        elif how == "staticmethod":
            wrapped = staticmethod(guarded)
        monkeypatch.setattr(owner, attr, wrapped)
    return calls


@pytest.mark.parametrize("switch", ["on", "off"])
@pytest.mark.parametrize("remote", ["s3", "sftp", "smb"], indirect=True)
def test_switch_keeps_backends_off_the_wire(
    remote: Remote, switch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ACCELERATORS_ENV, switch)
    calls = _guard(monkeypatch, remote.kind)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = {f"d/small{i}": os.urandom(100 + i) for i in range(12)}
    files["big"] = os.urandom(3 * 1024 * 1024 + 17)  # in chunks (the tree's 1 MiB CHUNK)
    files["empty"] = b""
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    dst = remote.uri(remote.fresh("switch"))
    ok(transfer(str(src), dst))
    back = tmp_path / "back"
    ok(transfer(dst, str(back)))
    assert {rel: (back / rel).read_bytes() for rel in files} == files
    if switch == "off":
        assert not calls
    else:
        assert calls[USED_WHEN_ON[remote.kind]] > 0, calls


# Run in a fresh interpreter: copies a tree out to SFTP and back, prints the wire modules loaded.
_NO_WIRE = """
import os, sys
from ferry.mover.options import Options
from ferry.mover.endpoints import parse_endpoint
from ferry.mover.transfer import run_transfer
src, dst, back = sys.argv[1:4]
for a, b in ((src, dst), (dst, back)):
    s = run_transfer(parse_endpoint(a), parse_endpoint(b), Options(chunk_size=1024 * 1024))
    assert s.exit_code == 0, s.to_json()
print(sorted(m for m in sys.modules if m.startswith("ferry.mover.backends.sftp.wire")))
"""


@pytest.mark.parametrize("remote", ["sftp"], indirect=True)
def test_sftp_library_path_imports_no_wire(remote: Remote, tmp_path: Path) -> None:
    """With the accelerators off, SFTP never imports its wire/ package (a process of its own:
    this test module imports it)."""
    src = tmp_path / "src"
    src.mkdir()
    files = {"small": os.urandom(300), "big": os.urandom(3 * 1024 * 1024 + 5)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    env = {
        **os.environ,
        ACCELERATORS_ENV: "off",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    dst, back = remote.uri(remote.fresh("nowire")), tmp_path / "back"
    run = subprocess.run(
        [sys.executable, "-c", _NO_WIRE, str(src), dst, str(back)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
    assert {rel: (back / rel).read_bytes() for rel in files} == files


def test_environment_turns_the_option_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment can only turn them off; `--accelerators off` needs no environment."""
    monkeypatch.delenv(ACCELERATORS_ENV, raising=False)
    assert accelerators_on() and not accelerators_on(False)
    for off in ("off", "OFF", " off "):
        monkeypatch.setenv(ACCELERATORS_ENV, off)
        assert not accelerators_on() and not accelerators_on(False)
    monkeypatch.setenv(ACCELERATORS_ENV, "on")
    assert accelerators_on() and not accelerators_on(False)


def test_smb_paths_are_unc_paths() -> None:
    """smbclient's path layer (the library path's every call) takes `\\\\host\\share\\...`; the
    accelerated path names files by share-relative names and would not notice otherwise."""
    from ferry.mover.backends.smb.backend import SMBBackend
    from ferry.mover.endpoints import SMBEndpoint, parse_endpoint

    ep = parse_endpoint("smb://u@127.0.0.1:1/share/dir")
    assert isinstance(ep, SMBEndpoint)
    assert SMBBackend(ep).share.path("a/b") == "\\\\127.0.0.1\\share\\dir\\a\\b"
