"""Shared fixtures and helpers for the engine tests.

Every engine test takes the ``eng`` fixture (or ``make_engine`` when it needs a
non-default configuration) and so runs once per backend:

* ``io_uring``            -- the native backend with everything the kernel offers
* ``epoll``               -- the readiness backend
* ``io_uring-fallbacks``  -- io_uring with every OPT_NO_* bit set, so the
                             emulation paths (one-shot resubmission, engine-picked
                             buffers, per-op cancel, no DEFER_TASKRUN) run too,
                             plus OPT_TEST_EAGAIN (the EAGAIN/EINPROGRESS paths)

With URINGLOOP_REQUIRE_IO_URING=1 an io_uring case that cannot run fails
instead of skipping; with URINGLOOP_GUARD=1 every engine runs in pool guard
mode and a test fails if any record hit a protected buffer. Every test that
takes ``res_tracker`` (all engine and loop tests do) fails if it leaves an fd
open.

Nothing here may block without a bound: ``run_until`` fails the test on timeout,
sockets read by plain Python carry a timeout, threads are joined with a timeout.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import importlib
import os
import resource
import socket
import sys
import time
import warnings

import pytest

try:
    from uringloop import engine
except ImportError as exc:  # the C extension is not built yet
    engine = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


# --------------------------------------------------------------------------
# the collector's share of every test


def pytest_collection_finish(session):
    """Everything alive once the suite is collected (every test module, the
    libraries they import, pytest's own objects: about 90,000 objects) is
    moved to the collector's permanent generation (decision 301). The
    fixtures' ``gc.collect()`` (two or three per test) then traverses only what
    was made since: about 45 ms each became about 1 ms, some 2,000 x 2 x 45 ms
    of every leg's CPU. What a test makes is collected exactly as before; a
    test's leak checks concern only objects it made."""
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------
# where the suite's time goes (URINGLOOP_TEST_TIMES=DIR, decision 560)

_TIMES_DIR = os.environ.get("URINGLOOP_TEST_TIMES", "")


def _thread_schedstat() -> tuple[int, int]:
    """(ns on a CPU, ns waiting for one) of the calling thread, or zeros."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return 0, 0


if _TIMES_DIR:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        """One line per test (setup, call and teardown together) in
        DIR/times-<python>-<cwd's name>-<pid>.tsv: node id, wall seconds, this process's
        CPU seconds (every thread), its reaped children's CPU seconds, and
        the main thread's seconds waiting for a CPU (the load's share). Wall
        minus the three is time the test spent blocked: sleeping, waiting."""
        t0, c0, k0 = time.monotonic(), time.process_time(), os.times()
        s0 = _thread_schedstat()[1]
        yield
        k1 = os.times()
        kids = (k1.children_user + k1.children_system) - (k0.children_user + k0.children_system)
        line = (
            f"{item.nodeid}\t{time.monotonic() - t0:.4f}\t{time.process_time() - c0:.4f}"
            f"\t{kids:.4f}\t{(_thread_schedstat()[1] - s0) / 1e9:.4f}\n"
        )
        name = (
            f"times-{sys.version_info[0]}.{sys.version_info[1]}"
            f"-{os.path.basename(os.getcwd())}-{os.getpid()}.tsv"
        )
        with open(os.path.join(_TIMES_DIR, name), "a") as f:
            f.write(line)


# --------------------------------------------------------------------------
# backends


BACKEND_PARAMS = [
    pytest.param(("io_uring", False), id="io_uring"),
    pytest.param(("epoll", False), id="epoll"),
    pytest.param(("io_uring", True), id="io_uring-fallbacks"),
]


def fallback_options() -> int:
    """Every fallback forced, and the test-only OPT_TEST_EAGAIN: each op's
    first issue takes the EAGAIN -> readiness wait -> reissue path (connect:
    EINPROGRESS -> POLLOUT -> SO_ERROR), which this kernel never takes."""
    return engine.OPT_TEST_FALLBACKS


def guard_problems(eng) -> list[str]:
    """Guard mode (URINGLOOP_GUARD=1): no record may have hit a protected buffer."""
    faults = eng.stats()["guard_faults"]
    return [f"{faults} records completed with -EFAULT in guard mode"] if faults else []


# URINGLOOP_REQUIRE_IO_URING=1 (set by .ci/run): an io_uring test that would
# skip because io_uring cannot run here FAILS instead, with the reason. A host
# where io_uring works but the io_uring half of the suite silently skipped (an
# init regression, a sandbox) would otherwise pass CI on epoll alone.
REQUIRE_IO_URING = os.environ.get("URINGLOOP_REQUIRE_IO_URING", "") == "1"


@functools.cache
def uring_unavailable_reason() -> str | None:
    """None when an io_uring engine can be made here, else the reason string.

    Asks the backend itself (not ``backend_info()``, whose answer follows
    URINGLOOP_BACKEND): tests that name io_uring run it whatever the default."""
    try:
        probe = engine.Engine(backend="io_uring")
    except OSError as exc:
        return str(exc)
    probe.close()
    return None


def require_uring() -> None:
    """Skip (or, under URINGLOOP_REQUIRE_IO_URING=1, fail) when io_uring cannot run."""
    reason = uring_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_IO_URING:
        pytest.fail(
            f"io_uring unavailable: {reason} -- and URINGLOOP_REQUIRE_IO_URING=1 "
            "says the io_uring tests must run on this host"
        )
    pytest.skip(f"io_uring unavailable: {reason}")


def epoll_events(tfd: int) -> int | None:
    """The event mask this process's epoll instance registered for tfd
    (/proc/self/fdinfo), or None."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "eventpoll" not in os.readlink(f"/proc/self/fd/{fd}"):
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        for line in info.splitlines():
            parts = line.split()
            if parts[:1] == ["tfd:"] and int(parts[1]) == tfd:
                return int(parts[3], 16)
    return None


