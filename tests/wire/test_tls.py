"""Mutual TLS: a client without a certificate from the server's CA is refused at the
handshake, before any path is touched, with a clear error; key contents never leak."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from tests.conftest import run_ferry
from tests.wire.certs import Pair
from tests.wire.conftest import Server, wait_for


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("which", ["other_ca_client", "expired_client"])
def test_wrong_certificates_are_refused(tmp_path: Path, server: Server, which: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    pair: Pair = getattr(server.certs, which)
    before = server.stats()["refused"]
    r = run_ferry("copy", src, server.url("dst", pair=pair), "--json", check_rc=12)
    out = r.stdout + r.stderr
    assert "refused this client's TLS certificate" in out and "tls_cert" in out
    assert r.summary["reason"] == "AuthFailed"
    assert snapshot(server.root) == [], "nothing written"
    wait_for(lambda: server.stats()["refused"] > before, "the refusal counted")
    assert "TLS handshake refused" in server.log()
    # the server keeps serving good clients
    run_ferry("copy", src, server.url("dst"))
    assert (server.root / "dst" / "f").read_text() == "data"


def test_no_certificate_is_refused_before_any_request(server: Server) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(server.certs.ca))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b'POST /v1/mkdir HTTP/1.1\r\nContent-Length: 13\r\n\r\n{"path":"x"}\n')
        with pytest.raises((ssl.SSLError, ConnectionError)) as info:
            while tls.recv(1024):
                pass
    assert "CERTIFICATE_REQUIRED" in str(info.value).upper()
    assert snapshot(server.root) == []
    wait_for(lambda: "PEER_DID_NOT_RETURN_A_CERTIFICATE" in server.log(), "the server's log line")


def test_plain_http_and_tls12_are_refused(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET /v1/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"version" not in raw.recv(4096)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(server.certs.ca))
    ctx.load_cert_chain(str(server.certs.client.cert), str(server.certs.client.key))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_server_from_another_ca_is_not_trusted(tmp_path: Path, server: Server) -> None:
    """The client checks the server too: a CA that did not sign the server's certificate."""
    pair = server.certs.other_ca_client
    url = server.url("dst").replace(f"tls_ca={server.certs.ca}", f"tls_ca={pair.cert}")
    r = run_ferry("copy", tmp_path, url, check_rc=12)
    assert "server's certificate is not trusted" in r.stderr


def test_key_contents_never_in_errors_or_logs(tmp_path: Path, server: Server) -> None:
    """A key file that is not a key, or a key for another certificate: the message names the
    files, never what they hold."""
    secret = "SECRET-KEY-MATERIAL-0123456789"
    bad_key = tmp_path / "bad.key"
    bad_key.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    pair = server.certs.client
    url = server.url("dst").replace(f"tls_key={pair.key}", f"tls_key={bad_key}")
    r = run_ferry("copy", tmp_path, url, "--json", "-vv", check_rc=2)
    assert "tls_key" in r.stdout and str(bad_key) in r.stdout
    real_key = pair.key.read_text().splitlines()[1]
    for text in (r.stdout, r.stderr, server.log()):
        assert secret not in text and real_key not in text
    mismatched = server.url("dst").replace(
        f"tls_key={pair.key}", f"tls_key={server.certs.expired_client.key}"
    )
    r = run_ferry("copy", tmp_path, mismatched, check_rc=2)
    key_line = server.certs.expired_client.key.read_text().splitlines()[1]
    assert key_line not in r.stderr and "tls_cert" in r.stderr
