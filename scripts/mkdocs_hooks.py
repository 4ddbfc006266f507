"""mkdocs hook: links from a docs page to repository files outside docs/ (the chart, the
examples, benchmarks/README.md) become links to the repository, after checking that the
file, and the heading an anchor names, exist: a broken one is a warning, which fails
`mkdocs build --strict` (tests/test_docs.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.ferry")

LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def _anchors(path: Path) -> set[str]:
    heads = re.findall(r"^#+\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.M)
    return {_slug(h) for h in heads}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = docs.parent
    base = (docs / page.file.src_path).parent
    blob = f"{config['repo_url'].rstrip('/')}/blob/main/"
    tree = f"{config['repo_url'].rstrip('/')}/tree/main/"

    def rewrite(m: re.Match[str]) -> str:
        target = m[2]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return m[0]
        path, _, anchor = target.partition("#")
        resolved = (base / path).resolve()
        if resolved.is_relative_to(docs):
            return m[0]  # mkdocs checks links between pages itself
        if not resolved.is_relative_to(repo) or not resolved.exists():
            log.warning("%s links to %s, which is not in the repository", page.file.src_path, path)
            return m[0]
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            log.warning("%s links to %s#%s: no such heading", page.file.src_path, path, anchor)
        rel = resolved.relative_to(repo).as_posix()
        url = (tree if resolved.is_dir() else blob) + rel + (f"#{anchor}" if anchor else "")
        return f"{m[1]}{url}{m[3]}"

    return LINK.sub(rewrite, markdown)