def open_fds() -> set[int]:
    """This process's open fd numbers (Linux /proc). The listing shows its own
    directory fd, closed by the time we look: fd_is_open drops it."""
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if fd_is_open(fd)}


def fd_leaks(before: set[int]) -> list[str]:
    """fds open now that were not open before, described."""
    out = []
    for fd in sorted(open_fds() - before):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = "?"
        out.append(f"fd {fd} -> {target} left open")
    return out


class EngineFactory:
    """Creates engines of one backend flavour and closes them all afterwards."""

    def __init__(self, backend: str, fallbacks: bool):
        self.backend = backend
        self.fallbacks = fallbacks
        self.engines: list = []

    def __call__(self, **config):
        if self.fallbacks:
            config["options"] = config.get("options", 0) | fallback_options()
        eng = engine.Engine(backend=self.backend, **config)
        assert eng.backend == self.backend
        self.engines.append(eng)
        return eng

    def close_all(self) -> list[str]:
        """Close every engine; return descriptions of anything that leaked.

        Ops still in flight are counted BEFORE close(): close() cancels and
        reaps them and then forgets every slot, so a count taken after it
        is always 0 and could never fail."""
        problems = []
        for eng in self.engines:
            if eng.closed:
                continue  # closed by the test itself
            problems += guard_problems(eng)
            left = eng.in_flight
            c_left = eng.stats()["in_flight"]
            if left or c_left:
                problems.append(
                    f"{left} ops still in flight at the end of the test "
                    f"(engine's own count: {c_left})"
                )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                eng.close()
            # close() warns (ResourceWarning) when ops never completed
            problems += [f"close(): {w.message}" for w in caught if w.category is ResourceWarning]
        self.engines.clear()
        return problems


@pytest.fixture(params=BACKEND_PARAMS)
def make_engine(request, res_tracker):
    """Factory: ``make_engine(sq_entries=..., cq_entries=..., ...)`` -> Engine."""
    if engine is None:
        pytest.fail(f"uringloop.engine cannot be imported: {_IMPORT_ERROR}")
    backend, fallbacks = request.param
    if backend == "io_uring":
        require_uring()
    factory = EngineFactory(backend, fallbacks)
    yield factory
    problems = factory.close_all()
    gc.collect()
    assert not problems, problems


@pytest.fixture
def eng(make_engine):
    """An Engine with the default configuration, on each backend."""
    return make_engine()


# --------------------------------------------------------------------------
# waiting and collecting


