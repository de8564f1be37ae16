"""What the stream transports' C core (uringloop/_core/stream.c) could get
wrong that the other transport suites do not already pin down: the same
scenarios on io_uring, epoll and the stock loop (the stock loop proves the
expectation), plus reference and object counts of the C core itself."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import struct
import sys

import pytest
from conftest import is_stock
from transport_helpers import on_stock, pattern, plain_listener, run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below


async def _connected(loop, factory):
    lst = plain_listener()
    with lst:
        conn = loop.create_connection(factory, *lst.getsockname())
        (tr, proto), (peer, _) = await wait_for(asyncio.gather(conn, loop.sock_accept(lst)))
    return tr, proto, peer


async def _read_until_eof(loop, peer):
    got = bytearray()
    while chunk := await wait_for(loop.sock_recv(peer, 65536)):
        got += chunk
    return bytes(got)


class Lost(asyncio.Protocol):
    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


def test_write_then_mutate_memoryview(tloop):
    """A memoryview (of a bytearray, and a non-byte format) changed right after
    write() is sent as it was at write()."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Lost)
        with peer:
            buf = bytearray(b"original")
            tr.write(memoryview(buf))
            buf[:] = b"MUTATED!"
            ints = bytearray(b"\x01\x00\x02\x00")
            tr.write(memoryview(ints).cast("H"))
            ints[:] = b"XXXX"
            tr.write(memoryview(b"")[:])  # empty: nothing
            tr.write_eof()
            assert await _read_until_eof(loop, peer) == b"original\x01\x00\x02\x00"
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main())


def test_write_partly_taken_then_mutate(tloop):
    """write() on an idle transport whose kernel buffer fills: what the kernel
    did not take is still sent as it was at write() when the caller reuses its
    bytearray at once (epoll sends at once and queues a copy of the rest;
    io_uring queues a copy); then another, behind it."""
    if is_stock(tloop) and sys.version_info >= (3, 12):
        pytest.skip(
            "the stock transport of 3.12+ queues a memoryview of the caller's "
            "bytearray (selector_events write: memoryview(data)[n:]), so a "
            "mutation after write() changes what it sends; 3.10/3.11 copy"
        )

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Lost)
        with peer:
            # 64 KiB: below it loopback TCP crawls (decision 561)
            tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            buf = bytearray(bytes(range(256)) * 8192)  # 2 MiB: more than the kernel takes
            expected = bytes(buf)
            tr.write(buf)
            assert 0 < tr.get_write_buffer_size() <= len(buf)
            buf[:] = bytes(len(buf))  # reused by the caller
            more = bytearray(b"a" * 1000)
            tr.write(more)  # queued behind
            more[:] = bytes(len(more))
            expected += b"a" * 1000
            tr.write_eof()
            assert await _read_until_eof(loop, peer) == expected
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main())



def test_write_while_a_send_is_in_flight_leaves_after_it(tloop):
    """A write() made while the transport's send is still in flight (the peer
    does not read yet) leaves once that send completes, with nothing else
    happening on the transport: the send's completion queues it (on io_uring
    and epoll the C core's sent, decision 260)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Lost)
        with peer:
            # 64 KiB: below it loopback TCP crawls (decision 561)
            tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            tr.set_write_buffer_limits(high=8 << 20)  # no pausing, no direct send
            first = bytes(range(256)) * 4096  # 1 MiB: more than the kernel takes
            tr.write(first)
            for _ in range(3):
                await asyncio.sleep(0)  # the turn's flush: the send is in flight
            assert tr.get_write_buffer_size() > 0
            tail = b"tail" * 250
            tr.write(tail)  # behind the send in flight
            got = bytearray()
            while len(got) < len(first) + len(tail):
                chunk = await wait_for(loop.sock_recv(peer, 1 << 20))
                assert chunk, "EOF before the tail"
                got += chunk
            assert got == first + tail
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main())


def test_write_to_a_reset_peer(tloop):
    """write() right after the peer reset the connection (before the loop saw
    it): connection_lost gets a ConnectionError, as on the stock loop (whose
    write() sends at once, as epoll's C core does)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Lost)
        await asyncio.sleep(0)  # connection_made
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        tr.write(b"after the reset")
        tr.write(b"and more")
        exc = await wait_for(proto.lost)
        assert isinstance(exc, ConnectionError), exc
        assert tr.is_closing()

    run_in(tloop, main())


def test_write_rejects_what_stock_rejects(tloop):
    """write() of a str, None or a bytes subclass: the stock checks and result."""

    class Sub(bytes):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Lost)
        with peer:
            for bad in ("text", None, 3):
                with pytest.raises(TypeError, match="bytes-like object"):
                    tr.write(bad)
            tr.write(Sub(b"sub"))
            type(tr).write(tr, b"+class")  # through the class, not the instance
            tr.write_eof()
            with pytest.raises(RuntimeError, match="write_eof"):
                tr.write(b"late")
            assert await _read_until_eof(loop, peer) == b"sub+class"
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main())


# what get_buffer() gives, and the fatal error's log message then: an empty
# buffer or an exception is the protocol's fault ("get_buffer() call failed");
# a read-only or non-contiguous buffer makes the stock transport's recv_into
# fail, a read error (our C core hands it back to Python to say so)
_GET_BUFFER_FAILED = "Fatal error: protocol.get_buffer() call failed."
_READ_ERROR = "Fatal read error on socket transport"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("empty", _GET_BUFFER_FAILED),
        ("raises", _GET_BUFFER_FAILED),
        ("readonly", _READ_ERROR),
        ("noncontiguous", _READ_ERROR),
    ],
)
def test_get_buffer_misbehaves(tloop, caplog, bad, message):
    """get_buffer() returning an unusable buffer or raising: a fatal error
    with the stock exception and log message."""

    class Bad(asyncio.BufferedProtocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint):
            if bad == "empty":
                return bytearray()
            if bad == "readonly":
                return b"x" * 100
            if bad == "noncontiguous":
                return memoryview(bytearray(200))[::2]
            raise KeyError("no buffer")

        def buffer_updated(self, nbytes):
            raise AssertionError("buffer_updated after a bad get_buffer")

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Bad)
        with peer:
            with caplog.at_level(logging.ERROR, logger="asyncio"):
                await wait_for(loop.sock_sendall(peer, b"data"))
                exc = await wait_for(proto.lost)
            if bad == "empty":
                assert isinstance(exc, RuntimeError) and "empty buffer" in str(exc)
            elif bad == "raises":
                assert isinstance(exc, KeyError)
            else:
                assert isinstance(exc, (TypeError, ValueError, BufferError)), exc
            assert sum(message in r.getMessage() for r in caplog.records) == 1

    run_in(tloop, main())


def test_small_buffers_then_pause_inside_buffer_updated(tloop):
    """A BufferedProtocol whose buffers are smaller than what arrives, and that
    pauses reading from buffer_updated: the rest waits, in order, for resume."""
    payload = bytes(range(256)) * 40

    class Small(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(7)
            self.got = bytearray()
            self.calls = 0
            self.paused = asyncio.get_running_loop().create_future()
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.got += self.buf[:nbytes]
            self.calls += 1
            if self.calls == 3:
                self.transport.pause_reading()
                self.paused.set_result(len(self.got))

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Small)
        with peer:
            await wait_for(loop.sock_sendall(peer, payload))
            assert await wait_for(proto.paused) == 21
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(proto.got) == 21  # nothing while paused
            tr.resume_reading()
            peer.shutdown(socket.SHUT_WR)
            await wait_for(proto.lost)
            assert bytes(proto.got) == payload

    run_in(tloop, main())


