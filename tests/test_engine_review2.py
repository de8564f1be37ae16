"""The second engine review (decisions 415-418): defects no other test saw.

- 415: a multishot pool receive cancelled while its ring-dry ending
  (-ENOBUFS, no MORE) still waited in the CQ ended with -ENOBUFS, an error
  the transport reports as a fatal read error, instead of -ECANCELED.
- 416: cancelling a send that rides in its head's batched SENDMSG
  (io_uring) cancelled the head too: the head, never cancelled, ended with
  -ECANCELED and its bytes never went out; and a batch of more than 1024
  sends (empty ones add no iovec) overflowed batch_done's stack array.
- 417: a completion callback that called dispatch()/deliver() had the same
  records delivered twice and corrupted the slot table (in_flight 2**32-1,
  one slot handed out twice); a callback that fork()ed crashed the child
  (SIGSEGV) as soon as it returned.
- 418: bad input crashed or exhausted memory: sendv() of a list that a
  buffer's __buffer__ (3.12+) changes read freed items (SIGSEGV); an op on
  an unopened fd number far past the fd table grew the table to fd + 1
  entries, every one written (1 GiB for 2**24).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time

import pytest
from conftest import Collector, drain, nb_socketpair, run_until, wait_done

from uringloop import engine


def _fill(sock: socket.socket, chunk: int = 65536) -> int:
    """Send until the socket's buffers are full; the bytes sent."""
    n = 0
    try:
        while True:
            n += sock.send(b"f" * chunk)
    except BlockingIOError:
        return n


# ------------------------------------------------------------- 415


def test_cancelled_stream_receive_never_ends_with_enobufs(make_engine, res_tracker):
    """A multishot receive whose ring ran dry (the kernel ends it with
    -ENOBUFS, which the engine hides by re-arming) is cancelled from a
    callback while that ending still waits in the CQ (one record a run,
    record_cap=1): its final record is -ECANCELED, as for any cancel, not
    -ENOBUFS (which stream.py's _on_recv turned into a fatal read error on
    resume_reading). epoll and the fallbacks never meet a dry ring: there
    the same scenario is the plain cancel it should be."""
    eng = make_engine(buf_count=4, buf_size=4096, record_cap=1, options=engine.OPT_NO_BUNDLE)
    a, b = nb_socketpair(res_tracker)
    _fill(b)
    uds = []

    def cancel_first(res, more, data):
        if len(c.records) == 1:
            assert eng.cancel(uds[0])

    c = Collector("recv")
    uds.append(eng.recv(a.fileno(), lambda *r: (c(*r), cancel_first(*r)), multishot=True))
    wait_done(eng, c)
    # (an emulated multishot, the fallbacks, may end on data that won the race)
    assert c.res == -errno.ECANCELED or c.res > 0, c.records
    assert all(res > 0 and more for res, more, _ in c.records[:-1]), c.records


def test_cancelled_datagram_pool_receive_never_ends_with_enobufs(make_engine, udp_socket):
    """The same for a multishot datagram-pool receive: 100 datagrams, then
    (their records held, one a run: record_cap=1) 100 more, which the
    datagram ring (128 buffers) cannot all take, so the kernel ends the
    receive with -ENOBUFS; the cancel from the second record's callback
    finds that ending in the CQ. The final record is -ECANCELED (or a
    datagram that won the race, where multishot is emulated)."""
    eng = make_engine(record_cap=1)
    rx, tx = udp_socket(), udp_socket()
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def wave():
        for i in range(100):
            tx.sendto(b"%04d" % i, rx.getsockname())

    uds = []

    def cancel_second(res, more, data):
        if len(c.records) == 2:
            assert eng.cancel(uds[0])

    c = Collector("recvmsg_pool")
    wave()
    uds.append(eng.recvmsg_pool(rx.fileno(), lambda *r: (c(*r), cancel_second(*r))))
    run_until(eng, lambda: c.records, what="the first datagram")
    wave()
    wait_done(eng, c)
    assert c.res == -errno.ECANCELED or c.res == 4, c.records[-3:]
    assert all(res == 4 and more for res, more, _ in c.records[:-1]), c.records[-3:]


# ------------------------------------------------------------- 416


