"""A closed stream transport's close(2) where the stock loop makes it
(decisions 873-880): stock's close()/abort() leave the socket open until
_call_connection_lost (a turn later), which closes it after connection_lost.
Ours held the fd's close in the engine until no op of it was live: on epoll
at close() itself, on io_uring when the receive's cancel was reaped (a run
later). A peer in the same process sees the difference (difffuzz 844 (a):
tcp 900020, unix 900013, tcp 940006). Every test runs on the stock loop too
(tloop), which proves the expectation; the fd number of the closed
transport is probed with os.fstat (open, or EBADF)."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import struct
import tempfile
import warnings

import pytest
from conftest import make_loop
from transport_helpers import drop_lost_handle, fd_count, fd_state, run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below

_LINGER0 = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close(2) resets


class End(asyncio.Protocol):
    """One end: its events, and what the test's hooks log."""

    def __init__(self, log, name):
        self.log = log
        self.name = name
        self.transport = None
        self.fd = None
        self.on_data = None
        self.got = bytearray()
        self.done = None

    def connection_made(self, transport):
        self.transport = transport
        self.fd = transport._sock_fd  # (stock's attribute; ours' property)
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.got += data
        if self.on_data is not None:
            hook, self.on_data = self.on_data, None
            hook()

    def eof_received(self):
        self.log.append((self.name, "eof"))
        return self.keep_open

    keep_open = False

    def connection_lost(self, exc):
        self.log.append((self.name, "lost", type(exc).__name__ if exc else None))
        if self.on_lost is not None:
            self.on_lost()
        if not self.done.done():
            self.done.set_result(exc)

    on_lost = None


async def _pair(lp, log, family):
    """(a, b): the client end a, the server's accepted end b, connected."""
    accepted = lp.create_future()

    def factory():
        p = End(log, "b")
        accepted.set_result(p)
        return p

    if family == "tcp":
        server = await lp.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, a = await lp.create_connection(lambda: End(log, "a"), "127.0.0.1", port)
    else:
        path = os.path.join(tempfile.mkdtemp(prefix="closeat-"), "s")
        server = await lp.create_unix_server(factory, path)
        _, a = await lp.create_unix_connection(lambda: End(log, "a"), path)
    b = await wait_for(accepted)
    return server, a, b


async def _until(pred):
    """Turns of the loop until pred() (bounded by wait_for's timeout)."""

    async def spin():
        while not pred():
            await asyncio.sleep(0)

    await wait_for(spin())


async def _end(server, *ends):
    for p in ends:
        if not p.transport.is_closing():
            p.transport.abort()
    for p in ends:
        await wait_for(p.done)
    server.close()
    await wait_for(server.wait_closed())


@pytest.mark.parametrize("side", ["client", "accepted"])
@pytest.mark.parametrize("how", ["close", "abort"])
def test_the_fd_is_open_until_connection_lost_and_closed_right_after(tloop, how, side):
    """close()/abort() in a callback: the fd stays open in that callback and
    in connection_lost (stock closes the socket after it), and is closed for
    a callback queued after the close (it runs after _call_connection_lost).
    io_uring: the transport's multishot receive is live at close(), its
    cancel not yet reaped at _call_connection_lost, whose close(2) must not
    wait for the next run (decision 875). The accepted end closes through
    the C core's close (stream_close_fast) and _call_connection_lost."""
    lp = tloop
    log = []

    async def main():
        server, a, b = await _pair(lp, log, "tcp")
        me, peer = (a, b) if side == "client" else (b, a)
        fd = me.fd
        seen = {}
        me.on_lost = lambda: seen.setdefault("in connection_lost", fd_state(fd))

        def act():
            seen["before"] = fd_state(fd)
            getattr(me.transport, how)()
            seen["after " + how] = fd_state(fd)
            lp.call_soon(lambda: seen.setdefault("next callback", fd_state(fd)))

        lp.call_soon(act)
        await wait_for(me.done)
        await wait_for(peer.done)
        await _end(server, a, b)
        return seen

    seen = run_in(lp, main())
    assert seen == {
        "before": "open",
        f"after {how}": "open",
        "in connection_lost": "open",
        "next callback": "EBADF",
    }