def test_protocol_replaced_inside_data_received_gets_the_rest(tloop):
    """set_protocol() to another Protocol inside data_received: every later
    byte goes to the new one, none to the old one."""

    async def main():
        loop = asyncio.get_running_loop()
        second_got = bytearray()
        done = loop.create_future()

        lost = loop.create_future()

        class Second(asyncio.Protocol):
            def data_received(self, data):
                second_got.extend(data)
                if second_got.endswith(b"END"):
                    done.set_result(None)

            def connection_lost(self, exc):
                lost.set_result(exc)

        class First(Lost):
            got = b""

            def data_received(self, data):
                assert not self.got, "the first protocol got data twice"
                self.got = data
                self.transport.set_protocol(Second())
                self.transport.write(b"ok")

        tr, proto, peer = await _connected(loop, First)
        with peer:
            await wait_for(loop.sock_sendall(peer, b"one"))
            assert await wait_for(loop.sock_recv(peer, 2)) == b"ok"
            for i in range(20):
                await wait_for(loop.sock_sendall(peer, b"%d," % i))
                await asyncio.sleep(0)
            await wait_for(loop.sock_sendall(peer, b"END"))
            await wait_for(done)
            assert proto.got == b"one"
            assert bytes(second_got) == b"".join(b"%d," % i for i in range(20)) + b"END"
            tr.close()
            assert await wait_for(lost) is None  # the current protocol's
            assert not proto.lost.done()

    run_in(tloop, main())


def test_write_inside_resume_writing_then_close(tloop):
    """The flow-control round trip through the C send completion: a protocol
    that writes until paused, writes again from resume_writing, and closes
    when done; all bytes arrive once, in order, and connection_lost comes once."""
    chunk = bytes(range(256)) * 256  # 64 KiB
    rounds = 200  # 12.5 MiB: more than the kernel's socket buffers hold
    paused_once = None

    class Writer(Lost):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=100_000, low=10_000)
            self.sent = 0
            self.pauses = 0
            self.fill()

        def fill(self):
            while self.sent < rounds:
                self.sent += 1
                self.transport.write(chunk)
                if self.sent == rounds:
                    self.transport.close()
                    return
                if self.paused:
                    return

        paused = False

        def pause_writing(self):
            self.paused = True
            self.pauses += 1
            if not paused_once.done():
                paused_once.set_result(None)

        def resume_writing(self):
            self.paused = False
            self.fill()

    async def main():
        nonlocal paused_once
        loop = asyncio.get_running_loop()
        paused_once = loop.create_future()
        lst = plain_listener()
        with lst:
            lst.setblocking(False)
            conn = loop.create_connection(Writer, *lst.getsockname())
            (tr, proto), (peer, _) = await wait_for(asyncio.gather(conn, loop.sock_accept(lst)))
        with peer:
            await wait_for(paused_once)  # the peer reads nothing until then
            got = await _read_until_eof(loop, peer)
            assert got == chunk * rounds
            assert await wait_for(proto.lost) is None
            assert proto.pauses >= 1

    run_in(tloop, main())


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="sys.getrefcount is CPython's")
def test_no_leaks_across_many_writes_and_connections(tloop):
    """10,000 writes of one bytes object and 300 connections: afterwards the
    object has its old reference count back (no send kept a reference) and no
    transport, C core or protocol is left alive."""
    msg = bytes(range(200))
    from uringloop import _sched

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    def cores():
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is _sched.Stream)

    async def main():
        loop = asyncio.get_running_loop()
        before_cores = cores()
        before_refs = sys.getrefcount(msg)
        tr, proto, peer = await _connected(loop, Lost)
        with peer:
            for i in range(10_000):
                tr.write(msg)
                if i % 500 == 0:
                    await asyncio.sleep(0)
            tr.write_eof()
            got = await _read_until_eof(loop, peer)
            assert got == msg * 10_000
            tr.close()
            await wait_for(proto.lost)
        del tr, proto
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        for _ in range(3):
            socks = []
            for _ in range(100):
                s = socket.socket()
                s.setblocking(False)
                await wait_for(loop.sock_connect(s, ("127.0.0.1", port)))
                socks.append(s)
            for s in socks:
                await wait_for(loop.sock_sendall(s, msg))
            for s in socks:
                got = b""
                while len(got) < len(msg):
                    got += await wait_for(loop.sock_recv(s, 1000))
                assert got == msg
                s.close()
        srv.close()
        await srv.wait_closed()
        for _ in range(20):  # the server side sees the closes and lets go
            await asyncio.sleep(0.01)
            if not is_stock(loop) and cores() == before_cores:
                break
        assert sys.getrefcount(msg) == before_refs
        if not is_stock(loop):
            assert cores() == before_cores

    run_in(tloop, main(), timeout=60)


@pytest.mark.parametrize("buffered", [False, True])
def test_records_behind_ready_callbacks_wait_in_c(tloop, buffered):
    """Data that arrives while callbacks were ready before the poll waits
    behind them (the stock order: reader callbacks join the end of _ready),
    then comes whole and in order, EOF last; on uringloop the C core holds
    such records itself (the transport's Python _on_recv is not called for
    ordinary data, only for the EOF). A BufferedProtocol's 2-byte buffer
    takes each held record in pieces."""

    async def main():
        loop = asyncio.get_running_loop()
        events = []
        spin = {"on": True}

        def spinner():  # keeps _ready non-empty at every poll
            if spin["on"]:
                loop.call_soon(spinner)

        class Rec(Lost):
            def data_received(self, data):
                events.append(bytes(data))

            def eof_received(self):
                events.append("eof")

        class BufRec(Rec, asyncio.BufferedProtocol):
            buf = bytearray(2)

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                events.append(bytes(self.buf[:nbytes]))

        tr, proto, peer = await _connected(loop, BufRec if buffered else Rec)
        calls = []
        if not is_stock(loop):
            real = tr._on_recv

            def counting(res, more, data):
                calls.append(res)
                return real(res, more, data)

            tr._on_recv = counting  # the C core calls the transport's method
        with peer:
            await asyncio.sleep(0)
            loop.call_soon(spinner)
            marks = []
            for i in range(20):
                peer.send(b"%02d;" % i)
                loop.call_soon(marks.append, i)  # ready before the next poll
                await asyncio.sleep(0.005)
            peer.shutdown(socket.SHUT_WR)
            await wait_for(proto.lost)
            spin["on"] = False
        got = b"".join(e for e in events if e != "eof")
        assert got == b"".join(b"%02d;" % i for i in range(20))
        assert events[-1] == "eof"
        assert marks == list(range(20))
        if not is_stock(loop):
            assert calls == [0], calls  # only the EOF went through Python

    run_in(tloop, main())


