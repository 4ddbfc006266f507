"""The dependency direction of docs/design.md, checked statically over every module in ferry/.

`cli` imports `operator` and `pod`; both import `mover`; `mover` imports neither and no
Kubernetes code; `pod` imports no operator and no Kubernetes client (the mover's start-up
stays lean); nothing imports `cli`; and no import cycle anywhere.

The graph is read with `ast`, not by importing: every `import` counts, also the ones inside
functions (run later, but a cycle all the same), and `if TYPE_CHECKING:` imports count for
the layer rules (a type named is a dependency) and for cycles, reported apart from the
cycles that run. Package
`__init__` semantics: importing `a.b.c` runs `a/__init__` and `a/b/__init__` first, so it
depends on them too — except on the importer's own packages, which are already running.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ferry"


@dataclass(frozen=True, slots=True)
class Edge:
    """`importer` imports `target` at `path:line`; `typing_only` inside `if TYPE_CHECKING:`."""

    importer: str
    target: str
    path: str
    line: int
    typing_only: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _typing_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    out.update(id(n) for n in ast.walk(stmt))
    return out


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of a (possibly relative) `from` import's module."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(path: Path, root: Path, modules: set[str]) -> Iterator[Edge]:
    """Every import in one file, resolved to modules of the tree (or external top-level names)."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    typing_only = _typing_only_nodes(tree)
    rel = str(path.relative_to(root.parent))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            # `from pkg import mod` imports the module pkg.mod (and runs pkg's __init__ unless
            # it is the importer's own package); `from mod import name` depends on mod itself.
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            names = len(subs) < len(node.names)
            targets = [*subs, base] if names else subs
        typing = id(node) in typing_only
        for target in targets:
            # A TYPE_CHECKING import never runs, so it runs no package __init__ either: it
            # depends on the module it names only.
            deps = [target] if typing else _with_packages(target, modules, own=name)
            for dep in deps:
                yield Edge(name, dep, rel, getattr(node, "lineno", 0), typing)


def _with_packages(target: str, modules: set[str], own: str) -> Iterable[str]:
    """`target` and the packages whose `__init__` importing it runs, minus the importer's own."""
    parts = target.split(".")
    own_packages = {".".join(own.split(".")[:i]) for i in range(1, own.count(".") + 1)}
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if i == len(parts) or (name in modules and name not in own_packages):
            yield name


