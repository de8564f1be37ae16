#!/usr/bin/env python3
"""Event-loop micro-benchmarks: stock asyncio, uvloop, rloop, rsloop, uringloop side by side.

Loops (one fresh loop per repetition):

``stock``     ``asyncio.SelectorEventLoop()``
``uvloop``    ``uvloop.new_event_loop()`` (left out, with a note, if uvloop is not installed)
``rloop``     ``rloop.new_event_loop()`` (left out, with a note, if rloop is not installed)
``rsloop``    ``rsloop.new_event_loop()`` (left out, with a note, if rsloop is not installed:
              its Linux wheels need glibc 2.39; where it does not import but
              benchmarks/.rsloop-env was built, the whole run restarts under that
              environment's glibc, every loop alike: ``--rsloop-env``, decision 801)
``io_uring``  ``uringloop.Loop(backend="io_uring")``
``epoll``     ``uringloop.Loop(backend="epoll")``

Scenarios (ops counted in brackets):

``call_soon``      1000 ``loop.call_soon(cb)`` scheduled, then the loop runs them; repeated
                   [callbacks]
``chain``          one callback re-scheduling itself with ``call_soon``, N times [callbacks]
``call_later``     1000 timers, delays spread over 0-1 ms, all fire; repeated [timers fired]
``timer_churn``    ``loop.call_later(60, cb).cancel()``, one loop turn per 1000 [timers]
``create_task``    tasks of a trivial coroutine, created 1000 at a time [tasks]
``sleep0``         8 tasks each looping on ``await asyncio.sleep(0)`` [sleeps]
``future``         ``create_future()``, ``call_soon(fut.set_result, None)``, ``await fut``
                   [round trips]
``pingpong``       ``sock_sendall`` / ``sock_recv`` of 64 bytes over one socketpair [round trips]
``pingpong16``     the same over 16 socketpairs at once [round trips, all pairs]
``sock_1k_pingpong`` net_server.py's sock_* echo at c=1: 1 KiB messages over one socketpair,
                   each end receiving with ``sock_recv(65536)`` [round trips]
``sock_100k_pingpong4`` 100 KiB messages over 4 socketpairs with sock_*: the server sends
                   back each ``sock_recv(65536)`` as it comes [round trips, all pairs]
``stream_pingpong16`` ``asyncio.Protocol`` transports over 16 socketpairs (both ends on the
                   loop, made with ``create_connection(sock=)``): the server protocol
                   echoes from ``data_received``, each client sends its next 64 B message
                   when the echo is complete [round trips, all pairs]
``buffered_pingpong16`` the same with a ``BufferedProtocol`` server [round trips, all pairs]
``stream_100k_pingpong4`` ``stream_pingpong16``'s Protocol echo with 100 KiB messages over 4
                   socketpairs [round trips, all pairs]
``buffered_100k_pingpong4`` the same with the ``BufferedProtocol`` server (a 64 KiB buffer,
                   each ``buffer_updated`` writes a copy of what came) [round trips, all pairs]
``streams_pingpong16`` the same with an asyncio streams server (``open_connection(sock=)``:
                   ``read()``, ``write()``, ``drain()``) [round trips, all pairs]
``streams_100k_pingpong4`` the streams server with 100 KiB messages over 4 socketpairs
                   (``read(65536)``: two writes a message) [round trips, all pairs]
``http_httptools16`` HTTP/1.1 keep-alive GETs over 16 socketpairs: the server is an
                   ``asyncio.Protocol`` with an ``httptools`` parser and a fixed response,
                   the client a Protocol that sends the next request when the response
                   is complete [requests, all pairs]
``http_aiohttp16`` the same client against aiohttp's web server (hello world, no access
                   log) [requests, all pairs]
``tls_pingpong16`` ``stream_pingpong16`` with 1 KiB messages under TLS on both ends
                   (trustme certificates) [round trips, all pairs]
``udp_pingpong``   UDP echo through ``create_datagram_endpoint`` transports on 127.0.0.1:
                   one client endpoint, 64 B datagrams, the next sent from
                   ``datagram_received`` [round trips]
``udp_pingpong16`` the same with 16 client endpoints at once [round trips, all clients]
``udp_pingpong_1k`` one client, 1 KiB datagrams [round trips]
``udp_pingpong16_1k`` 16 clients, 1 KiB datagrams [round trips, all clients]
``udp_flood``      a separate process (C, ``udp_flood.c``: UDP GSO messages of 64
                   datagrams, 16 to a sendmmsg, faster than any receiver here; a Python
                   sender where no C compiler is found) sends 64 B datagrams to one
                   endpoint as fast as it can; the receiver's rate from its first to its
                   N-th datagram (UDP drops the rest: the receiver's capacity is what is
                   measured). The report adds the receiver's CPU busy share over that
                   span, the datagrams received of those sent, and the sender's own rate
                   into no receiver and into a C one [datagrams received]

``--clock cpu`` times each repetition by the thread's CPU time (``time.thread_time``)
instead of the wall clock: on a shared, loaded machine the wall clock also counts the
time the process waited for a CPU, which swings by tens of percent between runs, while
CPU time does not. It is the right clock only for the scenarios that never wait in the
kernel (call_soon, chain, timer_churn, create_task, sleep0, future): for the others it
leaves out the waits, which are part of their cost.

Each scenario runs on every loop ``--repeat`` times, the loops interleaved (and their
order rotated per repetition) so machine noise spreads evenly. The report is the median
ops/s per loop and ratios to uvloop. See benchmarks/README.md.

This is a report: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import platform
import pstats
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MSG_LEN = 64
BATCH = 1000  # ops per batch: the loop turns (and drains) between two batches
SLEEP_TASKS = 8
LOOPS = ("stock", "uvloop", "rloop", "rsloop", "io_uring", "epoll")
PEERS = ("uvloop", "rloop", "rsloop")  # third-party loops, each imported if it can be
LABELS = {
    "stock": "stock asyncio",
    "uvloop": "uvloop",
    "rloop": "rloop",
    "rsloop": "rsloop",
    "io_uring": "uringloop io_uring",
    "epoll": "uringloop epoll",
}
# per repetition, the slowest loop is given about this long; counts are cut to fit
ENGINE_COUNTERS = ("enters", "submitted", "records")
TARGET_S = 0.6
QUICK_TARGET_S = 0.03

uvloop = None  # the module, when it imports
uringloop = None
peers: dict = {}  # name -> module, for the peers in PEERS that import


class _CpuClock:
    """``--clock cpu``: the module's ``time``, with perf_counter() reading the thread's
    CPU time (the scenarios time themselves with time.perf_counter())."""

    perf_counter = staticmethod(time.thread_time)

    def __getattr__(self, name):
        return getattr(_time_module, name)


_time_module = time


class BenchError(Exception):
    """A scenario did not do its work (a bug to report, not a slow result)."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _import_loops() -> list[str]:
    """Import uringloop (required) and the peers (optional); returns notes."""
    global uvloop, uringloop
    notes = []
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        import uringloop as mod
    except ImportError as exc:
        sys.exit(
            f"cannot import uringloop ({exc}); build it first:\n"
            "    python setup.py build_ext --inplace"
        )
    uringloop = mod
    try:
        import uvloop as uv
    except ImportError as exc:
        notes.append(
            f"uvloop is not installed ({exc}): its column is left out and ratios are to "
            "stock asyncio. Install it with `pip install uvloop` (or `pip install -e .[bench]`)."
        )
        _log(f"note: {notes[-1]}")
    else:
        uvloop = uv
        peers["uvloop"] = uv
    for name in PEERS[1:]:
        try:
            peers[name] = __import__(name)
        except ImportError as exc:
            notes.append(f"{name} is not installed ({exc}): its column is left out")
            _log(f"note: {notes[-1]}")
    return notes


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "stock":
        return asyncio.SelectorEventLoop()
    if name in PEERS:
        return peers[name].new_event_loop()
    return uringloop.Loop(backend=name)


