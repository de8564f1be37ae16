"""Stream transport semantics, on io_uring, epoll and the stock loop.

Focused on what a transport promises a protocol (the order and count of
callbacks, errors and their messages, pause/resume, flow control, close and
abort); the broad scenario tests (aiohttp, uvicorn, big transfers, many
connections, fd counts) live elsewhere. Every test that needs the stock
loop's behaviour runs on it too, so the two are compared by construction.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import struct

import pytest
from conftest import fd_is_open, is_stock, run_in


class Recorder(asyncio.Protocol):
    """Records every callback in order; ``lost`` resolves at connection_lost."""

    def __init__(self, loop, eof_result=None):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.eof_result = eof_result
        self.lost = loop.create_future()
        self.fd_open_at_lost = None

    def connection_made(self, transport):
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()
        self.events.append("made")

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append("lost")
        self.fd_open_at_lost = fd_is_open(self.fd)
        if not self.lost.done():
            self.lost.set_result(exc)


async def _pair(loop, proto_factory):
    """A transport of the loop's, connected to a plain blocking-free peer socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        port = listener.getsockname()[1]
        connect = loop.create_connection(proto_factory, "127.0.0.1", port)
        (tr, pr), (peer, _) = await asyncio.gather(connect, loop.sock_accept(listener))
    finally:
        listener.close()
    peer.setblocking(False)
    return tr, pr, peer


async def _read_all(loop, peer, n=None):
    out = bytearray()
    while n is None or len(out) < n:
        chunk = await loop.sock_recv(peer, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_writes_arrive_in_order_and_close_flushes(any_loop):
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        expected = bytearray()
        for i in range(200):
            piece = struct.pack("!I", i) * (i % 7 + 1)
            (tr.write if i % 3 else tr.writelines)(piece if i % 3 else [piece, b"|"])
            expected += piece if i % 3 else piece + b"|"
        tr.write(bytearray(b"tail"))
        expected += b"tail"
        tr.close()  # the queued bytes still leave, then the fd closes
        got = await _read_all(loop, peer)
        assert got == bytes(expected)
        assert await pr.lost is None
        assert pr.events == ["made", "lost"]
        peer.close()

    run_in(loop, main())


def test_one_send_per_turn(loop):
    """All writes of one turn leave as one send (the flush's sendmsg(), an
    engine send for what the socket leaves: decision 305), on epoll too when
    they come from a task (decision 398; epoll's send() in write() is for a
    protocol callback of the turn's records, decision 210)."""

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        # the C core (stream.c) submits the sends itself; it counts them
        c = tr._core
        before, direct_before = c.sends, c.directs
        for _ in range(50):
            tr.write(b"x" * 10)
        assert c.directs - direct_before == 0
        assert c.buffer_size == 500
        assert await _read_all(loop, peer, 500) == b"x" * 500
        assert c.sends - before == 1
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main())


def test_big_mutable_writes_are_sent_at_once(loop):
    """write() of a bytearray or memoryview of 16 KiB or more, with nothing
    queued and nothing in flight, is one send() at once on both backends,
    also after another write of the turn (decision 336): no copy of it waits
    for the turn's flush. The caller may change the buffer right after: the
    peer gets what it held at write() (a rest the kernel left is copied)."""

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        c = tr._core
        before = c.directs
        big = bytearray(b"a" * 16384)
        tr.write(big)
        big[:] = b"b" * 16384
        view = memoryview(bytearray(b"c" * 40000))
        tr.write(view)
        view[:] = b"d" * 40000
        assert c.directs - before == 2
        assert await _read_all(loop, peer, 56384) == b"a" * 16384 + b"c" * 40000
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main())


