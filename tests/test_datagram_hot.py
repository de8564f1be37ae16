"""The datagram transport's hot half in C (uringloop/_core/dgram.c): records
handed straight to datagram_received, sendto's first try, sender addresses
cached per peer. Every test runs on both backends and on the stock loop, so
what the C half does is compared with the stock transport by construction.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys

import pytest
from conftest import is_stock, run_in
from test_datagram import Recorder


def _rx_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def test_sendto_after_close_unconnected_as_stock(any_loop):
    """The stock transport still sends an unconnected endpoint's datagrams
    after close() until connection_lost (through its socket), and fails with
    the AttributeError of its cleared loop after."""
    loop = any_loop
    rx = _rx_socket()

    async def main(how):
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        getattr(tr, how)()
        tr.sendto(b"after " + how.encode(), rx.getsockname())
        await pr.lost
        with pytest.raises(AttributeError):
            tr.sendto(b"after connection_lost", rx.getsockname())
        assert pr.errors == []

    try:
        for how in ("close", "abort"):
            run_in(loop, main(how))
            assert rx.recv(100) == b"after " + how.encode()
        rx.setblocking(False)
        with pytest.raises(BlockingIOError):
            rx.recv(100)
    finally:
        rx.close()


def test_sender_addresses_of_many_peers(any_loop):
    """More peers than the address cache has slots, sending in turns: each
    datagram comes with its own sender's address, as recvfrom gives it."""
    loop = any_loop
    peers = []

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        addr = tr.get_extra_info("sockname")
        for _ in range(80):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            peers.append(s)
        sent = []
        for rnd in range(3):
            for i, s in enumerate(peers):
                s.sendto(b"%d/%d" % (rnd, i), addr)
                sent.append((b"%d/%d" % (rnd, i), s.getsockname()))
            await pr.until(lambda: len(pr.datagrams) == len(sent))
        assert sorted(pr.datagrams) == sorted(sent)
        for _data, a in pr.datagrams:
            assert type(a) is tuple and type(a[0]) is str and type(a[1]) is int
        tr.close()
        await pr.lost

    try:
        run_in(loop, main())
    finally:
        for s in peers:
            s.close()


def _has_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")
def test_ipv6_addresses_both_ways(any_loop):
    loop = any_loop
    peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    peer.bind(("::1", 0))
    peer.settimeout(5)

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("::1", 0)
        )
        addr = tr.get_extra_info("sockname")
        peer.sendto(b"to endpoint", addr)
        await pr.until(lambda: pr.datagrams)
        assert pr.datagrams == [(b"to endpoint", peer.getsockname())]
        host, port = peer.getsockname()[:2]
        tr.sendto(b"2-tuple", (host, port))
        tr.sendto(b"4-tuple", (host, port, 0, 0))
        tr.sendto(b"the address received", pr.datagrams[0][1])
        got = [await loop.run_in_executor(None, peer.recvfrom, 100) for _ in range(3)]
        assert [d for d, _ in got] == [b"2-tuple", b"4-tuple", b"the address received"]
        assert all(a == addr for _, a in got)
        tr.close()
        await pr.lost

    try:
        run_in(loop, main())
    finally:
        peer.close()


def test_sendto_argument_forms_as_stock(any_loop):
    """Data types, keyword address, names the socket module resolves: sent."""
    loop = any_loop
    rx = _rx_socket()
    host, port = rx.getsockname()

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        tr.sendto(b"bytes", (host, port))
        tr.sendto(bytearray(b"bytearray"), (host, port))
        tr.sendto(memoryview(b"..memoryview")[2:], (host, port))
        tr.sendto(b"keyword", addr=(host, port))
        tr.sendto(data=b"keywords", addr=(host, port))
        tr.sendto(b"resolved", ("localhost", port))
        assert pr.errors == []
        tr.close()
        await pr.lost

    try:
        run_in(loop, main())
        got = [rx.recv(100) for _ in range(6)]
        assert got == [b"bytes", b"bytearray", b"memoryview", b"keyword", b"keywords",
                       b"resolved"]
    finally:
        rx.close()


