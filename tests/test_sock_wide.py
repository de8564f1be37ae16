"""A big sock_recv on a stream whose big receives come short of their n
waits for readiness, then receives into its result (decision 675).

net_server's sock echo of 100 KiB messages asks ``sock_recv(conn, 65536)``:
64 KiB then 36 KiB a message. The receive of each message's first part is
asked before its bytes come; it took a pool buffer (16 KiB) and then read the
rest in place, copying the pool's bytes twice. Now it waits for the socket to
be readable and makes the stock loop's ``recv(n)``: the result is the only
buffer, and what it returns is what the stock loop's returns.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import sys
import termios
import time
import tracemalloc

import pytest
from conftest import is_stock, run_in, send_all

from uringloop import _sched
from uringloop import sock as _sockmod

MSG = 102400  # net_bench's 100 KiB message
N = 65536  # net_server's sock_recv size


def _queued(sock) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(raw, sys.byteorder)


def _wait_queued(sock, n: int) -> None:
    """Until sock's receive queue holds n bytes (bounded, not timed)."""
    deadline = time.monotonic() + 5
    while _queued(sock) < n:
        assert time.monotonic() < deadline, f"only {_queued(sock)} of {n} bytes arrived"
        time.sleep(0.001)


async def _echo_rounds(lp, a, b, data, rounds=2):
    """Receive `rounds` messages as net_server does: 64 KiB, then the rest
    (more than a pool buffer): the receives of `a` are wide after it."""
    for _ in range(rounds):
        send_all(b, data)
        _wait_queued(a, len(data))
        got = b""
        while len(got) < len(data):
            got += await lp.sock_recv(a, N)
        assert got == data


