"""Transport edge cases, same on io_uring, epoll and the stock loop: what a
protocol sees when it misbehaves, when the peer goes away, while reading is
paused, with many small writes, sendfile, TLS upgrades and server objects."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import fcntl
import gc
import logging
import os
import socket
import ssl
import struct
import sys
import termios
import time
import warnings

import pytest
from conftest import is_stock
from transport_helpers import pattern, plain_listener, run_in, tloop, tls, until, wait_for

assert tloop and tls  # fixtures, imported for the tests below

MiB = 1 << 20


async def _connected(loop, factory):
    """(transport, protocol, peer): a transport on loop and a plain socket peer."""
    lst = plain_listener()
    with lst:
        conn = loop.create_connection(factory, *lst.getsockname())
        (tr, proto), (peer, _) = await wait_for(asyncio.gather(conn, loop.sock_accept(lst)))
    return tr, proto, peer


class Recorder(asyncio.Protocol):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events: list = []
        self.buf = bytearray()
        self.lost = loop.create_future()
        self.eof = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()
        self.events.append("made")

    def data_received(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.buf += data

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return True

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


def _log_count(caplog, text: str) -> int:
    return sum(1 for r in caplog.records if text in r.getMessage())


def test_writes_after_close_are_dropped_then_warned(tloop, caplog):
    """After close(), write() drops the data; from the 5th such write on, each
    one logs 'socket.send() raised exception.' (the stock threshold)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        with peer:
            tr.close()
            assert await wait_for(proto.lost) is None
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(10):
                    tr.write(b"late")
            assert _log_count(caplog, "socket.send() raised exception.") == 6
            peer.settimeout(5)
            assert peer.recv(100) == b""  # nothing of it left: EOF

    run_in(tloop, main())


def test_data_received_raises(tloop, caplog):
    """An exception from data_received: logged as a fatal error, the transport
    closed, connection_lost gets that exception."""
    boom = ZeroDivisionError("boom")

    class Bad(Recorder):
        def data_received(self, data):
            raise boom

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Bad)
        with peer:
            with caplog.at_level(logging.ERROR, logger="asyncio"):
                await wait_for(loop.sock_sendall(peer, b"x"))
                exc = await wait_for(proto.lost)
            assert exc is boom
            assert tr.is_closing()
            assert _log_count(caplog, "Fatal error: protocol.data_received() call failed.") == 1

    run_in(tloop, main())


def test_eof_held_while_paused(tloop):
    """Data and EOF that arrive while reading is paused reach the protocol only
    after resume_reading(), data first, then eof_received."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        with peer:
            tr.pause_reading()
            data = pattern(200_000, 30)
            await wait_for(loop.sock_sendall(peer, data))
            peer.shutdown(socket.SHUT_WR)
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert proto.events == ["made"]
            tr.resume_reading()
            await wait_for(proto.eof)
            assert proto.events == ["made", "data", "eof"]
            assert proto.buf == data
            tr.close()
            assert await wait_for(proto.lost) is None

    run_in(tloop, main())


class _KeepOpen(Recorder):
    """Keeps the transport open at EOF and counts every eof_received."""

    def eof_received(self):
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return True


def test_resume_after_eof_reads_eof_again(tloop):
    """A transport kept open at EOF, paused and resumed: the stock transport
    adds its reader again and calls eof_received a second time (the socket
    reads EOF again); so does ours (decision 461, found by
    tools/difffuzz.py)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, _KeepOpen)
        with peer:
            peer.shutdown(socket.SHUT_WR)
            await wait_for(proto.eof)
            tr.pause_reading()
            tr.resume_reading()
            await until(lambda: proto.events.count("eof") == 2, "the second eof_received")
            for _ in range(5):
                await asyncio.sleep(0)
            assert proto.events == ["made", "eof", "eof"]
            assert not tr.is_closing()
            tr.close()
            assert await wait_for(proto.lost) is None

    run_in(tloop, main())


