"""The engine's receive path: what a pool receive reads, and how often it asks."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import random
import select
import socket
import sys
import termios
import threading
import time
import tracemalloc

import pytest
from conftest import (
    Collector,
    epoll_events,
    guard_problems,
    run_in,
    run_until,
    settle,
    skip_unless_wait_syscalls_known,
    wait_until_sleeping,
)

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


# --------------------------------------------------------------------------
# sock_recv(n) with n above a pool buffer: up to n bytes of what is there


def _queued(sock) -> int:
    return int.from_bytes(
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), sys.byteorder
    )


def _wait_queued(sock, n: int) -> None:
    """Until sock's receive queue holds n bytes (bounded, not timed)."""
    deadline = time.monotonic() + 5
    while _queued(sock) < n:
        assert time.monotonic() < deadline, f"only {_queued(sock)} of {n} bytes arrived"
        time.sleep(0.001)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_sock_recv_large_n_returns_what_is_there(any_loop, socketpair, tcp_pair, kind):
    lp = any_loop
    a, b = socketpair() if kind == "unix" else tcp_pair()
    data = os.urandom(100 * 1024)
    b.sendall(data)
    _wait_queued(a, len(data))

    async def main():
        first = await lp.sock_recv(a, 65536)
        buf = bytearray(65536)
        k = await lp.sock_recv_into(a, buf)
        return first, bytes(buf[:k])

    first, second = run_in(lp, main())
    assert len(first) == 65536  # the stock loop: one recv(65536)
    assert first + second == data


def test_sock_recv_large_n_takes_the_rest_in_place(any_loop, socketpair):
    """sock_recv(65536) with 64 KiB waiting: what comes after the first pool
    buffer is received straight into the result, not into a bytes of its own
    joined to the first buffer's afterwards (decision 337). The receive's
    peak of traced memory stays below the 64 KiB result and the 16 KiB pool
    buffer's bytes with some change (it was 128 KiB: the 48 KiB rest and the
    joined result on top); the stock loop's recv(65536) makes the result only."""
    lp = any_loop
    a, b = socketpair()
    data = os.urandom(65536)

    async def main():
        for _ in range(2):  # the first receive pays the loop's first-use allocations
            b.sendall(data)
            _wait_queued(a, len(data))
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                got = await lp.sock_recv(a, 65536)
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
            assert got == data
        return peak

    peak = run_in(lp, main())
    assert peak < 100 * 1024, peak


def test_sock_recv_large_n_on_a_big_stream_lands_in_the_result(any_loop, socketpair):
    """Once a stream socket's receives above a pool buffer come big, the next
    ones are the stock loop's recv(n) when the socket is readable, straight
    into the result (decision 351): at once when the last one filled its n,
    after a wait otherwise. A receive's peak of traced memory is the 64 KiB
    result alone (with a pool buffer in between it was 16 KiB more); a
    cancelled wait takes nothing from the socket."""
    lp = any_loop
    a, b = socketpair()
    data = os.urandom(65536)

    async def main():
        peaks = []
        for _ in range(3):  # the first makes the receives big
            b.sendall(data)
            _wait_queued(a, len(data))
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                got = await lp.sock_recv(a, 65536)
                peaks.append(tracemalloc.get_traced_memory()[1] - base)
            finally:
                tracemalloc.stop()
            assert got == data
        # one that must wait: cancelled first, then one that gets the data
        task = lp.create_task(lp.sock_recv(a, 65536))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        task = lp.create_task(lp.sock_recv(a, 65536))
        await asyncio.sleep(0)
        b.sendall(data[:20000])
        assert await asyncio.wait_for(task, 10) == data[:20000]
        return peaks

    peaks = run_in(lp, main())
    assert max(peaks[1:]) < 65536 + 4096, peaks


def test_sock_recv_large_n_keeps_a_reset_for_the_next_receive(any_loop, tcp_pair):
    """A reset met while reading on past a full pool buffer is the next
    receive's error, as on the stock loop (recv(n) returns the data, the next
    recv raises), not an EOF."""
    lp = any_loop
    c, s = tcp_pair()
    data = os.urandom(16384)  # exactly one pool buffer
    s.sendall(data)
    _wait_queued(c, len(data))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    s.close()

    async def main():
        first = await lp.sock_recv(c, 65536)
        with pytest.raises(ConnectionResetError):
            await lp.sock_recv(c, 65536)
        return first

    assert run_in(lp, main()) == data


