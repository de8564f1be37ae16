"""The README's pytest-asyncio recipe, run for real in a scratch project."""

import os
import subprocess
import sys
import textwrap

import pytest

import uringloop

pytest_asyncio = pytest.importorskip(
    "pytest_asyncio", reason="pytest-asyncio is a test dependency: pip install '.[test]'"
)

CONFTEST = '''
import uringloop


def pytest_asyncio_loop_factories(config, item):
    return {"uringloop": uringloop.new_event_loop}
'''

TESTS = '''
import asyncio

import pytest

import uringloop


@pytest.mark.asyncio
async def test_runs_on_uringloop():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uringloop.Loop), type(loop)
    assert loop.backend in ("io_uring", "epoll")
    a, b = __import__("socket").socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        await loop.sock_sendall(a, b"hi")
        assert await asyncio.wait_for(loop.sock_recv(b, 10), 5) == b"hi"
'''


def test_pytest_asyncio_loop_factories_hook(tmp_path):
    version = tuple(int(x) for x in pytest_asyncio.__version__.split(".")[:2])
    if version < (1, 4):
        pytest.skip(f"pytest-asyncio {pytest_asyncio.__version__} predates the loop-factory hook")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_it.py").write_text(textwrap.dedent(TESTS))
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(uringloop.__file__)))
    env = dict(os.environ, PYTHONPATH=pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
