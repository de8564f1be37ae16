"""A grown pipe is drained by one readv(2) into several 64 KiB bytes
(decisions 589-590), on io_uring, epoll, io_uring with every fallback and,
to compare, the stock loop (whose one read takes 256 KiB).

Each test grows a pipe as a streaming child's is grown (the transport is
marked as subprocess.py marks a child's stdout, then fed GROW_AFTER full
pipes; the stock loop's pipe is set to GROW_TO up front), then writes
GROW_TO bytes into it at once, before the loop reads: the protocol's first
``data_received`` finds the pipe empty (FIONREAD 0), as the stock loop's
does, where one 64 KiB read a record left three quarters of it in the pipe.
What the protocol sees (bytes, in order, and its callbacks' order with
consecutive data joined) is compared with the stock loop's.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import termios

from conftest import is_stock, run_in

from uringloop.transports import pipe as ul_pipe

KIB = 1024
BLOCK = 64 * KIB
# 4-byte counters: every 64 KiB of it differs from every other
DATA = b"".join(i.to_bytes(4, "big") for i in range(ul_pipe.GROW_TO // 4))


def _unread(fd: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


class _Proto(asyncio.Protocol):
    """Records what it sees: ("data", bytes), "eof", "lost"; the bytes still
    in the pipe at each data_received; `on_first` runs in the first
    data_received after `arm()`."""

    def __init__(self, loop, rfd):
        self.loop, self.rfd = loop, rfd
        self.events, self.unread, self.total = [], [], 0
        self.on_first = None
        self.armed = False
        self.waiter = None
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.events.append(("data", bytes(data)))
        self.unread.append(_unread(self.rfd))
        self.total += len(data)
        if self.armed:
            self.armed = False
            if self.on_first is not None:
                self.on_first(self)
        if self.waiter is not None and self.total >= self.waiter[0] and not self.waiter[1].done():
            self.waiter[1].set_result(None)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)

    async def until(self, total):
        self.waiter = (total, self.loop.create_future())
        if self.total < total:
            await asyncio.wait_for(self.waiter[1], 10)

    def seen(self):
        """events with consecutive data joined"""
        out = []
        for e in self.events:
            if isinstance(e, tuple) and out and isinstance(out[-1], tuple):
                out[-1] = ("data", out[-1][1] + e[1])
            else:
                out.append(e)
        return out


async def _grown(loop):
    """A read pipe grown as a streaming child's: (protocol, write fd), the
    protocol's events cleared."""
    r, w = os.pipe()
    rf = open(r, "rb", buffering=0)  # noqa: SIM115 (the transport closes it)
    if is_stock(loop):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, ul_pipe.GROW_TO)
    transport, proto = await loop.connect_read_pipe(lambda: _Proto(loop, r), rf)
    if not is_stock(loop):
        transport._grow_when_streaming()  # as subprocess.py marks a child's stdout
    for i in range(ul_pipe.GROW_AFTER):
        os.write(w, DATA[:BLOCK])  # a full default pipe
        await proto.until((i + 1) * BLOCK)
    assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == ul_pipe.GROW_TO
    proto.events.clear()
    proto.unread.clear()
    proto.total = 0
    return proto, w


def _run(loop, scenario):
    """scenario(proto, w) with a grown pipe; it closes w, or _run does after
    it (then waits for connection_lost)."""

    async def main():
        proto, w = await _grown(loop)
        closed = False
        try:
            out, closed = await scenario(proto, w)
        finally:
            if not closed:
                os.close(w)
        await asyncio.wait_for(proto.lost, 10)
        return out

    return run_in(loop, main())


def test_grown_pipe_drained_in_one_read_bytes_in_order(any_loop):
    """GROW_TO bytes written at once: the first data_received finds the pipe
    empty (stock: its one 256 KiB read; here: one readv into 4 bytes of 64 KiB,
    each its own data_received), every byte in order. Fails without decision
    589 (3 x 64 KiB still in the pipe at the first data_received)."""

    async def scenario(proto, w):
        proto.armed = True
        os.write(w, DATA)
        await proto.until(len(DATA))
        return proto, False

    proto = _run(any_loop, scenario)
    assert proto.seen() == [("data", DATA), "eof", "lost"]
    assert proto.unread[0] == 0
    sizes = [len(e[1]) for e in proto.events if isinstance(e, tuple)]
    assert sizes == ([len(DATA)] if is_stock(any_loop) else [BLOCK] * 4)


