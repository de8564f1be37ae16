"""A signal that arrives while a run waits in the kernel reaches Python.

io_uring_enter that submits and then waits, cut short by a signal, returns the
number it submitted rather than EINTR; the engine must still report EINTR so
that the Python-level handler runs (and may raise) before it waits again. Both
the engine's own run() and the loop's native turn are checked, each with an
operation submitted in the same call as the wait.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import signal
import threading

import pytest
from conftest import drain, skip_unless_wait_syscalls_known, wait_until_sleeping

from uringloop import engine

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="Python runs signal handlers in the main thread only",
)


class Alarm(Exception):
    pass


@pytest.fixture
def alarm():
    """alarm(stats=None): SIGUSR1, whose handler raises Alarm, as soon as this
    (the main) thread sleeps in its wait system call -- a state check, so the
    signal always lands in the wait under test, however slow the machine. With
    ``stats`` (an engine's stats function) it returns a dict whose "waits" is
    the engine's count of finished waits at the moment of the kill (the
    sleeping thread cannot change it then).
    (Not SIGALRM: pytest-timeout's own timer uses it, and must keep working.)"""
    skip_unless_wait_syscalls_known()

    def raise_alarm(signum, frame):
        raise Alarm

    old = signal.signal(signal.SIGUSR1, raise_alarm)
    threads = []
    main_tid = threading.get_native_id()

    def arm(stats=None):
        seen = {}

        def kill_when_asleep():
            wait_until_sleeping(main_tid)
            if stats is not None:
                seen["waits"] = stats()["waits"]
            os.kill(os.getpid(), signal.SIGUSR1)

        t = threading.Thread(target=kill_when_asleep, daemon=True)
        threads.append(t)
        t.start()
        return seen

    yield arm
    for t in threads:
        t.join(5)
    signal.signal(signal.SIGUSR1, old)


def test_engine_run_returns_to_the_handler(eng, socketpair, alarm):
    a, _ = socketpair()
    ud = eng.recv(a.fileno(), lambda res, more, data: None, multishot=False)
    at_kill = alarm(eng.stats)  # the recv above is submitted by the same enter that waits
    with pytest.raises(Alarm):
        eng.run(None)
    # the interrupted wait returned to Python: it did not wait again (a run
    # that swallowed the EINTR would sleep on until some later signal)
    assert eng.stats()["waits"] == at_kill["waits"] + 1
    eng.cancel(ud)
    drain(eng)


@pytest.mark.parametrize("debug", [False, True], ids=["native-turn", "debug-python-turn"])
def test_loop_turn_returns_to_the_handler(loop, socketpair, alarm, debug):
    """Out of debug mode the native turn waits; in debug mode BaseEventLoop's
    own _run_once does, through the loop's selector. Either way the handler's
    exception comes out of run_until_complete, not out of the exception handler."""
    loop.set_debug(debug)
    a, _ = socketpair()

    at_kill = []

    async def main():
        at_kill.append(alarm(loop.engine_stats))
        await loop.sock_recv(a, 10)  # submitted in the turn that then waits

    task = loop.create_task(main())
    with pytest.raises(Alarm):
        loop.run_until_complete(task)
    assert loop.engine_stats()["waits"] == at_kill[0]["waits"] + 1  # no second wait
    task.cancel()
    loop.run_until_complete(asyncio.wait([task], timeout=5))
    assert task.cancelled()
    loop.set_debug(False)


def test_stock_loop_agrees(socketpair, alarm):
    """The same on the stock loop: the handler's exception comes out of run."""
    lp = asyncio.SelectorEventLoop()
    try:
        a, _ = socketpair()

        async def main():
            alarm()
            await lp.sock_recv(a, 10)

        task = lp.create_task(main())
        with pytest.raises(Alarm):
            lp.run_until_complete(task)
        task.cancel()
        lp.run_until_complete(asyncio.wait([task], timeout=5))
    finally:
        lp.close()


def test_a_timed_wait_that_submits_and_times_out_is_not_interrupted(eng, socketpair):
    """io_uring_enter that submits and then waits drops ETIME as it drops
    EINTR (it returns the count it submitted). A timed run that submitted an
    op and then timed out with nothing to reap was reported as interrupted
    (-EINTR): the engine's own run loop then stopped early (ul_run's idle
    trim was skipped, test_engine_idle_memory). A timeout says 0, as when
    nothing was submitted (decision 331). No signal is involved here."""
    if eng.backend != "io_uring":
        # epoll_wait is cut short (EINTR, no signal) by the kernel's task-work
        # notification when an io_uring ring of this thread, such as one an
        # earlier test closed, still has work: then -EINTR is right, and the
        # callers read a timed EINTR as 0 records anyway
        pytest.skip("decision 331 is io_uring_enter's submit count; epoll_wait "
                    "may be cut short by an io_uring ring's task work")
    a, _ = socketpair()
    eng.run(0)
    col = []
    ud = eng.poll(a.fileno(), select.POLLIN, lambda res, more, data: col.append(res))
    n = engine.lib.ul_run(eng._e, 20_000_000)  # submits the poll, waits 20 ms
    assert n == 0 and col == [], (n, col)
    eng.cancel(ud)
    drain(eng)


class Interrupt(KeyboardInterrupt):
    pass


def test_a_signal_caught_outside_python_code_is_handled_before_the_wait(any_loop):
    """A signal caught while no Python code runs (here libc's kill(2) called
    by the loop itself through ctypes, which, unlike os.kill, does not look
    for handlers to run after it; also the C scheduler's own code) has its
    handler run before the loop sleeps, as stock's select() runs it: a
    handler that raises ends run_forever at once, it does not wait for I/O
    that never comes (Ctrl-C's KeyboardInterrupt is such a handler). The
    call_later is the bound that wakes the loop without the fix."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python runs signal handlers in the main thread only")

    def interrupt(signum, frame):
        raise Interrupt

    old = signal.signal(signal.SIGUSR1, interrupt)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        any_loop.call_soon(libc.kill, os.getpid(), signal.SIGUSR1)
        gave_up = []
        # (C callables both: Python code in the first would run the handler)
        bound = [
            any_loop.call_later(5, gave_up.append, True),
            any_loop.call_later(5, any_loop.stop),
        ]
        with pytest.raises(Interrupt):
            any_loop.run_forever()
        for h in bound:
            h.cancel()
        assert not gave_up, "the handler ran only when the loop woke for its timer"
    finally:
        signal.signal(signal.SIGUSR1, old)