def test_cancel_of_a_queued_send_leaves_the_send_ahead_of_it(make_engine, res_tracker):
    """Two sends queued in one turn on a full socket leave in one SENDMSG on
    io_uring (the second rides with the first). Cancelling the second must
    not cancel the first: the first goes out whole once the peer reads, the
    second ends with -ECANCELED and none of its bytes go out."""
    eng = make_engine()
    a, b = nb_socketpair(res_tracker, sndbuf=4096)
    _fill(a, 4096)
    first, second = Collector("first"), Collector("second")
    eng.send(a.fileno(), b"A" * 100, first)
    ud2 = eng.send(a.fileno(), b"B" * 100, second)
    for _ in range(3):
        eng.run(0.01)
    assert not first.done and not second.done  # both wait for room
    assert eng.cancel(ud2)
    got = bytearray()
    deadline = time.monotonic() + 5
    while not (first.done and second.done):
        assert time.monotonic() < deadline, (first.records, second.records)
        try:
            got += b.recv(65536)
        except BlockingIOError:
            pass
        eng.run(0.01)
    try:
        while True:
            got += b.recv(65536)
    except BlockingIOError:
        pass
    assert first.res == 100, first.records
    assert second.res == -errno.ECANCELED, second.records
    assert got.count(b"A") == 100 and got.count(b"B") == 0
    assert got.endswith(b"A" * 100)


def test_more_than_1024_sends_in_one_batch(make_engine, res_tracker):
    """A batch is bounded by its iovecs (1024), but an empty send adds none:
    a send followed by 1,100 empty ones and another send, all queued in one
    turn, made one batch of 1,102 ops on io_uring, whose completion wrote
    past the 1,024 slots batch_done keeps on the stack (SIGSEGV). Every send
    completes, in order, and the bytes arrive."""
    eng = make_engine()
    a, b = nb_socketpair(res_tracker)
    log = []
    eng.send(a.fileno(), b"x", lambda res, more, data: log.append(res))
    for _ in range(1100):
        eng.send(a.fileno(), b"", lambda res, more, data: log.append(res))
    last = Collector("last")
    eng.send(a.fileno(), b"y", lambda res, more, data: (log.append(res), last(res, more, data)))
    wait_done(eng, last)
    assert log == [1] + [0] * 1100 + [1]
    assert b.recv(16) == b"xy"


# ------------------------------------------------------------- 417


def test_dispatch_from_a_callback_is_refused(make_engine):
    """dispatch()/deliver() from a completion callback raise RuntimeError (as
    run() and close() do): the records being delivered are not delivered a
    second time, and the slot table stays whole."""
    eng = make_engine()
    errors, calls = [], []

    def cb(res, more, data):
        calls.append(res)
        for again in (eng.dispatch, eng.deliver):
            try:
                again(1)
            except RuntimeError as exc:
                errors.append(str(exc))

    eng.nop(cb)
    run_until(eng, lambda: calls, what="the nop's record")
    settle_calls = list(calls)
    assert settle_calls == [0], calls
    assert len(errors) == 2 and all("completion callback" in e for e in errors), errors
    assert eng.in_flight == 0
    uds = [eng.nop(Collector()) for _ in range(3)]
    assert len({ud & 0xFFFFFFFF for ud in uds}) == 3, [hex(u) for u in uds]
    drain(eng)


def test_fork_in_a_callback_leaves_a_working_child(make_engine):
    """A callback that fork()s: in the child the engine is the parent's
    (closed there); the rest of the batch is not delivered in the child
    (those ops are the parent's) and the child goes on, instead of dying
    with SIGSEGV when the callback returns. The parent delivers every record."""
    eng = make_engine()
    parent = os.getpid()
    seen, status = [], []

    def cb(res, more, data):
        seen.append(res)
        if len(seen) != 1:
            return
        pid = os.fork()
        if pid == 0:
            return  # the child returns into the delivery of the batch
        deadline = time.monotonic() + 10
        while True:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status.append(st)
                return
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                status.append("timeout")
                return
            time.sleep(0.01)

    for _ in range(3):
        eng.nop(cb)
    try:
        n = eng.wait(1)
        eng.dispatch(n)
    finally:
        if os.getpid() != parent:
            os._exit(0 if seen == [0] and eng.closed else 3)
    assert seen == [0, 0, 0]
    assert status == [0], (
        f"child: {status} (signal {os.WTERMSIG(status[0])})"
        if status and status[0] != "timeout" and os.WIFSIGNALED(status[0])
        else status
    )
    drain(eng)


