"""Datagram endpoints (create_datagram_endpoint), on io_uring, epoll and the
stock loop: every test runs on all three, so uringloop is compared with the
stock loop by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import sys
import zlib

import pytest
from conftest import is_stock, run_in


class Recorder(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.loop = loop
        self.events = []  # ("made"), ("data", data, addr), ("error", exc), ("lost", exc)
        self.datagrams = []
        self.errors = []
        self.lost = loop.create_future()
        self.waiters = []
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def datagram_received(self, data, addr):
        assert type(data) is bytes
        self.datagrams.append((data, addr))
        self._wake()

    def error_received(self, exc):
        self.errors.append(exc)
        self._wake()

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.events.append("lost")
        if self.lost.done():
            raise AssertionError("connection_lost called twice")
        self.lost.set_result(exc)

    def _wake(self):
        waiters, self.waiters = self.waiters, []
        for pred, fut in waiters:
            if fut.done():
                continue
            if pred():
                fut.set_result(None)
            else:
                self.waiters.append((pred, fut))

    async def until(self, pred):
        if pred():
            return
        fut = self.loop.create_future()
        self.waiters.append((pred, fut))
        await fut


def _open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def test_echo_unconnected_and_connected(any_loop):
    loop = any_loop

    async def main():
        fds = _open_fds()
        server, sp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        saddr = server.get_extra_info("sockname")
        client, cp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), remote_addr=saddr
        )
        if not is_stock(loop) or sys.version_info >= (3, 12):  # stock: 3.12 on
            assert isinstance(server, asyncio.DatagramTransport)
            assert isinstance(client, asyncio.DatagramTransport)
        assert server.get_extra_info("peername") is None
        assert client.get_extra_info("peername") == saddr
        assert client.get_extra_info("socket").type == socket.SOCK_DGRAM
        caddr = client.get_extra_info("sockname")
        for i in range(10):
            client.sendto(b"ping %d" % i)  # connected: no address
        client.sendto(b"addr", saddr)  # its own peer's address is allowed
        with pytest.raises(ValueError):
            client.sendto(b"x", ("127.0.0.1", 1))
        with pytest.raises(TypeError):
            client.sendto("text")
        await sp.until(lambda: len(sp.datagrams) == 11)
        assert sp.datagrams == [(b"ping %d" % i, caddr) for i in range(10)] + [(b"addr", caddr)]
        for data, addr in sp.datagrams:
            server.sendto(data.upper(), addr)
        await cp.until(lambda: len(cp.datagrams) == 11)
        assert [d for d, _ in cp.datagrams] == [d.upper() for d, _ in sp.datagrams]
        assert all(a == saddr for _, a in cp.datagrams)
        assert server.get_write_buffer_size() == 0
        assert not server.is_closing()
        server.close()
        client.close()
        assert server.is_closing() and client.is_closing()
        assert await sp.lost is None and await cp.lost is None
        assert sp.events == ["made", "lost"] and cp.events == ["made", "lost"]
        assert _open_fds() == fds

    run_in(loop, main())


def test_connection_lost_after_the_fd_is_closed(any_loop):
    loop = any_loop

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        fd = tr.get_extra_info("socket").fileno()
        seen = []
        pr.connection_lost = lambda exc: (seen.append(exc), pr.lost.set_result(exc))
        tr.close()
        tr.close()  # twice: still one connection_lost
        await pr.lost
        await asyncio.sleep(0)
        assert seen == [None]
        with pytest.raises(OSError):
            os.fstat(fd)

    run_in(loop, main())


def test_icmp_port_unreachable_is_error_received(any_loop):
    """ECONNREFUSED on a connected endpoint, as the stock loop reports it; the
    endpoint keeps receiving afterwards."""
    loop = any_loop

    async def main():
        # A closed port's number can be taken by another process's socket
        # before the datagram comes (CI runs suites side by side), and then no
        # ICMP answers: each try takes a fresh closed port, and sends a few
        # times, so a lost datagram or ICMP is not the test's failure either.
        for _ in range(5):
            dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dead.bind(("127.0.0.1", 0))
            addr = dead.getsockname()
            dead.close()
            tr, pr = await loop.create_datagram_endpoint(lambda: Recorder(loop), remote_addr=addr)
            for _ in range(10):
                tr.sendto(b"anyone?")
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(pr.until(lambda pr=pr: pr.errors), 0.2)
                if pr.errors:
                    break
            if pr.errors:
                break
            tr.close()
            assert await pr.lost is None
        assert pr.errors, "no ICMP port unreachable from 5 closed ports"
        assert isinstance(pr.errors[0], ConnectionRefusedError)
        assert not tr.is_closing()
        # still alive: a peer that binds that address now gets through
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            peer.bind(addr)
        except OSError:
            peer.close()
            tr.close()
            return  # the port was taken meanwhile: nothing more to check
        peer.sendto(b"back", tr.get_extra_info("sockname"))
        await pr.until(lambda: pr.datagrams)
        assert pr.datagrams == [(b"back", addr)]
        peer.close()
        tr.close()
        assert await pr.lost is None

    run_in(loop, main())


def test_broadcast_on_loopback(any_loop):
    """127.255.255.255 is lo's broadcast address: allow_broadcast=True sets
    SO_BROADCAST and the datagram comes back; without it the kernel says EACCES,
    which reaches error_received."""
    loop = any_loop

    async def main():
        rx, rp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("0.0.0.0", 0)
        )
        port = rx.get_extra_info("sockname")[1]
        tx, tp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0), allow_broadcast=True
        )
        assert tx.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        tx.sendto(b"to all", ("127.255.255.255", port))
        await rp.until(lambda: rp.datagrams)
        assert rp.datagrams == [(b"to all", tx.get_extra_info("sockname"))]
        nb, np_ = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        nb.sendto(b"to all", ("127.255.255.255", port))
        await np_.until(lambda: np_.errors)
        assert isinstance(np_.errors[0], PermissionError)
        for t in (rx, tx, nb):
            t.close()

    run_in(loop, main())


def test_unix_datagram_endpoints_path_and_abstract(any_loop, tmp_path):
    loop = any_loop

    async def main():
        fds = _open_fds()
        path = str(tmp_path / "server.sock")
        server, sp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=path, family=socket.AF_UNIX
        )
        cpath = str(tmp_path / "client.sock")
        client, cp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=cpath, remote_addr=path, family=socket.AF_UNIX
        )
        client.sendto(b"over a path")
        big = os.urandom(200 * 1024)  # longer than a pool buffer: whole, as stock
        client.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        server.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        client.sendto(big)
        await sp.until(lambda: len(sp.datagrams) == 2)
        assert sp.datagrams == [(b"over a path", cpath), (big, cpath)]
        server.sendto(b"reply", cpath)
        await cp.until(lambda: cp.datagrams)
        assert cp.datagrams == [(b"reply", path)]
        abstract = f"\0uringloop-test-{os.getpid()}"  # create_datagram_endpoint wants str
        anon, ap = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=abstract, family=socket.AF_UNIX
        )
        assert anon.get_extra_info("sockname") == abstract.encode()
        server.sendto(b"abstract", abstract)
        await ap.until(lambda: ap.datagrams)
        assert ap.datagrams == [(b"abstract", path)]
        for t in (server, client, anon):
            t.close()
        for p in (sp, cp, ap):
            assert await p.lost is None
        assert _open_fds() == fds

    run_in(loop, main())


def test_many_datagrams_from_several_senders(any_loop):
    """100,000 datagrams from 4 senders: each counted, checked (sender, sequence,
    length, CRC), nothing duplicated or corrupted. The senders keep at most a
    window of datagrams in flight (they wait for the receiver), well inside
    the receive buffer, so on loopback none may be lost either; the loss is
    reported before it is asserted."""
    loop = any_loop
    senders, per_sender, window = 4, 25_000, 96

    async def main():
        rx, rp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        rx.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        raddr = rx.get_extra_info("sockname")
        seen = {}
        bad = []
        count = [0]
        progress = asyncio.Event()

        def datagram_received(data, addr):
            sid, seq, crc = struct.unpack_from("!HII", data)
            if zlib.crc32(data[10:]) != crc or data[10:] != _payload(sid, seq):
                bad.append((sid, seq))
            key = (sid, seq)
            seen[key] = seen.get(key, 0) + 1
            count[0] += 1
            progress.set()

        rp.datagram_received = datagram_received
        sent = [0]

        async def sender(sid):
            tx, tp = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=raddr
            )
            for seq in range(per_sender):
                body = _payload(sid, seq)
                tx.sendto(struct.pack("!HII", sid, seq, zlib.crc32(body)) + body)
                sent[0] += 1
                while sent[0] - count[0] > window:
                    progress.clear()
                    try:
                        await asyncio.wait_for(progress.wait(), 1.0)
                    except asyncio.TimeoutError:
                        break  # lost ones never come: go on, the loss is counted
            tx.close()

        await asyncio.gather(*(sender(s) for s in range(senders)))
        total = senders * per_sender
        for _ in range(50):
            if count[0] >= total:
                break
            await asyncio.sleep(0.02)
        dups = [k for k, n in seen.items() if n > 1]
        lost = total - len(seen)
        print(f"\n{type(loop).__name__}: {count[0]} datagrams received of {total}, "
              f"lost {lost}, duplicated {len(dups)}, corrupted {len(bad)}")
        assert not bad, bad[:10]
        assert not dups, dups[:10]
        assert lost == 0
        rx.close()
        await rp.lost

    run_in(loop, main(), timeout=240)


_PATTERN = bytes(range(256)) * 3


def _payload(sid: int, seq: int) -> bytes:
    """Length and contents depend on the sender and the sequence number."""
    n = (seq * 7 + sid * 13) % 300
    start = (sid + seq) & 0xFF
    return _PATTERN[start:start + n]


_pairs = [0]


def _unix_pair():
    """Two Unix datagram sockets bound to paths, a connected to b (a
    socketpair's peer has no name, which the stock transport cannot sendto)."""
    import tempfile

    _pairs[0] += 1
    d = tempfile.mkdtemp(prefix="ul-dgram-")
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.bind(os.path.join(d, "a"))
    b.bind(os.path.join(d, "b"))
    a.connect(os.path.join(d, "b"))
    a.setblocking(False)
    return a, b


def test_close_with_sends_queued(any_loop):
    """A Unix datagram socket whose peer does not read: sends queue (the kernel
    says EAGAIN), the protocol is paused past the high-water mark; close()
    waits for the queue, which leaves in order once the peer reads, and then
    connection_lost comes, once, with the fd closed."""
    loop = any_loop

    async def main():
        a, b = _unix_pair()
        tr, pr = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=a)
        tr.set_write_buffer_limits(high=1000)
        assert tr.get_write_buffer_limits() == (250, 1000)
        n = 3000
        for i in range(n):
            tr.sendto(b"%06d" % i)
        queued = tr.get_write_buffer_size()
        assert queued > 0
        assert pr.paused == 1
        tr.close()
        assert tr.is_closing()
        await asyncio.sleep(0.05)
        assert not pr.lost.done()  # the queue still waits for the peer
        b.setblocking(False)
        got = []
        while len(got) < n:
            try:
                got.append(b.recv(100))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert got == [b"%06d" % i for i in range(n)]
        assert await pr.lost is None
        if not (is_stock(loop) and _stock_counts_header()):
            # 3.13's stock transport adds 8 header bytes per queued datagram and
            # takes back only the payload: it never resumes. Not copied.
            assert pr.resumed == 1
            assert tr.get_write_buffer_size() == 0
        b.close()

    run_in(loop, main())


