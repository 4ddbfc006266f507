"""Credentials never reach a message: not the CLI's output, logs, progress, the termination
message, a TransferJob's status and Events, nor spans. Checked with one known secret in
every credential slot, through every way a slot can fail, against the real servers."""

from __future__ import annotations

import configparser
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.mover import redact
from ferry.mover.backends.s3.credentials import read_credentials
from ferry.mover.backends.s3.wire.api import StaticCredentials
from ferry.mover.endpoints import S3Endpoint, parse_endpoint
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.redact import RedactingFormatter, remember
from ferry.mover.result import Summary
from ferry.mover.spec import TransferSpec, spec_errors
from ferry.mover.tracing import make_provider
from ferry.operator import api, status
from ferry.pod.tracing import TracingSink
from tests.backends.helpers import REPO
from tests.operator.fixtures import PVC_TO_PVC, job, pod, transferjob
from tests.servers import VersityServer
from tests.strict import unavailable

SECRET = "S3cr3t%/Zq!x"
GOOD = SECRET + "%%ok"  # the working S3 secret: '%%' must reach the signer unchanged
# The secret, its URL-encoded forms and pieces of it (a message quoting half a secret leaks too).
LEAKS = (SECRET, quote(SECRET, safe=""), quote(SECRET), "S3cr3t", "Zq!x", "Zq%21x")


