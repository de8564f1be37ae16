"""Review of stop 47's changes (decisions 1021-1026): the close state in the
C Stream (1002), the op's iovec block (1003), epoll's own fd table (1004),
and the accepted connection's C shortcuts (1009-1010), tried to break; what
broke is fixed here, and the strongest probes stay as guards.
"""

from __future__ import annotations

import asyncio
import select
import socket

import pytest
from conftest import Collector, ensure_nofile, require_uring, run_until
from test_conn_shortcuts import _exchange, _want
from transport_helpers import run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below


def _counts():
    from uringloop import _sched

    counts = getattr(_sched, "shortcut_counts", None)
    return counts() if counts is not None else {}


def _subclass_loop(kind, body):
    """A loop of kind ("io_uring", "epoll" or "stock") whose class is a
    subclass of that kind's with body's attributes."""
    if kind == "stock":
        return type("Sub", (asyncio.SelectorEventLoop,), dict(body))()
    import uringloop

    if kind == "io_uring":
        require_uring()
    return type("Sub", (uringloop.Loop,), dict(body))(backend=kind)


# ---------------------------------------------------------------- 1009


@pytest.mark.parametrize("kind", ["io_uring", "epoll", "stock"])
@pytest.mark.parametrize("how", ["client-close", "write-close"])
def test_a_loop_whose_getattribute_answers_call_soon_is_asked_as_stock_asks(kind, how):
    """A loop class with a __getattribute__ of its own (an instrumenting
    subclass) answers every attribute look-up, `loop.call_soon` included:
    the stock transport's connection_made and _call_connection_lost are
    scheduled through what it answers, and so are uringloop's (with the
    first _start_reading), as before 1009. Its shortcut took Core's soon()
    when the class's call_soon was Core's own, with no look-up at all."""
    seen = []

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name != "call_soon":
            return value

        def call_soon(callback, *args, **kw):
            seen.append(getattr(callback, "__name__", None))
            return value(callback, *args, **kw)

        return call_soon

    lp = _subclass_loop(kind, {"__getattribute__": __getattribute__})
    try:
        counts = _counts()
        events, got, end, handled = _exchange(lp, how)
        after = _counts()
    finally:
        lp.close()
    assert (events, got, end, handled) == (*_want(how), "eof", [])
    names = ["connection_made", "_call_connection_lost"]
    if kind != "stock":
        names.append("start_reading")
        assert after.get("call_soon") == counts.get("call_soon")
    for name in names:
        assert seen.count(name) == 1, (name, seen)


# ---------------------------------------------------------------- 1010 (d)


class _Buf(asyncio.BufferedProtocol):
    pass


class _Reader(asyncio.Protocol):
    """Records how its bytes come (data_received, or get_buffer and
    buffer_updated) and closes on the first."""

    def __init__(self, log, done):
        self.log, self.done, self.buf = log, done, bytearray(4096)

    def connection_made(self, transport):
        self.t = transport
        self.log.append("made")

    def get_buffer(self, sizehint):
        self.log.append("get_buffer")
        return self.buf

    def buffer_updated(self, nbytes):
        self.log.append(("updated", bytes(self.buf[:nbytes])))
        self.t.close()

    def data_received(self, data):
        self.log.append(("data", data))
        self.t.close()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


def _reader_shapes():
    """Protocol classes isinstance(p, BufferedProtocol) answers for through
    something other than the type's own bases (or not at all)."""

    class GetAttribute(_Reader):  # answers __class__ itself
        def __getattribute__(self, name):
            if name == "__class__":
                return _Buf
            return object.__getattribute__(self, name)

    class GetAttr(_Reader):  # asked only for what is missing: not __class__
        def __getattr__(self, name):
            if name == "__class__":
                return _Buf
            raise AttributeError(name)

    class Meta(type):
        def __instancecheck__(cls, inst):  # (the protocol's metaclass: not asked)
            return True

    class WithMeta(_Reader, metaclass=Meta):
        pass

    class Slots(_Reader):
        __slots__ = ("extra",)

    class InDict(_Reader):  # an instance key __class__: object's descriptor wins
        def __init__(self, log, done):
            super().__init__(log, done)
            self.__dict__["__class__"] = _Buf

    class Switched(_Reader):  # made a BufferedProtocol in connection_made
        def connection_made(self, transport):
            super().connection_made(transport)
            self.__class__ = SwitchedBuf

    class SwitchedBuf(Switched, asyncio.BufferedProtocol):
        pass

    return [GetAttribute, GetAttr, WithMeta, Slots, InDict, Switched]


