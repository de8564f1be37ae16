"""What an idle stream connection keeps (issue 9's idle-RSS row): the values a
transport answers stay the stock ones (the stock loop proves them), while the
objects behind them are shared or never made. Object graphs, and one
tracemalloc total with a wide margin (the sizes asked for: no test here
depends on an allocator's rounding)."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import tracemalloc
import types
import warnings

import pytest
from conftest import is_stock
from transport_helpers import run_in, tloop, until, wait_for

assert tloop  # a fixture, imported for the tests below


class Keep(asyncio.Protocol):
    """A plain protocol: its methods are functions on its class."""

    def __init__(self, made):
        self.made = made

    def connection_made(self, transport):
        self.transport = transport
        self.made.append(transport)

    def data_received(self, data):
        self.transport.write(data)


async def _accepted(loop, n):
    """n connections accepted by a server of this loop, with their clients."""
    made = []
    server = await loop.create_server(lambda: Keep(made), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = []
    for _ in range(n):
        clients.append(await wait_for(asyncio.open_connection("127.0.0.1", port)))
    while len(made) < n:
        await asyncio.sleep(0)
    return server, made, clients


async def _close(server, made, clients, dropped=False):
    """dropped: a transport of this server was collected unclosed. Its
    __del__ closes the socket but never detaches it from the server (stock
    and ours alike), so 3.12's wait_closed, which waits for every
    connection, would wait forever: then the server is only closed."""
    for _, w in clients:
        w.close()
    for t in made:
        t.close()
    server.close()
    if not dropped:
        await wait_for(server.wait_closed())
    await asyncio.sleep(0)


def test_extra_info_values_and_sharing(tloop):
    """sockname and peername are the socket's own (before and after close, as
    stock); on uringloop the connections of one server share one sockname
    tuple and one peer host string."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 3)
        want = [(t.get_extra_info("socket").getsockname(),
                 t.get_extra_info("socket").getpeername()) for t in made]
        for t, (sockname, peername) in zip(made, want, strict=True):
            assert t.get_extra_info("sockname") == sockname
            assert t.get_extra_info("peername") == peername
        if not is_stock(loop):
            first = made[0]
            for t in made[1:]:
                assert t.get_extra_info("sockname") is first.get_extra_info("sockname")
                assert t.get_extra_info("peername")[0] is first.get_extra_info("peername")[0]
        await _close(server, made, clients)
        for t, (sockname, peername) in zip(made, want, strict=True):
            assert t.get_extra_info("sockname") == sockname
            assert t.get_extra_info("peername") == peername

    run_in(tloop, main())


