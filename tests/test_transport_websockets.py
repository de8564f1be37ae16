"""The ``websockets`` library (its asyncio implementation) on each loop, alone
and behind uvicorn: a second real library on the loop's transports, with TLS."""

from __future__ import annotations

import asyncio
import socket

import pytest
from transport_helpers import pattern, run_in, tloop, tls, wait_for

assert tloop and tls  # fixtures, imported for the tests below

websockets = pytest.importorskip("websockets", reason="websockets is a test dependency")
ws_server = pytest.importorskip(
    "websockets.asyncio.server", reason="websockets >= 13 has the asyncio implementation"
)
ws_client = pytest.importorskip("websockets.asyncio.client")


async def _echo(ws):
    async for msg in ws:
        if msg == "close":
            await ws.close(code=1000, reason="asked to")
            return
        await ws.send(msg)


async def _talk(uri: str, **kw) -> None:
    async with ws_client.connect(uri, open_timeout=10, max_size=None, **kw) as ws:
        for text in ("hi", "é" * 1000):
            await ws.send(text)
            assert await wait_for(ws.recv()) == text
        blob = pattern(2 << 20, 50)
        await ws.send(blob)
        assert await wait_for(ws.recv()) == blob
        # many small messages in flight at once
        for i in range(500):
            await ws.send(f"m{i}")
        for i in range(500):
            assert await wait_for(ws.recv()) == f"m{i}"
        pong = await ws.ping()
        await wait_for(pong)
        await ws.send("close")
        with pytest.raises(websockets.ConnectionClosedOK):
            await wait_for(ws.recv())
        assert ws.close_code == 1000 and ws.close_reason == "asked to"


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_websockets_server_and_client(tloop, tls, secure):
    async def main():
        kw_server = {"ssl": tls.server_context()} if secure else {}
        async with ws_server.serve(_echo, "127.0.0.1", 0, max_size=None, **kw_server) as server:
            port = server.sockets[0].getsockname()[1]
            if secure:
                await _talk(f"wss://localhost:{port}", ssl=tls.client_context())
            else:
                await _talk(f"ws://127.0.0.1:{port}")

    run_in(tloop, main(), 60)


def test_uvicorn_websocket_app(tloop):
    """An ASGI websocket app behind uvicorn, a websockets client, one loop."""
    uvicorn = pytest.importorskip("uvicorn")

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        lp = asyncio.get_running_loop()
        await send({"type": "websocket.send", "text": type(lp).__qualname__})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": msg["bytes"][::-1]})
            else:
                await send({"type": "websocket.send", "text": msg["text"].upper()})

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, ws="websockets-sansio", lifespan="off", log_level="warning", ws_max_size=1 << 24
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            for _ in range(1000):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.01)
            assert server.started
            async with ws_client.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
                assert await wait_for(ws.recv()) == type(tloop).__qualname__
                await ws.send("hello")
                assert await wait_for(ws.recv()) == "HELLO"
                blob = pattern(1 << 20, 51)
                await ws.send(blob)
                assert await wait_for(ws.recv()) == blob[::-1]
        finally:
            server.should_exit = True
            await wait_for(task, 15)
            sock.close()

    run_in(tloop, main(), 60)