@pytest.mark.parametrize(
    "data, addr, outcome",
    [
        (b"port", ("127.0.0.1", 70000), ("-", "OverflowError", True)),
        (b"port type", ("127.0.0.1", "x"), ("-", "TypeError", True)),
        (b"no address", None, ("-", "TypeError", True)),
        (b"3-tuple", ("127.0.0.1", 9, 0), ("-", "TypeError", True)),
        (b"a list", ["127.0.0.1", 9], ("-", "TypeError", True)),
        (memoryview(b"abcdef")[::2], ("127.0.0.1", 9), ("-", "BufferError", True)),
        ("str", ("127.0.0.1", 9), ("TypeError", None, False)),
    ],
)
def test_sendto_bad_arguments_as_stock(any_loop, data, addr, outcome):
    """What sendto raises, what the exception handler hears, whether the
    endpoint is closed: the stock transport's answer for each."""
    loop = any_loop
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        raised = "-"
        try:
            tr.sendto(data, addr)
        except Exception as exc:  # noqa: BLE001 -- the type is compared
            raised = type(exc).__name__
        handled = [type(c.get("exception")).__name__ for c in contexts]
        closing = tr.is_closing()
        tr.close()
        await pr.lost
        return raised, handled[0] if handled else None, closing

    assert run_in(loop, main()) == outcome


def test_connected_sendto_rules(any_loop):
    loop = any_loop
    rx = _rx_socket()
    addr = rx.getsockname()

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), remote_addr=addr
        )
        tr.sendto(b"no address")
        tr.sendto(b"the same address", addr)
        tr.sendto(b"an equal address", tuple(list(addr)))
        with pytest.raises(ValueError):
            tr.sendto(b"another address", ("127.0.0.1", addr[1] + 1))
        tr.close()
        await pr.lost

    try:
        run_in(loop, main())
        assert [rx.recv(100) for _ in range(3)] == [
            b"no address", b"the same address", b"an equal address"
        ]
    finally:
        rx.close()


def test_set_protocol_takes_the_next_datagram(any_loop):
    loop = any_loop

    async def main():
        tr, first = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        addr = tr.get_extra_info("sockname")
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tx.sendto(b"one", addr)
            await first.until(lambda: first.datagrams)
            second = Recorder(loop)
            tr.set_protocol(second)
            tx.sendto(b"two", addr)
            await second.until(lambda: second.datagrams)
        finally:
            tx.close()
        assert [d for d, _ in first.datagrams] == [b"one"]
        assert [d for d, _ in second.datagrams] == [b"two"]
        tr.close()
        await second.lost

    run_in(loop, main())


def test_datagram_waits_for_callbacks_already_due(any_loop):
    """A datagram that arrives while callbacks are already due in the loop's
    ready queue is handed over after them: the stock loop queues its reader
    callback behind them (decision 170's rule, which the C half checks before
    it calls datagram_received itself)."""
    loop = any_loop

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        addr = tr.get_extra_info("sockname")
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        order = []
        pr.datagram_received = lambda data, a: order.append(data) or Recorder.datagram_received(
            pr, data, a)
        try:
            for round_ in range(3):
                await asyncio.sleep(0)  # reading is armed
                tx.sendto(b"d%d" % round_, addr)  # in the socket's queue now (loopback)
                loop.call_soon(order.append, f"cb{round_}")  # due before the next poll
                await pr.until(lambda n=round_ + 1: len(pr.datagrams) == n)
        finally:
            tx.close()
        assert order == ["cb0", b"d0", "cb1", b"d1", "cb2", b"d2"]
        tr.close()
        await pr.lost

    run_in(loop, main())


