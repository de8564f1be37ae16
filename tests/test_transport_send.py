"""The stream transport's send at the end of the turn (decision 305): the
socket is asked first, with one non-blocking send() of a single chunk or
sendmsg() of the turn's queue (decision 370); only what it leaves becomes an
engine send, in the fd's ordered queue, from where the kernel stopped. On
every kind (io_uring, epoll, io_uring with every fallback), and on the stock
loop where the point is the stock behaviour (what the peer receives, in
order, and the errors)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import LOOP_KINDS, is_stock, require_uring, run_in


class Proto(asyncio.Protocol):
    def __init__(self, loop):
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def _pair(loop, rcvbuf=0):
    """A transport of the loop's and its peer, a plain non-blocking socket
    (with a small receive buffer when rcvbuf is given, set before it is
    connected, so the window never grows past it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    if rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.setblocking(False)
    with listener:
        port = listener.getsockname()[1]
        connect = loop.create_connection(lambda: Proto(loop), "127.0.0.1", port)
        (tr, pr), (peer, _) = await asyncio.gather(connect, loop.sock_accept(listener))
    peer.setblocking(False)
    return tr, pr, peer


async def _read_until_eof(loop, peer):
    out = bytearray()
    while chunk := await loop.sock_recv(peer, 1 << 20):
        out += chunk
    return bytes(out)


def _pattern(i, size):
    """size bytes that say where they belong (a reordered, repeated or
    dropped chunk changes the whole)."""
    unit = i.to_bytes(4, "big")
    return (unit * (size // 4 + 1))[:size]


def test_a_flush_the_socket_takes_whole_is_no_engine_op(loop):
    """A turn's writes that the socket takes at once leave in the flush's
    sendmsg(): no engine op, so no record and no completion; the queue is
    empty when the turn ends."""

    async def main():
        tr, pr, peer = await _pair(loop)
        with peer:
            c, eng = tr._core, loop._engine
            await asyncio.sleep(0)  # the receive is armed: nothing else will come
            sends, inline, records = c.sends, c.inline_sends, eng.stats()["records"]
            tr.write(b"a" * 100)  # from a task: queued on epoll too (decision 398)
            tr.write(b"b" * 200)
            tr.writelines([b"c" * 300, b"d"])
            for _ in range(3):
                await asyncio.sleep(0)  # the flush, then turns where a record would come
            assert c.sends - sends == 1  # the turn's writes, one flush
            assert c.inline_sends - inline == 1  # taken whole by the socket
            assert eng.stats()["records"] == records  # no engine op: no record
            assert c.buffer_size == 0 and c.sending == 0 and not c.buffer
            want = b"a" * 100 + b"b" * 200 + b"c" * 300 + b"d"
            got = bytearray()
            while len(got) < len(want):
                got += await loop.sock_recv(peer, 65536)
            assert bytes(got) == want
            tr.close()
            assert await pr.lost is None

    run_in(loop, main())


COUNT_SENDMSG = textwrap.dedent(
    """
    import asyncio, ctypes, socket, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import make_loop
    calls = ctypes.CDLL(None).sendmsg_calls
    calls.restype = ctypes.c_long

    async def main(loop):
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        with listener:
            connect = loop.create_connection(asyncio.Protocol, *listener.getsockname())
            (tr, _), (peer, _) = await asyncio.gather(connect, loop.sock_accept(listener))
        with peer:
            c = tr._core
            sends, inline, before = c.sends, c.inline_sends, calls()
            for _ in range(20):
                tr.write(b"a" * 100)  # from a task: the flush's, on epoll too (398)
                got = b""
                while len(got) < 100:
                    got += await asyncio.wait_for(loop.sock_recv(peer, 4096), 10)
            print(c.sends - sends, c.inline_sends - inline, calls() - before)
            tr.close()

    loop = make_loop(sys.argv[1])
    try:
        loop.run_until_complete(main(loop))
    finally:
        loop.close()
    """
)


def test_a_tasks_writes_leave_together_in_the_turns_flush(loop):
    """A write from a task (asyncio streams: read, write, drain) waits for
    the turn's flush on every backend, so that the turn's responses leave
    together and a response written in pieces is one send(); epoll's send()
    in write() stays for a protocol callback of the turn's records
    (decisions 210, 398). Counted by the Stream: sends made in write()
    (`directs`) and flushes that sent (`sends`), a syscall each."""
    served = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            served.append(transport)

        def data_received(self, data):
            served[-1].write(data)

    async def handler(reader, writer):
        served.append(writer.transport)
        while data := await reader.read(65536):
            writer.write(b"<")
            writer.write(data)
            await writer.drain()
        writer.close()

    async def twenty(server, reply):
        """20 round trips to server; its transport's (directs, sends) for them"""
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        w.write(b"x")
        assert await r.readexactly(len(reply(b"x"))) == reply(b"x")
        c = served[-1]._core
        directs, sends = c.directs, c.sends
        for i in range(20):
            msg = b"%03d" % i
            w.write(msg)
            # no wait_for here: its callbacks left in _ready would have the
            # next record held and handed over from _ready (decision 211)
            assert await r.readexactly(len(reply(msg))) == reply(msg)
        counts = c.directs - directs, c.sends - sends
        w.close()
        await w.wait_closed()
        return counts

    async def main():
        async with await asyncio.start_server(handler, "127.0.0.1", 0) as srv:
            # one syscall a response, its two writes gathered (epoll before
            # 398: 20 directs and 20 sends)
            assert await twenty(srv, lambda m: b"<" + m) == (0, 20)
        async with await loop.create_server(Echo, "127.0.0.1", 0) as srv:
            on_epoll = loop.backend == "epoll"
            assert await twenty(srv, lambda m: m) == ((20, 0) if on_epoll else (0, 20))

    run_in(loop, main())  # bounded: 10 s


def test_a_direct_send_taken_whole_is_not_flushed_and_the_batchs_next_write_gathers(loop):
    """epoll: a write from data_received that the socket takes whole in
    write() leaves nothing for the turn's flush, so the Stream does not go on
    the dirty list (decision 714; it did, to be visited by a flush that found
    nothing); a second write of the same batch still queues and leaves at the
    flush (one direct send and one flush a record, as before). io_uring
    queues both for the flush. Counted by the Stream as in the test above."""
    served, marks = [], []

    class TwoPart(asyncio.Protocol):
        def connection_made(self, transport):
            served.append(transport)
            self.transport = transport

        def data_received(self, data):
            core = self.transport._core
            self.transport.write(b"<")
            first = core.dirty
            self.transport.write(data)
            marks.append((first, core.dirty))

    async def main():
        async with await loop.create_server(TwoPart, "127.0.0.1", 0) as srv:
            r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
            w.write(b"x")
            assert await r.readexactly(2) == b"<x"
            c = served[-1]._core
            directs, sends = c.directs, c.sends
            for i in range(20):
                msg = b"%03d" % i
                w.write(msg)
                # no wait_for (see the test above): run_in bounds the wait
                assert await r.readexactly(4) == b"<" + msg
            counts = c.directs - directs, c.sends - sends
            w.close()
            await w.wait_closed()
        return counts

    counts = run_in(loop, main())  # bounded: 10 s
    if loop.backend == "epoll":
        assert counts == (20, 20)
        assert set(marks) == {(False, True)}
    else:
        assert counts == (0, 20)
        assert set(marks) == {(True, True)}


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_a_flush_of_one_chunk_is_send_not_sendmsg(tmp_path, kind):
    """A turn's flush of a single queued chunk (the usual turn of a
    request/response server: one write) asks the socket with send(), not
    sendmsg(), which makes the kernel copy in a msghdr and an iovec first
    (decision 370). Counted by an LD_PRELOAD shim around sendmsg() in a child:
    20 flushes, each taken whole by the socket, no sendmsg()."""
    from test_engine_native import ROOT, _build_shim, _preload

    if kind != "epoll":
        require_uring()
    shim = _build_shim("count_sendmsg", tmp_path)
    script = tmp_path / "count.py"
    script.write_text(COUNT_SENDMSG.format(root=str(ROOT), tests=str(Path(__file__).parent)))
    proc = subprocess.run(
        [sys.executable, str(script), kind],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, LD_PRELOAD=_preload(shim)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["20", "20", "0"]  # flushes, taken whole, sendmsg() calls


@pytest.mark.parametrize("end", ["close", "write_eof"])
@pytest.mark.parametrize("queue", ["chunks", "single"])
def test_a_short_direct_send_goes_on_in_order(any_loop, queue, end):
    """The socket takes part of the turn's queue (40 chunks, or one write:
    the flush's single-chunk path, decision 722): the rest goes on through
    the engine from the first byte it did not take, the next turns' writes
    leave behind it, and close() (or write_eof()) while that send is in
    flight still delivers every byte, in order, before the EOF."""
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, rcvbuf=16384)
        with peer:
            sock = tr.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            tr.set_write_buffer_limits(high=64 << 20)  # no send at write() time
            if queue == "chunks":
                tr.write(b"<")  # the stock loop sends this in write(); here the flush does (398)
                total = bytearray(b"<")
                # 40 chunks (more than the flush's 16 iovecs on the stack),
                # with one odd size so the cut falls inside a chunk
                for i in range(40):
                    piece = _pattern(i, 65536 if i != 7 else 4093)
                    tr.write(piece)
                    total += piece
            else:
                # one odd-sized bytes: the queue is that object itself, not a list
                first = b"".join(_pattern(i, 65536) for i in range(24)) + _pattern(99, 4093)
                tr.write(first)
                total = bytearray(first)
            queued = tr.get_write_buffer_size()
            if not is_stock(loop):
                c = tr._core
                sends, inline = c.sends, c.inline_sends
            await asyncio.sleep(0)  # the flush: part leaves, the rest waits
            if not is_stock(loop):
                # one send at once (the flush's send or sendmsg), the rest
                # one engine send, in flight until the peer reads
                assert c.sends - sends == 1 and c.inline_sends == inline
                assert 0 < c.sending < queued
                assert c.buffer_size == c.sending
            for i in range(40, 50):  # later turns queue behind it
                piece = _pattern(i, 1000 + i)
                tr.write(piece)
                total += piece
                await asyncio.sleep(0)
            if end == "close":
                tr.close()
            else:
                tr.write_eof()
            got = await _read_until_eof(loop, peer)
            assert len(got) == len(total)
            assert got == bytes(total)
            if end == "write_eof":
                tr.close()
            assert await pr.lost is None

    run_in(loop, main(), timeout=30)


def test_abort_while_the_rest_is_in_flight(any_loop):
    """abort() while the rest of a short direct send is in the engine: the
    send is cancelled, connection_lost(None) comes once, the fd is closed
    (the fixture counts fds) and what reached the peer is a prefix of what
    was written."""
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop, rcvbuf=16384)
        with peer:
            tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            tr.set_write_buffer_limits(high=64 << 20)
            tr.write(b"<")  # the stock loop sends this in write(); here the flush does (398)
            data = b"".join(_pattern(i, 65536) for i in range(16))
            tr.write(data)
            queued = tr.get_write_buffer_size()
            data = b"<" + data
            await asyncio.sleep(0)
            if not is_stock(loop):
                assert 0 < tr._core.sending < queued
            tr.abort()
            assert await pr.lost is None
            got = bytearray()
            while True:
                try:
                    chunk = await loop.sock_recv(peer, 1 << 20)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            assert data.startswith(bytes(got))

    run_in(loop, main(), timeout=30)


def test_a_flush_error_is_the_stock_write_error(any_loop):
    """The flush's sendmsg() fails (the socket was shut down for writing
    behind the transport's back): the stock write error, a fatal error whose
    connection_lost gets the BrokenPipeError, once."""
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop)
        with peer:
            tr.write(b"<")  # the stock loop sends this in write(); here the flush does (398)
            tr.get_extra_info("socket").shutdown(socket.SHUT_WR)
            tr.write(b"x" * 10)
            tr.write(b"y" * 10)
            exc = await pr.lost
            assert isinstance(exc, BrokenPipeError)
            assert exc.errno == errno.EPIPE
            assert tr.is_closing()
            assert tr.get_write_buffer_size() == 0

    run_in(loop, main())


def test_is_closing_reads_the_slot(any_loop):
    """is_closing() is the stock `return self._closing`, in C on uringloop
    (decision 306): False while open, True from close() on, also through
    the class and as a bound method; extra arguments are refused."""
    loop = any_loop

    async def main():
        tr, pr, peer = await _pair(loop)
        with peer:
            cls = type(tr)
            if not is_stock(loop):
                assert type(cls.__dict__["is_closing"]).__name__ == "CoreMethod"
            assert tr.is_closing() is False
            assert cls.is_closing(tr) is False
            bound = tr.is_closing
            assert bound() is False
            with pytest.raises(TypeError):
                tr.is_closing(1)
            tr.close()
            assert tr.is_closing() is True and bound() is True
            assert await pr.lost is None
            assert tr.is_closing() is True

    run_in(loop, main())


def test_zerocopy_loopback_benchmark_builds_and_sees_the_kernel_copy(tmp_path):
    """benchmarks/zerocopy_loopback.c (decision 413) builds without warnings and
    sends every byte both ways; with MSG_ZEROCOPY over loopback every
    completion notification says the kernel copied the data after all: the
    fact decision 413 rests on (this fails if a kernel stops copying there).
    Nothing here measures speed."""
    from test_datagram_hot import _build_benchmark

    exe = _build_benchmark(tmp_path, "zerocopy_loopback")
    plain = subprocess.run(
        [exe, "65536", "200", "0"], check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert plain.startswith("send         size 65536: sender ")
    assert plain.rstrip().endswith("notifications 0 (copied 0)")
    zc = subprocess.run(
        [exe, "65536", "200", "1"], check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert zc.startswith("MSG_ZEROCOPY size 65536: sender ")
    notes = zc.rsplit("notifications ", 1)[1]
    total, copied = int(notes.split()[0]), int(notes.split("copied ")[1].rstrip(")\n"))
    assert total >= 1 and copied == total
    bad = subprocess.run([exe, "1"], timeout=30, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