def test_write_eof_after_reset_raises(tloop):
    """write_eof() with nothing queued on a connection the peer has reset:
    the stock transport's shutdown() raises OSError(ENOTCONN) to the caller;
    ours submitted the shutdown and dropped its error (decision 462, found
    by tools/difffuzz.py)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, _KeepOpen)
        peer.close()  # FIN; the write below then draws its RST
        await wait_for(proto.eof)
        tr.write(b"x" * 1000)
        sock = tr.get_extra_info("socket")

        def reset():  # tcpi_state, TCP_CLOSE == 7
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 7

        await until(lambda: tr.get_write_buffer_size() == 0 and reset(), "the reset")
        with pytest.raises(OSError) as info:
            tr.write_eof()
        assert info.value.errno == errno.ENOTCONN
        tr.close()
        assert await wait_for(proto.lost) is None

    run_in(tloop, main())


@pytest.mark.parametrize("how", ["abort", "close"])
def test_abort_with_bytes_unread_resets_the_peer(tloop, how):
    """abort() or close() from a callback queued ahead of the turn that brings bytes:
    the stock transport has not read them, so its close(2) resets the
    connection (the peer's recv: ConnectionResetError). Ours had taken them
    from the kernel (held behind _ready, never handed over): the peer got
    a clean EOF until SO_LINGER 0 (decision 463, found by
    tools/difffuzz.py)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        with peer:
            await asyncio.sleep(0)  # the transport reads
            peer.sendall(b"x" * 1000)
            for _ in range(2000):  # loopback: in our socket's queue at once
                if fcntl.ioctl(peer, termios.TIOCOUTQ, b"\0\0\0\0") == b"\0\0\0\0":
                    break
                time.sleep(0.001)
            loop.call_soon(getattr(tr, how))  # ahead of the turn's records
            assert await wait_for(proto.lost) is None
            assert proto.events == ["made", "lost"]
            peer.settimeout(5)
            with pytest.raises(ConnectionResetError):
                peer.recv(100)

    run_in(tloop, main())


def test_close_with_a_held_record_detaches_the_accepted_socket(tloop):
    """An accepted connection keeps no socket object (decision 258). A
    BufferedProtocol with a 100 B buffer pauses reading in buffer_updated:
    the rest of a 1000 B record is held; close() then resets (463, as
    stock's close with bytes unread), and setting SO_LINGER 0 made the
    socket object, which the close took for never made and dropped
    undetached: its finalizer closed the fd the engine was closing too
    (ResourceWarning "unclosed <socket.socket ...>"; decision 673, found by
    tools/difffuzz.py --fast, tcp 0)."""

    async def main():
        loop = asyncio.get_running_loop()
        made, got = loop.create_future(), loop.create_future()

        class Pauser(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(100)
                self.lost = loop.create_future()

            def connection_made(self, transport):
                self.transport = transport
                made.set_result(self)

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                self.transport.pause_reading()
                if not got.done():
                    got.set_result(nbytes)

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        srv = await loop.create_server(Pauser, "127.0.0.1", 0)
        try:
            with socket.create_connection(srv.sockets[0].getsockname()[:2], timeout=5) as peer:
                proto = await wait_for(made)
                peer.sendall(b"x" * 1000)
                assert await wait_for(got) == 100
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    proto.transport.close()
                    assert await wait_for(proto.lost) is None
                    gc.collect()
                assert [str(w.message) for w in seen if w.category is ResourceWarning] == []
                with pytest.raises(ConnectionResetError):
                    peer.recv(100)
                assert proto.transport.get_extra_info("socket").fileno() == -1
        finally:
            srv.close()
            await wait_for(srv.wait_closed())

    run_in(tloop, main())


def test_close_in_data_received_resets_the_peer(tloop):
    """A transport closed from its first data_received while the peer sends
    1 MB: the stock transport leaves the rest unread in the kernel and its
    close(2) resets; the peer's first error is ConnectionResetError. Our
    io_uring receive had taken more in the same run (its records reach the
    transport after the close was decided) and the close sent FIN; the
    peer's sends then met EPIPE. The engine's close now resets when a
    receive brings bytes the closing transport drops (decision 497, the
    plain-TCP form of TLS seed 427)."""

    class Closer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Closer)
        with peer:
            peer.setblocking(False)
            data = memoryview(b"x" * 1_000_000)
            sent, err = 0, None
            for _ in range(4000):  # bounded: each pass sleeps a turn or 1 ms
                try:
                    if sent < len(data):
                        sent += peer.send(data[sent:])
                    else:
                        peer.send(b"y")  # on until the connection's fate shows
                except BlockingIOError:
                    pass
                except OSError as exc:
                    err = exc
                    break
                await asyncio.sleep(0.001)
            assert type(err) is ConnectionResetError, repr(err)
            assert await wait_for(proto.lost) is None
            assert proto.events == ["made", "data", "lost"]

    run_in(tloop, main())


@pytest.mark.parametrize("held", [True, False], ids=["held", "in-flight"])
def test_close_between_held_parts_resets_the_peer(tloop, held):
    """A BufferedProtocol with a 16-byte buffer closes in its second
    buffer_updated, the peer's 1,000 B (one send, one record, all taken
    from the kernel) only partly fed. held: it paused reading in the first
    and resumed once our receive had ended (its final record in, no receive
    in flight), so the rest comes from the held records. in-flight: no
    pause, the C core feeds. The stock transport read 32 B and its close(2)
    finds 968 B unread: the peer's recv meets ConnectionResetError. Ours
    sent FIN (held: every kind; in-flight: epoll): the engine's close
    completed within close_fd, so `_dropped`'s `close_reset` came too late;
    now `_close_fd` sees the core's feed_rest and resets itself (decisions
    497, 622 (d), 634)."""

    class Pauser(asyncio.BufferedProtocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()
            self.paused = asyncio.get_running_loop().create_future()
            self.got = 0

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return bytearray(16)

        def buffer_updated(self, nbytes):
            self.got += nbytes
            if not self.paused.done():
                if held:
                    self.transport.pause_reading()
                self.paused.set_result(None)
            else:
                self.transport.close()

        def eof_received(self):
            return None

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        loop = asyncio.get_running_loop()
        lst = plain_listener()
        with lst:
            conn = loop.create_connection(Pauser, *lst.getsockname())
            (tr, proto), (peer, _) = await wait_for(asyncio.gather(conn, loop.sock_accept(lst)))
        with peer:
            peer.sendall(b"x" * 1000)  # one send: one record on every uringloop kind
            await wait_for(proto.paused)
            core = getattr(tr, "_core", None)
            if held:
                for _ in range(1000):  # bounded: the cancelled receive's final record
                    if core is None or not core.recv_ud:
                        break
                    await asyncio.sleep(0.001)
                assert core is None or not core.recv_ud
                tr.resume_reading()
            assert await wait_for(proto.lost) is None
            assert proto.got == 32
            peer.settimeout(10)
            with pytest.raises(ConnectionResetError):
                while peer.recv(4096):  # nothing is sent to it: b"" would be FIN
                    pass

    run_in(tloop, main())


def test_write_after_peer_reset_reports_the_reset(tloop):
    """The peer resets (SO_LINGER 0), then a write() of more than the
    high-water mark runs from a callback queued ahead of the turn's records.
    The stock write() sends at once and send(2) meets the pending reset:
    connection_lost(ConnectionResetError). Our receive had taken the reset
    (its record held behind _ready), so the send got EPIPE and ours ended
    with BrokenPipeError until decision 478 (tools/difffuzz.py seed 2580)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        await asyncio.sleep(0)  # the transport reads
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST
        loop.call_soon(tr.write, b"x" * (128 * 1024))  # ahead of the turn's records
        exc = await wait_for(proto.lost)
        assert type(exc) is ConnectionResetError, repr(exc)
        assert exc.errno == errno.ECONNRESET
        assert proto.events == ["made", "lost"]

    run_in(tloop, main())


def test_connection_lost_once_and_fd_closed(tloop):
    """connection_lost comes once; the fd is still open then and closed
    right after, on every loop (the stock loop's _call_connection_lost
    closes the socket after connection_lost; ours holds the engine's close
    until then, decision 873)."""

    async def main():
        loop = asyncio.get_running_loop()
        seen = {}

        class P(Recorder):
            def connection_lost(self, exc):
                try:
                    os.fstat(self.fd)
                    seen["open_in_lost"] = True
                except OSError:
                    seen["open_in_lost"] = False
                super().connection_lost(exc)

        tr, proto, peer = await _connected(loop, P)
        with peer:
            tr.write(b"bye")
            tr.close()
            tr.close()  # a second close is a no-op
            assert await wait_for(proto.lost) is None
            await asyncio.sleep(0)
            assert proto.events == ["made", "lost"]
            with pytest.raises(OSError):
                os.fstat(proto.fd)
            assert seen["open_in_lost"] is True
            peer.settimeout(5)
            assert peer.recv(10) == b"bye"

    run_in(tloop, main())


def test_abort_drops_queued_data(tloop):
    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        with peer:
            tr.write(pattern(32 * MiB, 31))  # more than loopback buffers take
            await asyncio.sleep(0.01)
            tr.abort()
            assert tr.is_closing()
            assert await wait_for(proto.lost) is None
            assert proto.events == ["made", "lost"]
            got = 0
            peer.setblocking(False)
            while True:
                try:
                    chunk = await wait_for(loop.sock_recv(peer, MiB))
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += len(chunk)
            assert got < 32 * MiB

    run_in(tloop, main())


@pytest.mark.parametrize("limits", [None, (64, 256)], ids=["default-limits", "tiny-limits"])
def test_many_small_writes_keep_order(tloop, limits):
    """Tens of thousands of small writes in one turn and across turns, mixed
    with writelines and memoryviews, arrive whole and in order; with tiny
    write-buffer limits too (every few writes cross the high-water mark)."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        if limits:
            tr.set_write_buffer_limits(low=limits[0], high=limits[1])
        expected = bytearray()
        with peer:
            for turn in range(5):
                for i in range(10_000):
                    piece = (b"%d:%d," % (turn, i)) * (1 + i % 3)
                    if i % 7 == 0:
                        tr.writelines([piece[:2], memoryview(piece)[2:]])
                    elif i % 5 == 0:
                        tr.write(bytearray(piece))
                    else:
                        tr.write(piece)
                    expected += piece
                await asyncio.sleep(0)
            tr.write_eof()
            got = bytearray()
            while chunk := await wait_for(loop.sock_recv(peer, MiB)):
                got += chunk
            assert got == expected
            tr.close()

    run_in(tloop, main())


def test_write_then_mutate_bytearray(tloop):
    """A bytearray changed right after write() is sent as it was at write()."""

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        with peer:
            buf = bytearray(b"original")
            tr.write(buf)
            buf[:] = b"MUTATED!"
            tr.write_eof()
            got = bytearray()
            while chunk := await wait_for(loop.sock_recv(peer, 100)):
                got += chunk
            assert got == b"original"
            tr.close()

    run_in(tloop, main())


def test_refused_connection(tloop):
    async def main():
        lst = plain_listener()
        addr = lst.getsockname()
        lst.close()  # nothing listens there now
        with pytest.raises(ConnectionRefusedError):
            await wait_for(asyncio.open_connection(*addr))
        loop = asyncio.get_running_loop()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp, pytest.raises(ValueError, match="Stream Socket was expected"):
            await loop.create_connection(asyncio.Protocol, sock=udp)

    run_in(tloop, main())


def test_sendfile(tloop, tmp_path):
    """loop.sendfile on a transport: the file range arrives exact, the file
    position ends after it."""
    path = tmp_path / "blob"
    data = pattern(5 * MiB + 123, 32)
    path.write_bytes(data)

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, Recorder)
        with peer, open(path, "rb") as f:
            count = len(data) - 1000
            head = pattern(2 * MiB, 34)
            tr.write(head)  # queued data leaves before the file

            async def receive():
                got = bytearray()
                while len(got) < len(head) + count:
                    chunk = await loop.sock_recv(peer, MiB)
                    assert chunk
                    got += chunk
                return got

            sent, got = await wait_for(asyncio.gather(loop.sendfile(tr, f, 7, count), receive()))
            assert sent == count
            assert got[: len(head)] == head
            assert got[len(head) :] == data[7 : 7 + count]
            assert f.tell() == 7 + count
            # an offset at the end of the file sends nothing
            assert await wait_for(loop.sendfile(tr, f, len(data))) == 0
            tr.write(b"after")  # the transport still works
            assert await wait_for(loop.sock_recv(peer, 10)) == b"after"
            tr.close()

    run_in(tloop, main(), 30)


def test_tls_streams_and_start_tls(tloop, tls):
    """TLS through asyncio's sslproto over the loop's transports: an 8 MiB echo
    both ways at once, then a plain connection upgraded with loop.start_tls on
    both sides."""

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.server_context())
        port = server.sockets[0].getsockname()[1]
        reader, writer = await wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.client_context(), server_hostname="localhost"
            )
        )
        assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
        assert writer.get_extra_info("peercert")["subjectAltName"]
        data = pattern(8 * MiB, 33)

        async def send():
            for off in range(0, len(data), MiB):
                writer.write(data[off : off + MiB])
                await writer.drain()

        async def receive():
            return await reader.readexactly(len(data))

        _, got = await wait_for(asyncio.gather(send(), receive()), 30)
        assert got == data
        writer.close()
        await wait_for(writer.wait_closed())
        server.close()
        await wait_for(server.wait_closed())

        # start_tls, protocol level, both sides
        upgraded = loop.create_future()

        class ServerSide(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                if data == b"STARTTLS":
                    self.transport.pause_reading()  # nothing more as plain text
                    loop.create_task(self.upgrade())
                else:
                    self.transport.write(b"tls:" + data)

            async def upgrade(self):
                new = await loop.start_tls(
                    self.transport, self, tls.server_context(), server_side=True
                )
                self.transport = new
                upgraded.set_result(new)

        server = await loop.create_server(ServerSide, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proto = Recorder()
        tr, _ = await wait_for(loop.create_connection(lambda: proto, "127.0.0.1", port))
        tr.write(b"STARTTLS")
        await asyncio.sleep(0)
        new_tr = await wait_for(
            loop.start_tls(tr, proto, tls.client_context(), server_hostname="localhost")
        )
        server_tr = await wait_for(upgraded)
        assert new_tr.get_extra_info("ssl_object") is not None
        assert server_tr.get_extra_info("ssl_object") is not None
        new_tr.write(b"hello")
        while len(proto.buf) < 9:
            await asyncio.sleep(0.005)
        assert proto.buf == b"tls:hello"
        new_tr.close()
        await wait_for(proto.lost)
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main(), 60)


def test_server_object(tloop):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False)
        assert server.get_loop() is loop
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        (sock,) = server.sockets
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        port = sock.getsockname()[1]
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        reader, writer = await wait_for(asyncio.open_connection("127.0.0.1", port))
        writer.close()
        await wait_for(writer.wait_closed())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wait_for(task)
        assert not server.is_serving()
        await wait_for(server.wait_closed())
        with pytest.raises(ConnectionRefusedError):
            await wait_for(asyncio.open_connection("127.0.0.1", port))

        # closed under serve_forever: serve_forever ends with CancelledError
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await wait_for(task)
        await wait_for(server.wait_closed())
        assert not server.is_serving()

    run_in(tloop, main())


