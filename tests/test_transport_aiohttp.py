"""A real aiohttp server and client on one loop: io_uring, epoll and stock.

Routes, streamed request and response bodies, chunked encoding, websockets,
and all of it again over TLS with certificates made by trustme. The server and
the client share the loop under test, so both ends run on its transports.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from transport_helpers import pattern, run_in, tloop, tls, wait_for

assert tloop and tls  # fixtures, imported for the tests below

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is a test dependency (.[test])")
web = pytest.importorskip("aiohttp.web")

MiB = 1 << 20


def make_app() -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/")
    async def index(request):
        return web.Response(text="hello")

    @routes.get("/name/{name}")
    async def name(request):
        return web.json_response({"name": request.match_info["name"], "q": request.query.get("q")})

    @routes.get("/loop")
    async def which_loop(request):
        lp = asyncio.get_running_loop()
        return web.Response(text=f"{type(lp).__module__}.{type(lp).__qualname__}")

    @routes.get("/tls")
    async def tls_info(request):
        ssl_object = request.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return web.json_response({"ssl": False})
        cipher = request.transport.get_extra_info("cipher")
        return web.json_response({"ssl": True, "cipher": cipher[0], "version": cipher[1]})

    @routes.post("/sha256")
    async def sha256(request):
        # the request body is read as a stream, chunk by chunk
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_chunked(65536):
            h.update(chunk)
            n += len(chunk)
        te = request.headers.get("Transfer-Encoding")
        return web.json_response({"sha256": h.hexdigest(), "length": n, "chunked": te})

    @routes.get("/stream/{size}")
    async def stream(request):
        size = int(request.match_info["size"])
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        data = pattern(size, 21)
        for off in range(0, size, 100_000):
            await resp.write(data[off : off + 100_000])
        await resp.write_eof()
        return resp

    @routes.get("/ws")
    async def ws_echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close":
                    await ws.close()
                else:
                    await ws.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.add_routes(routes)
    return app


class Served:
    """An aiohttp AppRunner on 127.0.0.1, an ephemeral port."""

    def __init__(self, ssl_context=None):
        self.ssl_context = ssl_context

    async def __aenter__(self):
        self.runner = web.AppRunner(make_app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = self.runner.addresses[0][1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://localhost:{port}" if self.ssl_context else f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc):
        await wait_for(self.runner.cleanup())


async def _body(size: int, step: int):
    data = pattern(size, 22)
    for off in range(0, size, step):
        yield data[off : off + step]
        await asyncio.sleep(0)


async def _exercise(url: str, ssl=None, tls_expected: bool = False) -> None:
    """Every scenario against one server, with one client session."""
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(ssl=ssl) if ssl is not None else aiohttp.TCPConnector()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # routes
        async with session.get(url + "/") as r:
            assert r.status == 200
            assert await r.text() == "hello"
        async with session.get(url + "/tls") as r:
            info = await r.json()
        assert info["ssl"] is tls_expected
        if tls_expected:
            assert info["cipher"] and info["version"].startswith("TLS")
        async with session.get(url + "/name/ada", params={"q": "x y"}) as r:
            assert await r.json() == {"name": "ada", "q": "x y"}
        async with session.get(url + "/missing") as r:
            assert r.status == 404
        async with session.get(url + "/loop") as r:
            expected = asyncio.get_running_loop()
            assert await r.text() == f"{type(expected).__module__}.{type(expected).__qualname__}"

        # streamed request body: an async generator -> chunked transfer encoding
        size = 3 * MiB + 11
        async with session.post(url + "/sha256", data=_body(size, 50_000)) as r:
            got = await r.json()
        assert got["chunked"] == "chunked"
        assert got["length"] == size
        assert got["sha256"] == hashlib.sha256(pattern(size, 22)).hexdigest()

        # a plain (Content-Length) body, many requests on the kept-alive connection
        for i in range(20):
            body = pattern(1000 * i, i)
            async with session.post(url + "/sha256", data=body) as r:
                got = await r.json()
            assert got == {
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
                "chunked": None,
            }

        # streamed, chunked response body
        size = 5 * MiB + 3
        async with session.get(url + f"/stream/{size}") as r:
            assert r.headers["Transfer-Encoding"] == "chunked"
            # the body is not read yet, so the connection is still the response's
            ssl_object = r.connection.transport.get_extra_info("ssl_object")
            assert (ssl_object is not None) is tls_expected
            if tls_expected:
                assert ssl_object.server_hostname == "localhost"
            received = bytearray()
            async for chunk in r.content.iter_chunked(65536):
                received += chunk
        assert received == pattern(size, 21)

        # concurrent requests
        async def fetch(i):
            async with session.get(url + f"/name/n{i}") as r:
                return (await r.json())["name"]

        names = await wait_for(asyncio.gather(*(fetch(i) for i in range(50))), 30)
        assert names == [f"n{i}" for i in range(50)]

        # websockets
        async with session.ws_connect(url.replace("http", "ws", 1) + "/ws") as ws:
            for text in ("a", "hello websockets", "x" * 70_000):
                await ws.send_str(text)
                msg = await wait_for(ws.receive())
                assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == text.upper()
            blob = pattern(300_000, 23)
            await ws.send_bytes(blob)
            msg = await wait_for(ws.receive())
            assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == blob[::-1]
            await ws.send_str("close")
            msg = await wait_for(ws.receive())
            assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.closed


def test_aiohttp_server_and_client(tloop):
    async def main():
        async with Served() as srv:
            await _exercise(srv.url)

    run_in(tloop, main(), 60)


def test_aiohttp_tls(tloop, tls):
    async def main():
        async with Served(ssl_context=tls.server_context()) as srv:
            await _exercise(srv.url, ssl=tls.client_context(), tls_expected=True)

    run_in(tloop, main(), 60)


def test_aiohttp_tls_untrusted_certificate_fails(tloop, tls):
    """A client that does not trust the test CA gets a certificate error,
    and the server goes on serving."""

    async def main():
        async with Served(ssl_context=tls.server_context()) as srv:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(srv.url + "/")
            connector = aiohttp.TCPConnector(ssl=tls.client_context())
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                async with session.get(srv.url + "/") as r:
                    assert await r.text() == "hello"

    run_in(tloop, main(), 30)


def test_aiohttp_run_app_on_a_given_loop(tloop):
    """web.run_app(app, loop=...) serves on the loop it is given (the README's way)."""
    import socket

    async def client(port, ready):
        await wait_for(ready.wait())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(f"http://127.0.0.1:{port}/loop") as r:
                text = await r.text()
        raise KeyboardInterrupt(text)  # run_app's own way to stop (as on Ctrl-C)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = asyncio.Event()

    async def on_startup(app):
        ready.set()

    app = make_app()
    app.on_startup.append(on_startup)
    task = tloop.create_task(client(port, ready))
    try:
        web.run_app(app, sock=sock, loop=tloop, print=None, handle_signals=False)
    finally:
        sock.close()
    assert task.done()
    text = str(task.exception())
    assert text == f"{type(tloop).__module__}.{type(tloop).__qualname__}"


def test_aiohttp_over_unix_socket(tloop, tmp_path):
    """aiohttp's UnixSite and UnixConnector: HTTP over a Unix socket."""
    path = str(tmp_path / "http.sock")

    async def main():
        runner = web.AppRunner(make_app())
        await runner.setup()
        try:
            await web.UnixSite(runner, path).start()
            connector = aiohttp.UnixConnector(path=path)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                async with session.get("http://unix/") as r:
                    assert await r.text() == "hello"
                size = 2 * MiB + 1
                async with session.get(f"http://unix/stream/{size}") as r:
                    assert await r.read() == pattern(size, 21)
                async with session.post("http://unix/sha256", data=_body(MiB, 30_000)) as r:
                    got = await r.json()
                assert got["length"] == MiB
                assert got["sha256"] == hashlib.sha256(pattern(MiB, 22)).hexdigest()
        finally:
            await wait_for(runner.cleanup())

    run_in(tloop, main(), 60)