def test_abort_with_sends_queued(any_loop):
    loop = any_loop

    async def main():
        a, b = _unix_pair()
        tr, pr = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=a)
        for i in range(3000):
            tr.sendto(b"%06d" % i)
        assert tr.get_write_buffer_size() > 0
        tr.abort()  # (the stock transport keeps counting what it dropped: not compared)
        assert await pr.lost is None
        b.setblocking(False)
        got = []
        while True:
            try:
                got.append(b.recv(100))
            except BlockingIOError:
                break
        assert got == [b"%06d" % i for i in range(len(got))]  # a prefix, in order
        assert len(got) < 3000
        b.close()

    run_in(loop, main())


def test_write_buffer_size_counts_as_stock(any_loop):
    loop = any_loop

    async def main():
        a, b = _unix_pair()
        tr, pr = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=a)
        i = 0
        while tr.get_write_buffer_size() == 0:
            tr.sendto(b"%06d" % i)
            i += 1
        tr.sendto(b"12345")
        tr.sendto(b"")  # 3.13 sends empty datagrams (and counts their header)
        sizes = tr.get_write_buffer_size()
        tr.abort()
        await pr.lost
        b.close()
        return sizes

    size = run_in(loop, main())
    header = 8 if _stock_counts_header() else 0
    empty_sent = _stock_sends_empty()
    assert size == 6 + header + 5 + header + (header if empty_sent else 0)


