"""`--chmod` and `--chown` parsed: what the destination's modes and owners become.

Parsed once, applied to each source entry where the planner reads it, so the comparison
(a second run is a no-op), every executor path and `ferry verify` all see the same
transformed mode and owner. rsync's syntax: a comma list of chmod(1) clauses, each
optionally prefixed D (directories only) or F (files only); `USER:GROUP` by name or id.
"""

from __future__ import annotations

import grp
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferry.mover.errors import ErrorKind, FerryError

_OCTAL = re.compile(r"[0-7]{1,4}")
_SYMBOLIC = re.compile(r"([ugoa]*)((?:[-+=][rwxXst]*)+)")
_OP = re.compile(r"([-+=])([rwxXst]*)")
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007}  # each class's bits, incl. its special bit
_MAX_SPEC = 4096


@dataclass(frozen=True, slots=True)
class _Clause:
    files: bool  # whether it applies to files
    dirs: bool  # and to directories
    octal: int | None  # an absolute mode, or
    who: int  # the bits of the classes named (u/g/o), all when none
    ops: tuple[tuple[str, str], ...]  # (operator, permission letters)


def _refuse(part: str, why: str) -> FerryError:
    return FerryError(ErrorKind.USAGE, f"--chmod: {part!r} {why}")


def _clause(part: str) -> _Clause:
    text = part
    files = dirs = True
    if text[:1] in ("D", "F"):
        files, dirs = text[0] == "F", text[0] == "D"
        text = text[1:]
    if not text:
        raise _refuse(part, "is empty (expected e.g. D755, F644, u+rwx, go-w)")
    if text.isdigit():
        if not _OCTAL.fullmatch(text):
            raise _refuse(part, "is not an octal mode of 1 to 4 digits 0-7")
        return _Clause(files, dirs, int(text, 8), 0, ())
    m = _SYMBOLIC.fullmatch(text)
    if m is None:
        raise _refuse(part, "is not a mode like 755 or [ugoa][+-=][rwxXst] (e.g. u+rwx,g-w,o=)")
    who = 0
    for c in m.group(1):
        who |= 0o7777 if c == "a" else _WHO[c]
    return _Clause(files, dirs, None, who or 0o7777, tuple(_OP.findall(m.group(2))))


def _bits(letters: str, who: int, mode: int, is_dir: bool) -> int:
    """The mode bits `letters` stand for within the classes `who`."""
    out = 0
    for c in letters:
        if c == "r":
            out |= 0o444
        elif c == "w":
            out |= 0o222
        elif c == "x" or (c == "X" and (is_dir or mode & 0o111)):
            out |= 0o111
        elif c == "s":
            out |= 0o6000
        elif c == "t":
            out |= 0o1000
    return out & who


class Chmod:
    """A parsed `--chmod` list, applied in order (as rsync and chmod(1) do)."""

    def __init__(self, spec: str) -> None:
        if len(spec) > _MAX_SPEC:
            raise FerryError(ErrorKind.USAGE, f"--chmod: longer than {_MAX_SPEC} characters")
        parts = spec.split(",")
        if not spec.strip():
            raise FerryError(ErrorKind.USAGE, "--chmod: empty (expected e.g. D755,F644)")
        self.clauses = tuple(_clause(p.strip()) for p in parts)
        self.spec = spec

    def apply(self, mode: int, is_dir: bool) -> int:
        for c in self.clauses:
            if not (c.dirs if is_dir else c.files):
                continue
            if c.octal is not None:
                mode = (mode & ~0o7777) | c.octal
                continue
            for op, letters in c.ops:
                bits = _bits(letters, c.who, mode, is_dir)
                if op == "+":
                    mode |= bits
                elif op == "-":
                    mode &= ~bits
                else:  # '=': clear the classes' rwx (and their special bits), then set
                    mode = (mode & ~c.who) | bits
        return mode & 0o7777


@dataclass(frozen=True, slots=True)
class Chown:
    """A parsed `--chown USER:GROUP` (either half may be empty, not both); -1 keeps."""

    uid: int = -1
    gid: int = -1

    @classmethod
    def parse(cls, spec: str) -> Chown:
        user, _sep, group = spec.partition(":")
        if not user and not group:
            raise FerryError(
                ErrorKind.USAGE, f"--chown {spec!r}: expected USER:GROUP, USER or :GROUP"
            )
        return cls(
            _id(user, "user", pwd.getpwnam) if user else -1,
            _id(group, "group", grp.getgrnam) if group else -1,
        )


def _id(name: str, what: str, lookup: Callable[[str], Any]) -> int:
    if name.isascii() and name.isdigit():
        value = int(name)
        if value >= 2**32 - 1:
            raise FerryError(ErrorKind.USAGE, f"--chown: {what} id {name} is out of range")
        return value
    try:
        entry = lookup(name)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise FerryError(ErrorKind.USAGE, f"--chown: no such {what} {name!r}") from None
    return int(entry[2])