def test_datagram_received_raising_is_reported_as_stock(any_loop):
    """The stock transport calls datagram_received from its reader callback
    and lets an exception out to that callback's handle: it is reported as a
    raising callback and the endpoint reads on."""
    loop = any_loop
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    class Boom(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raise ZeroDivisionError("boom")

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Boom(loop), local_addr=("127.0.0.1", 0)
        )
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tx.sendto(b"boom", tr.get_extra_info("sockname"))
            await pr.until(lambda: pr.datagrams)
            tx.sendto(b"after", tr.get_extra_info("sockname"))
            await pr.until(lambda: len(pr.datagrams) == 2)
        finally:
            tx.close()
        assert not tr.is_closing()
        assert [d for d, _ in pr.datagrams] == [b"boom", b"after"]
        assert len(contexts) == 1
        assert contexts[0]["message"].startswith("Exception in callback ")
        assert contexts[0]["message"].endswith("._read_ready()")
        assert isinstance(contexts[0]["exception"], ZeroDivisionError)
        assert isinstance(contexts[0]["handle"], asyncio.Handle)
        tr.close()
        await pr.lost

    run_in(loop, main())


VAR = contextvars.ContextVar("VAR", default=0)


def test_datagram_received_runs_in_the_transports_context(any_loop):
    """One context for the endpoint's reading, copied when it was made: a
    value set in datagram_received is seen by the next one, not outside."""
    loop = any_loop
    seen = []

    class Counting(Recorder):
        def datagram_received(self, data, addr):
            seen.append(VAR.get())
            VAR.set(VAR.get() + 1)
            super().datagram_received(data, addr)

    async def main():
        VAR.set(100)
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Counting(loop), local_addr=("127.0.0.1", 0)
        )
        VAR.set(200)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(3):
                tx.sendto(b"%d" % i, tr.get_extra_info("sockname"))
                await pr.until(lambda i=i: len(pr.datagrams) == i + 1)
        finally:
            tx.close()
        assert seen == [100, 101, 102]
        assert VAR.get() == 200
        tr.close()
        await pr.lost

    run_in(loop, main())


def test_sendto_is_the_class_method(loop):
    """sendto is the transport class's own C method (decision 315): no
    per-instance attribute shadows it (which made every `transport.sendto`
    a dictionary lookup and a bound method), and it works called through
    the class, bound, and with keywords."""
    rx = _rx_socket()

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        cls = type(tr)
        own = "sendto" in vars(tr)
        kind = type(cls.__dict__["sendto"]).__name__
        cls.sendto(tr, b"through the class", rx.getsockname())
        send = tr.sendto
        send(b"bound", rx.getsockname())
        tr.sendto(b"keywords", addr=rx.getsockname())
        tr.close()
        await pr.lost
        assert pr.errors == []
        assert not own
        assert kind == "method_descriptor"

    try:
        run_in(loop, main())
        assert [rx.recv(100) for _ in range(3)] == [b"through the class", b"bound", b"keywords"]
    finally:
        rx.close()


def _cache_set(raw: bytes) -> int:
    """The sender-address cache's set for a raw sockaddr (dgram.c addr_hash,
    64 sets): words little-endian, as on the machines the engine runs on."""
    h = 2166136261
    for i in range(0, len(raw), 4):
        h = ((h ^ int.from_bytes(raw[i:i + 4], "little")) * 0x9E3779B1) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    return (h ^ (h >> 13)) % 64


def _sockaddr_in(host: str, port: int) -> bytes:
    return (socket.AF_INET.to_bytes(2, sys.byteorder) + port.to_bytes(2, "big")
            + socket.inet_aton(host) + bytes(8))


