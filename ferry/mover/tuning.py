"""One run's workers, streams, chunk, buffer and in-flight bound, and where each came from.

Precedence, knob by knob: what the user gave (a flag, a URI's `?streams=`, a spec field),
then the named profile, then the host (ferry/mover/host.py), then the built-in default. The
CLI and the mover's spec both resolve through `resolve`, and the run reports the result
(`Options.tuning`: the JSON summary's `tuning`, and a log line at -v).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ferry.mover import host as hostmod
from ferry.mover.endpoints import Endpoint, FerryEndpoint
from ferry.mover.options import S3_UPLOAD_CHUNK, MiB, Options
from ferry.mover.profiles import profile as lookup

DEFAULT_BUFFER_SIZE = 2 * MiB  # engine/stream.py: measured fastest on this kind of machine


def worker_bytes(buffer_size: int, chunk_held: int) -> int:
    """File data one worker holds at once: the piece it streams, plus the chunk a writer
    that buffers whole chunks (S3's parts) keeps until it is sent."""
    return buffer_size + chunk_held


@dataclass(frozen=True, slots=True)
class Tuning:
    transfers: int
    streams: int
    chunk_size: int
    buffer_size: int
    max_in_flight_bytes: int
    profile: str | None
    sources: dict[str, str]  # knob -> "flag", "profile", "host (...)" or "default"

    def report(self) -> dict[str, Any]:
        """The JSON summary's `tuning` object."""
        return {
            "profile": self.profile,
            "transfers": self.transfers,
            "streams": self.streams,
            "chunkSize": self.chunk_size,
            "bufferSize": self.buffer_size,
            "maxInFlightBytes": self.max_in_flight_bytes,
            "from": dict(self.sources),
        }


def resolve(
    *,
    dest_kind: str,
    profile: str | None = None,
    transfers: int | None = None,
    streams: int | None = None,
    chunk_size: int | None = None,
    buffer_size: int | None = None,
    host: hostmod.Host | None = None,
    what: str = "--profile",
) -> Tuning:
    """The run's tuning from what was given explicitly (None: not given)."""
    prof = lookup(profile, what) if profile is not None else None
    sources: dict[str, str] = {}

    def pick(name: str, given: int | None, from_profile: int | None, fallback: int) -> int:
        if given is not None:
            sources[name] = "given"
            return given
        if from_profile is not None:
            sources[name] = f"profile {prof.name}" if prof else "profile"
            return from_profile
        sources[name] = "default"
        return fallback

    chunk = pick("chunkSize", chunk_size, prof.chunk_size if prof else None, 0)
    buffer = pick(
        "bufferSize", buffer_size, prof.buffer_size if prof else None, DEFAULT_BUFFER_SIZE
    )
    h = host or hostmod.read_host()
    held = (chunk or S3_UPLOAD_CHUNK) if dest_kind == "s3" else 0
    sized = hostmod.sizing(h.cores, h.memory, dest_kind, worker_bytes(buffer, held))
    where = f"host: {h.cores:g} cores from {h.cores_from}, dest {dest_kind}"
    n = pick("transfers", transfers, prof.transfers if prof else None, sized.transfers)
    s = pick("streams", streams, prof.streams if prof else None, sized.streams)
    for name in ("transfers", "streams"):
        if sources[name] == "default":
            sources[name] = where
    sources["maxInFlightBytes"] = (
        f"host: 1/{hostmod.MEMORY_FRACTION} of {h.memory} bytes from {h.memory_from}"
    )
    return Tuning(
        transfers=n,
        streams=s,
        chunk_size=chunk,
        buffer_size=buffer,
        max_in_flight_bytes=sized.max_in_flight_bytes,
        profile=prof.name if prof else None,
        sources=sources,
    )


def apply(
    t: Tuning, options: Options, ends: tuple[tuple[Endpoint, bool], tuple[Endpoint, bool]]
) -> tuple[Endpoint, Endpoint, Options]:
    """(source, destination, options) with `t` applied: the options' knobs and report, and
    the streams of each ferry:// endpoint whose streams were not given (the bool)."""
    (src, src_given), (dst, dst_given) = ends
    if isinstance(src, FerryEndpoint) and not src_given:
        src = dataclasses.replace(src, streams=t.streams)
    if isinstance(dst, FerryEndpoint) and not dst_given:
        dst = dataclasses.replace(dst, streams=t.streams)
    options = dataclasses.replace(
        options,
        transfers=t.transfers,
        chunk_size=t.chunk_size,
        buffer_size=t.buffer_size,
        max_in_flight_bytes=t.max_in_flight_bytes,
        tuning=t.report(),
    )
    return src, dst, options
