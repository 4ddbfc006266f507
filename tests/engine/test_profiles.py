"""Named profiles through the real CLI, --buffer-size as the engine's stream piece,
and the in-flight bound capping workers."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from ferry.mover.backends.base import Reader, Writer
from ferry.mover.engine.executor import workers_for
from ferry.mover.engine.stream import Streamer
from ferry.mover.errors import FerryError
from ferry.mover.options import MiB, Options
from ferry.mover.profiles import PROFILES, help_text, profile
from ferry.mover.progress import Progress
from ferry.mover.tuning import DEFAULT_BUFFER_SIZE, resolve
from tests.conftest import run_ferry


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}").write_bytes(b"x" * (i * 1000))
    return src


def tuning_of(tmp_path: Path, src: Path, *flags: str) -> dict[str, object]:
    dst = tmp_path / f"dst{len(list(tmp_path.iterdir()))}"
    out = run_ferry("copy", src, dst, "--json", *flags).stdout
    summary = json.loads(out)
    assert summary["filesCopied"] == 5  # the run did its work with that tuning
    return summary["tuning"]


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_profile_sets_its_four_knobs(tmp_path: Path, tree: Path, name: str) -> None:
    p = PROFILES[name]
    t = tuning_of(tmp_path, tree, "--profile", name)
    assert t["profile"] == name
    assert (t["transfers"], t["streams"], t["chunkSize"], t["bufferSize"]) == (
        p.transfers,
        p.streams,
        p.chunk_size,
        p.buffer_size,
    )


def test_flags_win_over_the_profile(tmp_path: Path, tree: Path) -> None:
    t = tuning_of(
        tmp_path,
        tree,
        *("--profile", "wan", "--transfers", "3", "--chunk-size", "8M", "--buffer-size", "512K"),
    )
    assert (t["transfers"], t["chunkSize"], t["bufferSize"]) == (3, 8 * MiB, 512 * 1024)
    assert t["streams"] == PROFILES["wan"].streams  # not given: still the profile's


def test_unknown_profile_refused_listing_the_valid_ones(tmp_path: Path, tree: Path) -> None:
    r = run_ferry("copy", tree, tmp_path / "out", "--profile", "fast", check_rc=2)
    assert "--profile" in r.stderr and "'fast'" in r.stderr
    for name in PROFILES:
        assert name in r.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(FerryError, match="choose from lan, wan, small-files, large-files"):
        profile("fast")


def test_help_lists_every_profile_and_what_it_sets() -> None:
    def flat(t: str) -> str:  # argparse wraps lines, also after a name's hyphen
        return " ".join(t.split()).replace("- ", "-")

    text = flat(run_ferry("copy", "--help").stdout)
    assert flat(help_text()) in text  # derived from the table
    for p in PROFILES.values():
        assert p.name in text and f"transfers {p.transfers}," in help_text()


def test_verbose_logs_what_was_chosen_and_why(tmp_path: Path, tree: Path) -> None:
    r = run_ferry(
        "copy", tree, tmp_path / "v", "-v", "--profile", "large-files", "--transfers", "2"
    )
    line = next(x for x in r.stderr.splitlines() if "tuning:" in x)
    assert "transfers 2 (given)" in line
    assert "bufferSize 4194304 (profile large-files)" in line
    assert re.search(r"maxInFlightBytes \d+ \(host: 1/4 of \d+ bytes from ", line), line


def test_without_profile_or_flags_the_host_decides(tmp_path: Path, tree: Path) -> None:
    t = tuning_of(tmp_path, tree)
    assert t["profile"] is None and t["bufferSize"] == DEFAULT_BUFFER_SIZE
    expected = resolve(dest_kind="local").report()
    del expected["from"]
    assert t == expected


def test_bad_buffer_sizes_are_refused_naming_the_flag(tmp_path: Path, tree: Path) -> None:
    for bad in ("32M", "1000", "0"):
        r = run_ferry("copy", tree, tmp_path / "b", "--buffer-size", bad, check_rc=2)
        assert "--buffer-size" in r.stderr, r.stderr


class _Recording(Reader):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[int] = []

    def read_at(self, offset: int, length: int) -> bytes:
        self.asked.append(length)
        return self.data[offset : offset + length]


class _Sink(Writer):
    def __init__(self) -> None:
        self.got = bytearray()
        self.sizes: list[int] = []

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        assert offset == len(self.got)
        self.got += data
        self.sizes.append(len(data))

    def commit(self, entry: object, digest: object, preserve: object) -> None:  # type: ignore[override]
        pass

    def abort(self, keep_partial: bool = False) -> None:
        pass


@pytest.mark.parametrize("piece", [64 * 1024, 2 * MiB, 4 * MiB])
def test_buffer_size_is_the_piece_each_worker_streams(piece: int) -> None:
    data = bytes(range(256)) * (5 * MiB // 256)
    reader, writer = _Recording(data), _Sink()
    streamer = Streamer(Progress(), threading.Event(), True, None, piece)
    digests = streamer.copy(reader, writer, 0, len(data), None, True)
    assert bytes(writer.got) == data and digests
    assert max(reader.asked) == piece and max(writer.sizes) == piece


class _Dst:
    """As much of a destination as workers_for reads: its limits."""

    def __init__(self, default_chunk_size: int) -> None:
        from ferry.mover.backends.base import Limits

        self.limits = Limits(default_chunk_size=default_chunk_size)


def test_the_in_flight_bound_caps_workers() -> None:
    o = Options(transfers=16, buffer_size=2 * MiB, max_in_flight_bytes=8 * MiB)
    assert workers_for(o, _Dst(0)) == 4  # type: ignore[arg-type]
    # a writer that holds each 8M chunk (S3) needs 10M a worker: 0 fit, one still runs
    assert workers_for(o, _Dst(8 * MiB)) == 1  # type: ignore[arg-type]
    roomy = Options(transfers=16, max_in_flight_bytes=1024 * MiB)
    assert workers_for(roomy, _Dst(8 * MiB)) == 16  # type: ignore[arg-type]
