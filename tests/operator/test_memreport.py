"""The memory report names what a measurement needs, and refuses a bad interval by name."""

from __future__ import annotations

import ctypes
import ctypes.util
import tracemalloc

import pytest

from ferry.operator import memreport


def test_report_names_rss_malloc_python_and_traced_sites():
    tracemalloc.start()
    try:
        kept = [bytearray(4096) for _ in range(256)]  # 1 MiB the trace must see
        line = memreport.report()
    finally:
        tracemalloc.stop()
    assert kept
    assert line.startswith("rss=") and float(line.split("=")[1].split("MiB")[0]) > 1
    assert "malloc in-use=" in line  # glibc >= 2.33 here (the image's bookworm has 2.36)
    assert "python-blocks=" in line and "gc-objects=" in line
    assert "traced=" in line and "test_memreport.py:" in line


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(memreport.ENV, raising=False)
    assert memreport.start_from_env() is None
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv(memreport.ENV, bad)
        with pytest.raises(SystemExit, match=memreport.ENV):
            memreport.start_from_env()
    monkeypatch.setenv(memreport.ENV, "3600")
    thread = memreport.start_from_env()
    assert thread is not None and thread.is_alive() and thread.daemon


def test_trim_gives_freed_heap_pages_back():
    """glibc keeps memory freed in the middle of its heap; malloc_trim returns it (the
    operator trims so after a burst, its Python objects in that heap: PYTHONMALLOC=malloc)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4000) for _ in range(40_000)]  # ~160 MB below glibc's mmap threshold
    for p in blocks:
        ctypes.memset(p, 1, 4000)  # touched: in the RSS
    for p in blocks[:-1]:
        libc.free(p)  # the last one pins the heap's top: no automatic trim
    before = memreport.malloc_stats()
    rss_before = memreport.rss_bytes()
    assert before is not None and before.free_kept > 100 * memreport.MIB
    assert memreport.trim()
    assert rss_before - memreport.rss_bytes() > 100 * memreport.MIB
    libc.free(blocks[-1])