def run_until(eng, predicate, timeout: float = 5.0, what: str = "") -> None:
    """Run the engine in 50 ms turns until predicate() holds; fail on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout}s waiting for {what or predicate!r} "
                f"(in_flight={eng.in_flight}, stats={eng.stats()})"
            )
        eng.run(0.05)


def drain(eng, timeout: float = 5.0) -> None:
    """Run until no op is in flight."""
    run_until(eng, lambda: eng.in_flight == 0, timeout, "in_flight == 0")


def settle(eng, turns: int = 3) -> None:
    """A few short turns, for tests that check that nothing (more) happens."""
    for _ in range(turns):
        eng.run(0.02)


class Collector:
    """Callback for one op (or a group of ops): keeps every record.

    ``records`` holds ``(res, more, data)`` tuples in arrival order; ``finals``
    counts records with ``more`` False.
    """

    def __init__(self, name: str = "", log: list | None = None):
        self.name = name
        self.records: list[tuple[int, bool, object]] = []
        self.finals = 0
        self.log = log  # optional shared list of (name, res, more) in global order

    def __call__(self, res, more, data):
        assert isinstance(res, int)
        self.records.append((res, bool(more), data))
        if not more:
            self.finals += 1
        if self.log is not None:
            self.log.append((self.name, res, bool(more)))

    @property
    def done(self) -> bool:
        return self.finals > 0

    @property
    def final(self):
        """The final record (res, more, data); asserts exactly one arrived last."""
        assert self.finals == 1, f"{self.name}: {self.finals} final records: {self.records}"
        assert not self.records[-1][1], f"{self.name}: records after the final one"
        return self.records[-1]

    @property
    def res(self) -> int:
        return self.final[0]

    def payload(self) -> bytes:
        """Concatenated ``data`` of pool receives (records with res > 0)."""
        return b"".join(d for r, _, d in self.records if r > 0 and d)

    def __repr__(self):
        return f"Collector({self.name!r}, {len(self.records)} records, finals={self.finals})"


def wait_done(eng, *collectors: Collector, timeout: float = 5.0) -> None:
    run_until(
        eng,
        lambda: all(c.done for c in collectors),
        timeout,
        f"final records of {collectors}",
    )


# --------------------------------------------------------------------------
# sockets, pipes, files


class Resources:
    """Closes everything a test opened.

    ``make_engine`` depends on ``res_tracker``, so engines are closed first and
    the sockets and fds they used only after that.
    """

    def __init__(self):
        self.socks: list[socket.socket] = []
        self.fds: list[int] = []

    def sock(self, s: socket.socket) -> socket.socket:
        self.socks.append(s)
        return s

    def fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def forget(self, fd: int) -> None:
        """The fd was closed elsewhere (e.g. by close_fd): never close its number."""
        while fd in self.fds:
            self.fds.remove(fd)

    def close(self):
        for s in self.socks:
            s.close()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass  # closed by the test or by the engine (close_fd)


@pytest.fixture
def res_tracker():
    """Closes what a test registered, then checks that the test (engines and
    loops included: their fixtures depend on this one, so they are closed
    first) left no fd open that was not open before it."""
    before = open_fds()
    r = Resources()
    yield r
    r.close()
    gc.collect()  # sockets a test dropped without closing are closed by GC
    leaks = fd_leaks(before)
    assert not leaks, leaks


def nb_socketpair(res_tracker, sndbuf=0):
    """A non-blocking AF_UNIX stream socketpair closed at teardown; sndbuf:
    the first socket's SO_SNDBUF, if given."""
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
        res_tracker.sock(s)
    if sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return a, b


@pytest.fixture
def socketpair(res_tracker):
    """Factory: a non-blocking AF_UNIX stream socketpair (closed at teardown)."""

    def make(family=socket.AF_UNIX, type=socket.SOCK_STREAM):
        a, b = socket.socketpair(family, type)
        for s in (a, b):
            s.setblocking(False)
            res_tracker.sock(s)
        return a, b

    return make


