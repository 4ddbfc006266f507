"""Include/exclude rules in rclone's style: ordered `+ pattern` / `- pattern`, first match wins.

Patterns: `*` matches within one path segment, `**` across segments, `?` one
character, `[...]` a class (`[!...]` negated, a `]` first in it a member), `{a,b}`
alternatives, `\\` escapes the next character. A leading `/` anchors the
pattern at the transfer root; otherwise it matches at any depth. A trailing
`/` matches directories only. When there are include rules and nothing
matched, the path is excluded (an implicit `- **` at the end), as in rclone.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferry.mover.errors import ErrorKind, FerryError

if TYPE_CHECKING:
    from ferry.mover.options import Options


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    i, n = 0, len(glob)
    depth = 0
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            first = i + 2 if glob.startswith(("[!", "[^"), i) else i + 1
            j = glob.find("]", first + 1)  # a `]` first in the class is a member (fnmatch)
            if j < 0:
                raise ValueError(f"unclosed '[' in {glob!r}")
            body = glob[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise ValueError(f"unclosed '{{' in {glob!r}")
    return "".join(out)


@dataclass(slots=True, frozen=True)
class Rule:
    include: bool
    pattern: str
    regex: re.Pattern[str]
    dir_only: bool
    dir_rule: bool  # pattern ends in `/` or `/**`: it can prune whole directories

    @classmethod
    def parse(cls, line: str) -> Rule:
        text = line.strip()
        if len(text) < 3 or text[0] not in "+-" or text[1] != " ":
            raise FerryError(
                ErrorKind.USAGE, f"filter rule {line!r}: expected '+ pattern' or '- pattern'"
            )
        pattern = text[2:].strip()  # not empty: `text` is stripped and has 3 characters
        dir_only = pattern.endswith("/")
        body = pattern.rstrip("/")
        # `dir/**` also matches `dir` itself, so it can prune it; `/**` is everything.
        dir_rule = dir_only or (body.endswith("/**") and len(body) > 3)
        if body.endswith("/**") and len(body) > 3:
            body_re = _compile_body(line, body[:-3]) + "(?:/.*)?"
        else:
            body_re = _compile_body(line, body)
        anchored = body.startswith("/")
        prefix = "^" if anchored else "^(?:.*/)?"
        try:
            regex = re.compile(prefix + body_re + "$", re.DOTALL)
        except re.error as exc:  # e.g. `[]` or `[z-a]`
            raise FerryError(ErrorKind.USAGE, f"filter rule {line!r}: {exc.msg}") from None
        return cls(text[0] == "+", pattern, regex, dir_only, dir_rule)


def _compile_body(line: str, body: str) -> str:
    try:
        return _glob_to_regex(body.lstrip("/"))
    except ValueError as exc:
        raise FerryError(ErrorKind.USAGE, f"filter rule {line!r}: {exc}") from None


class FilterSet:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.has_includes = any(r.include for r in rules)

    @classmethod
    def parse(cls, lines: list[str] | tuple[str, ...]) -> FilterSet:
        rules = []
        for line in lines:
            if line.strip() and not line.lstrip().startswith(("#", ";")):
                rules.append(Rule.parse(line))
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def include_file(self, rel: str) -> bool:
        for r in self.rules:
            if not r.dir_only and r.regex.match(rel):
                return r.include
        return not self.has_includes

    def include_dir(self, rel: str) -> bool:
        """Whether to descend into a directory: only directory rules prune; an
        include rule for files may match below, so it stops the search."""
        for r in self.rules:
            if r.dir_rule:
                if r.regex.match(rel):
                    return r.include
            elif r.include:
                return True
        return True


def rules_from_cli(
    includes: list[str], excludes: list[str], filter_lines: list[str]
) -> tuple[str, ...]:
    """--exclude rules first, then --include, then --filter-from lines, like rclone."""
    return tuple([f"- {p}" for p in excludes] + [f"+ {p}" for p in includes] + list(filter_lines))


@dataclass(slots=True, frozen=True)
class Bounds:
    """--min-size/--max-size/--min-age/--max-age, inclusive, as rclone's: a file outside
    them is filtered like an excluded one (not copied, and in sync not deleted). Ages are
    measured from `now_ns`, the run's start, so one run sees one cut-off."""

    min_size: int | None = None
    max_size: int | None = None
    min_age: float | None = None  # seconds
    max_age: float | None = None
    now_ns: int = 0

    def __bool__(self) -> bool:
        return any(
            v is not None for v in (self.min_size, self.max_size, self.min_age, self.max_age)
        )

    def admits(self, size: int, mtime_ns: int) -> bool:
        if self.min_size is not None and size < self.min_size:
            return False
        if self.max_size is not None and size > self.max_size:
            return False
        age = (self.now_ns - mtime_ns) / 1e9
        if self.min_age is not None and age < self.min_age:
            return False
        return self.max_age is None or age <= self.max_age


class PathList:
    """--files-from: only the listed paths (relative to the source) and what is below a
    listed directory; the directories leading to them are walked, nothing else is. In
    sync what is not listed is protected, like any filtered path."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.listed: set[str] = set()
        self.parents: set[str] = set()
        for p in paths:
            self.listed.add(p)
            while "/" in p:
                p = p.rsplit("/", 1)[0]
                self.parents.add(p)

    def _under_listed(self, rel: str) -> bool:
        while True:
            if rel in self.listed:
                return True
            if "/" not in rel:
                return False
            rel = rel.rsplit("/", 1)[0]

    def include_file(self, rel: str) -> bool:
        return self._under_listed(rel)

    def include_dir(self, rel: str) -> bool:
        return rel in self.parents or self._under_listed(rel)


def parse_files_from(lines: list[str], what: str = "--files-from") -> tuple[str, ...]:
    """One relative path a line; blank lines and `#`/`;` comments skipped (as rsync); a
    leading `/` or `./` is the source's root; `..` and empty segments are refused."""
    out: list[str] = []
    for n, line in enumerate(lines, 1):
        text = line.rstrip("\r\n")
        if not text.strip() or text.lstrip().startswith(("#", ";")):
            continue
        path = text.lstrip("/")
        while path.startswith("./"):
            path = path[2:].lstrip("/")
        path = path.rstrip("/")
        parts = path.split("/")
        if not path or any(p in ("", ".", "..") for p in parts) or "\0" in path:
            raise FerryError(
                ErrorKind.USAGE,
                f"{what} line {n}: {text!r} is not a path inside the source "
                "(no '..', '.' or empty segments)",
            )
        out.append(path)
    return tuple(out)


def bounds_of(options: Options) -> Bounds:
    """The run's size and age bounds, its ages measured from now."""
    return Bounds(
        options.min_size, options.max_size, options.min_age, options.max_age, time.time_ns()
    )
