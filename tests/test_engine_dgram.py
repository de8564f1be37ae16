"""The engine's datagram receive (Engine.recvmsg_pool), on every backend.

io_uring runs it as a multishot RECVMSG on the datagram pool's buffer ring
(the kernel's io_uring_recvmsg_out layout); io_uring-fallbacks (no multishot,
no buffer ring) as one-shot RECVMSGs into engine-picked buffers; epoll with
recvmsg(2). Each must hand over one record per datagram, whole, with its
sender's address, and say EMSGSIZE for one that does not fit a pool buffer.
"""

from __future__ import annotations

import errno
import os
import socket

from conftest import Collector, run_until, settle, wait_done

DGRAM_BUF = 68 * 1024  # a datagram-pool buffer (engine UL_DGRAM_BUF_SIZE)


def _pair(res_tracker, family=socket.AF_INET):
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    a = res_tracker.sock(socket.socket(family, socket.SOCK_DGRAM))
    b = res_tracker.sock(socket.socket(family, socket.SOCK_DGRAM))
    a.bind((host, 0))
    b.bind((host, 0))
    a.setblocking(False)
    return a, b


def test_one_record_per_datagram_whole_with_address(eng, res_tracker):
    a, b = _pair(res_tracker)
    got = Collector()
    ud = eng.recvmsg_pool(a.fileno(), got)
    sizes = [0, 1, 64, 1500, 16 * 1024 - 144, 16 * 1024, 40000, 65507]
    for i, n in enumerate(sizes):
        b.sendto(bytes([i]) * n, a.getsockname())
    run_until(eng, lambda: len(got.records) >= len(sizes), what="datagrams")
    assert [r[0] for r in got.records] == sizes
    for i, (_res, more, data) in enumerate(got.records):
        assert more
        payload, addr = data
        assert payload == bytes([i]) * sizes[i]
        assert addr == b.getsockname()
    eng.cancel(ud)
    wait_done(eng, got)
    assert got.final[0] == -errno.ECANCELED


def test_ipv6_address(eng, res_tracker):
    try:
        a, b = _pair(res_tracker, socket.AF_INET6)
    except OSError as exc:
        import pytest

        pytest.skip(f"no IPv6 loopback here: {exc}")
    got = Collector()
    eng.recvmsg_pool(a.fileno(), got)
    b.sendto(b"six", a.getsockname())
    run_until(eng, lambda: got.records, what="datagram")
    payload, addr = got.records[0][2]
    assert payload == b"six"
    assert addr == b.getsockname()  # (host, port, flowinfo, scope_id), as recvfrom says
    eng.cancel_fd(a.fileno())
    wait_done(eng, got)


def test_more_datagrams_than_pool_buffers(eng, res_tracker):
    """Past the pool's 128 buffers the receive waits for the recycle and goes
    on (ENOBUFS is never surfaced); nothing lost, nothing duplicated."""
    a, b = _pair(res_tracker)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    got = Collector()
    eng.recvmsg_pool(a.fileno(), got)
    n = 1000
    for i in range(n):
        b.sendto(i.to_bytes(4, "big") * 16, a.getsockname())
    run_until(eng, lambda: len(got.records) >= n, what="1000 datagrams")
    assert [int.from_bytes(r[2][0][:4], "big") for r in got.records] == list(range(n))
    assert all(r[1] for r in got.records)
    eng.cancel_fd(a.fileno())
    wait_done(eng, got)


def test_epoll_reads_datagrams_with_recvmmsg(eng, res_tracker):
    """epoll: a burst already queued is read by recvmmsg, many datagrams a
    syscall (a recvmsg each before), still one record per datagram, in
    order, with its sender; a lone datagram that an event announces costs one
    read, not a recvmsg and the recvmsg that says EAGAIN."""
    import pytest

    if eng.backend != "epoll":
        pytest.skip("io_uring's receive is the kernel's op: submitted counts SQEs, not reads")
    a, b = _pair(res_tracker)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    n = 100
    for i in range(n):
        b.sendto(i.to_bytes(2, "big") * (i % 7), a.getsockname())
    got = Collector()
    before = eng.stats()["submitted"]
    eng.recvmsg_pool(a.fileno(), got)
    run_until(eng, lambda: len(got.records) >= n, what="the burst")
    reads = eng.stats()["submitted"] - before
    assert [r[2][0] for r in got.records] == [i.to_bytes(2, "big") * (i % 7) for i in range(n)]
    assert all(r[1] and r[2][1] == b.getsockname() for r in got.records)
    # batches of 2, 4, 8, 16, 2 within the 32-per-turn budget: 5 reads per 32
    assert reads <= n // 4, reads
    settle(eng)  # a batch stopped by the budget is retried without an event
    for k in range(3):
        before = eng.stats()["submitted"]
        b.sendto(b"after %d" % k, a.getsockname())
        run_until(eng, lambda k=k: len(got.records) > n + k, what="the next datagram")
        assert got.records[n + k][2][0] == b"after %d" % k
        assert eng.stats()["submitted"] - before == 1
    eng.cancel_fd(a.fileno())
    wait_done(eng, got)


