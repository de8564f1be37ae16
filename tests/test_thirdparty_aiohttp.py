"""What aiohttp's own test suite found different on uringloop (decisions 443-448).

aiohttp's suite (``tools/thirdparty_suite.py --suite aiohttp`` runs it three
ways: stock asyncio, uringloop io_uring, uringloop epoll) is not run here;
each defect it found is kept as its minimal scenario, run on every kind and
compared with the stock ``SelectorEventLoop`` (``on_stock``). Each test failed
on uringloop before its decision's fix.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from transport_helpers import on_stock, run_in, tloop, tls, wait_for

assert tloop and tls  # fixtures, imported for the tests below

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is a test dependency (.[test])")
web = pytest.importorskip("aiohttp.web")


async def _read_to_eof(loop, sock) -> bytes:
    got = b""
    while chunk := await wait_for(loop.sock_recv(sock, 65536)):
        got += chunk
    return got


# --------------------------------------------------------------------------
# decision 444: write() then abort() in one callback sends what the kernel takes
# (aiohttp: test_web_websocket_functional.py::test_stalled_parser_outlives_connection_lost)


class _AbortOnData(asyncio.Protocol):
    """Answers the first bytes it gets with a reply, then aborts."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(b"reply to " + data)
        self.transport.abort()


async def _write_then_abort(loop, where):
    """A transport writes two chunks and aborts, from a task or from
    data_received; what the peer reads before EOF."""
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        if where == "task":
            tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            await asyncio.sleep(0)
            tr.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            tr.write(memoryview(b"and a frame"))
            tr.abort()
        else:
            tr, _ = await loop.create_connection(_AbortOnData, sock=a)
            await loop.sock_sendall(b, b"ping")
        return await _read_to_eof(loop, b), tr.is_closing()
    finally:
        b.close()


@pytest.mark.parametrize("where", ["task", "data_received"])
def test_write_then_abort_sends_what_was_written(tloop, where):
    want = on_stock(lambda lp: run_in(lp, _write_then_abort(lp, where)))
    assert want[0]  # the stock loop's write() sent them before the abort
    assert run_in(tloop, _write_then_abort(tloop, where)) == want


class _TLSAbortOnMade(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(b"hello over TLS")
        transport.abort()


async def _tls_write_then_abort(loop, tls):
    srv = await loop.create_server(_TLSAbortOnMade, "127.0.0.1", 0, ssl=tls.server_context())
    port = srv.sockets[0].getsockname()[1]
    try:
        r, w = await wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.client_context(), server_hostname="localhost"
            )
        )
        try:
            return await wait_for(r.read(100))
        finally:
            w.close()
    finally:
        srv.close()


def test_tls_write_then_abort_sends_what_was_written(tloop, tls):
    want = on_stock(lambda lp: run_in(lp, _tls_write_then_abort(lp, tls)))
    assert want == b"hello over TLS"
    assert run_in(tloop, _tls_write_then_abort(tloop, tls)) == want


async def _ws_prepare_then_abort(loop):
    """aiohttp's case: a websocket handler prepares (the 101 is written) and
    the transport is aborted at once; the client's ws_connect sees the 101."""

    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        request.transport.abort()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            try:
                ws = await wait_for(session.ws_connect(f"http://127.0.0.1:{port}/"))
            except aiohttp.ClientError as exc:
                return type(exc).__name__
            msg = await wait_for(ws.receive())
            await ws.close()
            return "connected", msg.type.name
    finally:
        await runner.cleanup()


def test_aiohttp_websocket_prepare_then_abort(tloop):
    want = on_stock(lambda lp: run_in(lp, _ws_prepare_then_abort(lp)))
    assert want[0] == "connected"
    assert run_in(tloop, _ws_prepare_then_abort(tloop)) == want