@pytest.fixture
def tcp_listener(res_tracker):
    """Factory: a non-blocking TCP listener on 127.0.0.1 (ephemeral port)."""

    def make(backlog: int = 64) -> socket.socket:
        s = res_tracker.sock(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(backlog)
        s.setblocking(False)
        return s

    return make


@pytest.fixture
def tcp_pair(res_tracker, tcp_listener):
    """Factory: a connected TCP pair (client, server) on 127.0.0.1, non-blocking."""

    def make(sndbuf: int = 0):
        # Only the sender's buffer is shrunk: a receive buffer shrunk after the
        # handshake can stall loopback TCP in the kernel, engine or not.
        lst = tcp_listener(1)
        c = res_tracker.sock(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        if sndbuf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        c.settimeout(5)
        c.connect(lst.getsockname())
        lst.settimeout(5)
        s, _ = lst.accept()
        res_tracker.sock(s)
        lst.close()
        for x in (c, s):
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            x.setblocking(False)
        return c, s

    return make


@pytest.fixture
def udp_socket(res_tracker):
    """Factory: a non-blocking UDP socket bound to 127.0.0.1 (ephemeral port)."""

    def make() -> socket.socket:
        s = res_tracker.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        return s

    return make


@pytest.fixture
def pipe(res_tracker):
    """Factory: a non-blocking pipe (read_fd, write_fd), closed at teardown."""

    def make():
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
            res_tracker.fd(fd)
        return r, w

    return make


def recv_exact(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """Blocking (bounded) read of exactly n bytes from a plain socket."""
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# the system calls a loop sleeps in: io_uring_enter, epoll_wait, epoll_pwait(2)
# (the stock selector loop sleeps in epoll_wait/epoll_pwait as well)
_WAIT_SYSCALLS = {"x86_64": {426, 232, 281, 441}, "aarch64": {426, 22, 441}}


def skip_unless_wait_syscalls_known() -> None:
    if os.uname().machine not in _WAIT_SYSCALLS:
        pytest.skip(f"no table of wait system call numbers for {os.uname().machine}")


def sleeping_in_wait(tid: int) -> bool:
    """True while thread tid sleeps in a loop's wait system call. /proc's
    syscall file names the call a blocked thread is in ("running" when it
    runs; a thread queued for the GIL shows futex, not these)."""
    with open(f"/proc/self/task/{tid}/syscall") as f:
        first = f.read().split()[0]
    return first != "running" and int(first) in _WAIT_SYSCALLS[os.uname().machine]


def wait_until_sleeping(tid: int) -> None:
    """From another thread: return once thread tid sleeps in its wait system
    call. A state check, not a guess at how long falling asleep takes; a thread
    that never sleeps leaves the test to pytest-timeout.

    Seen twice in a row: the file is read with the GIL released, so one
    reading can catch thread tid preempted inside a no-wait run it makes
    holding the GIL (decision 290), just before it releases the GIL and
    blocks; a signal sent then can land before the blocking call starts, and
    the wait then sleeps its whole timeout (the stock selector has the same
    window). The second reading is made after this thread took the GIL back,
    so tid had released it: it is in the blocking call, or not yet, never in
    the earlier run."""
    seen = 0
    while seen < 2:
        if sleeping_in_wait(tid):
            seen += 1
        else:
            seen = 0
            time.sleep(0.001)


def send_all(sock, data) -> None:
    """All of data into a non-blocking sock's peer's receive queue (bounded
    by a timeout); sock is non-blocking again after."""
    sock.settimeout(5)
    try:
        sock.sendall(data)
    finally:
        sock.setblocking(False)


def wait_child_exited(pid: int, reaped: bool = False, timeout: float = 30.0) -> None:
    """Until child pid has exited, without reaping it: its status stays for
    whoever reaps it (waitid's WNOWAIT). With ``reaped``, until someone else
    (the stock loop's threaded watcher) has reaped it too. The state, not a
    guessed delay: a loaded machine may take far longer than usual to run a
    shell to its exit (decision 701). Bounded, so a child that never exits
    fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) and not reaped:
                return
        except ChildProcessError:
            return  # reaped
        assert time.monotonic() < deadline, f"child {pid} not gone after {timeout}s"
        time.sleep(0.002)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def ensure_nofile(n: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards n (up to hard); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        new = n if hard == resource.RLIM_INFINITY else min(n, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def pump_send(eng, sock: socket.socket, data: bytes, timeout: float = 10.0) -> None:
    """Send all of data from plain Python on a non-blocking socket, running the
    engine whenever the socket buffer is full (so an engine reader makes room)."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            n = sock.send(view)
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"pump_send: {len(view)} bytes still unsent after {timeout}s")
            eng.run(0.01)
            continue
        view = view[n:]


# --------------------------------------------------------------------------
# asyncio loops (tests/test_loop_*.py)
#
# ``loop`` runs a test once per uringloop backend; ``any_loop`` adds the stock
# asyncio.SelectorEventLoop, for tests whose point is that uringloop behaves
# exactly as the stock loop does (one test, many loops).

LOOP_KINDS = ["io_uring", "epoll", "io_uring-fallbacks"]
ANY_LOOP_KINDS = [*LOOP_KINDS, "stock"]


@pytest.fixture
def pidfd_refused(monkeypatch):
    """pidfd_open refused (ENOSYS), with the child watcher the stock policy
    picks then (3.12+ would take PidfdChildWatcher, as the patch does not
    reach its probe): subprocesses go the stock watcher's way (decision 506b)."""
    from asyncio import unix_events

    from uringloop.transports import subprocess as ul_subprocess

    def refused(pid, flags=0):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(ul_subprocess, "_pidfd_ok", None)
    monkeypatch.setattr(os, "pidfd_open", refused)
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy.set_child_watcher(unix_events.ThreadedChildWatcher())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policy.set_child_watcher(None)


def make_loop(kind: str):
    """A new event loop of one kind: 'io_uring', 'epoll', 'io_uring-fallbacks'
    (every engine fallback forced, as the engine tests' kind) or 'stock'."""
    import asyncio

    if kind == "stock":
        return asyncio.SelectorEventLoop()
    if engine is None:
        pytest.fail(f"uringloop.engine cannot be imported: {_IMPORT_ERROR}")
    backend, options = kind, 0
    if kind == "io_uring-fallbacks":
        backend, options = "io_uring", fallback_options()
    if backend == "io_uring":
        require_uring()
    from uringloop import Loop

    lp = Loop(backend=backend, options=options)
    assert lp.backend == backend
    return lp


def finish_loop(lp) -> list[str]:
    """Cancel what a test left running (bounded), close the loop; return problems."""
    import asyncio

    problems = []
    if lp.is_closed():
        return problems
    if lp.is_running():  # cannot happen from a fixture, but never hang on it
        return ["loop still running at teardown"]
    eng = getattr(lp, "_engine", None)  # None: the stock loop
    try:
        tasks = [t for t in asyncio.all_tasks(lp) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            lp.run_until_complete(
                asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
            )
        lp.run_until_complete(asyncio.wait_for(lp.shutdown_asyncgens(), 5))
    except Exception as exc:  # report, but still close the loop below
        problems.append(f"teardown: {exc!r}")
    if eng is not None and not eng.closed:
        problems += guard_problems(eng)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp.close()
    # the engine warns (ResourceWarning) when operations outlived close()
    problems += [f"close(): {w.message}" for w in caught if w.category is ResourceWarning]
    return problems


def _loop_fixture(request):
    import asyncio

    lp = make_loop(request.param)
    yield lp
    problems = finish_loop(lp)
    asyncio.set_event_loop(None)
    gc.collect()
    assert not problems, problems


@pytest.fixture(params=LOOP_KINDS)
def loop(request, res_tracker):
    """A uringloop.Loop on each backend, closed after the test."""
    yield from _loop_fixture(request)


@pytest.fixture(params=ANY_LOOP_KINDS)
def any_loop(request, res_tracker):
    """Each uringloop backend and the stock SelectorEventLoop, closed after the test."""
    yield from _loop_fixture(request)


# sock_* methods the stock loop gained only in Python 3.11
STOCK_311_METHODS = ("sock_recvfrom", "sock_recvfrom_into", "sock_sendto")


def is_stock(lp) -> bool:
    import asyncio

    return isinstance(lp, asyncio.SelectorEventLoop)


def skip_if_stock_lacks(lp, *names: str) -> None:
    """Skip a comparison with the stock loop on a Python whose stock loop has no
    such method; uringloop must always have them (a missing one there fails)."""
    if is_stock(lp):
        missing = [n for n in names if not hasattr(lp, n)]
        if missing:
            pytest.skip(
                f"the stock loop of Python {sys.version_info[0]}.{sys.version_info[1]} has no "
                f"{', '.join(missing)} (added in 3.11)"
            )


def run_in(lp, coro, timeout: float = 10.0):
    """run_until_complete(coro) bounded by ``timeout`` seconds."""
    import asyncio

    return lp.run_until_complete(asyncio.wait_for(coro, timeout))


# --- one script on a uringloop and on the stock loop (tests/test_sched*.py)


@pytest.fixture
def stock():
    """A stock SelectorEventLoop beside the test's loop, closed after the test."""
    lp = make_loop("stock")
    yield lp
    lp.close()


def both(loop, stock, script):
    """script(lp) on each loop; returns (uringloop's result, stock's result)."""
    return script(loop), script(stock)


def error_of(fn, *args, **kw):
    """(type, message) of what fn(*args, **kw) raised, or None."""
    try:
        fn(*args, **kw)
    except Exception as exc:
        return type(exc), str(exc)
    return None


def bench_module(name):
    """benchmarks/<name>.py, imported (the benchmark scripts are not a package)."""
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, bench)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(bench)