@pytest.fixture(autouse=True)
def _forget_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no remembered secret: masking by value must not hide what
    the structural rules (parsers, URI checks) are tested for."""
    monkeypatch.setattr(redact, "_secrets", ())


def assert_clean(text: str, where: str) -> None:
    found = [form for form in LEAKS if form in text]
    assert not found, f"{found} in {where}: {text[:4000]}"


# ---------------------------------------------------------------- the parts, one by one


def test_credentials_file_values_are_taken_as_written(tmp_path: Path) -> None:
    """No '%' interpolation: '%' and '%%' in a secret reach the signer as written."""
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = AK\naws_secret_access_key = {GOOD}\n")
    assert read_credentials(str(creds), None)["aws_secret_access_key"] == GOOD


def test_credentials_directory_as_secrets_are_keyed(tmp_path: Path) -> None:
    for name, value in (
        ("access-key-id", "AK"),
        ("secret_access_key", GOOD),
        ("AWS_SESSION_TOKEN", "T0k"),
    ):
        (tmp_path / name).write_text(value + "\n")
    (tmp_path / "region").write_text("nowhere")
    assert read_credentials(str(tmp_path), None) == {
        "aws_access_key_id": "AK",
        "aws_secret_access_key": GOOD,
        "aws_session_token": "T0k",
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"[default]\naws_access_key_id = AK\n{SECRET}\n", 3),  # a line that is no option
        (f"aws_secret_access_key = {SECRET}\n", 1),  # no section header
        (f"[default]\naws_secret_access_key = {SECRET}\naws_secret_access_key = {SECRET}\n", 3),
        (f"[default]\n[default]\naws_secret_access_key = {SECRET}\n", 2),
    ],
    ids=["bad-line", "no-section", "duplicate-option", "duplicate-section"],
)
def test_credentials_file_errors_name_the_file_and_line_only(
    tmp_path: Path, text: str, line: int
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(text)
    with pytest.raises(FerryError) as info:
        read_credentials(str(creds), None)
    assert info.value.kind == ErrorKind.AUTH_FAILED
    assert str(info.value) == f"credentials file {creds} is malformed at line {line}"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_credentials_file_unreadable_or_not_text(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FerryError, match=f"cannot read credentials file {missing}"):
        read_credentials(str(missing), None)
    binary = tmp_path / "binary"
    binary.write_bytes(b"[default]\naws_secret_access_key = \xff" + SECRET.encode() + b"\n")
    with pytest.raises(FerryError) as info:
        read_credentials(str(binary), None)
    assert str(info.value) == f"credentials file {binary} is not UTF-8 text"


@pytest.mark.parametrize(
    "uri",
    [
        f"sftp://u:{SECRET}@127.0.0.1/p",  # '/' in the password
        f"sftp://u:{SECRET}?x@127.0.0.1/p",  # '?'
        f"sftp://u:pw@{SECRET}@127.0.0.1:22/p",  # '@'
        f"smb://u:{SECRET}@127.0.0.1/share/p",
        f"smb://dom;u:{SECRET}&x@127.0.0.1/share/p",
        f"s3://bucket/p?endpoint=http://ak:{SECRET}@127.0.0.1:9000",
        f"s3://bucket/p?endpoint=http://ak:{SECRET}&x@127.0.0.1:9000",  # '&' splits the query
        f"s3://bucket/p?endpoint=http://ak@127.0.0.1:9000&credentials_file=/c/{SECRET}",
    ],
)
def test_uri_passwords_are_refused_without_echo(uri: str) -> None:
    with pytest.raises(FerryError) as info:
        parse_endpoint(uri)
    assert info.value.kind == ErrorKind.USAGE
    assert "password" in str(info.value)
    assert_clean(str(info.value), "the error")


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sftp://u@127.0.0.1:2222/data/a@b?key_file=/home/x@y/id", "/data/a@b"),
        ("sftp://127.0.0.1:2222/data/a@b", "/data/a@b"),
        ("smb://u@127.0.0.1:445/share/a@b", "a@b"),
        ("s3://bucket/a@b?endpoint=http://127.0.0.1:9000&credentials_file=/c/a@b", "a@b"),
    ],
)
def test_an_at_sign_in_a_path_is_no_password(uri: str, path: str) -> None:
    ep = parse_endpoint(uri)
    assert getattr(ep, "prefix", None) == path or getattr(ep, "path", None) == path


def test_static_credentials_repr_hides_the_secret() -> None:
    creds = StaticCredentials("AKID", SECRET, "token-" + SECRET)
    assert "AKID" in repr(creds)
    assert_clean(repr(creds) + str(creds) + f"{creds}", "the repr")


def test_describe_masks_an_endpoint_password() -> None:
    ep = S3Endpoint(bucket="b", endpoint_url=f"http://ak:{SECRET}@127.0.0.1:9000")
    assert ep.describe() == "s3://b/ at http://ak:***@127.0.0.1:9000"


def test_messages_from_libraries_and_servers_are_masked() -> None:
    """A library's text may quote a URL with a password, or a server may echo a secret it
    saw (an SSH server sees the password): FerryError's text never carries either."""
    url = f"http://ak:{SECRET}@127.0.0.1:9000/bucket"
    err = as_ferry_error(ValueError(f"Could not connect to the endpoint URL: {url!r}"))
    assert "http://ak:***@127.0.0.1:9000/bucket" in str(err)
    assert_clean(str(err) + repr(err), "a library message")
    echoed = "Ech0ed-by-server/" + SECRET
    remember(echoed)
    err = FerryError(ErrorKind.TRANSIENT, f"SSH: disconnect: bad password {quote(echoed)}", "f")
    assert str(err) == "f: SSH: disconnect: bad password ***"
    err.args = (f"where: {echoed}",)  # backends reword args after the fact
    assert_clean(str(err), "a reworded message")


def test_log_records_are_masked() -> None:
    remember(SECRET)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "failed: %s", (SECRET,), None)
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    text = RedactingFormatter("%(message)s").format(record)
    assert "failed: ***" in text and "RuntimeError: boom ***" in text
    assert_clean(text, "a log line")


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [
        ({"kind": "s3", "bucket": "bkt", "endpointUrl": f"http://ak:{SECRET}@h"}, "endpointUrl"),
        ({"kind": "sftp", "host": f"u:{SECRET}@127.0.0.1"}, "host"),
        ({"kind": "smb", "host": f"u:{SECRET}@127.0.0.1", "share": "s"}, "host"),
    ],
)
def test_spec_refuses_userinfo_without_echo(endpoint: dict[str, Any], field: str) -> None:
    from pydantic import ValidationError

    spec = {"source": endpoint, "destination": {"kind": "local", "path": "/tmp/x"}}
    with pytest.raises(ValidationError) as info:
        TransferSpec.model_validate(spec)
    text = spec_errors(info.value)
    assert text.startswith(f"source.{endpoint['kind']}.{field}: ")
    assert_clean(text, "the spec error")


