"""`--preserve acls` over the wire: a real `ferry serve` (running as this non-root user)
sets and reports POSIX ACLs, the planner compares them, verify names them, and ACL text a
peer sends is parsed by `acl.parse` at the server (a 4xx, the server stays up)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.mover import acl
from ferry.mover.acl import AclText
from ferry.mover.endpoints import Endpoint, LocalEndpoint, parse_endpoint
from ferry.mover.errors import FerryError
from ferry.mover.options import Delta, MiB, Options
from ferry.mover.result import Summary
from ferry.mover.transfer import run_transfer
from ferry.mover.verify import Difference, verify_trees
from tests.conftest import run_ferry
from tests.engine.test_acls import (
    ACLS,
    DIR_ACL,
    DIR_DEFAULT,
    FILE_ACL,
    acls_of,
    ctimes,
    make_tree,
)
from tests.strict import unavailable
from tests.wire.conftest import Server

FILE = ["f", 0, 5, 1_600_000_000_000_000_000, 0o644, -1, -1, 1, 0, 0, -1, None, None]


def copy(src: Endpoint, dst: Endpoint, **kw: object) -> Summary:
    options = Options(preserve=ACLS, chunk_size=MiB, **kw)  # type: ignore[arg-type]
    summary = run_transfer(src, dst, options)
    assert summary.fatal is None and summary.error_count == 0, (summary.fatal, summary.errors)
    return summary


def verify(src: Endpoint, dst: Endpoint) -> set[tuple[str, str]]:
    found: list[Difference] = []
    summary = verify_trees(src, dst, Options(preserve=ACLS), found.append)
    assert summary.fatal is None, summary.fatal
    return {(d.path, d.what) for d in found}


def test_upload_sets_them_a_second_run_is_a_no_op_and_a_change_sends_no_data(
    tmp_path: Path, server: Server
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    at = server.root / "dst"
    local, remote = LocalEndpoint(str(src)), parse_endpoint(server.url("dst"))
    copy(local, remote)
    assert acls_of(at) == acls_of(src)
    assert acl.read_path(str(at / "sub"), True) == AclText(DIR_ACL, DIR_DEFAULT)
    assert acl.read_path(str(at / "sub" / "plain"), False) == AclText()
    assert (at / "sub" / "plain").stat().st_mode & 0o777 == 0o640
    assert verify(local, remote) == set()
    before = ctimes(at)
    again = copy(local, remote)
    assert again.files_copied == again.files_updated == again.bytes_transferred == 0, again
    assert ctimes(at) == before  # nothing was set again, the root included

    acl.set_path(str(src / "f"), AclText("u::rw-,u:4242:rw-,g::r--,m::rw-,o::---"), False)
    acl.set_path(str(src / "big"), AclText(), False)  # removed at the source
    acl.set_path(str(src / "sub"), AclText(DIR_ACL), True)  # its default removed
    found = verify(local, remote)
    assert found == {("f", "acls"), ("f", "mode"), ("big", "acls"), ("sub", "acls")}, found
    s = copy(local, remote)
    assert s.bytes_transferred == 0 and s.files_copied == s.files_updated == 0, s
    assert acls_of(at) == acls_of(src)
    assert acl.read_path(str(at / "sub"), True) == AclText(DIR_ACL, "")
    assert verify(local, remote) == set()
    r = run_ferry("verify", src, server.url("dst"), "--preserve", "+acls")
    assert r.rc == 0


def test_the_cli_names_a_differing_acl_at_the_server(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    make_tree(src)
    run_ferry("copy", src, server.url("dst"), "--preserve", "+acls", "--json")
    acl.set_path(str(server.root / "dst" / "f"), AclText(), False)
    r = run_ferry("verify", src, server.url("dst"), "--preserve", "+acls", check_rc=1)
    assert r.stdout.strip().split(None, 2) == ["acls", "f", f"(access {FILE_ACL} != none)"], (
        r.stdout
    )


def test_a_file_rebuilt_from_a_delta_at_the_server_takes_its_new_acl(
    tmp_path: Path, server: Server
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    local, remote = LocalEndpoint(str(src)), parse_endpoint(server.url("dst"))
    copy(local, remote)
    with open(src / "big", "r+b") as f:
        f.seek(1000)
        f.write(b"changed")
    acl.set_path(str(src / "big"), AclText("u::rw-,u:99:rwx,g::r--,m::rwx,o::---"), False)
    s = copy(local, remote, delta=Delta.ON)
    assert s.files_updated == 1 and s.bytes_matched > 2 * MiB, s
    assert acl.read_path(str(server.root / "dst" / "big"), False) == acl.read_path(
        str(src / "big"), False
    )
    assert verify(local, remote) == set()


def test_download_from_the_server_keeps_them(tmp_path: Path, server: Server) -> None:
    make_tree(server.root / "tree")
    dst = tmp_path / "dst"
    remote, local = parse_endpoint(server.url("tree")), LocalEndpoint(str(dst))
    copy(remote, local)
    assert acls_of(dst) == acls_of(server.root / "tree")
    assert verify(remote, local) == set()
    again = copy(remote, local)
    assert again.files_copied == again.files_updated == again.bytes_transferred == 0, again


def post(server: Server, route: str, doc: object) -> tuple[int, dict[str, object]]:
    conn = server.connect()
    try:
        body = json.dumps(doc).encode()
        conn.request("POST", f"/v1/{route}", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"{}")
    finally:
        conn.close()


_ENTRY = st.tuples(
    st.sampled_from(["u", "g", "m", "o", "user", "x", ""]),
    st.one_of(st.just(""), st.integers(-5, 1 << 33).map(str), st.text(max_size=6)),
    st.text(alphabet="rwx-X ", max_size=4),
).map(":".join)


def _many(n: int) -> str:
    """A valid ACL of n named users (over MAX_TEXT from about 1500 on)."""
    return ",".join(["u::rw-", *(f"u:{1000 + i}:r--" for i in range(n)), "g::r--,m::r--,o::---"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.lists(_ENTRY, max_size=6).map(",".join),
        st.text(max_size=40),
        st.integers(1300, 1700).map(_many),  # about MAX_TEXT: either side of the bound
    ),
    st.sampled_from(["access", "default"]),
    st.booleans(),
)
def test_hostile_acl_text_is_refused_with_a_4xx(
    server: Server, text: str, which: str, is_dir: bool
) -> None:
    """Whatever ACL text reaches `meta`: set when valid, else a 400 naming it; the server
    answers its next request either way."""
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))
    name = "d" if is_dir else "f"
    path = server.root / name
    if is_dir:
        path.mkdir(exist_ok=True)
    else:
        path.write_bytes(b"hello")
    entry = [name, int(is_dir), 5, 1_600_000_000_000_000_000, 0o750, -1, -1, 1, 0, 0, -1]
    acls = [text, ""] if which == "access" else ["", text]
    status, doc = post(
        server,
        "meta",
        {"path": name, "entry": [*entry, None, None], "preserve": ["acls"], "acls": acls},
    )
    try:
        want: str | None = acl.parse(text)
    except FerryError:
        want = None
    if want is None:
        assert status == 400, (status, doc)
        assert "acls" in str(doc.get("message")), doc
    elif status == 200:
        got = acl.read_path(str(path), is_dir)
        assert got is not None
        assert (got.access if which == "access" else got.default) in (want, "")
    else:  # valid, but more entries than the filesystem holds in one xattr: that file's error
        assert status == 500 and "more ACL entries than this filesystem holds" in str(
            doc.get("message")
        ), (status, doc)
    assert post(server, "stat", {"path": name})[0] == 200


@pytest.mark.parametrize(
    "acls",
    [
        "u::rw-",
        ["u::rw-"],
        [1, ""],
        ["u:root:rwx,g::r--,o::---", ""],
        ["u::rw-,g::r--", ""],
        ["x" * (acl.MAX_TEXT + 1), ""],
    ],
)
def test_malformed_acls_fields_are_refused(server: Server, acls: object) -> None:
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))
    (server.root / "f").write_bytes(b"hello")
    before = acl.read_path(str(server.root / "f"), False)
    status, doc = post(
        server, "meta", {"path": "f", "entry": FILE, "preserve": ["acls"], "acls": acls}
    )
    assert 400 <= status < 500, (status, doc)
    assert "acls" in str(doc.get("message", doc)), doc
    assert acl.read_path(str(server.root / "f"), False) == before


def test_the_acls_route_reports_and_refuses_a_symlink(tmp_path: Path, server: Server) -> None:
    if acl.unavailable() is not None:
        unavailable(str(acl.unavailable()))
    (server.root / "f").write_bytes(b"x")
    try:
        acl.set_path(str(server.root / "f"), AclText(FILE_ACL), False)
    except OSError as exc:
        unavailable(f"no POSIX ACLs here: {exc}")
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    acl.set_path(str(outside), AclText(FILE_ACL), False)
    os.symlink(outside, server.root / "link")
    assert post(server, "acls", {"path": "f"}) == (200, {"acls": [FILE_ACL, ""]})
    assert post(server, "acls", {"path": "link"})[0] == 403  # libacl would follow it
    assert post(server, "acls", {"path": "missing"}) == (200, {"acls": None})
    assert post(server, "acls", {"path": "../x"})[0] == 403
    status, hello = server.connect(), None
    status.request("GET", "/v1/hello")
    hello = json.loads(status.getresponse().read())
    status.close()
    assert "acls" in hello["features"]
