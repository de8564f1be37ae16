"""The engine's receive path: what a pool receive reads, and how often it asks."""

from __future__ import annotations

import socket

from conftest import Collector, run_until, settle

from uringloop import engine


def _waiting_recv(eng, sock):
    """A multishot pool receive on sock, already waiting for data."""
    c = Collector()
    ud = eng.recv(sock.fileno(), c)
    settle(eng, 2)
    assert c.records == []
    return c, ud


def test_epoll_short_stream_read_is_not_followed_by_a_read(res_tracker, socketpair):
    """A read shorter than the buffer drained a stream socket: epoll waits for
    the next edge instead of reading again for an EAGAIN (one recv per chunk)."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        c, ud = _waiting_recv(eng, a)
        for i in range(3):
            before = eng.stats()["submitted"]
            b.send(b"x" * (100 + i))
            run_until(eng, lambda i=i: len(c.records) == i + 1, what="chunk")
            assert c.records[-1] == (100 + i, True, b"x" * (100 + i))
            assert eng.stats()["submitted"] - before == 1
        b.close()
        run_until(eng, lambda: c.done, what="EOF")
        assert c.records[-1] == (0, False, None)
    finally:
        eng.close()


def test_data_and_eof_in_one_wakeup(eng, socketpair):
    """Data followed by FIN before the engine looks: a short read must not
    stop there (no further edge will come for the FIN)."""
    a, b = socketpair()
    c, ud = _waiting_recv(eng, a)
    b.send(b"last words")
    b.shutdown(socket.SHUT_WR)
    run_until(eng, lambda: c.done, what="EOF after the data")
    assert c.payload() == b"last words"
    assert c.records[-1] == (0, False, None)


def test_short_datagram_reads_do_not_stop_a_pool_receive(eng, socketpair):
    """A datagram shorter than the buffer says nothing about the next one:
    every queued datagram is read in the same wakeup's turns."""
    a, b = socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    c, ud = _waiting_recv(eng, a)
    for i in range(3):
        b.send(bytes([65 + i]) * (10 + i))
    run_until(eng, lambda: len(c.records) == 3, what="three datagrams")
    assert [d for _, _, d in c.records] == [b"A" * 10, b"B" * 11, b"C" * 12]
    eng.cancel(ud)
    run_until(eng, lambda: c.done, what="cancel")
