"""Waits per short-lived connection on io_uring (issue 9; design.md decisions
846-848).

A waiting run (io_uring_enter with GETEVENTS and a min_complete) that
submits a request whose completion comes at once returns without sleeping,
but it is a wait the turn asked for (the GIL released and taken back), and
one that ends with nothing to deliver is a turn of the loop for nothing:
(846) a multishot receive's identity SQE (decision 601's getsockopt)
completed inline, its CQE alone ending the wait of the run that submitted
it; (847) a cancel from Python (close() with a receive alive) went out in
the next turn's waiting run, whose wait its target's final completion then
ended; (848) a connection's first receive went out in a waiting run too,
whatever its data. Now the identity's and the cancels' own CQEs are skipped
on success (IOSQE_CQE_SKIP_SUCCESS), and a cancel or a stream's receive
queued from Python makes ul_ready say 1, so the turn submits it with a run
that does not wait, as a queued send does (decision 340).
"""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from conftest import Collector, make_loop, run_in, run_until, settle
from test_engine_fd_reuse import _ring_cookies

GET = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def test_a_receives_ring_identity_ends_no_wait(make_engine, res_tracker):
    """A multishot receive submitted by a waiting run on an empty socket:
    the run waits once, until its timeout, and no CQE comes (the identity's
    getsockopt succeeds silently); the identity is taken from the ring all
    the same. Before 846 the getsockopt's CQE ended the first wait at once
    (no record), and the run waited a second time: 2 waits, 1 CQE."""
    eng = make_engine()
    _ring_cookies(eng, make_engine.fallbacks)
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    eng.run(0)  # the ring enabled, its wake poll armed
    got = Collector("ms")
    ud = eng.recv(a.fileno(), got, multishot=True)
    before = eng.stats()
    # nothing will come: the run ends at its timeout (the count is what is checked)
    assert eng.run(0.1) == 0
    after = eng.stats()
    assert after["ident_cookies"] - before["ident_cookies"] == 1
    assert after["ident_captures"] == before["ident_captures"]
    assert (after["waits"] - before["waits"], after["cqes"] - before["cqes"]) == (1, 0)
    assert got.records == []
    b.send(b"data")
    run_until(eng, lambda: len(got.records) == 1)
    assert got.records[0][2] == b"data"
    eng.cancel(ud)
    run_until(eng, lambda: got.done)


def test_a_refused_ring_identity_still_reports(make_engine, res_tracker):
    """The identity's CQE is skipped only on success: a getsockopt the kernel
    refuses (a multishot receive asked of a pipe, which has no socket
    command) still posts its CQE, which turns the ring's identity off for the
    engine (decision 601), and the next receive takes its identity by a
    syscall, as before 846."""
    import os

    eng = make_engine()
    _ring_cookies(eng, make_engine.fallbacks)
    r, w = os.pipe()
    try:
        bad = Collector("pipe")
        eng.recv(r, bad, multishot=True)
        run_until(eng, lambda: bad.done, what="the pipe's receive")
        assert bad.final[0] < 0
        settle(eng)
        a, b = (res_tracker.sock(s) for s in socket.socketpair())
        a.setblocking(False)
        before = eng.stats()
        got = Collector("ms")
        ud = eng.recv(a.fileno(), got, multishot=True)
        settle(eng)
        after = eng.stats()
        assert after["ident_cookies"] == before["ident_cookies"]
        assert after["ident_captures"] - before["ident_captures"] == 1
        b.send(b"x")
        run_until(eng, lambda: len(got.records) == 1)
        eng.cancel(ud)
        run_until(eng, lambda: got.done)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("how", ["cancel", "close_fd"])
def test_a_cancel_from_python_makes_the_engine_ready(make_engine, res_tracker, how):
    """A receive waiting in the kernel, cancelled (or its fd closed) outside
    a run: ul_ready says 1, and one run without a wait brings its final
    record (and the close's), as epoll's synchronous cancel leaves them
    waiting for that run. Before 847 ul_ready said 0 on io_uring, and the
    turn submitted the cancel in a waiting run."""
    from uringloop.engine import lib

    eng = make_engine()
    a, b = socket.socketpair()
    a.setblocking(False)
    res_tracker.sock(b)
    got = Collector("recv")
    ud = eng.recv(a.fileno(), got, multishot=True)
    settle(eng)
    assert lib.ul_ready(eng._e) == 0
    closed = Collector("close")
    if how == "cancel":
        res_tracker.sock(a)
        assert eng.cancel(ud)
    else:
        eng.close_fd(a.detach(), closed)
    assert lib.ul_ready(eng._e) == 1
    waits = eng.stats()["waits"]
    eng.run(0)
    assert got.done and got.final[0] == -errno.ECANCELED
    if how == "close_fd":
        assert closed.done and closed.final[0] == 0
    assert eng.stats()["waits"] == waits
    assert lib.ul_ready(eng._e) == 0