def test_two_peers_of_one_cache_set_keep_their_addresses(any_loop):
    """Two peers whose sockaddrs fall in one set of the sender-address cache,
    sending in turns: each keeps one address object (decision 316; a
    direct-mapped cache evicted one with the other and rebuilt both tuples
    on every datagram). The stock loop makes a new tuple per datagram: there
    only the values are compared."""
    loop = any_loop
    socks = []
    by_set = {}
    pair = None
    try:
        while pair is None:  # 65 sockets at most: two share one of 64 sets
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            k = _cache_set(_sockaddr_in(*s.getsockname()))
            if k in by_set:
                pair = (by_set[k], s)
            by_set[k] = s

        async def main():
            tr, pr = await loop.create_datagram_endpoint(
                lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
            )
            addr = tr.get_extra_info("sockname")
            for i in range(6):
                pair[i % 2].sendto(b"%d" % i, addr)
                await pr.until(lambda i=i: len(pr.datagrams) == i + 1)
            tr.close()
            await pr.lost
            return pr.datagrams

        got = run_in(loop, main())
        assert [d for d, _ in got] == [b"%d" % i for i in range(6)]
        for who in (0, 1):
            addrs = [a for _, a in got[who::2]]
            assert addrs == [pair[who].getsockname()] * 3
            if not is_stock(loop):
                assert all(a is addrs[0] for a in addrs)
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_answers_to_many_peers_in_turn(any_loop, family):
    """A server answering each datagram to the address it came with, many
    peers in turn (the address kept from the delivery serves the answer,
    decision 317): every peer gets its own answer, and only its own."""
    if family == "ipv6" and not _has_ipv6():
        pytest.skip("no IPv6 loopback here")
    loop = any_loop
    fam, host = (socket.AF_INET, "127.0.0.1") if family == "ipv4" else (socket.AF_INET6, "::1")
    peers = []

    class Echo(asyncio.DatagramProtocol):
        def __init__(self):
            self.answered = 0
            self.done = None

        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data.upper(), addr)
            self.answered += 1
            if self.answered == len(peers):
                self.done.set_result(None)

    async def main():
        tr, echo = await loop.create_datagram_endpoint(Echo, local_addr=(host, 0))
        addr = tr.get_extra_info("sockname")
        try:
            for _ in range(20):
                s = socket.socket(fam, socket.SOCK_DGRAM)
                peers.append(s)
                s.bind((host, 0))
                s.setblocking(False)
            for rnd in range(3):
                # nothing else due while the server reads (a task or a
                # sock_recv waking in _ready would make the transport hold
                # its records for a turn): the answers are in the peers'
                # queues (loopback) once it has made them
                echo.answered, echo.done = 0, loop.create_future()
                for i, s in enumerate(peers):
                    s.sendto(b"r%d p%d" % (rnd, i), addr)
                await asyncio.wait_for(echo.done, 5)
                for i, s in enumerate(peers):
                    assert s.recv(100) == b"R%d P%d" % (rnd, i)
        finally:
            tr.close()
        for s in peers:
            with pytest.raises(BlockingIOError):
                s.recv(100)

    try:
        run_in(loop, main(), 30)
    finally:
        for s in peers:
            s.close()


def _build_benchmark(tmp_path, name):
    """benchmarks/<name>.c built with -Wall -Wextra -Werror; its path (skips
    when there is no C compiler)."""
    import os
    import shutil
    import subprocess

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip(f"no C compiler (cc/gcc) to build benchmarks/{name}.c")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "benchmarks", f"{name}.c")
    exe = str(tmp_path / name)
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe, src], check=True)
    return exe


def test_flood_benchmark_sender_builds_and_sends(tmp_path):
    """benchmarks/udp_flood.c (loop_bench's udp_flood sender) builds without
    warnings and sends separate 64-byte datagrams (its GSO messages are cut
    into single datagrams for a socket without UDP_GRO), and says how many it
    sent; nothing here measures speed."""
    import subprocess

    exe = _build_benchmark(tmp_path, "udp_flood")
    rx = _rx_socket()
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        out = subprocess.run([exe, str(rx.getsockname()[1]), "200"], check=True, timeout=30,
                             capture_output=True, text=True).stdout.split()
        assert out[:2] == ["sent", "200"] and float(out[2]) >= 0
        got = [rx.recv(5000)]  # loopback: at least one arrives (UDP may drop the rest)
        rx.setblocking(False)
        while True:
            try:
                got.append(rx.recv(5000))
            except BlockingIOError:
                break
        assert 1 <= len(got) <= 200 and all(d == bytes(64) for d in got)
    finally:
        rx.close()


