"""Parse and validate endpoint URIs: paths, `file:`, `s3://`, `sftp://`, `smb://`, `ferry://`.

Endpoints are frozen dataclasses so the command line never pays for
importing pydantic; `spec.py` holds the validated pydantic boundary models and
converts to these (one `to_endpoint` per kind). Secrets never travel inside a URI: a password in the
userinfo part is refused, credentials come from files, the environment or
the standard provider chains.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, fields
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.redact import redact


@dataclass(frozen=True, slots=True)
class LocalEndpoint:
    path: str

    @property
    def kind(self) -> str:
        return "local"

    def describe(self) -> str:
        return self.path


# Values that end up in HTTP request heads (a region, a storage class, a KMS key id) or
# URLs: a control character (CR, LF, NUL above all) would split the request, so none.
HEADER_SAFE = r"^[^\x00-\x1f\x7f]*$"


@dataclass(frozen=True, slots=True)
class S3Endpoint:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    profile: str | None = None
    credentials_file: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    # Additional checksum sent with every upload (crc32, crc32c, sha1, sha256) or "none".
    checksum: str | None = None
    # HEAD each listed object for Ferry's metadata (mtime, mode, digest); off trusts LastModified.
    list_metadata: bool = True

    @property
    def kind(self) -> str:
        return "s3"

    def describe(self) -> str:
        where = f" at {redact(self.endpoint_url)}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


@dataclass(frozen=True, slots=True)
class SFTPEndpoint:
    host: str
    path: str = "."
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    password_file: str | None = None
    known_hosts_file: str | None = None
    insecure_ignore_host_key: bool = False
    sessions: int = 4  # SSH connections opened in parallel per transfer

    @property
    def kind(self) -> str:
        return "sftp"

    def describe(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"sftp://{who}{self.host}:{self.port}/{self.path.lstrip('/')}"


@dataclass(frozen=True, slots=True)
class SMBEndpoint:
    host: str
    share: str
    path: str = ""
    port: int = 445
    user: str | None = None
    password_file: str | None = None
    domain: str | None = None
    encrypt: bool = False
    require_signing: bool = True

    @property
    def kind(self) -> str:
        return "smb"

    def describe(self) -> str:
        return f"smb://{self.host}:{self.port}/{self.share}/{self.path}".rstrip("/")


@dataclass(frozen=True, slots=True)
class FerryEndpoint:
    """Another Ferry's `ferry serve`, over mutual TLS: `path` is relative to its root."""

    host: str
    port: int
    path: str = ""
    tls_cert: str | None = None  # this side's certificate (PEM)
    tls_key: str | None = None  # its private key (PEM)
    tls_ca: str | None = None  # the CA both sides' certificates are signed by
    streams: int = 8  # TLS connections opened in parallel per transfer

    @property
    def kind(self) -> str:
        return "ferry"

    def describe(self) -> str:
        return f"ferry://{self.host}:{self.port}/{self.path}"


Endpoint = LocalEndpoint | S3Endpoint | SFTPEndpoint | SMBEndpoint | FerryEndpoint

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bad(uri: str, why: str) -> FerryError:
    # FerryError masks a URL password; a URI refused for holding one is not quoted at all.
    return FerryError(ErrorKind.USAGE, f"invalid endpoint {uri!r}: {why}")


NO_PASSWORD = "passwords do not belong in URIs; use password_file= or a Secret"
NO_URL_USERINFO = (
    "an S3 endpoint URL takes no user or password; "
    "give credentials_file=, a profile or the AWS environment variables"
)


def _has_password(rest: str, ends: str = "/?") -> bool:
    """Whether `rest` (a URI after `scheme://`) carries `user:password@`, even a password
    holding '/', '?' or '@': then the authority, cut at the first of `ends`, shows a ':'
    followed by something that is no port, and an '@' comes later."""
    netloc = re.split(f"[{re.escape(ends)}]", rest, maxsplit=1)[0]
    if "@" in netloc:
        return ":" in netloc.rsplit("@", 1)[0]
    if "@" not in rest or netloc.startswith("[") or ":" not in netloc:
        return False
    return not netloc.rsplit(":", 1)[1].isdigit()


def check_endpoint_url(url: str) -> str:
    """An S3 endpoint URL, refused if it names a user (and so perhaps a password)."""
    if "@" in url:
        raise ValueError(NO_URL_USERINFO)
    return url


# Fields a URI gives in its authority and path, never as `?name=` options.
_URI_PARTS = frozenset({"host", "bucket", "share", "path", "prefix", "user", "port"})


def uri_options(
    cls: type[S3Endpoint] | type[SFTPEndpoint] | type[SMBEndpoint] | type[FerryEndpoint],
) -> dict[str, Any]:
    """The `?name=value` options a URI of this kind takes (field name -> default): every field
    with a default but those the authority and path give."""
    return {
        f.name: f.default
        for f in fields(cls)
        if f.default is not MISSING and f.name not in _URI_PARTS
    }


