"""A BufferedProtocol's writes from one read chain leave as one send
(decision 646), and what the protocol sees is the stock loop's.

The 100 KiB echo of issue 9: a 64 KiB get_buffer() buffer takes a message in
two reads, 64 KiB then 36 KiB, and each buffer_updated writes
``self.buf[:n]``. While the first read filled its buffer, the next one
follows at once (decision 350), so the first write, a temporary bytearray
nobody else holds, waits for the second and both leave in one sendmsg().
Everything a protocol can ask in between (get_write_buffer_size,
set_write_buffer_limits, pause/resume_writing, close, write_eof, another
kind of write) sees the stock loop's answer: the held bytes leave first.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import is_stock, run_in

BUF = 65536
MSG = 100 * 1024


class Echo(asyncio.BufferedProtocol):
    """Echoes each buffer_updated as a copy of what came (net_server.py's
    BufferedEcho), or runs ``hook(self, n)`` instead; records each chunk it
    got and the pause/resume calls."""

    def __init__(self, loop, hook=None):
        self.buf = bytearray(BUF)
        self.hook = hook
        self.chunks = []
        self.events = []
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.chunks.append(bytes(self.buf[:nbytes]))
        if self.hook is None:
            self.transport.write(self.buf[:nbytes])
        else:
            self.hook(self, nbytes)

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


async def _pair(loop, proto):
    """proto on a transport of the loop's over a Unix socketpair; the peer is
    a plain socket. A Unix socket queues a whole 100 KiB sendall() on the
    reader's side at once, so each message is there in full when the loop
    reads it: the reads are 64 KiB then 36 KiB every time."""
    a, b = socket.socketpair()
    a.setblocking(False)
    tr, _ = await loop.create_unix_connection(lambda: proto, sock=a)
    b.setblocking(False)
    return tr, b


def _message(i):
    return bytes((i * 7 + j) & 0xFF for j in range(256)) * (MSG // 256)


async def _recv(loop, peer, n):
    got = bytearray()
    while len(got) < n:
        more = await loop.sock_recv(peer, n - len(got))
        assert more, "EOF"
        got += more
    return bytes(got)


async def _recv_to_eof(loop, peer):
    got = bytearray()
    while True:
        more = await loop.sock_recv(peer, 1 << 20)
        if not more:
            return bytes(got)
        got += more


async def _rounds(loop, peer, n):
    """n messages, each sent whole and its echo awaited"""
    for i in range(n):
        msg = _message(i)
        await loop.sock_sendall(peer, msg)
        assert await _recv(loop, peer, MSG) == msg, i


def _sends(tr):
    """send syscalls the transport made: write()'s direct send()s, the
    queue's sendmsg()s (write() past the mark, the held writes' release) and
    the turn's flushes"""
    c = tr._core
    return c.directs + c.nows + c.sends


def test_one_send_per_message(loop):
    """Once the reads go straight into the protocol's buffer, each 100 KiB
    message's two writes leave as one sendmsg() on every kind (before:
    two send()s, three data packets a message on TCP; decision 551)."""

    async def main():
        pr = Echo(loop)
        tr, peer = await _pair(loop, pr)
        await _rounds(loop, peer, 3)  # the reads switch to the direct receive
        before, n = _sends(tr), len(pr.chunks)
        await _rounds(loop, peer, 8)
        assert [len(c) for c in pr.chunks[n:]] == [BUF, MSG - BUF] * 8
        assert _sends(tr) - before == 8
        assert tr._core.hold == 0
        assert pr.events == []
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main(), 30)


def _cases():
    """name: (hook(protocol, n), what the peer gets for each chunk)"""

    def ask(p):
        p.events.append(("size", p.transport.get_write_buffer_size()))

    def echo_asks(p, n):
        p.transport.write(p.buf[:n])
        ask(p)

    def two_writes(p, n):
        # 64 KiB then 36 KiB in one callback, each a fresh bytearray
        p.transport.write(bytearray(p.buf[:n]))
        p.transport.write(bytearray(36 * 1024))
        ask(p)

    # (a small write waits for the turn's flush on ours, and a size asked
    # after it, in the same turn, counts it and what queued behind it: Known
    # limits; so these ask before it, and write it after a message's last
    # part)
    def bytes_after(p, n):
        p.transport.write(p.buf[:n])
        ask(p)
        if n != BUF:
            p.transport.write(b"x" * 100)

    def limits_low(p, n):
        # the held write leaves under the old marks: no pause (stock sent it)
        p.transport.write(p.buf[:n])
        p.transport.set_write_buffer_limits(high=1000)
        ask(p)
        p.transport.set_write_buffer_limits()

    def limits_high(p, n):
        p.transport.set_write_buffer_limits(high=4 * MSG)
        p.transport.write(p.buf[:n])
        ask(p)

    def limits_small(p, n):
        # over the mark: never held, sent at once as before
        p.transport.set_write_buffer_limits(high=16 * 1024)
        p.transport.write(p.buf[:n])
        ask(p)

    def memoryview_write(p, n):
        p.transport.write(memoryview(p.buf)[:n])
        ask(p)

    def kept_copy(p, n):
        # a bytearray the protocol keeps (and changes after): not held
        p.last = p.buf[:n]
        p.transport.write(p.last)
        p.last[:] = b"\0" * n
        ask(p)

    def writelines(p, n):
        p.transport.write(p.buf[:n])
        ask(p)
        if n != BUF:
            p.transport.writelines([b"ab", bytearray(b"cd")])

    same = bytes
    return {
        "echo_asks": (echo_asks, same),
        "two_writes": (two_writes, lambda c: c + bytes(36 * 1024)),
        "bytes_after": (bytes_after, lambda c: c + b"x" * 100 * (len(c) != BUF)),
        "limits_low": (limits_low, same),
        "limits_high": (limits_high, same),
        "limits_small": (limits_small, same),
        "memoryview": (memoryview_write, same),
        "kept_copy": (kept_copy, same),
        "writelines": (writelines, lambda c: c + b"abcd" * (len(c) != BUF)),
    }


