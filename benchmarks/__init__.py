"""Side-by-side benchmarks of `ferry` against cp, rsync and rclone.

Run `python -m benchmarks.local --help`; see benchmarks/README.md.
"""

import compileall
from pathlib import Path


def compile_ferry() -> None:
    """Write the bytecode of Ferry's modules, as installing the package does: where
    PYTHONDONTWRITEBYTECODE is set, every timed run would otherwise compile them again."""
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "ferry", quiet=1)
