"""A signal that arrives while a run waits in the kernel reaches Python.

io_uring_enter that submits and then waits, cut short by a signal, returns the
number it submitted rather than EINTR; the engine must still report EINTR so
that the Python-level handler runs (and may raise) before it waits again. Both
the engine's own run() and the loop's native turn are checked, each with an
operation submitted in the same call as the wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="Python runs signal handlers in the main thread only",
)


class Alarm(Exception):
    pass


@pytest.fixture
def alarm():
    """alarm(seconds): SIGUSR1 after that long, whose handler raises Alarm.
    (Not SIGALRM: pytest-timeout's own timer uses it, and must keep working.)"""

    def raise_alarm(signum, frame):
        raise Alarm

    old = signal.signal(signal.SIGUSR1, raise_alarm)
    timers = []

    def arm(seconds):
        t = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGUSR1))
        timers.append(t)
        t.start()

    yield arm
    for t in timers:
        t.cancel()
        t.join(5)
    signal.signal(signal.SIGUSR1, old)


def test_engine_run_returns_to_the_handler(eng, socketpair, alarm):
    a, _ = socketpair()
    ud = eng.recv(a.fileno(), lambda res, more, data: None, multishot=False)
    alarm(0.2)  # the recv above is submitted by the same enter that waits
    t0 = time.monotonic()
    with pytest.raises(Alarm):
        eng.run(None)
    assert time.monotonic() - t0 < 5
    eng.cancel(ud)
    deadline = time.monotonic() + 5
    while eng.in_flight and time.monotonic() < deadline:
        eng.run(0.05)
    assert eng.in_flight == 0


@pytest.mark.parametrize("debug", [False, True], ids=["native-turn", "debug-python-turn"])
def test_loop_turn_returns_to_the_handler(loop, socketpair, alarm, debug):
    """Out of debug mode the native turn waits; in debug mode BaseEventLoop's
    own _run_once does, through the loop's selector. Either way the handler's
    exception comes out of run_until_complete, not out of the exception handler."""
    loop.set_debug(debug)
    a, _ = socketpair()

    async def main():
        alarm(0.2)
        await loop.sock_recv(a, 10)  # submitted in the turn that then waits

    t0 = time.monotonic()
    task = loop.create_task(main())
    with pytest.raises(Alarm):
        loop.run_until_complete(task)
    assert time.monotonic() - t0 < 5
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
            alarm(0.2)
            await lp.sock_recv(a, 10)

        task = lp.create_task(main())
        with pytest.raises(Alarm):
            lp.run_until_complete(task)
        task.cancel()
        lp.run_until_complete(asyncio.wait([task], timeout=5))
    finally:
        lp.close()


