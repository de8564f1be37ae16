"""Cancellation and the close_fd protocol, on every backend.

Contract points under test (docs/design.md):
  * cancelled ops still complete: -ECANCELED, or their real result if they won
    the race -- never silently dropped, never losing received bytes;
  * every buffer belongs to its slot until the op's final record;
  * close_fd: cancel all ops on the fd, wait for their finals, close, then the
    close's own record; ops submitted on a closing fd get -EBADF; no op ever
    reaches a reused fd number.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import socket
import weakref

import pytest
from conftest import Collector, drain, fd_is_open, recv_exact, run_until, settle, wait_done


class TrackedBuf(bytearray):
    """A bytearray that can be weakly referenced, to watch its lifetime."""


def test_cancel_unknown_or_finished_op(eng):
    col = Collector()
    ud = eng.nop(col)
    wait_done(eng, col)
    assert eng.cancel(ud) is False  # already final
    assert eng.cancel(ud ^ (1 << 40)) is False  # never issued (other generation)
    assert eng.in_flight == 0


def test_cancel_recv_into_race_loses_no_bytes(eng, socketpair):
    """Data sent right before the cancel is reported by the cancelled op or by
    a following recv; the buffer lives until the final record, then is freed."""
    a, b = socketpair()
    sent = bytearray()
    got = bytearray()
    outcomes = {"data": 0, "cancelled": 0}
    for i in range(40):
        msg = b"message-%03d;" % i
        buf = TrackedBuf(64)
        ref = weakref.ref(buf)
        seen = []

        def cb(res, more, data, ref=ref, seen=seen):
            live = ref()
            seen.append((res, more, live is not None))
            if res > 0 and live is not None:
                got.extend(live[:res])

        ud = eng.recv_into(a.fileno(), buf, cb)
        del buf  # from now on only the engine keeps the buffer alive
        eng.run(0)  # may already complete with bytes left by an earlier cancelled op
        b.send(msg)
        sent += msg
        assert eng.cancel(ud) is (not seen), "cancel() must find exactly the live op"
        run_until(eng, lambda seen=seen: bool(seen), what=f"final record of op {i}")
        settle(eng, 1)
        assert len(seen) == 1, seen
        res, more, alive = seen[0]
        assert not more
        assert alive, "buffer was released before the op's final record"
        assert res == -errno.ECANCELED or res > 0, res
        outcomes["data" if res > 0 else "cancelled"] += 1
        gc.collect()
        assert ref() is None, "buffer still referenced after the final record"

    # whatever the cancelled ops did not report is still in the socket
    while len(got) < len(sent):
        rest = bytearray(4096)
        col = Collector()
        eng.recv_into(a.fileno(), rest, col)
        wait_done(eng, col)
        assert col.res > 0, col.records
        got += rest[: col.res]
    assert bytes(got) == bytes(sent), outcomes
    assert eng.in_flight == 0


def test_cancel_multishot_recv(eng, socketpair):
    a, b = socketpair()
    col = Collector()
    ud = eng.recv(a.fileno(), col, multishot=True)
    b.send(b"before")
    run_until(eng, lambda: col.payload() == b"before", what="data before cancel")
    assert col.finals == 0
    assert eng.cancel(ud) is True
    wait_done(eng, col)
    res = col.final[0]
    assert res == -errno.ECANCELED or res > 0
    n = len(col.records)

    b.send(b"after")
    settle(eng)
    assert len(col.records) == n, "cancelled multishot recv still receiving"
    nxt = Collector()
    eng.recv(a.fileno(), nxt, multishot=False)
    wait_done(eng, nxt)
    assert col.payload() + nxt.payload() == b"beforeafter"
    assert eng.in_flight == 0


def test_cancel_multishot_accept(eng, tcp_listener, res_tracker):
    lst = tcp_listener()
    col = Collector()
    ud = eng.accept(lst.fileno(), col, multishot=True)
    res_tracker.sock(socket.create_connection(lst.getsockname(), timeout=5))
    run_until(eng, lambda: len(col.records) >= 1, what="first accept")
    res_tracker.sock(socket.socket(fileno=col.records[0][0]))
    assert eng.cancel(ud) is True
    wait_done(eng, col)
    res = col.final[0]
    assert res == -errno.ECANCELED, col.records
    n = len(col.records)

    # a later connection is not taken by the cancelled op
    late = res_tracker.sock(socket.create_connection(lst.getsockname(), timeout=5))
    settle(eng)
    assert len(col.records) == n
    nxt = Collector()
    eng.accept(lst.fileno(), nxt, multishot=False)
    wait_done(eng, nxt)
    srv = res_tracker.sock(socket.socket(fileno=nxt.res))
    assert srv.getpeername() == late.getsockname()


def test_cancel_fd_cancels_every_op_on_that_fd_only(eng, socketpair):
    a, b = socketpair()
    c, d = socketpair()
    ops = {
        "recv_into": Collector("recv_into"),
        "recv": Collector("recv"),
        "poll": Collector("poll"),
        "poll_level": Collector("poll_level"),
    }
    eng.recv_into(a.fileno(), bytearray(16), ops["recv_into"])
    eng.recv(a.fileno(), ops["recv"], multishot=True)
    eng.poll(a.fileno(), select.POLLIN, ops["poll"])
    eng.poll(a.fileno(), select.POLLIN, ops["poll_level"], level=True)
    other = Collector("other")
    eng.recv_into(c.fileno(), bytearray(16), other)
    settle(eng, 1)
    assert eng.in_flight == 5

    assert eng.cancel_fd(a.fileno()) == 4
    wait_done(eng, *ops.values())
    settle(eng, 1)
    for col in ops.values():
        assert col.records == [(-errno.ECANCELED, False, None)], col
    assert not other.done and eng.in_flight == 1
    assert eng.cancel_fd(a.fileno()) == 0  # nothing left there

    # the fd itself is untouched and usable; the other fd's op still works
    d.send(b"o")
    b.send(b"still open")
    wait_done(eng, other)
    assert other.res == 1
    again = Collector()
    eng.recv(a.fileno(), again, multishot=False)
    wait_done(eng, again)
    assert again.payload() == b"still open"


def assert_send_final(col, total):
    """A cancelled send ends whole (res == total), with nothing sent
    (-ECANCELED), or short: res bytes went out, data is -ECANCELED."""
    assert col.done and len(col.records) == 1, col.records
    res, _more, data = col.records[0]
    if res == total or res == -errno.ECANCELED:
        assert data is None, col.records
    else:
        assert 0 < res < total and data == -errno.ECANCELED, col.records


def test_cancel_fd_includes_queued_sends(eng, tcp_pair):
    c, s = tcp_pair(sndbuf=4096)
    big = b"s" * (1 << 20)
    sends = [Collector(f"send{i}") for i in range(3)]
    for col in sends:
        eng.send(c.fileno(), big, col)
    settle(eng)  # the first send fills the socket buffer and waits; the rest queue
    assert not any(col.done for col in sends)
    assert eng.cancel_fd(c.fileno()) >= 1
    wait_done(eng, *sends)
    for col in sends:
        assert_send_final(col, len(big))
    assert eng.in_flight == 0


# ------------------------------------------------------------------ close_fd


def move_to_fd(sock: socket.socket, number: int, res_tracker) -> socket.socket:
    """Return a socket for sock's connection whose fd number is ``number``.

    The kernel hands out the lowest free number, which is usually the one just
    closed; when an older, lower hole exists, dup2 puts it there explicitly.
    """
    if sock.fileno() != number:
        assert not fd_is_open(number), f"fd {number} should be free"
        os.dup2(sock.fileno(), number, inheritable=False)
        moved = socket.socket(fileno=number)
        sock.close()
        sock = moved
    sock.setblocking(False)
    return res_tracker.sock(sock)


def test_close_fd_with_ops_in_flight_and_fd_reuse(eng, tcp_listener, tcp_pair, res_tracker):
    log: list = []
    lst = tcp_listener()
    helper = tcp_listener()  # made now: the new connected socket will connect to it
    client, srv = tcp_pair()
    old = [
        Collector("old_accept", log),
        Collector("old_listen_poll", log),
        Collector("old_recv", log),
        Collector("old_recv_into", log),
        Collector("old_poll_level", log),
    ]
    old_buf = TrackedBuf(64)
    old_buf_ref = weakref.ref(old_buf)
    eng.accept(lst.fileno(), old[0], multishot=True)
    eng.poll(lst.fileno(), select.POLLIN, old[1])
    eng.recv(srv.fileno(), old[2], multishot=True)
    eng.recv_into(srv.fileno(), old_buf, old[3])
    eng.poll(srv.fileno(), select.POLLIN, old[4], level=True)
    del old_buf
    settle(eng, 1)
    assert eng.in_flight == 5 and not log

    lfd, sfd = lst.detach(), srv.detach()
    close_l = Collector("close_listener", log)
    close_s = Collector("close_stream", log)
    eng.close_fd(lfd, close_l)
    eng.close_fd(sfd, close_s)
    late = Collector("late_recv", log)
    eng.recv(sfd, late)  # submitted on a closing fd
    wait_done(eng, close_l, close_s, late, *old)

    assert close_l.res == 0 and close_s.res == 0
    assert late.res == -errno.EBADF
    for col in old:
        assert col.records == [(-errno.ECANCELED, False, None)], col
    order = [name for name, _, _ in log]
    for name in ("old_accept", "old_listen_poll"):
        assert order.index(name) < order.index("close_listener"), order
    for name in ("old_recv", "old_recv_into", "old_poll_level"):
        assert order.index(name) < order.index("close_stream"), order
    assert not fd_is_open(lfd) and not fd_is_open(sfd)
    gc.collect()
    assert old_buf_ref() is None
    assert eng.in_flight == 0

    # Reuse both numbers at once: a new listener and a new connected socket,
    # each made by a single socket() call so each takes the lowest free number.
    new_lst = move_to_fd(socket.socket(socket.AF_INET, socket.SOCK_STREAM), lfd, res_tracker)
    x = move_to_fd(socket.socket(socket.AF_INET, socket.SOCK_STREAM), sfd, res_tracker)
    assert new_lst.fileno() == lfd and x.fileno() == sfd
    new_lst.bind(("127.0.0.1", 0))
    new_lst.listen(8)
    x.settimeout(5)
    x.connect(helper.getsockname())
    x.setblocking(False)
    helper.settimeout(5)
    peer = res_tracker.sock(helper.accept()[0])
    mark = len(log)

    conn = res_tracker.sock(socket.create_connection(new_lst.getsockname(), timeout=5))
    peer.send(b"for the new socket")
    settle(eng)
    assert len(log) == mark, f"a record arrived for an old op: {log[mark:]}"

    new_recv = Collector("new_recv", log)
    new_acc = Collector("new_accept", log)
    eng.recv(sfd, new_recv, multishot=False)
    eng.accept(lfd, new_acc, multishot=False)
    wait_done(eng, new_recv, new_acc)
    assert new_recv.payload() == b"for the new socket"
    accepted = res_tracker.sock(socket.socket(fileno=new_acc.res))
    assert accepted.getpeername() == conn.getsockname()
    assert all(name.startswith("new_") for name, _, _ in log[mark:]), log[mark:]
    for col in old:
        assert len(col.records) == 1


def test_close_fd_waits_for_queued_sends_to_finish_or_cancel(eng, tcp_pair):
    c, s = tcp_pair(sndbuf=4096)
    log: list = []
    big = b"q" * (512 * 1024)
    sends = [Collector(f"send{i}", log) for i in range(2)]
    for col in sends:
        eng.send(c.fileno(), big, col)
    settle(eng)
    fd = c.detach()
    cl = Collector("close", log)
    eng.close_fd(fd, cl)
    wait_done(eng, cl, *sends)
    assert cl.res == 0
    for col in sends:
        assert_send_final(col, len(big))
    assert [name for name, _, _ in log][-1] == "close"
    assert not fd_is_open(fd)


def test_engine_close_with_ops_in_flight(make_engine, socketpair, tcp_listener):
    eng = make_engine()
    a, b = socketpair()
    lst = tcp_listener()
    buf = TrackedBuf(32)
    ref = weakref.ref(buf)
    cols = [Collector() for _ in range(4)]
    eng.recv_into(a.fileno(), buf, cols[0])
    eng.recv(a.fileno(), cols[1])
    eng.poll(a.fileno(), select.POLLIN, cols[2], level=True)
    eng.accept(lst.fileno(), cols[3])
    del buf
    settle(eng, 1)
    assert eng.in_flight == 4
    eng.close()
    gc.collect()
    assert ref() is None, "close() kept a buffer alive"
    # the sockets are still ours and work without the engine
    b.send(b"z")
    assert recv_exact(a, 1) == b"z"


def test_drain_after_mixed_cancels(eng, socketpair):
    """Cancel some ops, let others complete: in_flight gets back to zero."""
    pairs = [socketpair() for _ in range(20)]
    cols = []
    uds = []
    for a, _ in pairs:
        col = Collector()
        uds.append(eng.recv_into(a.fileno(), bytearray(8), col))
        cols.append(col)
    settle(eng, 1)
    for i, (_, b) in enumerate(pairs):
        if i % 2:
            b.send(b"d")
        else:
            assert eng.cancel(uds[i])
    drain(eng)
    for i, col in enumerate(cols):
        if i % 2:
            assert col.res == 1
        else:
            assert col.res == -errno.ECANCELED


def test_close_reset_and_reset_if_data(eng, tcp_pair):
    """close_reset(close_ud, fd) makes that pending close reset the connection
    (SO_LINGER 0 before close(2)); once the close is done, or for another
    close's user_data, it answers -ENOENT. close_fd(reset_if_data=True) with
    no receive bringing bytes still sends FIN (decision 497)."""
    for ask in ("reset", "if_data"):
        c, s = tcp_pair()
        col = Collector("recv")
        eng.recv(s.fileno(), col, multishot=True)
        settle(eng)
        fd = s.detach()
        closed = Collector("close")
        ud = eng.close_fd(fd, closed, reset_if_data=ask == "if_data")
        reset = False
        if ask == "reset":
            rc = eng.close_reset(ud ^ (1 << 40), fd)  # another generation: not this close
            assert rc == -errno.ENOENT
            # 0 while the close waits for the receive's cancel (io_uring);
            # -ENOENT where the cancel ended it at once and the fd is closed
            rc = eng.close_reset(ud, fd)
            assert rc in (0, -errno.ENOENT)
            reset = rc == 0
        wait_done(eng, col, closed)
        assert closed.final[0] == 0
        assert eng.close_reset(ud, fd) == -errno.ENOENT  # done
        c.settimeout(5)
        if reset:
            with pytest.raises(ConnectionResetError):
                c.recv(100)
        else:
            assert c.recv(100) == b""
        c.close()


def test_reset_if_data_ignores_records_of_the_numbers_closed_file(make_engine, tcp_pair):
    """A receive's record with bytes waits in pend (its run made more records
    than record_cap) when its fd is closed, plainly and at once; another TCP
    socket then gets the number and is closed with reset_if_data before that
    record is delivered. The record is the old file's: the new close sends
    FIN. It reset (close_fd's look through pend took the ended op's stale
    fd for the new file's, decision 526)."""
    eng = make_engine(record_cap=1)
    (c1, s1), (c0, s0) = tcp_pair(), tcp_pair()
    c2, s2 = tcp_pair()  # the new connection, moved to the number below
    socks = {s1.fileno(): s1, s0.fileno(): s0}
    cols = {fd: Collector(f"recv {fd}") for fd in socks}
    for fd, col in cols.items():
        eng.recv(fd, col, multishot=False)
    settle(eng, 1)
    c1.send(b"a" * 10)
    c0.send(b"b" * 10)
    run_until(eng, lambda: any(col.records for col in cols.values()))
    waiting = [fd for fd, col in cols.items() if not col.records]
    assert len(waiting) == 1, cols  # one record a run
    fd = waiting[0]
    socks[fd].detach()
    closed = Collector("close")
    eng.close_fd(fd, closed)
    if fd_is_open(fd):
        assert eng.backend == "io_uring", "epoll's receive ended: its record waits in pend"
        wait_done(eng, closed, cols[fd])
        pytest.skip(
            "io_uring left the receive's completion in the kernel's queue, "
            "not in pend: the close waits for it, the number is not free"
        )
    os.dup2(s2.fileno(), fd)  # the new connection takes the number
    s2.close()
    new_closed = Collector("new close")
    eng.close_fd(fd, new_closed, reset_if_data=True)
    wait_done(eng, closed, new_closed, cols[fd])
    assert cols[fd].records[0][0] == 10  # the old file's bytes, in pend until now
    assert closed.final[0] == 0 and new_closed.final[0] == 0
    c2.settimeout(5)
    assert c2.recv(100) == b""  # FIN: the new socket received nothing


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset_if_data"])
def test_a_close_walks_only_its_own_records_in_pend(eng, reset):
    """Many fds closed outside a run, each with a receive in flight (a
    server's batch of closes): each close looks at the records waiting in
    pend for its fd's (decisions 498, 526), from that fd's first one on,
    not at every record the earlier closes left there (decision 827:
    without the stamps 40 closes walked 1,600 records on epoll, each close
    leaving two, 3,160 with reset_if_data's walk too; io_uring's cancels
    complete in the next run, so its pend stays empty and the test passes
    there either way).
    The records still come, one final record for each receive."""
    n = 40
    pairs = [socket.socketpair() for _ in range(n)]
    cols = [Collector() for _ in pairs]
    closed = [Collector() for _ in pairs]
    try:
        for (a, _), c in zip(pairs, cols, strict=True):
            eng.recv(a.fileno(), c)
        settle(eng)
        before = eng.stats()["pend_walked"]
        for (a, _), cl in zip(pairs, closed, strict=True):
            eng.close_fd(a.detach(), cl, reset_if_data=reset)
        walked = eng.stats()["pend_walked"] - before
        assert walked <= 2 * n, walked
        run_until(eng, lambda: all(cl.done for cl in closed), what="the closes")
        run_until(eng, lambda: all(c.done for c in cols), what="the receives' ends")
        assert [cl.res for cl in closed] == [0] * n
        assert all(c.finals == 1 for c in cols)
    finally:
        for a, b in pairs:
            if a.fileno() >= 0:
                a.close()
            b.close()


def test_settle_fd_ends_the_fds_cancelled_ops_and_counts_the_live_ones(eng):
    """settle_fd (decision 962): a poll of a pipe's write end waiting in the
    kernel is live (1); once cancelled, settle_fd ends it at once (io_uring:
    the cancel is submitted and the poll's final record reaped within that
    call; epoll: the cancel ended it already): 0 live, the fd may close
    before the next run, which delivers the -ECANCELED record. An fd with
    no op, or out of range: 0."""
    r, w = os.pipe()
    try:
        col = Collector()
        ud = eng.poll(w, select.POLLIN, col)
        eng.run(0)  # submitted: the read end is open, nothing fires
        assert not col.records
        assert eng.settle_fd(w) == 1
        assert eng.cancel(ud) is True
        assert eng.settle_fd(w) == 0
        assert not col.records  # the record waits for the next run
        os.close(w)
        w = -1
        eng.run(0)
        assert col.records == [(-errno.ECANCELED, False, None)]
        assert eng.in_flight == 0
        assert eng.settle_fd(r) == 0
        assert eng.settle_fd(1 << 20) == 0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
