"""Concurrent receives on one stream socket take its bytes in the order they
were asked (decisions 688-692; 679 found the io_uring kinds out of order).

Each receive is started by a task of its own, and each task runs up to its
await before the next is created, so the receives are asked in a known order
while nothing is there; then the peer sends. The receives that were not
cancelled, read in the order they were asked, must be the stream's first
bytes, each piece contiguous with the one before; what they did not take is
received after them (nothing lost).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest
from conftest import Collector, run_in, run_until, send_all, settle

from uringloop import sock as _sockmod

DATA = 100000


async def _recv_one(lp, a, kind, n):
    if kind == "recv":
        return await lp.sock_recv(a, n)
    buf = bytearray(n)
    k = await lp.sock_recv_into(a, buf)
    return bytes(buf[:k])


async def _rest(lp, a):
    """Everything left until EOF."""
    out = bytearray()
    while True:
        got = await asyncio.wait_for(lp.sock_recv(a, 65536), 10)
        if not got:
            return bytes(out)
        out += got


async def _ordered(lp, a, b, asks, cancel=()):
    """Ask the receives `asks` ((kind, n) each) in turn on a, cancel those
    whose index is in `cancel`, then send data from b and close it. Returns
    the non-cancelled receives' results in asked order, and the rest."""
    data = os.urandom(DATA)
    tasks = []
    for kind, n in asks:
        tasks.append(lp.create_task(_recv_one(lp, a, kind, n)))
        await asyncio.sleep(0)  # it runs up to its await: asked before the next
    for i in cancel:
        tasks[i].cancel()
    await asyncio.sleep(0)
    send_all(b, data)
    b.shutdown(socket.SHUT_WR)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    got = []
    for i, r in enumerate(results):
        if i in cancel:
            assert isinstance(r, asyncio.CancelledError), (i, r)
        else:
            assert isinstance(r, bytes), (i, r)
            got.append(r)
    rest = await _rest(lp, a)
    return data, got, rest


def _offsets(data, got):
    """Where each piece sits in data (-1: nowhere)."""
    return [data.find(piece) for piece in got]


def _check(data, got, rest):
    joined = b"".join(got)
    # a piece is empty only at EOF, once everything was taken
    assert all(got) or len(joined) == len(data), [len(g) for g in got]
    want, pos = [], 0
    for g in got:
        want.append(pos)
        pos += len(g)
    assert joined == data[: len(joined)], (_offsets(data, got), want)
    assert joined + rest == data  # nothing lost, nothing twice


def test_receives_take_the_bytes_in_asked_order(loop, socketpair):
    """The integrator's repro (decision 679): 1,000, 100, 1,000, 1,000 bytes
    asked in turn get offsets 0, 1,000, 1,100, 2,100; io_uring gave 1,100,
    1,000, 0, 2,100 before decision 688."""
    a, b = socketpair()
    asks = [("recv", 1000), ("recv", 100), ("recv", 1000), ("recv", 1000)]
    data, got, rest = run_in(loop, _ordered(loop, a, b, asks))
    assert _offsets(data, got) == [0, 1000, 1100, 2100]
    _check(data, got, rest)


def test_the_first_cancelled_the_others_keep_their_order(loop, socketpair):
    """The first receive cancelled before any byte comes: the next ones take
    the stream's first bytes, in their order (679's first report)."""
    a, b = socketpair()
    asks = [("recv", 1000), ("recv", 100), ("recv", 1000), ("recv", 1000)]
    data, got, rest = run_in(loop, _ordered(loop, a, b, asks, cancel=(0,)))
    assert _offsets(data, got) == [0, 100, 1100]
    _check(data, got, rest)


def test_a_middle_one_cancelled(loop, socketpair):
    a, b = socketpair()
    asks = [("recv", 1000), ("recv", 100), ("recv", 1000), ("recv", 1000), ("recv", 10)]
    data, got, rest = run_in(loop, _ordered(loop, a, b, asks, cancel=(1, 3)))
    assert _offsets(data, got) == [0, 1000, 2000]
    _check(data, got, rest)