@pytest.mark.parametrize("shape", range(6))
def test_protocol_shapes_are_read_as_stock_decides(tloop, shape):
    """How a protocol's bytes come (data_received, or get_buffer and
    buffer_updated) is what stock's isinstance(protocol, BufferedProtocol)
    at the transport's set-up decides, for protocols whose answer is not
    their type's bases: a __getattribute__ that names a BufferedProtocol
    subclass as __class__ (1010 (d)'s shortcut must ask it: its class does
    not look attributes up the generic way), a __getattr__ (never asked for
    __class__), a metaclass with __instancecheck__ (the protocol's: not
    the one isinstance asks), __slots__, an instance key __class__, and a
    class changed in connection_made (after the decision, as stock)."""
    cls = _reader_shapes()[shape]

    async def main():
        loop = asyncio.get_running_loop()
        log = []
        done = loop.create_future()
        server = await loop.create_server(lambda: cls(log, done), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()

        def peer():
            with socket.create_connection(addr, timeout=10) as s:
                s.sendall(b"GET")
                while s.recv(100):
                    pass

        await wait_for(asyncio.to_thread(peer))
        await wait_for(done)
        server.close()
        await wait_for(server.wait_closed())
        return log

    buffered = shape == 0
    want = ["made", "get_buffer", ("updated", b"GET")] if buffered else ["made", ("data", b"GET")]
    assert run_in(tloop, main()) == want


# ---------------------------------------------------------------- 1004


def test_fd_tables_grow_under_waiting_ops(eng, socketpair):
    """Ops waiting on low fd numbers (a receive and a poll for bytes to come,
    a send for room) while the fd table, and epoll's own beside it (1004),
    grow by four steps for ops on higher numbers: what each waiting op's
    entry holds (epoll: its registration, its poll and write queues) is
    kept across each growth, and every op completes. (Epoll's table reset
    whole at a growth, not from its old end: the poll and the send never
    complete; test_engine_idle_memory's fd tests pass with it.)"""
    import os

    ensure_nofile(1400)
    spare, _peer = socketpair()
    waits = []  # (a, b, got, polled, sent, what b read)
    for _ in range(3):
        a, b = socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        w = (a, b, Collector("got"), Collector("polled"), Collector("sent"), bytearray())
        eng.recv(a.fileno(), w[2])
        eng.poll(a.fileno(), select.POLLIN, w[3])
        eng.send(a.fileno(), b"s" * 300_000, w[4])
        waits.append(w)
    for _ in range(3):
        eng.run(0.01)
    assert not any(w[2].records or w[3].records or w[4].records for w in waits)
    highs = []
    try:
        for hi in (300, 600, 900, 1200):  # a step of the table each (256 entries)
            os.dup2(spare.fileno(), hi)
            highs.append(hi)
            c = Collector("high")
            eng.poll(hi, select.POLLOUT, c)
            run_until(eng, lambda c=c: c.done, what="the high fd's poll")
        for w in waits:
            w[1].send(b"x")

        def all_done():
            for w in waits:
                try:
                    w[5].extend(w[1].recv(1 << 20))
                except BlockingIOError:
                    pass
            return all(w[2].payload() == b"x" and w[3].done and w[4].done for w in waits)

        run_until(eng, all_done, timeout=20, what="every waiting op")
        for a, b, _got, polled, sent, read in waits:
            assert polled.res & select.POLLIN and sent.res == 300_000
            while len(read) < 300_000:
                read.extend(b.recv(1 << 20))
            assert bytes(read) == b"s" * 300_000
            eng.cancel_fd(a.fileno())
        run_until(eng, lambda: eng.in_flight == 0, what="the cancels")
    finally:
        for hi in highs:
            eng.fd_closing(hi)
            os.close(hi)


# ---------------------------------------------------------------- 1002


def _peer(addr, eof):
    """Sends b"GET" (then its EOF when eof), reads to the end: what it read
    and how its read ended."""
    got = bytearray()
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"GET")
        if eof:
            s.shutdown(socket.SHUT_WR)
        try:
            while True:
                piece = s.recv(65536)
                if not piece:
                    return bytes(got), "eof"
                got.extend(piece)
        except ConnectionResetError:
            return bytes(got), "reset"