def test_accept_out_of_fds_resumes(tloop, caplog, monkeypatch):
    """accept() failing with EMFILE: the server logs it, stops accepting for a
    while and resumes, and every connection queued meanwhile is served. The
    while (ACCEPT_RETRY_DELAY) is 0.1 s here, not 1 s (decision 561)."""
    import resource

    monkeypatch.setattr(asyncio.constants, "ACCEPT_RETRY_DELAY", 0.1)

    from transport_helpers import open_fds

    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        lst = plain_listener(64)
        port = lst.getsockname()[1]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(10)]
        server = None
        try:
            # No new fd can be made from here on (the limit is the lowest free fd
            # number; the open fds above it stay usable). The server starts
            # serving only now: io_uring takes the limit when the accept is
            # armed, as accept(2) takes it when called.
            used = open_fds()
            lowest_free = next(n for n in range(len(used) + 1) if n not in used)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            server = await asyncio.start_server(echo, sock=lst)
            for c in clients:
                c.settimeout(5)
                c.connect(("127.0.0.1", port))  # lands in the accept queue
                c.setblocking(False)
            with caplog.at_level(logging.ERROR, logger="asyncio"):
                for _ in range(50):
                    await asyncio.sleep(0.01)
                    if _log_count(caplog, "socket.accept() out of system resource"):
                        break
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert _log_count(caplog, "socket.accept() out of system resource") >= 1
            for i, c in enumerate(clients):
                await wait_for(loop.sock_sendall(c, b"hello %d" % i))
            for i, c in enumerate(clients):
                assert await wait_for(loop.sock_recv(c, 100)) == b"hello %d" % i
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for c in clients:
                c.close()
            if server is None:
                lst.close()
            else:
                server.close()
                await wait_for(server.wait_closed())

    run_in(tloop, main(), 30)