def test_no_per_transport_dict_or_ints(tloop):
    """The transport's attribute dict is never made into a dict object (asking
    for __dict__ makes one), and the default low-water mark is one int."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 2)
        if not is_stock(loop):
            # (3.10, and 3.13 for a class with slots, keep the attributes in
            # a real dict from the start: only 3.11 and 3.12 have values
            # without one)
            if (3, 11) <= sys.version_info < (3, 13):
                for t in made:
                    dicts = [r for r in gc.get_referents(t) if type(r) is dict]
                    assert not any("_sock" in d for d in dicts), "a __dict__ was made"
            assert made[0]._low_water is made[1]._low_water
        assert [t.get_write_buffer_limits() for t in made] == [(16384, 65536)] * 2
        await _close(server, made, clients)

    run_in(tloop, main())


def test_c_core_keeps_functions_not_bound_methods(tloop):
    """The C core keeps a plain protocol's data_received as its function (no
    bound method per transport) and still calls what an instance attribute or
    a non-function callable on the class provides (looked up once, as before)."""

    class Callable:
        def __init__(self):
            self.got = []

        def __call__(self, data):
            self.got.append(data)

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 1)
        t = made[0]
        reader, writer = clients[0]
        if not is_stock(loop):
            refs = gc.get_referents(t._core)
            assert not any(isinstance(r, types.MethodType) for r in refs)
            assert Keep.data_received in refs
        writer.write(b"echo")
        assert await wait_for(reader.readexactly(4)) == b"echo"

        # an instance attribute, set before set_protocol looks it up
        proto = t.get_protocol()
        seen = []
        proto.data_received = seen.append
        t.set_protocol(proto)
        writer.write(b"own")
        while not seen:
            await asyncio.sleep(0.01)
        assert b"".join(seen) == b"own"

        # a callable object on the class, not a function
        class Other(asyncio.Protocol):
            data_received = Callable()

        other = Other()
        t.set_protocol(other)
        writer.write(b"obj")
        while not Other.data_received.got:
            await asyncio.sleep(0.01)
        assert b"".join(Other.data_received.got) == b"obj"
        await _close(server, made, clients)

    run_in(tloop, main())


def test_write_is_the_class_method(tloop):
    """write is found on the class, not kept per transport (on uringloop: the
    C core's method, called with the transport first); bound, through the
    class, shadowed by an instance attribute, and with a wrong argument count
    it behaves as a method does."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 1)
        t = made[0]
        reader, writer = clients[0]
        if not is_stock(loop):
            assert "write" not in vars(t)
        w = t.write  # bound: usable later, as a Python method's would be
        w(b"a")
        type(t).write(t, b"b")
        t.writelines([b"c"])
        assert await wait_for(reader.readexactly(3)) == b"abc"
        with pytest.raises(TypeError):
            t.write()
        with pytest.raises(TypeError):
            t.write(b"x", b"y")
        got = []
        t.write = got.append  # an instance attribute wins, as over a function
        t.write(b"mine")
        assert got == [b"mine"]
        del t.write
        t.write(b"d")
        assert await wait_for(reader.readexactly(1)) == b"d"
        await _close(server, made, clients)

    run_in(tloop, main())


class Quiet(asyncio.Protocol):
    """A protocol with nothing of its own per connection but the transport."""

    def __init__(self, made):
        self.made = made

    def connection_made(self, transport):
        self.made.append(transport)


async def _python_bytes_per_idle_connection(n=100):
    """What the Python heap keeps per accepted, idle connection (see the test
    below), measured three times after a first, unmeasured batch."""
    echoed = []

    class Echo(Quiet):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)
            echoed.append(None)

    async def batch(measure):
        loop = asyncio.get_running_loop()
        made = []
        server = await loop.create_server(lambda: Echo(made), "127.0.0.1", 0, backlog=n + 16)
        port = server.sockets[0].getsockname()[1]
        clients = []
        per_connection = None
        try:
            for _ in range(n):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            for c in clients:
                c.sendall(b"x")
            gc.collect()
            if measure:
                tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0] if measure else 0
                while len(echoed) < n:  # (the clients' reads below block the loop)
                    await wait_for(asyncio.sleep(0.01))
                await asyncio.sleep(0.05)  # the echoes leave, their sends complete
                for c in clients:
                    assert c.recv(1) == b"x"
                gc.collect()
                if measure:
                    per_connection = (tracemalloc.get_traced_memory()[0] - before) / n
            finally:
                tracemalloc.stop()
        finally:
            for c in clients:
                c.close()
            for t in made:
                t.close()
            server.close()
            await wait_for(server.wait_closed())
            await asyncio.sleep(0.05)  # connection_lost
            echoed.clear()
        return per_connection

    await batch(False)
    return [await batch(True) for _ in range(3)]