def test_transferjob_refuses_an_endpoint_with_userinfo() -> None:
    """The CRD's own rule (and the operator's model): the refusal, in status and Events,
    names the field, not the value."""
    spec = {
        "source": {"s3": {"bucket": "bkt", "endpoint": f"http://ak:{SECRET}@127.0.0.1:9000"}},
        "destination": {"pvc": {"claimName": "backup"}},
    }
    with pytest.raises(ValueError) as info:
        api.TransferJobSpec.model_validate(spec)
    field, message = status.pydantic_field(info.value)
    assert field == "spec.source.s3.endpoint"
    assert_clean(field + message, "the operator's refusal")


def test_span_of_a_failed_phase_quotes_no_chained_exception() -> None:
    """A span's exception event carries the FerryError's text, not a stack trace that
    quotes the library exception it was raised while handling."""
    exporter = InMemorySpanExporter()
    sink = TracingSink(None, make_provider("t", SimpleSpanProcessor(exporter)))
    cp = configparser.ConfigParser()
    cp.read_string(f"[a]\nb = {SECRET}\n")
    with pytest.raises(FerryError), sink.phase("transfer"):
        try:
            cp["a"]["b"]  # '%' interpolation: the error quotes the value
        except configparser.Error:
            raise FerryError(ErrorKind.AUTH_FAILED, "credentials file c is malformed")  # noqa: B904
    sink.finish(Summary())
    spans = exporter.get_finished_spans()
    assert {s.name for s in spans} == {"ferry.run", "ferry.transfer"}
    text = json.dumps([json.loads(s.to_json()) for s in spans])
    assert "credentials file c is malformed" in text
    assert_clean(text, "the spans")


# ---------------------------------------------------------------- every slot, every output


@pytest.fixture(scope="module")
def secret_s3() -> Iterator[VersityServer]:
    """A gateway whose only key's secret holds '%', '/', '!' and '%%'."""
    srv = VersityServer()
    srv.secret_key = GOOD
    try:
        srv.start()
    except Exception as exc:
        srv.close()
        unavailable(f"versitygw could not start: {exc}")
    srv.create_bucket("secrets")
    yield srv
    srv.close()


class Case(NamedTuple):
    """One credential slot filled with SECRET: as a URI for `ferry copy` and as a spec
    endpoint for `ferry run`, and the error kind both must end with (None: success)."""

    uri: str
    spec: dict[str, Any]
    kind: ErrorKind | None
    env: dict[str, str]


