"""Overlapping roots are refused on every remote backend, before anything is touched.

`sync s3://b/x/inner s3://b/x` used to delete the source itself (x/inner is not in
the source's listing); `copy s3://b/x s3://b/x/inner` nested one level deeper on every
run. Each case goes through the real CLI against the real servers, and afterwards the
remote tree is read back to prove that nothing was deleted or added.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.mover.endpoints import parse_endpoint
from tests.backends.conftest import BUCKET, Remote
from tests.backends.helpers import REPO, cli, ok, transfer

pytestmark = pytest.mark.servers

TREE = {"other.txt": "keep me", "inner/a.txt": "a", "inner/sub/b.txt": "bb"}


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def _seed(remote: Remote, tmp_path: Path) -> str:
    """A fresh `outer` location on `remote` holding TREE; returns its name."""
    src = tmp_path / "seed"
    for rel, text in TREE.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    outer = remote.fresh("outer")
    ok(transfer(str(src), remote.uri(outer)))
    return outer


def _unchanged(remote: Remote, outer: str, tmp_path: Path) -> None:
    back = tmp_path / f"back-{os.urandom(4).hex()}"
    ok(transfer(remote.uri(outer), str(back)))
    assert _files(back) == TREE


def _refused(args: list[str], text: str) -> None:
    code, summary, err = cli(*args)
    assert code == 4, (code, summary, err)
    assert summary["reason"] == "InvalidSpec" and text in summary["message"], (summary, err)


def test_overlapping_roots_refused(remote: Remote, tmp_path: Path) -> None:
    outer = _seed(remote, tmp_path)
    o, i = remote.uri(outer), remote.uri(f"{outer}/inner")
    _refused(["sync", i, o], "source is inside the destination")
    _refused(["copy", o, i], "destination is inside the source")
    _refused(["copy", o, remote.uri(f"{outer}/new/deeper")], "destination is inside the source")
    _refused(["sync", o, o], "same directory")
    _refused(["copy", o, o], "same directory")
    _refused(["plan", o, i], "destination is inside the source")
    _refused(["plan", "--sync", i, o], "source is inside the destination")
    _unchanged(remote, outer, tmp_path)


def test_sibling_names_do_not_overlap(remote: Remote, tmp_path: Path) -> None:
    """`x` and `xy` share a string prefix, not a path component: a sync between them runs."""
    outer = _seed(remote, tmp_path)
    code, summary, err = cli("sync", remote.uri(outer), remote.uri(f"{outer}y"))
    assert code == 0 and summary["filesCopied"] == len(TREE), (summary, err)
    _unchanged(remote, outer, tmp_path)


def test_s3_names_of_one_server_are_one_server(remotes, tmp_path: Path) -> None:
    """localhost and 127.0.0.1, a trailing slash, path-style addressing: the same bucket."""
    remote = remotes("s3")
    outer = _seed(remote, tmp_path)
    url = remote.server.endpoint_url
    alias = url.replace("127.0.0.1", "localhost").rstrip("/") + "/"
    assert alias != url
    inner = f"s3://{BUCKET}/{outer}/inner?endpoint={alias}&credentials_file={remote.creds}"
    _refused(["sync", inner + "&path_style=true", remote.uri(outer)], "source is inside")
    _unchanged(remote, outer, tmp_path)


def test_sftp_server_resolves_the_root(remotes, tmp_path: Path) -> None:
    """The server's realpath decides: a symlink to the destination, a `~/` path, and
    another name for the host all name the same directory."""
    from ferry.mover.backends import open_backend

    remote = remotes("sftp")
    srv = remote.server
    outer = _seed(remote, tmp_path)
    link = remote.fresh("link")
    os.symlink(srv.root / outer, srv.root / link)
    _refused(["sync", remote.uri(f"{link}/inner"), remote.uri(outer)], "source is inside")

    absolute = f"{srv.root}/{outer}/inner"
    be = open_backend(parse_endpoint(remote.uri("")))
    try:
        login_dir = be.conns.run(lambda sftp: sftp.normalize("."))  # type: ignore[attr-defined]
    finally:
        be.close()
    tilde = remote.uri(outer + "/inner").replace(
        absolute, "/~/" + os.path.relpath(absolute, login_dir)
    )
    assert "/~/" in tilde
    _refused(["sync", tilde, remote.uri(outer)], "source is inside")

    other_name = remote.uri(outer).replace("127.0.0.1", "localhost") + (
        "&insecure_ignore_host_key=true"
    )
    _refused(["copy", remote.uri(outer), other_name], "same directory")
    _unchanged(remote, outer, tmp_path)


def test_smb_names_are_case_insensitive(remotes, tmp_path: Path) -> None:
    remote = remotes("smb")
    outer = _seed(remote, tmp_path)
    shouting = remote.uri(f"{outer.upper()}/INNER").replace("/ferry/", "/FERRY/")
    assert "/FERRY/" in shouting
    _refused(["sync", shouting, remote.uri(outer)], "source is inside the destination")
    _refused(["copy", remote.uri(outer), shouting], "destination is inside the source")
    _unchanged(remote, outer, tmp_path)


def test_run_spec_refused(remotes, tmp_path: Path) -> None:
    """What a mover pod runs: `ferry run --spec` refuses the same overlap (exit 4)."""
    remote = remotes("s3")
    outer = _seed(remote, tmp_path)

    def side(prefix: str) -> dict[str, object]:
        return {
            "kind": "s3",
            "bucket": BUCKET,
            "prefix": prefix,
            "endpointUrl": remote.server.endpoint_url,
            "credentialsFile": str(remote.creds),
        }

    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "source": side(f"{outer}/inner"),
                "destination": side(outer),
                "options": {"mode": "Sync"},
            }
        )
    )
    term = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "run", "--spec", str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "FERRY_TERMINATION_LOG": str(term)},
    )
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "source is inside the destination" in summary["message"], summary
    assert json.loads(term.read_text())["exitCode"] == 4  # what the operator reads
    _unchanged(remote, outer, tmp_path)