def test_python_bytes_per_idle_connection(tloop, request):
    """What the Python heap keeps per accepted, idle connection, measured with
    tracemalloc over the server side only (the clients are plain sockets,
    connected before the first snapshot). Each connection has had one round
    trip (a read and a write), so the write path has run. A first batch of
    connections, closed before the measured ones, grows what the loop grows
    once (the engine's op table...). Before decisions 255-258 this was about
    1,460-1,550 bytes here (the extra dict and its keys, the attribute values
    array, the write list, a bound sent per Stream, the KeyedRef of the fd
    registry, the socket object); after, about 700-820 (the protocol
    itself, with its own attribute values, is about 200 of it); after
    decisions 310-312 (no emptied write list, the peername tuple and its
    port made when asked for, no fd int), about 600-640 (3.11); after
    decision 825 (the four keys a close sets in the class's shared keys
    from import, as a server whose first connections came one by one has
    them) 663 (631 before, fresh, 3.11); after decisions 984-987 (the
    Stream 272 -> 224 bytes, the transport 192 -> 176) 616 (680 before,
    3.11, this host); after decision 1002 (the close state the core's: the
    values array 48 -> 16 bytes) 584.

    Measured in a fresh interpreter: inside the suite the figure carried the
    history of the process (up to 735 in CI): a test that sets an attribute
    on one transport (a method replaced to count calls) adds its name to the
    class's shared attribute keys, and every later transport's values array
    is that much longer (test_transport_ccore.py before this file: the
    transports' allocations 104 -> 148 bytes each); what a server process
    keeps is the fresh figure. The least of three measured batches: what
    the interpreter grows once in a window lands in one of them only."""
    if is_stock(tloop):
        pytest.skip("the bound is uringloop's own (the stock loop keeps about 1,600 bytes)")
    kind = request.node.callspec.params["tloop"]
    here = os.path.dirname(os.path.abspath(__file__))
    import uringloop

    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(uringloop.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, pkg_parent, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), kind], env=env, cwd=here,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    per_connection = min(measured)
    # measured fresh on 3.11 (584 since 1002, 616 since 984-987, 620-680
    # before) and 3.12 (575-590 before 984-987, not measured since); 3.10
    # and 3.13 lay objects out otherwise (3.10's protocol has a real dict):
    # the wide bound there. A guard against growth: the tests above pin
    # each of 310-313 on its own
    bound = 600 if (3, 11) <= sys.version_info < (3, 13) else 1100
    assert per_connection < bound, f"{per_connection:.0f} bytes per connection ({measured})"


def test_extra_socket_made_when_asked(tloop):
    """get_extra_info('socket') is one TransportSocket of the transport's own
    socket, made when first asked for (on uringloop): before the close, and
    first asked for only after it (the closed socket, as stock); the other
    names answer as stock (unknown ones give the default)."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 2)
        early, late = made
        early_fd = early.get_extra_info("socket").fileno()
        assert early_fd >= 0
        assert early.get_extra_info("socket") is early.get_extra_info("socket")
        assert early.get_extra_info("socket").type == socket.SOCK_STREAM
        assert early.get_extra_info("socket").getsockname() == early.get_extra_info("sockname")
        assert early.get_extra_info("nothing") is None
        assert early.get_extra_info("nothing", 7) == 7
        assert early.get_extra_info("sslcontext") is None
        late_names = late.get_extra_info("sockname"), late.get_extra_info("peername")
        await _close(server, made, clients)
        await asyncio.sleep(0.05)  # connection_lost
        for t in made:
            sock = t.get_extra_info("socket")
            assert sock is not None and sock.fileno() == -1
            assert sock is t.get_extra_info("socket")
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert (late.get_extra_info("sockname"), late.get_extra_info("peername")) == late_names

    run_in(tloop, main())


def test_extra_passed_by_the_caller(tloop):
    """An extra dict given to the transport (as the stock loop's accept path
    gives peername) answers its names; its peername is kept."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        made = []
        t = loop._make_socket_transport(
            a, Quiet(made), extra={"peername": "given", "mine": 1}
        )
        while not made:
            await asyncio.sleep(0)
        assert t.get_extra_info("peername") == "given"
        assert t.get_extra_info("mine") == 1
        assert t.get_extra_info("sockname") == a.getsockname()
        assert t.get_extra_info("socket").fileno() == a.fileno()
        t.close()
        b.close()
        await asyncio.sleep(0.05)

    run_in(tloop, main())


