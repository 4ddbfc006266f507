"""Signed S3 requests (GET, HEAD, PUT, DELETE, ListObjectsV2, creating and completing
multipart uploads) on our own HTTP/1.1 connections (wire.http), beside botocore.

botocore spends ~1.6 ms of CPU on each request in its event, model and parser
layers, and ~0.3 s importing and building its client; a run of small objects
is little else, so those calls come here (~0.14 ms each for a GET of 8 KiB
from versitygw, signing included; small objects also go pipelined, a batch
at a time). Only the happy path lives here: the caller gets every
answer back, uses the ones it expects (2xx, a HEAD's 404), and repeats
anything else through botocore, as it does after a connection error (`None`).
Retries, redirects, error codes and their classification therefore stay
botocore's.

Requests are SigV4-signed over `host` and the `x-amz-*` headers. The base URL
and signing region are those botocore presigns for the bucket (`probe`), so
the endpoint rules (path or virtual-host style, regional hosts) stay botocore's
too; only for a path-style custom endpoint, where those rules are plain, are
they followed without botocore (`direct`). Not used behind a proxy or without
SigV4.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote_plus, urlsplit

from ferry.mover.backends.s3.wire.http import IDEMPOTENT, MAX_BODY, Connection, NotSent, Pieces

if TYPE_CHECKING:
    import ssl

_PROBE_KEY = "ferry-probe"
CONNECT_TIMEOUT = 10.0  # as the botocore client's config
# Requests in flight on one connection (pipelined GETs or PUTs of small objects).
PIPELINE = 16
# Room always left for an answer's body, whatever the caller expects: an error document.
ERROR_BODY = 64 * 1024
_SIGNING_ERRORS = (
    b"<Code>AuthorizationHeaderMalformed<",
    b"<Code>SignatureDoesNotMatch<",
    b"<Code>IncompleteSignature<",
)

# botocore parameter -> request header, for the per-object options a PUT may carry.
PUT_HEADERS = {
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "StorageClass": "x-amz-storage-class",
    "ChecksumCRC32": "x-amz-checksum-crc32",
    "ChecksumSHA1": "x-amz-checksum-sha1",
    "ChecksumSHA256": "x-amz-checksum-sha256",
}


def put_headers(args: dict[str, Any], meta: dict[str, str]) -> dict[str, str] | None:
    """A PUT's botocore parameters and metadata as request headers; None where a parameter
    has no plain header (botocore must send it)."""
    if not all(a in PUT_HEADERS for a in args):
        return None
    headers = {PUT_HEADERS[a]: str(v) for a, v in args.items()}
    headers.update({f"x-amz-meta-{k}": v for k, v in meta.items()})
    return headers


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def meta(self) -> dict[str, str]:
        """User metadata, as botocore's `Metadata` (names without `x-amz-meta-`)."""
        return {k[11:]: v for k, v in self.headers.items() if k.startswith("x-amz-meta-")}


class StaticCredentials(NamedTuple):
    """Keys read without botocore, shaped as its frozen credentials."""

    access_key: str
    secret_key: str
    token: str | None = None

    def get_frozen_credentials(self) -> StaticCredentials:
        return self

    def __repr__(self) -> str:
        return f"StaticCredentials(access_key={self.access_key!r}, secret_key=***, token=***)"


class Listing(NamedTuple):
    """ListObjectsV2 pages, as botocore would decode them (`EncodingType=url` undone)."""

    prefixes: list[str]
    objects: list[tuple[str, int, str]]  # key, size, LastModified (ISO 8601)
    token: str | None = None  # of the next page


