"""A single file to and from `ferry serve` (ferry://), through the real command."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import run_ferry
from tests.wire.conftest import Server


def test_single_file_over_the_wire(tmp_path: Path, server: Server) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(20 * 1024 * 1024 + 3))  # chunked (over 16 MiB)
    into = run_ferry("copy", f, server.url("isos/"), "--json").summary
    assert into["filesCopied"] == 1
    assert (server.root / "isos" / "f.bin").read_bytes() == f.read_bytes()
    named = run_ferry("copy", f, server.url("isos/g.bin"), "--json").summary
    assert named["filesCopied"] == 1
    assert (server.root / "isos" / "g.bin").read_bytes() == f.read_bytes()
    for dst in ("isos/", "isos", "isos/g.bin"):
        again = run_ferry("copy", f, server.url(dst), "--json").summary
        assert (again["filesCopied"], again["filesSkipped"], again["bytesTransferred"]) == (0, 1, 0)
    run_ferry("verify", f, server.url("isos/g.bin"))
    # an update goes as a delta (auto pays across the wire) and arrives whole
    data = bytearray(f.read_bytes())
    data[1000:1010] = b"0123456789"
    f.write_bytes(bytes(data))
    upd = run_ferry("copy", f, server.url("isos/g.bin"), "--json").summary
    assert upd["filesUpdated"] == 1
    assert (server.root / "isos" / "g.bin").read_bytes() == bytes(data)
    # and back down, to a name
    run_ferry("copy", server.url("isos/g.bin"), tmp_path / "back" / "h.bin")
    assert (tmp_path / "back" / "h.bin").read_bytes() == bytes(data)
    # a file onto itself on the server
    r = run_ferry("copy", server.url("isos/g.bin"), server.url("isos/"), check_rc=4)
    assert "same file" in r.stderr