def test_fd_registry_follows_the_transport(tloop):
    """A stream transport's fd is refused to add_reader and sock_* while the
    transport is open (the stock rule, from the loop's fd -> transport
    registry); once the transport is collected (dropped unclosed while not
    reading: its __del__ closes the socket), the fd number is free again."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 1)
        t = made[0]
        tsock = t.get_extra_info("socket")
        fd = tsock.fileno()
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(tsock._sock, 1)
        t.pause_reading()
        await asyncio.sleep(0.05)  # the cancelled receive's last record
        made.clear()
        del t, tsock
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # unclosed, on purpose
            gc.collect()
        a, b = socket.socketpair()
        # (the lowest free number is often fd itself)
        reused = a if a.fileno() == fd else socket.socket(fileno=os.dup2(a.fileno(), fd))
        try:
            loop.add_reader(fd, lambda: None)
            assert loop.remove_reader(fd)
            b.send(b"x")
            assert await wait_for(loop.sock_recv(reused, 1)) == b"x"
        finally:
            reused.close()
            a.close()
            b.close()
        await _close(server, made, clients, dropped=True)

    run_in(tloop, main())


def test_accepted_socket_made_only_when_asked(tloop):
    """An accepted connection's socket object is made only when something
    asks for it (on uringloop; decision 258): repr, writes over the
    high-water mark, close, abort and a transport dropped unclosed all work
    without it, and every fd is closed (the fixture counts them)."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 4)
        closing, aborting, writing, dropped = made
        lazy = not is_stock(loop)

        def unmade(t):
            return type(t._sockobj).__name__ == "_Kind"

        if lazy:
            assert all(unmade(t) for t in made)
        assert all(f"fd={t._sock_fd}" in repr(t) for t in made)
        big = bytes(range(256)) * 4096  # 1 MiB: over the high-water mark
        writing.write(big)
        assert await wait_for(clients[2][0].readexactly(len(big))) == big
        if lazy:
            assert unmade(closing) and unmade(aborting)
        closing.close()
        aborting.abort()
        assert await wait_for(clients[0][0].read()) == b""
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await wait_for(clients[1][0].readexactly(1))
        fd = dropped._sock_fd
        dropped.pause_reading()
        await asyncio.sleep(0.05)  # the cancelled receive's last record
        made.remove(dropped)
        del dropped
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        assert any("unclosed transport" in str(w.message) for w in caught)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed by __del__ (no other fd was opened since)
        assert await wait_for(clients[3][0].read()) == b""
        await _close(server, made, clients, dropped=True)
        await asyncio.sleep(0.05)  # connection_lost
        assert closing.get_extra_info("socket").fileno() == -1

    run_in(tloop, main())


