"""Each backend has exactly the optional capabilities it claims (rclone's "check the interfaces
are satisfied" block, as a test), and what it says it can hold agrees with them."""

from __future__ import annotations

import pytest

from ferry.mover.backends import base
from ferry.mover.backends.base import (
    Acls,
    Backend,
    DeltaBasis,
    GetSmall,
    Hardlinks,
    LazyMeta,
    MeasuresLink,
    PutSmall,
    ResolvesLinks,
    Resumable,
    ServerSideCopy,
    Symlinks,
    Xattrs,
)
from ferry.mover.backends.ferry.backend import FerryBackend
from ferry.mover.backends.local import LocalBackend
from ferry.mover.backends.s3.backend import S3Backend
from ferry.mover.backends.sftp.backend import SFTPBackend
from ferry.mover.backends.smb.backend import SMBBackend

OPTIONAL: tuple[type, ...] = (
    ServerSideCopy,
    PutSmall,
    GetSmall,
    Symlinks,
    Hardlinks,
    ResolvesLinks,
    Xattrs,
    Acls,
    Resumable,
    LazyMeta,
    DeltaBasis,
    MeasuresLink,
)
CLAIMED: dict[type[Backend], set[type]] = {
    LocalBackend: {Symlinks, Hardlinks, ResolvesLinks, Xattrs, Acls, Resumable, DeltaBasis},
    S3Backend: {ServerSideCopy, PutSmall, GetSmall, Resumable, LazyMeta},
    SFTPBackend: {Symlinks, PutSmall, GetSmall, Resumable},
    SMBBackend: {Resumable},
    FerryBackend: {
        Symlinks,
        Hardlinks,
        Resumable,
        PutSmall,
        GetSmall,
        DeltaBasis,
        MeasuresLink,
        Acls,
    },
}


def test_every_optional_capability_is_listed_here() -> None:
    protocols = {
        v
        for v in vars(base).values()
        if isinstance(v, type) and getattr(v, "_is_runtime_protocol", False)
    }
    assert protocols == set(OPTIONAL)


def test_the_core_carries_no_optional_operation() -> None:
    """An optional method on Backend would make every backend look capable."""
    for proto in OPTIONAL:
        assert not issubclass(Backend, proto), proto.__name__


@pytest.mark.parametrize("cls", list(CLAIMED), ids=lambda c: c.__name__)
def test_backend_has_exactly_what_it_claims(cls: type[Backend]) -> None:
    has = {p for p in OPTIONAL if issubclass(cls, p)}
    assert has == CLAIMED[cls], sorted(p.__name__ for p in has ^ CLAIMED[cls])


@pytest.mark.parametrize("cls", list(CLAIMED), ids=lambda c: c.__name__)
def test_what_it_holds_agrees_with_what_it_can_do(cls: type[Backend]) -> None:
    holds = cls.holds
    assert holds.symlinks == issubclass(cls, Symlinks)
    assert holds.hardlinks == issubclass(cls, Hardlinks)
    assert holds.xattrs == issubclass(cls, Xattrs)
    assert holds.acls == issubclass(cls, Acls)
    # Resume writes chunks at offsets: a resumable backend takes concurrent chunk writes.
    assert not issubclass(cls, Resumable) or cls.limits.chunk_writer
    # `--delta auto` sends deltas only where the destination can rebuild from them.
    assert not cls.limits.delta_pays or issubclass(cls, DeltaBasis)