@pytest.mark.parametrize("keep_open", [False, True])
def test_eof_received_decides(any_loop, keep_open):
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop, eof_result=keep_open))
        await loop.sock_sendall(peer, b"hello")
        peer.shutdown(socket.SHUT_WR)
        if keep_open:
            while "eof" not in pr.events:
                await asyncio.sleep(0.01)
            assert not tr.is_closing()
            tr.write(b"after eof")  # the half-open connection still writes
            assert await _read_all(loop, peer, 9) == b"after eof"
            tr.close()
        assert await pr.lost is None
        assert pr.events == ["made", "data", "eof", "lost"]
        assert bytes(pr.data) == b"hello"
        peer.close()

    run_in(loop, main())


def test_connection_lost_once_after_fd_closed(any_loop):
    loop = any_loop

    async def main():
        for how in ("close", "abort", "close+abort"):
            tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
            for step in how.split("+"):
                getattr(tr, step)()
            assert tr.is_closing()
            assert await pr.lost is None
            for _ in range(5):
                await asyncio.sleep(0)
            assert pr.events == ["made", "lost"], how
            # the fd is closed right after connection_lost, as the stock
            # loop's _call_connection_lost closes it (ours holds the
            # engine's close until then, decision 873)
            assert pr.fd_open_at_lost is True
            assert tr.get_extra_info("socket").fileno() == -1
            assert await _read_all(loop, peer) == b""
            peer.close()

    run_in(loop, main())


def test_write_errors_as_stock(any_loop, caplog):
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            tr.write("text")
        tr.write_eof()
        assert tr.can_write_eof()
        with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
            tr.write(b"late")
        assert await _read_all(loop, peer) == b""  # the peer sees EOF
        tr.close()
        await pr.lost
        peer.close()

        # writes after the connection was lost: counted, then logged
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        tr.abort()
        await pr.lost
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES + 2):
                tr.write(b"x")
        msgs = [r.getMessage() for r in caplog.records]
        # conn_lost is 1 after the abort; each write counts, and logs from the
        # threshold on: writes 5, 6 and 7 of 7
        assert msgs.count("socket.send() raised exception.") == 3
        peer.close()

    run_in(loop, main())


def test_peer_reset_reaches_connection_lost(any_loop):
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST
        exc = await pr.lost
        assert isinstance(exc, ConnectionResetError)
        assert exc.errno == errno.ECONNRESET
        assert pr.events == ["made", "lost"]

    run_in(loop, main())


class _Raising(Recorder):
    def __init__(self, loop, where):
        super().__init__(loop)
        self.where = where

    def data_received(self, data):
        super().data_received(data)
        if self.where == "data_received":
            raise ZeroDivisionError("boom")


class _Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop, size, mode="ok"):
        self.size = size
        self.mode = mode
        self.buf = bytearray(size)
        self.data = bytearray()
        self.lost = loop.create_future()
        self.calls = 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.calls += 1
        if self.mode == "empty":
            return bytearray()
        if self.mode == "raise":
            raise ValueError("no buffer")
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize(
    "factory, message, exc_type",
    [
        (lambda loop: _Raising(loop, "data_received"),
         "Fatal error: protocol.data_received() call failed.", ZeroDivisionError),
        (lambda loop: _Buffered(loop, 16, "empty"),
         "Fatal error: protocol.get_buffer() call failed.", RuntimeError),
        (lambda loop: _Buffered(loop, 16, "raise"),
         "Fatal error: protocol.get_buffer() call failed.", ValueError),
    ],
    ids=["data_received", "get_buffer-empty", "get_buffer-raises"],
)
def test_protocol_errors_are_fatal_as_stock(any_loop, factory, message, exc_type):
    loop = any_loop
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        tr, pr, peer = await _pair(loop, lambda: factory(loop))
        await loop.sock_sendall(peer, b"data")
        exc = await pr.lost
        assert isinstance(exc, exc_type)
        assert [c["message"] for c in contexts] == [message]
        assert contexts[0]["exception"] is exc
        assert contexts[0]["transport"] is tr
        assert contexts[0]["protocol"] is pr
        assert tr.is_closing()
        peer.close()

    run_in(loop, main())


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_buffered_protocol_any_buffer_size(any_loop, size):
    loop = any_loop
    # the stock loop reads one buffer per loop turn: keep it short for tiny ones
    payload = os.urandom(300_000 if size >= 4096 else 20_000)

    async def main():
        tr, pr, peer = await _pair(loop, lambda: _Buffered(loop, size))
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        assert await pr.lost is None
        assert bytes(pr.data) == payload
        peer.close()

    run_in(loop, main())