@pytest.mark.parametrize("writes", [1, 2])
def test_idle_connection_keeps_no_write_queue(tloop, writes):
    """Once its echo has left, a connection keeps no write queue: no list,
    no bytes (on uringloop, decision 310: a single queued write was kept in a
    list, emptied after the send but kept, 56 bytes an idle connection). One
    write per message (queued on io_uring; sent at once on epoll), and two
    (epoll queues the second), round after round."""

    class Twice(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            made.append(transport)

        def data_received(self, data):
            for _ in range(writes):
                self.transport.write(data)

    made = []

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Twice, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await wait_for(asyncio.open_connection("127.0.0.1", port))
        while not made:
            await asyncio.sleep(0)
        t = made[0]
        for i in range(3):
            msg = b"round %d" % i
            writer.write(msg)
            assert await wait_for(reader.readexactly(len(msg) * writes)) == msg * writes
            while t.get_write_buffer_size():  # the send's completion
                await asyncio.sleep(0.01)
            if not is_stock(loop):
                await asyncio.sleep(0.01)  # (its record came: the queue was handed over)
                kept = [r for r in gc.get_referents(t._core) if type(r) in (list, bytes)]
                assert kept == [], f"round {i}: the Stream keeps {kept!r}"
        writer.close()
        t.close()
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_peername_after_the_peer_reset(tloop, family):
    """peername is the peer's address even when first asked for after the
    peer reset the connection (getpeername() fails then): it is taken when
    the transport is made, as stock. On uringloop an IPv4 peer's tuple is
    made only when asked for (decision 311: the transport holds no tuple of
    its own but the shared sockname until then); an IPv6 one is kept as it
    is."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        with socket.socket(family) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        pytest.skip(f"no {host} here: {exc}")

    class Lost(Quiet):
        def connection_lost(self, exc):
            lost.append(exc)

    made, lost = [], []

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Lost(made), host, 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.socket(family)
        client.connect((host, port))
        want = client.getsockname()
        while not made:
            await asyncio.sleep(0)
        t = made[0]
        if not is_stock(loop) and family == socket.AF_INET:
            sockname = t.get_extra_info("sockname")
            tuples = [r for r in gc.get_referents(t) if type(r) is tuple]
            assert all(r is sockname for r in tuples), tuples
        # a second descriptor of the accepted socket, to show the premise
        dup = socket.socket(fileno=os.dup(t.get_extra_info("socket").fileno()))
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset
            while not lost:
                await wait_for(asyncio.sleep(0.01))
            assert isinstance(lost[0], ConnectionResetError)
            with pytest.raises(OSError):
                dup.getpeername()  # too late to ask the kernel now
        finally:
            dup.close()
        assert t.get_extra_info("peername") == want
        assert t.get_extra_info("peername") is t.get_extra_info("peername")
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


def test_fd_number_is_no_object_of_the_transport(tloop):
    """The transport's fd number is kept by its C core as a C int, not as an
    int object the transport holds (on uringloop, decision 312: 32 bytes an
    idle connection, fd numbers above 256 are not cached); it reads the same."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 2)
        for t in made:
            fd = t.get_extra_info("socket").fileno()
            if not is_stock(loop):
                assert t._sock_fd == fd
                held = [r for r in gc.get_referents(t) if type(r) is int and r == fd]
                assert held == [], "the transport holds its fd number"
            assert f"fd={fd}" in repr(t)
        await _close(server, made, clients)

    run_in(tloop, main())


def test_held_records_leave_nothing_behind(tloop):
    """Records that must wait behind callbacks already queued (the stock loop
    queues its reader callback behind them; the C core holds them and queues
    one drain) reach the protocol in order, and leave nothing on the
    transport once handed over (on uringloop, decision 313: the Stream kept
    its bound _drain for good, 72 bytes a connection that ever had a record
    wait)."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 1)
        t = made[0]
        reader, writer = clients[0]
        busy = [True]

        def tick():  # _ready is never empty when the loop polls
            if busy[0]:
                loop.call_soon(tick)

        loop.call_soon(tick)
        try:
            for i in range(3):
                msg = b"held %d" % i
                writer.write(msg)
                assert await wait_for(reader.readexactly(len(msg))) == msg
        finally:
            busy[0] = False
        await asyncio.sleep(0.01)
        if not is_stock(loop):
            kept = [r for r in gc.get_referents(t._core)
                    if isinstance(r, types.BuiltinMethodType)]
            assert kept == [], f"the Stream keeps {kept!r}"
        await _close(server, made, clients)

    run_in(tloop, main())




def _backlog(n):
    """A listening socket with n clients connected, waiting in its backlog
    (the kernel completes the handshakes): a server given it meets them all
    at once."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(n + 16)
    lsock.setblocking(False)
    clients = [socket.create_connection(lsock.getsockname(), timeout=10) for _ in range(n)]
    return lsock, clients


def test_accept_burst_is_made_a_budget_a_turn(tloop):
    """Connections that wait in the backlog when a server starts accepting
    are all served, in order of arrival, and on uringloop at most 64 are
    made in one turn (decision 314: a multishot accept hands over a whole
    burst in one run; made at once, their handles freed a turn later leave
    pymalloc's pools half empty under the transports)."""
    n = 200

    async def main():
        loop = asyncio.get_running_loop()
        made_in = []
        made = []
        echoed = []

        class Echo(Keep):
            def data_received(self, data):
                super().data_received(data)
                echoed.append(data)

        def factory():
            made_in.append(None if is_stock(loop) else loop._turns)  # (the loop's turn count)
            return Echo(made)

        lsock, clients = _backlog(n)
        server = None
        try:
            server = await loop.create_server(factory, sock=lsock, backlog=n + 16)
            while len(made) < n:
                await wait_for(asyncio.sleep(0.01))
            for i, c in enumerate(clients):
                c.sendall(b"%d" % i)
            while len(echoed) < n:  # (the reads below block the loop)
                await wait_for(asyncio.sleep(0.01))
            for i, c in enumerate(clients):
                want = b"%d" % i
                got = b""
                while len(got) < len(want):
                    got += c.recv(len(want) - len(got))
                assert got == want
            # in order of arrival: each transport's peer is the client of its rank
            peers = [t.get_extra_info("peername") for t in made]
            assert peers == [c.getsockname() for c in clients]
            if not is_stock(loop):
                per_turn = collections.Counter(made_in)
                assert max(per_turn.values()) <= 64, sorted(per_turn.values())
        finally:
            for c in clients:
                c.close()
            for t in made:
                t.close()
            if server is None:
                lsock.close()
            else:
                server.close()
                await wait_for(server.wait_closed())
            await asyncio.sleep(0.05)  # connection_lost

    run_in(tloop, main())


def test_server_closed_while_a_burst_waits(tloop):
    """A server closed while accepted connections still wait to be made
    (decision 314): each of those is closed (the fixture counts fds), and its
    client sees the connection end."""
    n = 200

    async def main():
        loop = asyncio.get_running_loop()
        made = []
        server = None

        class CloseServer(Keep):
            def connection_made(self, transport):
                super().connection_made(transport)
                server.close()

        lsock, clients = _backlog(n)
        try:
            server = await loop.create_server(lambda: CloseServer(made), sock=lsock,
                                              backlog=n + 16)
            while not made:
                await wait_for(asyncio.sleep(0.01))
            for t in made:
                t.close()
            await wait_for(server.wait_closed())
            await asyncio.sleep(0.05)  # connection_lost
            for c in clients:
                try:
                    assert c.recv(1) == b""
                except ConnectionResetError:
                    pass
        finally:
            for c in clients:
                c.close()

    run_in(tloop, main())



def test_stream_core_is_224_bytes(tloop):
    """An idle connection's C core, the Stream, with its GC header: its fields
    laid out widest first with no holes, C's own flags a bit each, pipe's
    rsize and rgrow an int and a byte (on uringloop, decisions 984 and 987):
    224 bytes, was 272 (three pymalloc size classes). The fields Python reads
    and sets keep their values, and the bits work: a round trip on each of
    two connections, and the peer address kept in the core (the peer bit)
    reads back."""

    async def main():
        loop = asyncio.get_running_loop()
        server, made, clients = await _accepted(loop, 2)
        for t, (reader, writer) in zip(made, clients, strict=True):
            if not is_stock(loop):
                c = t._core
                assert sys.getsizeof(c) <= 224, sys.getsizeof(c)
                assert (c.high, c.low, c.rsize, c.rgrow) == (65536, 16384, 0, 0)
                assert c.fd == t.get_extra_info("socket").fileno()
                c.rgrow = 16
                assert c.rgrow == 16
                c.rgrow = 0
            assert t.get_extra_info("peername") == writer.get_extra_info("sockname")
            writer.write(b"ping")
            assert await wait_for(reader.readexactly(4)) == b"ping"
        await _close(server, made, clients)

    run_in(tloop, main())


def test_context_and_protocol_kind_are_the_cores(tloop):
    """A stream transport's context and the kind of its protocol are its C
    core's (on uringloop, decision 985): no slots of their own, two pointers
    fewer (176 bytes a transport on 3.11 and 3.12, were 192). The values are
    the stock ones: the protocol's callbacks of one connection run in that
    connection's context (a variable data_received sets is seen by its next
    data_received, not by another connection's), and set_protocol() changes
    the kind."""
    var = contextvars.ContextVar("idle46_var", default=0)
    seen = collections.defaultdict(list)

    class Counting(Keep):
        def data_received(self, data):
            n = var.get() + 1
            var.set(n)
            seen[id(self)].append(n)
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        made = []
        server = await loop.create_server(lambda: Counting(made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await wait_for(asyncio.open_connection("127.0.0.1", port)) for _ in range(2)]
        while len(made) < 2:
            await asyncio.sleep(0)
        for _ in range(3):
            for reader, writer in clients:
                writer.write(b"x")
                assert await wait_for(reader.readexactly(1)) == b"x"
        assert sorted(seen.values()) == [[1, 2, 3], [1, 2, 3]]
        assert var.get() == 0
        t = made[0]
        if not is_stock(loop):
            names = [n for k in type(t).__mro__ for n in k.__dict__.get("__slots__", ())]
            assert "_context" not in names and "_buffered" not in names, names
            assert t._context is t._core.ctx
            assert t._context.get(var) == 3
            if (3, 11) <= sys.version_info < (3, 13):
                assert sys.getsizeof(t) <= 176, sys.getsizeof(t)
            assert t._buffered is False
            proto = t.get_protocol()
            t.set_protocol(asyncio.BufferedProtocol())
            assert t._buffered is True
            t.set_protocol(proto)
            assert t._buffered is False
        await _close(server, made, clients)

    run_in(tloop, main())


_CLOSE_KEYS = {"_conn_lost", "_fd_closing", "_read_done", "_close_reset"}


class Lost(Keep):
    def connection_lost(self, exc):
        self.lost = True


def test_close_state_is_the_cores(tloop, caplog):
    """The state a close sets (_conn_lost, and on uringloop _fd_closing,
    _read_done, _close_reset) is the C core's, behind properties (decision
    1002): no key of the transport's own, so no entry in every transport's
    attribute values array (48 -> 16 bytes on 3.11/3.12). _conn_lost reads as
    stock's at each step, and counts the writes made after the loss, whose
    warning comes once the count reaches the threshold, as stock: a close at
    the peer's EOF, a close(), an abort(), and (uringloop) a close behind
    queued bytes."""
    from asyncio import constants

    async def main():
        loop = asyncio.get_running_loop()
        made = []
        server = await loop.create_server(lambda: Lost(made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await wait_for(asyncio.open_connection("127.0.0.1", port)) for _ in range(4)]
        await until(lambda: len(made) == 4, "four connections")
        # (made in the order accepted: pair each with its client by port)
        by_port = {t.get_extra_info("peername")[1]: t for t in made}
        ts = [by_port[w.get_extra_info("sockname")[1]] for _, w in clients]
        for t in ts:
            assert t._conn_lost == 0
            if not is_stock(loop):
                assert (t._fd_closing, t._read_done, t._close_reset) == (False, False, None)
        eof_t, close_t, abort_t, queued_t = ts
        clients[0][1].write_eof()  # the peer's EOF: eof_received returns None, close()
        await until(lambda: eof_t.is_closing(), "the EOF's close")
        close_t.close()
        abort_t.abort()
        queued_t.write(b"q" * (8 << 20))  # more than the kernel takes: queued
        queued_t.close()
        assert queued_t.is_closing()
        for t in (eof_t, close_t, abort_t):
            await until(lambda t=t: getattr(t.get_protocol(), "lost", False) or
                        getattr(t, "_protocol", None) is None, "connection_lost")
            assert t._conn_lost == 1
        caplog.clear()
        with caplog.at_level("WARNING", logger="asyncio"):
            for _ in range(6):
                eof_t.write(b"x")
        assert eof_t._conn_lost == 7
        warned = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
        assert len(warned) == 7 - constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES
        reader = clients[3][0]
        got = 0
        while got < 8 << 20:
            got += len(await wait_for(reader.read(1 << 20)))
        await until(lambda: getattr(queued_t.get_protocol(), "lost", False) or
                    queued_t.get_protocol() is None, "the queued close's connection_lost")
        if not is_stock(loop):
            assert eof_t._read_done == "eof"
            for t in ts:
                assert t._fd_closing is True
                assert not _CLOSE_KEYS & set(vars(t)), vars(t)
                assert t._conn_lost == t._core.conn_lost
            assert queued_t._conn_lost == 1
        for _, w in clients:
            w.close()
        server.close()
        await wait_for(server.wait_closed())

    run_in(tloop, main())


if __name__ == "__main__":  # test_python_bytes_per_idle_connection's fresh interpreter
    from conftest import make_loop

    lp = make_loop(sys.argv[1])
    try:
        print(json.dumps(run_in(lp, _python_bytes_per_idle_connection(), timeout=50)))
    finally:
        lp.close()