def test_a_wide_receive_that_waits_lands_in_its_result(any_loop, socketpair, tcp_pair):
    """The receive asked before its message comes: its traced peak is the
    64 KiB result alone (with a pool buffer in between, 16 KiB more: 80 KiB
    before decision 675), it returns what the stock loop's returns; EOF met
    by such a wait is b"", a reset ConnectionResetError, as on the stock loop."""
    lp = any_loop
    a, b = socketpair()
    c, s = tcp_pair()
    data = os.urandom(MSG)

    async def main():
        await _echo_rounds(lp, a, b, data)
        peaks, parts = [], []
        for _ in range(3):
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                task = lp.create_task(lp.sock_recv(a, N))
                await asyncio.sleep(0)  # it waits: nothing is there
                send_all(b, data)
                first = await asyncio.wait_for(task, 10)
                peaks.append(tracemalloc.get_traced_memory()[1] - base)
            finally:
                tracemalloc.stop()
            _wait_queued(a, len(data) - len(first))
            rest = await lp.sock_recv(a, N)
            parts.append((len(first), len(rest)))
            assert first + rest == data
        task = lp.create_task(lp.sock_recv(a, N))
        await asyncio.sleep(0)
        b.shutdown(socket.SHUT_WR)
        eof = await asyncio.wait_for(task, 10)
        # over TCP: 64 KiB, then 24,464 bytes (past a pool buffer), then a reset
        await _echo_rounds(lp, c, s, data[:90000])
        task = lp.create_task(lp.sock_recv(c, N))
        await asyncio.sleep(0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(task, 10)
        return peaks, parts, eof

    peaks, parts, eof = run_in(lp, main())
    assert parts == [(N, MSG - N)] * 3, parts
    assert max(peaks) < N + 8192, peaks
    assert eof == b""


def test_receives_asked_while_a_wide_one_waits_come_after_it(loop, socketpair):
    """uringloop only (the stock loop's second sock_recv on a socket replaces
    the first one's reader, which then never ends). A wide receive that waits
    returns up to its n of what came, as recv(n) would (before decision 675
    the later receive stopped it at a pool buffer: 16,384 bytes), and the
    receives asked after it get the bytes after its; a cancelled wait takes
    nothing, and the receives behind it go on in their order."""
    lp = loop
    a, b = socketpair()
    data = os.urandom(MSG)
    more = os.urandom(N + 100 + 1000 + 20000)  # its last receive: 20,000 bytes, wide again

    async def main():
        await _echo_rounds(lp, a, b, data)
        t1 = lp.create_task(lp.sock_recv(a, N))
        await asyncio.sleep(0)
        t2 = lp.create_task(lp.sock_recv(a, 100))
        buf = bytearray(1000)
        t3 = lp.create_task(lp.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        send_all(b, more)
        r1 = await asyncio.wait_for(t1, 10)
        r2 = await asyncio.wait_for(t2, 10)
        r3 = await asyncio.wait_for(t3, 10)
        got = r1 + r2 + bytes(buf[:r3])
        while len(got) < len(more):
            got += await lp.sock_recv(a, N)
        assert got == more
        # the socket is wide again (the last receive came short, past a pool
        # buffer): a waiting one cancelled with two behind it
        t1 = lp.create_task(lp.sock_recv(a, N))
        await asyncio.sleep(0)
        t2 = lp.create_task(lp.sock_recv(a, 100))
        t3 = lp.create_task(lp.sock_recv(a, N))
        await asyncio.sleep(0)
        t1.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t1
        send_all(b, data)
        r2 = await asyncio.wait_for(t2, 10)
        r3 = await asyncio.wait_for(t3, 10)
        got = r2 + r3
        while len(got) < len(data):
            got += await lp.sock_recv(a, N)
        assert got == data
        assert not lp._sock_state
        return len(r1), len(r2)

    assert run_in(lp, main()) == (N, 100)


def test_a_big_receive_after_one_that_filled_its_n_reads_in_c(any_loop, socketpair):
    """Decision 678: the inline recv(n) of decision 351 (the socket's last big
    receive filled its n) is sock.c's recv_start's, no Python frame: what it
    returns is the stock loop's, EOF b"", and the peer's reset raised as
    ConnectionResetError, as the stock loop's recv raises it. The C count of
    such receives moves on every uringloop kind (before the change it was
    sock.py's: there was no such count, sock_counts() had three fields)."""
    lp = any_loop
    a, b = socketpair()
    c, d = socketpair()
    data = os.urandom(3 * N)
    before = None if is_stock(lp) else _sched.sock_counts()[3]

    async def main():
        send_all(b, data)
        _wait_queued(a, len(data))
        got = [await lp.sock_recv(a, N) for _ in range(3)]
        b.shutdown(socket.SHUT_WR)
        eof = await lp.sock_recv(a, N)
        # a reset: d closes with bytes of c's unread, after 2 x 64 KiB to c
        send_all(d, data[: 2 * N])
        c.send(b"x")
        _wait_queued(c, 2 * N)
        first = [await lp.sock_recv(c, N) for _ in range(2)]
        d.close()
        with pytest.raises(ConnectionResetError):
            await lp.sock_recv(c, N)
        return got, eof, first

    got, eof, first = run_in(lp, main())
    assert got == [data[:N], data[N : 2 * N], data[2 * N :]]
    assert eof == b""
    assert first == [data[:N], data[N : 2 * N]]
    if before is not None:
        # the second and third of a's, its EOF, the second of c's (the
        # reset raises: not counted)
        assert _sched.sock_counts()[3] - before == 4


def test_a_socket_on_the_number_of_a_closed_wide_waiter_is_not_held(loop, socketpair):
    """A wide receive waits; its socket is closed behind the loop's back and
    a new socket gets its number: the new socket's receive is not held
    behind the old wait (it would wait for the old file's bytes, which may
    never come), and the old wait ends with EBADF, as receives on a closed
    socket do; no entry is left in _big_recvs for its number (decision 675)."""
    lp = loop
    a, b = socketpair()
    data = os.urandom(MSG)

    async def main():
        await _echo_rounds(lp, a, b, data)
        t1 = lp.create_task(lp.sock_recv(a, N))
        await asyncio.sleep(0)
        fd = a.fileno()
        a.close()
        c, d = socketpair()
        if c.fileno() != fd:
            return fd, c.fileno(), None, None
        d.send(b"hi")
        got = await asyncio.wait_for(lp.sock_recv(c, 100), 5)
        with pytest.raises(OSError) as info:
            await asyncio.wait_for(t1, 5)
        # nothing left that would send every later receive on fd to sock.py
        return fd, c.fileno(), got, info.value.errno, fd in _sockmod._big_recvs

    fd, cfd, got, err, left = run_in(lp, main())
    if cfd != fd:
        pytest.skip(f"the new socket got fd {cfd}, not the closed one's {fd}")
    assert got == b"hi"
    assert err == errno.EBADF
    assert not left
