"""connection_lost runs when the stock loop runs it (decision 509).

The stock loop queues ``_call_connection_lost`` with ``call_soon`` at
``abort()``, at ``close()`` once nothing is left to send, and at a read pipe's
EOF; a ``call_soon`` the protocol makes right after, from inside the callback
that closed, runs after ``connection_lost``. Ours used to wait for the engine's
close record (or a pipe op's final record), which comes in the next engine run
when the close was asked for inside a receive callback: the queued callback
ran first (decision 501). Each scenario runs on the stock loop (``on_stock``)
and on the loop under test, in the same test, and the logs must be equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import socket
import time

import pytest
from transport_helpers import on_stock, run_in, tloop, tls, wait_for

assert tloop and tls  # fixtures, imported for the tests below


def _stream_pair(family):
    if family == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


def _closing_in_callback(loop, family, how, buffered):
    """The protocol's first data callback calls abort() or close() (nothing
    queued), then call_soon's two callbacks: one logs, one reads the
    transport's state; then a task awaits connection_lost and reads the peer."""

    async def main():
        log = []
        lost = loop.create_future()

        class P(asyncio.BufferedProtocol if buffered else asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.buf = bytearray(16)

            def got(self):
                log.append("data")
                getattr(self.tr, how)()
                loop.call_soon(log.append, "soon")
                loop.call_soon(self.state)

            def state(self):
                sock = self.tr.get_extra_info("socket")
                log.append(("state", self.tr.is_closing(), sock.fileno()))

            def data_received(self, data):
                self.got()

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                self.got()

            def connection_lost(self, exc):
                log.append(("lost", exc))
                lost.set_result(None)

        a, b = _stream_pair(family)
        with b:
            a.setblocking(False)
            await loop.create_connection(P, sock=a)
            b.sendall(b"x")
            await wait_for(lost)
            b.settimeout(5)
            log.append(("peer", b.recv(10)))  # the fd is closed by now: EOF
        return log

    return run_in(loop, main())


@pytest.mark.parametrize("buffered", [False, True], ids=["Protocol", "BufferedProtocol"])
@pytest.mark.parametrize("how", ["abort", "close"])
@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_stream_lost_before_callbacks_queued_after_close(tloop, family, how, buffered):
    want = on_stock(_closing_in_callback, family, how, buffered)
    assert want == ["data", ("lost", None), "soon", ("state", True, -1), ("peer", b"")]
    assert _closing_in_callback(tloop, family, how, buffered) == want


def _dgram_abort_then_sendto(loop):
    """datagram_received aborts and call_soon's a sendto to the peer: stock's
    connection_lost runs first and the sendto fails (3.11-3.13: AttributeError,
    its _fatal_error calls the cleared loop); nothing reaches the peer. A
    marker datagram sent after connection_lost from another socket is then
    the peer's first (loopback UDP queues each datagram at its sendto)."""

    async def main():
        log = []
        lost = loop.create_future()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with peer, other:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(5)
            addr = peer.getsockname()

            class D(asyncio.DatagramProtocol):
                def connection_made(self, tr):
                    self.tr = tr

                def datagram_received(self, data, src):
                    log.append("dgram")
                    self.tr.abort()
                    loop.call_soon(self.late)

                def late(self):
                    try:
                        self.tr.sendto(b"late", addr)
                        log.append("sent")
                    except Exception as exc:
                        log.append(("sendto raised", type(exc).__name__))

                def connection_lost(self, exc):
                    log.append(("lost", exc))
                    lost.set_result(None)

            tr, _ = await loop.create_datagram_endpoint(D, local_addr=("127.0.0.1", 0))
            other.sendto(b"x", tr.get_extra_info("sockname"))
            await wait_for(lost)
            for _ in range(3):
                await asyncio.sleep(0)
            other.sendto(b"marker", addr)
            log.append(("peer", peer.recv(100)))
        return log

    return run_in(loop, main())


def test_dgram_sendto_after_abort_in_datagram_received(tloop):
    want = on_stock(_dgram_abort_then_sendto)
    assert want[:2] == ["dgram", ("lost", None)] and want[-1] == ("peer", b"marker"), want
    assert _dgram_abort_then_sendto(tloop) == want


def _read_pipe_eof(loop):
    """eof_received call_soon's a callback: stock queued connection_lost with
    eof_received at the EOF, so it runs first."""

    async def main():
        log = []
        lost = loop.create_future()

        class R(asyncio.Protocol):
            def data_received(self, data):
                log.append(("data", data))

            def eof_received(self):
                log.append("eof")
                loop.call_soon(log.append, "soon")

            def connection_lost(self, exc):
                log.append(("lost", exc))
                lost.set_result(None)

        r, w = os.pipe()
        try:
            await loop.connect_read_pipe(R, os.fdopen(r, "rb", 0))
            os.write(w, b"x")
        finally:
            os.close(w)
        await wait_for(lost)
        await asyncio.sleep(0)
        return log

    return run_in(loop, main())


def test_read_pipe_lost_before_callbacks_queued_at_eof(tloop):
    want = on_stock(_read_pipe_eof)
    assert want == [("data", b"x"), "eof", ("lost", None), "soon"]
    assert _read_pipe_eof(tloop) == want


def _write_pipe_abort_in_callback(loop):
    """A read pipe's data_received aborts a write pipe (its "read end
    closed" poll is in flight) and call_soon's a callback."""

    async def main():
        log = []
        lost = loop.create_future()

        class W(asyncio.Protocol):
            def connection_lost(self, exc):
                log.append(("w lost", exc))
                lost.set_result(None)

        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        wtr, _ = await loop.connect_write_pipe(W, os.fdopen(w2, "wb", 0))

        class R(asyncio.Protocol):
            def data_received(self, data):
                log.append("data")
                wtr.abort()
                loop.call_soon(log.append, "soon")

        try:
            rtr, _ = await loop.connect_read_pipe(R, os.fdopen(r1, "rb", 0))
            os.write(w1, b"x")
            await wait_for(lost)
            await asyncio.sleep(0)
            rtr.close()
        finally:
            os.close(w1)
            os.close(r2)
        return log

    return run_in(loop, main())


def test_write_pipe_abort_in_another_transports_callback(tloop):
    want = on_stock(_write_pipe_abort_in_callback)
    assert want == ["data", ("w lost", None), "soon"]
    assert _write_pipe_abort_in_callback(tloop) == want


def _tls_abort_in_data_received(loop, certs):
    """The TLS server's data_received aborts and queues a callback that
    queues another: sslproto's app connection_lost (its own call_soon, from
    the TCP transport's connection_lost) runs before the second, as stock."""

    async def main():
        log = []
        lost = loop.create_future()

        class S(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr

            def data_received(self, data):
                log.append("data")
                self.tr.abort()
                loop.call_soon(log.append, "soon")
                loop.call_soon(loop.call_soon, log.append, "soon2")

            def connection_lost(self, exc):
                log.append(("lost", exc))
                lost.set_result(None)

        class C(asyncio.Protocol):
            def __init__(self):
                self.lost = loop.create_future()

            def connection_lost(self, exc):
                self.lost.set_result(None)

        srv = await loop.create_server(S, "127.0.0.1", 0, ssl=certs.server_context())
        try:
            port = srv.sockets[0].getsockname()[1]
            ctr, cpr = await loop.create_connection(
                C, "127.0.0.1", port, ssl=certs.client_context(), server_hostname="localhost"
            )
            ctr.write(b"x")
            await wait_for(lost)
            await wait_for(cpr.lost)
        finally:
            srv.close()
            await srv.wait_closed()
        return log

    return run_in(loop, main())


def test_tls_lost_before_callbacks_queued_after_abort(tloop, tls):
    want = on_stock(_tls_abort_in_data_received, tls)
    assert want == ["data", "soon", ("lost", None), "soon2"]
    assert _tls_abort_in_data_received(tloop, tls) == want


def _loop_closed_right_after_lost(loop, kind):
    """connection_lost stops the loop, which is closed at once: the fds the
    transports had are closed then (ours: the engine's close reaps what was
    still in flight, and closes; a pipe waiting for its op is closed)."""
    fds = []

    class P(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.tr.abort()

        def eof_received(self):
            pass

        def connection_lost(self, exc):
            loop.stop()

    async def setup():
        if kind == "stream":
            a, b = socket.socketpair()
            a.setblocking(False)
            fds.append(a.fileno())
            await loop.create_connection(P, sock=a)
            return b, functools.partial(b.sendall, b"x")
        r, w = os.pipe()
        fds.append(r)
        await loop.connect_read_pipe(P, os.fdopen(r, "rb", 0))
        return None, functools.partial(os.close, w)  # EOF: the pipe closes itself

    # the peer acts once the loop runs on: connection_lost's stop() is then
    # run_forever's, not run_until_complete's
    peer, act = loop.run_until_complete(setup())
    loop.call_soon(act)
    guard = loop.call_later(10, loop.stop)  # never hang if it went wrong
    loop.run_forever()
    guard.cancel()
    loop.close()
    closed = []
    for fd in fds:
        try:
            os.fstat(fd)
            closed.append(False)
        except OSError:
            closed.append(True)
    if peer is not None:
        peer.close()
    return closed


@pytest.mark.parametrize("kind", ["stream", "pipe"])
def test_loop_closed_right_after_lost_leaves_no_fd(tloop, kind):
    assert on_stock(_loop_closed_right_after_lost, kind) == [True]
    assert _loop_closed_right_after_lost(tloop, kind) == [True]


def _write_pipe_closed_in_connection_made(loop):
    """close() in connection_made: the peer watch queued at creation runs
    after it; connection_lost comes without waiting for the reader, and the
    pipe is closed a few turns later while the reader is still open."""

    async def main():
        log = []

        class W(asyncio.Protocol):
            def connection_made(self, tr):
                tr.close()

            def connection_lost(self, exc):
                log.append(("lost", exc))

        r, w = os.pipe()
        try:
            await loop.connect_write_pipe(W, os.fdopen(w, "wb", 0))
            for _ in range(5):
                await asyncio.sleep(0)
            try:
                os.fstat(w)
                log.append("pipe open")
            except OSError:
                log.append("pipe closed")
        finally:
            os.close(r)
        return log

    return run_in(loop, main())


def test_write_pipe_closed_in_connection_made(tloop):
    want = on_stock(_write_pipe_closed_in_connection_made)
    assert want == [("lost", None), "pipe closed"]
    assert _write_pipe_closed_in_connection_made(tloop) == want


def _closing_send_completes(loop, kind, paused, extra, debug=False):
    """close() with bytes the kernel has not taken yet: a Unix socketpair
    with SO_SNDBUF 32 KiB and 100,000 B, or a 4 KiB pipe and 6,000 B; paused
    (high-water mark 4096 / 1024) or not. The loop stops, the peer drains,
    so the send completes by the next poll; that turn runs with stop()
    pending (a stopped turn) and: nothing else, a due timer (T), a callback
    ready before the poll, or another connection whose record comes in the
    same poll and whose data_received queues X. Stock's writer callback,
    queued at the poll, resumes and calls connection_lost itself: before T,
    X and the turn's end, behind the ready callback (decision 535). debug:
    the loop in debug mode (ours runs the Python turn then)."""
    log = []
    if debug:
        loop.set_debug(True)
        loop.slow_callback_duration = 100  # (no slow-callback warnings)

    class W(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def pause_writing(self):
            log.append("pause")

        def resume_writing(self):
            log.append("resume")

        def connection_lost(self, exc):
            log.append(("lost", exc))

    class R(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            loop.call_soon(log.append, "X")

    w = W()
    r = R()
    rsock, rpeer = socket.socketpair()
    if kind == "stream":
        sock, peer = socket.socketpair()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        run_in(loop, loop.create_unix_connection(lambda: w, sock=sock))
        size, high = 100_000, 4096

        def drain():
            peer.setblocking(False)
            n = 0
            with contextlib.suppress(BlockingIOError):
                while data := peer.recv(1 << 20):
                    n += len(data)
            return n

        def rest():
            peer.settimeout(5)
            n = 0
            while data := peer.recv(1 << 20):
                n += len(data)
            peer.close()
            return n
    else:
        rfd, wfd = os.pipe()
        fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(rfd, False)
        run_in(loop, loop.connect_write_pipe(lambda: w, os.fdopen(wfd, "wb", 0)))
        size, high = 6000, 1024

        def drain():
            n = 0
            with contextlib.suppress(BlockingIOError):
                while data := os.read(rfd, 1 << 20):
                    n += len(data)
            return n

        def rest():
            n = drain()
            os.close(rfd)
            return n
    try:
        if extra == "reader":
            run_in(loop, loop.create_unix_connection(lambda: r, sock=rsock))
        w.tr.set_write_buffer_limits(high=high if paused else 1 << 20)

        def first():
            w.tr.write(b"x" * size)
            w.tr.close()

        loop.call_soon(first)
        loop.call_soon(loop.stop)
        loop.run_forever()
        if extra == "reader":
            rpeer.send(b"r")
        got = drain()
        time.sleep(0.005)  # (io_uring-fallbacks, epoll: the send's retry)
        if extra == "timer":
            loop.call_later(0, log.append, "T")
            time.sleep(0.002)
        elif extra == "ready":
            loop.call_soon(log.append, "ready first")
        loop.stop()
        loop.run_forever()
        log.append("turn ended")
        run_in(loop, asyncio.sleep(0.01))
        got += rest()
        log.append(("peer got", got == size))
    finally:
        if extra == "reader":
            r.tr.close()
            run_in(loop, asyncio.sleep(0))
        rsock.close()
        rpeer.close()
    return log


@pytest.mark.parametrize("debug", [False, True], ids=["native", "debug"])
@pytest.mark.parametrize("extra", [None, "timer", "ready", "reader"])
@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
@pytest.mark.parametrize("kind", ["stream", "pipe"])
def test_closing_send_completes_where_stock_writer_runs(tloop, kind, paused, extra, debug):
    """The send that empties a closing transport completes in a poll:
    resume_writing and connection_lost come where stock's writer callback
    runs them, inside the stopped turn, ahead of a due timer and of what
    another reader of that poll schedules, behind a ready callback (535)."""
    want = on_stock(_closing_send_completes, kind, paused, extra, debug)
    assert ("lost", None) in want and want.index(("lost", None)) < want.index("turn ended")
    assert _closing_send_completes(tloop, kind, paused, extra, debug) == want
