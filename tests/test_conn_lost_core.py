"""An accepted connection's end with no Python frame of ours (decisions
833-836): the closing transport's last receive record is handled in C
(stream.c's stream_closing_final), and SocketTransport._call_connection_lost
is a core method that does stream.py's steps in C for an exact
SocketTransport (transport_lost_fast). What the protocol, the server and the
loop's exception handler see is the stock loop's (each behaviour test runs on
it too); subclasses and patched methods still run the Python method; the core
methods answer __qualname__, __doc__, signature and a handle's repr as the
Python functions they stand for."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import types

import pytest
from transport_helpers import run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below

_LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close(2) resets


def _ours(lp):
    return type(lp).__module__.startswith("uringloop")


def _py_frames():
    """A sys.setprofile hook recording the Python frames of uringloop's own
    modules (their function names) but the peer's (the loop's sock_*
    methods and what they call) and the _Kind's closed socket (made once
    for a listener, decision 708), and the list it appends to."""
    calls = []
    peer = ("/uringloop/sock.py", "/uringloop/loop.py")

    def hook(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if "/uringloop/" not in code.co_filename or code.co_name == "closed" and (
                frame.f_back.f_code.co_filename.endswith("functools.py")
            ):
                return
            if code.co_filename.endswith(peer):
                return
            f = frame.f_back
            while f is not None:  # (called by the peer's sock_* methods)
                if f.f_code.co_filename.endswith(peer[0]):
                    return
                f = f.f_back
            calls.append(code.co_name)

    return hook, calls


async def _until(pred):
    """Turns of the loop until pred() (bounded by wait_for's timeout)."""

    async def spin():
        while not pred():
            await asyncio.sleep(0)

    await wait_for(spin())


def _active(server):
    """The stock Server's count of its live connections: _active_count up
    to 3.12, the size of its _clients WeakSet from 3.13 (which has no
    _active_count)."""
    if hasattr(server, "_active_count"):
        return server._active_count
    return len(server._clients)


def _exchange(lp, act, hook=None, peer_act=None):
    """One accepted connection: the peer sends b"GET", the server's protocol
    runs act(transport, peer) in data_received (peer_act(peer) instead runs
    right after the peer's send), then the peer reads to its end. The
    server's events, what the peer read, how its read ended, the exception
    handler's contexts, the server's transport and the server."""

    async def main():
        loop = asyncio.get_running_loop()
        events, handled, box = [], [], {}
        lost = loop.create_future()
        received = loop.create_future()
        loop.set_exception_handler(lambda _, ctx: handled.append(ctx))

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                events.append("made")
                box["t"] = self.t = transport

            def data_received(self, data):
                events.append(("data", data))
                if act is not None:
                    act(self.t, box["peer"])
                loop.call_soon(events.append, "after")
                if not received.done():
                    received.set_result(None)

            def eof_received(self):
                events.append("eof")

            def connection_lost(self, exc):
                events.append(("lost", type(exc).__name__ if exc else None))
                if not lost.done():
                    lost.set_result(None)
                if box.get("raise"):
                    raise box["raise"]

        box["raise"] = getattr(act, "raise_", None)
        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        peer = box["peer"] = socket.socket()
        peer.setblocking(False)
        got, end = bytearray(), None
        with peer:
            if hook is not None:
                sys.setprofile(hook)
            try:
                await wait_for(loop.sock_connect(peer, addr))
                await wait_for(loop.sock_sendall(peer, b"GET"))
                if peer_act is not None:
                    # once the server has the bytes and what they scheduled
                    # has run: the peer's act then comes in a batch of its
                    # own, as on the rows (in the same batch as the bytes an
                    # EOF waits for them, 824, through Python)
                    await wait_for(received)
                    peer_act(peer)
                else:
                    while True:
                        try:
                            piece = await wait_for(loop.sock_recv(peer, 1 << 16))
                        except OSError as e:
                            end = type(e).__name__
                            break
                        if not piece:
                            end = "eof"
                            break
                        got.extend(piece)
                await wait_for(lost)
                for _ in range(3):  # callbacks queued behind connection_lost
                    await asyncio.sleep(0)
                t = box["t"]
                core = getattr(t, "_core", None)
                if core is not None:  # the receive's final record has come
                    await _until(lambda: core.recv_ud == 0)
            finally:
                sys.setprofile(None)
        counts = (_active(server), server._waiters)
        server.close()
        await wait_for(server.wait_closed())
        return events, bytes(got), end, handled, box["t"], counts

    return run_in(lp, main())


def _write_close(t, peer):
    t.write(b"answer")
    t.close()


# --------------------------------------------------------------------------
# the frames (decisions 833, 834)


@pytest.mark.parametrize("how", ["write-close", "close", "client-close"])
def test_an_accepted_connections_end_runs_no_python_frame_of_ours(tloop, how):
    """The conn-http row's exchange (the answer written and the transport
    closed in data_received), a close with nothing queued, and the echo
    rows' (the client closes first): no Python frame of uringloop's (no
    _on_accept: the accept record is taken in C, 867; no _call_connection_lost: the core
    method's C; no _on_recv for the cancelled receive's final record: the
    Stream's). The events as stock."""
    if not _ours(tloop):
        pytest.skip("the frames counted are uringloop's")
    hook, calls = _py_frames()
    if how == "client-close":
        events, got, end, handled, t, counts = _exchange(
            tloop, None, hook, peer_act=lambda peer: peer.shutdown(socket.SHUT_WR)
        )
        assert events == ["made", ("data", b"GET"), "after", "eof", ("lost", None)]
    else:
        act = _write_close if how == "write-close" else (lambda t, peer: t.close())
        events, got, end, handled, t, counts = _exchange(tloop, act, hook)
        assert events == ["made", ("data", b"GET"), ("lost", None), "after"]
        assert (got, end) == ((b"answer" if how == "write-close" else b""), "eof")
    assert handled == [] and counts[0] == 0
    assert calls == [], calls


# --------------------------------------------------------------------------
# behaviour, against the stock loop (decision 834)


@pytest.mark.parametrize("how", ["close", "abort", "reset", "write-close"])
def test_connection_lost_as_stock(tloop, how):
    """connection_lost's order and exception for close, abort and the
    peer's reset, as stock; the server's count of its connections drops
    (Server._detach) and, with the server closed first, wakes its waiters;
    the socket extra after the end is a closed socket."""
    if how == "reset":

        def act(t, peer):
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            peer.close()  # the reset reaches the server's socket at once (loopback)

        events, got, end, handled, t, counts = _exchange(
            tloop, None, peer_act=lambda peer: act(None, peer)
        )
        assert events == ["made", ("data", b"GET"), "after", ("lost", "ConnectionResetError")]
    else:
        act = {
            "close": lambda t, peer: t.close(),
            "abort": lambda t, peer: t.abort(),
            "write-close": _write_close,
        }[how]
        events, got, end, handled, t, counts = _exchange(tloop, act)
        assert events == ["made", ("data", b"GET"), ("lost", None), "after"]
        assert (got, end) == ((b"answer" if how == "write-close" else b""), "eof")
    assert handled == []
    assert counts[0] == 0
    tsock = t.get_extra_info("socket")
    assert tsock is not None and tsock.fileno() == -1
    assert t.get_extra_info("peername")[0] == "127.0.0.1"
    assert t.is_closing()


def test_a_server_closed_first_wakes_when_its_last_connection_is_lost(tloop):
    """server.close() while a connection is open: its waiters are woken
    when that connection's connection_lost has run (Server._detach in the
    finally), on every loop as on stock; wait_closed() returns."""

    async def main():
        loop = asyncio.get_running_loop()
        lost = loop.create_future()
        box = {}

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                box["t"] = transport

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        peer = socket.socket()
        peer.setblocking(False)
        with peer:
            await wait_for(loop.sock_connect(peer, addr))
            await _until(lambda: "t" in box)
            server.close()
            before = (_active(server), server._waiters is None)
            box["t"].close()
            assert await wait_for(lost) is None
            after = (_active(server), server._waiters is None)
            await wait_for(server.wait_closed())
        return before, after

    before, after = run_in(tloop, main())
    assert before == (1, False) and after == (0, True), (before, after)


def _handler_message(lp):
    """The exception handler's message for the transport class (stock's
    _SelectorSocketTransport, ours SocketTransport): a bound method's
    qualified name, no source location (format_helpers gives one only for
    a function)."""
    cls = "SocketTransport" if _ours(lp) else "_SelectorSocketTransport"
    # 3.13's handle repr shows a callback's arguments only in debug mode
    args = "(None)" if sys.version_info < (3, 13) else "()"
    return f"Exception in callback {cls}._call_connection_lost{args}"


def test_an_exception_from_connection_lost_goes_to_the_handler_as_stock(tloop):
    """connection_lost raises: the loop's exception handler gets it, with the
    stock message (the callback's qualified name, as before 834), and the
    finally's steps have run (the server's count, the socket let go)."""

    def act(t, peer):
        t.close()

    act.raise_ = ValueError("from connection_lost")
    events, got, end, handled, t, counts = _exchange(tloop, act)
    assert events == ["made", ("data", b"GET"), ("lost", None), "after"]
    assert len(handled) == 1, handled
    assert handled[0]["message"] == _handler_message(tloop)
    assert handled[0]["exception"] is act.raise_
    assert type(handled[0]["handle"]).__name__ in ("Handle", "_Handle"), handled[0]
    assert counts[0] == 0
    assert t.get_extra_info("socket").fileno() == -1
    assert t._protocol is None and t._loop is None


def test_an_exception_in_the_finally_replaces_connection_losts_as_stock(tloop, monkeypatch):
    """connection_lost raises and then the server's _detach (the finally's)
    raises too: the handler gets the second, whose __context__ is the
    first, and the finally's later steps are not taken, as stock; while
    _detach runs, the first is the exception being handled."""
    seen = []

    def act(t, peer):
        server = t._server
        real = server._detach

        def detach(*args):
            seen.append(sys.exc_info()[1])
            real(*args)  # (the count right: wait_closed() waits for it on 3.12+)
            raise KeyError("from _detach")

        server._detach = detach
        t.close()

    act.raise_ = ValueError("from connection_lost")
    events, got, end, handled, t, counts = _exchange(tloop, act)
    assert len(handled) == 1, handled
    exc = handled[0]["exception"]
    assert type(exc) is KeyError and exc.__context__ is act.raise_
    assert handled[0]["message"] == _handler_message(tloop)
    assert seen == [act.raise_]
    # the finally stopped at _detach: the server is still the transport's
    assert t._server is not None and t._protocol is None and counts[0] == 0


@pytest.mark.parametrize("kind", ["io_uring", "epoll"])
def test_a_subclass_and_a_patched_call_connection_lost_run_python(kind, monkeypatch):
    """A subclass of SocketTransport and a patched _call_connection_lost run
    the Python method (stream.py's frame), which is the rule; the plain class
    runs none (decision 834)."""
    pytest.importorskip("uringloop")
    from conftest import finish_loop, make_loop

    from uringloop.transports.stream import SocketTransport

    py = SocketTransport._call_connection_lost.fallback
    assert isinstance(py, types.FunctionType)

    class Sub(SocketTransport):
        pass

    def run(cls):
        lp = make_loop(kind)
        hook, calls = _py_frames()

        async def main():
            loop = asyncio.get_running_loop()
            lost = loop.create_future()

            class P(asyncio.Protocol):
                def connection_lost(self, exc):
                    lost.set_result(exc)

            a, b = socket.socketpair()
            with b:
                a.setblocking(False)
                t = cls(loop, a, P())
                await asyncio.sleep(0)
                sys.setprofile(hook)
                try:
                    t.close()
                    assert await wait_for(lost) is None
                finally:
                    sys.setprofile(None)
            return t

        try:
            t = run_in(lp, main())
        finally:
            finish_loop(lp)
        return t, calls

    t, calls = run(SocketTransport)
    assert "_call_connection_lost" not in calls, calls
    t, calls = run(Sub)
    assert "_call_connection_lost" in calls, calls
    assert t.get_extra_info("socket").fileno() == -1
    patched = []

    def wrapper(self, exc):
        patched.append(exc)
        return py(self, exc)

    monkeypatch.setattr(SocketTransport, "_call_connection_lost", wrapper)
    t, calls = run(SocketTransport)
    assert patched == [None]
    assert calls.count("_call_connection_lost") == 1, calls  # stream.py's, via the wrapper


# --------------------------------------------------------------------------
# what the core methods answer of themselves (decision 835)


@pytest.mark.parametrize("name", ["close", "_call_connection_lost"])
def test_the_core_methods_answer_as_their_python_functions(name):
    """SocketTransport.close and ._call_connection_lost are core methods
    (820, 834); their __name__, __qualname__, __module__, __doc__ and
    signatures (of the class's and of a transport's bound method) are the
    Python function's (its fallback), and a handle's repr and asyncio's
    callback format read as for a bound method of that function."""
    pytest.importorskip("uringloop")
    from asyncio import format_helpers

    from conftest import finish_loop, make_loop

    from uringloop.transports.stream import SocketTransport

    m = SocketTransport.__dict__[name]
    assert type(m).__name__ == "CoreMethod"
    py = m.fallback
    assert isinstance(py, types.FunctionType) and py.__code__.co_filename.endswith("stream.py")
    assert py.__qualname__ == f"SocketTransport.{name}"
    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        assert getattr(m, attr) == getattr(py, attr), attr
    assert inspect.signature(m) == inspect.signature(py)
    lp = make_loop("epoll")
    try:
        a, b = socket.socketpair()
        with a, b:

            async def make():
                return SocketTransport(asyncio.get_running_loop(), a, asyncio.Protocol())

            t = run_in(lp, make())
            bound, pybound = getattr(t, name), types.MethodType(py, t)
            assert inspect.signature(bound) == inspect.signature(pybound)
            assert bound.__qualname__ == pybound.__qualname__
            args = (None,) if name == "_call_connection_lost" else ()
            for debug in (False, True):
                lp.set_debug(debug)
                h, hp = asyncio.Handle(bound, args, lp), asyncio.Handle(pybound, args, lp)
                assert repr(h) == repr(hp)
                assert format_helpers._format_callback_source(bound, args) == (
                    format_helpers._format_callback_source(pybound, args)
                )
            lp.set_debug(False)
            assert repr(h).startswith(f"<Handle SocketTransport.{name}("), repr(h)
            run_in(lp, asyncio.sleep(0))
            t.abort()
            run_in(lp, asyncio.sleep(0))
    finally:
        finish_loop(lp)


def test_the_other_core_methods_name_themselves():
    """write and is_closing (no Python function behind them) give their own
    name, the class's qualified name and module, fallback None."""
    pytest.importorskip("uringloop")
    from uringloop.transports.stream import SocketTransport

    m = SocketTransport.__dict__["write"]
    assert (m.__name__, m.__qualname__, m.__module__) == (
        "write", "SocketTransport.write", SocketTransport.__module__
    )
    assert m.fallback is None and not hasattr(m, "__signature__")
    assert isinstance(m.__doc__, str)


def test_a_patched_on_recv_still_gets_the_closing_transports_last_record(tloop, monkeypatch):
    """The closing transport's final receive record is the Stream's only
    while the class keeps stream.py's _on_recv (decision 833): a patched
    _on_recv gets it, as before."""
    if not _ours(tloop):
        pytest.skip("the method patched is uringloop's SocketTransport._on_recv")
    from uringloop.transports.stream import SocketTransport

    orig, seen = SocketTransport._on_recv, []

    def on_recv(self, res, more, data):
        seen.append((res < 0, more, data))
        return orig(self, res, more, data)

    monkeypatch.setattr(SocketTransport, "_on_recv", on_recv)
    events, got, end, handled, t, counts = _exchange(tloop, _write_close)
    assert (events[-2:], got, end) == ([("lost", None), "after"], b"answer", "eof")
    assert (True, False, None) in seen, seen
