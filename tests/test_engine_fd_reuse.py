"""Engine ops and fd numbers that user code closed and reused behind the
engine's back (review D3, issue 7 parts 2 and 6).

The engine is told about fd numbers, not files. A user may close a socket
without telling the engine and get the same number for a new socket; what
the engine does with the number afterwards must never hang nor act on the new
file on behalf of an op that was asked for the old one.
"""

from __future__ import annotations

import errno
import select
import socket

import pytest
from conftest import Collector, run_until, settle

from uringloop import engine


def test_recv_on_reused_number_with_exhausted_pool_completes(make_engine, res_tracker):
    """Review P2: on epoll a receive whose first try yields (pool empty) on a
    number whose registration the kernel dropped at close() must still be
    armed: it used to wait forever."""
    eng = make_engine(buf_count=1)
    x1, x2 = socket.socketpair()
    x1.setblocking(False)
    first = Collector("x")
    eng.recv(x1.fileno(), first, multishot=False)
    eng.run(0)
    x2.send(b"a")
    run_until(eng, lambda: first.done)
    n = x1.fileno()
    x1.close()  # behind the engine's back: the kernel drops the registration
    x2.close()
    y1, y2 = (res_tracker.sock(s) for s in socket.socketpair())
    y1.setblocking(False)
    assert y1.fileno() == n
    z1, z2 = (res_tracker.sock(s) for s in socket.socketpair())
    z1.setblocking(False)
    z2.send(b"z")
    took = Collector("z")
    eng.recv(z1.fileno(), took, multishot=False)  # takes the only pool buffer
    got = Collector("y")
    eng.recv(y1.fileno(), got, multishot=False)  # finds the pool empty: yields
    settle(eng)
    y2.send(b"hello")
    run_until(eng, lambda: got.done, timeout=5, what="the receive on the reused number")
    assert got.final[0] == 5 and got.final[2] == b"hello"


def test_op_cancelled_before_the_kernel_saw_it_never_touches_the_reused_number(
    eng, res_tracker
):
    """A receive submitted but not yet handed to the kernel (no run since), its
    socket closed behind the engine's back, the number reused, then the op
    cancelled: on io_uring the SQE would resolve the number only at the next
    enter, i.e. read the new socket. The cancel ends it before that."""
    x1, x2 = (res_tracker.sock(s) for s in socket.socketpair())
    x1.setblocking(False)
    old = Collector("old")
    ud = eng.recv(x1.fileno(), old, multishot=False)
    n = x1.fileno()
    x1.close()
    y1, y2 = (res_tracker.sock(s) for s in socket.socketpair())
    y1.setblocking(False)
    assert y1.fileno() == n
    y2.send(b"new")
    eng.cancel(ud)
    new = Collector("new")
    eng.recv(y1.fileno(), new, multishot=False)
    run_until(eng, lambda: old.done and new.done)
    assert old.res == -errno.ECANCELED
    assert new.final[2] == b"new"


def test_rest_of_a_send_never_goes_to_the_file_that_reused_its_number(eng, res_tracker):
    """A long send in progress, its socket closed behind the engine's back
    (not cancelled) and the number reused: when the old send could go on (its
    peer reads; io_uring's request still holds the old file), its rest must
    not go out on the new socket. It ends with EBADF instead."""
    x1, x2 = socket.socketpair()
    res_tracker.sock(x2)
    x1.setblocking(False)
    x2.setblocking(False)
    x1.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sent = Collector("send")
    eng.send(x1.fileno(), b"o" * (16 << 20), sent)
    settle(eng)
    n = x1.fileno()
    x1.close()  # behind the engine's back
    y1, y2 = (res_tracker.sock(s) for s in socket.socketpair())
    y1.setblocking(False)
    y2.setblocking(False)
    assert y1.fileno() == n
    # a readiness poll registers the new file (epoll: the number is watched
    # again, so the old send is tried on it)
    polled = Collector("poll")
    eng.poll(y1.fileno(), select.POLLOUT, polled)
    for _ in range(20):  # the old peer reads: the old send can progress
        try:
            while x2.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        eng.run(0.01)
        if sent.done:
            break
    assert sent.done, "the old send neither finished nor ended"
    res, _more, data = sent.final
    # ended by EBADF: with nothing sent (-EBADF), or short (UL_F_SHORT: res
    # bytes went out, data is the errno that stopped it)
    assert res == -errno.EBADF or (res > 0 and data == -errno.EBADF), (res, data)
    with pytest.raises(BlockingIOError):
        got = y2.recv(1 << 20)
        raise AssertionError(f"{len(got)} bytes of the old send reached the new socket")
    assert eng.stats()["ident_checks"] > 0
    run_until(eng, lambda: polled.done)