class StreamBody:
    """A response body read straight from its connection into the caller's buffer."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def readinto(self, view: memoryview) -> int:
        """Fill `view`; less only where the body ends."""
        got = 0
        while got < len(view):
            n = self._conn.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def close(self) -> None:
        """Done with it: a body left unread means the connection cannot carry another request."""
        if not self._conn.done:
            self._conn.close()


class S3Wire:
    """One bucket's base URL and signing scope; one keep-alive connection per thread."""

    def __init__(
        self,
        scheme: str,
        netloc: str,
        path_prefix: str,
        region: str,
        credentials: Any,
        ca_bundle: str | None,
        timeout: float,
    ) -> None:
        self.https = scheme == "https"
        self.netloc = netloc
        self.prefix = path_prefix  # "/bucket/" (path style) or "/" (virtual host)
        self.region = region
        self.credentials = credentials  # botocore Credentials (refreshable ones refresh)
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.https:
            import ssl  # ~10 ms of start-up that plain-HTTP endpoints do without

            self._ssl = ssl.create_default_context(cafile=ca_bundle)
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], bytes] = {}
        self.off = False  # set when the server rejects our signing: botocore does the rest

    @classmethod
    def unused(cls) -> S3Wire:
        """A wire that is off from the start (no keys to sign with, a proxy in the way):
        every call answers None, and botocore does everything."""
        wire = cls("http", "", "/", "", None, None, 0.0)
        wire.off = True
        return wire

    @classmethod
    def probe(
        cls, client: Any, bucket: str, credentials: Any, ca_bundle: str | None, timeout: float
    ) -> S3Wire | None:
        """The wire for `bucket`, or None where botocore must do everything."""
        if credentials is None:
            return None
        try:
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
            )
        except Exception:
            return None
        u = urlsplit(url)
        scope = parse_qs(u.query).get("X-Amz-Credential", [""])[0].split("/")
        if (
            u.scheme not in ("http", "https")
            or not u.path.endswith("/" + _PROBE_KEY)
            or len(scope) != 5
            or scope[3] != "s3"
            or _proxied(u.scheme, u.hostname or "")
        ):
            return None
        prefix = u.path[: -len(_PROBE_KEY)]
        return cls(u.scheme, u.netloc, prefix, scope[2], credentials, ca_bundle, timeout)

    @classmethod
    def direct(
        cls,
        endpoint_url: str,
        bucket: str,
        region: str,
        credentials: StaticCredentials,
        ca_bundle: str | None,
        timeout: float,
    ) -> S3Wire | None:
        """The wire for a path-style `bucket` at `endpoint_url`, where botocore would send
        `endpoint_url/bucket/key` signed for `region`: no client needed to find out."""
        u = urlsplit(endpoint_url)
        if u.scheme not in ("http", "https") or u.query or _proxied(u.scheme, u.hostname or ""):
            return None
        prefix = f"{u.path.rstrip('/')}/{quote(bucket, safe='')}/"
        return cls(u.scheme, u.netloc, prefix, region, credentials, ca_bundle, timeout)

    # -- signing -----------------------------------------------------------------------------
    def _signing_key(self, secret: str, day: str) -> bytes:
        k = self._keys.get((secret, day))
        if k is None:
            k = ("AWS4" + secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): k}  # keys rotate: keep only the current one
        return k

    def _sign(
        self, method: str, path: str, query: str, headers: dict[str, str], body: Pieces
    ) -> None:
        creds = self.credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        headers["x-amz-date"] = amz_date
        if self.https and any(len(p) for p in body):
            headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        else:
            sha = hashlib.sha256()
            for p in body:
                sha.update(p)
            headers["x-amz-content-sha256"] = sha.hexdigest()
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        signed = {"host": self.netloc}
        for k, v in headers.items():
            if k.startswith("x-amz-"):
                signed[k] = " ".join(v.split())
        names = sorted(signed)
        canonical = "\n".join(
            [
                method,
                path,
                query,
                "".join(f"{n}:{signed[n]}\n" for n in names),
                ";".join(names),
                headers["x-amz-content-sha256"],
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        sig = hmac.new(self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256)
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={sig.hexdigest()}"
        )

    # -- requests ----------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return self.prefix + quote(key, safe="/~")

    def _signed(
        self, method: str, path: str, qs: str, headers: dict[str, str], body: Pieces
    ) -> dict[str, str]:
        """A copy of `headers` with Content-Length (any body, and every PUT) and SigV4."""
        hdrs = dict(headers)
        size = sum(len(p) for p in body)
        if size or method == "PUT":
            hdrs["Content-Length"] = str(size)
        self._sign(method, path, qs, hdrs, body)
        return hdrs

    def _conn(self) -> Connection:
        c: Connection | None = getattr(self._local, "conn", None)
        if c is None:
            # botocore's connect timeout; answers get its read timeout
            c = self._local.conn = Connection(self.netloc, self._ssl, CONNECT_TIMEOUT, self.timeout)
            with self._lock:
                self._conns.append(c)
        return c

    def request(
        self,
        method: str,
        key: str,
        headers: dict[str, str] | None = None,
        body: bytes | Pieces = b"",
        query: dict[str, str] | None = None,
        limit: int = MAX_BODY,
    ) -> Response | None:
        """One signed request for `key` ("": the bucket), its body given whole or in pieces
        (sent one after the other, never joined); None after a connection error or an
        answer longer than `limit` (nothing is known)."""
        pieces = [body] if isinstance(body, bytes) else body
        got = self._exchange(method, key, headers, pieces, query, stream=False, limit=limit)
        return got[0] if got else None

    def stream(self, key: str, headers: dict[str, str]) -> tuple[Response, StreamBody] | None:
        """A GET whose successful body is left on the connection for the caller to read into
        its own buffer (no copy, no fresh memory per piece); other answers come whole."""
        return self._exchange("GET", key, headers, [], None, stream=True)

    def pipeline(
        self, method: str, calls: list[tuple[str, dict[str, str], bytes]], limit: int = MAX_BODY
    ) -> list[Response | None]:
        """Requests of (key, headers, body), all GETs or all PUTs (both idempotent, so RFC
        9112 9.3.2 lets them be pipelined), PIPELINE deep on this thread's connection: one
        round trip and a few system calls for a batch of small objects instead of one each.
        A connection the server closes part-way (a keep-alive request limit, say) is opened
        again for the rest, while each new one answers something; answers that never came
        are None, for the caller to ask one at a time. An answer that ends its connection
        (`Connection: close`) ends it for the requests behind it too: the server has not
        acted on them (RFC 9112 9.6), so they go again on a fresh connection. Answers longer
        than `limit` are None."""
        if method not in ("GET", "PUT"):
            raise ValueError(f"only GETs or PUTs are pipelined, not {method}")
        limit = max(limit, ERROR_BODY)
        out: list[Response | None] = [None] * len(calls)
        if self.off or not calls:
            return out
        c = self._conn()
        requests = []
        for key, headers, body in calls:
            path = self._path(key)
            hdrs = self._signed(method, path, "", headers, [body])
            requests.append(c.head_bytes(method, path, hdrs) + body)
        got = 0
        while got < len(requests):
            start, fresh = got, c.sock is None
            try:
                c.ready()
                sent = min(len(requests), got + PIPELINE)
                c.send(b"".join(requests[got:sent]))
                while got < len(requests):
                    if sent < len(requests) and sent - got <= PIPELINE // 2:
                        more = min(len(requests), got + PIPELINE)
                        c.send(b"".join(requests[sent:more]))
                        sent = more
                    head = c.response(method)
                    body = c.read_body(limit)
                    out[got] = Response(head.status, head.headers, body)
                    self._check_signing(head.status, body)
                    got += 1
                    if c.sock is None:  # that answer closed the connection
                        break
            except OSError:  # ProtocolError included
                c.close()
                if fresh and got == start:
                    break  # a new connection that answered nothing: ask one at a time
        return out

    def _exchange(
        self,
        method: str,
        key: str,
        headers: dict[str, str] | None,
        body: Pieces,
        query: dict[str, str] | None,
        stream: bool,
        limit: int = MAX_BODY,
    ) -> tuple[Response, StreamBody] | None:
        """The exchange, repeated once on a fresh connection where a kept-alive one turned
        out closed, but only if the request is idempotent or was not written whole: a POST
        (creating or completing a multipart upload) the server may have acted on is not
        sent again here; the caller's botocore fallback decides, with its checks."""
        if self.off:
            return None
        limit = max(limit, ERROR_BODY)
        path = self._path(key)
        qs = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in sorted((query or {}).items())
        )
        target = f"{path}?{qs}" if qs else path
        for _ in range(2):
            hdrs = self._signed(method, path, qs, headers or {}, body)
            c = self._conn()
            reused = c.sock is not None
            try:
                head = c.request(method, target, hdrs, body)
                data = b"" if stream and head.status in (200, 206) else c.read_body(limit)
            except OSError as exc:  # ProtocolError included
                c.close()
                if reused and (method in IDEMPOTENT or isinstance(exc, NotSent)):
                    continue  # the server had closed an idle keep-alive connection: once more
                return None
            self._check_signing(head.status, data)
            return Response(head.status, head.headers, data), StreamBody(c)
        return None

    def _check_signing(self, status: int, body: bytes) -> None:
        if status in (400, 403) and any(code in body for code in _SIGNING_ERRORS):
            self.off = True  # a signing scope botocore would have chosen differently

    def list_objects(self, prefix: str, delimiter: str = "", max_keys: int = 0) -> Listing | None:
        """ListObjectsV2 under `prefix`, every page (only the first when `max_keys` is set);
        None when any page is not a plain 200: botocore lists again."""
        prefixes: list[str] = []
        objects: list[tuple[str, int, str]] = []
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        if delimiter:
            query["delimiter"] = delimiter
        if max_keys:
            query["max-keys"] = str(max_keys)
        while True:
            r = self.request("GET", "", query=query)
            if r is None or r.status != 200:
                return None
            try:
                page = _parse_listing(r.body)
            except (ET.ParseError, ValueError, KeyError):
                return None
            prefixes += page.prefixes
            objects += page.objects
            if max_keys or not page.token:
                return Listing(prefixes, objects)
            query["continuation-token"] = page.token

    def create_upload(self, key: str, headers: dict[str, str]) -> str | None:
        """CreateMultipartUpload: the new upload's id, or None for botocore to ask."""
        r = self.request("POST", key, headers, query={"uploads": ""})
        if r is None or r.status != 200:
            return None
        try:
            return _xml_fields(r.body).get("UploadId") or None
        except ET.ParseError:
            return None

    def complete_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str, str | None]], alg: str | None
    ) -> bool:
        """CompleteMultipartUpload of (number, ETag, `alg` checksum) parts; False for botocore
        to ask again. A 200 is not enough: S3 sends it (then spaces to keep the connection
        open) before it has assembled the object, and reports a failure after it, in the
        body."""
        xml = ["<CompleteMultipartUpload>"]
        for pn, etag, ck in parts:
            xml.append(f"<Part><PartNumber>{pn}</PartNumber><ETag>{_xml_text(etag)}</ETag>")
            if ck:
                xml.append(f"<Checksum{alg}>{_xml_text(ck)}</Checksum{alg}>")
            xml.append("</Part>")
        xml.append("</CompleteMultipartUpload>")
        body = "".join(xml).encode()
        r = self.request("POST", key, {}, body, {"uploadId": upload_id})
        if r is None or r.status != 200:
            return False
        try:
            tag = ET.fromstring(r.body.lstrip()).tag
        except ET.ParseError:
            return False
        return _xml_name(tag) == "CompleteMultipartUploadResult"

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                c.close()


