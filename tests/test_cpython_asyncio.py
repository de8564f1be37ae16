"""CPython's own test.test_asyncio, run against uringloop on each backend.

Each (module, backend) runs in a fresh interpreter (tests/cpython/runner.py):
the mixin modules bind their loop-agnostic mixin to uringloop.Loop; the policy
modules run whole with uringloop's policy installed. Zero failures are allowed;
the tests we exclude are listed, with reasons, in tests/cpython/exclusions.py.

The runs are mostly waiting (test_tasks: about 6 s of CPU in a 35 s run, its
tests sleep on real timers), so they overlap: while a case waits for its
runner, the runners of other selected cases are started, up to AHEAD running
at once, the longest modules first (decision 300). Each case still checks only
its own runner's result, and a runner is started only for a case that is
selected and would not skip.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import require_uring, uring_unavailable_reason

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


# Runners running at once, the current case's included (decision 300). Most
# of a run is sleeping; more at once would only queue for the CPU.
AHEAD = int(os.environ.get("URINGLOOP_CPYTHON_AHEAD", "3"))
# Started first, so that the longest runs overlap the rest (the others follow
# in run order): the slowest modules, by wall time (test_tasks about 35 s).
LONGEST = ["test_tasks", "test_ssl", "test_events", "test_taskgroups", "test_sslproto",
           "test_subprocess"]
TIMEOUT = 540  # seconds for one runner, from its start


def _skip_reason(module: str) -> str | None:
    if sys.version_info < SINCE.get(module, (0,)):
        return f"test.test_asyncio.{module} does not exist before Python {SINCE[module]}"
    if not _have(module):
        return f"this Python has no test.test_asyncio.{module} (test package not installed)"
    return None


def _would_run(module: str, backend: str) -> bool:
    if backend == "io_uring" and uring_unavailable_reason() is not None:
        return False
    return _skip_reason(module) is None


class _Runners:
    """The runner subprocesses of this session, by (module, backend). ``pending``
    holds the selected cases that would run, in the order their runners start;
    while a case waits for its runner, the next ones are started whenever fewer
    than AHEAD run. Output goes to files, so a runner nobody waits for yet never
    blocks on a full pipe."""

    def __init__(self, tmp, cases):
        self.tmp = tmp
        rank = {m: i for i, m in enumerate(LONGEST)}
        order = sorted(range(len(cases)), key=lambda i: (rank.get(cases[i][0], len(rank)), i))
        self.pending = [cases[i] for i in order if _would_run(*cases[i])]
        self.procs: dict = {}

    def start(self, module: str, backend: str) -> None:
        if (module, backend) in self.procs:
            return
        if (module, backend) in self.pending:
            self.pending.remove((module, backend))
        env = dict(os.environ, URINGLOOP_BACKEND=backend)
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(uringloop.__file__)))
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        cwd = self.tmp / f"{module}-{backend}"
        cwd.mkdir()
        out = open(cwd / "stdout", "w+")  # noqa: SIM115 -- closed in finish()/close()
        err = open(cwd / "stderr", "w+")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, RUNNER, module], cwd=cwd, env=env, stdout=out, stderr=err, text=True
        )
        self.procs[module, backend] = (proc, time.monotonic(), out, err)

    def top_up(self) -> None:
        running = sum(p.poll() is None for p, _, _, _ in self.procs.values())
        while self.pending and running < AHEAD:
            self.start(*self.pending[0])
            running += 1

    def finish(self, module: str, backend: str):
        """(returncode, stdout, stderr) of that runner, killed after TIMEOUT."""
        self.start(module, backend)
        proc, started, out, err = self.procs[module, backend]
        while proc.poll() is None:
            self.top_up()
            if time.monotonic() > started + TIMEOUT:
                proc.kill()
                proc.wait()
                pytest.fail(f"the runner of {module} on {backend} took more than {TIMEOUT}s")
            time.sleep(0.05)
        self.top_up()
        del self.procs[module, backend]
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        out.close()
        err.close()
        return proc.returncode, stdout, stderr

    def close(self) -> None:
        for proc, _, out, err in self.procs.values():
            proc.kill()
            proc.wait()
            out.close()
            err.close()
        self.procs.clear()


@pytest.fixture(scope="module")
def runners(request, tmp_path_factory):
    cases = [
        (item.callspec.params["module"], item.callspec.params["backend"])
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_cpython_asyncio"
    ]
    r = _Runners(tmp_path_factory.mktemp("cpython"), cases)
    yield r
    r.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
@pytest.mark.parametrize("module", MIXIN_MODULES + POLICY_MODULES)
def test_cpython_asyncio(module, backend, runners):
    if backend == "io_uring":
        require_uring()  # skips with the reason (fails under URINGLOOP_REQUIRE_IO_URING=1)
    reason = _skip_reason(module)
    if reason:
        pytest.skip(reason)
    returncode, stdout, stderr = runners.finish(module, backend)
    lines = stdout.strip().splitlines()
    assert lines, f"runner printed nothing (exit {returncode}):\n{stderr[-4000:]}"
    summary = json.loads(lines[-1])
    assert summary["backend"] == backend
    assert summary["ran"] > 0
    assert not summary["failed"], (
        f"{len(summary['failed'])} failures on {backend}:\n"
        + "\n".join(summary["failed"])
        + "\n\n"
        + stderr[-6000:]
    )
    assert returncode == 0, stderr[-4000:]
    if sys.version_info >= NO_LOOP_EXPECTED.get(module, (0,)):
        assert summary["loops_made"] > 0, "no uringloop loop was used by these tests"
