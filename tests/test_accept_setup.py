"""What an accepted TCP connection's transport says about itself, on every
kind and on the stock loop (decisions 597-600): uringloop makes an IPv4 or
IPv6 listener's connections from the fd, with no socket object (sockname,
peername and TCP_NODELAY come from the C core's Stream.accepted), and the
transport must still answer as the stock one does."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from transport_helpers import run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below


def _has_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Echo(asyncio.Protocol):
    def __init__(self, made):
        self.made = made
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.append(self)

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def _listener(family, host, proto):
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    sock.bind((host, 0))
    return sock


async def _serve_one(loop, family, host, proto):
    """One connection to a server on a listener made with proto; what its
    transport says before and after it closes."""
    made = []
    server = await loop.create_server(lambda: Echo(made), sock=_listener(family, host, proto))
    addr = server.sockets[0].getsockname()
    r, w = await wait_for(asyncio.open_connection(*addr[:2]))
    w.write(b"x")
    assert await wait_for(r.readexactly(1)) == b"x"
    t = made[0].transport
    tsock = t.get_extra_info("socket")
    seen = {
        "sockname": t.get_extra_info("sockname"),
        "peername": t.get_extra_info("peername"),
        "family": tsock.family,
        "type": tsock.type,
        "proto": tsock.proto,
        "nodelay": tsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "sockname_now": tsock.getsockname(),
    }
    client = w.get_extra_info("sockname")
    w.close()
    assert await wait_for(made[0].lost) is None
    closed = t.get_extra_info("socket")
    after = {
        "socket": type(closed).__name__,
        "fileno": closed.fileno(),
        "family": closed.family,
        "sockname": t.get_extra_info("sockname"),
        "peername": t.get_extra_info("peername"),
    }
    server.close()
    await wait_for(server.wait_closed())
    return addr, client, seen, after


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("proto", [socket.IPPROTO_TCP, 0])
def test_accepted_transport_answers_as_stock(tloop, family, proto):
    """sockname, peername, the socket extra's family/type/proto, and
    TCP_NODELAY (set only when the listener's proto is IPPROTO_TCP, as
    base_events._set_nodelay decides for the accepted socket, which has the
    listener's proto); after the close, the socket extra is a closed socket
    of that family and the names stay."""
    if family == "ipv6" and not _has_ipv6():
        pytest.skip("no IPv6 loopback here")
    fam, host = (socket.AF_INET, "127.0.0.1") if family == "ipv4" else (socket.AF_INET6, "::1")

    async def main():
        addr, client, seen, after = await _serve_one(tloop, fam, host, proto)
        assert seen["sockname"] == addr == seen["sockname_now"]
        assert seen["peername"] == client
        assert (seen["family"], seen["type"], seen["proto"]) == (fam, socket.SOCK_STREAM, proto)
        assert bool(seen["nodelay"]) == (proto == socket.IPPROTO_TCP)
        assert after == {
            "socket": "TransportSocket",
            "fileno": -1,
            "family": fam,
            "sockname": addr,
            "peername": client,
        }

    run_in(tloop, main())


def test_accepted_sockname_shared(tloop):
    """Connections of one listener share one sockname tuple on uringloop
    (equal on the stock loop): kept by the C core's cache."""

    async def main():
        made = []
        server = await tloop.create_server(lambda: Echo(made), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        conns = [await wait_for(asyncio.open_connection(*addr)) for _ in range(3)]
        for r, w in conns:
            w.write(b"y")
            assert await wait_for(r.readexactly(1)) == b"y"
        names = [p.transport.get_extra_info("sockname") for p in made]
        assert names == [addr] * 3
        if type(tloop).__module__.startswith("uringloop"):
            assert names[0] is names[1] is names[2]
        for _, w in conns:
            w.close()
        for p in made:
            await wait_for(p.lost)
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


def test_accepted_receive_identity_costs_no_syscall(tloop, request):
    """On io_uring (kernel multishot receives, 6.7+) an accepted connection's
    receive takes its file's identity from the ring, not with a getsockopt
    of its own (decision 601): ident_captures does not move over 3 echoed
    connections, ident_cookies counts one per connection."""
    stats = getattr(tloop, "engine_stats", None)
    if stats is None or request.node.callspec.params["tloop"] != "io_uring":
        pytest.skip("the ring's identity is io_uring's, with kernel multishot receives")
    from uringloop import engine

    ops = engine.backend_info().get("opcodes") or ()
    if "READ_MULTISHOT" not in ops or "URING_CMD" not in ops:
        pytest.skip("SOCKET_URING_OP_GETSOCKOPT needs kernel 6.7 (as READ_MULTISHOT)")

    async def main():
        made = []
        server = await tloop.create_server(lambda: Echo(made), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        before = stats()
        for _ in range(3):
            r, w = await wait_for(asyncio.open_connection(*addr))
            w.write(b"z")
            assert await wait_for(r.readexactly(1)) == b"z"
            w.close()
            await wait_for(made[-1].lost)
        after = stats()
        server.close()
        await wait_for(server.wait_closed())
        return before, after

    before, after = run_in(tloop, main())
    assert after["ident_cookies"] - before["ident_cookies"] >= 3
    # the client side's receives (open_connection) take theirs from the ring too
    assert after["ident_captures"] == before["ident_captures"]


def test_accepted_fd_of_an_open_transport_is_refused(tloop):
    """An accepted connection whose fd number an open transport still holds
    (its fd closed behind its back) is refused, the connection closed
    (uringloop's _ensure_fd_no_transport on every transport it makes); the
    Acceptor asks that check in Python only when a registry has the number
    (decision 620), so this is the case the quick filter must not skip."""
    if not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the stock loop registers the new transport over the old one")
    import os

    async def main():
        made, calls = [], []

        def factory():
            calls.append(1)
            return Echo(made)

        server = await tloop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        ra, wa = await wait_for(asyncio.open_connection(*addr))
        wa.write(b"a")
        assert await wait_for(ra.readexactly(1)) == b"a"
        ta = made[0].transport
        fd = ta.get_extra_info("socket").fileno()
        csock = socket.socket()  # the client's, made before the number is free
        csock.setblocking(False)
        saved = os.dup(fd)  # the file lives on; its number is free
        os.close(fd)
        holes = []  # every lower free number taken: the accept gets fd
        try:
            while True:
                n = os.open(os.devnull, os.O_RDONLY)
                if n >= fd:
                    os.close(n)
                    break
                holes.append(n)
            await wait_for(tloop.sock_connect(csock, addr))
            assert await wait_for(tloop.sock_recv(csock, 10)) == b""  # refused: closed
            assert len(calls) == 2 and len(made) == 1  # no connection_made
        finally:
            os.dup2(saved, fd)  # the transport's file at its number again
            os.close(saved)
            for n in holes:
                os.close(n)
            csock.close()
        # the first connection is untouched: it still echoes
        wa.write(b"b")
        assert await wait_for(ra.readexactly(1)) == b"b"
        wa.close()
        assert await wait_for(made[0].lost) is None
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


@pytest.mark.parametrize("kind", ["io_uring", "epoll", "stock"])
def test_a_subclass_own_make_socket_transport_makes_accepted_transports(kind):
    """A loop subclass that overrides _make_socket_transport (stock's
    _accept_connection2 calls it for every accepted connection) has it called
    for a TCP listener's connections too: the fd-only path of decision 597 is
    for the loop's own method alone."""
    import uringloop

    base = asyncio.SelectorEventLoop if kind == "stock" else uringloop.Loop
    made_by_sub = []

    class Sub(base):
        def _make_socket_transport(self, sock, protocol, *args, **kwargs):
            made_by_sub.append(sock.family)
            return super()._make_socket_transport(sock, protocol, *args, **kwargs)

    lp = Sub() if kind == "stock" else Sub(backend=kind)
    try:

        async def main():
            made = []
            server = await lp.create_server(lambda: Echo(made), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(made[0].lost, 10)
            server.close()
            await server.wait_closed()

        lp.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        lp.close()
    # the client's own transport is made by the same method: the server's is
    # the one more
    assert made_by_sub.count(socket.AF_INET) == 2, made_by_sub


def test_accepted_fd_of_a_closed_transport_skips_the_python_check(tloop):
    """A connection accepted on the number of a transport that closed (still
    registered for it while alive: here its protocol keeps it) is made
    without loop._ensure_fd_no_transport's Python check: the Acceptor's
    filter passes over a registered transport that is closing (decision
    693), as the check itself would. Every connection is made and echoes."""
    if not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the filter is uringloop's Acceptor's")

    async def main():
        made, checks = [], []
        real = tloop._ensure_fd_no_transport

        def counting(fd):
            # the Acceptor's (an fd number, not from the sock_* methods'
            # check; from _on_accept's frame, or since 867 from C under
            # the loop's)
            if isinstance(fd, int) and not sys._getframe(1).f_code.co_filename.endswith(
                "/uringloop/sock.py"
            ):
                checks.append(fd)
            return real(fd)

        tloop._ensure_fd_no_transport = counting
        try:
            server = await tloop.create_server(lambda: Echo(made), "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            fds = []
            for i in range(6):
                r, w = await wait_for(asyncio.open_connection(*addr))
                w.write(b"%d" % i)
                assert await wait_for(r.readexactly(1)) == b"%d" % i
                fds.append(made[-1].transport._core.fd)
                w.close()
                assert await wait_for(made[-1].lost) is None
                await asyncio.sleep(0.01)  # the engine's close of the fd completes
            server.close()
            await wait_for(server.wait_closed())
        finally:
            del tloop._ensure_fd_no_transport
        return fds, checks

    fds, checks = run_in(tloop, main())
    assert len(set(fds)) < len(fds), f"no fd number was reused: {fds}"
    assert checks == [], (fds, checks)


@pytest.mark.parametrize("closer", ["client", "server"])
def test_a_lost_transport_goes_with_its_last_reference(tloop, closer):
    """Once connection_lost has run and the protocol has let go of it, an
    accepted uringloop transport is freed with its last reference, no
    garbage collection needed: its C core stops holding it (decision 694),
    at once, or when the core's last op ends (the server's close leaves
    its cancelled receive to finish: 695). The stock transport keeps a
    bound method of its own, a cycle. Every callback came, in the stock
    order, on every kind. The client is a thread's blocking socket, so the
    server's loop waits in the engine for each of its records."""
    import gc
    import threading
    import weakref

    logs, refs, cores = [], [], []

    class Logged(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.log = [("made",)]
            logs.append(self.log)
            refs.append(weakref.ref(transport))

        def data_received(self, data):
            self.log.append(("data", data))
            self.transport.write(data)
            if closer == "server":
                self.transport.close()

        def eof_received(self):
            self.log.append(("eof",))

        def connection_lost(self, exc):
            self.log.append(("lost", exc))
            if closer == "client" and hasattr(self.transport, "_core"):
                # a C core kept past its transport, taken once released
                # (a reference taken before would refuse the release)
                t = self.transport
                asyncio.get_running_loop().call_soon(lambda: cores.append(t._core))
            else:
                cores.append(None)

    def client(port, n, done):
        try:
            for i in range(n):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"%d" % i)
                    assert s.recv(10) == b"%d" % i
                    if closer == "server":
                        assert s.recv(10) == b""
        finally:
            done.set()

    async def main():
        server = await tloop.create_server(Logged, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        gc.collect()
        gc.disable()
        try:
            done = threading.Event()
            th = threading.Thread(target=client, args=(port, 5, done))
            th.start()
            for _ in range(1000):  # the client's 5 connections, then their ends
                if done.is_set() and len(cores) == 5:
                    break
                await asyncio.sleep(0.01)
            th.join(10)
            for _ in range(3):  # the engine's close of the last fd, its records
                await asyncio.sleep(0.01)
            alive = sum(r() is not None for r in refs)
        finally:
            gc.enable()
        server.close()
        await wait_for(server.wait_closed())
        return alive

    alive = run_in(tloop, main())
    want = [("made",), ("data", b"0"), ("eof",), ("lost", None)]
    if closer == "server":
        want = [("made",), ("data", b"0"), ("lost", None)]
    assert logs == [[(e[0], b"%d" % i) if e[0] == "data" else e for e in want] for i in range(5)]
    if type(tloop).__module__.startswith("uringloop"):
        assert alive == 0
        from uringloop import _sched

        for core in filter(None, cores):  # unlinked by the transport's __del__:
            # it reaches no freed transport, nor does the fd registry
            assert _sched.stream_for_fd(tloop, core.fd) is None
            assert core._fatal_error(OSError(), "x") is None
            core.release()
            core.unlink()


# --------------------------------------------------------------------------
# decisions 753-755: an accepted connection's Python steps


def _stream_py_calls(names):
    """A sys.setprofile hook recording calls of stream.py functions whose
    names are in names (and the list it appends to)."""
    calls = []

    def hook(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code.co_name in names and code.co_filename.endswith("stream.py"):
                calls.append(code.co_name)

    return hook, calls


def _one_accepted_connection(tloop, hook, buffered=False):
    """One accepted connection under sys.setprofile(hook): the peer sends
    b"x", reads the echo, shuts its side; the server's protocol lets the EOF
    close (eof_received answers None), then the transport is lost and freed.
    The protocol's events and weak references to the server's transports."""
    import gc
    import weakref

    async def main():
        loop = asyncio.get_running_loop()
        events, refs, lost = [], [], loop.create_future()

        class P(asyncio.BufferedProtocol if buffered else asyncio.Protocol):
            def connection_made(self, transport):
                events.append("made")
                refs.append(weakref.ref(transport))
                self.t = transport
                self.buf = bytearray(16)

            def data_received(self, data):
                events.append(("data", data))
                self.t.write(data)

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                self.data_received(bytes(self.buf[:nbytes]))

            def eof_received(self):
                events.append("eof")

            def connection_lost(self, exc):
                events.append(("lost", exc))
                self.t = None
                lost.set_result(None)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        peer = socket.socket()  # (a plain socket: every transport here is the server's)
        peer.setblocking(False)
        sys.setprofile(hook)
        try:
            with peer:
                await wait_for(loop.sock_connect(peer, addr))
                await wait_for(loop.sock_sendall(peer, b"x"))
                assert await wait_for(loop.sock_recv(peer, 10)) == b"x"
                peer.shutdown(socket.SHUT_WR)
                await wait_for(lost)
                assert await wait_for(loop.sock_recv(peer, 10)) == b""
            for _ in range(3):  # the engine's close of the fd, its records
                await asyncio.sleep(0.01)
            gc.collect()
        finally:
            sys.setprofile(None)
        server.close()
        await wait_for(server.wait_closed())
        return events, refs

    events, refs = run_in(tloop, main())
    assert events == ["made", ("data", b"x"), "eof", ("lost", None)]
    assert all(r() is None for r in refs)


def test_an_accepted_connection_skips_the_frames_written_out(tloop):
    """A plain accepted connection (echo, the client's EOF, close, lost, the
    transport freed) runs no Acceptor._connection or SocketTransport._begin
    (written out in _on_accept and _accepted, decision 753), no Python
    __del__ (the C core's, 754), no _start_reading (the Stream's
    start_reading, 755), no _accepted (made in C, 811) and no close (the
    EOF's close is the Stream's, 812), no _call_connection_lost (the
    core method's C, 834) and no _on_accept (its record taken in C, 867);
    the callbacks as stock."""
    if not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the frames counted are uringloop's stream.py's")
    names = ("_connection", "_begin", "_start_reading", "_del_slow", "__del__",
             "_on_accept", "_accepted", "close", "_call_connection_lost")
    hook, calls = _stream_py_calls(names)
    _one_accepted_connection(tloop, hook)
    assert calls == [], calls


@pytest.mark.parametrize("how", ["patched", "queued"])
def test_an_accepted_connections_eof_close_as_stock(tloop, how, monkeypatch):
    """The close() an accepted connection's EOF makes is the Stream's C copy
    (decision 812) only while the class keeps stream.py's close and nothing
    is pending: a patched close is called once at the EOF, as stock calls
    its own; bytes eof_received wrote (queued on io_uring until the flush)
    leave before the peer's EOF, whichever close ran. The callbacks as
    stock."""
    if how == "patched" and not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the method patched is uringloop's SocketTransport.close")
    closes = []
    if how == "patched":
        from uringloop.transports.stream import SocketTransport

        real = SocketTransport.close

        def counting(self):
            if self._server is not None:  # (the server's transports only)
                closes.append("close")
            return real(self)

        monkeypatch.setattr(SocketTransport, "close", counting)

    async def main():
        loop = asyncio.get_running_loop()
        events, lost = [], loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                events.append("made")
                self.t = transport

            def data_received(self, data):
                events.append(("data", data))

            def eof_received(self):
                events.append("eof")
                if how == "queued":
                    self.t.write(b"bye")

            def connection_lost(self, exc):
                events.append(("lost", exc))
                lost.set_result(None)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        peer = socket.socket()
        peer.setblocking(False)
        got = b""
        with peer:
            await wait_for(loop.sock_connect(peer, addr))
            await wait_for(loop.sock_sendall(peer, b"x"))
            peer.shutdown(socket.SHUT_WR)
            await wait_for(lost)
            while True:
                piece = await wait_for(loop.sock_recv(peer, 10))
                if not piece:
                    break
                got += piece
        server.close()
        await wait_for(server.wait_closed())
        return events, got

    events, got = run_in(tloop, main())
    assert events == ["made", ("data", b"x"), "eof", ("lost", None)], events
    if how == "patched":
        assert closes == ["close"], closes
        assert got == b""
    else:
        assert got == b"bye"


@pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
def test_an_accepted_connection_calls_its_stream_once_at_each_end(tloop, buffered):
    """The Stream's calls from Python over one accepted connection's life:
    the transport is made by accepted_transport's C (decision 811), called
    from the accept record's C (867), no call from Python,
    which also binds the protocol, sets direct and turns the fast paths on
    (785), and _call_connection_lost's lost() (in C since 834) unbinds it
    and releases the transport (786): no set_protocol or release call of
    their own; the callbacks (a Protocol's and a BufferedProtocol's) and the
    transport freed with its last reference (694) as stock."""
    if not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the calls counted are uringloop's C core's")
    calls = []

    def hook(frame, event, arg):
        if event == "c_call":
            name = getattr(arg, "__qualname__", "")
            if name.startswith("Stream.") or name == "accepted_transport":
                calls.append(name)

    _one_accepted_connection(tloop, hook, buffered)
    # (the transport made in C, decision 811: accepted()'s work inside
    # accepted_transport's, no call of its own from Python; and that called
    # from the accept record's C, not from Python: 867)
    assert calls.count("accepted_transport") == 0, calls
    assert "Stream.accepted" not in calls, calls
    assert "Stream.lost" not in calls, calls  # (the C _call_connection_lost's, 834)
    assert "Stream.set_protocol" not in calls, calls
    assert "Stream.release" not in calls, calls


@pytest.mark.parametrize("what", ["pause", "close", "patched"])
def test_an_accepted_connection_starts_reading_as_stock(tloop, what, monkeypatch):
    """The first _start_reading of an accepted connection is the Stream's
    (decision 755); what connection_made did still decides: paused, nothing
    comes until resume_reading; closed, nothing is read; a class whose
    _start_reading is replaced gets it called, as the stock loop calls its
    _add_reader from its own handle."""
    if what == "patched" and not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the method patched is uringloop's SocketTransport._start_reading")
    ours = type(tloop).__module__.startswith("uringloop")
    if what == "pause" and sys.version_info < (3, 11) and not ours:
        pytest.skip(
            "3.10's stock transport adds its reader after connection_made even when "
            "connection_made paused it (its _add_reader checks only _closing; 3.11 "
            "checks is_reading()): ours waits for resume_reading on every version"
        )
    events = []
    if what == "patched":
        from uringloop.transports.stream import SocketTransport

        real = SocketTransport._start_reading

        def counting(self):
            if self._server is not None:  # (not the client's transport)
                events.append("start")
            return real(self)

        monkeypatch.setattr(SocketTransport, "_start_reading", counting)

    async def main():
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                events.append("made")
                self.t = transport
                if what == "pause":
                    transport.pause_reading()
                    loop.call_later(0.05, self.resume)
                elif what == "close":
                    transport.close()

            def resume(self):
                events.append("resume")
                self.t.resume_reading()

            def data_received(self, data):
                events.append(("data", bytes(data)))
                self.t.close()

            def connection_lost(self, exc):
                events.append(("lost", exc))
                lost.set_result(None)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        r, w = await wait_for(asyncio.open_connection(*addr))
        w.write(b"abc")
        await wait_for(lost)
        w.close()
        try:
            await wait_for(w.wait_closed())
        except ConnectionError:
            pass  # (closed with the bytes unread: a reset, as stock)
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())
    if what == "close":
        assert events == ["made", ("lost", None)]
    elif what == "pause":
        assert events == ["made", "resume", ("data", b"abc"), ("lost", None)]
    else:
        assert events == ["made", "start", ("data", b"abc"), ("lost", None)], events


def test_a_transports_del_is_the_c_cores_with_the_python_rest():
    """SocketTransport.__del__ is the C core's (decision 754): with the
    socket gone (_sockobj None) it unlinks the transport's _core, or does
    nothing without one; an unclosed transport gets _del_slow, base.py's:
    its ResourceWarning, its socket closed."""
    import warnings

    from uringloop.transports.stream import SocketTransport

    class FakeCore:
        unlinked = 0

        def __init__(self, fd):
            self.fd = fd

        def unlink(self):
            FakeCore.unlinked += 1

    t = SocketTransport.__new__(SocketTransport)
    t._sockobj = None
    assert SocketTransport.__del__(t) is None  # no _core: nothing
    t._core = FakeCore(-1)  # not a Stream: the Python method unlinks it
    t.__del__()
    assert FakeCore.unlinked == 1
    a, b = socket.socketpair()
    with b:
        u = SocketTransport.__new__(SocketTransport)
        u._sockobj, u._server, u._closing, u._core = a, None, False, FakeCore(a.fileno())
        u._loop = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            u.__del__()
        assert [str(w.message).split()[:2] for w in caught] == [["unclosed", "transport"]]
        assert a.fileno() == -1  # closed
        u._sockobj = None
    with pytest.raises(TypeError):
        SocketTransport.__del__(object())
    with pytest.raises(TypeError):
        SocketTransport.__del__(t, 1)


# --------------------------------------------------------------------------
# decision 816: an HTTP server's write-then-close makes no socket object


def test_an_accepted_connections_write_then_close_makes_no_socket(tloop):
    """The conn-http-httptools row's server end: the protocol writes its
    answer and closes in data_received. On io_uring the write is queued to
    the turn's end, so close() sends it at once (_send_now); that send went
    through the transport's socket object, made from the _Kind for the one
    call (socket.__init__, its enums). Now it is a write(2) on the fd: no
    socket object is made, and the peer reads the answer, then the EOF."""
    if not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the frames counted are uringloop's stream.py's")
    made = []

    def hook(frame, event, arg):
        if event == "call":
            code = frame.f_code
            # (not the _Kind's closed socket, made once for its listener)
            if (
                code.co_name == "__init__"
                and code.co_filename.endswith("socket.py")
                and frame.f_back.f_code.co_name != "closed"
            ) or (code.co_name == "_sock" and code.co_filename.endswith("stream.py")):
                made.append((code.co_name, frame.f_back.f_code.co_name))

    async def main():
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.t = transport

            def data_received(self, data):
                self.t.write(b"answer:" + data)
                self.t.close()

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        peer = socket.socket()
        peer.setblocking(False)
        got = b""
        with peer:
            await wait_for(loop.sock_connect(peer, addr))
            sys.setprofile(hook)
            try:
                await wait_for(loop.sock_sendall(peer, b"x"))
                while True:
                    piece = await wait_for(loop.sock_recv(peer, 100))
                    if not piece:
                        break
                    got += piece
                assert await wait_for(lost) is None
            finally:
                sys.setprofile(None)
        server.close()
        await wait_for(server.wait_closed())
        return got

    assert run_in(tloop, main()) == b"answer:x"
    assert made == [], made


# --------------------------------------------------------------------------
# decision 820: close() right after a queued write is the Stream's


def _write_then_close(tloop, act, hook=None, reads=True):
    """One accepted connection whose protocol runs act(transport, peer) in
    data_received (after the peer's b"x"); the peer then reads to its EOF
    (reads) or a reset. The server's connection_lost exception, what the
    peer read, and how its read ended ("eof" or the exception's type)."""

    async def main():
        loop = asyncio.get_running_loop()
        lost = loop.create_future()
        box = {}

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.t = transport

            def data_received(self, data):
                act(self.t, box["peer"])

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        peer = box["peer"] = socket.socket()
        peer.setblocking(False)
        got = bytearray()

        async def read():
            while True:  # (concurrently: a big answer waits for the peer's reads)
                try:
                    piece = await wait_for(loop.sock_recv(peer, 1 << 20))
                except OSError as e:
                    return type(e)
                if not piece:
                    return "eof"
                got.extend(piece)

        with peer:
            await wait_for(loop.sock_connect(peer, addr))
            if hook is not None:
                sys.setprofile(hook)
            try:
                await wait_for(loop.sock_sendall(peer, b"x"))
                reader = asyncio.ensure_future(read()) if reads else None
                exc = await wait_for(lost)
            finally:
                sys.setprofile(None)
            end = await wait_for(reader) if reads else None
        server.close()
        await wait_for(server.wait_closed())
        return exc, bytes(got), end

    return run_in(tloop, main())


def test_an_accepted_connections_close_after_a_write_runs_no_python(tloop):
    """The conn-http row's server end (write the answer, close, in
    data_received): on io_uring the write waits for the turn's flush, so
    close() finds it queued; the Stream sends it and closes the fd in C
    (stream_close_fast through the class's core method close, decision 820):
    no close, _send_now, _close_fd, _flush_slow or _sync frame on any kind
    (epoll's write leaves at once, and its close was 708's Python case), nor
    _call_connection_lost (834). The peer reads the answer, then the EOF."""
    if not type(tloop).__module__.startswith("uringloop"):
        pytest.skip("the frames counted are uringloop's stream.py's")
    names = ("close", "_send_now", "_close_fd", "_flush_slow", "_sync", "_call_connection_lost")
    hook, calls = _stream_py_calls(names)

    def act(t, peer):
        t.write(b"answer")
        t.close()

    exc, got, end = _write_then_close(tloop, act, hook)
    assert (exc, got, end) == (None, b"answer", "eof")
    assert calls == [], calls


@pytest.mark.parametrize("chunks", [1, 3])
def test_an_accepted_connections_close_after_a_big_write_as_stock(tloop, chunks):
    """close() with more queued than the socket takes (the high-water mark
    raised, so write() queues it all): what the kernel takes leaves at the
    close, the rest at the turn's flush, then the fd closes (decision 820's
    partial send: the queue's rest as before); the peer reads every byte in
    order, then the EOF; connection_lost(None), as stock."""
    data = [bytes([65 + i]) * ((24 << 20) // chunks) + bytes(range(256)) * 7 for i in range(chunks)]
    left = []

    def act(t, peer):
        t.set_write_buffer_limits(high=64 << 20)
        for d in data:
            t.write(d)
        t.close()
        left.append(t.get_write_buffer_size())

    exc, got, end = _write_then_close(tloop, act)
    assert exc is None and end == "eof"
    assert got == b"".join(data)
    assert 0 < left[0] < sum(map(len, data))  # the socket took a part at close()


@pytest.mark.parametrize("close", [True, False], ids=["write-close", "write"])
def test_an_accepted_connections_close_after_a_write_to_a_reset_peer_as_stock(tloop, close):
    """The peer has reset the connection (SO_LINGER 0) when the protocol
    writes and closes: the send at close() (a queued write's, io_uring) or
    at write() (epoll, stock) fails, and connection_lost gets the error as
    from the stock loop's write(): ConnectionResetError, on every kind
    (decision 478 maps a BrokenPipeError after a reset record our receive
    took; 839 when that record waits unreaped in io_uring's CQ)."""

    def act(t, peer):
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # the reset reaches the server's socket at once (loopback)
        t.write(b"answer")
        if close:
            t.close()

    exc, got, end = _write_then_close(tloop, act, reads=False)
    # on io_uring-fallbacks (no DEFER_TASKRUN) the receive's task work runs
    # as the peer's close(2) returns and its record, not reaped yet, takes
    # the reset: the send gets EPIPE; 478's check looks into the CQ too
    # (decision 839; BrokenPipeError before it)
    assert type(exc) is ConnectionResetError, repr(exc)


@pytest.mark.parametrize(
    "how", ["write_eof", "abort", "big-abort", "paused", "patched", "engine-cancel"]
)
def test_an_accepted_connections_close_after_a_write_interplay_as_stock(tloop, how, monkeypatch):
    """close() after a queued write with the other ways out around it, as
    stock: write_eof first (the bytes, then the EOF); abort() after the
    close (nothing more: the close sent it all, connection_lost(None)
    once); abort() after a close that left bytes queued (they are dropped:
    the peer reads a prefix, connection_lost(None)); the protocol paused
    by a write the kernel took in part (Python's close, which sends nothing
    and waits for the queue to drain: every byte, then the EOF); the
    class's close patched (called, and it reaches stream.py's Python close,
    decision 820's class check); the engine's cancel replaced (called, by
    stream.py's Python close: 820's check that it is the table's)."""
    patched = []
    if how == "patched":
        if not type(tloop).__module__.startswith("uringloop"):
            pytest.skip("the method patched is uringloop's SocketTransport.close")
        from uringloop.transports.stream import SocketTransport

        real = SocketTransport.close

        def counting(self):
            if self._server is not None:
                patched.append("close")
            return real(self)

        monkeypatch.setattr(SocketTransport, "close", counting)
    cancels = []
    if how == "engine-cancel":
        if not type(tloop).__module__.startswith("uringloop"):
            pytest.skip("the method replaced is uringloop's engine's cancel")
        real_cancel = tloop._engine.cancel

        def cancel(ud):
            cancels.append(ud)
            return real_cancel(ud)

        monkeypatch.setattr(tloop._engine, "cancel", cancel)
    hook, calls = _stream_py_calls(("close",))
    big = b"y" * (16 << 20)
    paused = []

    def act(t, peer):
        if how == "write_eof":
            t.write(b"answer")
            t.write_eof()
            t.close()
        elif how == "abort":
            t.write(b"answer")
            t.close()
            t.abort()
        elif how == "big-abort":
            t.set_write_buffer_limits(high=64 << 20)
            t.write(big)
            t.close()
            t.abort()
        elif how == "paused":
            t.write(big)  # over the mark: sent at once, the kernel's rest pauses
            paused.append(t.get_write_buffer_size() > 0)
            t.close()
        else:
            t.write(b"answer")
            t.close()

    exc, got, end = _write_then_close(
        tloop, act, hook if how in ("patched", "engine-cancel") else None
    )
    assert exc is None
    if how == "big-abort":
        assert end in ("eof", ConnectionResetError)
        assert big.startswith(got) and len(got) < len(big)
    elif how == "paused":
        assert paused == [True]
        assert (got, end) == (big, "eof")
    else:
        assert (got, end) == (b"answer", "eof")
    if how == "patched":
        assert patched == ["close"]
        assert calls == ["close"], calls  # stream.py's Python close
    if how == "engine-cancel":
        # an engine.cancel that is not the table's own may run Python code
        # between the reads and the send: stream.py's close calls it
        assert len(cancels) >= 1 and calls == ["close"], (cancels, calls)
# a burst of accepted connections (decision 825), run in a fresh interpreter:
# what it checks is the class's shared instance keys, which the process's
# earlier connections have settled
_BURST = r"""
import asyncio, ctypes, socket, sys
import uringloop
from uringloop.transports.stream import SocketTransport

N = 40
P = ctypes.sizeof(ctypes.c_void_p)


def has_dict(obj):
    # the managed dict's slot, three pointers before the object: 3.11 a dict
    # pointer (NULL while the values array is inline), 3.12 a dict or the
    # values array tagged with its low bit
    v = ctypes.c_void_p.from_address(id(obj) - 3 * P).value or 0
    return bool(v) if sys.version_info < (3, 12) else not (v & 1)


lp = uringloop.Loop(backend=sys.argv[1])


async def main():
    lost, made = [], []

    class Proto(asyncio.Protocol):
        def connection_made(self, t):
            made.append(t)

        def connection_lost(self, exc):
            lost.append(made[0])  # (any: all are checked)

    server = await lp.create_server(Proto, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # N connections made at once: N transports before any of them closes
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(N)]
    while len(made) < N:
        await asyncio.sleep(0.01)
    assert all(type(t) is SocketTransport for t in made)
    for c in clients:
        c.close()  # the server's EOF: eof_received, close
    while sum(t.is_closing() for t in made) < N:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    print(sum(has_dict(t) for t in made), N)
    server.close()
    await server.wait_closed()


lp.run_until_complete(asyncio.wait_for(main(), 30))
lp.close()
"""


@pytest.mark.skipif(
    sys.version_info[:2] not in ((3, 11), (3, 12)),
    reason="reads the managed dict slot of CPython 3.11/3.12's object layout",
)
@pytest.mark.parametrize("kind", ["io_uring", "epoll"])
def test_a_burst_of_accepted_connections_closes_without_instance_dicts(kind):
    """CPython 3.11/3.12 let a class's shared instance keys grow by less with
    every instance made: an attribute a transport first sets at its close
    (_conn_lost, _fd_closing, _close_reset, _read_done) never joined them
    once a burst of connections had made 30 transports, and every transport
    after made a dict of its own at close (decision 825). stream.py put
    those keys in at import; since decision 1002 they are the C core's
    (properties), set on no transport: no transport of the burst has a
    dict."""
    import subprocess

    from conftest import require_uring

    if kind == "io_uring":
        require_uring()
    out = subprocess.run(
        [sys.executable, "-c", _BURST, kind],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "40"], out.stdout