class _Pauser(Recorder):
    """Pauses reading after every chunk; the test resumes it."""

    def data_received(self, data):
        super().data_received(data)
        self.transport.pause_reading()


def test_pause_resume_reading_keeps_order(any_loop):
    """Each data_received pauses; resume comes a turn later. Whatever arrived
    around the cancel of the receive (ours) is handed over first, in order."""
    loop = any_loop
    payload = os.urandom(2_000_000)

    async def main():
        tr, pr, peer = await _pair(loop, lambda: _Pauser(loop))
        sender = loop.create_task(loop.sock_sendall(peer, payload))
        while len(pr.data) < len(payload):
            assert not tr.is_reading() or len(pr.data) == 0
            await asyncio.sleep(0)
            n = len(pr.data)
            await asyncio.sleep(0)
            assert len(pr.data) == n  # paused: nothing is handed over
            tr.resume_reading()
            assert tr.is_reading()
            await asyncio.sleep(0.001)
        await sender
        assert bytes(pr.data) == payload
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main(), timeout=60)


def test_pause_reading_stops_receiving(any_loop):
    """While paused nothing is read: the kernel buffers fill and the peer's
    send blocks, as with the stock loop."""
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        await asyncio.sleep(0)
        tr.pause_reading()
        assert not tr.is_reading()
        for _ in range(3):
            await asyncio.sleep(0)
        sent = 0
        chunk = b"z" * 65536
        while True:
            try:
                sent += peer.send(chunk)
            except BlockingIOError:
                break
            if sent > 64 << 20:
                pytest.fail("the peer could send 64 MiB to a paused transport")
        await asyncio.sleep(0.05)
        assert len(pr.data) == 0
        tr.resume_reading()
        while len(pr.data) < sent:
            await asyncio.sleep(0.005)
        assert bytes(pr.data) == b"z" * sent
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main(), timeout=30)


class _Flow(Recorder):
    def __init__(self, loop):
        super().__init__(loop)
        self.paused = 0
        self.resumed = 0

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1


def test_flow_control(any_loop):
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: _Flow(loop))
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        tr.set_write_buffer_limits(high=4096, low=1024)
        assert tr.get_write_buffer_limits() == (1024, 4096)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=1, low=2)
        # one write past the mark that the kernel takes at once pauses nobody
        # (stock behaviour; sslproto relies on it)
        tr.write(b"a" * 60000)
        assert pr.paused == 0
        assert await _read_all(loop, peer, 60000) == b"a" * 60000
        # the peer stops reading: writes pile up and pause the protocol
        total = 60000
        while not pr.paused:
            tr.write(b"b" * 65536)
            total += 65536
            await asyncio.sleep(0)
            assert total < 256 << 20
        assert pr.paused == 1 and pr.resumed == 0
        assert tr.get_write_buffer_size() > 4096
        got = await _read_all(loop, peer, total - 60000)
        assert got == b"b" * (total - 60000)
        while not pr.resumed:
            await asyncio.sleep(0.001)
        assert tr.get_write_buffer_size() <= 1024
        assert (pr.paused, pr.resumed) == (1, 1)
        tr.close()
        await pr.lost
        peer.close()

    run_in(loop, main(), timeout=60)


