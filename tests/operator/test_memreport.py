"""The memory report names what a measurement needs, and refuses a bad interval by name."""

from __future__ import annotations

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