@pytest.mark.parametrize("way", ["pause", "close"])
def test_several_records_of_one_transport_held_in_one_turn(tloop, way):
    """A BufferedProtocol (1,000-byte buffer) whose peer's 300,000 bytes
    wait in the socket until reading resumes behind a spinning callback:
    its receive brings many records at once, all held behind _ready (on
    uringloop, several waiting in the C core for one Stream; decision 740),
    then handed over in order. pause: buffer_updated pauses reading at
    every 40,000 bytes and a callback resumes it: nothing comes while
    paused, every byte comes once and in order, EOF last. close: it closes
    the transport at 100,000 bytes: nothing comes after, what came is the
    data's start, connection_lost(None)."""

    data = pattern(300_000, 740)

    async def main():
        loop = asyncio.get_running_loop()
        spin = {"on": True}
        most = [0]
        box = []

        def spinner():  # keeps _ready non-empty at every poll
            if not spin["on"]:
                return
            core = getattr(box[0], "_core", None) if box else None
            held = core.held if core is not None else None
            if held:
                most[0] = max(most[0], len(held))
            loop.call_soon(spinner)

        class Buf(Lost, asyncio.BufferedProtocol):
            def __init__(self):
                super().__init__()
                self.buf = bytearray(1000)
                self.got = bytearray()
                self.events = []
                self.stopped = False  # paused or closed by us
                self.late = 0  # buffer_updated calls while stopped
                self.eof = loop.create_future()

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                if self.stopped:
                    self.late += 1
                before = len(self.got)
                self.got += self.buf[:nbytes]
                if way == "close" and len(self.got) >= 100_000:
                    self.stopped = True
                    self.transport.close()
                elif way == "pause" and before // 40_000 != len(self.got) // 40_000:
                    self.stopped = True
                    self.transport.pause_reading()
                    loop.call_soon(self.resume)

            def resume(self):
                self.stopped = False
                self.transport.resume_reading()

            def eof_received(self):
                self.events.append("eof")
                self.eof.set_result(None)

        tr, proto, peer = await _connected(loop, Buf)
        box.append(tr)
        with peer:
            tr.pause_reading()
            await wait_for(loop.sock_sendall(peer, data))  # all in our socket
            peer.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.01)  # (a hang bound is wait_for's below)
            loop.call_soon(spinner)
            tr.resume_reading()
            try:
                if way == "pause":
                    await wait_for(proto.eof)
                    tr.close()
                assert await wait_for(proto.lost) is None
            finally:
                spin["on"] = False
        assert proto.late == 0
        if way == "pause":
            assert bytes(proto.got) == data
            assert proto.events == ["eof"]
        else:
            assert 100_000 <= len(proto.got) < len(data)
            assert bytes(proto.got) == data[: len(proto.got)]
        if not is_stock(loop):
            assert most[0] >= 3, most[0]  # the case this test is about

    run_in(tloop, main())


@pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
def test_data_behind_ready_callbacks_is_not_queued_through_call_soon(tloop, buffered):
    """Data that must wait behind ready callbacks waits as the stock loop's
    reader callback does: its handle is appended to _ready, and
    ``loop.call_soon`` (which the stock loop never calls for I/O) is not
    asked: a call_soon wrapped on the loop instance sees nothing of the
    transport's while 20 chunks come behind a spinning callback; the bytes
    still come whole, in order, each after the callback queued before it
    (decision 377)."""

    async def main():
        loop = asyncio.get_running_loop()
        got = bytearray()
        spin = {"on": True}

        def spinner():  # keeps _ready non-empty at every poll
            if spin["on"]:
                loop.call_soon(spinner)

        class Rec(Lost):
            def data_received(self, data):
                got.extend(data)

        class BufRec(Rec, asyncio.BufferedProtocol):
            buf = bytearray(2)

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                got.extend(self.buf[:nbytes])

        tr, proto, peer = await _connected(loop, BufRec if buffered else Rec)
        want = b"".join(b"%02d;" % i for i in range(20))
        seen, marks = [], []
        real = loop.call_soon

        def counting(callback, *args, **kwargs):
            seen.append(callback)
            return real(callback, *args, **kwargs)

        with peer:
            await asyncio.sleep(0)
            loop.call_soon = counting
            try:
                loop.call_soon(spinner)
                for i in range(20):
                    peer.send(b"%02d;" % i)
                    loop.call_soon(marks.append, (i, len(got)))  # ready before the next poll
                    await asyncio.sleep(0.005)
                for _ in range(2000):  # bounded: run_in's timeout fails a hang
                    if len(got) >= len(want):
                        break
                    await asyncio.sleep(0.005)
            finally:
                del loop.call_soon
                spin["on"] = False
            peer.shutdown(socket.SHUT_WR)
            await wait_for(proto.lost)
        assert bytes(got) == want
        # each mark ran before the chunk sent after it was queued had come
        assert all(n <= 3 * i for i, n in marks), marks
        mine = [x for x in (tr, getattr(tr, "_core", None), proto) if x is not None]
        ours = [cb for cb in seen if any(getattr(cb, "__self__", None) is x for x in mine)]
        assert ours == [], ours

    run_in(tloop, main())


def test_callbacks_of_one_poll_run_after_all_its_data(tloop):
    """Data for two transports that arrives in one poll: both data_received
    run before a callback the first one scheduled, as the stock loop runs
    every reader callback of one select() before what they schedule."""
    async def main():
        loop = asyncio.get_running_loop()
        events = []

        class Tagged(Lost):
            def data_received(self, data):
                events.append(data)
                loop.call_soon(events.append, data + b"-cb")

        tr1, p1, peer1 = await _connected(loop, Tagged)
        tr2, p2, peer2 = await _connected(loop, Tagged)
        with peer1, peer2:
            for _ in range(3):
                await asyncio.sleep(0)
            peer1.send(b"a")
            peer2.send(b"b")
            # nothing is ready: the loop waits, and both records come in one poll
            await asyncio.sleep(0.1)
            assert sorted(events[:2]) == [b"a", b"b"], events
            assert sorted(events[2:]) == [b"a-cb", b"b-cb"], events
            tr1.close()
            tr2.close()
            await wait_for(p1.lost)
            await wait_for(p2.lost)

    run_in(tloop, main())


def test_accepted_socket_is_non_blocking(tloop):
    """A server's accepted connection: its fd is O_NONBLOCK and the socket
    object behind the transport has timeout 0, as stock (the Acceptor makes
    it so without a setblocking() syscall)."""
    import fcntl
    import os

    async def main():
        loop = asyncio.get_running_loop()
        made = loop.create_future()

        class Server(Lost):
            def connection_made(self, transport):
                super().connection_made(transport)
                made.set_result(transport)

        srv = await loop.create_server(Server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        with socket.socket() as peer:
            peer.setblocking(False)
            await wait_for(loop.sock_connect(peer, ("127.0.0.1", port)))
            tr = await wait_for(made)
            fd = tr.get_extra_info("socket").fileno()
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            assert tr._sock.gettimeout() == 0.0
            assert tr.get_extra_info("socket").type == socket.SOCK_STREAM
            tr.close()
        srv.close()
        await srv.wait_closed()

    run_in(tloop, main())


def test_writelines_items_as_stock(tloop):
    """writelines() of lists, tuples and iterators of every bytes-like kind
    (copied at the call, as stock), empty lists, and what stock refuses: the
    bytes arrive in order, a refused call queues nothing. (No empty item and
    no buffer of items wider than a byte: the stock transport of 3.12.1
    mishandles both, counting a memoryview's length in items.)"""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Lost)
        with peer:
            buf = bytearray(b"ba")
            tr.writelines([b"<", buf, memoryview(b"mv"), memoryview(b"xy")])
            buf[:] = b"XX"
            tr.writelines((b"(tuple)",))
            tr.writelines(iter([b"[it", bytearray(b"er]")]))
            tr.writelines([])
            tr.writelines(())
            with pytest.raises(TypeError):
                tr.writelines([b"never", "text"])
            with pytest.raises(TypeError):
                tr.writelines([b"never", None])
            tr.writelines([b">"])
            tr.write_eof()
            with pytest.raises(RuntimeError, match="write_eof"):
                tr.writelines([b"late"])
            got = await _read_until_eof(loop, peer)
            assert got == b"<bamvxy(tuple)[iter]>"
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main())