def test_extra_info_and_repr(any_loop):
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        tsock = tr.get_extra_info("socket")
        assert isinstance(tsock, asyncio.trsock.TransportSocket)
        assert tr.get_extra_info("sockname") == tsock.getsockname()
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr.get_extra_info("nonexistent", 42) == 42
        assert tsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert f"fd={tsock.fileno()}" in repr(tr)
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_protocol() is pr
        # the socket belongs to the transport: sock_* refuse it, as stock
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(tsock._sock, 10)
        tr.close()
        await pr.lost
        assert "closed" in repr(tr)
        peer.close()

    run_in(loop, main())


def test_set_protocol_switches_read_mode(any_loop):
    """set_protocol picks data_received or get_buffer for what comes next."""
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, lambda: Recorder(loop))
        await loop.sock_sendall(peer, b"one")
        while bytes(pr.data) != b"one":
            await asyncio.sleep(0.001)
        bp = _Buffered(loop, 2)
        tr.set_protocol(bp)
        await loop.sock_sendall(peer, b"two")
        peer.shutdown(socket.SHUT_WR)
        assert await bp.lost is None
        assert bytes(bp.data) == b"two"
        assert bp.calls >= 2
        peer.close()

    run_in(loop, main())


def test_server_close_stops_accepting_at_once(any_loop):
    loop = any_loop

    async def main():
        server = await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        c = socket.socket()
        with pytest.raises(ConnectionRefusedError):
            c.connect(("127.0.0.1", port))
        c.close()
        await server.wait_closed()

    run_in(loop, main())


def test_accept_survives_descriptor_exhaustion(any_loop, monkeypatch):
    """EMFILE: the exception handler hears of it, accepting pauses for
    ACCEPT_RETRY_DELAY and resumes; the waiting connection is not lost.
    (The limit is lowered before the server starts: io_uring's accept takes
    RLIMIT_NOFILE when the op is armed, not when a connection comes.) The
    pause is 0.1 s here, not 1 s: both loops read the constant when they
    pause (decision 561)."""
    monkeypatch.setattr(asyncio.constants, "ACCEPT_RETRY_DELAY", 0.1)
    loop = any_loop
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        protos = []

        def factory():
            protos.append(Recorder(loop))
            return protos[-1]

        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        client = socket.socket()
        client.setblocking(False)
        probe = os.open(os.devnull, os.O_RDONLY)
        os.close(probe)
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))  # no descriptor left
        try:
            server = await loop.create_server(factory, sock=listener)
            try:
                client.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            while not contexts:
                await asyncio.sleep(0.01)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert contexts[0]["message"] == "socket.accept() out of system resource"
        assert contexts[0]["exception"].errno == errno.EMFILE
        while not protos or protos[0].transport is None:
            await asyncio.sleep(0.05)  # after ACCEPT_RETRY_DELAY
        client.send(b"ping")
        while bytes(protos[0].data) != b"ping":
            await asyncio.sleep(0.01)
        protos[0].transport.close()
        await protos[0].lost
        client.close()
        server.close()
        await server.wait_closed()

    try:
        run_in(loop, main(), timeout=20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_unix_server_and_connection(any_loop, tmp_path):
    loop = any_loop
    path = str(tmp_path / "sock")

    async def main():
        async def handle(reader, writer):
            writer.write((await reader.read()).upper())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_unix_server(handle, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"over unix")
        writer.write_eof()
        assert await reader.read() == b"OVER UNIX"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run_in(loop, main())


def test_data_waits_for_callbacks_queued_before_it(any_loop):
    """The peer's first bytes are already there when the connection is made:
    the task that awaits create_connection resumes before data_received (the
    stock loop queues its reader behind the ready queue)."""
    loop = any_loop

    async def main():
        seen = []
        result = {}

        class P(Recorder):
            def data_received(self, data):
                seen.append("transport" in result)
                super().data_received(data)

        async def greet(reader, writer):
            writer.write(b"hello")
            await writer.drain()
            await reader.read()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: P(loop), "127.0.0.1", port)
        result["transport"] = tr
        while bytes(pr.data) != b"hello":
            await asyncio.sleep(0.001)
        assert seen and all(seen)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()

    run_in(loop, main())