def _eof_kept_once(p):
    """eof_received: the first keeps the transport open, writes, and pauses
    and resumes reading (stock then reads the EOF again, 461); the second
    closes."""
    p.n = getattr(p, "n", 0) + 1
    if p.n == 1:
        p.t.write(b"bye")
        p.t.pause_reading()
        asyncio.get_running_loop().call_soon(p.t.resume_reading)
        return True
    return None


def _writes(p, n):
    for _ in range(n):
        p.t.write(b"x")


_CLOSE_ORDERS = {
    "close in data_received, six writes after": (
        {"data": lambda p: (p.t.close(), _writes(p, 6))},
        False,
    ),
    "abort in data_received, six writes after": (
        {"data": lambda p: (p.t.abort(), _writes(p, 6))},
        False,
    ),
    "write, close, abort": (
        {"data": lambda p: (p.t.write(b"ans"), p.t.close(), p.t.abort())},
        False,
    ),
    "abort, close": ({"data": lambda p: (p.t.abort(), p.t.close())}, False),
    "the peer's EOF, abort in eof_received": ({"eof": lambda p: p.t.abort()}, True),
    "the peer's EOF kept open, paused, resumed": ({"eof": _eof_kept_once}, True),
    "the peer's EOF, write and close in eof_received": (
        {"eof": lambda p: (p.t.write(b"bye"), p.t.close())},
        True,
    ),
    "write_eof, close": (
        {"data": lambda p: (p.t.write(b"a"), p.t.write_eof(), p.t.close())},
        False,
    ),
    "writes in connection_lost": (
        {"data": lambda p: p.t.close(), "lost": lambda p: _writes(p, 7)},
        False,
    ),
}


def _close_order(lp, name):
    steps, eof = _CLOSE_ORDERS[name]

    async def main():
        loop = asyncio.get_running_loop()
        log, handled = [], []
        lost = loop.create_future()
        loop.set_exception_handler(lambda _, ctx: handled.append(ctx["message"]))

        def step(p, what):
            return steps.get(what, lambda p: None)(p)

        class P(asyncio.Protocol):
            def connection_made(self, t):
                self.t = t
                log.append(("made", t._conn_lost))

            def data_received(self, data):
                log.append(("data", data, self.t._conn_lost, self.t.is_closing()))
                step(self, "data")
                log.append(("after data", self.t._conn_lost, self.t.is_closing()))

            def eof_received(self):
                log.append(("eof", self.t._conn_lost))
                keep = step(self, "eof")
                log.append(("after eof", self.t._conn_lost, self.t.is_closing()))
                return keep

            def connection_lost(self, exc):
                log.append(("lost", type(exc).__name__ if exc else None, self.t._conn_lost))
                step(self, "lost")
                log.append(("after lost", self.t._conn_lost))
                if not lost.done():
                    lost.set_result(None)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        peer = await wait_for(asyncio.to_thread(_peer, addr, eof))
        await wait_for(lost)
        for _ in range(5):
            await asyncio.sleep(0)
        server.close()
        await wait_for(server.wait_closed())
        return log, peer, handled

    return run_in(lp, main())


@pytest.mark.parametrize("name", list(_CLOSE_ORDERS))
def test_close_orders_count_and_end_as_stock(tloop, name, caplog):
    """The close state the C Stream keeps (1002: _conn_lost, and uringloop's
    _read_done, _fd_closing) read at every protocol callback of close(),
    abort() and the peer's EOF in several orders, with writes after the
    loss, and what the peer reads: as on the stock loop. (close()'s C count
    of 1002 left out: _conn_lost 0 in connection_lost, 14 of 27 fail.)"""
    from transport_helpers import on_stock

    with caplog.at_level("CRITICAL", logger="asyncio"):
        got = _close_order(tloop, name)
        want = on_stock(_close_order, name)
    assert got == want