# --------------------------------------------------------------------------
# what the protocol does inside its own callbacks, with more data already there


async def _preloaded(loop, factory, data: bytes):
    """A transport whose peer sent ``data`` (and nothing else) before the
    transport's first receive can run: several receives are ready at once."""
    lst = plain_listener()
    with lst:
        peer = socket.create_connection(lst.getsockname(), timeout=5)
        conn, _ = lst.accept()
    peer.setblocking(False)
    try:
        sent = peer.send(data)  # what the kernel takes now, before the loop reads
        conn.setblocking(False)
        tr, proto = await loop.connect_accepted_socket(factory, sock=conn)
    except BaseException:
        peer.close()
        conn.close()
        raise
    return tr, proto, peer, sent


def test_close_inside_data_received_stops_delivery(tloop):
    """close() in data_received: no further data_received or eof_received,
    although more data was waiting; connection_lost(None) once."""

    class P(Recorder):
        calls = 0

        def data_received(self, data):
            self.calls += 1
            super().data_received(data)
            self.transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer, sent = await _preloaded(loop, P, pattern(2 * MiB, 40))
        with peer:
            assert await wait_for(proto.lost) is None
            for _ in range(5):
                await asyncio.sleep(0.005)
            assert proto.calls == 1
            assert proto.events == ["made", "data", "lost"]
            assert 0 < len(proto.buf) < sent

    run_in(tloop, main())