@pytest.mark.skipif(
    sys.version_info < (3, 12), reason="before 3.12 writelines is the stock write(b''.join(...))"
)
def test_writelines_list_is_c(tloop):
    """On 3.12+ a list or tuple of bytes-like items is queued by the C core
    (one send with the turn's other writes); an iterator or a refused item
    goes to the Python path, which is the stock writelines. Items wider
    than a byte go as their bytes (the stock 3.12.1 transport fails there)."""
    import array
    if is_stock(tloop):
        pytest.skip("the C core is uringloop's")

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Lost)
        with peer:
            slow = []
            py = tr._writelines_slow
            tr._writelines_slow = lambda items: (slow.append(items), py(items))[1]
            sends = tr._core.sends
            tr.write(b"a")
            ints = array.array("H", [0x0101, 0x0202])
            tr.writelines([b"b", b"", bytearray(b"c"), ints])
            ints[0] = 0
            tr.writelines((memoryview(b"d"), memoryview(b"x-y-")[::2]))
            assert slow == []
            tr.writelines(iter([b"e"]))
            assert len(slow) == 1
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert tr._core.sends - sends == 1  # the turn's writes, gathered
            tr.write_eof()
            assert await _read_until_eof(loop, peer) == b"abc\x01\x01\x02\x02dxye"
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main())


def test_a_waiting_100k_message_is_one_data_received(tloop):
    """100 KiB already waiting in the socket when the transport starts reading
    reaches data_received in one call, as the stock loop's recv(256 KiB)
    hands it over (decision 271: a chunk joins up to 112 KiB of records)."""

    class Chunks(Lost):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def data_received(self, data):
            self.sizes.append(len(data))

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with b:
            b.sendall(bytes(range(256)) * 400)  # 100 KiB, all of it waits in a
            b.shutdown(socket.SHUT_WR)
            tr, proto = await loop.create_connection(Chunks, sock=a)
            await wait_for(proto.lost)
        return proto.sizes

    assert run_in(tloop, main()) == [100 * 1024]


class _Window(asyncio.BufferedProtocol):
    """A BufferedProtocol over one buffer of `size` bytes that keeps what it
    is given and the size of each buffer_updated; after the `stop`-th one it
    calls `then` (pause_reading, close...) on the transport."""

    def __init__(self, size, stop=0, then=None):
        self.buf = bytearray(size)
        self.got = bytearray()
        self.sizes = []
        self.stop, self.then = stop, then
        self.stopped = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]
        self.sizes.append(nbytes)
        if len(self.sizes) == self.stop:
            getattr(self.transport, self.then)()
            self.stopped.set_result(len(self.got))

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost.set_result(exc)


_100K = bytes(range(256)) * 400


async def _waiting_100k(loop, factory):
    """a transport made over a socket where 100 KiB and the EOF already wait"""
    a, b = socket.socketpair()
    with b:
        b.sendall(_100K)
        b.shutdown(socket.SHUT_WR)
        tr, proto = await loop.create_connection(factory, sock=a)
        await wait_for(proto.stopped if proto.stop else proto.lost)
    return tr, proto


def test_a_waiting_100k_message_fills_whole_buffers(tloop):
    """100 KiB already waiting when a BufferedProtocol with a 64 KiB buffer
    starts reading: two buffer_updated calls, 64 KiB then 36 KiB, as the
    stock loop's recv_into(buffer) gives (decision 335: a turn's pool
    records are fed together; each 16 KiB pool buffer was one get_buffer
    and buffer_updated before)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await _waiting_100k(loop, lambda: _Window(65536))
        assert bytes(proto.got) == _100K
        return proto.sizes

    assert run_in(tloop, main()) == [65536, 36864]


class _Hints(asyncio.BufferedProtocol):
    """A 64 KiB buffer; notes get_buffer's size hints and resizes its
    bytearray inside buffer_updated (allowed once the receive is done)."""

    def __init__(self):
        self.buf = bytearray(65536)
        self.got = bytearray()
        self.hints = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]
        self.buf.append(0)  # BufferError while the buffer is still exported
        del self.buf[-1]

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_big_reads_land_in_the_protocols_buffer(tloop):
    """Once a BufferedProtocol's reads fill its 64 KiB buffer, they are
    received into that buffer itself, the stock way: get_buffer(-1), then
    the receive, then buffer_updated (decision 350; they were copied from
    pool buffers, get_buffer(bytes waiting)). The buffer is let go before
    buffer_updated; resizing it while a receive waits raises BufferError
    and harms nothing; pause_reading while one waits holds what comes."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, proto = await loop.create_connection(_Hints, sock=a)
        sent = bytearray()
        for i in range(4):
            msg = bytes([i]) * 100 * 1024
            await loop.sock_sendall(b, msg)
            sent += msg
            await wait_for(_until_got(proto, len(sent)))
            if i == 0:
                first = len(proto.hints)
        for i in range(4, 6):
            try:
                proto.buf.append(0)  # a receive may hold the buffer now
                del proto.buf[-1]
            except BufferError:
                pass
            msg = bytes([i]) * 100 * 1024
            await loop.sock_sendall(b, msg)
            sent += msg
            await wait_for(_until_got(proto, len(sent)))
        hints = proto.hints[first:]
        tr.pause_reading()
        await loop.sock_sendall(b, b"z" * 100 * 1024)
        for _ in range(10):
            await asyncio.sleep(0)
        held = len(proto.got)
        tr.resume_reading()
        sent += b"z" * 100 * 1024
        await wait_for(_until_got(proto, len(sent)))
        b.close()
        await wait_for(proto.lost)
        assert bytes(proto.got) == bytes(sent)
        return held, len(sent) - 100 * 1024, hints

    held, before_pause, hints = run_in(tloop, main())
    assert held == before_pause  # nothing handed over while paused
    assert set(hints) == {-1}, hints


async def _until_got(proto, n):
    while len(proto.got) < n:
        await asyncio.sleep(0.001)


class _Sized(_Hints):
    """_Hints with a buffer of `size` bytes."""

    def __init__(self, size):
        super().__init__()
        self.buf = bytearray(size)