def _cases(request: pytest.FixtureRequest, name: str, tmp: Path) -> Case:
    """The case `name`, with its files under `tmp`."""
    if name.startswith("s3"):
        srv: VersityServer = request.getfixturevalue("secret_s3")
        creds = tmp / "credentials"
        body = {
            "s3-good": f"[default]\naws_access_key_id = {srv.access_key}\n"
            f"aws_secret_access_key = {GOOD}\n",
            "s3-wrong": f"[default]\naws_access_key_id = {srv.access_key}\n"
            f"aws_secret_access_key = {SECRET}\n",
            "s3-bad-line": f"[default]\naws_access_key_id = {srv.access_key}\n{SECRET}\n",
            "s3-no-section": f"aws_secret_access_key = {SECRET}\n",
        }.get(name)
        env: dict[str, str] = {}
        if body is not None:
            creds.write_text(body)
        elif name == "s3-dir":
            creds.mkdir()
            (creds / "access_key_id").write_text(srv.access_key)
            (creds / "secret_access_key").write_text(SECRET + "\n")
        spec: dict[str, Any] = {
            "kind": "s3",
            "bucket": "secrets",
            "prefix": name,
            "endpointUrl": srv.endpoint_url,
        }
        query = f"endpoint={srv.endpoint_url}"
        if name == "s3-env":
            env = {"AWS_ACCESS_KEY_ID": srv.access_key, "AWS_SECRET_ACCESS_KEY": SECRET}
        elif name.startswith("s3-profile"):  # botocore reads the shared file itself
            shared = f"[p1]\naws_access_key_id = {srv.access_key}\n"
            shared += (
                f"{SECRET}\n" if name == "s3-profile-bad" else f"aws_secret_access_key = {SECRET}\n"
            )
            creds.write_text(shared)
            env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds)}
            spec["profile"], query = "p1", query + "&profile=p1"
        elif name == "s3-url":
            url = srv.endpoint_url.replace("://", f"://{srv.access_key}:{SECRET}@")
            spec["endpointUrl"], query = url, f"endpoint={url}"
        else:
            spec["credentialsFile"] = str(creds)
            query += f"&credentials_file={creds}"
        kind = {
            "s3-good": None,
            "s3-url": ErrorKind.USAGE,
        }.get(name, ErrorKind.AUTH_FAILED)
        return Case(f"s3://secrets/{name}?{query}", spec, kind, env)
    server = request.getfixturevalue("sshd_server" if name.startswith("sftp") else "smbd_server")
    secret_file = tmp / "secret"
    secret_file.write_text(SECRET + "\n")
    if name.startswith("sftp"):
        path = f"{server.root}/{name}"
        spec = {
            "kind": "sftp",
            "host": "127.0.0.1",
            "port": server.port,
            "path": path,
            "user": server.user,
            "knownHostsFile": str(server.known_hosts),
        }
        common = f"127.0.0.1:{server.port}{path}?known_hosts={server.known_hosts}"
        if name == "sftp-password":
            spec["passwordFile"] = str(secret_file)
            return Case(
                f"sftp://{server.user}@{common}&password_file={secret_file}",
                spec,
                ErrorKind.AUTH_FAILED,
                {},
            )
        if name == "sftp-key":  # a "key" file that holds the secret: unreadable as a key
            spec["keyFile"] = str(secret_file)
            return Case(
                f"sftp://{server.user}@{common}&key_file={secret_file}",
                spec,
                ErrorKind.AUTH_FAILED,
                {},
            )
        spec["host"] = f"{server.user}:{SECRET}@127.0.0.1"
        return Case(f"sftp://{server.user}:{SECRET}@{common}", spec, ErrorKind.USAGE, {})
    spec = {
        "kind": "smb",
        "host": "127.0.0.1",
        "port": server.port,
        "share": server.share,
        "path": name,
        "user": server.user,
    }
    common = f"127.0.0.1:{server.port}/{server.share}/{name}"
    if name == "smb-password":
        spec["passwordFile"] = str(secret_file)
        return Case(
            f"smb://{server.user}@{common}?password_file={secret_file}",
            spec,
            ErrorKind.AUTH_FAILED,
            {},
        )
    spec["host"] = f"{server.user}:{SECRET}@127.0.0.1"
    return Case(f"smb://{server.user}:{SECRET}@{common}", spec, ErrorKind.USAGE, {})


CASES = [
    "s3-good",
    "s3-wrong",
    "s3-bad-line",
    "s3-no-section",
    "s3-dir",
    "s3-env",
    "s3-profile",
    "s3-profile-bad",
    "s3-url",
    "sftp-password",
    "sftp-key",
    "sftp-url",
    "smb-password",
    "smb-url",
]


def _ferry(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    home = tmp / "home"  # no ~/.aws or ~/.ssh of the machine's user
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OTEL_"))},
            "HOME": str(home),
            **env,
        },
    )


def _status_of(termination_message: str, exit_code: int) -> dict[str, Any]:
    """What the operator makes of a failed mover's termination message: status, conditions,
    result, and the Warning Event (its reason and message are the status's)."""
    failed = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
    body = transferjob(PVC_TO_PVC)
    return status.compute(
        body,
        api.TransferJobSpec.model_validate(PVC_TO_PVC),
        job(failed, failed=1),
        [pod("p0", 0, "Failed", exit_code, termination_message)],
        datetime.now(UTC),
    )