def test_pause_inside_data_received_with_data_waiting(tloop):
    """pause_reading() in data_received while more data already waits: nothing
    more arrives until resume_reading(); then the rest, exact and in order."""

    class P(Recorder):
        paused_calls = 0

        def data_received(self, data):
            if not self.transport.is_reading():
                self.paused_calls += 1
            super().data_received(data)
            self.transport.pause_reading()

    async def main():
        loop = asyncio.get_running_loop()
        data = pattern(2 * MiB, 41)
        tr, proto, peer, sent = await _preloaded(loop, P, data)
        with peer:
            peer.shutdown(socket.SHUT_WR)
            while not proto.buf:
                await asyncio.sleep(0.005)
            for _ in range(200):  # resume after each delivery until EOF
                first = len(proto.buf)
                for _ in range(3):
                    await asyncio.sleep(0.002)
                assert len(proto.buf) == first, "data arrived while paused"
                if proto.eof.done():
                    break
                tr.resume_reading()
                while len(proto.buf) == first and not proto.eof.done():
                    await asyncio.sleep(0.001)
            await wait_for(proto.eof)
            assert proto.paused_calls == 0
            assert proto.buf == data[:sent]
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main(), 30)


def test_abort_inside_data_received(tloop):
    class P(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.abort()

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer, sent = await _preloaded(loop, P, pattern(MiB, 42))
        with peer:
            assert await wait_for(proto.lost) is None
            await asyncio.sleep(0.01)
            assert proto.events == ["made", "data", "lost"]

    run_in(tloop, main())


def test_set_protocol_mid_stream(tloop):
    """A Protocol reads a header line, then hands the transport to a
    BufferedProtocol with set_protocol(): the body goes to the new one, exact."""
    body = pattern(3 * MiB, 43)

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        class Body(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(10_000)
                self.got = bytearray()

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                self.got += self.buf[:nbytes]

            def eof_received(self):
                done.set_result(bytes(self.got))

            def connection_lost(self, exc):
                pass

        class Head(Recorder):
            def data_received(self, data):
                super().data_received(data)
                assert data == b"HEAD\n"
                self.transport.set_protocol(Body())
                self.transport.write(b"go")

        tr, proto, peer = await _connected(loop, Head)
        with peer:
            await wait_for(loop.sock_sendall(peer, b"HEAD\n"))
            assert await wait_for(loop.sock_recv(peer, 2)) == b"go"
            assert isinstance(tr.get_protocol(), Body)
            await wait_for(loop.sock_sendall(peer, body))
            peer.shutdown(socket.SHUT_WR)
            assert await wait_for(done) == body
            assert proto.buf == b"HEAD\n"

    run_in(tloop, main())


def test_pause_resume_churn_through_streams(tloop):
    """A StreamReader with a tiny limit pauses and resumes its transport
    thousands of times; reads of odd sizes still get every byte, in order."""
    data = pattern(4 * MiB, 44)

    async def main():
        loop = asyncio.get_running_loop()
        lst = plain_listener()
        with lst:
            conn = asyncio.open_connection(*lst.getsockname(), limit=64)
            (reader, writer), (server_side, _) = await wait_for(
                asyncio.gather(conn, loop.sock_accept(lst))
            )
        with server_side:
            sender = loop.create_task(loop.sock_sendall(server_side, data))
            got = bytearray()
            n = 0
            while len(got) < len(data):
                n += 1
                size = 1 + (n * 7919) % 3000
                chunk = await wait_for(reader.read(size))
                assert chunk
                got += chunk
                if n % 97 == 0:
                    await asyncio.sleep(0)
            await wait_for(sender)
            assert got == data
            writer.close()
            await wait_for(writer.wait_closed())

    run_in(tloop, main(), 60)


# --------------------------------------------------------------------------
# connection set-up options


def test_ssl_handshake_timeout(tloop, tls):
    """A server that accepts and never answers the TLS handshake: the client's
    ssl_handshake_timeout aborts it with ConnectionAbortedError, as stock."""

    async def main():
        loop = asyncio.get_running_loop()
        lst = plain_listener()
        with lst:
            conn = loop.create_connection(
                asyncio.Protocol,
                *lst.getsockname(),
                ssl=tls.client_context(),
                server_hostname="localhost",
                ssl_handshake_timeout=0.3,
            )
            task = loop.create_task(conn)
            peer, _ = await wait_for(loop.sock_accept(lst))
            with peer:
                with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
                    await wait_for(task)

    run_in(tloop, main())


def test_local_addr_and_happy_eyeballs(tloop):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        local = plain_listener()
        local_port = local.getsockname()[1]
        local.close()
        proto = Recorder()
        tr, _ = await wait_for(
            loop.create_connection(
                lambda: proto, "127.0.0.1", port, local_addr=("127.0.0.1", local_port)
            )
        )
        assert tr.get_extra_info("sockname") == ("127.0.0.1", local_port)
        tr.close()
        await wait_for(proto.lost)
        # "localhost" may resolve to ::1 first, where nothing listens
        proto = Recorder()
        tr, _ = await wait_for(
            loop.create_connection(lambda: proto, "localhost", port, happy_eyeballs_delay=0.05)
        )
        assert tr.get_extra_info("peername")[:2] == ("127.0.0.1", port)
        tr.close()
        await wait_for(proto.lost)
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


def test_unix_server_replaces_stale_socket_file(tloop, tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens

    async def main():
        server = await asyncio.start_unix_server(lambda r, w: w.close(), path)
        reader, writer = await wait_for(asyncio.open_unix_connection(path))
        assert await wait_for(reader.read()) == b""
        writer.close()
        await wait_for(writer.wait_closed())
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


def test_pause_in_connection_made(tloop):
    """pause_reading() from connection_made: nothing is read until resumed."""

    class P(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    if is_stock(tloop) and sys.version_info < (3, 11):
        pytest.skip(
            "the stock loop of 3.10 arms its reader after connection_made even when "
            "pause_reading() was called there (fixed in 3.11)"
        )

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, P)
        with peer:
            await wait_for(loop.sock_sendall(peer, b"early"))
            for _ in range(10):
                await asyncio.sleep(0.002)
            assert proto.events == ["made"] and not tr.is_reading()
            tr.resume_reading()
            while len(proto.buf) < 5:
                await asyncio.sleep(0.002)
            assert proto.buf == b"early"
            tr.close()
            await wait_for(proto.lost)

    run_in(tloop, main())


def test_sendfile_over_tls(tloop, tls, tmp_path):
    """loop.sendfile on a TLS transport takes the read-and-write fallback."""
    path = tmp_path / "blob"
    data = pattern(3 * MiB + 5, 45)
    path.write_bytes(data)

    async def main():
        loop = asyncio.get_running_loop()
        received = loop.create_future()

        async def handle(reader, writer):
            received.set_result(await reader.readexactly(len(data)))
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.server_context())
        port = server.sockets[0].getsockname()[1]
        proto = Recorder()
        tr, _ = await wait_for(
            loop.create_connection(
                lambda: proto, "127.0.0.1", port, ssl=tls.client_context(),
                server_hostname="localhost",
            )
        )  # fmt: skip
        with open(path, "rb") as f:
            with pytest.raises(RuntimeError, match="native sendfile is not supported"):
                await loop.sendfile(tr, f, fallback=False)
            assert await wait_for(loop.sendfile(tr, f), 30) == len(data)
        assert await wait_for(received) == data
        tr.close()
        await wait_for(proto.lost)
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main(), 60)


def test_server_on_several_hosts(tloop):
    hosts = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6) as s6:
            s6.bind(("::1", 0))
        hosts.append("::1")
    except OSError:
        pass  # no IPv6 loopback here: one host still checks the list form

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, hosts, 0, reuse_address=True)
        assert len(server.sockets) == len(hosts)
        for s in server.sockets:
            host, port = s.getsockname()[:2]
            reader, writer = await wait_for(asyncio.open_connection(host, port))
            writer.close()
            await wait_for(writer.wait_closed())
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