def test_flood_benchmark_sender_stops_on_sigterm_and_receiver_counts(tmp_path):
    """udp_flood.c's two other modes: without a count it sends until SIGTERM
    and then says how many it sent; `-r N` receives N 64-byte datagrams and
    says how long it took (loop_bench's check of the sender's own rate)."""
    import subprocess

    exe = _build_benchmark(tmp_path, "udp_flood")
    recv = subprocess.Popen([exe, "-r", "1000"], stdout=subprocess.PIPE, text=True)
    sender = None
    try:
        port = recv.stdout.readline().split()
        assert port[0] == "port"
        sender = subprocess.Popen([exe, port[1]], stdout=subprocess.PIPE, text=True)
        said = recv.communicate(timeout=30)[0].split()
        assert recv.returncode == 0 and said[0] == "received" and int(said[1]) >= 1000
        assert float(said[2]) >= 0 and float(said[3]) >= 0 and int(said[4]) >= 0
        sender.terminate()
        out = sender.communicate(timeout=30)[0].split()
        assert sender.returncode == 0 and out[0] == "sent" and int(out[1]) >= 1000
    finally:
        for p in (recv, sender):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_flood_python_sender_reports_its_count():
    """loop_bench's Python flood sender (used where udp_flood.c does not
    build) sends 64-byte datagrams until SIGTERM and then says how many it
    sent, as the C sender does (loop_bench's _flood_stop reads it)."""
    import os
    import subprocess

    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "benchmarks")
    sys.path.insert(0, bench)
    try:
        import loop_bench
    finally:
        sys.path.remove(bench)
    rx = _rx_socket()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", loop_bench._FLOOD_SENDER, str(rx.getsockname()[1])],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert rx.recv(100) == bytes(64)
            sent, seconds = loop_bench._flood_stop(proc)
            assert sent >= 1 and seconds >= 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        rx.close()


def test_floor_benchmark_builds_and_round_trips(tmp_path):
    """benchmarks/udp_floor.c (the loop-free UDP round trip the README compares
    the loops' CPU per round trip with) builds without warnings and does its
    round trips; nothing here measures speed."""
    import subprocess

    exe = _build_benchmark(tmp_path, "udp_floor")
    out = subprocess.run([exe, "100", "1024"], check=True, timeout=30,
                         capture_output=True, text=True).stdout
    assert out.startswith("1024 B round trips: wall ") and "per round trip" in out
    bad = subprocess.run([exe, "0"], timeout=30, capture_output=True, text=True)
    assert bad.returncode == 1 and "N > 0" in bad.stderr


def test_uring_floor_benchmark_builds_and_round_trips(tmp_path):
    """benchmarks/udp_uring_floor.c (decision 280: the round trip through io_uring
    with no loop, each kernel path) builds without warnings and every variant
    does its round trips; nothing here measures speed."""
    import subprocess

    from conftest import require_uring

    require_uring()
    exe = _build_benchmark(tmp_path, "udp_uring_floor")
    out = subprocess.run([exe, "100", "1024", "1"], check=True, timeout=60,
                         capture_output=True, text=True).stdout
    rows = out.splitlines()
    assert rows[0].startswith("1024 B round trips, 100 per rep")
    assert {r.split()[0] for r in rows[2:]} == {"block,-,-"} | {
        f"{r},{s},{t}" for r in ("ms", "os", "osp") for s in ("sys", "sqe")
        for t in ("defer", "coop")}
    bad = subprocess.run([exe, "0", "64", "1"], timeout=30, capture_output=True, text=True)
    assert bad.returncode == 1 and "N > 0" in bad.stderr