def _stock_counts_header():
    import inspect
    from asyncio import selector_events

    return "+ 8" in inspect.getsource(selector_events._SelectorDatagramTransport.sendto)


def _stock_sends_empty():
    import inspect
    from asyncio import selector_events

    return "if not data:" not in inspect.getsource(
        selector_events._SelectorDatagramTransport.sendto
    )


def test_pause_and_resume_reading(any_loop):
    loop = any_loop
    if is_stock(loop) and sys.version_info < (3, 11):
        pytest.skip("the stock datagram transport of 3.10 has no pause_reading "
                    "(NotImplementedError); uringloop's has it on every Python")

    async def main():
        rx, rp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        addr = rx.get_extra_info("sockname")
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(b"first", addr)
        await rp.until(lambda: rp.datagrams)
        rx.pause_reading()
        assert not rx.is_reading()
        for i in range(5):
            tx.sendto(b"%d" % i, addr)
        await asyncio.sleep(0.05)
        assert len(rp.datagrams) == 1
        rx.resume_reading()
        await rp.until(lambda: len(rp.datagrams) == 6)
        assert [d for d, _ in rp.datagrams] == [b"first"] + [b"%d" % i for i in range(5)]
        tx.close()
        rx.close()
        await rp.lost

    run_in(loop, main())