@pytest.mark.skipif(
    not hasattr(asyncio.Server, "close_clients"), reason="Server.close_clients is new in 3.13"
)
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_server_close_clients(tloop, how):
    async def main():
        loop = asyncio.get_running_loop()
        server_protos = []

        def factory():
            p = Recorder()
            server_protos.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [
            await wait_for(asyncio.open_connection("127.0.0.1", port)) for _ in range(3)
        ]
        while len(server_protos) < 3:
            await asyncio.sleep(0.002)
        server.close()
        getattr(server, how)()
        await wait_for(server.wait_closed())  # returns once every connection is gone
        assert all(p.lost.done() for p in server_protos)
        for reader, writer in clients:
            try:
                assert await wait_for(reader.read()) == b""
            except ConnectionResetError:
                assert how == "abort_clients"
            writer.close()
            await wait_for(writer.wait_closed())

    run_in(tloop, main())


# --------------------------------------------------------------------------
# the loop stops or closes with transports and servers still open


def test_write_just_before_stop_leaves(tloop):
    """A write in the loop's last callback before stop(), or from a coroutine
    run_until_complete() just finished, reaches the peer without another turn."""
    lst = plain_listener()
    with lst:
        tr, _ = run_in(tloop, tloop.create_connection(asyncio.Protocol, *lst.getsockname()))
        lst.setblocking(True)
        lst.settimeout(5)
        peer, _ = lst.accept()
    with peer:
        peer.settimeout(5)
        tloop.call_soon(tr.write, b"one")
        tloop.call_soon(tloop.stop)
        tloop.run_forever()
        assert peer.recv(10) == b"one"

        async def write():
            tr.write(b"two")

        tloop.run_until_complete(write())
        assert peer.recv(10) == b"two"
        tr.close()
        run_in(tloop, asyncio.sleep(0.01))
        assert peer.recv(10) == b""


