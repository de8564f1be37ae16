"""Review of stop 46's engine changes (decisions 1014-1019): the idle trim
(986), ``fd_closing`` (989) and ``write_progress`` (990-991), tried to
break; what broke is fixed here, and the strongest probes stay as guards.
"""

from __future__ import annotations

import socket

from conftest import Collector, run_until
from test_engine_idle_memory import _armed_pairs, _burst

# the kernel hands a one-shot receive to io-wq after its poll woke it this
# many times with nothing to read (APOLL_MAX_RETRY, 6.x; 5.x at once)
_SPURIOUS = 130


def _oneshot_in_a_worker(eng, res_tracker, multishot=False):
    """A one-shot pool receive (sock_recv's) whose poll is woken _SPURIOUS
    times, the byte read each time behind its back before the engine's
    turn: on io_uring the kernel then runs it in an io-wq worker, blocked
    in recv(2) with a ring buffer taken. Returns (collector, sender)."""
    x, y = (res_tracker.sock(s) for s in socket.socketpair())
    x.setblocking(False)
    one = Collector("one-shot")
    eng.recv(x.fileno(), one, multishot=multishot)
    for _ in range(_SPURIOUS):
        y.send(b"z")
        try:
            x.recv(1)  # before the engine's turn: its retry finds nothing
        except BlockingIOError:
            pass  # a worker's recv took it first (it waits in recv(2) already)
        eng.run(0)
        if one.records:  # taken by the engine (epoll, or a worker): again
            assert one.records[-1][2] == b"z", one.records
            one.records.clear()
            if one.finals:
                one.finals = 0
                eng.recv(x.fileno(), one, multishot=multishot)
    return one, y


def test_a_trim_leaves_the_ring_buffer_of_a_worker_held_receive(eng, res_tracker):
    """Decision 1014: a one-shot receive run by an io-wq worker holds a
    ring buffer the kernel took without a record (it comes with the bytes).
    The idle trim took the ring back (CQ empty, no pool READ live), gave
    every buffer it believed the ring held to the free stack, that one too,
    and the ring again: the next burst's bytes of one socket were read as
    another's (5 sockets of 200 on 6.18). A live one-shot receive now keeps
    the ring as it is, as a pool READ does; every byte arrives as sent."""
    pairs, cols, _ = _armed_pairs(eng, res_tracker)
    one, y = _oneshot_in_a_worker(eng, res_tracker)
    _burst(eng, pairs, cols, 0)
    eng.run(0)
    assert eng.run(0.3) == 0  # idle: the trim
    _burst(eng, pairs, cols, 1)  # each socket's bytes, whole and its own
    y.send(b"the one-shot's")
    run_until(eng, lambda: one.payload(), what="the one-shot receive")
    assert one.payload() == b"the one-shot's"
    for _, b in [*pairs, (None, y)]:
        b.close()
    run_until(eng, lambda: all(c.done for c in [*cols, one]), what="every EOF")
