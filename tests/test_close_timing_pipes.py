"""Pipe and datagram transports close their fd where the stock loop does
(decisions 884-889; the stream transports' are tests/test_close_timing.py).

Stock's pipe transports close the pipe in _call_connection_lost
(``self._pipe.close()``), its datagram transport the socket
(``self._sock.close()``): a turn after close()/abort(), after
connection_lost. A reader of the pipe in the same process sees the EOF at
the selector's next poll, and its eof_received is call_soon'd from the
reader callback, a turn later again. Every test runs on the stock loop too
(tloop), which proves the expectation; the fd number is probed with
os.fstat (open, or EBADF)."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import socket
import sys
import tempfile
import warnings

import pytest
from conftest import make_loop
from transport_helpers import drop_lost_handle, fd_count, fd_state, run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below


class _PipeEnd(asyncio.Protocol):
    def __init__(self, log, name):
        self.log = log
        self.name = name
        self.on_lost = None
        self.transport = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def eof_received(self):
        self.log.append((self.name, "eof"))

    def connection_lost(self, exc):
        self.log.append((self.name, "lost"))
        if self.on_lost is not None:
            self.on_lost()
        if not self.done.done():
            self.done.set_result(exc)


async def _pipe_pair(lp, log):
    r, w = os.pipe()
    rp = _PipeEnd(log, "r")
    wp = _PipeEnd(log, "w")
    await lp.connect_read_pipe(lambda: rp, os.fdopen(r, "rb", 0))
    await lp.connect_write_pipe(lambda: wp, os.fdopen(w, "wb", 0))
    for _ in range(3):  # connection_made, the reads and the peer watch armed
        await asyncio.sleep(0)
    return rp, wp, r, w


@pytest.mark.parametrize("how", ["write-close", "write-abort", "read-close"])
def test_a_pipe_is_closed_after_connection_lost_and_its_reader_sees_eof_as_stock(tloop, how):
    """close()/abort() of a pipe's write end (or close() of its read end) in
    a callback: its fd is open after the call and in connection_lost,
    closed in a callback connection_lost queues and in the next turn's. The
    reader in the same process (its own pipe transport) sees EOF in the
    second turn after the writer's connection_lost: the selector's next
    poll sees the pipe closed and queues the reader callback, which
    call_soon's eof_received and _call_connection_lost. Turns are counted
    by a callback that queues itself."""
    lp = tloop
    log = []

    async def main():
        rp, wp, r, w = await _pipe_pair(lp, log)
        me, fd = (rp, r) if how == "read-close" else (wp, w)

        def on_lost():
            log.append(("in connection_lost", fd_state(fd)))
            lp.call_soon(lambda: log.append(("queued in connection_lost", fd_state(fd))))

        me.on_lost = on_lost
        turn = [0]

        def ticker():
            turn[0] += 1
            log.append(("turn", turn[0], fd_state(fd)))
            if turn[0] < 4:
                lp.call_soon(ticker)

        def act():
            log.append(("before", fd_state(fd)))
            if how == "write-abort":
                wp.transport.abort()
            else:
                me.transport.close()
            log.append(("after", fd_state(fd)))
            lp.call_soon(ticker)

        lp.call_soon(act)
        await wait_for(rp.done)
        await wait_for(wp.done)
        while turn[0] < 4:
            await asyncio.sleep(0)

    run_in(lp, main())
    me = "r" if how == "read-close" else "w"
    other = [("w", "lost")] if how == "read-close" else [("r", "eof"), ("r", "lost")]
    # (the write end of a closed reader: the poll of the next turn sees the
    # error and stock's reader callback, _read_ready, closes it right there)
    assert log == [
        ("before", "open"),
        ("after", "open"),
        (me, "lost"),
        ("in connection_lost", "open"),
        ("turn", 1, "EBADF"),
        ("queued in connection_lost", "EBADF"),
        ("turn", 2, "EBADF"),
        ("turn", 3, "EBADF"),
        *other,
        ("turn", 4, "EBADF"),
    ]


def test_a_reader_closed_before_its_eof_handle_runs_gets_no_eof(tloop):
    """difffuzz pipe 980008, shrunk (decision 885): the writer's
    write_eof(); its connection_lost (the pipe closed right after) queues
    the reader's close(). Stock: the next poll sees the EOF and queues the
    reader callback behind that close(), which removes the reader (the
    callback's handle cancelled): no eof_received, only connection_lost.
    Ours took the EOF in the I/O step and call_soon'd eof_received ahead of
    the close."""
    lp = tloop
    log = []

    async def main():
        rp, wp, r, w = await _pipe_pair(lp, log)
        wp.on_lost = lambda: lp.call_soon(rp.transport.close)
        lp.call_soon(wp.transport.write_eof)
        await wait_for(wp.done)
        await wait_for(rp.done)

    run_in(lp, main())
    assert log == [("w", "lost"), ("r", "lost")]


class _Dgram(asyncio.DatagramProtocol):
    def __init__(self, log):
        self.log = log
        self.fd = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.log.append(("in connection_lost", fd_state(self.fd)))
        self.done.set_result(exc)


async def _endpoint(lp, family, log, connected=False):
    if family == "udp":
        peer = ("127.0.0.1", 9) if connected else None  # (discard: never sent to)
        kw = {"remote_addr": peer} if connected else {"local_addr": ("127.0.0.1", 0)}
    else:
        path = os.path.join(tempfile.mkdtemp(prefix="pipehold-"), "d")
        if connected:
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            srv.bind(path)
            kw = {"remote_addr": path, "family": socket.AF_UNIX}
        else:
            srv = None
            kw = {"local_addr": path, "family": socket.AF_UNIX}
    tr, p = await lp.create_datagram_endpoint(lambda: _Dgram(log), **kw)
    p.fd = tr.get_extra_info("socket").fileno()
    if family == "unix" and srv is not None:
        p.srv = srv
    for _ in range(2):  # connection_made, the receive armed
        await asyncio.sleep(0)
    return tr, p


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("family", ["udp", "unix"])
def test_a_datagram_transport_keeps_its_fd_until_connection_lost(tloop, family, how, connected):
    """close()/abort() of a datagram endpoint in a callback: the socket's fd
    is open after the call and in connection_lost, closed in a callback
    queued after the close (it runs after _call_connection_lost). io_uring:
    the receive is live at close(); epoll: its cancel ends at once, and the
    engine closed the fd there before decision 884."""
    lp = tloop
    log = []

    async def main():
        tr, p = await _endpoint(lp, family, log, connected)
        fd = p.fd

        def act():
            log.append(("before", fd_state(fd)))
            getattr(tr, how)()
            log.append(("after", fd_state(fd)))
            lp.call_soon(lambda: log.append(("next callback", fd_state(fd))))

        lp.call_soon(act)
        await wait_for(p.done)
        await asyncio.sleep(0)
        srv = getattr(p, "srv", None)
        if srv is not None:
            srv.close()

    run_in(lp, main())
    assert log == [
        ("before", "open"),
        ("after", "open"),
        ("in connection_lost", "open"),
        ("next callback", "EBADF"),
    ]


def test_an_unconnected_endpoint_still_sends_between_close_and_connection_lost(tloop):
    """The stock transport sends an unconnected endpoint's datagrams until
    _call_connection_lost closes its socket; ours through the socket's
    duplicate while the engine holds the fd (decision 884)."""
    lp = tloop
    got = []

    class Rx(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.append(data)

    async def main():
        rx, _ = await lp.create_datagram_endpoint(Rx, local_addr=("127.0.0.1", 0))
        addr = rx.get_extra_info("sockname")
        log = []
        tr, p = await _endpoint(lp, "udp", log)
        tr.close()
        tr.sendto(b"after close", addr)
        await wait_for(p.done)
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.01)
        rx.close()
        await asyncio.sleep(0)

    run_in(lp, main())
    assert got == [b"after close"]


_KINDS = ["io_uring", "epoll", "io_uring-fallbacks", "stock"]


@pytest.mark.parametrize("what", ["udp", "unix", "write-pipe", "read-pipe"])
@pytest.mark.parametrize("kind", _KINDS)
def test_loop_close_with_a_closed_transport_not_yet_lost_leaks_no_fd(kind, what):
    """close() and the loop stops before _call_connection_lost runs, then
    closes: no fd is left open once the transport is collected (ours: the
    engine's held close of a datagram socket is made at loop.close(),
    ul_free; a pipe is closed by its transport's finalizer, as stock's)."""
    backend = os.environ.get("URINGLOOP_BACKEND")
    if kind != "stock" and backend and backend != kind.split("-")[0]:
        pytest.skip(f"URINGLOOP_BACKEND={backend}: not {kind}")
    gc.collect()
    before = fd_count()
    lp = make_loop(kind)
    state = {}

    async def main():
        log = []
        if what in ("udp", "unix"):
            tr, p = await _endpoint(lp, what, log)
            state["fd"] = p.fd
        else:
            rp, wp, r, w = await _pipe_pair(lp, log)
            p, state["fd"] = (wp, w) if what == "write-pipe" else (rp, r)
            state["other"] = rp if p is wp else wp
            tr = p.transport
        state["tr"] = tr

    def act():
        state.pop("tr").close()
        lp.stop()  # before the next turn, which would run _call_connection_lost

    lp.run_until_complete(main())
    lp.call_soon(act)
    lp.run_forever()
    fd = state["fd"]
    assert fd_state(fd) == "open"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        lp.close()  # (the lost handle never runs)
        if kind != "stock" and what in ("udp", "unix"):
            assert fd_state(fd) == "EBADF"  # ul_free made the held close
        state.clear()
        gc.collect()
    assert fd_state(fd) == "EBADF"
    assert fd_count() == before


@pytest.mark.parametrize("what", ["udp", "unix", "write-pipe", "read-pipe"])
def test_a_closed_transport_collected_before_its_lost_handle_ran_closes_its_fd(tloop, what):
    """close(), then the _call_connection_lost handle is dropped from the
    ready queue and the transport collected: its fd is closed then (stock:
    its finalizer closes the socket or pipe; ours, a datagram transport's
    finalizer releases the engine's held close, decision 884), not when
    the loop closes."""
    lp = tloop
    state = {}

    async def main():
        log = []
        if what in ("udp", "unix"):
            tr, p = await _endpoint(lp, what, log)
            fd = p.fd
        else:
            rp, wp, r, w = await _pipe_pair(lp, log)
            p, fd = (wp, w) if what == "write-pipe" else (rp, r)
            other = rp if p is wp else wp
            tr = p.transport
        tr.close()
        assert fd_state(fd) == "open"
        drop_lost_handle(lp, tr)
        del tr
        p.transport = None
        for _ in range(3):  # (ours: the cancelled op's last record, which holds it)
            await asyncio.sleep(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        state["after gc"] = fd_state(fd)
        if what not in ("udp", "unix"):
            if not other.transport.is_closing():
                other.transport.close()
            await wait_for(other.done)
        srv = getattr(p, "srv", None)
        if srv is not None:
            srv.close()

    run_in(lp, main())
    assert state["after gc"] == "EBADF"


def test_subprocess_close_closes_its_pipes_where_stock_does(tloop):
    """SubprocessTransport.close() closes stdin, stdout and stderr's pipe
    transports in that order (stock's base_subprocess, which then kills the
    child): each pipe is still open in its own transport's connection_lost
    (a turn later) and closed right after it, before the next pipe's;
    pipe_connection_lost comes a turn after that, every pipe closed."""
    lp = tloop
    log = []

    async def main():
        fds = []

        def probes():
            return tuple(fd_state(x) for x in fds)

        class SP(asyncio.SubprocessProtocol):
            def pipe_connection_lost(self, fd, exc):
                log.append(("pipe_connection_lost", fd, probes()))

        code = "import time; time.sleep(30)"
        tr, _ = await lp.subprocess_exec(
            SP, sys.executable, "-c", code, stdin=-1, stdout=-1, stderr=-1
        )
        for i in (0, 1, 2):
            pt = tr.get_pipe_transport(i)
            fds.append(pt.get_extra_info("pipe").fileno())
            proto = pt.get_protocol()
            lost = proto.connection_lost

            def spy(exc, i=i, lost=lost):
                log.append(("connection_lost", i, probes()))
                lost(exc)

            proto.connection_lost = spy
        turn = [0]

        def ticker():
            turn[0] += 1
            log.append(("turn", turn[0], probes()))
            if turn[0] < 2:
                lp.call_soon(ticker)

        def act():
            tr.close()
            log.append(("after close", probes()))
            lp.call_soon(ticker)

        lp.call_soon(act)
        await wait_for(tr._wait())
        while turn[0] < 2:
            await asyncio.sleep(0)

    run_in(lp, main())
    o, c = "open", "EBADF"
    assert log == [
        ("after close", (o, o, o)),
        ("connection_lost", 0, (o, o, o)),
        ("connection_lost", 1, (c, o, o)),
        ("connection_lost", 2, (c, c, o)),
        ("turn", 1, (c, c, c)),
        ("pipe_connection_lost", 0, (c, c, c)),
        ("pipe_connection_lost", 1, (c, c, c)),
        ("pipe_connection_lost", 2, (c, c, c)),
        ("turn", 2, (c, c, c)),
    ]


def _no_copy(ctx):
    raise MemoryError  # as PyContext_Copy without memory


@pytest.mark.parametrize("path", ["on_accept", "make_waiting"])
@pytest.mark.parametrize("kind", ["io_uring", "epoll", "io_uring-fallbacks"])
def test_an_accepted_fd_is_closed_when_its_context_copy_fails(kind, path, monkeypatch):
    """The Python accept path (here: debug mode) copies the Acceptor's
    context for each connection (decision 879); when the copy fails
    (MemoryError) the accepted fd is closed, as C's accept_record closes
    it (decision 887), and the client sees the connection end. on_accept:
    the record's own connection; make_waiting: one that waited over the
    turn's budget (the waiting fds are made by _make_waiting)."""
    backend = os.environ.get("URINGLOOP_BACKEND")
    if backend and backend != kind.split("-")[0]:
        pytest.skip(f"URINGLOOP_BACKEND={backend}: not {kind}")
    from uringloop.transports import stream

    gc.collect()
    before = fd_count()
    lp = make_loop(kind)
    lp.set_debug(True)  # the Python path (_on_accept, _make_waiting)
    errors = []
    lp.set_exception_handler(lambda loop, context: errors.append(context.get("exception")))
    made = []

    async def main():
        def factory():
            made.append(1)
            return asyncio.Protocol()

        server = await lp.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        acceptor = lp._acceptors[server.sockets[0]._sock]
        monkeypatch.setattr(stream, "_ctx_copy", _no_copy)
        if path == "make_waiting":
            # a connection that waited over a turn's budget (an fd the
            # Acceptor owns, in its waiting queue) made by _make_waiting
            mine, peer = socket.socketpair()
            acceptor.waiting = collections.deque([mine.detach()])
            with pytest.raises(MemoryError):
                acceptor._make_waiting()
            peer.setblocking(False)
            try:
                got = await wait_for(lp.sock_recv(peer, 10))
            finally:
                peer.close()
            server.close()
            await wait_for(server.wait_closed())
            return got
        client = socket.socket()
        client.setblocking(False)
        try:
            await wait_for(lp.sock_connect(client, ("127.0.0.1", port)))
            got = await wait_for(lp.sock_recv(client, 10))
        except (ConnectionResetError, MemoryError) as exc:
            got = exc
        finally:
            client.close()
        server.close()
        await wait_for(server.wait_closed())
        return got

    try:
        try:
            got = lp.run_until_complete(main())
        except MemoryError:
            got = "raised"
    finally:
        lp.close()
    assert made == []
    assert got == b"" or got == "raised", (got, errors)
    gc.collect()
    assert fd_count() == before