def test_loop_close_releases_an_unclosed_server(tloop):
    """A server the program never closed: once the loop is closed and the
    server dropped, its listening socket is closed (by the garbage collector,
    with a ResourceWarning, as on the stock loop), the port free again."""
    import gc
    import warnings

    from transport_helpers import open_fds

    before = open_fds()

    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        return server.sockets[0].getsockname()[1]

    port = run_in(tloop, main())
    tloop.close()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        left = {fd: what for fd, what in open_fds().items() if fd not in before}
        assert not left, f"still open after loop.close(): {left}"
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
    finally:
        # if this failed, close what the loop kept so the fixture's own fd
        # check does not report the same leak a second time
        for sock in list(getattr(tloop, "_acceptors", {})):
            sock.close()


# --------------------------------------------------------------------------
# flow control through asyncio's TLS layer (sslproto over the loop's transport)


def test_tls_paused_reader_stops_the_peer(tloop, tls):
    """Over TLS (sslproto on the loop's transport): 12 MiB arrive exact; then a
    paused TLS reader stops the peer's drain() (nothing is read from the socket
    underneath) until it resumes; every byte arrives, in order."""
    data = pattern(12 * MiB, 46)

    async def main():
        loop = asyncio.get_running_loop()
        handler_reader = loop.create_future()

        async def handle(reader, writer):
            handler_reader.set_result((reader, writer))

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.server_context())
        port = server.sockets[0].getsockname()[1]
        proto = Recorder()
        tr, _ = await wait_for(
            loop.create_connection(
                lambda: proto, "127.0.0.1", port, ssl=tls.client_context(),
                server_hostname="localhost",
            )
        )  # fmt: skip
        reader, writer = await wait_for(handler_reader)
        tr.write(data)
        got = await wait_for(reader.readexactly(len(data)), 30)
        assert got == data

        # reading side: the client pauses; the server's drain() stops
        tr.pause_reading()
        sent = 0
        chunk = pattern(256 * 1024, 47)
        stalled = False
        while sent < 256 * MiB:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except asyncio.TimeoutError:
                stalled = True
                break
            sent += len(chunk)
        assert stalled, "a paused TLS reader kept taking data"
        received_while_paused = len(proto.buf)
        for _ in range(5):
            await asyncio.sleep(0.005)
        assert len(proto.buf) == received_while_paused
        tr.resume_reading()
        await wait_for(writer.drain(), 30)
        sent += len(chunk)
        writer.close()
        # the TLS close: eof_received (3.11+ sslproto) or, on 3.10, the loss
        await wait_for(
            asyncio.wait([proto.eof, proto.lost], return_when=asyncio.FIRST_COMPLETED), 30
        )
        assert len(proto.buf) == sent
        assert proto.buf == chunk * (sent // len(chunk))
        tr.close()
        await wait_for(proto.lost)
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main(), 90)


# --------------------------------------------------------------------------
# context variables seen by protocol callbacks

_var: contextvars.ContextVar[str] = contextvars.ContextVar("_var", default="unset")


