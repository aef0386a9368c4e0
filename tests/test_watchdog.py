"""The watchdog that ends a CRM call at its deadline, with calls of different lengths in flight.

The watchdog thread sleeps until the earliest end time it knows; a call armed
later with an earlier end must still wake it (the deadline tests in
test_upstream.py cover a single call against a real CRM)."""

from __future__ import annotations

import socket

from mapper.core.watchdog import WATCHDOG, watching


class Connection:
    """What the watchdog needs of a urllib3 connection: its socket and whose call it serves."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.watch = None


def test_a_short_call_armed_after_a_long_one_is_cut_at_its_own_deadline():
    long_call = WATCHDOG.arm(60.0)  # the watchdog now sleeps towards this one's end
    ours, crm = socket.socketpair()
    try:
        ours.settimeout(20.0)  # only if the watchdog never fires
        with watching(0.2) as watch:
            connection = Connection(ours)
            connection.watch, watch.connection = watch, connection
            received = ours.recv(1)  # the CRM never answers: blocked until the socket is shut down
        assert received == b""
        assert watch.fired
    finally:
        WATCHDOG.disarm(long_call)
        ours.close()
        crm.close()


def test_finished_calls_are_not_cut():
    ours, crm = socket.socketpair()
    try:
        for _ in range(200):  # calls that finish long before their end time
            with watching(0.05) as watch:
                connection = Connection(ours)
                connection.watch, watch.connection = watch, connection
        with watching(0.3) as last:
            connection = Connection(ours)
            connection.watch, last.connection = last, connection
            ours.settimeout(20.0)
            assert ours.recv(1) == b""  # cut by its own watch, not by one of the finished ones
        assert last.fired
        assert not watch.fired
    finally:
        ours.close()
        crm.close()