@pytest.mark.parametrize(
    "bufsize,msgsize,split",
    [
        (65536, 70 * 1024, False),  # 64 KiB, then a 6 KiB tail
        (65536, 70 * 1024, True),  # the same, the tail sent once the 64 KiB are in
        (20480, 50 * 1024, False),  # 20 KiB, 20 KiB, then a 10 KiB tail
        (4096, 70 * 1024, False),  # a buffer smaller than a pool buffer: the pool's reads
    ],
)
def test_a_short_tail_keeps_big_reads_in_the_protocols_buffer(tloop, bufsize, msgsize, split):
    """Messages that fill a BufferedProtocol's buffer and end with a tail
    shorter than a pool buffer (16 KiB), one at a time: the byte stream
    arrives exact, and once the reads came big the next message is still
    received into the protocol's buffer (get_buffer(-1), as stock) for a
    buffer of a pool buffer or more. Before decision 718 the short tail sent
    the transport back to the pool receive, so every other message was
    copied from pool buffers (hints 71680, 6144 for 70 KiB). split: the
    tail comes after the first 64 KiB were received, so it is the record of
    a receive that waited, not a read that followed at once."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, proto = await loop.create_connection(lambda: _Sized(bufsize), sock=a)
        sent = bytearray()
        marks = []
        for i in range(8):
            msg = bytes((i + k) % 256 for k in range(251)) * (msgsize // 251)
            msg += bytes([i]) * (msgsize - len(msg))
            parts = [msg[:bufsize], msg[bufsize:]] if split else [msg]
            for part in parts:
                await loop.sock_sendall(b, part)
                sent += part
                await wait_for(_until_got(proto, len(sent)))
            marks.append(len(proto.hints))
        b.close()
        await wait_for(proto.lost)
        assert bytes(proto.got) == bytes(sent)
        return proto.hints[marks[1] :]

    hints = run_in(tloop, main())
    if bufsize >= 16384:
        assert set(hints) == {-1}, hints


class _Chunks(asyncio.Protocol):
    def __init__(self):
        self.got = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.got += data

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_a_short_tail_keeps_a_protocols_big_reads(tloop):
    """120 KiB messages to a Protocol, one at a time: a 112 KiB read, then
    an 8 KiB tail. The byte stream arrives exact, and the tail no longer
    sends the transport back to the pool receive (decision 718): the next
    message is read straight into its bytes again after a poll, two records
    a message here (the waits run as tasks, so each read waits behind
    _ready: one poll record a read). Before: 5.5, every other message came
    through the pool, its 16 KiB records copied out, then the cancel of the
    switch back."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, proto = await loop.create_connection(_Chunks, sock=a)
        sent = bytearray()
        stats = None
        n = 10
        for i in range(2 + n):
            if i == 2 and not is_stock(loop):
                stats = loop.engine_stats()
            msg = bytes((i + k) % 256 for k in range(241)) * (120 * 1024 // 241)
            msg += bytes([i]) * (120 * 1024 - len(msg))
            await loop.sock_sendall(b, msg)
            sent += msg
            await wait_for(_until_got(proto, len(sent)))
        records = None if stats is None else loop.engine_stats()["records"] - stats["records"]
        b.close()
        await wait_for(proto.lost)
        assert bytes(proto.got) == bytes(sent)
        return records, n

    records, n = run_in(tloop, main())
    if records is not None:  # the stock loop has no engine to count
        assert records <= 2.5 * n, records


@pytest.mark.parametrize("then", ["pause_reading", "close"])
def test_pause_or_close_inside_buffer_updated_with_more_received(tloop, then):
    """pause_reading() or close() inside the second buffer_updated while the
    rest of 100 KiB is already received: nothing more is handed over (after
    close, never; after pause, only after resume_reading, in order)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto = await _waiting_100k(loop, lambda: _Window(10000, 2, then))
        assert proto.sizes == [10000, 10000]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(proto.got) == 20000  # nothing while paused or closed
        if then == "pause_reading":
            tr.resume_reading()
            await wait_for(proto.lost)
            assert bytes(proto.got) == _100K
            assert proto.sizes[:10] == [10000] * 10
        else:
            assert await wait_for(proto.lost) is None
            assert len(proto.got) == 20000

    run_in(tloop, main())


@pytest.mark.parametrize("kind", ["plain", "buffered"])
def test_set_protocol_inside_buffer_updated_with_more_received(tloop, kind):
    """set_protocol() inside the second buffer_updated while the rest of
    100 KiB is already received: the rest goes to the new protocol, in
    order, the way its kind takes bytes (data_received, or its own
    get_buffer), and none to the old one."""

    async def main():
        loop = asyncio.get_running_loop()
        new = Lost() if kind == "plain" else _Window(3000)
        new.got = bytearray()
        if kind == "plain":
            new.data_received = new.got.extend
        old_lost = loop.create_future()

        class Switch(_Window):
            def buffer_updated(self, nbytes):
                super().buffer_updated(nbytes)
                if len(self.sizes) == 2:
                    self.transport.set_protocol(new)
                    new.transport = self.transport

        a, b = socket.socketpair()
        with b:
            b.sendall(_100K)
            b.shutdown(socket.SHUT_WR)
            tr, old = await loop.create_connection(lambda: Switch(10000), sock=a)
            old.lost = old_lost
            await wait_for(new.lost)
        assert old.sizes == [10000, 10000]
        assert bytes(old.got) + bytes(new.got) == _100K
        if kind == "buffered":
            assert max(new.sizes) == 3000

    run_in(tloop, main())


@pytest.mark.parametrize("bad", ["empty", "readonly"])
def test_get_buffer_misbehaves_for_the_second_buffer(tloop, caplog, bad):
    """get_buffer() gives a usable 64 KiB buffer, then an unusable one for
    the rest of a 100 KiB message already received: one fatal error with
    the stock message for that buffer, nothing more handed over."""

    class Then(_Window):
        def get_buffer(self, sizehint):
            if not self.sizes:
                return self.buf
            return bytearray() if bad == "empty" else b"x" * 100

    async def main():
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            tr, proto = await _waiting_100k(loop, lambda: Then(65536))
            exc = proto.lost.result()
        assert proto.sizes == [65536]
        if bad == "empty":
            assert isinstance(exc, RuntimeError) and "empty buffer" in str(exc)
            message = _GET_BUFFER_FAILED
        else:
            assert isinstance(exc, TypeError), exc
            message = _READ_ERROR
        assert sum(message in r.getMessage() for r in caplog.records) == 1

    run_in(tloop, main())


class _Big(asyncio.Protocol):
    """A Protocol that keeps what it is given and, for each data_received,
    its size and whether the engine's pool was whole then (None on the stock
    loop); at the `stop`-th chunk it calls `then` on the transport."""

    def __init__(self, stop=0, then=None):
        loop = asyncio.get_running_loop()
        self.eng = getattr(loop, "_engine", None)
        self.everything = self.eng.info()["buf_count"] if self.eng else None
        self.got = bytearray()
        self.chunks = []
        self.stop, self.then = stop, then
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        whole = self.eng.stats()["bufs_free"] == self.everything if self.eng else None
        self.chunks.append((len(data), whole))
        self.got += data
        if len(self.chunks) == self.stop:
            getattr(self.transport, self.then)()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def _message(i, n=100 * 1024):
    return bytes((i + k) % 251 for k in range(256)) * (n // 256)


def test_big_protocol_chunks_are_received_into_their_bytes(tloop):
    """Decision 373: once a Protocol's chunk is four pool buffers or more,
    its reads land in a new bytes that data_received gets (no pool buffer
    in between: the pool is whole while data_received runs); a read of less
    than a pool buffer goes back to the pool. Byte-exact throughout: 100 KiB
    messages one at a time, a 1 MiB burst, small messages, EOF."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, proto = await loop.create_connection(_Big, sock=a)
        sent = bytearray()
        marks = []
        for i in range(6):
            msg = _message(i)
            await loop.sock_sendall(b, msg)
            sent += msg
            await wait_for(_until_got(proto, len(sent)))
            marks.append(len(proto.chunks))
        burst = b"".join(_message(i) for i in range(10))  # 1000 KiB at once
        await loop.sock_sendall(b, burst)
        sent += burst
        await wait_for(_until_got(proto, len(sent)))
        marks.append(len(proto.chunks))
        for i in range(3):
            small = bytes([i]) * 1000
            await loop.sock_sendall(b, small)
            sent += small
            await wait_for(_until_got(proto, len(sent)))
        b.close()
        assert await wait_for(proto.lost) is None
        assert bytes(proto.got) == bytes(sent)
        return marks, proto.chunks

    marks, chunks = run_in(tloop, main())
    if is_stock(tloop):
        return
    # after the first message, every 100 KiB one came whole, in its own bytes
    assert chunks[marks[0] : marks[5]] == [(100 * 1024, True)] * 5, (marks, chunks)
    # the burst too (chunks of at most 112 KiB, never a pool buffer's)
    assert all(whole and n <= 112 * 1024 for n, whole in chunks[marks[5] : marks[6]]), chunks
    # the first small read is direct (it said so), the next ones are the pool's
    assert chunks[-3:] == [(1000, True), (1000, False), (1000, False)], chunks