# --------------------------------------------------------------------------
# branches no kernel path here takes by itself


def test_cancelled_op_that_says_eagain_ends_cancelled(eng, socketpair):
    """EAGAIN is never surfaced, not even for an op cancelled after the kernel
    answered EAGAIN (a recv with MSG_DONTWAIT on an empty socket completes
    with -EAGAIN on io_uring; the cancel comes before the engine reaps it)."""
    a, b = socketpair()
    buf = bytearray(64)
    c = Collector()
    eng.run(0)  # a ring is enabled by its first run: flush() submits from then on
    ud = eng.recv_into(a.fileno(), buf, c, flags=socket.MSG_DONTWAIT)
    eng.flush()  # the kernel has it (and, on io_uring, has answered it)
    assert eng.cancel(ud)
    run_until(eng, lambda: c.done, what="the cancelled receive")
    assert c.records == [(-errno.ECANCELED, False, None)]
    b.send(b"after")  # nothing of the cancelled op is left to take it
    assert a.recv(64) == b"after"


def test_data_without_a_buffer_id_ends_the_receive(res_tracker, socketpair):
    """A pool receive completion that brings data but names no buffer (a kernel
    breaking the buffer-select contract; OPT_TEST_NOBUF makes one) ends the
    op with -EIO: no record names buffer 0 (which would then be provided
    twice), and no buffer leaks."""
    from conftest import require_uring

    require_uring()
    for options in (0, engine.OPT_NO_MULTISHOT, engine.OPT_NO_BUFRING | engine.OPT_NO_MULTISHOT):
        eng = engine.Engine("io_uring", options=options | engine.OPT_TEST_NOBUF)
        try:
            free = eng.stats()["bufs_free"]
            a, b = socketpair()
            c = Collector()
            eng.recv(a.fileno(), c)
            settle(eng, 2)
            b.send(b"data")
            run_until(eng, lambda c=c: c.done, what="the receive's end")
            assert c.records == [(-errno.EIO, False, None)], options
            settle(eng, 2)  # buffers named by nothing come back at the next run
            assert eng.stats()["bufs_free"] == free, options
            assert eng.stats().get("guard_faults", 0) == 0
        finally:
            eng.close()


def test_park_takes_out_an_op_in_a_high_slot(res_tracker, socketpair):
    """park() finds every request of ours however far up the slot table it
    sits (its scan stops after the last live op): a receive above 1,500 freed
    slots leaves the kernel, and another thread's run gets its data."""
    from conftest import require_uring

    require_uring()
    eng = engine.Engine("io_uring")
    try:
        a, b = socketpair()
        nops = [Collector() for _ in range(1500)]
        for c in nops:
            eng.nop(c)
        c = Collector()
        eng.recv(a.fileno(), c)
        run_until(eng, lambda: all(n.done for n in nops), what="the nops")
        assert eng.in_flight == 1
        assert eng.park()
        b.send(b"for the other thread")
        errors = []

        def other():
            try:
                run_until(eng, lambda: len(c.records) == 1, what="the receive")
                assert eng.park()  # and back to the main thread
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(30)
        assert not t.is_alive() and not errors, errors
        assert c.records == [(20, True, b"for the other thread")]
        eng.cancel_fd(a.fileno())
        run_until(eng, lambda: c.done, what="the cancel")
    finally:
        eng.close()


COUNT_REGISTER = """
import asyncio, ctypes, socket, sys
sys.path.insert(0, {root!r})
import uringloop
count = ctypes.CDLL(None).uring_register_count
lp = uringloop.Loop(backend="io_uring")
a, b = socket.socketpair()
a.setblocking(False)
task = lp.create_task(lp.sock_recv(a, 100))

async def noop():
    pass

lp.run_until_complete(noop())
before = count()
for _ in range(50):
    lp.run_until_complete(noop())
print(count() - before)

async def turns():
    for _ in range(100):
        await asyncio.sleep(0)

before = count()
lp.run_until_complete(turns())  # register at its 64th run, unregister at the park
print(count() - before)
b.send(b"x")
print(lp.run_until_complete(task))
lp.close()
"""


