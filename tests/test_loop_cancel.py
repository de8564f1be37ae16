"""Cancelling sock_* awaits: nothing the kernel already handed over is lost.

A completion engine may finish a receive or an accept that the caller has just
cancelled. Whatever such an operation took off the socket must come back from
the next receive/accept on that socket, in order, and a caller's buffer must
never be written after its await has ended.

Every scenario runs in two flavours:

* ``immediate`` -- the peer sends right after ``task.cancel()``, before the
  loop has run the cancelled task again (the task only learns of the cancel on
  its next step, so completions dispatched in the same turn race with it);
* ``settled``   -- the cancelled task is awaited first, then the peer sends.

``any_loop`` includes the stock SelectorEventLoop: the rules below are what
asyncio users get there, so every expectation is checked against it too.
Races are repeated (ITERATIONS) with varying numbers of loop turns before the
cancel, so that the op is cancelled before submission, while in flight, and
after the data has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

import pytest
from conftest import run_in, skip_if_stock_lacks

ITERATIONS = 30
# No await is bounded by a time of its own (a slow machine is not a failure):
# each scenario runs under one hang bound (_run), and a hang names the await
# it was stuck in. Plain blocking sockets carry HANG as their timeout.
HANG = 30.0
_AWAITING: list[str] = []

FLAVOURS = ["immediate", "settled"]


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _cancel(task: asyncio.Task, flavour: str) -> None:
    task.cancel()
    if flavour == "settled":
        with contextlib.suppress(asyncio.CancelledError):
            await _within(task, "the cancelled task")


async def _within(aw, what: str):
    """await aw, noting what is awaited, so that a hang says what hung."""
    _AWAITING.append(what)
    try:
        return await aw
    finally:
        _AWAITING.pop()


def _run(lp, coro, timeout: float = 40):
    """run_in, whose hang report names the await that never finished."""
    _AWAITING.clear()
    try:
        return run_in(lp, coro, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(
            f"hung for {timeout}s awaiting: {_AWAITING[-1] if _AWAITING else '?'}"
        ) from None


async def _recv_n(lp, sock, n: int, chunk: int, what: str = "sock_recv") -> bytes:
    got = b""
    while len(got) < n:
        data = await _within(lp.sock_recv(sock, chunk), f"{what} (after {got!r})")
        assert data, f"{what}: EOF after {got!r}"
        got += data
    return got


def _pair(res_tracker, family=socket.AF_UNIX):
    a, b = socket.socketpair(family)
    for s in (a, b):
        s.setblocking(False)
        res_tracker.sock(s)
    return a, b


# --------------------------------------------------------------------------
# sock_recv


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_recv_loses_nothing(any_loop, res_tracker, flavour):
    lp = any_loop

    async def main():
        for i in range(ITERATIONS):
            a, b = _pair(res_tracker)
            task = asyncio.ensure_future(lp.sock_recv(a, 100))
            await _turns(i % 4)
            await _cancel(task, flavour)
            b.send(b"abc")
            if i % 2:
                await asyncio.sleep(0)
            b.send(b"def")
            got = await _recv_n(lp, a, 6, 1 + i % 5, f"iteration {i}: recv after cancel")
            assert got == b"abcdef", (i, got)
            # 3.12+ stock may not have run it yet
            await _within(asyncio.wait([task]), f"iteration {i}: the cancelled task")
            assert task.cancelled(), (i, task)
            # nothing duplicated or left behind: the next bytes come next
            b.send(b"!")
            assert await _within(lp.sock_recv(a, 100), f"iteration {i}: recv") == b"!", i
            a.close()
            b.close()

    _run(lp, main(), timeout=40)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_recv_with_data_already_there(loop, res_tracker, flavour):
    """Data queued before the cancel is delivered exactly once, in order.

    uringloop only: the stock loop loses the bytes when the cancel lands after
    its reader callback already received them (the result is discarded with
    the task); uringloop's design (sock.py) promises to keep them.
    """
    lp = loop

    async def main():
        for i in range(ITERATIONS):
            a, b = _pair(res_tracker)
            task = asyncio.ensure_future(lp.sock_recv(a, 3))
            await _turns(i % 4)
            b.send(b"123456")
            await _turns(i % 3)
            await _cancel(task, flavour)
            # the next receive may start before the cancelled one has finished
            nxt = asyncio.ensure_future(lp.sock_recv(a, 100))
            await _within(asyncio.wait([task]), f"iteration {i}: the cancelled task")
            assert task.done(), i
            got = b"" if task.cancelled() else task.result()
            got += await _within(nxt, f"iteration {i}: next recv")
            got += await _recv_n(lp, a, 6 - len(got), 4, f"iteration {i}: recv")
            assert got == b"123456", (i, got)
            a.close()
            b.close()

    _run(lp, main(), timeout=40)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_recv_then_eof(any_loop, res_tracker, flavour):
    lp = any_loop

    async def main():
        for i in range(ITERATIONS):
            a, b = _pair(res_tracker)
            task = asyncio.ensure_future(lp.sock_recv(a, 100))
            await _turns(i % 4)
            await _cancel(task, flavour)
            b.send(b"last words")
            b.close()
            got = b""
            while True:
                data = await _within(lp.sock_recv(a, 4), f"iteration {i}: recv")
                if not data:
                    break
                got += data
            assert got == b"last words", (i, got)
            a.close()

    _run(lp, main(), timeout=40)


def test_cancelled_recv_many_sockets_interleaved(any_loop, res_tracker):
    lp = any_loop

    async def main():
        for i in range(ITERATIONS // 3):
            pairs = [_pair(res_tracker) for _ in range(5)]
            tasks = [asyncio.ensure_future(lp.sock_recv(a, 100)) for a, _ in pairs]
            await _turns(i % 3)
            for t in tasks:
                t.cancel()
            for k, (_, b) in enumerate(pairs):
                b.send(b"sock%d;" % k)
            for k, (_, b) in enumerate(reversed(pairs)):
                b.send(b"more%d;" % (len(pairs) - 1 - k))
            for k, (a, _) in enumerate(pairs):
                want = b"sock%d;more%d;" % (k, k)
                got = await _recv_n(lp, a, len(want), 3, f"iteration {i}, socket {k}")
                assert got == want, (i, k)
            for a, b in pairs:
                a.close()
                b.close()

    _run(lp, main(), timeout=40)


def test_cancelled_recv_state_does_not_leak_to_reused_fd(any_loop, res_tracker):
    """Bytes kept for a closed socket never reach a new socket with its fd number."""
    lp = any_loop

    async def main():
        for i in range(ITERATIONS):
            a, b = _pair(res_tracker)
            fd = a.fileno()
            task = asyncio.ensure_future(lp.sock_recv(a, 100))
            await _turns(1 + i % 3)
            b.send(b"OLD")
            await _turns(i % 2)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await _within(task, f"iteration {i}: the cancelled task")
            a.close()
            b.close()
            c, d = _pair(res_tracker)
            d.send(b"new")
            got = await _within(lp.sock_recv(c, 100), f"iteration {i}: recv on new socket")
            assert got == b"new", (i, fd, c.fileno(), got)
            c.close()
            d.close()

    _run(lp, main(), timeout=40)


def test_recv_under_random_timeouts_keeps_stream(loop, res_tracker):
    """A stream read by receives that keep timing out arrives whole and in order.

    uringloop only: on Python 3.12+ the stock loop drops bytes here (wait_for
    cancels the awaiting task itself, and a receive that completed in the same
    iteration loses its result); uringloop's design keeps them.
    """
    lp = loop
    a, b = _pair(res_tracker)
    rng = random.Random(1234)
    chunks = [bytes([65 + k % 26]) * rng.randint(1, 3000) + b"|%d|" % k for k in range(400)]
    stream = b"".join(chunks)

    async def writer():
        for k, c in enumerate(chunks):
            await lp.sock_sendall(b, c)
            if k % 7 == 0:
                await asyncio.sleep(0.0005)
        b.shutdown(socket.SHUT_WR)

    async def main():
        w = asyncio.ensure_future(writer())
        got = bytearray()
        timeouts = 0
        _AWAITING.append("")
        while True:
            # lost bytes show as a short stream at EOF; a hang names where it stopped
            _AWAITING[-1] = f"data after {len(got)} bytes"
            try:
                data = await asyncio.wait_for(lp.sock_recv(a, rng.randint(1, 5000)),
                                              rng.choice([0, 0.0001, 0.001, 0.01]))
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            if not data:
                break
            got += data
        await w
        return bytes(got), timeouts

    got, timeouts = _run(lp, main(), timeout=50)
    assert timeouts > 0  # the race was exercised
    assert len(got) == len(stream)
    assert got == stream


# --------------------------------------------------------------------------
# sock_recv_into


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_recv_into_leaves_buffer_alone(any_loop, res_tracker, flavour):
    lp = any_loop

    async def main():
        for i in range(ITERATIONS):
            a, b = _pair(res_tracker)
            old = bytearray(b"\xee" * 16)
            task = asyncio.ensure_future(lp.sock_recv_into(a, old))
            await _turns(i % 4)
            await _cancel(task, flavour)
            b.send(b"xyz")
            if i % 2:
                b.send(b"123")
            want = b"xyz123" if i % 2 else b"xyz"
            await asyncio.sleep(0.002)
            await _turns(3)
            assert old == b"\xee" * 16, (i, old)  # never written after the await ended
            new = bytearray(4)
            got = b""
            while len(got) < len(want):
                n = await _within(lp.sock_recv_into(a, new), f"iteration {i}: recv_into")
                assert n > 0
                got += bytes(new[:n])
            assert got == want, (i, got)
            assert old == b"\xee" * 16, (i, old)
            a.close()
            b.close()

    _run(lp, main(), timeout=40)


# --------------------------------------------------------------------------
# sock_accept


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_accept_keeps_connection(any_loop, tcp_listener, res_tracker, flavour):
    lp = any_loop
    lst = tcp_listener(backlog=8)

    async def main():
        for i in range(ITERATIONS):
            task = asyncio.ensure_future(lp.sock_accept(lst))
            await _turns(i % 4)
            await _cancel(task, flavour)
            c = res_tracker.sock(socket.socket())
            c.settimeout(HANG)
            c.connect(lst.getsockname())  # completes in the kernel's backlog
            conn, addr = await _within(lp.sock_accept(lst), f"iteration {i}: accept")
            res_tracker.sock(conn)
            assert addr == c.getsockname(), i
            await _within(asyncio.wait([task]), f"iteration {i}: the cancelled task")
            assert task.cancelled(), (i, task)
            # the connection is alive in both directions
            await lp.sock_sendall(conn, b"hi %d" % i)
            assert c.recv(100) == b"hi %d" % i
            c.sendall(b"back")
            assert await _within(lp.sock_recv(conn, 100), f"iteration {i}: recv") == b"back"
            conn.close()
            c.close()

    _run(lp, main(), timeout=40)


def test_accept_under_random_timeouts_loses_no_client(loop, tcp_listener, res_tracker):
    """uringloop only, for the reason given in the receive variant above: the
    stock loop (3.12+) loses accepted connections in this race."""
    lp = loop
    lst = tcp_listener(backlog=64)
    rng = random.Random(99)
    n_clients = 40

    async def clients():
        out = []
        for _ in range(n_clients):
            c = res_tracker.sock(socket.socket())
            c.setblocking(False)
            await lp.sock_connect(c, lst.getsockname())
            out.append(c.getsockname())
            await asyncio.sleep(rng.choice([0, 0.0005, 0.002]))
        return out

    async def main():
        cl = asyncio.ensure_future(clients())
        accepted = []
        timeouts = 0
        _AWAITING.append("")
        while len(accepted) < n_clients:
            # a lost connection leaves this waiting: the hang bound names it
            _AWAITING[-1] = f"accept {len(accepted) + 1} of {n_clients}"
            try:
                conn, addr = await asyncio.wait_for(
                    lp.sock_accept(lst), rng.choice([0, 0.0001, 0.001, 0.01])
                )
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            res_tracker.sock(conn)
            accepted.append(addr)
        return await cl, accepted, timeouts

    connected, accepted, timeouts = _run(lp, main(), timeout=40)
    assert timeouts > 0
    assert sorted(accepted) == sorted(connected)


# --------------------------------------------------------------------------
# sock_recvfrom


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_recvfrom_keeps_datagram(any_loop, udp_socket, flavour):
    lp = any_loop
    skip_if_stock_lacks(lp, "sock_recvfrom")
    u, v = udp_socket(), udp_socket()

    async def main():
        for i in range(ITERATIONS):
            task = asyncio.ensure_future(lp.sock_recvfrom(u, 100))
            await _turns(i % 4)
            await _cancel(task, flavour)
            v.sendto(b"d%d" % i, u.getsockname())
            v.sendto(b"e%d" % i, u.getsockname())
            first = await _within(lp.sock_recvfrom(u, 100), f"iteration {i}: recvfrom")
            second = await _within(lp.sock_recvfrom(u, 100), f"iteration {i}: recvfrom")
            assert first == (b"d%d" % i, v.getsockname()), (i, first)
            assert second == (b"e%d" % i, v.getsockname()), (i, second)

    _run(lp, main(), timeout=40)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_recvfrom_into_keeps_datagram(any_loop, udp_socket, flavour):
    lp = any_loop
    skip_if_stock_lacks(lp, "sock_recvfrom_into")
    u, v = udp_socket(), udp_socket()

    async def main():
        for i in range(ITERATIONS):
            old = bytearray(b"\xee" * 8)
            task = asyncio.ensure_future(lp.sock_recvfrom_into(u, old))
            await _turns(i % 4)
            await _cancel(task, flavour)
            v.sendto(b"d%d" % i, u.getsockname())
            new = bytearray(8)
            n, addr = await _within(lp.sock_recvfrom_into(u, new), f"iteration {i}: recvfrom_into")
            assert (bytes(new[:n]), addr) == (b"d%d" % i, v.getsockname()), i
            assert old == b"\xee" * 8, (i, old)

    _run(lp, main(), timeout=40)


# --------------------------------------------------------------------------
# wait_for timeouts


def test_wait_for_timeout_then_data(any_loop, res_tracker, tcp_pair):
    lp = any_loop

    async def main():
        for i in range(ITERATIONS):
            a, b = tcp_pair() if i % 2 else _pair(res_tracker)
            timeout = 0.05 if i < 4 else 0.001 * (i % 5)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(lp.sock_recv(a, 10), timeout)
            b.send(b"late %d" % i)
            got = await _recv_n(lp, a, len(b"late %d" % i), 100, f"iteration {i}: recv")
            assert got == b"late %d" % i
            a.close()
            b.close()

    _run(lp, main(), timeout=40)


# --------------------------------------------------------------------------
# cancelled ops release the socket


def test_cancelled_recv_then_close_gives_peer_eof(any_loop, res_tracker):
    lp = any_loop

    async def main():
        for i in range(10):
            a, b = _pair(res_tracker)
            task = asyncio.ensure_future(lp.sock_recv(a, 100))
            await _turns(1 + i % 3)
            await _cancel(task, "settled" if i % 2 else "immediate")
            a.close()
            assert await _within(lp.sock_recv(b, 10), f"iteration {i}: peer recv") == b"", i
            b.close()

    _run(lp, main(), timeout=40)


def test_cancelled_ops_leave_nothing_in_flight(loop, res_tracker, tcp_listener):
    lst = tcp_listener()

    async def main():
        a, b = _pair(res_tracker)
        base = loop.engine_stats()["in_flight"]
        tasks = [
            asyncio.ensure_future(loop.sock_recv(a, 10)),
            asyncio.ensure_future(loop.sock_accept(lst)),
        ]
        await _turns(3)
        assert loop.engine_stats()["in_flight"] >= base + 2
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(100):
            if loop.engine_stats()["in_flight"] == base:
                break
            await asyncio.sleep(0.01)
        return base, loop.engine_stats()["in_flight"]

    base, now = run_in(loop, main())
    assert now == base


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancelled_send_does_not_release_a_cancelled_recv(loop, res_tracker, flavour):
    """A cancelled sock_sendall and a cancelled sock_recv on the same socket: the
    send's final record owes nothing to later receives, so it must not count
    as the receive's. The next receive still gets every byte, in order."""
    lp = loop

    async def main():
        for i in range(ITERATIONS):
            a, b = _pair(res_tracker)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            while True:  # fill a's send buffer so the next sendall has to wait
                try:
                    a.send(b"x" * 65536)
                except BlockingIOError:
                    break
            send = asyncio.ensure_future(lp.sock_sendall(a, b"y" * 65536))
            recv = asyncio.ensure_future(lp.sock_recv(a, 100))
            await _turns(1 + i % 3)
            await _cancel(recv, flavour)
            await _cancel(send, flavour)
            b.send(b"abc")
            b.send(b"def")
            got = await _recv_n(lp, a, 6, 1 + i % 5, f"iteration {i}: recv after cancels")
            assert got == b"abcdef", (i, got)
            a.close()
            b.close()

    _run(lp, main(), timeout=40)
