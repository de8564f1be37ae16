"""The examples run as a user runs them: a subprocess, exit code 0, the output
they promise. Each on io_uring, epoll (URINGLOOP_BACKEND) and, with --stock, the
stock asyncio loop, which proves the example itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import uringloop

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KINDS = ["io_uring", "epoll", "stock"]


def run_example(kind: str, script: str, *args: str, timeout: float = 90) -> str:
    """Run examples/<script>; return its output (stdout + stderr) after exit code 0."""
    env = dict(os.environ)
    # the child imports the same uringloop as this process (in-place build or installed)
    pkg_parent = os.path.dirname(os.path.dirname(uringloop.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)  # the timing lines are the examples' own business
    if kind == "stock":
        args = (*args, "--stock")
    else:
        if kind == "io_uring" and uringloop.backend_info()["backend"] != "io_uring":
            pytest.skip(f"io_uring unavailable: {uringloop.backend_info().get('reason')}")
        env["URINGLOOP_BACKEND"] = kind
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def loop_line(kind: str) -> str:
    return "loop: stock asyncio" if kind == "stock" else f"loop: uringloop, backend {kind}"


@pytest.mark.parametrize("kind", KINDS)
def test_aiohttp_hello(kind):
    pytest.importorskip("aiohttp", reason="the demo needs aiohttp (a test dependency)")
    out = run_example(kind, "aiohttp_hello.py")
    assert loop_line(kind) in out, out
    assert "GET / -> 200 Hello from aiohttp" in out, out
    assert "GET /hello/world -> 200 Hello, world!" in out, out
    expected_loop = "asyncio.unix_events._UnixSelectorEventLoop" if kind == "stock" else (
        "uringloop.loop.Loop"
    )
    assert f'"loop": "{expected_loop}"' in out, out
    assert "POST /echo -> 200 (4000 bytes echoed)" in out, out
    assert "200 concurrent GETs in " in out, out
    assert out.rstrip().endswith("ok"), out


@pytest.mark.parametrize("mode", ["protocol", "buffered", "streams"])
@pytest.mark.parametrize("kind", KINDS)
def test_echo_server_selftest(kind, mode):
    out = run_example(kind, "echo_server.py", mode, "--selftest")
    assert loop_line(kind) in out and f"mode: {mode}" in out, out
    assert "8 clients echoed 11,346,528 bytes, every byte checked" in out, out
    assert out.rstrip().endswith("ok"), out


@pytest.mark.parametrize("kind", KINDS)
def test_tls_echo(kind):
    pytest.importorskip("trustme", reason="the example makes certificates with trustme")
    out = run_example(kind, "tls_echo.py")
    assert loop_line(kind) in out, out
    assert "TLS echo: 4 clients, 4,660,244 bytes checked" in out, out
    if sys.version_info >= (3, 11):
        assert "STARTTLS: plain connection upgraded on both sides" in out, out
    assert out.rstrip().endswith("ok"), out