def test_a_peer_hook_in_the_closing_turn_can_still_write_eof(tloop):
    """difffuzz tcp 900020, shrunk: b's data hook closes a (whose receive
    holds b's bytes unread: its close(2) resets) and, in the same callback,
    calls b.write_eof(): stock's a is still open then, so write_eof works
    and b meets the reset afterwards; the fd closed at close() gave
    OSError(ENOTCONN)."""
    lp = tloop
    log = []

    async def main():
        server, a, b = await _pair(lp, log, "tcp")
        a.transport.pause_reading()  # b's bytes stay unread in a's socket
        b.transport.write(b"x" * 1000)
        await asyncio.sleep(0.05)  # (b's bytes in a's receive queue)
        out = {}

        def hook():
            a.transport.close()
            try:
                b.transport.write_eof()
                out["write_eof"] = "ok"
            except OSError as exc:
                out["write_eof"] = errno.errorcode.get(exc.errno, exc.errno)

        b.on_data = hook
        a.transport.write(b"ping")
        await wait_for(a.done)
        await wait_for(b.done)
        await _end(server, a, b)
        return out

    assert run_in(lp, main()) == {"write_eof": "ok"}
    assert ("b", "lost", "ConnectionResetError") in log


def test_a_write_of_the_turn_reaches_the_peer_before_its_close(tloop):
    """difffuzz unix 900013, shrunk: a callback queued before b.abort()
    writes on a. Stock's write() sends at once, while b is still open
    (its close(2) is in _call_connection_lost, which runs after that
    callback), so a's write succeeds and a then meets the end of b (Unix:
    ECONNRESET, b's close left a's bytes unread). Ours queues the write for
    the turn's flush, which the release of b's close now runs first
    (decision 874): no EPIPE on a's write."""
    lp = tloop
    log = []

    async def main():
        server, a, b = await _pair(lp, log, "unix")

        def act():
            lp.call_soon(a.transport.write, b"y" * 1000)
            b.transport.abort()

        lp.call_soon(act)
        await wait_for(a.done)
        await wait_for(b.done)
        await _end(server, a, b)

    run_in(lp, main())
    assert ("a", "lost", "ConnectionResetError") in log, log
    assert not any(e[0] == "a" and e[-1] == "BrokenPipeError" for e in log), log


def test_a_reset_then_a_callback_queued_after_it_sees_the_reset(tloop):
    """difffuzz tcp 940006, shrunk (io_uring late): b's data hook resets a
    (SO_LINGER 0, abort()) and queues b.write_eof(). Stock runs a's
    _call_connection_lost (the close(2), the RST) first, so write_eof meets
    ENOTCONN; io_uring closed a's fd only when its receive's cancel was
    reaped, a run later, and write_eof succeeded."""
    lp = tloop
    log = []

    async def main():
        server, a, b = await _pair(lp, log, "tcp")
        out = {}

        def write_eof():
            try:
                b.transport.write_eof()
                out["write_eof"] = "ok"
            except OSError as exc:
                out["write_eof"] = errno.errorcode.get(exc.errno, exc.errno)

        def hook():
            a.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0
            )
            a.transport.abort()
            lp.call_soon(write_eof)

        b.on_data = hook
        a.transport.write(b"ping")
        await wait_for(a.done)
        await wait_for(b.done)
        await _end(server, a, b)
        return out

    assert run_in(lp, main()) == {"write_eof": "ENOTCONN"}


