"""CPython's own test.test_asyncio, run against uringloop on each backend.

Each (module, backend) runs in a fresh interpreter (tests/cpython/runner.py):
the mixin modules bind their loop-agnostic mixin to uringloop.Loop; the policy
modules run whole with uringloop's policy installed. Zero failures are allowed;
the tests we exclude are listed, with reasons, in tests/cpython/exclusions.py.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import require_uring

import uringloop

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "cpython", "runner.py")

MIXIN_MODULES = [
    "test_sock_lowlevel",
    "test_events",
    "test_server",
    "test_sendfile",
    "test_sslproto",
    "test_buffered_proto",
    "test_subprocess",
    "test_unix_events",  # its pipe transport tests only (runner.py PIPE_CLASSES)
]
POLICY_MODULES = [
    "test_tasks",
    "test_futures2",
    "test_locks",
    "test_queues",
    "test_timeouts",
    "test_taskgroups",
    "test_waitfor",
    "test_threads",
    "test_context",
    "test_pep492",
    "test_streams",
    "test_ssl",
]
# Modules none of whose tests create a loop through the policy, so running them
# only shows that nothing in them breaks with our policy installed:
# test_pep492 builds asyncio.BaseEventLoop() with mocks itself; before 3.11,
# test_queues runs every test on test_utils.TestLoop (fake time).
NO_LOOP_EXPECTED = {"test_pep492": (99,), "test_queues": (3, 11)}
# Added in later Pythons than our oldest.
SINCE = {"test_timeouts": (3, 11), "test_taskgroups": (3, 11), "test_ssl": (3, 11)}


def _have(module: str) -> bool:
    try:
        __import__(f"test.test_asyncio.{module}")
    except ImportError:
        return False
    return True


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
@pytest.mark.parametrize("module", MIXIN_MODULES + POLICY_MODULES)
def test_cpython_asyncio(module, backend, tmp_path):
    if backend == "io_uring":
        require_uring()  # skips with the reason (fails under URINGLOOP_REQUIRE_IO_URING=1)
    if sys.version_info < SINCE.get(module, (0,)):
        pytest.skip(f"test.test_asyncio.{module} does not exist before Python {SINCE[module]}")
    if not _have(module):
        pytest.skip(f"this Python has no test.test_asyncio.{module} (test package not installed)")
    env = dict(os.environ, URINGLOOP_BACKEND=backend)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(uringloop.__file__)))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, RUNNER, module],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"runner printed nothing (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    summary = json.loads(lines[-1])
    assert summary["backend"] == backend
    assert summary["ran"] > 0
    assert not summary["failed"], (
        f"{len(summary['failed'])} failures on {backend}:\n"
        + "\n".join(summary["failed"])
        + "\n\n"
        + proc.stderr[-6000:]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    if sys.version_info >= NO_LOOP_EXPECTED.get(module, (0,)):
        assert summary["loops_made"] > 0, "no uringloop loop was used by these tests"
