"""Side-by-side benchmarks of `ferry` against cp, rsync and rclone.

Run `python -m benchmarks.local --help`; see benchmarks/README.md.
"""
