"""Hidden names the SMB backend keeps beside destination files (temps, partials, journals)."""

from __future__ import annotations

import hashlib

from ferry.mover.backends.base import INTERNAL_PREFIX


def internal_name(name: str, suffix: str) -> str:
    """A hidden name beside `name` (temp, partial, journal); hashed where too long."""
    full = f"{INTERNAL_PREFIX}{name}.{suffix}"
    if len(full) <= 240:
        return full
    return f"{INTERNAL_PREFIX}{hashlib.blake2b(name.encode('utf-8', 'surrogateescape'), digest_size=16).hexdigest()}.{suffix}"


def partial_rel(rel: str, resume_key: str) -> str:
    """Where a resumable write of `rel` keeps its partial: a name per source version."""
    parent, _, name = rel.rpartition("/")
    tag = hashlib.blake2b(resume_key.encode(), digest_size=8).hexdigest()
    return (parent + "/" if parent else "") + internal_name(name, f"{tag}.part")