def test_identity_costs_nothing_per_event_of_a_multishot_receive(make_engine, res_tracker):
    """A long-lived multishot receive takes its file's identity once and
    compares it on no ordinary event (epoll: only after a re-registration;
    io_uring: only when the engine re-arms it). The emulation of multishot on
    kernels without it (the fallbacks flavour) reissues by number on every
    record, and compares each time: there the check is the price of safety."""
    eng = make_engine()
    fallbacks = make_engine.fallbacks
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    got = Collector("ms")
    eng.recv(a.fileno(), got, multishot=True)
    settle(eng)
    for i in range(10):
        b.send(b"m%d" % i)
        run_until(eng, lambda i=i: len(got.records) > i)
    stats = eng.stats()
    assert stats["ident_captures"] <= 1
    if not fallbacks:
        assert stats["ident_checks"] == 0
    assert got.payload() == b"".join(b"m%d" % i for i in range(10))
    eng.cancel_fd(a.fileno())
    run_until(eng, lambda: got.done)


def _ring_cookies(eng, fallbacks):
    """Skip unless this engine takes a multishot receive's identity from the
    ring (io_uring with multishot receives, kernel 6.7+: decision 601)."""
    if eng.backend != "io_uring" or fallbacks:
        pytest.skip("the ring's getsockopt is io_uring's, with kernel multishot receives")
    ops = engine.backend_info().get("opcodes") or ()
    if "READ_MULTISHOT" not in ops or "URING_CMD" not in ops:
        pytest.skip("SOCKET_URING_OP_GETSOCKOPT needs kernel 6.7 (as READ_MULTISHOT)")


def test_multishot_receive_takes_its_identity_from_the_ring(make_engine, res_tracker):
    """A multishot receive still in flight after its run has its file's
    identity without a syscall (the ring's getsockopt SQE next to it,
    decision 601: ident_cookies, not ident_captures), and it guards as the
    syscall's did: the receive, taken out by park() and issued again by
    number after the user closed the socket and the number was reused, ends
    with EBADF and never reads the new socket."""
    eng = make_engine()
    _ring_cookies(eng, make_engine.fallbacks)
    a, b = socket.socketpair()
    a.setblocking(False)
    got = Collector("ms")
    eng.recv(a.fileno(), got, multishot=True)
    settle(eng)
    stats = eng.stats()
    assert (stats["ident_cookies"], stats["ident_captures"]) == (1, 0)
    b.send(b"old")
    run_until(eng, lambda: len(got.records) == 1)
    assert got.records[0][2] == b"old"
    n = a.fileno()
    assert eng.park()
    a.close()  # behind the engine's back
    b.close()
    y1, y2 = (res_tracker.sock(s) for s in socket.socketpair())
    y1.setblocking(False)
    assert y1.fileno() == n
    y2.send(b"new")
    run_until(eng, lambda: got.done, what="the parked receive on the reused number")
    assert got.final[0] == -errno.EBADF
    assert eng.stats()["ident_checks"] >= 1
    assert y1.recv(16) == b"new"


def test_multishot_receive_cancelled_before_the_kernel_saw_it_with_its_ring_identity(
    make_engine, res_tracker
):
    """A multishot receive cancelled before any enter (its SQE and the
    getsockopt SQE behind it both become NOPs, so the kernel never writes
    into the ended op's slot); the slot's next receive takes its own
    identity and works."""
    eng = make_engine()
    _ring_cookies(eng, make_engine.fallbacks)
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    old = Collector("old")
    ud = eng.recv(a.fileno(), old, multishot=True)
    eng.cancel(ud)  # before any run: cancel_unsubmitted
    new = Collector("new")
    eng.recv(a.fileno(), new, multishot=True)
    settle(eng)
    assert old.done and old.res == -errno.ECANCELED
    assert eng.stats()["ident_cookies"] == 1
    b.send(b"x")
    run_until(eng, lambda: len(new.records) == 1)
    assert new.records[0][2] == b"x"
    eng.cancel_fd(a.fileno())
    run_until(eng, lambda: new.done)