def test_pause_in_the_first_data_received_holds_the_rest(any_loop):
    """The protocol pauses in the first data_received of a readv's bytes: no
    more data_received while paused (the rest is held, not lost), the pipe
    already empty; after resume_reading the rest comes in order, then EOF and
    connection_lost, as on the stock loop. Fails without decision 589 (the
    pipe still held 3 x 64 KiB at the first data_received)."""

    async def scenario(proto, w):
        proto.armed = True
        proto.on_first = lambda p: (p.events.append("pause"), p.transport.pause_reading())
        os.write(w, DATA)
        while not proto.events:
            await asyncio.sleep(0.001)
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        paused_events = list(proto.events)
        paused_unread = _unread(proto.rfd)
        proto.events.append("resume")
        proto.transport.resume_reading()
        await proto.until(len(DATA))
        os.close(w)
        await asyncio.wait_for(proto.lost, 10)
        return (proto, paused_events, paused_unread), True

    proto, paused_events, paused_unread = _run(any_loop, scenario)
    first = len(DATA) if is_stock(any_loop) else BLOCK
    assert paused_events == [("data", DATA[:first]), "pause"]
    assert paused_unread == 0 and proto.unread[0] == 0
    rest = [("data", DATA[first:])] if first < len(DATA) else []
    assert proto.seen() == [("data", DATA[:first]), "pause", "resume", *rest, "eof", "lost"]


def test_eof_right_after_a_multi_bytes_read(any_loop):
    """GROW_TO bytes and the writer's close before the loop reads: every
    byte in order, then eof_received, then connection_lost, as on the stock
    loop. Fails without decision 589 (the pipe not drained at the first
    data_received)."""

    async def scenario(proto, w):
        proto.armed = True
        os.write(w, DATA)
        os.close(w)
        await asyncio.wait_for(proto.lost, 10)
        return proto, True

    proto = _run(any_loop, scenario)
    assert proto.seen() == [("data", DATA), "eof", "lost"]
    assert proto.unread[0] == 0


def test_close_in_the_first_data_received_delivers_no_more(any_loop):
    """The protocol closes the transport in the first data_received of a
    readv's bytes: no data_received after it (the rest is dropped, as stock
    drops what it would read next), connection_lost once; the pipe was
    already empty, as stock's. Fails without decision 589 (3 x 64 KiB still
    in the pipe at the first data_received)."""

    async def scenario(proto, w):
        proto.armed = True
        proto.on_first = lambda p: (p.events.append("close"), p.transport.close())
        os.write(w, DATA)
        await asyncio.wait_for(proto.lost, 10)
        for _ in range(20):
            await asyncio.sleep(0)
        return proto, False

    proto = _run(any_loop, scenario)
    first = len(DATA) if is_stock(any_loop) else BLOCK
    assert proto.seen() == [("data", DATA[:first]), "close", "lost"]
    assert proto.unread == [0]


def test_a_readv_hands_its_bytes_over_one_a_turn(any_loop):
    """The readv's 4 bytes go to data_received one a turn (decision 590): a
    callback the first data_received queues runs before the second, so a
    StreamReader's task takes 64 KiB at a time and a turn's bytes stay below
    glibc's mmap threshold (decision 366). The stock loop reads the 256 KiB
    at once. Fails with all 4 handed over at once (the callback after them)."""

    async def scenario(proto, w):
        proto.armed = True
        proto.on_first = lambda p: p.loop.call_soon(p.events.append, "callback")
        os.write(w, DATA)
        await proto.until(len(DATA))
        for _ in range(5):
            await asyncio.sleep(0)
        return proto, False

    proto = _run(any_loop, scenario)
    sizes = [len(e[1]) if isinstance(e, tuple) else e for e in proto.events]
    if is_stock(any_loop):
        assert sizes == [len(DATA), "callback", "eof", "lost"]
    else:
        assert sizes == [BLOCK, "callback", BLOCK, BLOCK, BLOCK, "eof", "lost"]
    assert proto.seen()[0] == ("data", DATA[:BLOCK] if not is_stock(any_loop) else DATA)