def test_short_runs_do_not_register_the_ring_each_time(tmp_path):
    """Parking (at every run_forever's end) used to drop the ring fd's
    registration and the next run to make it again: two io_uring_register
    calls per run_until_complete. A loop that runs only a few turns at a
    time now registers nothing; a long run still registers (once, and lets
    go at its park)."""
    import subprocess

    from conftest import require_uring
    from test_engine_native import ROOT, _build_shim, _preload

    require_uring()
    shim = _build_shim("count_uring_register", tmp_path)
    script = tmp_path / "count.py"
    script.write_text(COUNT_REGISTER.format(root=str(ROOT)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, LD_PRELOAD=_preload(shim)),
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    short, long, got = proc.stdout.split()
    assert (int(short), int(long), got) == (0, 2, "b'x'")


def test_sock_recv_large_n_never_reads_past_a_later_receive(loop, socketpair):
    """Two receives asked for at once on one socket (the stock loop cannot
    even do this): the first, above a pool buffer, must not read on past its
    buffer, since the second holds the bytes that come right after it."""
    a, b = socketpair()
    data = os.urandom(100 * 1024)
    b.sendall(data)  # there already: each receive is answered in order

    async def main():
        first = asyncio.ensure_future(loop.sock_recv(a, 65536))
        second = asyncio.ensure_future(loop.sock_recv(a, 100))
        one, two = await first, await second
        rest = bytearray()
        while len(one) + len(two) + len(rest) < len(data):
            rest += await loop.sock_recv(a, 65536)
        return one, two, bytes(rest)

    one, two, rest = run_in(loop, main())
    assert len(two) <= 100
    assert one + two + rest == data


# --------------------------------------------------------------------------
# receive bundles (decision 270): one completion, several pool buffers


def _bundles_available() -> bool:
    return "RECVSEND_BUNDLE" in engine.backend_info().get("features", [])


@pytest.mark.parametrize("options", [0, engine.OPT_NO_BUNDLE], ids=["bundle", "no-bundle"])
def test_pool_receives_are_whole_and_in_order_across_buffers(make_engine, socketpair, options):
    """Bursts of many pool buffers on several sockets at once, in a small
    pool whose ring wraps many times (64 x 4 KiB, guard mode): every record
    fits a buffer, each socket's records join to exactly what was sent, no
    buffer leaks and no kernel write hits a buffer the engine gave up."""
    eng = make_engine(buf_count=64, buf_size=4096, options=options | engine.OPT_GUARD)
    free = eng.stats()["bufs_free"]
    pairs = [socketpair() for _ in range(3)]
    cs = [Collector() for _ in pairs]
    uds = [eng.recv(a.fileno(), c) for (a, _), c in zip(pairs, cs, strict=True)]
    settle(eng, 2)
    cqes = eng.stats()["cqes"]
    rng = random.Random(270)
    sent = [bytearray() for _ in pairs]
    for burst in range(12):
        for i, (_, b) in enumerate(pairs):
            # 1 byte to 5 buffers and a bit: buffer-sized and odd sizes
            msg = rng.randbytes(rng.choice([1, 4095, 4096, 4097, 20_001, 3 * 4096]))
            b.sendall(msg)  # the socket buffer holds it: nothing reads yet
            sent[i] += msg

        def whole():
            pairs_ = zip(cs, sent, strict=True)
            return all(sum(r for r, _, _ in c.records) == len(s) for c, s in pairs_)

        run_until(eng, whole, what=f"burst {burst}")
    for c, s in zip(cs, sent, strict=True):
        assert all(0 < r <= 4096 and more and len(d) == r for r, more, d in c.records)
        assert b"".join(d for _, _, d in c.records) == bytes(s)
    if eng.info()["recv_bundle"]:  # the bundles really came: fewer CQEs than records
        assert eng.stats()["cqes"] - cqes < sum(len(c.records) for c in cs)
    for ud in uds:
        eng.cancel(ud)
    run_until(eng, lambda: all(c.done for c in cs), what="cancels")
    settle(eng, 2)
    assert eng.stats()["bufs_free"] == free
    assert guard_problems(eng) == []


def test_a_burst_of_buffers_comes_in_one_completion(res_tracker, socketpair):
    """io_uring with bundles: a receive finding 100 KiB waiting takes it with
    one CQE for its 7 pool buffers (records stay one per buffer); with
    OPT_NO_BUNDLE (the kernel's pre-6.10 way) one CQE per buffer."""
    from conftest import require_uring

    require_uring()
    if not _bundles_available():
        pytest.skip("this kernel has no receive bundles (IORING_FEAT_RECVSEND_BUNDLE, 6.10)")
    cqes = {}
    for options in (0, engine.OPT_NO_BUNDLE):
        eng = engine.Engine("io_uring", options=options)
        try:
            assert eng.info()["recv_bundle"] == (options == 0)
            a, b = socketpair()
            msg = random.Random(9).randbytes(100 * 1024)
            b.sendall(msg)  # all of it waits in the socket
            c = Collector()
            eng.recv(a.fileno(), c)
            before = eng.stats()["cqes"]
            run_until(eng, lambda c=c: sum(r for r, _, _ in c.records) == 100 * 1024, what="data")
            # (the receive's identity, decision 601, comes with no CQE: 846)
            cqes[options] = eng.stats()["cqes"] - before
            assert b"".join(d for _, _, d in c.records) == msg
            assert [r for r, _, _ in c.records] == [16384] * 6 + [4096]
            b.close()
            run_until(eng, lambda c=c: c.done, what="EOF")
        finally:
            eng.close()
    assert cqes[0] <= 2, cqes  # the data, and perhaps the wake
    assert cqes[engine.OPT_NO_BUNDLE] >= 7, cqes


def _traced(fn, event: str) -> int:
    """How many times this process's main thread hit the tracepoint event
    ("group/name") while fn() ran, counted in a tracefs instance of our own."""
    inst = f"/sys/kernel/tracing/instances/uringloop-test-{os.getpid()}"
    try:
        os.mkdir(inst)
    except OSError as exc:
        pytest.skip(f"no tracefs instance to count {event} with: {exc}")
    try:
        enable = f"{inst}/events/{event}/enable"
        if not os.path.exists(enable):
            pytest.skip(f"this kernel has no {event} tracepoint")
        with open(f"{inst}/set_event_pid", "w") as f:
            f.write(str(os.getpid()))
        with open(enable, "w") as f:
            f.write("1")
        try:
            fn()
        finally:
            with open(enable, "w") as f:
                f.write("0")
        with open(f"{inst}/trace") as f:  # one line per hit, after "#" headers
            return sum(1 for line in f if line.strip() and not line.startswith("#"))
    finally:
        os.rmdir(inst)


def _receive_calls(fn):
    """How many times the kernel ran a socket receive (sock_recvmsg, failed
    ones included) for this process while fn() ran: the sock:sock_recv_length
    tracepoint."""
    return _traced(fn, "sock/sock_recv_length")


def test_io_uring_one_shot_receive_waits_before_it_tries(res_tracker, socketpair):
    """io_uring: a one-shot pool receive (sock_recv's) is submitted with
    IORING_RECVSEND_POLL_FIRST (decision 357): asked for before its data
    comes, it arms its poll without a receive that fails first. Five waiting
    receives: five socket receives in the kernel, not ten."""
    eng = engine.Engine("io_uring")
    try:
        if not eng.info()["buffer_ring"]:
            pytest.skip("no buffer ring (kernel before 5.19): receives try first there")
        a, b = socketpair()
        c = Collector()

        def five():
            for i in range(5):
                eng.recv(a.fileno(), c, multishot=False)
                eng.run(0)  # submitted, waiting
                b.send(b"%d" % i)
                run_until(eng, lambda i=i: len(c.records) == i + 1, what="record")

        assert _receive_calls(five) == 5
        assert [d for _, _, d in c.records] == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        eng.close()


def test_epoll_a_waiting_receive_is_not_woken_by_writability(res_tracker, socketpair):
    """epoll: a one-shot receive that has to wait re-arms its fd, and the
    re-arm reports the fd's state at once. With EPOLLOUT in it, a writable
    socket answered every such re-arm with an event no op waited for: the
    run that should sleep until the data came woke at once with nothing to
    do and waited again, two epoll_wait calls per sock_recv (decision 356).
    The peer sends only once this thread sleeps in its wait: the run waits
    once, and returns the receive's record."""
    skip_unless_wait_syscalls_known()
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        c = Collector()
        eng.recv(a.fileno(), c, multishot=False)
        tid = threading.get_native_id()

        def send_when_asleep():
            wait_until_sleeping(tid)
            b.send(b"x")

        t = threading.Thread(target=send_when_asleep, daemon=True)
        t.start()
        waits = eng.stats()["waits"]
        # epoll_wait may end in EINTR with no signal: the kernel's task-work
        # notice for an io_uring ring an earlier test closed (see
        # test_interrupted_wait). Such a wait is made again, and counted.
        interrupted = 0
        n = engine.lib.ul_run(eng._e, 10 * 10**9)
        while n == -errno.EINTR:
            interrupted += 1
            n = engine.lib.ul_run(eng._e, 10 * 10**9)
        assert eng.dispatch(n) == 1
        t.join(10)
        assert c.records == [(1, False, b"x")]
        assert eng.stats()["waits"] - waits == 1 + interrupted
    finally:
        eng.close()


def test_epoll_small_reads_take_one_pool_buffer(res_tracker, socketpair):
    """epoll: while a multishot receive's reads come small, each takes one
    pool buffer, not RECV_IOV of them to give seven back (decision 339: 8
    takes per 64-byte read, about 1,000 instructions per stream ping-pong,
    before). After a big read it reads wide, and narrow again after a small
    one."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        c = Collector()
        eng.recv(a.fileno(), c)
        eng.run(0)
        takes = eng.stats()["pool_takes"]
        for i in range(20):
            b.send(b"m%02d" % i)
            run_until(eng, lambda i=i: len(c.records) == i + 1, what="message")
        assert eng.stats()["pool_takes"] - takes <= 20 + 2  # EAGAIN tries may take one
        b.sendall(bytes(50000))
        run_until(eng, lambda: sum(r for r, _, _ in c.records) == 60 + 50000, what="burst")
        b.send(b"tail")
        run_until(eng, lambda: c.records[-1][2].endswith(b"tail"), what="tail")
        takes = eng.stats()["pool_takes"]
        for i in range(10):
            b.send(b"n%02d" % i)
            run_until(eng, lambda i=i: c.records[-1][2] == b"n%02d" % i, what="message")
        assert eng.stats()["pool_takes"] - takes <= 10 + 8  # one wide read at most
        b.close()
        run_until(eng, lambda: c.done, what="EOF")
    finally:
        eng.close()


def test_epoll_reads_a_burst_into_several_buffers_per_call(res_tracker, socketpair):
    """epoll: a multishot receive finding 100 KiB waiting reads one buffer,
    then, that one full, the rest with one recvmsg into 6 pool buffers
    (decisions 338-339; it was 7 recv() calls of one buffer each before the
    EAGAINs); records stay one per buffer, whole and in order. A one-shot
    receive still reads one buffer."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        msg = random.Random(10).randbytes(100 * 1024)
        b.sendall(msg)  # all of it waits in the socket
        c = Collector()
        before = eng.stats()["submitted"]
        eng.recv(a.fileno(), c)
        run_until(eng, lambda: sum(r for r, _, _ in c.records) == 100 * 1024, what="data")
        tries = eng.stats()["submitted"] - before
        assert b"".join(d for _, _, d in c.records) == msg
        assert [r for r, _, _ in c.records] == [16384] * 6 + [4096]
        # one buffer, the rest, then EAGAIN (at submission, at the edge); was 9
        assert tries <= 4, tries
        b.sendall(msg[:40000])
        one = Collector()
        a2, b2 = socketpair()
        b2.sendall(msg[:40000])
        eng.recv(a2.fileno(), one, multishot=False)
        run_until(eng, lambda: one.done, what="one-shot")
        assert [r for r, _, _ in one.records] == [16384]
        b.close()
        run_until(eng, lambda: c.done, what="EOF")
        assert sum(r for r, _, _ in c.records) == 100 * 1024 + 40000
    finally:
        eng.close()


def test_epoll_a_receive_asked_to_wait_first_is_not_tried_at_submit(res_tracker, socketpair):
    """epoll: a recv_into with RECV_WAIT_FIRST on an idle fd makes no
    attempt at submit (decision 389: after a short read it only met
    EAGAIN); the re-arm that the fd's leaving idle makes reports what is
    there already, so data or an EOF waiting before the receive was asked
    for still comes, and data sent later comes as before."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        buf = bytearray(100)
        c = Collector()
        before = eng.stats()["submitted"]
        eng.recv_into(a.fileno(), buf, c, flags=engine.RECV_WAIT_FIRST)
        eng.run(0)
        assert c.records == []
        assert eng.stats()["submitted"] - before == 1  # the re-arm; was 2: a recv first
        b.send(b"later")
        run_until(eng, lambda: c.done, what="data sent later")
        assert c.records[0][:2] == (5, False) and buf[:5] == b"later"
        b.send(b"there")  # before the receive is asked for
        c = Collector()
        eng.recv_into(a.fileno(), buf, c, flags=engine.RECV_WAIT_FIRST)
        run_until(eng, lambda: c.done, what="data waiting")
        assert c.records[0][:2] == (5, False) and buf[:5] == b"there"
        b.close()  # an EOF waiting
        c = Collector()
        eng.recv_into(a.fileno(), buf, c, flags=engine.RECV_WAIT_FIRST)
        run_until(eng, lambda: c.done, what="EOF waiting")
        assert c.records[0][:2] == (0, False)
    finally:
        eng.close()


def _drained_wait(eng, a, b, c, op):
    """op ("recv" or "poll") on a's fd with the drained hint (decision 391):
    a recv_into with RECV_DRAINED, or a POLL_DRAINED poll."""
    if op == "recv":
        buf = bytearray(100)
        eng.recv_into(a.fileno(), buf, c, flags=engine.RECV_DRAINED)
        return buf
    eng.poll(a.fileno(), select.POLLIN, c, level=engine.POLL_DRAINED)
    return None


def _registered_and_drained(eng, a, b):
    """a's fd registered with epoll (a receive waited on it) and read empty
    by its last read, a short one."""
    c = Collector()
    buf = bytearray(100)
    eng.recv_into(a.fileno(), buf, c)
    settle(eng, 1)
    b.send(b"first")
    run_until(eng, lambda: c.done, what="the first bytes")
    assert c.records[0][:2] == (5, False) and buf[:5] == b"first"


@pytest.mark.parametrize("op", ["recv", "poll"])
def test_epoll_a_drained_wait_makes_no_syscall(res_tracker, socketpair, op):
    """epoll: a receive or a poll whose owner keeps the fd open and whose
    last read of it came short (RECV_DRAINED, POLL_DRAINED: a stream
    transport's direct reads) waits on the fd's edge-triggered registration
    as it is: no attempt, no epoll_ctl (decision 391; a re-arm each before:
    1 syscall at submit). Bytes sent later raise an edge of their own, and
    come; so does the peer's EOF."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        _registered_and_drained(eng, a, b)
        for i, data in enumerate([b"later", b"again", b""]):
            c = Collector()
            before = eng.stats()["submitted"]
            buf = _drained_wait(eng, a, b, c, op)
            settle(eng, 1)
            assert c.records == [] and eng.stats()["submitted"] == before
            if data:
                b.send(data)
            else:
                b.shutdown(socket.SHUT_WR)
            run_until(eng, lambda c=c: c.done, what=f"what came after the wait began ({i})")
            if op == "recv":
                assert c.records[0][:2] == (len(data), False) and buf[: len(data)] == data
            else:
                assert c.records[0][0] & select.POLLIN
                assert a.recv(100) == data
            assert epoll_events(a.fileno()) & select.EPOLLET
    finally:
        eng.close()


@pytest.mark.parametrize("op", ["recv", "poll"])
@pytest.mark.parametrize("case", ["missed", "hang-up"])
def test_epoll_a_drained_wait_rearms_when_an_edge_is_spent(res_tracker, socketpair, op, case):
    """epoll: a drained wait (decision 391) re-arms the fd as any wait did
    when no edge can be counted on: "missed", bytes came after the owner's
    read and a wait reported them with nothing waiting (their edge is
    spent); "hang-up", the peer's FIN came with bytes that a short read
    took, before the FIN (no edge comes after it). The re-arm reports what
    is there: the bytes, or the EOF, come. Without those checks both waited
    for ever (the run_until below times out)."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        _registered_and_drained(eng, a, b)
        if case == "missed":
            b.send(b"unseen")
            settle(eng, 1)  # the edge, reported to no one
            want = (6, b"unseen")
        else:
            c = Collector()
            buf = bytearray(100)
            eng.recv_into(a.fileno(), buf, c)
            settle(eng, 1)
            b.send(b"bye")
            b.shutdown(socket.SHUT_WR)  # in the same event as the bytes
            run_until(eng, lambda: c.done, what="the bytes before the FIN")
            assert c.records[0][:2] == (3, False)  # short: the FIN is still there
            want = (0, b"")
        c = Collector()
        before = eng.stats()["submitted"]
        buf = _drained_wait(eng, a, b, c, op)
        run_until(eng, lambda: c.done, what=case)
        assert eng.stats()["submitted"] - before >= 1  # the re-arm
        if op == "recv":
            assert c.records[0][:2] == (want[0], False) and buf[: want[0]] == want[1]
        else:
            assert c.records[0][0] & select.POLLIN
            assert a.recv(100) == want[1]
    finally:
        eng.close()


class _BigReader(asyncio.BufferedProtocol):
    """A 64 KiB buffer: 100 KiB messages fill it, so its reads go direct
    (decision 350)."""

    def __init__(self):
        self.buf = bytearray(65536)
        self.got = 0

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += nbytes


def test_direct_receives_wait_first_after_a_short_read(loop, socketpair):
    """A BufferedProtocol whose reads go straight into its 64 KiB buffer
    (decision 350) reads a 100 KiB message as 64 KiB then, at once, 36 KiB;
    that short read emptied the socket, so the engine receive for the next
    message waits for data before it tries (decision 389). Counted as the
    kernel's socket receives per message: 2 (the 64 KiB, the 36 KiB), not
    3 (an attempt that met EAGAIN first: epoll's at submit, io_uring's in
    the kernel before it armed its poll)."""
    if loop.backend == "io_uring" and not loop._engine.info()["buffer_ring"]:
        pytest.skip("no buffer ring (kernel before 5.19, or forced off): receives try first there")
    a, b = socketpair()
    msg = random.Random(389).randbytes(100 * 1024)
    state = {}

    async def start():
        state["tr"], state["proto"] = await loop.create_connection(_BigReader, sock=a)

    async def messages(n):
        for _ in range(n):
            want = state["proto"].got + len(msg)
            await loop.sock_sendall(b, msg)
            while state["proto"].got < want:
                await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(start(), 10))
    loop.run_until_complete(asyncio.wait_for(messages(2), 10))  # the switch to direct reads
    calls = _receive_calls(lambda: loop.run_until_complete(asyncio.wait_for(messages(5), 10)))
    state["tr"].close()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == 2 * 5, calls


class _BigChunks(asyncio.Protocol):
    """A Protocol that counts what it is given: 100 KiB chunks make its
    reads direct (decision 373)."""

    def __init__(self):
        self.got = 0

    def data_received(self, data):
        self.got += len(data)


@pytest.mark.parametrize("kind", ["protocol", "buffered"])
def test_big_direct_reads_make_no_epoll_ctl_per_message(loop, socketpair, kind):
    """Once a stream's 100 KiB messages are read direct (a Protocol's into
    a new bytes, decision 373; a BufferedProtocol's into its 64 KiB buffer,
    350), the wait between two messages follows a read that came short, and
    the transport keeps its fd open: on epoll it waits on the fd's
    registration as it is (decision 391), no epoll_ctl per message (5 for 5
    messages before: a re-arm each). Counted with the
    syscalls:sys_enter_epoll_ctl tracepoint; the peer sends from a plain
    blocking socket (no engine op of its own). Every byte comes."""
    a, b = socketpair()
    b.setblocking(True)
    msg = random.Random(391).randbytes(100 * 1024)
    state = {}

    async def start():
        factory = _BigChunks if kind == "protocol" else _BigReader
        state["tr"], state["proto"] = await loop.create_connection(factory, sock=a)

    async def messages(n):
        for _ in range(n):
            want = state["proto"].got + len(msg)
            b.sendall(msg)
            while state["proto"].got < want:
                await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(start(), 10))
    loop.run_until_complete(asyncio.wait_for(messages(2), 10))  # the switch to direct reads
    ctls = _traced(
        lambda: loop.run_until_complete(asyncio.wait_for(messages(5), 10)),
        "syscalls/sys_enter_epoll_ctl",
    )
    assert state["proto"].got == 7 * len(msg)
    state["tr"].close()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert ctls == 0, ctls


def _stream_pair(kind, socketpair, tcp_pair):
    """(a, b): the socket read and its peer, Unix or TCP stream."""
    if kind == "unix":
        return socketpair()
    c, s = tcp_pair()
    return s, c


def _queued_in(sock, n: int) -> None:
    """Wait (5 s at most) until n bytes are in sock's receive queue."""
    for _ in range(500):
        if _queued(sock) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{n} bytes never reached the receive queue")


@pytest.mark.parametrize("kind", ["unix", "tcp"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unflagged"])
def test_epoll_a_stream_receive_stops_at_a_short_read_at_submit(
    res_tracker, socketpair, tcp_pair, kind, stream
):
    """epoll: a multishot pool receive its caller marks as a stream socket's
    (stream=True: a stream transport's) takes a short read at submission as
    the socket read empty, as one in an event run does (decision 745): one
    recv and the fd's registration at submit, not a second recv that says
    EAGAIN (unflagged: today's three). The registration reports what came
    since, so bytes sent later, and the EOF, come."""
    eng = engine.Engine("epoll")
    try:
        a, b = _stream_pair(kind, socketpair, tcp_pair)
        b.send(b"first")
        _queued_in(a, 5)
        c = Collector()
        before = eng.stats()["submitted"]
        eng.recv(a.fileno(), c, True, 0, False, False, stream)
        assert eng.stats()["submitted"] - before == (2 if stream else 3)
        assert c.records == [] or c.records == [(5, True, b"first")]
        run_until(eng, lambda: len(c.records) == 1, what="the first bytes")
        assert c.records == [(5, True, b"first")]
        b.send(b"later")
        run_until(eng, lambda: len(c.records) == 2, what="bytes sent later")
        assert c.records[1] == (5, True, b"later")
        b.shutdown(socket.SHUT_WR)
        run_until(eng, lambda: c.done, what="EOF")
        assert c.records[-1] == (0, False, None)
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
@pytest.mark.parametrize("where", ["new", "re-armed"])
def test_epoll_a_stream_receive_short_at_submit_still_sees_a_queued_eof(
    res_tracker, socketpair, tcp_pair, kind, where
):
    """The FIN queued behind the bytes a submit-time short read took raises
    no edge after that read (decision 745): the registration the wait makes
    (ADD for a new fd; MOD for one registered before, whose receive was
    cancelled, and whose edge for these bytes was reported to no one)
    reports it, so the EOF comes (the run_until bound otherwise)."""
    eng = engine.Engine("epoll")
    try:
        a, b = _stream_pair(kind, socketpair, tcp_pair)
        if where == "re-armed":
            c = Collector()
            ud = eng.recv(a.fileno(), c, True, 0, False, False, True)
            settle(eng, 1)
            eng.cancel(ud)
            run_until(eng, lambda: c.done, what="the cancel")
        b.send(b"bye")
        b.shutdown(socket.SHUT_WR)
        _queued_in(a, 3)
        settle(eng, 1)  # an edge, if any, spent on nobody
        c = Collector()
        eng.recv(a.fileno(), c, True, 0, False, False, True)
        run_until(eng, lambda: c.done, what="the EOF behind the bytes")
        assert c.records == [(3, True, b"bye"), (0, False, None)]
    finally:
        eng.close()


def test_epoll_a_stream_receive_behind_a_waiting_send_reads_on(res_tracker, socketpair):
    """A stream receive submitted while another op of the fd waits (a send
    on a full socket) reads on to EAGAIN at submit, as before (decision
    745): the wait then changes no registration, and the edge of a FIN
    queued behind the bytes was spent already, so a stop at the short read
    would leave the EOF unseen (the run_until bound)."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair()
        while True:  # a's send buffer full: b reads nothing yet
            try:
                a.send(b"x" * 65536)
            except BlockingIOError:
                break
        sent = Collector()
        sud = eng.send(a.fileno(), b"y" * 65536, sent)
        settle(eng, 1)
        assert sent.records == []  # it waits
        b.send(b"bye")
        b.shutdown(socket.SHUT_WR)
        settle(eng, 1)  # the edge, reported with nobody to read
        c = Collector()
        eng.recv(a.fileno(), c, True, 0, False, False, True)
        run_until(eng, lambda: c.done, what="the EOF behind the bytes")
        assert c.records == [(3, True, b"bye"), (0, False, None)]
        eng.cancel(sud)
        run_until(eng, lambda: sent.done, what="the send's cancel")
    finally:
        eng.close()


@pytest.mark.parametrize("type_", [socket.SOCK_SEQPACKET, socket.SOCK_DGRAM],
                         ids=["seqpacket", "dgram"])
def test_epoll_an_unflagged_record_socket_reads_every_record(res_tracker, socketpair, type_):
    """A record socket's receive is not marked as a stream's (decision 745):
    each read is one record, "short" says nothing about the next, so the
    three queued before the receive and the two sent later all come."""
    eng = engine.Engine("epoll")
    try:
        a, b = socketpair(socket.AF_UNIX, type_)
        for m in (b"one", b"two", b"three"):
            b.send(m)
        c = Collector()
        eng.recv(a.fileno(), c)
        run_until(eng, lambda: len(c.records) == 3, what="the queued records")
        for m in (b"four", b"five"):
            b.send(m)
        run_until(eng, lambda: len(c.records) == 5, what="records sent later")
        assert [r[2] for r in c.records] == [b"one", b"two", b"three", b"four", b"five"]
    finally:
        eng.close()