@pytest.mark.parametrize("then", ["pause_reading", "close"])
def test_pause_or_close_inside_a_direct_data_received_with_more_waiting(tloop, then):
    """pause_reading() or close() inside data_received of a direct read
    while more is waiting in the socket (a 1 MiB burst): nothing more is
    handed over (after close, never; after pause, only after
    resume_reading, in order and whole)."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, proto = await loop.create_connection(lambda: _Big(3, then), sock=a)
        first = _message(0)
        await loop.sock_sendall(b, first)  # the switch to direct reads
        await wait_for(_until_got(proto, len(first)))
        burst = b"".join(_message(i) for i in range(1, 11))
        send = loop.create_task(loop.sock_sendall(b, burst))
        while len(proto.chunks) < 3:
            await asyncio.sleep(0.001)
        for _ in range(10):
            await asyncio.sleep(0)
        got = len(proto.got)
        # uringloop: the chunk that stopped it came from a direct read
        assert proto.chunks[2][1] in (None, True), proto.chunks
        if then == "pause_reading":
            assert tr.is_reading() is False
            tr.resume_reading()
            await wait_for(send)
            await wait_for(_until_got(proto, len(first) + len(burst)))
            b.close()
            assert await wait_for(proto.lost) is None
            assert bytes(proto.got) == first + burst
        else:
            assert await wait_for(proto.lost) is None
            send.cancel()
            b.close()
            assert len(proto.got) == got  # nothing after close()
        return got

    got = run_in(tloop, main())
    assert got < 100 * 1024 + 10 * 100 * 1024


async def _two_big_messages(loop, protocol, pair=None, check=True):
    """A connection over pair (a socketpair by default) whose second 100 KiB
    message came by a direct read (decisions 350, 373) on uringloop, so that
    the next read waits: (transport, protocol, the peer's socket, the bytes
    sent). check: assert the Protocol's second chunk was one read."""
    a, b = pair or socket.socketpair()
    b.setblocking(False)
    tr, proto = await loop.create_connection(protocol, sock=a)
    sent = bytearray()
    for i in range(2):
        msg = _message(i)
        await loop.sock_sendall(b, msg)
        sent += msg
        await wait_for(_until_got(proto, len(sent)))
    if check:  # (the first may come in pieces: a ring of 4 buffers at first, decision 748)
        assert proto.chunks[-1] in ((100 * 1024, None), (100 * 1024, True)), proto.chunks
    return tr, proto, b, sent


@pytest.mark.parametrize("then", ["pause_reading", "close", "abort"])
def test_pause_or_close_while_a_direct_read_waits(tloop, then):
    """pause_reading(), close() or abort() while a direct read waits (the
    engine's one-shot poll, decision 373), then 100 KiB
    comes: paused, it is held and handed over whole after resume_reading;
    closed, nothing more reaches the protocol and connection_lost comes
    once. Cancel may lose the race: no byte is lost or doubled either way."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, b, sent = await _two_big_messages(loop, _Big)
        getattr(tr, then)()
        msg = _message(7)
        try:
            await loop.sock_sendall(b, msg)
        except OSError:
            assert then != "pause_reading"  # the peer may be gone already
        for _ in range(10):
            await asyncio.sleep(0)
        assert bytes(proto.got) == bytes(sent)  # nothing while paused or closed
        if then == "pause_reading":
            tr.resume_reading()
            sent += msg
            await wait_for(_until_got(proto, len(sent)))
            b.close()
        assert await wait_for(proto.lost) is None
        b.close()
        assert bytes(proto.got) == bytes(sent)

    run_in(tloop, main())


def test_eof_while_a_direct_read_waits(tloop):
    """The peer's EOF (with 50 KiB before it) while a direct read waits
    (decision 373): the bytes, then eof_received, then connection_lost."""

    class Eof(_Big):
        def eof_received(self):
            self.chunks.append(("eof", len(self.got)))

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, b, sent = await _two_big_messages(loop, Eof)
        tail = _message(3, 50 * 1024)
        await loop.sock_sendall(b, tail)
        sent += tail
        b.close()
        assert await wait_for(proto.lost) is None
        assert bytes(proto.got) == bytes(sent)
        assert proto.chunks[-1] == ("eof", len(sent)), proto.chunks

    run_in(tloop, main())


def _kept(loop, tr):
    """Whether tr's direct reads wait on a kept multishot poll now (decision
    765: io_uring), checked against what the Stream says: on epoll and the
    stock loop there is none."""
    eng = getattr(loop, "_engine", None)
    core = getattr(tr, "_core", None)
    if eng is None or core is None:
        return False
    if eng.backend != "io_uring":
        assert core.pms == 0
        return False
    assert core.recv_ud == core.pms != 0, (core.recv_ud, core.pms)
    return True


def test_direct_reads_wait_on_one_kept_poll(tloop):
    """Decision 765: on io_uring a Protocol's direct reads wait on one
    multishot poll kept while they go on. 100 KiB messages one at a time over
    a socketpair: each read comes short of its 112 KiB bytes, and the wait
    after it is no SQE (before: a one-shot POLL_ADD a message, an SQE each).
    Byte-exact, on every kind of loop."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, b, sent = await _two_big_messages(loop, _Big)
        kept = _kept(loop, tr)
        before = loop.engine_stats() if kept else None
        n = 20
        for i in range(n):
            msg = _message(10 + i)
            await loop.sock_sendall(b, msg)
            sent += msg
            await wait_for(_until_got(proto, len(sent)))
        after = loop.engine_stats() if kept else None
        if kept:
            _kept(loop, tr)  # the same poll waits still
        b.close()
        assert await wait_for(proto.lost) is None
        assert bytes(proto.got) == bytes(sent)
        return kept, before, after, n

    kept, before, after, n = run_in(tloop, main())
    if kept:
        sqes = after["submitted"] - before["submitted"]
        assert sqes <= n // 4, (sqes, n)


