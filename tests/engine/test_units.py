"""Pure unit tests: endpoints, filters, sizes, preserve flags, digests, spec validation."""

from __future__ import annotations

import functools
import operator
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.mover.endpoints import (
    LocalEndpoint,
    S3Endpoint,
    SFTPEndpoint,
    SMBEndpoint,
    parse_endpoint,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.filters import FilterSet, rules_from_cli
from ferry.mover.integrity import (
    BLOCK_SIZE,
    StreamHasher,
    block_digests,
    digest_bytes,
    digest_from_blocks,
)
from ferry.mover.options import MiB, Preserve, parse_size
from ferry.mover.shard import Sharder, path_shard


def test_endpoint_forms() -> None:
    assert parse_endpoint("rel/dir") == LocalEndpoint(os.path.abspath("rel/dir"))
    assert parse_endpoint("file:///abs/x") == LocalEndpoint("/abs/x")
    s3 = parse_endpoint(
        "s3://bkt/some/prefix/?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true"
    )
    assert isinstance(s3, S3Endpoint)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region, s3.path_style) == (
        "bkt",
        "some/prefix/",  # the trailing '/' stays: it names a directory (names_directory)
        "http://127.0.0.1:9000",
        "eu-west-1",
        True,
    )
    sftp = parse_endpoint("sftp://alice@host:2222/data/x")
    assert isinstance(sftp, SFTPEndpoint) and (sftp.user, sftp.host, sftp.port, sftp.path) == (
        "alice",
        "host",
        2222,
        "/data/x",
    )
    home = parse_endpoint("sftp://host/~/backups")
    assert isinstance(home, SFTPEndpoint) and home.path == "backups"
    smb = parse_endpoint("smb://fs:4455/share/dir/sub")
    assert isinstance(smb, SMBEndpoint) and (smb.host, smb.port, smb.share, smb.path) == (
        "fs",
        4455,
        "share",
        "dir/sub",
    )


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("sftp://bob:hunter2@host/x", "passwords do not belong"),
        ("s3:///prefix", "no bucket"),
        ("smb://host/", "no share"),
        ("sftp://host:99999/x", "port"),
        ("s3://b/p?bogus=1", "unknown option 'bogus'"),
        ("s3://b/p?path_style=maybe", "true or false"),
        ("gopher://x/y", "unknown scheme"),
    ],
)
def test_endpoint_errors_name_the_problem(uri: str, fragment: str) -> None:
    with pytest.raises(FerryError) as exc:
        parse_endpoint(uri)
    assert exc.value.kind == ErrorKind.USAGE
    assert fragment in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_filters_rclone_semantics() -> None:
    f = FilterSet.parse(["- *.tmp", "- /build/", "+ docs/**", "+ *.py"])
    assert not f.include_file("a/b/x.tmp")
    assert f.include_file("src/main.py")
    assert f.include_file("docs/deep/readme.md")
    assert not f.include_file("notes.txt")  # includes exist: implicit "- **"
    assert not f.include_dir("build")
    assert f.include_dir(
        "src/build"
    )  # anchored rule only at the root... but src/build can hold .py
    assert f.include_dir("anything")  # an include rule may match below
    g = FilterSet.parse(list(rules_from_cli([], ["cache/**", "*.log"], [])))
    assert not g.include_dir("x/cache")
    assert not g.include_file("x/cache/a")
    assert not g.include_file("deep/a.log")
    assert g.include_file("a.txt")
    h = FilterSet.parse(["+ {a,b}?.[ch]", "- **"])
    assert h.include_file("x/a1.c") and h.include_file("b2.h") and not h.include_file("c1.c")


@pytest.mark.parametrize("line", ["* foo", "+", "+ [abc", "- {a,b"])
def test_bad_filter_rules(line: str) -> None:
    with pytest.raises(FerryError) as exc:
        FilterSet.parse([line])
    assert exc.value.kind == ErrorKind.USAGE and repr(line) in str(exc.value)


def test_sizes_and_preserve() -> None:
    assert parse_size("512K") == 512 * 1024
    assert parse_size("64M") == 64 * MiB
    assert parse_size("1.5G") == 3 * 512 * MiB
    assert parse_size("4096") == 4096
    assert parse_size("8MiB") == 8 * MiB
    for bad in ("", "abc", "-1M", "5Q"):
        with pytest.raises(FerryError):
            parse_size(bad)
    assert Preserve.parse("times,perms").flags() == ["times", "perms"]
    assert (
        "owners" in Preserve.parse("+owners").flags()
        and "sparse" in Preserve.parse("+owners").flags()
    )
    assert "sparse" not in Preserve.parse("-sparse").flags()
    assert Preserve.parse("none").flags() == []
    with pytest.raises(FerryError, match="unknown flag 'acl'"):
        Preserve.parse("acl")