def test_protocol_callbacks_context(tloop):
    """What a context variable reads in each protocol callback, client and
    server side, as on the stock loop: the value of the task that made the
    transport (or the server), and what data_received itself set persists to
    the later callbacks of that transport; connection_made's own is its own."""

    async def main():
        loop = asyncio.get_running_loop()
        seen = {"client": [], "server": []}

        class P(asyncio.Protocol):
            def __init__(self, side):
                self.side = side
                self.n = 0

            def connection_made(self, transport):
                self.transport = transport
                seen[self.side].append(("made", _var.get()))
                _var.set(f"{self.side}-made")

            def data_received(self, data):
                self.n += 1
                seen[self.side].append(("data", _var.get()))
                _var.set(f"{self.side}-data{self.n}")
                if self.side == "server" and data.endswith(b"!"):
                    self.transport.write(b"ok")
                    self.transport.close()

            def eof_received(self):
                seen[self.side].append(("eof", _var.get()))

            def connection_lost(self, exc):
                seen[self.side].append(("lost", _var.get()))
                done[self.side].set_result(None)

        done = {"client": loop.create_future(), "server": loop.create_future()}
        _var.set("task-server")
        server = await loop.create_server(lambda: P("server"), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _var.set("task-client")
        tr, proto = await wait_for(loop.create_connection(lambda: P("client"), "127.0.0.1", port))
        tr.write(b"one")
        await asyncio.sleep(0.02)
        tr.write(b"two!")
        await wait_for(asyncio.gather(*done.values()))
        assert _var.get() == "task-client"
        server.close()
        await wait_for(server.wait_closed())
        return seen

    seen = run_in(tloop, main())
    assert seen["client"] == [
        ("made", "task-client"),
        ("data", "task-client"),
        ("eof", "client-data1"),
        ("lost", "client-data1"),
    ], seen
    assert seen["server"][0] == ("made", "task-server"), seen
    assert seen["server"][1] == ("data", "task-server"), seen
    assert seen["server"][-1] == ("lost", f"server-data{len(seen['server']) - 2}"), seen


@pytest.mark.parametrize("how", ["close", "abort", "write-close"])
def test_close_inside_connection_made(tloop, how):
    """close()/abort() (after a write, for write-close) inside connection_made:
    create_connection still returns, connection_lost(None) comes once, the peer
    gets the data written before close() (and nothing after abort())."""

    class P(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            if how == "write-close":
                transport.write(b"hello and bye")
                transport.close()
            else:
                getattr(transport, how)()

    async def main():
        loop = asyncio.get_running_loop()
        tr, proto, peer = await _connected(loop, P)
        with peer:
            assert tr.is_closing()
            assert await wait_for(proto.lost) is None
            got = bytearray()
            while True:
                try:
                    chunk = await wait_for(loop.sock_recv(peer, 100))
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            assert got == (b"hello and bye" if how == "write-close" else b"")
            await asyncio.sleep(0)
            assert proto.events == ["made", "lost"]

    run_in(tloop, main())


def test_reading_while_the_ready_queue_is_never_empty(tloop):
    """A task that yields on every turn keeps the ready queue busy, so every
    receive waits behind it (the stock loop queues its reader callback there
    too). Through that path: pause_reading() in data_received and
    resume_reading() from a later callback, thousands of times; no data while
    paused, every byte in order, then EOF, then connection_lost once."""
    data = pattern(4 * MiB, 48)

    async def main():
        loop = asyncio.get_running_loop()
        stop = False

        async def spin():
            while not stop:
                await asyncio.sleep(0)

        spinner = loop.create_task(spin())

        class P(Recorder):
            bad = 0
            pauses = 0

            def data_received(self, data):
                if not self.transport.is_reading():
                    self.bad += 1
                super().data_received(data)
                self.pauses += 1
                self.transport.pause_reading()
                loop.call_soon(self.transport.resume_reading)

        try:
            tr, proto, peer = await _connected(loop, P)
            with peer:
                await wait_for(loop.sock_sendall(peer, data), 30)
                peer.shutdown(socket.SHUT_WR)
                await wait_for(proto.eof, 30)
                assert proto.bad == 0
                assert proto.buf == data
                assert proto.pauses > 1
                tr.close()
                assert await wait_for(proto.lost) is None
                assert proto.events == ["made", "data", "eof", "lost"]
        finally:
            stop = True
            await wait_for(spinner)

    run_in(tloop, main(), 60)


def test_reuse_port_servers_share_a_port(tloop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT on this platform")

    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def main():
        s1 = await asyncio.start_server(echo, "127.0.0.1", 0, reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        s2 = await asyncio.start_server(echo, "127.0.0.1", port, reuse_port=True)

        async def one(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"%d" % i)
            got = await reader.read()
            writer.close()
            await writer.wait_closed()
            return got == b"%d" % i

        assert all(await wait_for(asyncio.gather(*(one(i) for i in range(50)))))
        for s in (s1, s2):
            s.close()
            await wait_for(s.wait_closed())

    run_in(tloop, main())


def test_unix_server_on_a_given_socket_and_cleanup(tloop, tmp_path):
    """create_unix_server(sock=...) serves a pre-bound socket; closing the server
    removes the socket file where the Python's loop does (3.13's cleanup_socket)."""
    path = str(tmp_path / "given.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(asyncio.Protocol, sock=sock)
        reader, writer = await wait_for(asyncio.open_unix_connection(path))
        writer.close()
        await wait_for(writer.wait_closed())
        server.close()
        await wait_for(server.wait_closed())

        path2 = str(tmp_path / "own.sock")
        server = await loop.create_unix_server(asyncio.Protocol, path2)
        assert os.path.exists(path2)
        server.close()
        await wait_for(server.wait_closed())
        return os.path.exists(path2)

    still_there = run_in(tloop, main())
    # 3.13 removes the file it created; earlier Pythons leave it
    assert still_there is (sys.version_info < (3, 13))