def test_bytes_that_come_while_a_kept_polls_record_is_handled(tloop):
    """Bytes sent from inside data_received, while the kept poll's record is
    being handled (after the poll reported, before the Stream waits again):
    the poll, armed all along, reports them; nothing lost or reordered, and
    the reads stay direct (decision 765)."""

    class Feeder(_Big):
        def __init__(self, b, pieces):
            super().__init__()
            self.b, self.pieces, self.sent, self.kept = b, pieces, bytearray(), 0

        def data_received(self, data):
            super().data_received(data)
            core = getattr(self.transport, "_core", None)
            self.kept += core is not None and core.pms != 0  # a kept poll's record
            if self.pieces and len(self.got) == len(self.sent):
                piece = self.pieces.pop(0)
                self.sent += piece
                k = self.b.send(piece)  # 100 KiB: the empty socketpair takes it whole
                assert k == len(piece), k

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        pieces = [_message(30 + i) for i in range(16)]
        tr, proto = await loop.create_connection(lambda: Feeder(b, pieces), sock=a)
        first = _message(29, 100 * 1024)
        proto.sent += first
        await loop.sock_sendall(b, first)
        await wait_for(_until_got(proto, len(proto.sent)))
        while proto.pieces:
            await wait_for(_until_got(proto, len(proto.sent)))
        await wait_for(_until_got(proto, len(proto.sent)))
        b.close()
        assert await wait_for(proto.lost) is None
        assert bytes(proto.got) == bytes(proto.sent)
        eng = getattr(loop, "_engine", None)
        whole = sum(n == 100 * 1024 for n, _ in proto.chunks)  # direct reads' chunks
        if eng is not None and eng.backend == "io_uring" and whole >= 12:
            # (not where the fallbacks' pool receives took the pieces)
            assert proto.kept >= 8, (proto.kept, whole)  # of the 16 pieces

    run_in(tloop, main())


@pytest.mark.parametrize("then", ["pause_reading", "close"])
def test_pause_or_close_before_a_kept_polls_record_is_handled(tloop, then):
    """Two connections whose direct reads wait (on io_uring, each on its kept
    poll); 100 KiB comes to both in the same turn, and the first one's
    data_received pauses or closes the second: when the second's record came
    later in the batch, its poll reported for a transport paused or closed
    since. Paused, nothing more reaches it until resume_reading, then the
    bytes whole and in order; closed, nothing after close() and
    connection_lost once (decision 765; 373's rules)."""

    class Doer(_Big):
        def __init__(self):
            super().__init__()
            self.other = None

        def data_received(self, data):
            super().data_received(data)
            if self.other is not None:
                other, self.other = self.other, None
                getattr(other, then)()

    async def main():
        loop = asyncio.get_running_loop()
        tr1, p1, b1, sent1 = await _two_big_messages(loop, Doer)
        tr2, p2, b2, sent2 = await _two_big_messages(loop, _Big)
        for tr in (tr1, tr2):
            _kept(loop, tr)
        p1.other = tr2
        m1, m2 = _message(41), _message(42)
        # both sent before the loop runs again: one batch of records
        assert b2.send(m2) == len(m2)
        assert b1.send(m1) == len(m1)
        sent1 += m1
        await wait_for(_until_got(p1, len(sent1)))
        for _ in range(10):
            await asyncio.sleep(0)
        got2 = bytes(p2.got)
        assert got2 in (bytes(sent2), bytes(sent2 + m2))  # whole, or not at all
        if then == "pause_reading":
            assert not tr2.is_reading()
            tr2.resume_reading()
            sent2 += m2
            await wait_for(_until_got(p2, len(sent2)))
            b2.close()
            assert await wait_for(p2.lost) is None
        else:
            assert await wait_for(p2.lost) is None
            b2.close()
            assert p2.lost.result() is None
        assert bytes(p2.got) == (bytes(sent2) if then == "pause_reading" else got2)
        b1.close()
        assert await wait_for(p1.lost) is None
        assert bytes(p1.got) == bytes(sent1)

    run_in(tloop, main())


@pytest.mark.parametrize("how", ["shutdown", "data-then-shutdown", "reset"])
def test_eof_or_reset_while_a_kept_poll_waits(tloop, how):
    """Over loopback TCP, while the direct reads wait (on io_uring on the
    kept poll, after a short read): the peer's FIN alone, 50 KiB then its FIN
    in one go (the FIN may come in the same report as the bytes: the waits
    after it are one-shot polls, as a FIN queued behind the bytes a short
    read took wakes nothing again), or an RST. Every byte before it, in
    order; then eof_received and connection_lost(None), or
    connection_lost(ConnectionResetError) (decision 765)."""

    class Eof(_Big):
        def eof_received(self):
            self.chunks.append(("eof", len(self.got)))

    async def main():
        loop = asyncio.get_running_loop()
        lst = plain_listener()
        b = socket.create_connection(lst.getsockname())
        a = None
        for _ in range(1000):
            with contextlib.suppress(BlockingIOError):
                a, _addr = lst.accept()
                break
            await asyncio.sleep(0.001)
        lst.close()
        a.setblocking(False)
        b.setblocking(False)
        tr, proto, b, sent = await _two_big_messages(loop, Eof, pair=(a, b), check=False)
        _kept(loop, tr)
        if how == "data-then-shutdown":
            tail = _message(5, 50 * 1024)
            await loop.sock_sendall(b, tail)
            sent += tail
        if how == "reset":
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            b.close()
            exc = await wait_for(proto.lost)
            assert isinstance(exc, ConnectionResetError), exc
        else:
            b.shutdown(socket.SHUT_WR)
            assert await wait_for(proto.lost) is None
            assert proto.chunks[-1] == ("eof", len(sent)), proto.chunks[-3:]
            b.close()
        assert bytes(proto.got) == bytes(sent)

    run_in(tloop, main())


class _Keeps:
    """Keeps what its protocol is given, and when its EOF came."""

    def __init__(self):
        self.got = bytearray()
        self.eof_at = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def eof_received(self):
        self.eof_at = len(self.got)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class _Sink(_Keeps, asyncio.Protocol):
    def data_received(self, data):
        self.got += data


class _SinkBuffered(_Keeps, asyncio.BufferedProtocol):
    """A 64 KiB buffer: 100 KiB messages make its reads direct (decision
    350)."""

    def __init__(self):
        super().__init__()
        self.buf = bytearray(65536)

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]


async def _turns(n=10):
    for _ in range(n):
        await asyncio.sleep(0)


async def _drained_direct_wait(loop, kind, tcp):
    """A connection whose second 100 KiB message came by a direct read
    (decisions 350, 373), so that the next read waits with the drained hint
    (decision 391): (transport, protocol, the peer's socket, the bytes
    sent)."""
    if tcp:
        lst = plain_listener()
        with lst:
            a = socket.create_connection(lst.getsockname())
            b, _ = lst.accept()
    else:
        a, b = socket.socketpair()
    factory = _Sink if kind == "protocol" else _SinkBuffered
    return await _two_big_messages(loop, factory, (a, b), check=False)


async def _send(loop, b, sent, msg, proto):
    await loop.sock_sendall(b, msg)
    sent += msg
    await wait_for(_until_got(proto, len(sent)))