@settings(max_examples=40, deadline=None)
@given(
    size=st.sampled_from([0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 17]),
    pieces=st.lists(st.integers(min_value=1, max_value=700_000), min_size=1, max_size=8),
)
def test_digest_is_independent_of_how_bytes_arrive(size: int, pieces: list[int]) -> None:
    data = os.urandom(size)
    whole = digest_bytes(data)
    h = StreamHasher()
    pos, i = 0, 0
    while pos < size:
        n = pieces[i % len(pieces)]
        h.update(data[pos : pos + n])
        pos += n
        i += 1
    assert h.hexdigest() == whole
    # Chunks of whole blocks, hashed separately and in any order, give the same digest.
    chunk = 2 * BLOCK_SIZE
    parts = {off: block_digests(data[off : off + chunk]) for off in range(0, size, chunk)}
    assert (
        digest_from_blocks(size, b"".join(parts[o] for o in sorted(parts, reverse=True)[::-1]))
        == whole
    )


def test_digest_of_holes_and_sizes_differ() -> None:
    h = StreamHasher()
    h.update(b"x")
    h.update_zeros(3 * BLOCK_SIZE + 5)
    assert h.hexdigest() == digest_bytes(b"x" + bytes(3 * BLOCK_SIZE + 5))
    assert digest_bytes(b"") != digest_bytes(b"\0")
    assert digest_bytes(b"ab") != digest_bytes(b"ba")


def test_sharding_is_deterministic_and_balanced() -> None:
    paths = [f"d{i % 7}/f{i}" for i in range(2000)]
    owners = [[p for p in paths if Sharder(i, 3).owns(p, 10)] for i in range(3)]
    assert sorted(functools.reduce(operator.iadd, owners, [])) == sorted(
        paths
    )  # every file exactly once
    assert all(500 < len(o) < 850 for o in owners)
    assert path_shard("x", 5) == path_shard("x", 5)
    big = [(f"big{i}", (i + 1) * 100 << 20) for i in range(6)]
    shards = []
    for i in range(3):
        s = Sharder(i, 3)
        s.balance([0, 0, 0], big)
        shards.append(s)
    assert shards[0].big == shards[1].big == shards[2].big
    assert max(shards[0].loads) - min(shards[0].loads) <= 100 << 20


def test_transfer_spec_names_bad_fields() -> None:
    from pydantic import ValidationError

    from ferry.mover.spec import TransferSpec

    ok = TransferSpec.model_validate(
        {
            "source": {"kind": "local", "path": "/data/src"},
            "destination": {
                "kind": "s3",
                "bucket": "backups",
                "prefix": "x",
                "endpointUrl": "http://127.0.0.1:1",
            },
            "options": {
                "mode": "Sync",
                "chunkSize": "32M",
                "filters": ["- *.tmp"],
                "bandwidth": "10M",
            },
            "shard": {"index": 1, "count": 4},
        }
    )
    _src, dst, options = ok.to_engine()
    assert isinstance(dst, S3Endpoint) and dst.endpoint_url == "http://127.0.0.1:1"
    assert (
        options.mode.value == "sync" and options.chunk_size == 32 * MiB and options.shard_index == 1
    )
    assert options.bwtable is not None and options.bwtable.rate_at(0) == 10 * MiB
    for bad, field in (
        ({"options": {"chunkSize": "lots"}}, "chunkSize"),
        ({"options": {"mode": "Move"}}, "mode"),
        ({"options": {"filters": ["nope"]}}, "filters"),
        ({"destination": {"kind": "s3", "bucket": "b"}}, "bucket"),
        ({"options": {"transfers": 0}}, "transfers"),
    ):
        doc = {
            "source": {"kind": "local", "path": "/s"},
            "destination": {"kind": "local", "path": "/d"},
            **bad,
        }
        with pytest.raises(ValidationError) as exc:
            TransferSpec.model_validate(doc)
        assert field in str(exc.value)


def test_malloc_tuning_respects_the_environment() -> None:
    """Applied in a plain process; left alone when MALLOC_* says otherwise (own processes,
    so this test's interpreter keeps its heap settings)."""
    code = "from ferry.mover.malloc import tune_malloc; print(tune_malloc())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    chosen = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MALLOC_ARENA_MAX": "2"},
        capture_output=True,
        text=True,
    )
    assert (plain.stdout.strip(), chosen.stdout.strip()) == ("True", "False")


def test_gc_tuning_freezes_what_is_loaded() -> None:
    """Own process, so this test's interpreter keeps its collector settings."""
    code = (
        "import gc; from ferry.mover.malloc import GC_YOUNG, tune_gc; tune_gc(); "
        "print(gc.get_threshold()[0] == GC_YOUNG, gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
