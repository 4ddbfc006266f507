"""S3 specifics on both S3 servers: server-side copies, metadata without a rewrite, lazy HEADs.

Each test makes the path it is about the only one that can succeed (the
other is made to raise), so a silent fallback to streaming or to a rewrite
fails the test instead of passing slowly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ferry.mover.backends.local import LocalBackend
from ferry.mover.backends.s3 import backend as s3
from ferry.mover.backends.s3 import files as s3_files
from ferry.mover.backends.s3 import multipart as s3_multipart
from ferry.mover.backends.s3 import session as s3_session
from ferry.mover.integrity import file_digest
from ferry.mover.options import Mode
from tests.backends.conftest import BUCKET
from tests.backends.helpers import ok, transfer
from tests.backends.tree import MTIME, MiB, build, compare

pytestmark = pytest.mark.servers


def _forbid(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"{cls.__name__}.{name} must not be called here")

    monkeypatch.setattr(cls, name, boom)


def _big(root: Path, size: int, name: str = "big.bin") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / name
    with open(p, "wb") as f:
        for i in range(size // MiB):
            f.write(bytes([i % 251]) * (MiB - 1) + os.urandom(1))
    os.utime(p, ns=(MTIME, MTIME))
    os.chmod(p, 0o640)
    return p


def test_server_side_copy_within_one_endpoint(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 -> S3 on one endpoint copies server-side: no object is read through Ferry, and
    mtime, mode and the stored digest come along."""
    r = remotes(s3_kind)
    src = tmp_path / "src"
    build(src, big=False)
    a, b = r.fresh("ssc-a"), r.fresh("ssc-b")
    ok(transfer(str(src), r.uri(a)))
    with monkeypatch.context() as m:
        _forbid(m, s3_files.S3Reader, "read_at")
        _forbid(m, s3_files.S3Reader, "iter_range")
        first = ok(transfer(r.uri(a), r.uri(b)))
        assert first.files_copied > 10
        again = ok(transfer(r.uri(a), r.uri(b)))
        assert again.files_copied == 0 and again.bytes_transferred == 0
    c = r.server.client()
    key = "sizes/s03-10485761"
    ha = c.head_object(Bucket=BUCKET, Key=f"{a}/{key}")["Metadata"]
    hb = c.head_object(Bucket=BUCKET, Key=f"{b}/{key}")["Metadata"]
    assert hb["ferry-digest"] == ha["ferry-digest"]
    assert hb["ferry-mtime-ns"] == ha["ferry-mtime-ns"]
    assert hb["ferry-mode"] == ha["ferry-mode"]
    back = tmp_path / "back"
    ok(transfer(r.uri(b), str(back)))
    assert compare(src, back, empty_dirs=False) == []


def test_local_upload_stores_digest_without_a_rewrite(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multipart upload from local disk gets its digest at creation (the file is hashed
    first), so completing it needs no server-side copy of the object."""
    r = remotes(s3_kind)
    p = _big(tmp_path / "src", 3 * s3_multipart.MIN_PART + MiB)
    sub = r.fresh("prehash")
    with monkeypatch.context() as m:
        _forbid(m, s3_session.S3Session, "copy_object")
        ok(transfer(str(p.parent), r.uri(sub)))
    head = r.server.client().head_object(Bucket=BUCKET, Key=f"{sub}/big.bin")
    assert head["ContentLength"] == p.stat().st_size
    assert head["ETag"].rstrip('"').split("-")[-1].isdigit()  # it went up in parts
    local = LocalBackend(str(p.parent))
    entry = local.stat("big.bin")
    assert entry is not None
    assert head["Metadata"]["ferry-digest"] == file_digest(local, "big.bin", entry)


def test_metadata_rewrite_above_copy_object_limit(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects above CopyObject's limit (5 GiB on S3; lowered here so the test moves a few
    MiB) get their metadata rewritten by a multipart UploadPartCopy, bytes intact, and are
    copied server-side the same way."""
    monkeypatch.setattr(s3_session, "COPY_MAX", 8 * MiB)
    monkeypatch.setattr(s3_session, "COPY_PART", s3_multipart.MIN_PART)
    r = remotes(s3_kind)
    p = _big(tmp_path / "src", 3 * s3_multipart.MIN_PART + MiB)
    sub = r.fresh("mpcopy")
    ok(transfer(str(p.parent), r.uri(sub)))
    os.chmod(p, 0o600)  # only the mode changes: a metadata-only update
    calls: list[str] = []
    init = s3.S3Backend.__init__

    def watched(self: s3.S3Backend, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        self.session.client.meta.events.register(
            "before-call.s3.*", lambda model, **_: calls.append(model.name)
        )

    with monkeypatch.context() as m:
        m.setattr(s3.S3Backend, "__init__", watched)
        again = ok(transfer(str(p.parent), r.uri(sub)))
        assert again.bytes_transferred == 0
        other = r.fresh("mpcopy-b")
        ok(transfer(r.uri(sub), r.uri(other)))
    assert "CopyObject" not in calls and "GetObject" not in calls
    # 21 MiB in 5 MiB parts, twice; once more per copy where the service gave no part
    # checksums (versitygw) and the upload was aborted and made again without them.
    assert calls.count("UploadPartCopy") == 4 * (2 + calls.count("AbortMultipartUpload"))
    c = r.server.client()
    for k in (sub, other):
        obj = c.get_object(Bucket=BUCKET, Key=f"{k}/big.bin")
        assert obj["Metadata"]["ferry-mode"] == "600"
        assert obj["Body"].read() == p.read_bytes()


def test_listing_heads_only_what_it_compares(
    s3_kind: str, remotes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copying into an empty destination reads each object's metadata from its GET, not
    from a HEAD per object; a re-sync HEADs the objects whose sizes match, and finds
    nothing to do."""
    r = remotes(s3_kind)
    src = tmp_path / "src"
    build(src, big=False)
    sub = r.fresh("lazy")
    ok(transfer(str(src), r.uri(sub)))
    heads: list[str] = []
    real = s3_session.S3Session.head

    def counting(self: s3_session.S3Session, key: str) -> Any:
        heads.append(key)
        return real(self, key)

    monkeypatch.setattr(s3_session.S3Session, "head", counting)
    back = tmp_path / "back"
    first = ok(transfer(r.uri(sub), str(back)))
    assert first.files_copied > 10
    # Only the root's stat and the empty objects (nothing to GET) were HEADed.
    assert sorted(heads) == sorted([sub, f"{sub}/sizes/s00-0", f"{sub}/zero"]), heads
    assert compare(src, back, empty_dirs=False) == []
    heads.clear()
    again = ok(transfer(r.uri(sub), str(back), mode=Mode.SYNC))
    assert again.bytes_transferred == 0 and again.files_copied == 0
    assert len(heads) >= first.files_copied