@pytest.mark.parametrize("case", sorted(_cases()))
def test_callbacks_see_the_stock_answers(any_loop, case):
    """On every kind and the stock loop: the same pause/resume calls (none
    here), get_write_buffer_size() 0 inside every callback as the stock
    write() left it, and the peer gets every byte in order."""
    loop = any_loop
    hook, out = _cases()[case]

    async def main():
        pr = Echo(loop, hook)
        tr, peer = await _pair(loop, pr)
        got = bytearray()
        for i in range(6):
            await loop.sock_sendall(peer, _message(i))
            while sum(map(len, pr.chunks)) < (i + 1) * MSG:
                got += await loop.sock_recv(peer, 1 << 20)
        want = b"".join(out(c) for c in pr.chunks)
        got += await _recv(loop, peer, len(want) - len(got))
        assert got == want
        assert b"".join(pr.chunks) == b"".join(_message(i) for i in range(6))
        assert pr.events == [("size", 0)] * len(pr.chunks), pr.events
        if not is_stock(loop):
            assert tr._core.hold == 0
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main(), 30)


@pytest.mark.parametrize("how", ["close", "abort", "write_eof", "raise"])
def test_held_bytes_leave_before_the_end(any_loop, how):
    """The first read's write is held when the second read's callback ends
    the connection without writing: the held bytes leave first, as the
    stock write() had sent them."""
    loop = any_loop

    def hook(p, n):
        if n == BUF:
            p.transport.write(p.buf[:n])
            return
        if not is_stock(loop):
            p.held = p.transport._core.hold  # the first part's write waits
        if how == "raise":
            raise RuntimeError("boom")
        else:
            getattr(p.transport, how)()

    async def main():
        loop.set_exception_handler(lambda lp, ctx: None)
        pr = Echo(loop)
        tr, peer = await _pair(loop, pr)
        await _rounds(loop, peer, 3)  # the reads switch to the direct receive
        pr.hook = hook
        msg = _message(9)
        await loop.sock_sendall(peer, msg)
        assert await _recv_to_eof(loop, peer) == msg[:BUF]
        assert [len(c) for c in pr.chunks[-2:]] == [BUF, MSG - BUF]
        if not is_stock(loop):
            assert pr.held == BUF
        if how == "write_eof":
            tr.close()
        await pr.lost
        assert "pause" not in pr.events
        peer.close()

    run_in(loop, main(), 30)


def test_a_paused_protocol_is_not_held(any_loop):
    """A peer that does not read: the echoes fill the socket, the protocol is
    paused once and resumed once as on the stock loop, nothing is held
    meanwhile, and every byte arrives in order once the peer reads."""
    loop = any_loop

    holds = []

    def hook(p, n):
        p.transport.write(p.buf[:n])
        if not is_stock(loop):
            holds.append((bool(p.events), p.transport._core.hold))

    async def main():
        pr = Echo(loop, hook)
        tr, peer = await _pair(loop, pr)
        await _rounds(loop, peer, 3)
        sent = bytearray()
        for i in range(40):  # 4 MB: more than the sockets hold
            msg = _message(i)
            await loop.sock_sendall(peer, msg)
            sent += msg
            while sum(map(len, pr.chunks)) < 3 * MSG + len(sent):
                await asyncio.sleep(0)
            if "pause" in pr.events:
                break
        assert pr.events == ["pause"]
        if not is_stock(loop):
            # held while not paused (each message's first part), never after
            assert (False, BUF) in holds
            assert all(h == 0 for paused, h in holds if paused)
        assert await _recv(loop, peer, len(sent)) == bytes(sent)
        while pr.events == ["pause"]:
            await asyncio.sleep(0.01)
        assert pr.events == ["pause", "resume"]
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main(), 30)