def _query(
    uri: str,
    raw: str,
    cls: type[S3Endpoint] | type[SFTPEndpoint] | type[SMBEndpoint] | type[FerryEndpoint],
    renames: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Map `?a=b` options onto the endpoint's fields, as bools and ints where their defaults are."""
    allowed = uri_options(cls)
    out: dict[str, Any] = {}
    for key, values in parse_qs(raw, keep_blank_values=True, strict_parsing=False).items():
        name = (renames or {}).get(key, key).replace("-", "_")
        if name not in allowed:
            raise _bad(uri, f"unknown option {key!r}")
        value = values[-1]
        default = allowed[name]
        if isinstance(default, bool):
            if value.lower() not in _TRUE | _FALSE:
                raise _bad(uri, f"option {key!r} must be true or false, not {value!r}")
            out[name] = value.lower() in _TRUE
        elif isinstance(default, int):
            if not value.isdigit() or int(value) < 1:
                raise _bad(uri, f"option {key!r} must be a positive number, not {value!r}")
            out[name] = int(value)
        elif not re.fullmatch(HEADER_SAFE, value):
            raise _bad(uri, f"option {key!r} holds a control character (CR, LF, NUL, ...)")
        else:
            out[name] = value
    return out


def _port(uri: str, port: str | None, default: int) -> int:
    if not port:
        return default
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(uri, f"port {port!r} is not a number from 1 to 65535")
    return int(port)


def _split_netloc(uri: str, netloc: str) -> tuple[str | None, str, str | None]:
    user = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        if ":" in userinfo:
            raise _bad(uri, NO_PASSWORD)
        user = unquote(userinfo) or None
    host, port = netloc, None
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif ":" in netloc:
        host, port = netloc.rsplit(":", 1)
    if not host:
        raise _bad(uri, "no host")
    return user, host, port


def parse_endpoint(uri: str) -> Endpoint:
    """Turn what a user typed into an endpoint, or raise a USAGE error that says why."""
    if not uri:
        raise _bad(uri, "empty")
    scheme, sep, _ = uri.partition("://")
    if not sep:
        if uri.startswith("file:"):
            return LocalEndpoint(os.path.abspath(unquote(uri[5:]) or "."))
        return LocalEndpoint(os.path.abspath(uri))
    scheme = scheme.lower()
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise _bad(uri, "file:// URIs name a local path (file:///abs/path)")
        return LocalEndpoint(os.path.abspath(unquote(parts.path) or "/"))
    if scheme not in {"s3", "sftp", "smb", "ferry"}:
        raise _bad(
            uri,
            f"unknown scheme {scheme!r} (use a path, file://, s3://, sftp://, smb:// or ferry://)",
        )
    # urlsplit would mangle '%'-free paths with '#' or '?'; split the query ourselves.
    rest = uri[len(scheme) + 3 :]
    if _has_password(rest):
        raise FerryError(ErrorKind.USAGE, f"invalid {scheme}:// endpoint: {NO_PASSWORD}")
    rest, _, raw_query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    path = unquote(path)
    if scheme == "s3":
        if not netloc:
            raise _bad(uri, "no bucket (s3://bucket/prefix)")
        if "@" in netloc or ":" in netloc:
            raise _bad(uri, "s3:// takes a bucket name; give the server with ?endpoint=URL")
        if not re.fullmatch(HEADER_SAFE, netloc):
            raise _bad(uri, "the bucket name holds a control character (CR, LF, NUL, ...)")
        # a user in endpoint=, also where a password's '/' or '&' split the URL
        _, sep, url = raw_query.partition("://")
        if sep and (re.search(r"://[^/?#]*@", raw_query) or _has_password(url, "/?&")):
            raise FerryError(ErrorKind.USAGE, f"invalid s3:// endpoint: {NO_URL_USERINFO}")
        opts = _query(uri, raw_query, S3Endpoint, {"endpoint": "endpoint_url"})
        if "@" in opts.get("endpoint_url", ""):
            raise FerryError(ErrorKind.USAGE, f"invalid s3:// endpoint: {NO_URL_USERINFO}")
        return S3Endpoint(bucket=netloc, prefix=path.strip("/"), **opts)
    if scheme == "sftp":
        user, host, port = _split_netloc(uri, netloc)
        opts = _query(uri, raw_query, SFTPEndpoint, {"known_hosts": "known_hosts_file"})
        # sftp://host/abs/path is absolute; sftp://host/~/dir is relative to the login directory.
        rel = path[2:] if path.startswith("~/") or path == "~" else None
        sftp_path = (rel or ".") if rel is not None else "/" + path
        return SFTPEndpoint(host=host, port=_port(uri, port, 22), user=user, path=sftp_path, **opts)
    if scheme == "smb":
        user, host, port = _split_netloc(uri, netloc)
        share, _, sub = path.partition("/")
        if not share:
            raise _bad(uri, "no share (smb://host/share/path)")
        opts = _query(uri, raw_query, SMBEndpoint)
        return SMBEndpoint(
            host=host,
            port=_port(uri, port, 445),
            share=share,
            path=sub.strip("/"),
            user=user,
            **opts,
        )
    user, host, port = _split_netloc(uri, netloc)
    if user is not None:
        raise _bad(
            uri, "ferry:// takes no user: the client's certificate (tls_cert=) identifies it"
        )
    if not port:
        raise _bad(uri, "ferry:// needs a port (ferry://HOST:PORT/PATH)")
    opts = _query(uri, raw_query, FerryEndpoint)
    missing = [k for k in ("tls_cert", "tls_key", "tls_ca") if not opts.get(k)]
    if missing:
        raise _bad(uri, f"ferry:// needs {', '.join(f'{k}=FILE' for k in missing)}")
    names = [n for n in path.split("/") if n]
    if any(n in (".", "..") for n in names) or "\x00" in path:
        raise _bad(uri, "the path must stay inside the server's root (no . or .. parts)")
    return FerryEndpoint(host=host, port=_port(uri, port, 0), path="/".join(names), **opts)