@pytest.mark.servers
@pytest.mark.parametrize("name", CASES)
def test_secret_reaches_no_output(
    request: pytest.FixtureRequest, name: str, tmp_path: Path
) -> None:
    case = _cases(request, name, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("hello")
    want = case.kind.exit_code if case.kind else 0

    # ferry copy: to the endpoint, JSON summary and progress, debug logs, the audit log
    audit = tmp_path / "audit.jsonl"
    done = _ferry(
        [
            "copy",
            str(src),
            case.uri,
            "--json",
            "--progress",
            "json",
            "-vv",
            "--audit-log",
            str(audit),
        ],
        case.env,
        tmp_path,
    )
    assert done.returncode == want, done.stderr[-3000:]
    assert_clean(done.stdout, "stdout")
    assert_clean(done.stderr, "stderr")
    assert_clean(audit.read_text() if audit.exists() else "", "the audit log")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["reason"] == (case.kind.reason if case.kind else "Completed")
    if case.kind is None:
        assert summary["filesCopied"] == 1  # the secret with '%%' signed real requests

    # The same as JSON log lines (`--log-format json`): every line parses, none holds it.
    done = _ferry(
        ["copy", str(src), case.uri, "--json", "--progress", "json", "-vv", "--log-format", "json"],
        case.env,
        tmp_path,
    )
    assert done.returncode == want, done.stderr[-3000:]
    assert_clean(done.stderr, "stderr as JSON lines")
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert lines and all("level" in d and "message" in d for d in lines), done.stderr[-3000:]
    assert_clean(json.dumps(lines, ensure_ascii=False), "the decoded JSON log lines")

    # ferry run: from the endpoint, termination message, spans exported on stdout
    spec = {"source": case.spec, "destination": {"kind": "local", "path": str(tmp_path / "out")}}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    term = tmp_path / "termination-log"
    done = _ferry(
        ["run", "--spec", str(spec_file), "-vv"],
        {
            **case.env,
            "FERRY_TERMINATION_LOG": str(term),
            "TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "OTEL_TRACES_EXPORTER": "console",
        },
        tmp_path,
    )
    assert done.returncode == want, done.stderr[-3000:]
    assert_clean(done.stdout, "stdout of ferry run (summary and spans)")
    assert_clean(done.stderr, "stderr of ferry run")
    message = term.read_text()
    assert_clean(message, "the termination message")
    assert json.loads(message)["reason"] == (case.kind.reason if case.kind else "Completed")
    if case.kind is not ErrorKind.USAGE:  # a refused spec ends before tracing starts
        assert '"name": "ferry.run"' in done.stdout, done.stdout[-2000:]
    if case.kind is not None:
        st = _status_of(message, want)
        assert st["phase"] == "Failed" and st["reason"] == case.kind.reason
        assert st["message"]
        assert_clean(json.dumps(st), "the TransferJob status")


@pytest.mark.parametrize("content", ["encrypted", f"-----BEGIN RSA PRIVATE KEY-----\n{SECRET}\n"])
def test_unusable_key_files_are_auth_failures(tmp_path: Path, content: str) -> None:
    from ferry.mover.backends.sftp.backend import SFTPBackend
    from ferry.mover.endpoints import SFTPEndpoint

    key = tmp_path / "id"
    if content == "encrypted":
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", SECRET, "-f", str(key)]
        subprocess.run(keygen, check=True)
    else:
        key.write_text(content)
    backend = SFTPBackend(SFTPEndpoint(host="127.0.0.1", port=1, key_file=str(key)))
    with pytest.raises(FerryError) as info:
        backend.conns._credentials()
    assert info.value.kind == ErrorKind.AUTH_FAILED
    assert ("passphrase" in str(info.value)) == (content == "encrypted")
    assert_clean(str(info.value), "the error")