def test_epoll_reads_a_flood_a_budget_at_a_time(eng, res_tracker):
    """epoll: once an op's recvmmsg batches come back full (a flood), each
    turn reads its whole budget of 64 in one recvmmsg instead of growing
    from 2 again (decision 362): 2,000 datagrams queued cost about 2,000 / 64
    reads, where batches of 2, 4, 8, 16, 2 a turn cost 5 reads per 32. Every
    datagram still comes, in order; after the flood a lone datagram costs one
    read again."""
    import pytest

    if eng.backend != "epoll":
        pytest.skip("io_uring's receive is the kernel's op: submitted counts SQEs, not reads")
    a, b = _pair(res_tracker)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    n = 2000
    for i in range(n):
        b.sendto(i.to_bytes(4, "big"), a.getsockname())
    got = Collector()
    before = eng.stats()["submitted"]
    eng.recvmsg_pool(a.fileno(), got)
    run_until(eng, lambda: len(got.records) >= n, what="the flood")
    reads = eng.stats()["submitted"] - before
    assert [int.from_bytes(r[2][0], "big") for r in got.records] == list(range(n))
    assert reads <= n // 64 + 8, reads
    settle(eng)
    before = eng.stats()["submitted"]
    b.sendto(b"alone", a.getsockname())
    run_until(eng, lambda: len(got.records) > n, what="the lone datagram")
    assert got.records[n][2][0] == b"alone"
    assert eng.stats()["submitted"] - before == 1
    eng.cancel_fd(a.fileno())
    wait_done(eng, got)


def test_unix_datagram_too_long_is_reported_not_cut(eng, res_tracker):
    """A Unix datagram longer than a pool buffer: -EMSGSIZE (more set), and
    the receive goes on with the next datagram."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    res_tracker.sock(a)
    res_tracker.sock(b)
    a.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    got = Collector()
    eng.recvmsg_pool(a.fileno(), got)
    b.send(b"x" * (DGRAM_BUF + 1000))
    b.send(b"after")
    run_until(eng, lambda: len(got.records) >= 2, what="two records")
    assert got.records[0][:2] == (-errno.EMSGSIZE, True)
    res, more, data = got.records[1]
    assert more and data[0] == b"after"
    assert data[1] is None  # a socketpair peer has no address: recvfrom says None too
    eng.cancel_fd(a.fileno())
    wait_done(eng, got)


def test_one_shot(eng, res_tracker):
    a, b = _pair(res_tracker)
    got = Collector()
    eng.recvmsg_pool(a.fileno(), got, multishot=False)
    b.sendto(b"one", a.getsockname())
    b.sendto(b"two", a.getsockname())
    wait_done(eng, got)
    assert len(got.records) == 1
    res, more, data = got.records[0]
    assert (res, more, data[0]) == (3, False, b"one")
    assert a.recv(10) == b"two"  # the second was left in the socket


def test_connection_refused_ends_the_receive(eng, res_tracker):
    """An ICMP port unreachable on a connected socket: the receive ends with
    -ECONNREFUSED (a datagram transport reports it and re-arms)."""
    a, b = _pair(res_tracker)
    port = b.getsockname()[1]
    b.close()
    a.connect(("127.0.0.1", port))
    got = Collector()
    eng.recvmsg_pool(a.fileno(), got)
    a.send(b"nobody there")
    wait_done(eng, got)
    assert got.final[0] == -errno.ECONNREFUSED


def test_close_fd_during_receive(eng, res_tracker):
    a, b = _pair(res_tracker)
    fd = a.detach()  # the engine closes it
    got, closed = Collector(), Collector()
    eng.recvmsg_pool(fd, got)
    eng.close_fd(fd, closed)
    wait_done(eng, got, closed)
    assert got.final[0] == -errno.ECANCELED
    assert closed.final[0] == 0
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
    else:
        raise AssertionError(f"fd {fd} still open after its close record")


def test_rearm_never_reaches_a_reused_number(eng, res_tracker):
    """The datagram receive re-arms by itself (here: after the pool ran dry);
    if user code closed its socket meanwhile and the number names another
    socket now, the re-arm ends the op (EBADF) instead of taking that
    socket's datagrams."""
    a, b = _pair(res_tracker)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    got = Collector()
    ud = eng.recvmsg_pool(a.fileno(), got)
    for i in range(300):  # more than the pool's 128 buffers
        b.sendto(b"old %d" % i, a.getsockname())
    run_until(eng, lambda: len(got.records) >= 100, what="the first datagrams")
    n = a.fileno()
    a.close()  # behind the engine's back
    c = res_tracker.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    assert c.fileno() == n
    c.bind(("127.0.0.1", 0))
    c.setblocking(False)
    b.sendto(b"for the new socket", c.getsockname())
    # io_uring's multishot op holds the old file and stays on it; a re-arm or
    # a retry by number (emulation, epoll) compares the identity: EBADF
    for _ in range(20):
        eng.run(0.01)
    if not got.done:
        eng.cancel(ud)  # (by fd would name the new file: the kernel's cancel-by-fd)
        run_until(eng, lambda: got.done, what="the end of the old receive")
    assert all(r[2] is None or r[2][0].startswith(b"old ") for r in got.records)
    assert got.final[0] in (-errno.EBADF, -errno.ECANCELED)
    assert c.recv(100) == b"for the new socket"
