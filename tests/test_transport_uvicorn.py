"""uvicorn serving an ASGI app on uringloop.

Two ways a user runs it, both tested:

* in process: ``uvicorn.Server(config).serve(sockets=[...])`` awaited on a loop
  the caller made (here io_uring, epoll and, for comparison, stock);
* the command line: ``uvicorn --loop uringloop:new_event_loop app:app``
  (uvicorn >= 0.36 takes ``module:callable`` as the loop factory), in a
  subprocess; the app itself reports that the running loop is a uringloop Loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from transport_helpers import fd_count, run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is a test dependency (.[test])")

import uringloop  # noqa: E402


async def asgi_app(scope, receive, send):
    """A tiny ASGI app: reports its loop and echoes the request body's length."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    size = 0
    while True:
        msg = await receive()
        size += len(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    lp = asyncio.get_running_loop()
    body = json.dumps(
        {
            "loop": f"{type(lp).__module__}.{type(lp).__qualname__}",
            "backend": getattr(lp, "backend", None),
            "path": scope["path"],
            "received": size,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})




async def _request(port: int, path: str, body: bytes = b"") -> dict:
    """One HTTP/1.1 request over asyncio streams (on the loop under test)."""
    reader, writer = await wait_for(asyncio.open_connection("127.0.0.1", port))
    method = "POST" if body else "GET"
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )
    raw = await wait_for(reader.read())
    writer.close()
    await wait_for(writer.wait_closed())
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(payload)


@pytest.mark.parametrize("http", ["h11", "httptools"])  # both a test dependency
def test_uvicorn_in_process(tloop, http):
    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            asgi_app, loop="none", http=http, lifespan="on", log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            for _ in range(1000):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.01)
            assert server.started
            got = await _request(port, "/a")
            assert got["loop"] == f"{type(tloop).__module__}.{type(tloop).__qualname__}"
            assert got["backend"] == getattr(tloop, "backend", None)
            got = await _request(port, "/upload", os.urandom(1 << 20))
            assert got["received"] == 1 << 20
            results = await wait_for(
                asyncio.gather(*(_request(port, f"/c{i}") for i in range(30)))
            )
            assert [r["path"] for r in results] == [f"/c{i}" for i in range(30)]
        finally:
            server.should_exit = True
            await wait_for(task, 15)
            sock.close()

    run_in(tloop, main(), 60)


def _env_for_subprocess() -> dict:
    """The child imports the same uringloop as this process (in-place build or installed)."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(uringloop.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("backend", ["io_uring", "epoll", "stock"])
def test_uvicorn_command_line_loop_factory(tmp_path, backend):
    """``python -m uvicorn --loop uringloop:new_event_loop``: the app runs on uringloop
    (and, to prove the harness, ``--loop asyncio`` runs it on the stock loop)."""
    if backend == "io_uring" and uringloop.backend_info()["backend"] != "io_uring":
        pytest.skip(f"io_uring unavailable: {uringloop.backend_info().get('reason')}")
    (tmp_path / "asgi_mod.py").write_text(
        textwrap.dedent(
            """
            import asyncio, json

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                lp = asyncio.get_running_loop()
                body = json.dumps({
                    "loop": f"{type(lp).__module__}.{type(lp).__qualname__}",
                    "backend": getattr(lp, "backend", None),
                }).encode()
                headers = [(b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            """
        )
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    env = _env_for_subprocess()
    if backend == "stock":
        factory, expected = "asyncio", {"loop": "asyncio.unix_events._UnixSelectorEventLoop"}
    else:
        env["URINGLOOP_BACKEND"] = backend
        factory, expected = "uringloop:new_event_loop", {"loop": "uringloop.loop.Loop"}
    expected["backend"] = None if backend == "stock" else backend
    cmd = [
        sys.executable, "-m", "uvicorn", "--loop", factory,
        "--fd", str(sock.fileno()), "--app-dir", str(tmp_path), "--lifespan", "off",
        "--log-level", "warning", "asgi_mod:app",
    ]  # fmt: skip
    before = fd_count()
    proc = subprocess.Popen(
        cmd, env=env, pass_fds=[sock.fileno()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    sock.close()  # the child holds its own copy
    got = error = None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:
            got = json.loads(r.read())
    except OSError as exc:
        error = exc
    finally:
        proc.terminate()  # SIGTERM: uvicorn shuts down gracefully
        out, _ = proc.communicate(timeout=20)
    assert error is None, f"{error!r}; uvicorn's output:\n{out.decode(errors='replace')}"
    assert got == expected, out
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal it
    # caught (newer versions), so -SIGTERM is a clean exit too; a crash is not
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert b"Traceback" not in out, out
    assert fd_count() <= before
