"""A kernel that refuses io_uring, and forcing a backend by URINGLOOP_BACKEND.

tests/helpers/deny_uring.c is compiled during the run into tests/_bin/. It runs a
command under a seccomp filter that makes io_uring_setup(2) fail with EPERM (or
ENOSYS), as a container's default seccomp profile does. Everything here runs in
subprocesses, so the filter never touches the pytest process itself.

The subprocesses import the same ``uringloop`` that this process would (an
in-place build or the installed package), never a stray one from their cwd.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HELPER_SRC = TESTS / "helpers" / "deny_uring.c"
TIMEOUT = 60


def _package_parent() -> str:
    """The sys.path entry that holds the uringloop this process would import."""
    spec = importlib.util.find_spec("uringloop")
    assert spec is not None and spec.submodule_search_locations, "uringloop is not importable"
    return str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)


def _env(backend: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("URINGLOOP_BACKEND", None)
    if backend is not None:
        env["URINGLOOP_BACKEND"] = backend
    parent = _package_parent()
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = parent if not old else parent + os.pathsep + old
    return env


def _run(argv: list[str], backend: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=_env(backend),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"argv: {proc.args}\nexit: {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
    )


def _report(stdout: str) -> dict[str, str]:
    """Parse `python -m uringloop` output: lines of ``key: value``."""
    info: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip().lower(), value.strip())
    return info


@pytest.fixture(scope="module")
def deny_uring(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Compile tests/helpers/deny_uring.c; return the path of the binary."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc or gcc) on PATH: cannot build tests/helpers/deny_uring.c")
    out_dir = TESTS / "_bin"
    try:
        out_dir.mkdir(exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:  # a read-only checkout: build elsewhere
        out_dir = tmp_path_factory.mktemp("bin")
    exe = out_dir / "deny_uring"
    tmp = out_dir / f"deny_uring.{os.getpid()}.tmp"
    proc = subprocess.run(
        [cc, "-Wall", "-Wextra", "-O2", "-o", str(tmp), str(HELPER_SRC)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"building deny_uring failed:\n{_describe(proc)}"
    os.replace(tmp, exe)  # atomic: parallel runs never see a half-written binary
    return str(exe)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty cwd for subprocesses, so nothing shadows the uringloop under test."""
    return tmp_path


RAW_SETUP = textwrap.dedent(
    """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    fd = libc.syscall(425, 8, params)
    err = ctypes.get_errno()
    if fd >= 0:
        os.close(fd)
        print("io_uring_setup: ok")
    else:
        print("io_uring_setup: errno", err)
    """
)


@pytest.mark.parametrize(("flags", "err"), [([], errno.EPERM), (["--errno=ENOSYS"], errno.ENOSYS)])
def test_helper_refuses_io_uring_setup(deny_uring, workdir, flags, err):
    """The helper itself: the raw syscall fails with the chosen errno, nothing else does."""
    proc = _run([deny_uring, *flags, sys.executable, "-c", RAW_SETUP], None, workdir)
    assert proc.returncode == 0, _describe(proc)
    assert proc.stdout.strip() == f"io_uring_setup: errno {err}", _describe(proc)


@pytest.mark.parametrize("backend", [None, "auto"])
@pytest.mark.parametrize(("flags", "errname"), [([], "EPERM"), (["--errno=ENOSYS"], "ENOSYS")])
def test_main_reports_epoll_when_refused(deny_uring, workdir, flags, errname, backend):
    proc = _run([deny_uring, *flags, sys.executable, "-m", "uringloop"], backend, workdir)
    assert proc.returncode == 0, _describe(proc)
    info = _report(proc.stdout)
    assert info.get("backend") == "epoll", _describe(proc)
    assert errname in info.get("reason", ""), _describe(proc)
    assert info.get("kernel") == os.uname().release, _describe(proc)


ROUND_TRIP = textwrap.dedent(
    """
    import socket, sys, time
    from uringloop import engine

    eng = engine.Engine()
    assert eng.backend == "epoll", eng.backend
    assert "EPERM" in eng.reason, repr(eng.reason)

    def run_until(cond, what):
        deadline = time.monotonic() + 20
        while not cond():
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {what}; stats={eng.stats()}")
            eng.run(0.1)

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    recs = []
    eng.recv(a.fileno(), lambda res, more, data: recs.append((res, more, data)), multishot=False)
    b.send(b"ping over epoll")
    run_until(lambda: recs, "the recv record")
    assert recs == [(15, False, b"ping over epoll")], recs

    sent = []
    eng.send(a.fileno(), b"pong", lambda res, more, data: sent.append(res))
    run_until(lambda: sent, "the send record")
    assert sent == [4], sent
    deadline = time.monotonic() + 20
    while True:
        try:
            got = b.recv(100)
            break
        except BlockingIOError:
            assert time.monotonic() < deadline, "pong never arrived"
            time.sleep(0.01)
    assert got == b"pong", got

    closed = []
    eng.close_fd(a.detach(), lambda res, more, data: closed.append(res))
    run_until(lambda: closed, "the close record")
    assert closed == [0], closed
    assert eng.in_flight == 0, eng.in_flight
    eng.close()
    b.close()
    print("OK")
    """
)