# --------------------------------------------------------------------------------------
# Scenarios: each is a coroutine (loop, n) -> (ops, seconds), timed from the inside
# --------------------------------------------------------------------------------------


async def bench_call_soon(loop, n):
    ran = [0]

    def cb():
        ran[0] += 1

    call_soon = loop.call_soon
    create_future = loop.create_future
    batches = max(1, n // BATCH)
    t0 = time.perf_counter()
    for _ in range(batches):
        done = create_future()
        for _ in range(BATCH - 1):
            call_soon(cb)
        call_soon(done.set_result, None)  # callbacks run in order: the last one ends it
        await done
    elapsed = time.perf_counter() - t0
    if ran[0] != batches * (BATCH - 1):
        raise BenchError(f"call_soon: {ran[0]} of {batches * (BATCH - 1)} callbacks ran")
    return batches * BATCH, elapsed


async def bench_chain(loop, n):
    left = [n]
    done = loop.create_future()
    call_soon = loop.call_soon

    def step():
        left[0] -= 1
        if left[0]:
            call_soon(step)
        else:
            done.set_result(None)

    t0 = time.perf_counter()
    call_soon(step)
    await done
    return n, time.perf_counter() - t0


async def bench_call_later(loop, n):
    left = [0]
    done = [None]

    def fire():
        left[0] -= 1
        if not left[0]:
            done[0].set_result(None)

    call_later = loop.call_later
    create_future = loop.create_future
    # 0 to 999 µs, in a scrambled order so that the timer queue does real work
    delays = [((i * 7919) % BATCH) * 1e-6 for i in range(BATCH)]
    batches = max(1, n // BATCH)
    t0 = time.perf_counter()
    for _ in range(batches):
        done[0] = create_future()
        left[0] = BATCH
        for delay in delays:
            call_later(delay, fire)
        await done[0]
    return batches * BATCH, time.perf_counter() - t0


async def bench_timer_churn(loop, n):
    fired = [0]

    def cb():
        fired[0] += 1

    call_later = loop.call_later
    sleep = asyncio.sleep
    batches = max(1, n // BATCH)
    t0 = time.perf_counter()
    for _ in range(batches):
        for _ in range(BATCH):
            call_later(60.0, cb).cancel()
        await sleep(0)  # one loop turn: the loop may purge its cancelled timers
    elapsed = time.perf_counter() - t0
    if fired[0]:
        raise BenchError(f"timer_churn: {fired[0]} cancelled timers fired")
    return batches * BATCH, elapsed


async def _trivial():
    return None


async def bench_create_task(loop, n):
    create_task = loop.create_task
    batches = max(1, n // BATCH)
    t0 = time.perf_counter()
    for _ in range(batches):
        for _ in range(BATCH):
            task = create_task(_trivial())
        await task  # tasks start in creation order: the last one done means all are
    return batches * BATCH, time.perf_counter() - t0


async def bench_sleep0(loop, n):
    per_task = max(1, n // SLEEP_TASKS)
    sleep = asyncio.sleep

    async def worker():
        for _ in range(per_task):
            await sleep(0)

    t0 = time.perf_counter()
    await asyncio.gather(*[loop.create_task(worker()) for _ in range(SLEEP_TASKS)])
    return per_task * SLEEP_TASKS, time.perf_counter() - t0


async def bench_future(loop, n):
    create_future = loop.create_future
    call_soon = loop.call_soon
    t0 = time.perf_counter()
    for _ in range(n):
        fut = create_future()
        call_soon(fut.set_result, None)
        await fut
    return n, time.perf_counter() - t0


def _socketpairs(k):
    """k non-blocking AF_UNIX stream socketpairs."""
    socks = [socket.socketpair() for _ in range(k)]
    for pair in socks:
        for sock in pair:
            sock.setblocking(False)
    return socks


async def _serve_pairs(loop, socks, server, client, timeout=None):
    """server(b) and client(a) as tasks on each socketpair (a, b), all at
    once; the seconds until all are done. The sockets are closed after."""
    try:
        tasks = [loop.create_task(server(b)) for _, b in socks]
        tasks += [loop.create_task(client(a)) for a, _ in socks]
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        return time.perf_counter() - t0
    finally:
        for a, b in socks:
            a.close()
            b.close()


async def _sock_pingpong(loop, n, pairs):
    rounds = max(1, n // pairs)
    msg = bytes(range(MSG_LEN))
    sock_recv = loop.sock_recv
    sock_sendall = loop.sock_sendall
    socks = _socketpairs(pairs)

    async def recv_exact(sock):
        data = await sock_recv(sock, MSG_LEN)
        while len(data) < MSG_LEN:  # a stream socket may split a message (rarely does)
            more = await sock_recv(sock, MSG_LEN - len(data))
            if not more:
                raise BenchError("pingpong: EOF in the middle of a message")
            data += more
        return data

    async def client(a):
        for _ in range(rounds):
            await sock_sendall(a, msg)
            if await recv_exact(a) != msg:
                raise BenchError("pingpong: the echo differs from the message sent")

    async def server(b):
        for _ in range(rounds):
            await sock_sendall(b, await recv_exact(b))

    elapsed = await _serve_pairs(loop, socks, server, client)
    return rounds * pairs, elapsed


async def _sock_echo(loop, pairs, size, rounds, timeout=None):
    """net_server.py's sock_* echo over `pairs` socketpairs, `rounds` messages
    of `size` bytes each: the server sends back each sock_recv(65536) as it
    comes, the client collects the whole echo before its next message. The
    seconds it took."""
    msg = bytes(i & 0xFF for i in range(size))
    socks = _socketpairs(pairs)

    async def client(a):
        for _ in range(rounds):
            await loop.sock_sendall(a, msg)
            got = b""
            while len(got) < size:
                chunk = await loop.sock_recv(a, 65536)
                if not chunk:
                    raise BenchError(f"sock {size} B: EOF in the middle of a message")
                got += chunk
            if got != msg:
                raise BenchError(f"sock {size} B: the echo differs from the message sent")

    async def server(b):
        left = rounds * size
        while left:
            data = await loop.sock_recv(b, 65536)
            left -= len(data)
            await loop.sock_sendall(b, data)

    return await _serve_pairs(loop, socks, server, client, timeout=timeout)


async def bench_sock_100k_pingpong4(loop, n):
    """The sock_* echo with 100 KiB messages over 4 socketpairs."""
    rounds = max(1, n // 4)
    # callgrind on a loaded machine is slow
    return rounds * 4, await _sock_echo(loop, 4, 100 * 1024, rounds, timeout=600)


async def bench_sock_1k_pingpong(loop, n):
    """The sock_* echo with one connection and 1 KiB messages (net_bench's
    echo-1k-c1-sock rows)."""
    return n, await _sock_echo(loop, 1, 1024, n)


async def bench_pingpong(loop, n):
    return await _sock_pingpong(loop, n, 1)


async def bench_pingpong16(loop, n):
    return await _sock_pingpong(loop, n, 16)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, msg, rounds, done):
        self.msg, self.left, self.done = msg, rounds, done

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if data != self.msg:
            self.done.set_exception(BenchError("udp: the echo differs from the datagram sent"))
            return
        self.left -= 1
        if self.left:
            self.transport.sendto(self.msg)
        elif not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc):
        if not self.done.done():
            self.done.set_exception(exc)


async def _udp_pingpong(loop, n, clients, size):
    rounds = max(1, n // clients)
    msg = bytes(i & 0xFF for i in range(size))
    server, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
    addr = server.get_extra_info("sockname")
    ends = []
    try:
        for _ in range(clients):
            done = loop.create_future()
            tr, _ = await loop.create_datagram_endpoint(
                lambda done=done: _UdpClient(msg, rounds, done), remote_addr=addr
            )
            ends.append((tr, done))
        t0 = time.perf_counter()
        for tr, _ in ends:
            tr.sendto(msg)
        await asyncio.wait_for(asyncio.gather(*(d for _, d in ends)), 120)
        elapsed = time.perf_counter() - t0
    finally:
        server.close()
        for tr, _ in ends:
            tr.close()
    return rounds * clients, elapsed


async def bench_udp_pingpong(loop, n):
    return await _udp_pingpong(loop, n, 1, MSG_LEN)


async def bench_udp_pingpong16(loop, n):
    return await _udp_pingpong(loop, n, 16, MSG_LEN)


async def bench_udp_pingpong_1k(loop, n):
    return await _udp_pingpong(loop, n, 1, 1024)


async def bench_udp_pingpong16_1k(loop, n):
    return await _udp_pingpong(loop, n, 16, 1024)


class _StreamEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class _BufferedEcho(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(65536)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(self.buf[:nbytes])


class _StreamClient(asyncio.Protocol):
    def __init__(self, msg, rounds, done):
        self.msg, self.left, self.done, self.got = msg, rounds, done, b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.got += data
        if len(self.got) < len(self.msg):
            return
        if self.got != self.msg:
            self.done.set_exception(BenchError("stream: the echo differs from the message sent"))
            return
        self.got = b""
        self.left -= 1
        if self.left:
            self.transport.write(self.msg)
        elif not self.done.done():
            self.done.set_result(None)


async def _pingpong(loop, pairs, server_factory, client_factory, first):
    """pairs socketpairs, a server and a client transport on each; every client
    writes first, then runs its closed loop until its done future is set."""
    ends = []
    try:
        for _ in range(pairs):
            a, b = socket.socketpair()
            done = loop.create_future()
            srv, _ = await loop.create_connection(server_factory, sock=a)
            cli, _ = await loop.create_connection(lambda done=done: client_factory(done), sock=b)
            ends.append((srv, cli, done))
        t0 = time.perf_counter()
        for _, cli, _ in ends:
            cli.write(first)
        await asyncio.wait_for(asyncio.gather(*(d for _, _, d in ends)), 120)
        elapsed = time.perf_counter() - t0
    finally:
        for srv, cli, _ in ends:
            srv.close()
            cli.close()
    return elapsed


async def _stream_pingpong(loop, n, pairs, server_protocol, size=MSG_LEN):
    rounds = max(1, n // pairs)
    msg = bytes(i & 0xFF for i in range(size))
    elapsed = await _pingpong(
        loop, pairs, server_protocol, lambda done: _StreamClient(msg, rounds, done), msg
    )
    return rounds * pairs, elapsed


async def bench_stream_pingpong16(loop, n):
    return await _stream_pingpong(loop, n, 16, _StreamEcho)


async def bench_buffered_pingpong16(loop, n):
    return await _stream_pingpong(loop, n, 16, _BufferedEcho)


async def bench_stream_100k_pingpong4(loop, n):
    return await _stream_pingpong(loop, n, 4, _StreamEcho, 100 * 1024)


async def bench_buffered_100k_pingpong4(loop, n):
    return await _stream_pingpong(loop, n, 4, _BufferedEcho, 100 * 1024)


async def bench_streams_pingpong16(loop, n):
    """The server side is asyncio streams: read() -> write() -> drain()."""
    return await _streams_pingpong(loop, n, 16, MSG_LEN)


async def bench_streams_100k_pingpong4(loop, n):
    """net_server.py's streams echo at 100 KiB: each read(65536) written back."""
    return await _streams_pingpong(loop, n, 4, 100 * 1024)


async def _streams_pingpong(loop, n, pairs, size):
    rounds = max(1, n // pairs)
    msg = bytes(i & 0xFF for i in range(size))
    ends, servers = [], []

    async def serve(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    try:
        for _ in range(pairs):
            a, b = socket.socketpair()
            done = loop.create_future()
            reader, writer = await asyncio.open_connection(sock=a)
            servers.append((loop.create_task(serve(reader, writer)), writer))
            cli, _ = await loop.create_connection(
                lambda done=done: _StreamClient(msg, rounds, done), sock=b
            )
            ends.append((cli, done))
        t0 = time.perf_counter()
        for cli, _ in ends:
            cli.write(msg)
        await asyncio.wait_for(asyncio.gather(*(d for _, d in ends)), 120)
        elapsed = time.perf_counter() - t0
    finally:
        for cli, _ in ends:
            cli.close()
        for task, _ in servers:
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.TimeoutError, OSError):
                pass
    return rounds * pairs, elapsed


_HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: loop_bench\r\n\r\n"
_HTTP_BODY = b"Hello, World!"
_HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(_HTTP_BODY)).encode()
    + b"\r\n\r\n"
    + _HTTP_BODY
)


class _HttpToolsServer(asyncio.Protocol):
    """net_server.py's httptools server: a parser per connection, one fixed
    keep-alive response per request."""

    def __init__(self):
        import httptools

        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_complete(self):
        self.transport.write(_HTTP_RESPONSE)


class _HttpClient(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client: the next request when the response
    (headers and its Content-Length of body) is complete."""

    def __init__(self, rounds, done):
        self.left, self.done, self.got = rounds, done, b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        got = self.got = self.got + data
        end = got.find(b"\r\n\r\n")
        if end < 0:
            return
        head = got[:end].lower()
        at = head.find(b"content-length:")
        if at < 0 or not head.startswith(b"http/1.1 200"):
            self.done.set_exception(BenchError(f"http: unexpected response {got[:200]!r}"))
            return
        length = int(head[at + 15:].split(b"\r\n", 1)[0])
        if len(got) < end + 4 + length:
            return
        if got[end + 4:end + 4 + length] != _HTTP_BODY:
            self.done.set_exception(BenchError(f"http: unexpected body {got[end + 4:]!r}"))
            return
        self.got = got[end + 4 + length:]
        self.left -= 1
        if self.left:
            self.transport.write(_HTTP_REQUEST)
        elif not self.done.done():
            self.done.set_result(None)


async def _http_pingpong(loop, n, pairs, server_factory):
    rounds = max(1, n // pairs)
    elapsed = await _pingpong(
        loop, pairs, server_factory, lambda done: _HttpClient(rounds, done), _HTTP_REQUEST
    )
    return rounds * pairs, elapsed


async def bench_http_httptools16(loop, n):
    return await _http_pingpong(loop, n, 16, _HttpToolsServer)


async def bench_http_aiohttp16(loop, n):
    """aiohttp's web server (hello world, no access log) behind the same client."""
    from aiohttp import web

    async def hello(request):
        return web.Response(text=_HTTP_BODY.decode())

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        return await _http_pingpong(loop, n, 16, runner.server)
    finally:
        await runner.cleanup()


_tls_contexts = None


def _tls():
    """(server, client) SSLContexts from one trustme CA, made once."""
    global _tls_contexts
    if _tls_contexts is None:
        import ssl

        import trustme

        ca = trustme.CA()
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(server)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        _tls_contexts = server, client
    return _tls_contexts


async def bench_tls_pingpong16(loop, n):
    """stream_pingpong16's Protocol echo with 1 KiB messages under TLS (both ends
    asyncio's SSL protocol over the loop's transports)."""
    server_ctx, client_ctx = _tls()
    pairs = 16
    rounds = max(1, n // pairs)
    msg = bytes(i & 0xFF for i in range(1024))
    ends = []
    try:
        for _ in range(pairs):
            a, b = socket.socketpair()
            done = loop.create_future()
            (srv, _), (cli, _) = await asyncio.wait_for(asyncio.gather(
                loop.connect_accepted_socket(_StreamEcho, a, ssl=server_ctx),
                loop.create_connection(
                    lambda done=done: _StreamClient(msg, rounds, done), sock=b,
                    ssl=client_ctx, server_hostname="localhost",
                ),
            ), 60)
            ends.append((srv, cli, done))
        t0 = time.perf_counter()
        for _, cli, _ in ends:
            cli.write(msg)
        await asyncio.wait_for(asyncio.gather(*(d for _, _, d in ends)), 120)
        elapsed = time.perf_counter() - t0
    finally:
        for srv, cli, _ in ends:
            cli.abort()
            srv.abort()
    return rounds * pairs, elapsed


_FLOOD_SENDER = """
import signal, socket, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
msg = bytes(64)
sent, t0 = 0, None
while not stop:
    try:
        s.send(msg)
    except OSError:
        continue
    sent += 1
    if t0 is None:
        t0 = time.monotonic()
print("sent", sent, time.monotonic() - t0 if t0 else 0.0, flush=True)
"""
_flood_cmd = None  # the sender's command line without its port, built once
UDP_GRO = getattr(socket, "UDP_GRO", 104)  # linux/udp.h
# per udp_flood repetition, for the report: bench_udp_flood leaves its figures here
flood_run: dict = {}


def _flood_sender() -> list[str]:
    global _flood_cmd
    if _flood_cmd is None:
        import tempfile

        exe = os.path.join(tempfile.mkdtemp(prefix="loop_bench-"), "udp_flood")
        src = os.path.join(HERE, "udp_flood.c")
        r = subprocess.run(["cc", "-O2", "-o", exe, src], capture_output=True, text=True)
        if r.returncode == 0:
            _flood_cmd = [exe]
        else:
            _log(f"note: udp_flood.c does not build ({r.stderr.strip()[-200:]}): Python sender")
            _flood_cmd = [sys.executable, "-c", _FLOOD_SENDER]
    return _flood_cmd


def _udp_drops(sock) -> int | None:
    """The datagrams the kernel dropped for this UDP socket (/proc/net/udp)."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    try:
        with open("/proc/net/udp") as f:
            for line in f:
                words = line.split()
                if len(words) > 12 and words[9] == inode:
                    return int(words[12])
    except OSError:
        pass
    return None


def _flood_stop(proc) -> tuple[int, float]:
    """Stop a flood sender; (datagrams it sent, seconds it sent them in)."""
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    words = out.split()
    if proc.returncode != 0 or len(words) != 3 or words[0] != "sent":
        raise BenchError(f"udp_flood: the sender said {out!r} (exit {proc.returncode})")
    return int(words[1]), float(words[2])


class _FloodSink(asyncio.DatagramProtocol):
    def __init__(self, n, done):
        self.count = 0
        self.n = n
        self.done = done  # set at the n-th datagram
        self.sender = None  # the sender's process, stopped at the n-th datagram
        self.first = self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.times_first = self.times_last = None  # os.times(): the kernel's share
        self.waits = 0  # voluntary context switches over the span: waits for datagrams
        self.odd = None  # a datagram that is not one 64-byte segment

    def datagram_received(self, data, addr):
        self.count += 1
        if len(data) != MSG_LEN:
            self.odd = len(data)
        if self.count == 1:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()
            self.times_first = os.times()
            self.waits = -resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        elif self.count == self.n:
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            self.times_last = os.times()
            self.waits += resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
            # stopped from here: a loop that reads on while datagrams keep coming
            # would never get back to the coroutine waiting for this count
            self.sender.terminate()
            self.done.set_result(None)


async def bench_udp_flood(loop, n):
    """The receiver's capacity: datagrams from its first to its n-th, while the
    sender outruns it. Leaves in flood_run: the receiver's CPU time over that
    span against the wall time (busy: 1.0 is a receiver that never waited),
    its waits (voluntary context switches) over it, and over the sender's whole
    life what it sent and the share of that the kernel dropped for the endpoint
    (its queue was full: the receiver was slower). (The CPU time per op of the
    report is this span's too, not the whole run's: the run also receives what
    the socket still holds after the n-th datagram.)"""
    sink = _FloodSink(n, loop.create_future())
    tr, _ = await loop.create_datagram_endpoint(lambda: sink, local_addr=("127.0.0.1", 0))
    sock = tr.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    try:  # the sender's GSO messages must arrive cut into single datagrams
        if sock.getsockopt(socket.IPPROTO_UDP, UDP_GRO):
            raise BenchError("udp_flood: the endpoint has UDP_GRO on")
    except OSError:
        pass  # a kernel without UDP_GRO has no GSO either
    port = tr.get_extra_info("sockname")[1]
    # a plain subprocess (not the loop's subprocess support, which a loop may lack)
    proc = sink.sender = subprocess.Popen(
        _flood_sender() + [str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        # a future, not a polling sleep: no timer wakes the loop while it receives
        try:
            await asyncio.wait_for(sink.done, 120)
        except asyncio.TimeoutError:
            state = "exited" if proc.poll() is not None else "running"
            raise BenchError(f"udp_flood: {sink.count} of {n} datagrams in 120 s "
                             f"(the sender {state})") from None
        sent, _ = sent_s = _flood_stop(proc)
        # not drained: reading on would add a varying count of datagrams to every
        # run's cost (instructions.py subtracts two runs); the kernel counts the loss
        dropped = _udp_drops(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tr.close()
    if sink.odd is not None:
        raise BenchError(f"udp_flood: a datagram of {sink.odd} bytes, not {MSG_LEN}")
    elapsed, cpu = sink.last - sink.first, sink.cpu_last - sink.cpu_first
    flood_run.update(
        cpu=(cpu, sink.times_last.system - sink.times_first.system),
        busy=cpu / elapsed,
        waits=sink.waits * 1000 / (n - 1),
        dropped=dropped / sent if dropped is not None and sent else float("nan"),
        sender=sent / sent_s[1] if sent_s[1] > 0 else 0.0,
    )
    return n - 1, elapsed


def flood_sender_check(seconds: float = 1.0) -> list[str]:
    """The sender's own rate: into a socket nobody reads, then into
    udp_flood.c's C receiver (recvmmsg, 64 at a time). Report lines."""
    cmd = _flood_sender()
    out = ["\n### udp_flood: the sender against no receiver and a C receiver\n"]
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        proc = subprocess.Popen(cmd + [str(rx.getsockname()[1])], stdout=subprocess.PIPE,
                                text=True)
        time.sleep(seconds)
        sent, s = _flood_stop(proc)
    finally:
        rx.close()
    python = cmd[0] == sys.executable
    out.append(f"- into a socket nobody reads: the sender ({'Python' if python else 'udp_flood.c'})"
               f" sent {_fmt_rate(sent / s)} datagrams/s")
    if python:
        out.append("- no C receiver: udp_flood.c did not build")
        return out
    n = 2_000_000
    recv = subprocess.Popen(cmd + ["-r", str(n)], stdout=subprocess.PIPE, text=True)
    sender = None
    try:
        words = recv.stdout.readline().split()
        if len(words) != 2 or words[0] != "port":
            raise BenchError(f"udp_flood -r said {words!r}")
        sender = subprocess.Popen(cmd + [words[1]], stdout=subprocess.PIPE, text=True)
        said, _ = recv.communicate(timeout=120)
        sent, s = _flood_stop(sender)
    finally:
        for p in (recv, sender):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    words = said.split()
    if recv.returncode != 0 or len(words) != 5 or words[0] != "received":
        raise BenchError(f"udp_flood -r said {said!r} (exit {recv.returncode})")
    got, wall, cpu, waits = int(words[1]), float(words[2]), float(words[3]), int(words[4])
    out.append(
        f"- into `udp_flood -r` (C, recvmmsg of 64): the receiver took "
        f"{_fmt_rate(got / wall)} datagrams/s, busy {cpu / wall:.0%} of the wall time, "
        f"{waits * 1000 / got:.2f} waits per 1,000 datagrams; the sender sent "
        f"{_fmt_rate(sent / s)}/s meanwhile"
    )
    return out


class Scenario(NamedTuple):
    name: str
    fn: Callable
    n: int  # ops per repetition in a full run (cut if the slowest loop would exceed TARGET_S)
    unit: str


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("call_soon", bench_call_soon, 1_000_000, "callbacks"),
        Scenario("chain", bench_chain, 500_000, "callbacks"),
        Scenario("call_later", bench_call_later, 300_000, "timers fired"),
        Scenario("timer_churn", bench_timer_churn, 500_000, "call_later+cancel"),
        Scenario("create_task", bench_create_task, 300_000, "tasks"),
        Scenario("sleep0", bench_sleep0, 500_000, "sleep(0)s"),
        Scenario("future", bench_future, 200_000, "future round trips"),
        Scenario("pingpong", bench_pingpong, 20_000, "64 B round trips"),
        Scenario("pingpong16", bench_pingpong16, 32_000, "64 B round trips"),
        Scenario("sock_1k_pingpong", bench_sock_1k_pingpong, 20_000, "1 KiB round trips"),
        Scenario("sock_100k_pingpong4", bench_sock_100k_pingpong4, 4_000, "100 KiB round trips"),
        Scenario("stream_pingpong16", bench_stream_pingpong16, 32_000, "64 B round trips"),
        Scenario("buffered_pingpong16", bench_buffered_pingpong16, 32_000, "64 B round trips"),
        Scenario("streams_pingpong16", bench_streams_pingpong16, 32_000, "64 B round trips"),
        Scenario(
            "stream_100k_pingpong4", bench_stream_100k_pingpong4, 4_000, "100 KiB round trips"
        ),
        Scenario(
            "buffered_100k_pingpong4", bench_buffered_100k_pingpong4, 4_000, "100 KiB round trips"
        ),
        Scenario(
            "streams_100k_pingpong4", bench_streams_100k_pingpong4, 4_000, "100 KiB round trips"
        ),
        Scenario("http_httptools16", bench_http_httptools16, 32_000, "HTTP requests"),
        Scenario("http_aiohttp16", bench_http_aiohttp16, 10_000, "HTTP requests"),
        Scenario("tls_pingpong16", bench_tls_pingpong16, 16_000, "1 KiB TLS round trips"),
        Scenario("udp_pingpong", bench_udp_pingpong, 20_000, "64 B round trips"),
        Scenario("udp_pingpong16", bench_udp_pingpong16, 32_000, "64 B round trips"),
        Scenario("udp_pingpong_1k", bench_udp_pingpong_1k, 20_000, "1 KiB round trips"),
        Scenario("udp_pingpong16_1k", bench_udp_pingpong16_1k, 32_000, "1 KiB round trips"),
        Scenario("udp_flood", bench_udp_flood, 300_000, "datagrams received"),
    )
}


def run_once(
    loop_name: str, scen: Scenario, n: int, cpu: list | None = None
) -> tuple[int, float, dict | None]:
    """One repetition on a fresh loop; returns (ops, seconds, engine counters per op).

    The counters (uringloop only) cover the whole run_until_complete, set-up included.
    ``cpu``, when given, receives (CPU seconds, of which in the kernel) of this
    process over the same span: the first from CLOCK_PROCESS_CPUTIME_ID (exact),
    the kernel share from os.times() (tick-counted).
    """
    loop = new_loop(loop_name)
    stats = getattr(loop, "engine_stats", None)
    try:
        gc.collect()
        before = stats() if stats else None
        c0, t0 = time.process_time(), os.times()
        ops, elapsed = loop.run_until_complete(scen.fn(loop, n))
        c1, t1 = time.process_time(), os.times()
        after = stats() if stats else None
    finally:
        loop.close()
    if cpu is not None:
        cpu[:] = [c1 - c0, t1.system - t0.system]
    if elapsed <= 0:
        raise BenchError(f"{scen.name}: non-positive elapsed time {elapsed}")
    per_op = None
    if before is not None and after is not None:
        per_op = {k: (after[k] - before[k]) / ops for k in ENGINE_COUNTERS if k in after}
    return ops, elapsed, per_op


# --------------------------------------------------------------------------------------
# Profile mode
# --------------------------------------------------------------------------------------


def profile(loop_name: str, scen: Scenario, n: int, top: int) -> str:
    """cProfile one run; the functions of uringloop/*.py by own time, with per-call cost."""
    loop = new_loop(loop_name)
    prof = cProfile.Profile()
    try:
        gc.collect()
        prof.enable()
        ops, elapsed = loop.run_until_complete(scen.fn(loop, n))
        prof.disable()
    finally:
        loop.close()
    st = pstats.Stats(prof)
    pkg = os.path.join(ROOT, "uringloop") + os.sep
    rows = []
    total_tt = 0.0
    for (path, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():
        total_tt += tt
        if path.startswith(pkg):
            rows.append((tt, nc, ct, f"{os.path.relpath(path, ROOT)}:{line} {func}"))
    rows.sort(reverse=True)
    out = [
        f"\n### cProfile: {scen.name} on {LABELS[loop_name]} ({ops} ops, {elapsed:.3f} s "
        f"under the profiler, {total_tt:.3f} s of own time profiled)\n",
        "cProfile counts a coroutine (async def) once per start or resumption, so an awaited "
        "coroutine that suspends once shows 2 calls per invocation.\n",
        "| function (uringloop/*.py) | calls | calls/op | own s | own µs/call | cum µs/call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tt, nc, ct, name in rows[:top]:
        out.append(
            f"| {name} | {nc} | {nc / ops:.2f} | {tt:.3f} | {tt / nc * 1e6:.2f} "
            f"| {ct / nc * 1e6:.2f} |"
        )
    if not rows:
        out.append("| (no uringloop function was called) | | | | | |")
    # the heaviest functions anywhere, to see what the uringloop ones sit under
    others = sorted(
        (
            (tt, nc, ct, f"{os.path.basename(p)}:{ln} {fn}")
            for (p, ln, fn), (_c, nc, tt, ct, _r) in st.stats.items()
        ),
        reverse=True,
    )[:top]
    out.append("\nall functions by own time:\n")
    out.append("| function | calls | calls/op | own s | own µs/call | cum µs/call |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for tt, nc, ct, name in others:
        out.append(
            f"| {name} | {nc} | {nc / ops:.2f} | {tt:.3f} | {tt / nc * 1e6:.2f} "
            f"| {ct / nc * 1e6:.2f} |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def print_report(
    args, loops, counts, rates, counters, skipped, notes, wall, cpus=None, floods=None,
    flood_lines=(),
) -> None:
    ref = "uvloop" if "uvloop" in loops else "stock"
    ratio_of = [
        x for x in ("io_uring", "epoll", "rloop", "rsloop", "stock") if x in loops and x != ref
    ]
    out = ["## uringloop event-loop benchmark\n"]
    argv = getattr(sys, "orig_argv", [sys.executable, *sys.argv])
    out.append(
        f"kernel {platform.release()} | glibc {platform.libc_ver()[1]} | "
        f"Python {platform.python_version()} "
        f"({platform.python_implementation()}) | {os.cpu_count()} CPUs | "
        f"command: `{shlex.join(argv)}`"
    )
    versions = [f"uringloop {uringloop.__version__}"]
    for name, mod in peers.items():
        versions.append(f"{name} {getattr(mod, '__version__', '?')}")
    out.append(
        f"\n{', '.join(versions)} | median ops/s of {args.repeat} repetitions, loops "
        f"interleaved | whole run {wall:.1f} s\n"
    )
    head = ["scenario", "ops/rep"] + [f"{LABELS[x]} ops/s" for x in loops]
    head += [f"{LABELS[x]} / {LABELS[ref]}" for x in ratio_of]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|" + "---:|" * (len(head) - 1))
    for name in args.scenarios:
        med = {}
        cells = [name, str(counts.get(name, "—"))]
        for x in loops:
            rs = rates.get((name, x))
            if (name, x) in skipped:
                cells.append(skipped[(name, x)])
            elif rs:
                med[x] = statistics.median(rs)
                cells.append(_fmt_rate(med[x]))
            else:
                cells.append("—")
        for x in ratio_of:
            cells.append(f"{med[x] / med[ref]:.2f}x" if x in med and ref in med else "—")
        out.append("| " + " | ".join(cells) + " |")

    out.append("\n### spread (min–max ops/s over the repetitions)\n")
    out.append("| scenario | unit | " + " | ".join(LABELS[x] for x in loops) + " |")
    out.append("|---|---|" + "---:|" * len(loops))
    for name in args.scenarios:
        cells = [name, SCENARIOS[name].unit]
        for x in loops:
            rs = rates.get((name, x))
            cells.append(f"{_fmt_rate(min(rs))}–{_fmt_rate(max(rs))}" if rs else "—")
        out.append("| " + " | ".join(cells) + " |")
    if cpus:
        out.append("\n### CPU time per op (median over the repetitions)\n")
        out.append(
            "this process's CPU time (user + kernel) per op over the measured run, set-up "
            "included, and the kernel's share of it: what the loop costs the machine, "
            "unlike ops/s not raised by waiting for a busy CPU (both ends of the "
            "ping-pongs are in this process; the flood's sender is not, and the flood's "
            "figure is over its measured span only, first to N-th datagram)\n"
        )
        head = ["scenario"] + [f"{LABELS[x]} µs/op (kernel %)" for x in loops]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|" + "---:|" * len(loops))
        for name in args.scenarios:
            cells = [name]
            for x in loops:
                cs = cpus.get((name, x))
                if cs:
                    us = statistics.median(c[0] for c in cs) * 1e6
                    share = statistics.median(c[1] for c in cs) * 100
                    cells.append(f"{us:.2f} ({share:.0f} %)")
                else:
                    cells.append("—")
            out.append("| " + " | ".join(cells) + " |")
    engines = [x for x in loops if any((name, x) in counters for name in args.scenarios)]
    if engines:
        out.append("\n### uringloop engine counters per op (median over the repetitions)\n")
        out.append(
            "kernel entries (`io_uring_enter`, or `epoll_wait` on epoll), operations "
            "submitted and completion records, from `loop.engine_stats()`\n"
        )
        head = ["scenario"]
        for x in engines:
            head += [f"{LABELS[x]} {k}/op" for k in ENGINE_COUNTERS]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|" + "---:|" * (len(head) - 1))
        for name in args.scenarios:
            cells = [name]
            for x in engines:
                cs = counters.get((name, x))
                for k in ENGINE_COUNTERS:
                    vals = [c[k] for c in cs or () if k in c]
                    cells.append(f"{statistics.median(vals):.3f}" if vals else "—")
            out.append("| " + " | ".join(cells) + " |")
    if floods:
        out.append("\n### udp_flood: receiver busy, datagrams dropped of those sent\n")
        out.append(
            "medians over the repetitions. Over the measured span (first to N-th "
            "datagram): the receiving process's CPU time against the wall time (100 % "
            "on an idle machine is a receiver that never waited for the sender, so the "
            "rate is its capacity; on a loaded one it also loses the CPU to others) and "
            "its voluntary context switches, each a wait for datagrams, per 1,000 "
            "datagrams (load-independent: 0 is a receiver that never waited). Over the "
            "sender's whole run: the share of the datagrams sent that the kernel dropped "
            "for the endpoint (/proc/net/udp: its queue was full, the receiver being "
            "slower than the sender) and the sender's rate\n"
        )
        out.append(
            "| loop | receiver busy | waits / 1,000 datagrams | dropped / sent "
            "| sender datagrams/s |"
        )
        out.append("|---|---:|---:|---:|---:|")
        for x in loops:
            fs = floods.get(x)
            if fs:
                med = {k: statistics.median(f[k] for f in fs) for k in fs[0]}
                out.append(
                    f"| {LABELS[x]} | {med['busy']:.0%} | {med['waits']:.2f} | "
                    f"{med['dropped']:.1%} | {_fmt_rate(med['sender'])} |"
                )
    out.extend(flood_lines)
    for note in notes:
        out.append(f"\n- note: {note}")
    print("\n".join(out))


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="repetitions; median reported (5)")
    p.add_argument("--quick", action="store_true", help="small counts, a smoke run (< 10 s)")
    p.add_argument(
        "--scenario",
        dest="scenarios",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    p.add_argument(
        "--loop",
        dest="loops",
        action="append",
        choices=LOOPS,
        help="run only this loop (repeatable)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every scenario's op count (1.0); counts are still cut to fit the time",
    )
    p.add_argument(
        "--profile",
        metavar="LOOP",
        choices=LOOPS,
        help="instead of timing: run each selected scenario once on LOOP under cProfile "
        "and list the hottest uringloop/*.py functions",
    )
    p.add_argument("--top", type=int, default=12, help="rows per --profile table (12)")
    p.add_argument(
        "--rsloop-env",
        default="auto",
        metavar="auto|off|DIR",
        help="when rsloop is among the loops and does not import as it is: rerun this whole "
        "benchmark (every loop) under the glibc of benchmarks/.rsloop-env (auto, when built), "
        "of DIR, or never (off); benchmarks/rsloop_env.py builds it (decision 801)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time repetitions by the wall clock (default) or by the thread's CPU time "
        "(less noisy on a loaded machine; only for scenarios that never wait in the kernel)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 2)
    args.scenarios = args.scenarios or list(SCENARIOS)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.scale <= 0:
        p.error("--scale must be > 0")
    return args


def _available_loops(wanted) -> tuple[list[str], dict[str, str]]:
    loops, why = [], {}
    for name in wanted:
        if name in PEERS and name not in peers:
            continue
        try:
            new_loop(name).close()
        except (OSError, RuntimeError) as exc:
            why[name] = f"unavailable: {exc}"
            continue
        loops.append(name)
    return loops, why


# set in the restarted process (decision 801): the environment's folder
RSLOOP_ENV_VAR = "LOOP_BENCH_RSLOOP_ENV"


def rsloop_env_restart(args, argv):
    """The command and environment that rerun this benchmark, every loop in
    it, under the rsloop environment's glibc (decision 801), or None: rsloop
    is not wanted, imports as it is, the environment was not built, or this
    is the rerun."""
    if os.environ.get(RSLOOP_ENV_VAR):
        return None
    sys.path.insert(0, HERE)
    try:
        import rsloop_env
    finally:
        sys.path.remove(HERE)
    wanted = "rsloop" in (args.loops or LOOPS) or args.profile == "rsloop"
    man = rsloop_env.choose(args.rsloop_env, wanted)
    if man is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (rsloop_env.site_dir(man["dir"]), env.get("PYTHONPATH")) if p
    )
    env[RSLOOP_ENV_VAR] = rsloop_env.describe(man)
    cmd = rsloop_env.command_prefix(man["dir"]) + [os.path.abspath(__file__), *argv]
    return cmd, env


def main(argv=None) -> int:
    global time
    args = parse_args(argv)
    if argv is None:  # from the command line: a test's main([...]) never restarts
        restart = rsloop_env_restart(args, sys.argv[1:])
        if restart is not None:
            _log(f"restarting under the rsloop environment: {shlex.join(restart[0])}")
            sys.stdout.flush()
            os.execve(restart[0][0], restart[0], restart[1])
    notes = _import_loops()
    if os.environ.get(RSLOOP_ENV_VAR):
        notes.append(
            f"every loop ran in one process on {os.environ[RSLOOP_ENV_VAR]}, not on the "
            "host's glibc; importing rsloop replaces asyncio.open_connection, "
            "start_server, create_subprocess_exec/shell and set_event_loop with wrappers "
            "that pass other loops on to the originals (decision 801)"
        )
    if args.clock == "cpu":
        time = _CpuClock()
        notes.append(
            "--clock cpu: ops per second of the thread's CPU time, not of the wall clock "
            "(waits in the kernel are not counted)"
        )
    if os.environ.get("PYTHONASYNCIODEBUG"):
        notes.append("PYTHONASYNCIODEBUG is set: asyncio debug mode slows every loop")
    if args.profile:
        if args.profile in PEERS and args.profile not in peers:
            sys.exit(f"{args.profile} is not installed")
        for name in args.scenarios:
            scen = SCENARIOS[name]
            n = max(1, int(scen.n * args.scale / (20 if args.quick else 1)))
            _log(f"profiling {name} on {args.profile} ({n} ops)")
            print(profile(args.profile, scen, n, args.top))
        return 0

    loops, unavailable = _available_loops([x for x in LOOPS if x in (args.loops or LOOPS)])
    for name, why in unavailable.items():
        notes.append(f"{LABELS[name]}: {why}")
    if not loops:
        sys.exit("no loop can run here")
    target = QUICK_TARGET_S if args.quick else TARGET_S
    counts: dict[str, int] = {}
    rates: dict[tuple[str, str], list[float]] = {}
    counters: dict[tuple[str, str], list[dict]] = {}
    cpus: dict[tuple[str, str], list[tuple[float, float]]] = {}
    skipped: dict[tuple[str, str], str] = {}
    floods: dict[str, list[dict]] = {}  # loop -> flood_run of each udp_flood repetition
    flood_lines: list[str] = []
    failed = False
    t_start = time.monotonic()
    for name in args.scenarios:
        scen = SCENARIOS[name]
        # warm-up, unmeasured: imports, allocator, caches; its rate sizes the count so
        # that the slowest loop takes about `target` per repetition
        warm_n = max(BATCH, int(scen.n * args.scale) // 50)
        slowest = float("inf")
        for x in loops:
            try:
                ops, el, _ = run_once(x, scen, warm_n)
                flood_run.clear()
                slowest = min(slowest, ops / el)
            except NotImplementedError as exc:  # rloop: connect_accepted_socket, ...
                skipped[(name, x)] = "cannot (see notes)"
                notes.append(f"{name} on {LABELS[x]}: the loop cannot run it ({exc!r})")
            except RuntimeError as exc:
                # rsloop raises its own errors as RuntimeError (its TLS: 'No such file
                # or directory (os error 2)'): a peer's limit, not a failure of the run
                skipped[(name, x)] = "cannot (see notes)" if x in PEERS else "FAILED (see notes)"
                notes.append(f"{name} on {LABELS[x]}: {exc!r}")
                failed = failed or x not in PEERS
            except (BenchError, OSError) as exc:
                skipped[(name, x)] = "FAILED (see notes)"
                notes.append(f"{name} on {LABELS[x]}: {exc!r}")
                failed = True
        n = int(scen.n * args.scale)
        if slowest != float("inf"):
            n = min(n, max(warm_n, int(slowest * target)))
        counts[name] = n
        for rep in range(args.repeat):
            k = rep % len(loops)
            for x in loops[k:] + loops[:k]:  # interleaved, order rotated per repetition
                if (name, x) in skipped:
                    continue
                _log(f"{name} {x} repetition {rep + 1}/{args.repeat} ({n} ops)")
                cpu: list = []
                try:
                    ops, el, per_op = run_once(x, scen, n, cpu)
                except (BenchError, OSError, RuntimeError) as exc:
                    skipped[(name, x)] = "FAILED (see notes)"
                    notes.append(f"{name} on {LABELS[x]}: {exc!r}")
                    failed = True
                    continue
                counts[name] = ops
                rates.setdefault((name, x), []).append(ops / el)
                if flood_run:
                    cpu[:] = flood_run.pop("cpu")  # the measured span's, see bench_udp_flood
                    floods.setdefault(x, []).append(dict(flood_run))
                    flood_run.clear()
                cpus.setdefault((name, x), []).append((cpu[0] / ops, cpu[1] / max(cpu[0], 1e-9)))
                if per_op is not None:
                    counters.setdefault((name, x), []).append(per_op)
    if "udp_flood" in args.scenarios:
        try:
            flood_lines = flood_sender_check()
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            notes.append(f"udp_flood's sender check: {exc!r}")
            failed = True
    wall = time.monotonic() - t_start
    _log(f"done in {wall:.1f} s")
    print_report(args, loops, counts, rates, counters, skipped, notes, wall, cpus,
                 floods, flood_lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