@pytest.mark.parametrize("kind", ["protocol", "buffered"])
@pytest.mark.parametrize(
    "way", ["small", "pause", "set_protocol", "close", "abort", "eof", "reset"]
)
def test_every_way_out_of_a_drained_direct_wait(tloop, kind, way):
    """A Protocol's or a BufferedProtocol's direct read waits after a read
    that came short, on epoll with no re-arm (decision 391); every way out
    of that wait: a small message (back to the pool receive, then direct
    again), pause_reading/resume_reading, set_protocol to the other kind,
    close, abort, the peer's EOF, a connection reset. No byte is lost,
    doubled or reordered; after connection_lost no op of the transport's is
    left in the engine; the fd number, closed, then reused by a new
    connection, serves that connection (direct reads and drained waits
    included) and nothing of the old one."""

    async def main():
        loop = asyncio.get_running_loop()
        eng = getattr(loop, "_engine", None)
        ops = eng.in_flight if eng else None
        tr, proto, b, sent = await _drained_direct_wait(loop, kind, way == "reset")
        fd = tr.get_extra_info("socket").fileno()
        with b:
            if way == "small":
                for msg in (b"s" * 1000, _message(3), b"t" * 1000, _message(4)):
                    await _send(loop, b, sent, msg, proto)
                b.close()
            elif way == "pause":
                tr.pause_reading()
                await loop.sock_sendall(b, _message(3))
                await _turns()
                assert bytes(proto.got) == bytes(sent)  # nothing while paused
                sent += _message(3)
                tr.resume_reading()
                await wait_for(_until_got(proto, len(sent)))
                await _send(loop, b, sent, _message(4), proto)
                b.close()
            elif way == "set_protocol":
                old, proto = proto, (_SinkBuffered if kind == "protocol" else _Sink)()
                tr.set_protocol(proto)
                proto.transport = tr
                mark = len(sent)
                for i in (3, 4, 5):
                    await loop.sock_sendall(b, _message(i))
                    sent += _message(i)
                    await wait_for(_until_got(proto, len(sent) - mark))
                assert bytes(old.got) == bytes(sent[:mark])  # none to the old one
                sent = sent[mark:]
                b.close()
            elif way in ("close", "abort"):
                getattr(tr, way)()
                try:
                    await loop.sock_sendall(b, _message(3))
                except OSError:
                    pass  # the peer may be gone already
                await _turns()
            elif way == "eof":
                tail = _message(3, 50 * 1024)
                await loop.sock_sendall(b, tail)
                sent += tail
                b.shutdown(socket.SHUT_WR)
            else:  # reset: the bytes, then (the drained wait waiting again) an RST
                await _send(loop, b, sent, _message(3), proto)
                b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                b.close()
            exc = await wait_for(proto.lost)
        assert bytes(proto.got) == bytes(sent)
        if way == "reset":
            assert isinstance(exc, ConnectionResetError), exc
        else:
            assert exc is None, exc
        assert proto.eof_at == (None if way in ("close", "abort", "reset") else len(sent))
        await _turns(3)
        if eng is not None:
            assert eng.in_flight == ops  # nothing of the transport's is left

        # the number again, for a new connection (the lowest free number)
        c, d = socket.socketpair()
        if d.fileno() == fd:
            c, d = d, c
        with d:
            if c.fileno() != fd:
                with pytest.raises(OSError):
                    os.fstat(fd)  # closed with the transport
                os.dup2(c.fileno(), fd)
                c.close()
                c = socket.socket(fileno=fd)
            d.setblocking(False)
            tr2, new = await loop.create_connection(_Sink, sock=c)
            again = bytearray()
            for msg in (_message(5), _message(6), _message(7), b"u" * 1000):
                await _send(loop, d, again, msg, new)
            tr2.close()
            assert await wait_for(new.lost) is None
        assert bytes(new.got) == bytes(again)

    run_in(tloop, main())


def _resume_scenario(loop, act):
    """The writer pauses (a Unix socketpair, SO_SNDBUF 32 KiB, high 4096,
    100,000 B written in a turn run alone), the loop stops, the plain peer
    drains; then one turn with a callback ready before its poll, which may
    close() or abort() the transport. "close early"/"eof early": close() or
    write_eof() in the first turn, so the send completes while closing or at
    EOF (the Python _on_sent path). "close, resume writes": resume_writing
    writes 10 B after that close() (533). Every resume_writing queues a
    marker; the peer's byte count at EOF ends the log (not after abort():
    stock's buffer still held bytes, the kernel had taken ours)."""
    log = []

    class Writer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def pause_writing(self):
            log.append("pause")

        def resume_writing(self):
            log.append("resume")
            loop.call_soon(log.append, "soon from resume")
            if act == "close, resume writes":
                self.transport.write(b"y" * 10)

        def connection_lost(self, exc):
            log.append(("lost", exc))

    sock, peer = socket.socketpair()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)  # the kernel takes < 64 KiB
    w = Writer()
    with peer:
        run_in(loop, loop.create_unix_connection(lambda: w, sock=sock))
        tr = w.transport
        tr.set_write_buffer_limits(high=4096)
        loop.call_soon(tr.write, b"x" * 100_000)
        if act == "close early":
            loop.call_soon(tr.close)
        elif act == "eof early":
            loop.call_soon(tr.write_eof)
        loop.call_soon(loop.stop)
        loop.run_forever()
        # the loop stopped: the peer takes what the kernel holds, so the
        # rest of the write fits; then one turn with a callback ready first
        peer.settimeout(5)
        got = len(peer.recv(1 << 20))
        peer.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                got += len(peer.recv(1 << 20))
        log.append(("peer got", 4096 < got < 100_000))

        def ready_first():
            log.append("ready first")
            if act in ("close", "abort", "close, abort", "close, resume writes"):
                for name in act.split(", ")[:1 if "writes" in act else 2]:
                    getattr(tr, name)()

        loop.call_soon(ready_first)
        loop.call_soon(loop.stop)
        loop.run_forever()
        log.append("turn ended")
        run_in(loop, asyncio.sleep(0.01))
        log.append("next turns")
        if not tr.is_closing():
            tr.abort()
            run_in(loop, asyncio.sleep(0.01))
        peer.settimeout(5)
        while data := peer.recv(1 << 20):  # to EOF: the transport is closed
            got += len(data)
        if "abort" not in (act or ""):  # stock's abort drops what its buffer held
            log.append(("peer total", got))
    return log


@pytest.mark.parametrize(
    "act",
    [None, "close", "abort", "close, abort", "close early", "eof early", "close, resume writes"],
)
def test_resume_writing_waits_behind_ready_callbacks(tloop, act):
    """A send's completion that drains the buffer below the low-water mark
    calls resume_writing behind the callbacks _ready held before the poll,
    as the stock writer callback is queued there (decision 522; difffuzz
    unix 295: the kernel finished a 1 MB send while the loop was stopped,
    and resume_writing ran before the program's next callback). After
    close() from that callback it still comes, then connection_lost; after
    abort() not (530); closing or at EOF when the send completes, the same
    order (531). A write from that resume_writing after close() leaves,
    then connection_lost comes from the resume's callback, as from stock's
    writer (533). Compared with a stock run."""
    want = on_stock(_resume_scenario, act)
    assert want[:3] == ["pause", ("peer got", True), "ready first"]
    assert _resume_scenario(tloop, act) == want
