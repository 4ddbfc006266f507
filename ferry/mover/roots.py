"""Do two endpoint roots overlap? Defined once, for every backend and for the operator.

A root's identity is a `RootId`: the namespace its names live in (a kind plus a
normalised server and bucket or share) and its path components there. Two roots
overlap when their namespaces are equal and one component list starts with the
other. Components are compared whole: `s3://b/x` and `s3://b/xy` do not overlap.

What cannot be known is not guessed: a local path and an SFTP server on this host,
two host names of one server (DNS aliases are not resolved), or an SFTP path
relative to one user's home against an absolute one (before connecting) are
different namespaces, so they never count as overlapping.
"""

from __future__ import annotations

import ipaddress
import posixpath
from enum import Enum
from typing import NamedTuple
from urllib.parse import urlsplit

from ferry.mover.endpoints import Endpoint, LocalEndpoint, S3Endpoint, SFTPEndpoint, SMBEndpoint


class RootId(NamedTuple):
    space: tuple[str, ...]  # kind, server, bucket/share/claim: equal spaces share their names
    parts: tuple[str, ...]  # path components inside the space, already case-folded where needed


class Overlap(Enum):
    SAME = "source and destination are the same directory"
    DST_IN_SRC = "destination is inside the source"
    SRC_IN_DST = "source is inside the destination"


def overlap(src: RootId, dst: RootId) -> Overlap | None:
    """How `src` and `dst` overlap, or None when neither contains the other."""
    if src.space != dst.space:
        return None
    a, b = src.parts, dst.parts
    if a == b:
        return Overlap.SAME
    if b[: len(a)] == a:
        return Overlap.DST_IN_SRC
    if a[: len(b)] == b:
        return Overlap.SRC_IN_DST
    return None


def path_parts(path: str) -> tuple[str, ...]:
    """Components of a file-system path, `.` and `..` resolved by name (as the server would)."""
    normal = posixpath.normpath("/" + path)
    return tuple(p for p in normal.split("/") if p)


def host_id(host: str) -> str:
    """A host name as one server: lower case, no brackets or trailing dot, IP addresses in
    canonical form, every loopback name and address the same."""
    h = host.strip().strip("[]").rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return "localhost" if h == "localhost" or h.endswith(".localhost") else h
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return "localhost" if ip.is_loopback else str(ip)


def _aws_partition(region: str | None) -> str:
    r = (region or "").lower()
    return "aws-cn" if r.startswith("cn-") else "aws-us-gov" if r.startswith("us-gov-") else "aws"


def s3_server(endpoint_url: str | None, region: str | None) -> str:
    """The S3 service an endpoint reaches. Without an endpoint, or on an AWS S3 host, it is
    AWS's partition: bucket names are global there, so the region does not tell buckets apart."""
    if not endpoint_url:
        return _aws_partition(region)
    u = urlsplit(endpoint_url.strip())
    host = host_id(u.hostname or "")
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) and host.startswith(("s3.", "s3-")):
        if host.endswith(".cn"):
            return "aws-cn"
        return "aws-us-gov" if "us-gov-" in host else "aws"
    try:
        port = u.port
    except ValueError:
        port = None
    port = port or (443 if u.scheme.lower() == "https" else 80)
    return f"{host}:{port}{u.path.rstrip('/')}"


def s3_root(endpoint_url: str | None, region: str | None, bucket: str, prefix: str) -> RootId:
    # Keys are literal (no `.` or `..` resolution); empty components are dropped, which at
    # worst calls `a//b` and `a/b` the same. Bucket names are lower case on AWS and DNS
    # folds case for virtual-hosted buckets: compare them folded.
    parts = tuple(p for p in prefix.split("/") if p)
    return RootId(("s3", s3_server(endpoint_url, region), bucket.lower()), parts)


def sftp_root(host: str, port: int, user: str | None, path: str) -> RootId:
    """An SFTP root as written; a relative path is relative to `user`'s login directory
    (backends resolve it on the server, see SFTPBackend.root_id)."""
    space: tuple[str, ...] = ("sftp", host_id(host), str(port))
    if not path.startswith("/"):
        space += ("~" + (user or ""),)
    return RootId(space, path_parts(path))


def smb_root(host: str, port: int, share: str, path: str) -> RootId:
    """SMB names are case-insensitive: share and path are compared case-folded."""
    space = ("smb", host_id(host), str(port), share.casefold())
    return RootId(space, path_parts(path.replace("\\", "/").casefold()))


def endpoint_root(ep: Endpoint) -> RootId:
    """The identity an endpoint names, from what it says alone (no I/O)."""
    if isinstance(ep, LocalEndpoint):
        return RootId(("local",), path_parts(ep.path))
    if isinstance(ep, S3Endpoint):
        return s3_root(ep.endpoint_url, ep.region, ep.bucket, ep.prefix)
    if isinstance(ep, SFTPEndpoint):
        return sftp_root(ep.host, ep.port, ep.user, ep.path)
    if isinstance(ep, SMBEndpoint):
        return smb_root(ep.host, ep.port, ep.share, ep.path)
    return ferry_root(ep.host, ep.port, ep.path)


def ferry_root(host: str, port: int, path: str) -> RootId:
    """A `ferry serve` root: the server and the path below its ROOT."""
    return RootId(("ferry", host_id(host), str(port)), path_parts(path))