def graph(root: Path = ROOT) -> list[Edge]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in files}
    return [e for p in files for e in imports_of(p, root, modules) if e.target != e.importer]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    adj: dict[str, set[str]] = {}
    for e in edges:
        adj.setdefault(e.importer, set()).add(e.target)
        adj.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(adj[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return sorted(found)


def describe_cycle(scc: list[str], edges: list[Edge]) -> str:
    members = set(scc)
    inner = sorted(
        {
            (e.importer, e.target, e.path, e.line, " TYPE_CHECKING" if e.typing_only else "")
            for e in edges
            if {e.importer, e.target} <= members
        }
    )
    lines = [f"  {a} -> {b}   ({p}:{n}{t})" for a, b, p, n, t in inner]
    return f"cycle among {', '.join(scc)}:\n" + "\n".join(lines)


def _in(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# (importer package, forbidden import) — the dependency direction of docs/design.md.
FORBIDDEN = [
    *(
        ("ferry.mover", t)
        for t in ("kubernetes", "kopf", "ferry.operator", "ferry.pod", "ferry.serve", "ferry.cli")
    ),
    *(("ferry.operator", t) for t in ("ferry.pod", "ferry.serve", "ferry.cli")),
    *(
        ("ferry.pod", t)
        for t in ("kubernetes", "kopf", "ferry.operator", "ferry.serve", "ferry.cli")
    ),
    # `ferry serve` is a front over the mover's LocalBackend: the mover only; only cli imports it.
    *(
        ("ferry.serve", t)
        for t in ("kubernetes", "kopf", "ferry.operator", "ferry.pod", "ferry.cli")
    ),
]


def violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        for importer, target in FORBIDDEN:
            if _in(e.importer, importer) and _in(e.target, target):
                out.append(
                    f"{e.importer} imports {e.target} ({e.path}:{e.line}): {importer} must not"
                )
        if _in(e.target, "ferry.cli") and not _in(e.importer, "ferry.cli"):
            out.append(f"{e.importer} imports {e.target} ({e.path}:{e.line}): the cli is the root")
    return sorted(set(out))


# ---------------------------------------------------------------- the tree itself


def test_no_import_cycle_in_ferry() -> None:
    edges = [e for e in graph() if not e.typing_only]
    found = cycles(edges)
    assert not found, "import cycles (function-level imports count):\n" + "\n".join(
        describe_cycle(c, edges) for c in found
    )


def test_no_cycle_through_type_only_imports() -> None:
    """A back-reference named only under TYPE_CHECKING (a writer typed by the backend that
    made it) runs no code, but it is the coupling a session object removes: a cycle too."""
    edges = graph()
    found = [c for c in cycles(edges) if c not in cycles([e for e in edges if not e.typing_only])]
    assert not found, "import cycles through `if TYPE_CHECKING:` imports:\n" + "\n".join(
        describe_cycle(c, edges) for c in found
    )


def test_dependency_direction() -> None:
    found = violations(graph())
    assert not found, "imports against the dependency direction:\n" + "\n".join(found)


def test_the_graph_sees_the_layers() -> None:
    """Guards the checker against going blind (a moved tree, a parse that finds nothing)."""
    edges = graph()
    pairs = {(e.importer, e.target) for e in edges}
    assert ("ferry.cli", "ferry.pod.run") in pairs  # a function-level import
    assert ("ferry.operator.workload", "ferry.operator.moverspec") in pairs
    assert any(_in(a, "ferry.pod") and _in(b, "ferry.mover") for a, b in pairs)
    assert any(_in(a, "ferry.mover") for a, _ in pairs)


# ---------------------------------------------------------------- the checker


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ferry"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    return root


def test_checker_finds_function_level_and_package_init_cycles(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "a.py": "def f():\n    from ferry import b\n",
            "b.py": "import ferry.a\n",
            "pkg/__init__.py": "def g():\n    from .x import y\n",
            "pkg/x.py": "y = 1\n",
            "c.py": "from ferry.pkg.x import y\n",
            "pkg/z.py": "from ferry.c import q\nfrom ferry.pkg import x\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ferry.e import t\n"
            "    from ferry.pkg.x import y\n",
            "e.py": "from ferry.d import s\n",
        },
    )
    edges = [e for e in graph(root) if not e.typing_only]
    assert cycles(edges) == [["ferry.a", "ferry.b"]]
    pairs = {(e.importer, e.target) for e in edges}
    # importing ferry.pkg.x runs ferry/pkg/__init__ first; its own package is not an edge
    assert ("ferry.c", "ferry.pkg") in pairs and ("ferry.c", "ferry.pkg.x") in pairs
    assert ("ferry.pkg.z", "ferry.pkg") not in pairs and ("ferry.pkg.z", "ferry.pkg.x") in pairs
    assert ("ferry.pkg", "ferry.pkg.x") in pairs
    # a TYPE_CHECKING import names one module and runs no package __init__
    typed = {(e.importer, e.target) for e in graph(root) if e.typing_only}
    assert typed == {("ferry.d", "ferry.e"), ("ferry.d", "ferry.pkg.x")}
    assert cycles(graph(root)) == [["ferry.a", "ferry.b"], ["ferry.d", "ferry.e"]]
    # a cycle through a package __init__ is found
    (root / "pkg" / "x.py").write_text("from ferry.c import q\n")
    assert ["ferry.c", "ferry.pkg", "ferry.pkg.x"] in cycles(graph(root))


def test_checker_flags_layer_violations(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "mover/engine/x.py": "def f():\n    import kubernetes.client\n",
            "mover/y.py": "from ferry.operator import api\n",
            "operator/api.py": "from ferry.pod import run\n",
            "pod/run.py": "import kopf\n",
        },
    )
    found = "\n".join(violations(graph(root)))
    for text in (
        "ferry.mover.engine.x imports kubernetes",
        "ferry.mover.y imports ferry.operator",
        "ferry.operator.api imports ferry.pod",
        "ferry.pod.run imports kopf",
    ):
        assert text in found


@pytest.mark.parametrize(
    ("importer", "is_package", "level", "module", "expected"),
    [
        ("ferry.mover.backends.s3.backend", False, 1, "files", "ferry.mover.backends.s3.files"),
        ("ferry.mover.backends.s3", True, 1, "wire", "ferry.mover.backends.s3.wire"),
        ("ferry.mover.backends.s3.backend", False, 2, "base", "ferry.mover.backends.base"),
        ("ferry.mover.spec", False, 1, None, "ferry.mover"),
    ],
)
def test_relative_imports_resolve(importer, is_package, level, module, expected) -> None:
    assert _resolve(importer, is_package, level, module) == expected
