"""`--rename 's/REGEX/REPLACEMENT/FLAGS'`: destination names computed from source names.

Rules apply to each name (a path component: a file's, a directory's, a link's), never
to a whole path, so a rule cannot move an entry to another directory and one listing
pair is all the planner needs to pair a source entry with its destination. They run in
the order given, each on the previous one's result. Python's `re` syntax: `\\1` or
`\\g<name>` in the replacement; like sed, only the first match is replaced unless the
flag `g` is given; `i` matches ignoring case. Any character after the `s` is the
delimiter (`s|a/b|c|`), and a backslash before it makes it literal.

A renamed name must be one a directory can hold (not empty, `.`, `..`, no `/` or NUL,
not one of Ferry's own `.~ferry.` names), and two names of one directory must not become
one: both are refused before anything is written (transfer.py scans the source first).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ferry.mover.errors import ErrorKind, FerryError

FLAGS = "gi"
INTERNAL = ".~ferry."  # names Ferry keeps at a destination (docs/design.md)


def _bad(rule: str, why: str) -> FerryError:
    return FerryError(
        ErrorKind.USAGE, f"--rename {rule!r}: {why} (expected 's/REGEX/REPLACEMENT/')"
    )


def _split(rule: str) -> list[str]:
    """`s` + delimiter + three parts, the delimiter escaped by a backslash inside them."""
    if len(rule) < 2 or rule[0] != "s":
        raise _bad(rule, "a rule starts with 's' and a delimiter")
    delim = rule[1]
    if delim.isalnum() or delim in "\\ \n":
        raise _bad(rule, f"{delim!r} cannot be the delimiter")
    parts, cur, i = [], [], 2
    while i < len(rule):
        c = rule[i]
        if c == "\\" and i + 1 < len(rule) and rule[i + 1] == delim:
            cur.append(delim)
            i += 2
            continue
        if c == "\\" and i + 1 < len(rule):
            cur.append(rule[i : i + 2])
            i += 2
            continue
        if c == delim:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    if len(parts) < 3:
        raise _bad(rule, f"unterminated: it needs three {delim!r}")
    if len(parts) > 3:
        raise _bad(rule, f"more than three {delim!r} (write a literal one as \\{delim})")
    return parts


@dataclass(frozen=True, slots=True)
class Rule:
    text: str
    pattern: re.Pattern[str]
    replacement: str
    count: int  # 0: every match (flag g); 1: the first, as sed does

    @classmethod
    def parse(cls, text: str) -> Rule:
        regex, replacement, flags = _split(text)
        unknown = set(flags) - set(FLAGS)
        if unknown:
            raise _bad(text, f"unknown flag(s) {''.join(sorted(unknown))!r} (use g, i)")
        if not regex:
            raise _bad(text, "the regular expression is empty")
        try:
            pattern = re.compile(regex, re.IGNORECASE if "i" in flags else 0)
        except re.error as exc:
            raise _bad(text, f"invalid regular expression: {exc}") from None
        try:
            pattern.sub(replacement, "")  # checks group references and escapes
        except (re.error, IndexError) as exc:
            raise _bad(text, f"invalid replacement: {exc}") from None
        return cls(text, pattern, replacement, 0 if "g" in flags else 1)


class Renamer:
    """The rules of one transfer, applied in order to one name at a time."""

    def __init__(self, rules: Iterable[str]) -> None:
        self.rules = tuple(Rule.parse(r) for r in rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __call__(self, name: str) -> str:
        out = name
        for r in self.rules:
            try:
                out = r.pattern.sub(r.replacement, out, count=r.count)
            except (re.error, IndexError) as exc:
                raise _bad(r.text, f"cannot rename {name!r}: {exc}") from None
        if out != name and (
            not out or out in (".", "..") or "/" in out or "\x00" in out or out.startswith(INTERNAL)
        ):
            rules = " ".join(repr(r.text) for r in self.rules)
            raise FerryError(
                ErrorKind.USAGE,
                f"--rename {rules} turns {name!r} into {out!r}, which is not a name a "
                "directory can hold",
            )
        return out

    def listing(self, names: Iterable[str], kept: list[str], where: str) -> dict[str, str]:
        """Each name of one directory -> its new name, refusing two `kept` names (those
        the transfer will write) that the rules make one."""
        kept = sorted(kept)
        writes = set(kept)
        out: dict[str, str] = {}
        for name in names:
            try:
                out[name] = self(name)
            except FerryError:
                if name in writes:
                    raise
                out[name] = name  # left out by the filters: never written, never refused
        seen: dict[str, str] = {}
        for name in kept:
            new = out[name]
            other = seen.get(new)
            if other is not None:
                raise FerryError(
                    ErrorKind.USAGE,
                    f"--rename maps both {other!r} and {name!r} to {new!r}: nothing was written",
                    where,
                )
            seen[new] = name
        return out