def test_abort_with_unsent_data_keeps_the_fd_until_connection_lost(tloop):
    """abort() with bytes queued that the peer's full socket did not take
    (a send in flight on ours): the fd open in connection_lost, closed
    right after, as stock."""
    lp = tloop
    log = []

    async def main():
        server, a, b = await _pair(lp, log, "tcp")
        b.transport.pause_reading()
        a.transport.write(b"z" * 8_000_000)  # more than the sockets hold
        await asyncio.sleep(0.05)
        assert a.transport.get_write_buffer_size() > 0
        fd = a.fd
        seen = {}
        a.on_lost = lambda: seen.setdefault("in connection_lost", fd_state(fd))

        def act():
            a.transport.abort()
            seen["after abort"] = fd_state(fd)
            lp.call_soon(lambda: seen.setdefault("next callback", fd_state(fd)))

        lp.call_soon(act)
        await wait_for(a.done)
        await _end(server, a, b)
        return seen

    assert run_in(lp, main()) == {
        "after abort": "open",
        "in connection_lost": "open",
        "next callback": "EBADF",
    }


@pytest.mark.parametrize("kind", ["io_uring", "epoll", "stock"])
def test_loop_close_with_a_closed_transport_not_yet_lost_leaks_no_fd(kind):
    """close() and then the loop stops before _call_connection_lost runs,
    and is closed: the held close is the engine's to make at loop.close()
    (ul_free), so after loop.close() the fd is closed (stock: once the
    transport is collected) and /proc/self/fd counts what it counted before
    the loop."""
    if kind != "stock" and os.environ.get("URINGLOOP_BACKEND", kind) != kind:
        pytest.skip(f"URINGLOOP_BACKEND={os.environ['URINGLOOP_BACKEND']}: not {kind}")
    gc.collect()
    before = fd_count()
    lp = make_loop(kind)
    log = []
    state = {}

    async def main():
        server, a, b = await _pair(lp, log, "tcp")
        state["fd"] = a.fd
        server.close()
        a.keep_open = True
        b.transport.close()
        await wait_for(b.done)
        await _until(lambda: ("a", "eof") in log)
        state["a"] = a

    def act():
        state["a"].transport.close()
        lp.stop()  # before the next turn, which would run _call_connection_lost

    lp.run_until_complete(main())
    lp.call_soon(act)
    lp.run_forever()  # runs act(), stops before the lost handle
    fd = state["fd"]
    assert not any(e[0] == "a" and e[1] == "lost" for e in log), log
    assert fd_state(fd) == "open"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp.close()  # (the lost handle never runs)
    assert not [w for w in caught if w.category is not ResourceWarning or kind != "stock"], [
        str(w.message) for w in caught
    ]
    if kind != "stock":
        assert fd_state(fd) == "EBADF"  # ul_free closed it (decision 873)
    state.clear()  # (the protocol holds its transport, and that its socket)
    gc.collect()
    assert fd_state(fd) == "EBADF"
    assert fd_count() == before


def test_a_closed_transport_collected_before_its_lost_handle_ran_closes_its_fd(tloop):
    """close() and then the _call_connection_lost handle is dropped from the
    loop's ready queue (no one runs it) and the transport collected: its
    fd is closed then (stock: the socket object's finalizer; ours: the
    Stream's clear releases the held close, decision 873)."""
    lp = tloop
    log = []
    state = {}

    async def main():
        server, a, b = await _pair(lp, log, "tcp")
        a.keep_open = True
        state["fd"] = fd = a.fd
        tr = a.transport
        tr.close()
        assert fd_state(fd) == "open"
        drop_lost_handle(lp, tr)
        del tr
        a.transport = None
        for _ in range(3):  # (ours: the cancelled receive's last record, which holds it)
            await asyncio.sleep(0)
        gc.collect()
        state["after gc"] = fd_state(fd)
        b.transport.close()
        await wait_for(b.done)
        server.close()
        await wait_for(server.wait_closed())

    run_in(lp, main())
    assert state["after gc"] == "EBADF"
    assert not any(e[0] == "a" for e in log), log