def test_engine_auto_falls_back_and_round_trips(deny_uring, workdir):
    proc = _run([deny_uring, sys.executable, "-c", ROUND_TRIP], None, workdir)
    assert proc.returncode == 0, _describe(proc)
    assert proc.stdout.strip().splitlines()[-1:] == ["OK"], _describe(proc)


FORCED = textwrap.dedent(
    """
    import sys
    from uringloop import engine
    try:
        eng = engine.Engine(*sys.argv[1:])
    except OSError as exc:
        print("OSError:", exc)
    else:
        print("no error: backend", eng.backend)
        eng.close()
    """
)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_forced_io_uring_raises_when_refused(deny_uring, workdir, how):
    if how == "env":
        argv, backend = [], "io_uring"
    else:
        argv, backend = ["io_uring"], None
    proc = _run([deny_uring, sys.executable, "-c", FORCED, *argv], backend, workdir)
    assert proc.returncode == 0, _describe(proc)
    out = proc.stdout.strip()
    assert out.startswith("OSError:"), _describe(proc)
    assert "EPERM" in out, _describe(proc)


def test_main_forced_io_uring_fails_when_refused(deny_uring, workdir):
    """`python -m uringloop` with io_uring forced where it cannot run: an error saying why."""
    proc = _run([deny_uring, sys.executable, "-m", "uringloop"], "io_uring", workdir)
    assert proc.returncode != 0, _describe(proc)
    assert "EPERM" in proc.stdout + proc.stderr, _describe(proc)
    assert _report(proc.stdout).get("backend") != "io_uring", _describe(proc)


def test_main_forced_epoll(workdir):
    proc = _run([sys.executable, "-m", "uringloop"], "epoll", workdir)
    assert proc.returncode == 0, _describe(proc)
    info = _report(proc.stdout)
    assert info.get("backend") == "epoll", _describe(proc)
    assert "URINGLOOP_BACKEND" in info.get("reason", ""), _describe(proc)


def test_main_bogus_backend_is_an_error(workdir):
    proc = _run([sys.executable, "-m", "uringloop"], "bogus", workdir)
    assert proc.returncode != 0, _describe(proc)
    out = proc.stdout + proc.stderr
    assert "bogus" in out, _describe(proc)
    assert "backend: " not in proc.stdout, _describe(proc)


# ----------------------------------------------- io_uring_enter refused alone

RAW_SETUP_AND_ENTER = RAW_SETUP + textwrap.dedent(
    """
    fd = libc.syscall(425, 8, params)
    r = libc.syscall(426, fd, 0, 0, 1, None, 0)   # io_uring_enter(GETEVENTS)
    print("io_uring_enter:", "ok" if r >= 0 else "errno %d" % ctypes.get_errno())
    os.close(fd)
    """
)


def test_helper_only_enter_refuses_io_uring_enter(deny_uring, workdir):
    """--only-enter: setup works, enter fails with EPERM."""
    proc = _run([deny_uring, "--only-enter", sys.executable, "-c", RAW_SETUP_AND_ENTER], None,
                workdir)
    assert proc.returncode == 0, _describe(proc)
    assert proc.stdout.split() == ["io_uring_setup:", "ok", "io_uring_enter:", "errno",
                                   str(errno.EPERM)], _describe(proc)


@pytest.mark.parametrize("backend", [None, "auto"])
def test_enter_refused_auto_picks_epoll_with_reason(deny_uring, workdir, backend):
    """setup allowed, enter refused: auto comes up on epoll and says why
    (it used to pick io_uring and fail at the first run)."""
    proc = _run([deny_uring, "--only-enter", sys.executable, "-m", "uringloop"], backend,
                workdir)
    assert proc.returncode == 0, _describe(proc)
    info = _report(proc.stdout)
    assert info.get("backend") == "epoll", _describe(proc)
    assert "io_uring_enter" in info.get("reason", ""), _describe(proc)
    assert "EPERM" in info.get("reason", ""), _describe(proc)


LOOP_ROUND_TRIP = textwrap.dedent(
    """
    import asyncio, socket, uringloop
    loop = uringloop.new_event_loop()
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False); b.setblocking(False)
        await loop.sock_sendall(a, b"ping")
        data = await asyncio.wait_for(loop.sock_recv(b, 10), 10)
        a.close(); b.close()
        return data
    print(loop.backend, loop.run_until_complete(main()), loop.backend_reason)
    loop.close()
    """
)


def test_enter_refused_loop_runs_on_epoll(deny_uring, workdir):
    proc = _run([deny_uring, "--only-enter", sys.executable, "-c", LOOP_ROUND_TRIP], None,
                workdir)
    assert proc.returncode == 0, _describe(proc)
    assert proc.stdout.startswith("epoll b'ping' "), _describe(proc)
    assert "io_uring_enter" in proc.stdout, _describe(proc)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_enter_refused_forced_io_uring_raises(deny_uring, workdir, how):
    argv, backend = ([], "io_uring") if how == "env" else (["io_uring"], None)
    proc = _run([deny_uring, "--only-enter", sys.executable, "-c", FORCED, *argv], backend,
                workdir)
    assert proc.returncode == 0, _describe(proc)
    out = proc.stdout.strip()
    assert out.startswith("OSError:"), _describe(proc)
    assert "io_uring_enter" in out and "EPERM" in out, _describe(proc)
