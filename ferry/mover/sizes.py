"""Sizes and rates in binary units, read the same way by every flag and field."""

from __future__ import annotations

from ferry.mover.errors import ErrorKind, FerryError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str, what: str = "size") -> int:
    """`64M`, `1.5G`, `4096`, `512k`: binary units, as rsync and rclone read them."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b") if text else ""
    unit = t[-1:] if t[-1:].isalpha() else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not 0 <= value < float("inf"):  # NaN fails both
        raise FerryError(ErrorKind.USAGE, f"{what} {text!r} is not a size like 512K, 64M or 2G")
    return int(value * _UNITS[unit])
