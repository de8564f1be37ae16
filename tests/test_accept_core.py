"""The Acceptor's accept record handled in C (decision 867): a record of the
plain case (an exact Acceptor of an exact Loop, a TCP listener, no TLS, not
debug mode, not stopped, nothing waiting, within the turn's budget) is taken
by stream.c's accept_record with _on_accept's steps, in its order; anything
else goes to _on_accept as before. What the protocol factory, the protocol,
the clients and the loop's exception handler see is the stock loop's (each
behaviour test runs on it too, unless it counts uringloop's own frames)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import socket
import sys

import pytest
from transport_helpers import ensure_nofile, run_in, tloop, tls, wait_for

assert tloop and tls  # fixtures, imported for the tests below


def _ours(lp):
    return type(lp).__module__.startswith("uringloop")


def _stream_py_frames():
    """A sys.setprofile hook recording the Python frames of uringloop's
    transports/stream.py (their function names) but those under the loop's
    sock_* methods (the test's client: uringloop/sock.py), and the list it
    appends to."""
    calls = []

    def hook(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.endswith("/transports/stream.py"):
            return
        f = frame.f_back
        while f is not None:
            if f.f_code.co_filename.endswith("/uringloop/sock.py"):
                return
            f = f.f_back
        calls.append(frame.f_code.co_name)

    return hook, calls


class Echo(asyncio.Protocol):
    def __init__(self, made, lost=None):
        self.made, self.lost = made, lost

    def connection_made(self, transport):
        self.transport = transport
        self.made.append(transport.get_extra_info("peername"))

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(exc)


async def _echo_once(loop, addr, payload=b"ping"):
    r, w = await wait_for(asyncio.open_connection(*addr))
    w.write(payload)
    assert await wait_for(r.readexactly(len(payload))) == payload
    w.close()
    await wait_for(w.wait_closed())


async def _read_end(loop, sock):
    """What a client reads until its connection ends: b"" (EOF) or the
    reset's exception name, and any bytes before it."""
    got = bytearray()
    while True:
        try:
            piece = await wait_for(loop.sock_recv(sock, 4096))
        except ConnectionResetError:
            return bytes(got), "reset"
        if not piece:
            return bytes(got), "eof"
        got.extend(piece)


# --------------------------------------------------------------------------
# the frames


def test_a_plain_connection_runs_no_on_accept_frame(tloop):
    """Each of a plain listener's connections is made with no Python frame of
    stream.py's: no _on_accept, no _connection (on the parent, one
    _on_accept a connection)."""
    if not _ours(tloop):
        pytest.skip("the frames counted are uringloop's stream.py's")
    hook, calls = _stream_py_frames()

    async def main():
        made, lost = [], []
        server = await tloop.create_server(lambda: Echo(made), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        sys.setprofile(hook)
        try:
            for _ in range(3):
                await _echo_once(tloop, addr)
        finally:
            sys.setprofile(None)
        server.close()
        await wait_for(server.wait_closed())
        return made, lost

    made, _ = run_in(tloop, main())
    assert len(made) == 3
    assert "_on_accept" not in calls and "_connection" not in calls, calls


@pytest.mark.parametrize("how", ["patched", "subclass-loop", "debug"])
def test_the_unusual_cases_still_run_on_accept(how, monkeypatch):
    """A patched Acceptor._on_accept (the bound method made at __init__ is
    not stream.py's), a Loop subclass and debug mode take the Python path:
    _on_accept runs once a connection, and the connection is made."""
    import uringloop
    from uringloop.transports import stream

    seen = []
    if how == "patched":
        orig = stream.Acceptor._on_accept

        def patched(self, res, more, data):
            seen.append(res >= 0)
            return orig(self, res, more, data)

        monkeypatch.setattr(stream.Acceptor, "_on_accept", patched)
        lp = uringloop.Loop()
    elif how == "subclass-loop":

        class Sub(uringloop.Loop):
            pass

        lp = Sub()
    else:
        lp = uringloop.Loop()
        lp.set_debug(True)
        lp.slow_callback_duration = 60.0
    hook, calls = _stream_py_frames()
    try:

        async def main():
            made = []
            server = await lp.create_server(lambda: Echo(made), "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            sys.setprofile(hook)
            try:
                await _echo_once(lp, addr)
                await _echo_once(lp, addr)
            finally:
                sys.setprofile(None)
            server.close()
            await wait_for(server.wait_closed())
            return made

        made = run_in(lp, main())
    finally:
        lp.close()
    assert len(made) == 2
    if how == "patched":
        assert seen.count(True) == 2, seen  # (and the cancel's record at the close)
    else:
        assert calls.count("_on_accept") == 2, calls


# --------------------------------------------------------------------------
# the budget (decisions 314, 708)


def test_a_burst_over_the_budget_is_made_in_accept_order_across_turns(tloop):
    """More connections at once than _ACCEPT_BUDGET: every one is made, in
    the order the clients connected (the kernel's accept order), at most
    the budget's worth a turn on uringloop (the rest wait for the next
    turns), each echoes."""
    from uringloop.transports.stream import _ACCEPT_BUDGET

    n = 2 * _ACCEPT_BUDGET + 20
    ensure_nofile(4 * n + 200)

    async def main():
        loop = asyncio.get_running_loop()
        made, turns = [], []

        def factory():
            turns.append(getattr(loop, "_turns", None))
            return Echo(made)

        server = await loop.create_server(factory, "127.0.0.1", 0, backlog=n + 10)
        addr = server.sockets[0].getsockname()
        clients = []
        try:
            _connect_all(addr, n, clients)
            order = [c.getsockname() for c in clients]
            await wait_for(_until_count(made, n), 30)
            for i, c in enumerate(clients):
                await wait_for(loop.sock_sendall(c, b"%d" % i))
                want = b"%d" % i
                got = b""
                while len(got) < len(want):
                    got += await wait_for(loop.sock_recv(c, 16))
                assert got == want
        finally:
            for c in clients:
                c.close()
        server.close()
        await wait_for(server.wait_closed())
        return made, order, turns

    made, order, turns = run_in(tloop, main(), timeout=60)
    assert made == order
    if _ours(tloop):
        per_turn = {}
        for t in turns:
            per_turn[t] = per_turn.get(t, 0) + 1
        assert max(per_turn.values()) <= _ACCEPT_BUDGET, per_turn
        assert len(per_turn) >= 3, per_turn


def _connect_all(addr, n, clients):
    """n blocking connects to addr, each socket then non-blocking, appended
    to clients as made (the caller's finally closes them). Made before the
    loop runs again, the handshakes complete in the kernel and the accepts
    come in one burst."""
    for _ in range(n):
        c = socket.socket()
        clients.append(c)
        c.connect(addr)
        c.setblocking(False)


async def _until_count(made, k):
    while len(made) < k:
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------
# failures


@pytest.mark.parametrize("debug", [False, True])
def test_a_raising_protocol_factory_as_stock(tloop, debug):
    """protocol_factory() raising: the client's connection ends (its fd
    closed, no leak: tloop counts), the exception handler hears of it only
    in debug mode ("Error on transport creation for incoming connection",
    the exception), and the next connection is made."""
    tloop.set_debug(debug)
    tloop.slow_callback_duration = 60.0

    async def main():
        loop = asyncio.get_running_loop()
        handled, made, calls = [], [], []
        loop.set_exception_handler(
            lambda _, ctx: handled.append((ctx["message"], type(ctx.get("exception"))))
        )

        def factory():
            calls.append(1)
            if len(calls) == 1:
                raise ZeroDivisionError("factory")
            return Echo(made)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        with socket.socket() as c:
            c.setblocking(False)
            await wait_for(loop.sock_connect(c, addr))
            await wait_for(_until_count(calls, 1))
            for _ in range(3):
                await asyncio.sleep(0)
            gc.collect()  # (the stock loop's socket object closes when collected)
            got, end = await _read_end(loop, c)
        assert got == b"" and end in ("eof", "reset")
        await _echo_once(loop, addr)
        server.close()
        await wait_for(server.wait_closed())
        for _ in range(3):
            await asyncio.sleep(0)
        return handled, made

    handled, made = run_in(tloop, main())
    assert len(made) == 1
    if debug:
        assert handled == [
            ("Error on transport creation for incoming connection", ZeroDivisionError)
        ]
    else:
        assert handled == []


def test_a_system_exit_from_the_protocol_factory_leaves_the_loop(tloop):
    """SystemExit from protocol_factory() leaves run_until_complete (as
    from the stock loop's accept task); the client's connection ends and
    the server goes on to make the next connection."""
    calls, made, box = [], [], {}

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit(7)
        return Echo(made)

    async def start():
        server = box["server"] = await tloop.create_server(factory, "127.0.0.1", 0)
        c = box["client"] = socket.socket()
        c.setblocking(False)
        await wait_for(tloop.sock_connect(c, server.sockets[0].getsockname()))
        await asyncio.sleep(10)  # (left by the SystemExit)

    task = tloop.create_task(start())
    with pytest.raises(SystemExit):
        tloop.run_until_complete(task)
    assert len(calls) == 1

    async def rest():
        server, c = box["server"], box["client"]
        with c:
            gc.collect()  # (the stock loop's socket object closes when collected)
            got, end = await _read_end(tloop, c)
        assert got == b"" and end in ("eof", "reset")
        await _echo_once(tloop, server.sockets[0].getsockname())
        server.close()
        await wait_for(server.wait_closed())
        task.cancel()

    run_in(tloop, rest())
    assert len(made) == 1


def test_an_accepted_fd_an_open_transport_holds_fails_as_before(tloop, monkeypatch):
    """An accepted connection whose fd number an open transport still holds
    (its fd closed behind its back): _ensure_fd_no_transport's RuntimeError
    goes to Acceptor._creation_failed as the exception being handled
    (sys.exc_info() there, as in _on_accept's except clause), with the
    protocol made; the connection is closed (the client sees its end) and
    the first transport is untouched."""
    if not _ours(tloop):
        pytest.skip("the stock loop registers the new transport over the old one")
    from uringloop.transports import stream

    failed = []
    orig = stream.Acceptor._creation_failed

    def creation_failed(self, exc, protocol):
        failed.append((type(exc), sys.exc_info()[1] is exc, type(protocol).__name__))
        return orig(self, exc, protocol)

    monkeypatch.setattr(stream.Acceptor, "_creation_failed", creation_failed)

    async def main():
        loop = asyncio.get_running_loop()
        made, protos = [], []

        def factory():
            protos.append(Echo(made))
            return protos[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        ra, wa = await wait_for(asyncio.open_connection(*addr))
        wa.write(b"a")
        assert await wait_for(ra.readexactly(1)) == b"a"
        fd = protos[0].transport.get_extra_info("socket").fileno()
        csock = socket.socket()
        csock.setblocking(False)
        saved = os.dup(fd)
        os.close(fd)
        holes = []
        try:
            while True:
                k = os.open(os.devnull, os.O_RDONLY)
                if k >= fd:
                    os.close(k)
                    break
                holes.append(k)
            await wait_for(loop.sock_connect(csock, addr))
            got, end = await _read_end(loop, csock)
            assert got == b"" and end in ("eof", "reset")
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            for k in holes:
                os.close(k)
            csock.close()
        wa.write(b"b")
        assert await wait_for(ra.readexactly(1)) == b"b"
        wa.close()
        await wait_for(wa.wait_closed())
        server.close()
        await wait_for(server.wait_closed())
        return made

    made = run_in(tloop, main())
    assert len(made) == 1
    assert failed == [(RuntimeError, True, "Echo")]


def test_a_server_closed_while_connections_come_closes_them(tloop):
    """server.close() in the turn that the clients connect in (their accept
    records come after it): none is made, every client sees its end, no fd
    is left (tloop counts), as stock."""
    n = 8

    async def main():
        loop = asyncio.get_running_loop()
        made = []
        server = await loop.create_server(lambda: Echo(made), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        clients = []
        try:
            _connect_all(addr, n, clients)
            server.close()
            ends = [await _read_end(loop, c) for c in clients]
        finally:
            for c in clients:
                c.close()
        await wait_for(server.wait_closed())
        for _ in range(3):
            await asyncio.sleep(0)
        return made, ends

    made, ends = run_in(tloop, main())
    assert made == []
    assert all(got == b"" and end in ("eof", "reset") for got, end in ends), ends


# --------------------------------------------------------------------------
# the context


def test_the_protocol_factory_runs_in_the_context_of_create_server(tloop):
    """protocol_factory() and connection_made see the context variables as
    they were at create_server (a copy: a later set in the caller is not
    seen), for every connection, as stock."""
    var = contextvars.ContextVar("onaccept_var", default="unset")

    async def main():
        loop = asyncio.get_running_loop()
        seen, made = [], []

        class P(Echo):
            def connection_made(self, transport):
                seen.append(("made", var.get()))
                super().connection_made(transport)

        def factory():
            seen.append(("factory", var.get()))
            return P(made)

        var.set("at-create")
        server = await loop.create_server(factory, "127.0.0.1", 0)
        var.set("later")
        addr = server.sockets[0].getsockname()
        for _ in range(2):
            await _echo_once(loop, addr)
        server.close()
        await wait_for(server.wait_closed())
        return seen

    seen = run_in(tloop, main())
    assert seen == [("factory", "at-create"), ("made", "at-create")] * 2


def test_a_server_closed_by_the_protocol_factory_closes_the_rest_of_the_batch(tloop):
    """The first connection's protocol_factory() closes the server while
    the burst's other accept records are still to come in the same batch
    (on uringloop): the factory runs once (that connection is not made:
    the closed Server's _attach refuses it, and it is closed), the later
    records find the Acceptor stopped and close their connections without
    a factory call; every client sees its end, nothing is left open (tloop
    counts). (The stock loop has accepted a backlog's worth before the
    first factory runs.)"""
    if not _ours(tloop):
        pytest.skip("the stock loop accepts a backlog's worth before any factory runs")
    n = 8

    async def main():
        loop = asyncio.get_running_loop()
        made, calls, box = [], [], {}

        def factory():
            calls.append(1)
            if len(calls) == 1:
                box["server"].close()
            return Echo(made)

        server = box["server"] = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        clients = []
        try:
            _connect_all(addr, n, clients)
            ends = [await _read_end(loop, c) for c in clients]
        finally:
            for c in clients:
                c.close()
        await wait_for(server.wait_closed())
        for _ in range(3):
            await asyncio.sleep(0)
        return made, calls, ends

    made, calls, ends = run_in(tloop, main())
    assert made == [] and len(calls) == 1, (made, calls)
    assert all(got == b"" and end in ("eof", "reset") for got, end in ends), ends


# --------------------------------------------------------------------------
# each connection in its own copy of the context (decision 879)


async def _until_all(seen, key, k):
    while sum(1 for s in seen if s[0] == key) < k:
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("how", ["tcp", "tcp-debug", "unix", "burst", "tls"])
def test_each_connections_factory_runs_in_its_own_context_copy(tloop, how, tls, tmp_path):
    """A protocol factory that adds 1 to a context variable sees 0 for every
    connection (stock's accept task copies its reader's context per
    connection; on the parent the one shared context gave 0, 1, 2, ...);
    connection_made and data_received see the factory's set; a variable
    connection_made sets reaches neither the next connection's factory nor
    its connection_made (nor data_received but on TLS, as stock). A TCP
    server (its records taken in C, or in Python in debug mode), a Unix
    server, a burst over the budget (the waiting connections) and a TLS
    server, as stock."""
    n = 5
    if how == "burst":
        from uringloop.transports.stream import _ACCEPT_BUDGET

        n = 2 * _ACCEPT_BUDGET + 20
        ensure_nofile(4 * n + 200)
    if how == "tcp-debug":
        tloop.set_debug(True)
        tloop.slow_callback_duration = 60.0
    count = contextvars.ContextVar("ctxconn_count", default=0)
    mark = contextvars.ContextVar("ctxconn_mark", default="unset")

    async def main():
        loop = asyncio.get_running_loop()
        seen = []

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                seen.append(("made", count.get(), mark.get()))
                mark.set("made")

            def data_received(self, data):
                seen.append(("data", count.get(), mark.get()))
                self.transport.write(data)

        def factory():
            v = count.get()
            seen.append(("factory", v, mark.get()))
            count.set(v + 1)
            return P()

        if how == "unix":
            path = str(tmp_path / "s")
            server = await loop.create_unix_server(factory, path)
        elif how == "tls":
            server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls.server_context())
        else:
            server = await loop.create_server(factory, "127.0.0.1", 0, backlog=n + 10)
        addr = server.sockets[0].getsockname()

        async def one():
            if how == "unix":
                r, w = await wait_for(asyncio.open_unix_connection(path))
            elif how == "tls":
                r, w = await wait_for(
                    asyncio.open_connection(
                        *addr, ssl=tls.client_context(), server_hostname="localhost"
                    )
                )
            else:
                r, w = await wait_for(asyncio.open_connection(*addr))
            w.write(b"ping")
            assert await wait_for(r.readexactly(4)) == b"ping"
            w.close()
            await wait_for(w.wait_closed())

        if how == "burst":
            clients = []
            try:
                # one burst, over the budget
                _connect_all(addr, n, clients)
                await wait_for(_until_all(seen, "made", n), 30)
                for c in clients:
                    await wait_for(loop.sock_sendall(c, b"x"))
                    assert await wait_for(loop.sock_recv(c, 16)) == b"x"
                await wait_for(_until_all(seen, "data", n), 30)
            finally:
                for c in clients:
                    c.close()
        else:
            for _ in range(n):
                await one()
        server.close()
        await wait_for(server.wait_closed())
        return seen

    seen = run_in(tloop, main(), timeout=60)
    assert [s for s in seen if s[0] == "factory"] == [("factory", 0, "unset")] * n
    assert [s for s in seen if s[0] == "made"] == [("made", 1, "unset")] * n
    # (stock: connection_made's set is not seen by data_received on a plain
    # connection, whose reader copies the context apart from connection_made's
    # call_soon; it is on a TLS one, whose connection_made runs in the
    # reader's context, from the handshake's end)
    mark_in_data = "made" if how == "tls" else "unset"
    assert [s for s in seen if s[0] == "data"] == [("data", 1, mark_in_data)] * n
