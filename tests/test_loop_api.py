"""uringloop's public face and the scheduler it shares with every asyncio loop.

``loop`` runs a test on each uringloop backend; ``any_loop`` also runs it on the
stock asyncio.SelectorEventLoop, where the point is "behaves as asyncio does":
the stock run proves the expectation itself is right.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import errno
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from conftest import run_in, skip_unless_wait_syscalls_known, wait_until_sleeping

import uringloop

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
SUBPROCESS_TIMEOUT = 60


# --------------------------------------------------------------------------
# public face


def test_run_returns_value_and_closes_loop():
    seen = {}

    async def main(x):
        seen["loop"] = asyncio.get_running_loop()
        await asyncio.sleep(0.01)
        return x * 2

    assert uringloop.run(main(21)) == 42
    lp = seen["loop"]
    assert isinstance(lp, uringloop.Loop)
    assert lp.is_closed()
    assert not lp.is_running()


def test_run_debug_flag_and_exception():
    seen = {}

    async def main():
        seen["debug"] = asyncio.get_running_loop().get_debug()
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        uringloop.run(main(), debug=True)
    assert seen["debug"] is True


def test_run_cancels_leftover_tasks():
    seen = {}

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    async def main():
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        return "done"

    assert uringloop.run(main()) == "done"
    assert seen == {"cancelled": True}


@pytest.mark.parametrize("runner", ["uringloop.run", "asyncio.run"])
def test_run_refuses_nested_cleanly(runner):
    """Inside a running loop, uringloop.run fails as asyncio.run does: at once,
    with RuntimeError, without creating a loop (so no never-awaited coroutine)."""
    run = uringloop.run if runner == "uringloop.run" else asyncio.run

    async def inner():
        return 1

    async def main():
        gc.collect()  # earlier tests' garbage must not warn in here
        coro = inner()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run(coro)
            except RuntimeError as exc:
                message = str(exc)
            else:
                message = "no RuntimeError"
            finally:
                coro.close()
            gc.collect()
        return message, [str(w.message) for w in caught]

    message, caught = uringloop.run(main())
    assert "cannot be called from a running event loop" in message
    assert caught == []


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) exists from Python 3.12")
def test_asyncio_run_loop_factory():
    seen = {}

    async def main():
        seen["loop"] = asyncio.get_running_loop()
        return "ok"

    assert asyncio.run(main(), loop_factory=uringloop.new_event_loop) == "ok"
    assert isinstance(seen["loop"], uringloop.Loop)
    assert seen["loop"].is_closed()


@pytest.mark.skipif(not PY311, reason="asyncio.Runner exists from Python 3.11")
def test_asyncio_runner_loop_factory():
    async def which():
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=uringloop.new_event_loop) as runner:
        first = runner.run(which())
        second = runner.run(which())
        assert isinstance(first, uringloop.Loop)
        assert first is second is runner.get_loop()
    assert first.is_closed()


@pytest.fixture
def restore_policy():
    old = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(old)


def test_install_makes_asyncio_use_uringloop(restore_policy):
    uringloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), uringloop.EventLoopPolicy)
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, uringloop.Loop)
    finally:
        lp.close()

    async def main():
        return asyncio.get_running_loop()

    ran_on = asyncio.run(main())
    assert isinstance(ran_on, uringloop.Loop)
    assert ran_on.is_closed()


def test_event_loop_policy_new_event_loop():
    policy = uringloop.EventLoopPolicy()
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, uringloop.Loop)
        assert lp.run_until_complete(asyncio.sleep(0, "v")) == "v"
    finally:
        lp.close()
    # a second call gives a distinct loop
    a, b = policy.new_event_loop(), policy.new_event_loop()
    try:
        assert a is not b
    finally:
        a.close()
        b.close()


def test_new_event_loop_is_a_base_event_loop():
    lp = uringloop.new_event_loop()
    try:
        assert isinstance(lp, uringloop.Loop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert lp.backend in ("io_uring", "epoll")
        assert not lp.is_running() and not lp.is_closed()
    finally:
        lp.close()


def test_backend_and_reason(loop):
    assert loop.backend in ("io_uring", "epoll")
    assert isinstance(loop.backend_reason, str)
    stats = loop.engine_stats()
    assert isinstance(stats, dict)
    assert stats["in_flight"] >= 0


def test_epoll_backend_reason_is_given():
    lp = uringloop.Loop(backend="epoll")
    try:
        assert lp.backend == "epoll"
        assert lp.backend_reason  # says why epoll runs
    finally:
        lp.close()


def test_sleep_does_not_spin(loop):
    """A 0.2 s sleep is a handful of engine waits, not a busy loop."""
    before = loop.engine_stats()
    t0 = time.monotonic()
    run_in(loop, asyncio.sleep(0.2))
    elapsed = time.monotonic() - t0
    after = loop.engine_stats()
    assert elapsed >= 0.19
    assert after["waits"] - before["waits"] <= 5, (before, after)


def _subprocess_env(backend: str | None) -> dict[str, str]:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("uringloop")
    parent = str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)
    env = dict(os.environ)
    env.pop("URINGLOOP_BACKEND", None)
    if backend is not None:
        env["URINGLOOP_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run_py(code: str, backend: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=_subprocess_env(backend),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def test_env_backend_epoll_in_subprocess():
    proc = _run_py(
        """
        import asyncio, uringloop
        lp = uringloop.new_event_loop()
        print(lp.backend)
        print(lp.backend_reason)
        lp.close()
        async def main():
            return asyncio.get_running_loop().backend
        print(uringloop.run(main()))
        """,
        "epoll",
    )
    assert proc.returncode == 0, proc.stderr
    backend, reason, run_backend = proc.stdout.splitlines()
    assert backend == "epoll"
    assert "URINGLOOP_BACKEND" in reason
    assert run_backend == "epoll"
    assert proc.stderr == ""


def test_env_backend_bogus_raises_valueerror_cleanly():
    proc = _run_py(
        """
        import gc, uringloop
        try:
            uringloop.new_event_loop()
        except ValueError as exc:
            print("ValueError:", exc)
        gc.collect()
        """,
        "bogus",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError:"), proc.stdout
    assert "bogus" in proc.stdout
    # the half-built loop must not complain when it is collected
    assert proc.stderr == "", proc.stderr


def test_backend_argument_bogus_raises_valueerror_cleanly(monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(ValueError, match="bogus"):
        uringloop.Loop(backend="bogus")
    gc.collect()
    assert [repr(u.exc_value) for u in unraisable] == []


# --------------------------------------------------------------------------
# scheduler


def test_call_soon_order_args_and_context(any_loop):
    lp = any_loop
    order = []
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")

    for i in range(20):
        lp.call_soon(order.append, i)
    lp.call_soon(lambda: order.append(("ctx", var.get())), context=ctx)
    lp.call_soon(lambda: order.append(("noctx", var.get())))
    lp.call_soon(lp.stop)
    lp.run_forever()
    assert order == [*range(20), ("ctx", "in-ctx"), ("noctx", "unset")]


def test_call_later_call_at_order_and_cancel(any_loop):
    # Deterministic under load: a preemption between two lines of this test
    # shifts the deadlines, so every bound comes from the loop's clock read
    # around the scheduling calls and the expected order from the handles'
    # own deadlines, never from a wall-time budget.
    lp = any_loop
    got = []
    stopped_at = []

    def stop():
        stopped_at.append(lp.time())
        lp.stop()

    t0 = lp.time()
    handles = {
        "later-60": lp.call_later(0.06, got.append, "later-60"),
        "at-20": lp.call_at(t0 + 0.02, got.append, "at-20"),
        "cancelled": lp.call_later(0.03, got.append, "cancelled"),
        "later-40": lp.call_later(0.04, got.append, "later-40"),
        "later-0": lp.call_later(0, got.append, "later-0"),
        "later-negative": lp.call_later(-1, got.append, "later-negative"),
    }
    t1 = lp.time()
    # stop after the last deadline, however late the lines above ran
    h = lp.call_at(max(x.when() for x in handles.values()) + 0.02, stop)
    assert isinstance(h, asyncio.TimerHandle)
    assert handles["at-20"].when() == t0 + 0.02
    # call_later(d) is call_at(time() + d), time() read inside the call
    for name, delay in (("later-60", 0.06), ("later-40", 0.04), ("later-0", 0),
                        ("later-negative", -1)):
        assert t0 + delay <= handles[name].when() <= t1 + delay, name
    handles["cancelled"].cancel()
    assert handles["cancelled"].cancelled()
    lp.run_forever()
    # the stop timer never fires before its deadline (the stock loop allows
    # one clock resolution of slack)
    assert stopped_at[0] >= h.when() - lp._clock_resolution
    # every live timer ran, in deadline order (without preemption that is
    # later-negative, later-0, at-20, later-40, later-60); the cancelled one
    # never ran
    del handles["cancelled"]
    assert got == sorted(handles, key=lambda name: handles[name].when())


def test_timer_not_early(loop):
    fired = []

    def cb():
        fired.append(loop.time())

    for delay in (0.001, 0.015, 0.05):
        fired.clear()
        h = loop.call_later(delay, cb)
        run_in(loop, _until(lambda: fired))
        assert fired[0] >= h.when() - 0.001


async def _until(pred, step=0.001):
    while not pred():
        await asyncio.sleep(step)


def test_time_is_monotonic_clock(any_loop):
    before = time.monotonic()
    a = any_loop.time()
    after = time.monotonic()
    assert before <= a <= after  # the same clock, read between two of its readings
    assert any_loop.time() >= a


def test_call_soon_threadsafe_wakes_sleeping_loop(any_loop):
    """The thread calls in only once the loop sleeps in the kernel; the loop
    has nothing else to wake it before its guard timer (a hang bound, not a
    speed bound: a lost wakeup lets the guard fire)."""
    skip_unless_wait_syscalls_known()
    lp = any_loop
    woke = {}
    main_tid = threading.get_native_id()

    def guard():
        woke["guard"] = True
        lp.stop()

    def from_thread():
        wait_until_sleeping(main_tid)
        lp.call_soon_threadsafe(on_loop, threading.get_ident())

    def on_loop(tid):
        woke["tid"] = tid
        lp.stop()

    lp.call_later(30, guard)
    stats = getattr(lp, "engine_stats", None)
    wakeups = stats()["wakeups"] if stats else 0
    th = threading.Thread(target=from_thread)
    th.start()
    try:
        lp.run_forever()
    finally:
        th.join(10)
    assert "guard" not in woke, "call_soon_threadsafe did not wake the sleeping loop"
    assert woke["tid"] != threading.get_ident()
    if stats:
        assert stats()["wakeups"] > wakeups  # it slept: the wake wrote the eventfd


def test_call_soon_threadsafe_many_threads(loop):
    n_threads, per_thread = 4, 200
    got = []
    done = loop.create_future()

    def add(x):
        got.append(x)
        if len(got) == n_threads * per_thread and not done.done():
            done.set_result(None)

    def worker(k):
        for i in range(per_thread):
            loop.call_soon_threadsafe(add, (k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    try:
        run_in(loop, done)
    finally:
        for t in threads:
            t.join(10)
    for k in range(n_threads):
        assert [i for kk, i in got if kk == k] == list(range(per_thread))


def test_run_forever_stop(any_loop):
    lp = any_loop
    seen = []
    lp.call_soon(seen.append, 1)
    lp.call_soon(lp.stop)
    lp.call_soon(seen.append, 2)  # same iteration: still runs
    lp.run_forever()
    assert seen == [1, 2]
    assert not lp.is_running()
    # stop() before run_forever(): one iteration, then return
    lp.stop()
    lp.call_soon(seen.append, 3)
    lp.run_forever()
    assert seen == [1, 2, 3]


def test_run_until_complete_and_flags(any_loop):
    lp = any_loop
    seen = {}

    async def main():
        seen["running"] = lp.is_running()
        seen["current"] = asyncio.get_running_loop()
        await asyncio.sleep(0.01)
        return "result"

    assert not lp.is_running() and not lp.is_closed()
    assert lp.run_until_complete(main()) == "result"
    assert seen == {"running": True, "current": lp}
    assert not lp.is_running()
    fut = lp.create_future()
    lp.call_later(0.01, fut.set_result, 5)
    assert lp.run_until_complete(fut) == 5
    with pytest.raises(ZeroDivisionError):
        lp.run_until_complete(_raise(ZeroDivisionError))


async def _raise(exc_type):
    await asyncio.sleep(0)
    raise exc_type()


def test_close_twice_and_closed_errors(any_loop):
    lp = any_loop
    lp.close()
    lp.close()
    assert lp.is_closed()
    msg = "Event loop is closed"
    with pytest.raises(RuntimeError, match=msg):
        lp.call_soon(print)
    with pytest.raises(RuntimeError, match=msg):
        lp.call_later(1, print)
    with pytest.raises(RuntimeError, match=msg):
        lp.call_soon_threadsafe(print)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match=msg):
        lp.create_task(coro)
    coro.close()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match=msg):
        lp.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError, match=msg):
        lp.run_forever()
    a, b = socket.socketpair()
    try:
        with pytest.raises(RuntimeError, match=msg):
            lp.add_reader(a, print)
        with pytest.raises(RuntimeError, match=msg):
            lp.add_writer(a, print)
    finally:
        a.close()
        b.close()


def test_close_while_running(any_loop):
    lp = any_loop

    async def main():
        with pytest.raises(RuntimeError):
            lp.close()
        return "still fine"

    assert lp.run_until_complete(main()) == "still fine"
    assert not lp.is_closed()


def test_reentrant_run_raises(any_loop):
    lp = any_loop

    async def main():
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            lp.run_until_complete(coro)
        coro.close()
        with pytest.raises(RuntimeError, match="already running"):
            lp.run_forever()
        return "ok"

    assert lp.run_until_complete(main()) == "ok"


def test_create_task_name_and_context(any_loop):
    lp = any_loop
    var = contextvars.ContextVar("var", default="unset")

    async def read_var():
        await asyncio.sleep(0)
        return var.get()

    async def main():
        t = lp.create_task(read_var(), name="my-task")
        assert t.get_name() == "my-task"
        assert await t == "unset"
        if PY311:
            ctx = contextvars.copy_context()
            ctx.run(var.set, "from-ctx")
            t2 = lp.create_task(read_var(), context=ctx)
            assert await t2 == "from-ctx"
        return "ok"

    assert run_in(lp, main()) == "ok"


def test_set_task_factory(any_loop):
    lp = any_loop
    made = []

    def factory(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    assert lp.get_task_factory() is None
    lp.set_task_factory(factory)
    assert lp.get_task_factory() is factory

    async def child():
        return 7

    async def main():
        return await lp.create_task(child())

    assert lp.run_until_complete(main()) == 7
    assert len(made) == 2  # the main task and the child
    lp.set_task_factory(None)
    assert lp.get_task_factory() is None
    with pytest.raises(TypeError):
        lp.set_task_factory(42)


def test_exception_handler_api(any_loop):
    lp = any_loop
    contexts = []

    def handler(loop, context):
        contexts.append((loop, context))

    def bad():
        raise ValueError("in callback")

    assert lp.get_exception_handler() is None
    lp.set_exception_handler(handler)
    assert lp.get_exception_handler() is handler
    lp.call_soon(bad)
    lp.call_soon(lp.stop)
    lp.run_forever()
    assert len(contexts) == 1
    loop_arg, ctx = contexts[0]
    assert loop_arg is lp
    assert isinstance(ctx["exception"], ValueError)
    assert "handle" in ctx and "message" in ctx
    with pytest.raises(TypeError):
        lp.set_exception_handler("not callable")
    lp.set_exception_handler(None)
    assert lp.get_exception_handler() is None


def test_default_exception_handler_logs(any_loop, caplog):
    lp = any_loop

    def bad():
        raise ValueError("logged please")

    caplog.set_level(logging.ERROR, logger="asyncio")
    lp.call_soon(bad)
    lp.call_soon(lp.stop)
    lp.run_forever()
    assert any("logged please" in (r.exc_text or "") + str(r.exc_info) for r in caplog.records)
    caplog.clear()
    lp.default_exception_handler({"message": "custom message"})
    assert any("custom message" in r.getMessage() for r in caplog.records)
    caplog.clear()
    lp.call_exception_handler({"message": "via call", "exception": KeyError("k")})
    assert any("via call" in r.getMessage() for r in caplog.records)


def test_debug_slow_callback_logged(any_loop, caplog):
    lp = any_loop
    lp.set_debug(True)
    assert lp.get_debug()
    lp.slow_callback_duration = 0.01
    caplog.set_level(logging.WARNING, logger="asyncio")

    def slow_one():
        time.sleep(0.05)

    lp.call_soon(slow_one)
    lp.call_soon(lp.stop)
    lp.run_forever()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("slow_one" in m and "took" in m for m in msgs), msgs


def test_debug_call_soon_from_wrong_thread(any_loop):
    lp = any_loop
    lp.set_debug(True)

    def in_thread():
        with pytest.raises(RuntimeError, match="thread"):
            lp.call_soon(print)
        lp.call_soon_threadsafe(lambda: None)  # the threadsafe one is fine
        return "checked"

    async def main():
        return await lp.run_in_executor(None, in_thread)

    assert run_in(lp, main()) == "checked"


def test_debug_rejects_coroutines_and_non_callables(any_loop):
    """asyncio checks callbacks only in debug mode; then every entry point does."""
    lp = any_loop
    lp.set_debug(True)

    async def coro_fn():
        pass

    for method in (lp.call_soon, lp.call_soon_threadsafe):
        coro = coro_fn()
        with pytest.raises(TypeError):
            method(coro)
        coro.close()
        with pytest.raises(TypeError):
            method(coro_fn)
        with pytest.raises(TypeError):
            method("not callable")
    coro = coro_fn()
    with pytest.raises(TypeError):
        lp.call_later(0.1, coro)
    coro.close()
    with pytest.raises(TypeError):
        lp.call_later(0.1, 42)
    with pytest.raises(TypeError):
        lp.call_at(lp.time(), None)
    with pytest.raises(TypeError):
        lp.run_in_executor(None, coro_fn)


def test_run_in_executor(any_loop):
    lp = any_loop

    async def main():
        tid = await lp.run_in_executor(None, threading.get_ident)
        value = await lp.run_in_executor(None, pow, 2, 10)
        return tid, value

    tid, value = run_in(lp, main())
    assert tid != threading.get_ident()
    assert value == 1024


def test_set_default_executor(any_loop):
    lp = any_loop
    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ul-test-exec")
    try:
        lp.set_default_executor(ex)

        async def main():
            return await lp.run_in_executor(None, lambda: threading.current_thread().name)

        assert run_in(lp, main()).startswith("ul-test-exec")
        if PY311:
            with pytest.raises(TypeError):
                lp.set_default_executor(object())
    finally:
        ex.shutdown(wait=True)


def test_shutdown_default_executor(any_loop):
    lp = any_loop

    async def main():
        await lp.run_in_executor(None, time.sleep, 0.01)
        await lp.shutdown_default_executor()
        with pytest.raises(RuntimeError, match="shutdown"):
            await lp.run_in_executor(None, time.sleep, 0)
        return "ok"

    assert run_in(lp, main()) == "ok"


def test_shutdown_asyncgens(any_loop):
    lp = any_loop
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            finalized.append(True)

    holder = []

    async def main():
        g = agen()
        holder.append(g)
        assert await g.__anext__() == 1

    lp.run_until_complete(main())
    assert finalized == []
    run_in(lp, lp.shutdown_asyncgens())
    assert finalized == [True]


GAI_CASES = [
    ("127.0.0.1", 80, {}),
    ("127.0.0.1", "80", {}),
    ("127.0.0.1", None, {"type": socket.SOCK_STREAM}),
    ("127.0.0.1", "http", {"proto": socket.IPPROTO_TCP}),
    ("localhost", 8080, {"family": socket.AF_INET}),
    ("localhost", "8080", {"type": socket.SOCK_DGRAM}),
    ("localhost", 0, {}),
    (None, 0, {"flags": socket.AI_PASSIVE, "family": socket.AF_INET}),
    ("127.0.0.1", 1234, {"flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV}),
    (b"127.0.0.1", b"99", {}),
]


def _outcome(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except OSError as exc:
        return ("error", type(exc), exc.errno)


async def _aoutcome(coro):
    try:
        return ("ok", await coro)
    except OSError as exc:
        return ("error", type(exc), exc.errno)


@pytest.mark.parametrize("host,port,kwargs", GAI_CASES)
def test_getaddrinfo_matches_socket_module(any_loop, host, port, kwargs):
    expected = _outcome(socket.getaddrinfo, host, port, **kwargs)
    assert expected[0] == "ok"
    got = run_in(any_loop, _aoutcome(any_loop.getaddrinfo(host, port, **kwargs)))
    assert got == expected


def test_getaddrinfo_errors_match_socket_module(any_loop):
    cases = [
        ("localhost", 80, {"flags": socket.AI_NUMERICHOST}),
        ("127.0.0.1", "no-such-service-name", {}),
    ]
    for host, port, kwargs in cases:
        expected = _outcome(socket.getaddrinfo, host, port, **kwargs)
        assert expected[0] == "error"
        got = run_in(any_loop, _aoutcome(any_loop.getaddrinfo(host, port, **kwargs)))
        assert got == expected


@pytest.mark.parametrize(
    "sockaddr,flags",
    [
        (("127.0.0.1", 80), 0),
        (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (("127.0.0.1", 53), socket.NI_DGRAM),
        (("127.0.0.1", 8080), socket.NI_NUMERICSERV),
    ],
)
def test_getnameinfo_matches_socket_module(any_loop, sockaddr, flags):
    expected = _outcome(socket.getnameinfo, sockaddr, flags)
    got = run_in(any_loop, _aoutcome(any_loop.getnameinfo(sockaddr, flags)))
    assert got == expected


# --------------------------------------------------------------------------
# add_reader / add_writer


def _pair(res_tracker):
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
        res_tracker.sock(s)
    return a, b


async def _turns(n):
    for _ in range(n):
        await asyncio.sleep(0)


def test_reader_is_level_triggered(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    calls = []
    lp.add_reader(a, calls.append, "r")

    async def main():
        await _turns(5)
        assert calls == []  # nothing to read yet
        b.send(b"x")
        await _turns(10)
        undrained = len(calls)
        a.recv(100)  # drain
        await _turns(2)
        after_drain = len(calls)
        await _turns(10)
        return undrained, after_drain, len(calls)

    undrained, after_drain, final = run_in(lp, main())
    # called again and again while data stays unread, about once per iteration
    assert 5 <= undrained <= 11, calls
    # at most one already-scheduled call after draining, then silence
    assert final == after_drain <= undrained + 1
    assert lp.remove_reader(a) is True


def test_reader_called_once_per_iteration(any_loop, res_tracker):
    """A ready reader runs once per loop iteration, never twice in one."""
    lp = any_loop
    a, b = _pair(res_tracker)
    log = []
    b.send(b"data")

    def tick():
        log.append("tick")
        if log.count("tick") < 20:
            lp.call_soon(tick)  # runs in the next iteration
        else:
            lp.stop()

    lp.add_reader(a.fileno(), log.append, "read")
    lp.call_soon(tick)
    lp.call_later(10, lp.stop)  # bound
    lp.run_forever()
    lp.remove_reader(a.fileno())
    assert log.count("tick") == 20
    text = " ".join(log)
    assert "read read" not in text, log
    assert log.count("read") >= 15, log


def test_writer_level_triggered_and_remove(any_loop, res_tracker):
    lp = any_loop
    a, _ = _pair(res_tracker)
    calls = []
    lp.add_writer(a, calls.append, 1)

    async def main():
        await _turns(10)
        n = len(calls)
        assert lp.remove_writer(a) is True
        await _turns(10)
        return n

    n = run_in(lp, main())
    assert n >= 5
    assert len(calls) <= n + 1
    assert lp.remove_writer(a) is False


def test_writer_waits_for_buffer_space(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    while True:  # fill a's send buffer
        try:
            a.send(b"x" * 65536)
        except BlockingIOError:
            break
    calls = []
    lp.add_writer(a, calls.append, 1)

    async def main():
        await _turns(5)
        full = len(calls)
        while True:  # drain the peer: a becomes writable
            try:
                if not b.recv(1 << 20):
                    break
            except BlockingIOError:
                break
        await _until(lambda: calls)
        return full

    full = run_in(lp, main())
    assert full == 0
    assert calls
    lp.remove_writer(a)


def test_reader_replace_callback(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    first, second = [], []
    lp.add_reader(a, first.append, 1)
    lp.add_reader(a, second.append, 2)
    b.send(b"x")

    async def main():
        await _until(lambda: len(second) >= 3)

    run_in(lp, main())
    assert first == []
    assert set(second) == {2}
    assert lp.remove_reader(a) is True
    assert lp.remove_reader(a) is False


def test_reader_remove_return_values(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    assert lp.remove_reader(a) is False
    assert lp.remove_writer(a) is False
    lp.add_reader(a, print)
    lp.add_writer(a, print)
    assert lp.remove_reader(a) is True
    assert lp.remove_reader(a) is False
    assert lp.remove_writer(a.fileno()) is True  # by number, registered by object
    assert lp.remove_writer(a) is False


def test_reader_removes_itself_and_readds(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    got = []

    def on_read():
        got.append(a.recv(100))
        lp.remove_reader(a)
        if len(got) < 3:
            lp.add_reader(a, on_read)

    lp.add_reader(a, on_read)

    async def main():
        for chunk in (b"1", b"2", b"3", b"4"):
            b.send(chunk)
            await asyncio.sleep(0.02)

    run_in(lp, main())
    assert got == [b"1", b"2", b"3"]
    assert lp.remove_reader(a) is False


def test_reader_sees_eof(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    got = []
    fut = lp.create_future()

    def on_read():
        data = a.recv(100)
        got.append(data)
        if not data:
            lp.remove_reader(a)
            fut.set_result(None)

    lp.add_reader(a, on_read)
    b.send(b"last")
    b.close()
    run_in(lp, fut)
    assert b"".join(got) == b"last" and got[-1] == b""


def test_reader_on_pipe(any_loop, res_tracker):
    lp = any_loop
    r, w = os.pipe()
    res_tracker.fd(r)
    res_tracker.fd(w)
    os.set_blocking(r, False)
    fut = lp.create_future()
    lp.add_reader(r, lambda: fut.done() or fut.set_result(os.read(r, 100)))
    os.write(w, b"pipe data")
    assert run_in(lp, fut) == b"pipe data"
    assert lp.remove_reader(r) is True


def test_add_reader_regular_file_and_closed_fd(any_loop, tmp_path):
    lp = any_loop
    path = tmp_path / "regular"
    path.write_bytes(b"abc")
    with open(path, "rb") as f:
        with pytest.raises(PermissionError):
            lp.add_reader(f.fileno(), print)
        with pytest.raises(PermissionError):
            lp.add_writer(f, print)
        assert lp.remove_reader(f) is False
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as info:
        lp.add_reader(fd, print)
    assert info.value.errno == errno.EBADF
    assert lp.remove_reader(fd) is False
    with pytest.raises(ValueError):
        lp.add_reader(-1, print)
    with pytest.raises(ValueError):
        lp.add_reader("not a file", print)


def test_remove_reader_after_socket_closed(any_loop, res_tracker):
    """A watch registered with a socket object can be removed after close()."""
    lp = any_loop
    a, b = _pair(res_tracker)
    c, d = _pair(res_tracker)
    lp.add_reader(a, print)
    lp.add_writer(c, print)
    run_in(lp, _turns(2))
    a.close()
    c.close()
    assert lp.remove_reader(a) is True
    assert lp.remove_writer(c) is True


def test_close_socket_with_reader_gives_peer_eof(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    lp.add_reader(a.fileno(), print)
    run_in(lp, _turns(3))
    fd = a.fileno()
    lp.remove_reader(fd)
    a.close()

    async def main():
        return await lp.sock_recv(b, 10)

    assert run_in(lp, main(), timeout=5) == b""


def test_close_loop_with_readers_and_writers(any_loop, res_tracker):
    lp = any_loop
    a, b = _pair(res_tracker)
    lp.add_reader(a, print)
    lp.add_writer(b, print)
    run_in(lp, _turns(2))
    lp.close()
    assert lp.is_closed()
    # the sockets stay usable: the loop closed its watches, not the fds
    b.send(b"after")
    a.settimeout(5)
    assert a.recv(10) == b"after"


# --------------------------------------------------------------------------
# signals (main thread only)


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(-1)


def test_signal_handler_runs_in_loop(any_loop, restore_signals):
    lp = any_loop
    got = []
    fut = lp.create_future()

    def on_sig(*args):
        got.append((args, threading.get_ident(), lp.is_running()))
        if not fut.done():
            fut.set_result(None)

    lp.add_signal_handler(signal.SIGUSR1, on_sig, "a", 1)

    async def main():
        await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        await fut

    run_in(lp, main(), timeout=5)
    assert got == [(("a", 1), threading.get_ident(), True)]
    assert lp.remove_signal_handler(signal.SIGUSR1) is True
    assert lp.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_wakes_sleeping_loop(any_loop, restore_signals):
    lp = any_loop
    seen = {}
    skip_unless_wait_syscalls_known()
    main_tid = threading.get_native_id()
    lp.add_signal_handler(signal.SIGUSR2, lambda: (seen.setdefault("t", True), lp.stop()))
    # the guard is a hang bound: a signal that does not wake the loop lets it fire
    lp.call_later(30, lambda: (seen.setdefault("guard", True), lp.stop()))

    def kill_when_asleep():
        wait_until_sleeping(main_tid)
        os.kill(os.getpid(), signal.SIGUSR2)

    th = threading.Thread(target=kill_when_asleep)
    th.start()
    try:
        lp.run_forever()
    finally:
        th.join(10)
    assert "t" in seen, "signal handler never ran"
    assert "guard" not in seen, "the signal did not wake the sleeping loop"
    lp.remove_signal_handler(signal.SIGUSR2)


def test_signal_handler_replace_and_many(any_loop, restore_signals):
    lp = any_loop
    got = []
    lp.add_signal_handler(signal.SIGUSR1, got.append, "old")
    lp.add_signal_handler(signal.SIGUSR1, got.append, "new")
    lp.add_signal_handler(signal.SIGUSR2, got.append, "two")

    async def main():
        os.kill(os.getpid(), signal.SIGUSR1)
        await _until(lambda: "new" in got)
        os.kill(os.getpid(), signal.SIGUSR2)
        await _until(lambda: "two" in got)

    run_in(lp, main(), timeout=5)
    assert got == ["new", "two"]
    assert lp.remove_signal_handler(signal.SIGUSR1) is True
    assert lp.remove_signal_handler(signal.SIGUSR2) is True


def test_signal_handler_bad_input(any_loop, restore_signals):
    lp = any_loop

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        lp.add_signal_handler(signal.SIGUSR1, coro_fn)
    coro = coro_fn()
    with pytest.raises(TypeError):
        lp.add_signal_handler(signal.SIGUSR1, coro)
    coro.close()
    with pytest.raises(ValueError):
        lp.add_signal_handler(0, print)
    with pytest.raises(ValueError):
        lp.add_signal_handler(signal.NSIG + 1, print)
    with pytest.raises(ValueError):
        lp.remove_signal_handler(signal.NSIG + 1)
    with pytest.raises(TypeError):
        lp.add_signal_handler("SIGUSR1", print)
    with pytest.raises(RuntimeError):
        lp.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(RuntimeError):
        lp.add_signal_handler(signal.SIGSTOP, print)
    assert lp.remove_signal_handler(signal.SIGKILL) is False


def test_signal_handler_outside_main_thread(any_loop, restore_signals):
    lp = any_loop
    errors = []

    def in_thread():
        try:
            lp.add_signal_handler(signal.SIGUSR1, print)
        except Exception as exc:
            errors.append(exc)

    th = threading.Thread(target=in_thread)
    th.start()
    th.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_close_removes_signal_handlers(any_loop, restore_signals):
    lp = any_loop
    lp.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) != signal.SIG_DFL
    lp.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


def test_executor_wakeups_never_lost(any_loop):
    """Each run_in_executor result wakes the loop (no lost wakeup).

    While it waits for a result the loop has no timer but the whole run's
    hang bound (run_in's), so it can only wake for the result: a lost wakeup
    hangs it until that bound fails the test. No per-iteration speed bound.
    """
    lp = any_loop

    async def main():
        for i in range(2000):
            assert await lp.run_in_executor(None, int, i) == i
        return "ok"

    assert run_in(lp, main(), timeout=50) == "ok"