def _proxied(scheme: str, host: str) -> bool:
    if not any(k.lower().endswith("_proxy") for k in os.environ):
        return False  # as urllib finds on POSIX, without importing it (and http.client)
    import urllib.request

    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


def _xml_text(text: str) -> str:
    # xml.sax.saxutils.escape would import urllib.request (~40 ms of start-up)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_name(tag: str) -> str:
    """An element's name without its namespace."""
    return tag.rpartition("}")[2]


def _xml_fields(body: bytes) -> dict[str, str]:
    """The text of a result document's top-level elements, by name without namespace."""
    return {_xml_name(el.tag): el.text or "" for el in ET.fromstring(body)}


def _parse_listing(body: bytes) -> Listing:
    prefixes: list[str] = []
    objects: list[tuple[str, int, str]] = []
    truncated, token, encoded = False, None, False
    for el in ET.fromstring(body):
        tag = _xml_name(el.tag)
        if tag == "Contents":
            f = {_xml_name(c.tag): c.text or "" for c in el}
            objects.append((f["Key"], int(f["Size"]), f.get("LastModified", "")))
        elif tag == "CommonPrefixes":
            prefixes += [c.text or "" for c in el if c.tag.endswith("Prefix")]
        elif tag == "IsTruncated":
            truncated = (el.text or "").strip() == "true"
        elif tag == "NextContinuationToken":
            token = el.text
        elif tag == "EncodingType":
            encoded = (el.text or "").strip() == "url"
    if encoded:  # as botocore does for the encoding it asked for
        prefixes = [unquote_plus(p) for p in prefixes]
        objects = [(unquote_plus(k), n, t) for k, n, t in objects]
    return Listing(prefixes, objects, token if truncated else None)
