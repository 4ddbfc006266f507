"""`ferry://...?streams=N`: at most N connections to the server at once, for real."""

from __future__ import annotations

import threading
from contextlib import ExitStack

from ferry.mover.backends.ferry.connections import Connections
from ferry.mover.endpoints import FerryEndpoint, parse_endpoint
from tests.wire.conftest import Server, wait_for


def test_streams_bounds_the_connections_lent_at_once(server: Server) -> None:
    ep = parse_endpoint(server.url(streams="2"))
    assert isinstance(ep, FerryEndpoint) and ep.streams == 2
    conns = Connections(ep)
    third = threading.Event()
    try:
        with ExitStack() as held:
            for _ in range(2):
                held.enter_context(conns.lend())

            def borrow() -> None:
                with conns.lend():
                    third.set()

            t = threading.Thread(target=borrow, daemon=True)
            t.start()
            t.join(0.5)  # bounded wait for something that must NOT happen while two are lent
            assert not third.is_set(), "a third connection was lent with streams=2"
        wait_for(third.is_set, "the third borrower after one was returned", deadline=10)
        t.join(10)
    finally:
        conns.close()