def test_mixed_sizes_and_sock_recv_into(loop, socketpair):
    """Receives above a pool buffer (one of 70,000 bytes, past 64 KiB) among
    small ones, sock_recv and sock_recv_into mixed: each piece follows the one
    asked before it (a big one may come back short: a pool buffer's worth
    when a later receive was asked, decision 355)."""
    a, b = socketpair()
    asks = [
        ("recv", 1000), ("into", 70000), ("recv", 100), ("into", 100),
        ("recv", 20000), ("into", 1000), ("recv", 3000),
    ]
    data, got, rest = run_in(loop, _ordered(loop, a, b, asks))
    _check(data, got, rest)


def test_sock_recv_into_alone(loop, socketpair):
    a, b = socketpair()
    asks = [("into", 1000), ("into", 100), ("into", 1000), ("into", 1000)]
    data, got, rest = run_in(loop, _ordered(loop, a, b, asks, cancel=(1,)))
    assert _offsets(data, got) == [0, 1000, 2000]
    _check(data, got, rest)


async def _make_wide(lp, a, b):
    """A big receive that brings more than a pool buffer and less than its
    n: the socket's next big receive waits for readiness (decision 675)."""
    chunk = os.urandom(40000)
    send_all(b, chunk)
    got = b""
    while len(got) < len(chunk):
        got += await asyncio.wait_for(lp.sock_recv(a, 65536), 10)
    assert got == chunk
    assert a.fileno() in _sockmod._wide_socks


@pytest.mark.parametrize("first", ["wide", "small"])
def test_wide_receives_mixed_in(loop, socketpair, first):
    """A wide receive (675) asked first holds the later ones in Python; asked
    after small ones still in flight it must not read before them."""
    a, b = socketpair()

    async def main():
        await _make_wide(loop, a, b)
        if first == "wide":
            asks = [("recv", 65536), ("recv", 1000), ("into", 100), ("recv", 70000)]
        else:
            asks = [("recv", 1000), ("into", 100), ("recv", 65536), ("recv", 100)]
        return await _ordered(loop, a, b, asks)

    data, got, rest = run_in(loop, main())
    _check(data, got, rest)


def test_inline_big_receive_waits_for_the_ones_before(loop, socketpair):
    """A big receive on a socket whose last one filled its n reads inline
    (decisions 351, 678), unless receives asked before it are in flight:
    then it takes its turn after them."""
    a, b = socketpair()

    async def main():
        fill = os.urandom(3 * 65536)
        send_all(b, fill)
        got = await asyncio.wait_for(loop.sock_recv(a, 65536), 10)
        got += await asyncio.wait_for(loop.sock_recv(a, 65536), 10)
        got += await asyncio.wait_for(loop.sock_recv(a, 65536), 10)
        assert got == fill
        asks = [("recv", 1000), ("recv", 65536), ("recv", 100)]
        return await _ordered(loop, a, b, asks)

    data, got, rest = run_in(loop, main())
    _check(data, got, rest)


@pytest.mark.parametrize("state", ["filled", "wide"])
def test_a_big_receive_asked_after_the_bytes_came(loop, socketpair, state):
    """The bytes come while a small receive waits; a big receive asked right
    after, in the same step (the engine has not run since), must not take
    them first: the inline recv(n) of a socket whose last big receive filled
    its n (351, 678) or a wide one's poll and recv(n) (675) would."""
    a, b = socketpair()

    async def main():
        if state == "wide":
            await _make_wide(loop, a, b)
        else:
            fill = os.urandom(3 * 65536)
            send_all(b, fill)
            got = b""
            while len(got) < len(fill):
                got += await asyncio.wait_for(loop.sock_recv(a, 65536), 10)
            assert got == fill
            assert a.fileno() not in _sockmod._wide_socks
        data = os.urandom(DATA)
        first = loop.create_task(loop.sock_recv(a, 1000))
        await asyncio.sleep(0)  # it waits in the engine
        send_all(b, data)
        b.shutdown(socket.SHUT_WR)
        # asked in this very step (wait_for would make a task of it, which
        # starts after the next engine run); run_in bounds the wait
        second = await loop.sock_recv(a, 65536)
        got = [await asyncio.wait_for(first, 10), second]
        return data, got, await _rest(loop, a)

    data, got, rest = run_in(loop, main())
    assert _offsets(data, got) == [0, 1000]
    _check(data, got, rest)