class _Answer(asyncio.Protocol):
    """conn-http-httptools' server in short: the answer, then close()."""

    lost: list
    waiter: list  # the future connection_lost completes

    def connection_made(self, tr):
        self.tr = tr

    def data_received(self, data):
        self.tr.write(ANSWER)
        self.tr.close()

    def connection_lost(self, exc):
        self.lost.append(exc)
        self.waiter[0].set_result(None)


@pytest.mark.parametrize("kind", ["io_uring", "io_uring-fallbacks", "epoll"])
def test_a_server_closed_connection_whose_data_is_there_waits_for_nothing(kind):
    """The conn-http row's exchange, one connection at a time, in lock step:
    the client (blocking calls from the loop's own thread) connects and sends
    its GET before the loop turns, so every turn finds the same kernel state:
    the connection accepted, its GET waiting; the server answers and closes
    in data_received. On io_uring no turn of the exchange waits: the accept
    is flagged as deferred work (decision 290), the connection's first
    receive (848) and the close's cancel (847) go out in runs without a
    wait, and their records come back from them. The parent tree made one
    waiting run a connection, which found its completion and returned
    without sleeping. epoll's accept comes from an epoll_wait with a
    timeout, which returns at once: one a connection (at most). Every client reads the
    answer, then EOF."""
    lp = make_loop(kind)
    if kind != "epoll" and "TASKRUN_FLAG" not in lp._engine.info()["ring_flags"]:
        lp.close()
        pytest.skip("no IORING_SETUP_TASKRUN_FLAG (Linux < 5.19): deferred work is not visible")
    n = 30
    lost: list = []
    waiter: list = [None]
    proto = type("Answer", (_Answer,), {"lost": lost, "waiter": waiter})

    async def main():
        srv = await lp.create_server(proto, "127.0.0.1", 0)
        addr = srv.sockets[0].getsockname()
        waits = 0
        for i in range(n + 5):
            waiter[0] = lp.create_future()
            c = socket.create_connection(addr, timeout=10)
            try:
                c.sendall(GET)
                start = lp.engine_stats()["waits"]
                await waiter[0]
                if i >= 5:  # after a few warm-up connections
                    waits += lp.engine_stats()["waits"] - start
                got = b""
                while True:
                    piece = c.recv(4096)
                    if not piece:
                        break
                    got += piece
                assert got == ANSWER
            finally:
                c.close()
        srv.close()
        await srv.wait_closed()
        return waits

    try:
        waits = run_in(lp, main(), timeout=60)
    finally:
        lp.close()
    assert lost == [None] * (n + 5)
    if kind == "epoll":
        assert waits <= n, f"{waits} waiting runs for {n} connections"
    else:
        assert waits == 0, f"{waits} waiting runs for {n} connections"


def test_a_streams_receive_from_python_is_tried_without_a_wait(make_engine, res_tracker):
    """A multishot receive submitted outside a run on a socket whose bytes
    are there already: ul_ready says 1 and one run without a wait brings its
    record, as epoll's read at submission does (decision 848). Before 848
    ul_ready said 0 on io_uring, and the turn submitted it in a waiting run
    (which found the data and returned without sleeping)."""
    from uringloop.engine import lib

    eng = make_engine()
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    eng.run(0)  # the ring enabled and ours
    b.send(b"there")
    got = Collector("ms")
    ud = eng.recv(a.fileno(), got, multishot=True)
    assert lib.ul_ready(eng._e) == 1
    waits = eng.stats()["waits"]
    eng.run(0)
    assert [r[2] for r in got.records] == [b"there"]
    assert eng.stats()["waits"] == waits
    eng.cancel(ud)
    run_until(eng, lambda: got.done)
