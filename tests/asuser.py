"""Run a piece of a test as another user: a real non-root mover, without mocking `geteuid`.

The child is forked (no second interpreter, so it needs no access to the virtualenv) and
drops to the user before it calls the function; what it returns comes back as text. Only
root can do that: elsewhere the test fails (skips in a partial run, as tests/strict says).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.strict import unavailable

NOBODY = 65534


def as_user(fn: Callable[[], str], uid: int = NOBODY) -> str:
    """`fn()` run by a forked child as `uid` (and its group): its result."""
    if os.geteuid() != 0:
        unavailable("needs root, to run part of the test as another user")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write, fn().encode())
            code = 0
        except BaseException:
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as answer:
        got = answer.read()
    assert os.waitpid(pid, 0)[1] == 0, f"the part run as uid {uid} failed (its stderr above)"
    return got


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A fresh directory another user can reach (pytest's tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="ferry-asuser-"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base)
