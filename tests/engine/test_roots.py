"""Root identities and the overlap rule (ferry.mover.roots): pure, no servers.

The real-server tests that prove the engine refuses overlaps are in
tests/backends/test_overlap.py; these pin the normalisation each backend relies on.
"""

from __future__ import annotations

import pytest

from ferry.mover.endpoints import parse_endpoint
from ferry.mover.roots import Overlap, endpoint_root, host_id, overlap, s3_server


def _how(a: str, b: str) -> Overlap | None:
    return overlap(endpoint_root(parse_endpoint(a)), endpoint_root(parse_endpoint(b)))


@pytest.mark.parametrize(
    ("a", "b", "how"),
    [
        # S3: components, not string prefixes; server normalised; bucket case folded.
        ("s3://b/x", "s3://b/x", Overlap.SAME),
        ("s3://b/x", "s3://b/x/inner", Overlap.DST_IN_SRC),
        ("s3://b/x/inner", "s3://b/x", Overlap.SRC_IN_DST),
        ("s3://b", "s3://b/anything", Overlap.DST_IN_SRC),
        ("s3://b/x", "s3://b/xy", None),
        ("s3://b/x", "s3://c/x", None),
        ("s3://b/x/", "s3://b//x", Overlap.SAME),
        ("s3://b/x?endpoint=http://h:9000", "s3://b/x?endpoint=http://h:9001", None),
        ("s3://b/x?endpoint=http://h:9000", "s3://b/x", None),
        ("s3://b/x?endpoint=http://H:80/", "s3://b/x/y?endpoint=http://h", Overlap.DST_IN_SRC),
        ("s3://b/x?endpoint=https://h", "s3://b/x?endpoint=https://h:443", Overlap.SAME),
        (
            "s3://b/x?endpoint=http://127.0.0.1:9000",
            "s3://b/x?endpoint=http://localhost:9000&path_style=true",
            Overlap.SAME,
        ),
        ("s3://b/x?region=eu-west-1", "s3://b/x?region=us-east-1", Overlap.SAME),
        ("s3://b/x?endpoint=https://s3.eu-west-1.amazonaws.com", "s3://b/x", Overlap.SAME),
        ("s3://b/x?region=cn-north-1", "s3://b/x", None),
        ("s3://Bkt/x", "s3://bkt/x", Overlap.SAME),
        ("s3://b/X", "s3://b/x", None),  # keys are case-sensitive
        # SFTP: host case and loopback names; absolute vs home-relative cannot be compared.
        ("sftp://h/a", "sftp://H./a/b", Overlap.DST_IN_SRC),
        ("sftp://h/a", "sftp://h:2222/a", None),
        ("sftp://127.0.0.1/a", "sftp://localhost/a", Overlap.SAME),
        ("sftp://[::1]/a", "sftp://localhost/a", Overlap.SAME),
        ("sftp://h/a/../b", "sftp://h/b", Overlap.SAME),
        ("sftp://u@h/~/a", "sftp://u@h/~/a/b", Overlap.DST_IN_SRC),
        ("sftp://u@h/~/a", "sftp://v@h/~/a", None),
        ("sftp://u@h/~/a", "sftp://u@h/a", None),
        ("sftp://h/a", "sftp://h/ab", None),
        # SMB: share and path are case-insensitive.
        ("smb://h/Share/Dir", "smb://H/share/dir/sub", Overlap.DST_IN_SRC),
        ("smb://h/share/dir", "smb://h/share2/dir", None),
        ("smb://h/share/dir", "smb://h:1445/share/dir", None),
        ("smb://h/share", "smb://h/share/x", Overlap.DST_IN_SRC),
        # Local and across kinds.
        ("/a/b", "/a/b/c", Overlap.DST_IN_SRC),
        ("/a/b", "/a/bc", None),
        ("/a", "sftp://localhost/a", None),
        ("s3://h/a", "smb://h/a", None),
    ],
)
def test_overlap(a: str, b: str, how: Overlap | None) -> None:
    assert _how(a, b) == how


def test_host_and_server_identity() -> None:
    assert host_id("[::FFFF:10.0.0.1]") == "10.0.0.1"
    assert host_id("127.0.0.5") == host_id("localhost") == host_id("::1")
    assert host_id("Example.COM.") == "example.com"
    assert s3_server("http://h:abc", None) == "h:80"  # an unparsable port does not crash
    assert s3_server(None, "us-gov-west-1") == "aws-us-gov"
    assert s3_server("https://s3.cn-north-1.amazonaws.com.cn", None) == s3_server(
        None, "cn-north-1"
    )