def test_callbacks_that_raise_cancel_and_close_mid_batch(make_engine, res_tracker):
    """One batch of records whose first callbacks raise KeyboardInterrupt and
    SystemExit, cancel an op and close_fd() the fd of another op whose final
    records come later in the same batch, and submit a new op: every record
    of the batch is delivered once, in order, the first exception comes out
    of dispatch(), the later ops' real results stand (their ops had ended in
    C: cancel() says False), and the close and the new op complete at the
    next run. (Engine level; the loop-level equivalents are in
    test_sched.py and test_transport_*_reentry.py.)"""
    eng = make_engine()
    a, b = nb_socketpair(res_tracker)
    b.send(b"ready")
    log, uds, later = [], {}, {}
    buf = bytearray(16)

    def first(res, more, data):
        log.append("first")
        later["cancel"] = eng.cancel(uds["nop"])
        later["close"] = Collector("close_fd")
        eng.close_fd(a.fileno(), later["close"])
        res_tracker.forget(a.fileno())
        later["new"] = Collector("new")
        eng.nop(later["new"])
        raise KeyboardInterrupt("first")

    def second(res, more, data):
        log.append("second")
        raise SystemExit("second")

    def note(name):
        return lambda res, more, data: log.append((name, res, more))

    eng.nop(first)
    eng.nop(second)
    uds["nop"] = eng.nop(note("nop"))
    eng.recv_into(a.fileno(), buf, note("recv_into"))
    n = eng.wait(5)  # all four are ready at once: one batch
    assert n == 4
    with pytest.raises(KeyboardInterrupt, match="first"):
        eng.dispatch(n)
    assert log == ["first", "second", ("nop", 0, False), ("recv_into", 5, False)], log
    assert later["cancel"] is False
    assert bytes(buf[:5]) == b"ready"
    wait_done(eng, later["close"], later["new"])
    assert later["close"].res == 0 and later["new"].res == 0
    assert eng.in_flight == 0
    a.detach()


# ------------------------------------------------------------- 418


@pytest.mark.skipif(
    sys.version_info < (3, 12), reason="a Python class exports a buffer (__buffer__) from 3.12 on"
)
def test_sendv_survives_buffers_that_change_the_list(make_engine, res_tracker):
    """sendv() reads the buffers of a list by index; a buffer's __buffer__
    (PEP 688) that empties the list made it read freed items (SIGSEGV on
    3.13). Now: RuntimeError, no slot taken; an item replaced in place is
    harmless."""
    eng = make_engine()
    a, b = nb_socketpair(res_tracker)
    bufs: list = []

    class Shrinks:
        def __buffer__(self, flags):
            bufs.clear()
            return memoryview(b"evil")

    bufs[:] = [Shrinks()] + [bytearray(b"x" * 100) for _ in range(20)]
    with pytest.raises(RuntimeError, match="changed size"):
        eng.sendv(a.fileno(), bufs, Collector())
    assert eng.in_flight == 0

    class Swaps:
        def __buffer__(self, flags):
            bufs[1] = b"new"
            return memoryview(b"old")

    bufs[:] = [Swaps(), b"was"]
    c = Collector("sendv")
    eng.sendv(a.fileno(), bufs, c)
    wait_done(eng, c)
    assert c.res == 6
    assert b.recv(64) == b"oldnew"


@pytest.mark.parametrize("fd", [1 << 24, (1 << 31) - 1])
def test_an_unopened_fd_far_past_the_table_is_ebadf(make_engine, fd):
    """An op on a number that names no open file, far past the engine's fd
    table: its record is -EBADF, as on any closed fd, and the table does not
    grow to fd + 1 entries (60 bytes each, every one written: 1 GiB for
    2**24, and an ENOMEM OSError, after int overflow, for 2**31 - 1; by
    the same arithmetic 16 GiB for 2**28)."""
    with pytest.raises(OSError):
        os.fstat(fd)  # not open
    eng = make_engine()
    before = eng.stats()["fd_entries"]
    c = Collector("recv")
    eng.recv(fd, c, multishot=False)
    wait_done(eng, c)
    assert c.res == -errno.EBADF
    assert eng.stats()["fd_entries"] == before


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
