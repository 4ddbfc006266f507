"""Side-by-side benchmarks of `ferry` against cp, rsync and rclone.

Run `python -m benchmarks.local --help`; see benchmarks/README.md.
"""

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_ferry(tree: Path = REPO) -> None:
    """Write the bytecode of Ferry's modules (of this checkout or `tree`), as installing the
    package does: where PYTHONDONTWRITEBYTECODE is set, every timed run would otherwise compile
    them again."""
    compileall.compile_dir(tree / "ferry", quiet=1)
