"""zstd on the wire, counted at the server: compressible data crosses compressed in both
directions, incompressible data raw, and --compress off sends everything raw."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import run_ferry
from tests.wire.conftest import Server

SIZE = 12 * 1024 * 1024


def text(n: int) -> bytes:
    line = b"2026-12-07T14:00:00Z INFO ferry moved a file of some size to a place\n"
    return (line * (n // len(line) + 1))[:n]


def delta(server: Server, before: dict[str, int]) -> dict[str, int]:
    after = server.stats()
    return {k: after[k] - before.get(k, 0) for k in after}


def test_compressible_data_crosses_compressed_both_ways(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "log").write_bytes(text(SIZE))
    (src / "small.log").write_bytes(text(100_000))
    s0 = server.stats()
    run_ferry("copy", src, server.url("up"))
    up = delta(server, s0)
    assert up["raw_in"] == SIZE + 100_000
    assert up["wire_in"] < up["raw_in"] / 10, up
    assert up["zstd_in"] >= 2
    assert (server.root / "up" / "log").read_bytes() == text(SIZE)

    s1 = server.stats()
    back = tmp_path / "back"
    run_ferry("copy", server.url("up"), back)
    down = delta(server, s1)
    assert down["raw_out"] == SIZE + 100_000
    assert down["wire_out"] < down["raw_out"] / 10, down
    assert (back / "log").read_bytes() == text(SIZE)


def test_incompressible_data_crosses_raw(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "random").write_bytes(os.urandom(SIZE))
    for mode in ("auto", "on"):
        s0 = server.stats()
        run_ferry("copy", src, server.url(mode), "--compress", mode)
        d = delta(server, s0)
        assert d["zstd_in"] == 0 and d["wire_in"] == d["raw_in"] == SIZE, (mode, d)
    s1 = server.stats()
    run_ferry("copy", server.url("auto"), tmp_path / "back", "--compress", "auto")
    d = delta(server, s1)
    assert d["zstd_out"] == 0 and d["wire_out"] == d["raw_out"] == SIZE, d


def test_compress_off_sends_raw(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "log").write_bytes(text(SIZE))
    s0 = server.stats()
    run_ferry("copy", src, server.url("off"), "--compress", "off")
    d = delta(server, s0)
    assert d["zstd_in"] == 0 and d["wire_in"] == d["raw_in"] == SIZE, d
    s1 = server.stats()
    run_ferry("copy", server.url("off"), tmp_path / "back", "--compress", "off")
    d = delta(server, s1)
    assert d["zstd_out"] == 0 and d["wire_out"] == SIZE, d
