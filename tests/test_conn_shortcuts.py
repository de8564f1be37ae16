"""A short-lived accepted connection's set-up and close call the loop's and
the engine's C methods with no Python-level lookup when they are the loop's
own (decisions 1009-1010): loop.call_soon (connection_made, the first
_start_reading, _call_connection_lost), the Stream's start_reading bound
method, isinstance(protocol, BufferedProtocol), engine.close_fd and
engine.cancel at the close. What Python would find instead (a call_soon set
on the loop, a Loop subclass's, an engine's close_fd or cancel replaced, a
protocol's own __class__) is called or asked as before. The events are the
stock loop's (each behaviour test runs on it too, unless it counts
uringloop's own shortcuts)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from transport_helpers import run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below


def _ours(lp):
    return type(lp).__module__.startswith("uringloop")


def _counts():
    """The shortcuts' counts ({} on a tree without them: the behaviour tests
    then run as they did before 1009)."""
    from uringloop import _sched

    counts = getattr(_sched, "shortcut_counts", None)
    return counts() if counts is not None else {}


def _exchange(lp, how, before=None):
    """One accepted connection: the peer (_peer) sends b"GET";
    "write-close": the protocol writes b"answer" and closes in data_received
    (the conn-http row's server), "client-close": the peer shuts its side
    down (the echo rows'); the peer reads to its end.
    before(loop) runs once the server listens. The server's events, what
    the peer read, how its read ended, the exception handler's contexts."""

    async def main():
        loop = asyncio.get_running_loop()
        events, handled = [], []
        lost = loop.create_future()
        received = threading.Event()
        loop.set_exception_handler(lambda _, ctx: handled.append(ctx))

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                events.append("made")
                self.t = transport

            def data_received(self, data):
                events.append(("data", data))
                if how == "write-close":
                    self.t.write(b"answer")
                    self.t.close()
                loop.call_soon(events.append, "after")
                received.set()

            def eof_received(self):
                events.append("eof")

            def connection_lost(self, exc):
                events.append(("lost", type(exc).__name__ if exc else None))
                if not lost.done():
                    lost.set_result(None)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        if before is not None:
            before(loop)
        # the peer in a thread of its own, blocking, as the rows' client is
        # another process: the server's loop runs nothing else
        got, end = await wait_for(asyncio.to_thread(_peer, addr, how, received))
        await wait_for(lost)
        for _ in range(3):  # callbacks queued behind connection_lost
            await asyncio.sleep(0)
        server.close()
        await wait_for(server.wait_closed())
        return events, bytes(got), end, handled

    return run_in(lp, main())


def _peer(addr, how, received):
    """The client: sends b"GET"; "client-close": shuts its side down once
    the server has the bytes (received, a threading.Event); reads to the
    end. What it read and how it ended."""
    got = bytearray()
    with socket.create_connection(addr, timeout=30) as peer:
        peer.sendall(b"GET")
        if how == "client-close":
            # once the server has the bytes: the EOF comes in a batch of its
            # own, as on the rows
            assert received.wait(30)
            peer.shutdown(socket.SHUT_WR)
        while True:
            piece = peer.recv(1 << 16)
            if not piece:
                return bytes(got), "eof"
            got.extend(piece)


def _want(how):
    if how == "client-close":
        return ["made", ("data", b"GET"), "after", "eof", ("lost", None)], b""
    return ["made", ("data", b"GET"), ("lost", None), "after"], b"answer"


@pytest.mark.parametrize("how", ["client-close", "write-close"])
def test_a_connections_set_up_and_close_take_the_c_shortcuts(tloop, how):
    """The conn-* rows' two exchanges: three handles made by the loop's own
    call_soon with no lookup, the Stream's start_reading made from its
    method, the fd's close submitted through the table with no call of
    engine.close_fd, and at a close in data_received (its receive alive)
    the receive cancelled the same way, and the protocol found not a
    BufferedProtocol with no __class__ look-up (each count 0 before
    1009-1010). The events as stock."""
    counts = _counts() if _ours(tloop) else None
    events, got, end, handled = _exchange(tloop, how)
    assert (events, got, end, handled) == (*_want(how), "eof", [])
    if counts is None:
        return
    after = _counts()
    delta = {k: after[k] - counts[k] for k in after}
    # (the peer's sock_* calls make no handle through call_soon)
    assert delta == {
        "call_soon": 3,
        "start_reading": 1,
        "close_fd": 1,
        "cancel": 1 if how == "write-close" else 0,
        "isinstance": 1,
    }, delta


@pytest.mark.parametrize("where", ["instance", "subclass"])
@pytest.mark.parametrize("how", ["client-close", "write-close"])
def test_a_call_soon_python_finds_first_is_called_as_before(where, how):
    """loop.call_soon set on the loop (as mock.patch.object does) or a Loop
    subclass's own: it is what schedules connection_made, the first
    _start_reading and _call_connection_lost, as before 1009; the events
    are the same."""
    import uringloop

    seen = []

    def record(cb):
        seen.append(getattr(cb, "__name__", None))

    if where == "subclass":

        class Sub(uringloop.Loop):
            def call_soon(self, callback, *args, context=None):
                record(callback)
                return super().call_soon(callback, *args, context=context)

        lp = Sub()
        before = None
    else:
        lp = uringloop.Loop()

        def before(loop):
            orig = loop.call_soon

            def call_soon(callback, *args, context=None):
                record(callback)
                return orig(callback, *args, context=context)

            loop.call_soon = call_soon

    try:
        counts = _counts()
        events, got, end, handled = _exchange(lp, how, before)
        after = _counts()
    finally:
        lp.close()
    assert (events, got, end, handled) == (*_want(how), "eof", [])
    assert after.get("call_soon") == counts.get("call_soon")
    for name in ("connection_made", "start_reading", "_call_connection_lost"):
        assert seen.count(name) == 1, seen


@pytest.mark.parametrize("name", ["close_fd", "cancel"])
def test_an_engines_replaced_close_fd_or_cancel_is_called_as_before(name):
    """engine.close_fd or engine.cancel replaced on the loop's engine (the
    table's bound method no longer): the close of a connection in
    data_received calls it, as before 1010, and the peer still reads the
    answer, then its end."""
    import uringloop

    lp = uringloop.Loop()
    calls = []

    def before(loop):
        orig = getattr(loop._engine, name)

        def replaced(*args):
            calls.append(args)
            return orig(*args)

        setattr(loop._engine, name, replaced)

    try:
        counts = _counts()
        events, got, end, handled = _exchange(lp, "write-close", before)
        after = _counts()
    finally:
        lp.close()
    assert (events, got, end, handled) == (*_want("write-close"), "eof", [])
    assert after.get(name) == counts.get(name)
    assert len(calls) >= 1, calls


def test_a_protocol_whose_class_says_buffered_is_read_as_stock_reads_it(tloop):
    """isinstance(protocol, BufferedProtocol) asks a protocol's __class__
    when its type is not a subclass: a Protocol whose __class__ property
    names a BufferedProtocol subclass is given its reads through
    get_buffer and buffer_updated, on the stock loop as on ours (1010's
    shortcut takes only the classes whose __class__ is object's own)."""

    class Buf(asyncio.BufferedProtocol):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        events = []
        done = loop.create_future()

        class P(asyncio.Protocol):
            __class__ = property(lambda self: Buf)

            def connection_made(self, transport):
                self.t = transport
                self.buf = bytearray(4096)

            def get_buffer(self, sizehint):
                events.append("get_buffer")
                return self.buf

            def buffer_updated(self, nbytes):
                events.append(("updated", bytes(self.buf[:nbytes])))
                self.t.close()

            def data_received(self, data):
                events.append(("data", data))
                self.t.close()

            def connection_lost(self, exc):
                if not done.done():
                    done.set_result(None)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        got, end = await wait_for(asyncio.to_thread(_peer, addr, "write-close", None))
        await wait_for(done)
        server.close()
        await wait_for(server.wait_closed())
        return events, got, end

    events, got, end = run_in(tloop, main())
    assert events[0] == "get_buffer" and events[-1] == ("updated", b"GET"), events
    assert (got, end) == (b"", "eof")
