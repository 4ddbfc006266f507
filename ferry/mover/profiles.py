"""Named tuning profiles (`--profile`, a MoverPool's or TransferJob's `profile`): one table.

Each profile sets the four knobs a user of rclone or a copy appliance tunes by hand: workers
(`--transfers`), TLS connections per ferry:// endpoint (`?streams=`), the chunk size large
files are cut into (`--chunk-size`) and the piece each worker streams a file through
(`--buffer-size`, `Options.buffer_size`). Explicit flags and fields win over a profile; a
profile wins over the host's defaults (ferry/mover/host.py). The CLI's help text, the CRD's
enum and the docs' table are derived from PROFILES.

Values from runs on a 2-core machine (docs/cli.md, "Profiles"): many small files gain from
more workers than cores (each waits on open/close and metadata, not on CPU); large files gain
nothing from more than a few workers but from bigger chunks (fewer commits, fewer requests).
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import MiB, format_size


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    transfers: int
    streams: int  # ferry:// TLS connections per endpoint
    chunk_size: int  # 0: the destination's default
    buffer_size: int
    purpose: str

    def describe(self) -> str:
        """`transfers 16, streams 16, chunk 16.0 MiB, buffer 2.0 MiB`: what it sets."""
        chunk = format_size(self.chunk_size) if self.chunk_size else "destination's default"
        return (
            f"transfers {self.transfers}, streams {self.streams}, chunk {chunk}, "
            f"buffer {format_size(self.buffer_size)}"
        )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("lan", 8, 8, 0, 2 * MiB, "a fast, near network or local disks"),
        Profile("wan", 16, 16, 32 * MiB, 4 * MiB, "a distant link: more requests in flight"),
        Profile("small-files", 32, 16, 0, 1 * MiB, "trees of many small files"),
        Profile("large-files", 4, 8, 64 * MiB, 4 * MiB, "a few large files"),
    )
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def profile(name: str, what: str = "--profile") -> Profile:
    """The profile called `name`; an unknown name is refused listing the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise FerryError(
            ErrorKind.USAGE,
            f"{what}: unknown profile {name!r} (choose from {', '.join(PROFILE_NAMES)})",
        ) from None


def help_text() -> str:
    """The profiles and what each sets, for `ferry copy --help`."""
    return "; ".join(f"{p.name} ({p.purpose}): {p.describe()}" for p in PROFILES.values())