def test_cancel_after_the_bytes_came_loses_nothing(loop, socketpair, monkeypatch):
    """A receive whose bytes came (its future has them) but whose task is
    cancelled before it resumes: the bytes are kept for the socket's next
    receive (sock.py's kept state), none lost, none twice."""
    a, b = socketpair()
    holder = {}
    real = _sockmod._OpFuture.set_result

    def set_result(self, value):
        real(self, value)
        task = holder.get("victim")
        if task is not None and task._fut_waiter is self:
            holder.pop("victim")
            task.cancel()  # after its bytes came, before it resumes

    monkeypatch.setattr(_sockmod._OpFuture, "set_result", set_result)

    async def main():
        data = os.urandom(DATA)
        first = loop.create_task(loop.sock_recv(a, 1000))
        await asyncio.sleep(0)
        holder["victim"] = first
        send_all(b, data)
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(first, 10)
        rest = await _rest(loop, a)
        return data, rest

    data, rest = run_in(loop, main())
    assert rest == data


# ------------------------------------------------------------ the engine


def test_engine_one_shot_receives_complete_in_asked_order(eng, res_tracker):
    """The engine alone (both backends): one-shot pool receives of one fd,
    asked before any byte came, take the bytes in the order asked, a cancel
    of one waiting behind another included; ul_recv_busy says when one waits
    (decision 689). Before decision 688 io_uring's came in the kernel's
    wake-up order."""
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    fd = a.fileno()
    assert not eng.recv_busy(fd)
    sizes = [1000, 100, 1000, 500, 1000]
    cols = [Collector(f"r{i}") for i in range(len(sizes))]
    uds = [eng.recv(fd, c, multishot=False, nbytes=n) for c, n in zip(cols, sizes, strict=True)]
    settle(eng)
    assert eng.recv_busy(fd)
    eng.cancel(uds[3])  # waits behind the others (io_uring: in C, not the kernel)
    data = os.urandom(DATA)
    b.settimeout(5)
    b.sendall(data)
    run_until(eng, lambda: all(c.done for c in cols))
    assert cols[3].res == -errno.ECANCELED
    got = [c.final[2] for i, c in enumerate(cols) if i != 3]
    assert [data.find(g) for g in got] == [0, 1000, 1100, 2100]
    assert b"".join(got) == data[:3100]
    assert not eng.recv_busy(fd)
    b.close()
    rest = bytearray()
    while True:
        c = Collector("rest")
        eng.recv(fd, c, multishot=False)
        run_until(eng, lambda c=c: c.done)
        if c.res <= 0:
            break
        rest += c.final[2]
    assert bytes(rest) == data[3100:]


def test_engine_cancel_of_the_head_lets_the_next_one_go(eng, res_tracker):
    """The receive in the kernel cancelled: the one behind it goes on and
    takes the first bytes; a close of the fd ends the ones still waiting."""
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    fd = a.fileno()
    first, second, third = Collector("1"), Collector("2"), Collector("3")
    ud = eng.recv(fd, first, multishot=False, nbytes=100)
    eng.recv(fd, second, multishot=False, nbytes=100)
    settle(eng)
    eng.cancel(ud)
    run_until(eng, lambda: first.done)
    assert first.res == -errno.ECANCELED
    b.send(b"x" * 150)
    run_until(eng, lambda: second.done)
    assert second.final[:1] == (100,) and second.final[2] == b"x" * 100
    eng.recv(fd, third, multishot=False, nbytes=100)
    fourth = Collector("4")
    eng.recv(fd, fourth, multishot=False, nbytes=100)
    run_until(eng, lambda: third.done)
    assert third.final[2] == b"x" * 50
    closed = Collector("close")
    eng.close_fd(a.detach(), closed)
    run_until(eng, lambda: fourth.done and closed.done)
    assert fourth.res == -errno.ECANCELED
