"""A handler set with signal.signal (no set_wakeup_fd, as
benchmarks/net_server.py sets its SIGUSR1) runs as soon as the loop's thread
is back from the wait the signal came with, as the stock loop runs it (its
next bytecode), not at the next I/O (decision 632). No timing: if the handler
is kept, a wake from another thread after a bound ends the run, and the order
of the two says which came first."""

import asyncio
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from conftest import (
    ANY_LOOP_KINDS,
    finish_loop,
    make_loop,
    skip_unless_wait_syscalls_known,
    wait_until_sleeping,
)

import uringloop


@pytest.mark.parametrize("kind", ANY_LOOP_KINDS)
def test_a_signal_that_comes_with_a_wakeup_with_nothing_to_do(kind):
    """_run(kind) in a fresh interpreter: in this one an io_uring ring torn
    down earlier (another test's) can cut a later epoll_wait short with
    EINTR, and the case would pass without the fix (decision 632)."""
    skip_unless_wait_syscalls_known()
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(uringloop.__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.dirname(__file__), pkg_parent, env.get("PYTHONPATH")])
    )
    code = "import sys, test_plain_signal_handler as t; t._run(sys.argv[1]); print('ok')"
    r = subprocess.run(
        [sys.executable, "-c", code, kind], env=env, capture_output=True, text=True, timeout=90
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def _run(kind):
    """O_ASYNC: bytes arriving on a socket send SIGIO (the kernel wakes the
    socket's waiters first, then signals). Nothing reads the socket now, and
    on epoll its registration (edge-triggered, kept after the last receive)
    wakes the wait with an event no op wants: no record. The signal arrived
    meanwhile, not during the wait, so the wait did not end with EINTR: a
    wait begun again without returning to Python kept the handler until some
    other I/O (here the stop a thread sends after a bound)."""
    lp = make_loop(kind)
    a, b = socket.socketpair()
    got = []
    ran = threading.Event()

    def handler(signum, frame):
        got.append("handler")
        ran.set()

    old = signal.signal(signal.SIGIO, handler)
    a.setblocking(False)

    async def first():
        # a receive that waits, then gets its bytes: on epoll the socket stays
        # registered (edge-triggered) with nothing waiting on it
        recv = asyncio.ensure_future(lp.sock_recv(a, 100))
        await asyncio.sleep(0)
        b.send(b"first")
        return await asyncio.wait_for(recv, 10)

    try:
        assert lp.run_until_complete(first()) == b"first"
        fcntl.fcntl(a.fileno(), fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(a.fileno(), fcntl.F_SETFL, fcntl.fcntl(a.fileno(), fcntl.F_GETFL) | os.O_ASYNC)
        tid = threading.get_native_id()

        def sender():
            wait_until_sleeping(tid)
            b.send(b"second")
            if not ran.wait(10):  # a bound, not a timed assertion
                got.append("woken")
            lp.call_soon_threadsafe(lp.stop)

        t = threading.Thread(target=sender)
        t.start()
        try:
            lp.run_forever()
        finally:
            t.join(30)
        assert got[:1] == ["handler"], f"{kind}: {got}: the handler waited for other I/O"
    finally:
        signal.signal(signal.SIGIO, old)
        a.close()
        b.close()
        problems = finish_loop(lp)
    assert not problems, problems
