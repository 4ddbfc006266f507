"""The accelerator switch really keeps every backend off its hand-written wire/ code.

A deliberate fault: each wire/ entry point is wrapped so that, with FERRY_ACCELERATORS=off, a
call raises (and the transfer fails), and with the accelerators on it is counted (so the
test also shows the wrapped entry points are the ones the data path uses)."""

from __future__ import annotations

import os
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
    "sftp": "session.lean_channel",
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