def test_engine_view_receive_is_released_after_the_callback(loop):
    """Engine.recv(view=True), what a BufferedProtocol's transport uses: the
    callback gets a read-only memoryview of the pool buffer (no bytes object),
    released as soon as the callback returns."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    kept = []
    got = []

    def cb(res, more, data):
        if res > 0:
            assert type(data) is memoryview and data.readonly
            got.append(bytes(data))
            kept.append(data)

    try:
        ud = loop._engine.recv(a.fileno(), cb, multishot=True, view=True)
        b.send(b"pool bytes")

        async def wait():
            while not got:
                await asyncio.sleep(0.001)

        run_in(loop, wait())
        assert got == [b"pool bytes"]
        with pytest.raises(ValueError, match="released"):
            kept[0].tobytes()
        loop._engine.cancel(ud)
        run_in(loop, asyncio.sleep(0.01))
    finally:
        a.close()
        b.close()


class _Collect(asyncio.Protocol):
    """Every byte, until the EOF (``done``)."""

    def __init__(self, loop):
        self.data = bytearray()
        self.done = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        if not self.done.done():
            self.done.set_result(bytes(self.data))

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("lost before the EOF"))


def _connected(kind, res_tracker):
    """(ours, peer): a connected Unix or TCP stream pair, ours non-blocking."""
    if kind == "unix":
        a, b = socket.socketpair()
    else:
        with socket.create_server(("127.0.0.1", 0)) as lst:
            b = socket.create_connection(lst.getsockname(), timeout=5)
            lst.settimeout(5)
            a, _ = lst.accept()
    for s in (a, b):
        res_tracker.sock(s)
    a.setblocking(False)
    b.settimeout(10)
    return a, b


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_new_transport_gets_every_byte_a_racing_writer_sends(any_loop, res_tracker, kind):
    """A new connection's first receive takes a short read as the socket
    read empty on epoll (decision 745): bytes a writer thread sends while
    the transport starts reading, right after that read or before its
    registration, still come, whole and in order, and so does the EOF.
    20 connections, the first bytes sent before the transport is made."""
    import random
    import threading

    async def one(i):
        a, b = _connected(kind, res_tracker)
        rnd = random.Random(i)
        chunks = [bytes([65 + j % 26]) * rnd.randint(1, 3000) for j in range(40)]
        b.sendall(chunks[0])

        def writer():
            for c in chunks[1:]:
                b.sendall(c)
            b.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=writer)
        _, proto = await any_loop.connect_accepted_socket(lambda: _Collect(any_loop), a)
        t.start()
        try:
            got = await asyncio.wait_for(proto.done, 10)
        finally:
            t.join(10)
        proto.transport.close()
        assert got == b"".join(chunks)

    async def main():
        for i in range(20):
            await one(i)

    run_in(any_loop, main(), timeout=60)


def test_a_seqpacket_transport_reads_every_record(any_loop, res_tracker):
    """A stream transport made (through the loop's own
    _make_socket_transport: the public calls refuse one) on a SOCK_SEQPACKET
    socket does not tell the engine it is a stream socket (decision 745), so
    a record shorter than the buffer says nothing about the next: the three
    queued before it reads, and two sent later, all come."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        res_tracker.sock(s)
    a.setblocking(False)
    for m in (b"one", b"two", b"three"):
        b.send(m)

    async def main():
        proto = _Collect(any_loop)
        tr = any_loop._make_socket_transport(a, proto)
        if not is_stock(any_loop):
            assert tr._stream_sock is False
        while len(proto.data) < 11:
            await asyncio.sleep(0.001)
        for m in (b"four", b"five"):
            b.send(m)
        while len(proto.data) < 19:
            await asyncio.sleep(0.001)
        tr.close()
        return bytes(proto.data)

    assert run_in(any_loop, main()) == b"onetwothreefourfive"
