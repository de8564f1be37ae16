"""A stream transport's EOF: what eof_received answers, raises or does
decides what follows, as in the stock selector transport (eof_received, then
close() unless it answered true, then connection_lost(None) from _ready;
an exception is the transport's fatal error). On uringloop the plain case
runs in the C core (stream.c stream_eof, decision 707): the same scenarios
on io_uring, epoll and the stock loop, on both ends of a connection."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import is_stock
from transport_helpers import plain_listener, run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below

_EOF_FAILED = "Fatal error: protocol.eof_received() call failed."

# eof_received's behaviour -> the events the stock loop records (after "eof")
SCENARIOS = {
    "none": ["soon", "lost:None"],
    "false": ["soon", "lost:None"],
    "zero": ["soon", "lost:None"],
    "true": ["soon", "closing:False", "lost:None"],
    "one": ["soon", "closing:False", "lost:None"],
    "raise": ["handler:ValueError", "soon", "lost:ValueError"],
    "close-inside": ["soon", "lost:None"],
    "close-inside-true": ["soon", "lost:None"],
    "write-inside": ["soon", "lost:None"],
}
ANSWERS = {"none": None, "false": False, "zero": 0, "true": True, "one": 1}


class _Recorded(asyncio.Protocol):
    """A protocol with its transport kept and made/lost futures."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(None)


async def _pair(loop, factory, side):
    """(transport, protocol, peer socket): the transport is create_server's
    (an accepted connection) or create_connection's, the peer a plain socket."""
    if side == "client":
        lst = plain_listener()
        with lst:
            conn = loop.create_connection(factory, *lst.getsockname())
            (tr, proto), (peer, _) = await wait_for(asyncio.gather(conn, loop.sock_accept(lst)))
        return tr, proto, peer, None
    made = loop.create_future()

    def make():
        p = factory()
        made.set_result(p)
        return p

    server = await loop.create_server(make, "127.0.0.1", 0)
    peer = socket.socket()
    peer.setblocking(False)
    await wait_for(loop.sock_connect(peer, server.sockets[0].getsockname()))
    proto = await wait_for(made)
    await wait_for(proto.made)
    return proto.transport, proto, peer, server


async def _read_until_eof(loop, peer):
    got = bytearray()
    while chunk := await wait_for(loop.sock_recv(peer, 65536)):
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("how", list(SCENARIOS))
def test_eof_received_decides_what_follows(tloop, how, side):
    """The peer shuts its side down: eof_received is called; its answer
    (None, False, 0: close; True, 1: the transport stays open, the
    protocol writes on and closes later), an exception (the stock fatal
    error: the handler, then connection_lost with it), a close() or
    write() inside it; a callback it queues runs before connection_lost,
    which comes once. The peer reads what was written, then EOF."""

    async def main():
        loop = asyncio.get_running_loop()
        events = []
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

        class P(_Recorded):
            def data_received(self, data):
                events.append(("data", bytes(data)))

            def eof_received(self):
                events.append("eof")
                loop.call_soon(events.append, "soon")
                if how == "raise":
                    raise ValueError("boom")
                if how.startswith("close-inside"):
                    self.transport.close()
                    return how.endswith("true")
                if how == "write-inside":
                    self.transport.write(b"bye")
                    return None
                if ANSWERS[how]:
                    self.transport.write(b"late")
                return ANSWERS[how]

            def connection_lost(self, exc):
                events.append(f"lost:{type(exc).__name__ if exc else None}")
                self.lost.set_result(None)

        tr, proto, peer, server = await _pair(loop, P, side)
        with peer:
            await wait_for(loop.sock_sendall(peer, b"hello"))
            peer.shutdown(socket.SHUT_WR)
            if ANSWERS.get(how):
                while "soon" not in events:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0)
                events.append(f"closing:{tr.is_closing()}")
                tr.write(b"more")
                tr.close()
            await wait_for(proto.lost)
            got = await _read_until_eof(loop, peer)
        if server is not None:
            server.close()
            await wait_for(server.wait_closed())
        for ctx in errors:
            events.insert(events.index("soon"), f"handler:{type(ctx['exception']).__name__}")
            assert ctx["message"] == _EOF_FAILED
            assert ctx["protocol"] is proto and ctx["transport"] is tr
        return events, got

    events, got = run_in(tloop, main())
    assert events == [("data", b"hello"), "eof"] + SCENARIOS[how], events
    want = {"write-inside": b"bye"}.get(how, b"latemore" if ANSWERS.get(how) else b"")
    assert got == want


@pytest.mark.parametrize("side", ["server", "client"])
def test_plain_eof_takes_the_c_core_path(tloop, side):
    """A plain EOF (nothing held, nothing ahead in _ready) is handled by the
    C core: eof_received is called and the transport closed without the
    transport's Python _on_recv or _on_eof (decision 707), and an accepted
    connection's close() closes its fd without _close_fd (708); the stock
    order all the same."""

    async def main():
        loop = asyncio.get_running_loop()
        events = []

        class P(_Recorded):
            def eof_received(self):
                events.append("eof")

            def connection_lost(self, exc):
                events.append(("lost", exc))
                self.lost.set_result(None)

        tr, proto, peer, server = await _pair(loop, P, side)
        calls = []
        if not is_stock(loop):
            for name in ("_on_recv", "_on_eof", "_close_fd"):
                real = getattr(tr, name)

                def counting(*args, _real=real, _name=name):
                    calls.append(_name)
                    return _real(*args)

                setattr(tr, name, counting)  # the C core calls the transport's method
        with peer:
            await asyncio.sleep(0)
            peer.shutdown(socket.SHUT_WR)
            await wait_for(proto.lost)
        if server is not None:
            server.close()
            await wait_for(server.wait_closed())
        assert events == ["eof", ("lost", None)]
        assert tr.is_closing()
        # an accepted connection's close is close()'s own; a made socket's
        # goes through _close_fd (decision 708)
        if not is_stock(loop):
            assert calls == ([] if side == "server" else ["_close_fd"]), calls

    run_in(tloop, main())


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("queued", [False, True], ids=["nothing-queued", "queued"])
def test_close_asks_the_stream_once_and_makes_no_queue(tloop, side, queued):
    """close() reads the Stream's idle (0: bytes queued or a send in flight,
    1: neither, 2: neither and nothing fed in part or held) where it read
    buffer, sending, feed_rest and held, whose buffer getter made an empty
    list to answer (decision 790): a close with nothing queued leaves the
    Stream with no write queue; with bytes queued (idle 0) they all leave
    before the EOF, as stock."""
    import gc

    if is_stock(tloop):
        pytest.skip("the Stream is uringloop's C core")
    big = b"x" * (8 << 20)

    async def main():
        loop = asyncio.get_running_loop()

        class P(_Recorded):
            def connection_lost(self, exc):
                self.lost.set_result(exc)

        tr, proto, peer, server = await _pair(loop, P, side)
        core = tr._core
        with peer:
            await asyncio.sleep(0)
            if queued:
                tr.write(big)  # more than the socket takes: queued, sending
                assert core.idle == 0
                tr.close()
                got = await _read_until_eof(loop, peer)
                assert len(got) == len(big) and got == big
            else:
                assert core.idle == 2
                peer.shutdown(socket.SHUT_WR)  # the EOF closes (eof_received: None)
                assert await _read_until_eof(loop, peer) == b""
            assert await wait_for(proto.lost) is None
        if server is not None:
            server.close()
            await wait_for(server.wait_closed())
        return [o for o in gc.get_referents(core) if type(o) is list]

    lists = run_in(tloop, main())
    if not queued:
        assert lists == [], lists