def test_oversized_datagram_is_error_received(any_loop):
    loop = any_loop

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        tr.sendto(b"x" * 70000, tr.get_extra_info("sockname"))
        assert len(pr.errors) == 1 and pr.errors[0].errno == errno.EMSGSIZE
        assert not tr.is_closing()
        tr.close()
        await pr.lost

    run_in(loop, main())


def test_bad_input_as_stock(any_loop):
    loop = any_loop

    async def outcome(coro_or_call):
        try:
            tr, _ = await coro_or_call
        except Exception as exc:  # noqa: BLE001 -- the exception is the result
            return type(exc)
        tr.close()
        return "ok"

    async def main():
        fds = _open_fds()
        results = []
        stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        results.append(await outcome(loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, sock=stream)))
        stream.close()
        results.append(await outcome(loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), family=socket.AF_INET6)))
        results.append(await outcome(loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("no-such-host.invalid", 9))))
        try:  # 3.11 removed the parameter (TypeError), 3.10 refuses True (ValueError)
            coro = loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_address=True)
        except TypeError:
            results.append(TypeError)
        else:
            results.append(await outcome(coro))
        results.append(await outcome(loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_port=True)))
        results.append(await outcome(loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, family=socket.AF_INET)))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        results.append(await outcome(loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, sock=sock, local_addr=("127.0.0.1", 0))))
        sock.close()
        await asyncio.sleep(0.01)
        assert _open_fds() == fds
        return results

    got = run_in(loop, main())
    reuse_address = TypeError if sys.version_info >= (3, 11) else ValueError
    assert got[0] is ValueError
    assert got[1] in (OSError, socket.gaierror)
    assert got[2] is socket.gaierror
    assert got[3] == reuse_address
    assert got[4:] == ["ok", "ok", ValueError]


def test_sendto_after_close_is_quiet(any_loop):
    loop = any_loop

    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), remote_addr=("127.0.0.1", 9)
        )
        tr.close()
        tr.sendto(b"late")  # connected: dropped and counted, as stock
        await pr.lost
        tr.sendto(b"later")
        assert pr.errors == []

    run_in(loop, main())


def test_endpoint_survives_a_run_from_another_thread(any_loop):
    """The loop stops (io_uring: its requests leave the kernel) and is run
    again from another thread (io_uring: a new ring, the datagram buffer ring
    registered again): the endpoint goes on receiving, nothing lost."""
    import threading

    loop = any_loop

    async def setup():
        return await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )

    rx, rp = run_in(loop, setup())
    addr = rx.get_extra_info("sockname")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(3):
        tx.sendto(b"before %d" % i, addr)  # arrive while the loop is stopped
    errors = []

    async def later():
        for i in range(3):
            tx.sendto(b"after %d" % i, addr)
        await rp.until(lambda: len(rp.datagrams) == 6)
        rx.close()
        await rp.lost

    def other():
        try:
            run_in(loop, later())
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    tx.close()
    assert not t.is_alive() and not errors, errors
    assert [d for d, _ in rp.datagrams] == [b"before %d" % i for i in range(3)] + [
        b"after %d" % i for i in range(3)
    ]
