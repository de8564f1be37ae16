"""What anyio's own test suite, run on uringloop against the stock loop
(tools/thirdparty_suite.py, decisions 437-441), found, reduced to the plain
asyncio API.

Each scenario runs on io_uring, epoll, io_uring with every fallback and the
stock ``asyncio.SelectorEventLoop`` (the ``tloop`` fixture); ``on_stock``
gives the answer the loop under test must give. Each test failed on uringloop
before its decision's fix (the cancel test guards the fix's second half: it
fails with only the first); what differed and was left (a race in anyio's own
test, anyio's IPv6 tests on a host without IPv6 localhost) is listed in
decisions 440 and 441, not kept here.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import tempfile
import types

import pytest
from transport_helpers import on_stock, run_in, tloop

assert tloop  # a fixture, imported for the tests below


# --------------------------------------------------------------------------
# decision 437: a failed connect leaves no reference cycle to its exception


def _refused_case(loop, case):
    """Connect where nobody listens; the exception's referrers outside the
    frames (its traceback's frames refer to it on 3.10 only, as anyio's
    ``test_happy_eyeballs_refcycles`` allows): none on the stock loop, so the
    error is freed by its last reference, not at the next collection."""
    closers = []
    if case.startswith("tcp"):
        # bound, not listening: the connect is refused, and no other test can
        # take the port meanwhile
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        address = lst.getsockname()
        family = socket.AF_INET
    else:
        lst = None
        address = os.path.join(tempfile.mkdtemp(prefix="ul-anyio-"), "nobody")
        family = socket.AF_UNIX
    closers.append(lst)

    async def connect():
        if case == "tcp create_connection":
            await loop.create_connection(asyncio.Protocol, *address)
            return
        s = socket.socket(family)
        closers.append(s)
        s.setblocking(False)
        await loop.sock_connect(s, address)

    async def main():
        exc = None
        try:
            await connect()
        except OSError as e:
            exc = e
        # a step later: the task's wakeup, which resumed this step, holds the
        # future until the step ends
        await asyncio.sleep(0)
        refs = gc.get_referrers(exc)
        return type(exc).__name__, sorted(
            type(r).__name__ for r in refs if not isinstance(r, types.FrameType)
        )

    try:
        return run_in(loop, main())
    finally:
        for c in closers:
            if c is not None:
                c.close()
        if lst is None:
            os.rmdir(os.path.dirname(address))


@pytest.mark.parametrize("case", ["tcp sock_connect", "unix sock_connect", "tcp create_connection"])
def test_refused_connect_leaves_no_cycle(tloop, case):
    """anyio's test_happy_eyeballs_refcycles: the refused connect's exception
    was kept by sock_connect's future (through the completion callback's cell,
    kept by the traceback's frame); the stock loop drops the future (decision
    437)."""
    want = on_stock(_refused_case, case)
    assert want[1] == []
    assert _refused_case(tloop, case) == want


_TCP_SYN_SENT = 2  # linux/tcp_states.h


def _syn_sent(s: socket.socket) -> bool:
    """The first byte of struct tcp_info is the connection's state."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_SYN_SENT


def _cancelled_connect_case(loop):
    """A sock_connect still in flight (the listener's accept queue is full, so
    the SYN is dropped and the connect waits) is cancelled; the cancel's late
    completion must find the future gone quietly: the outcome and what reached
    the exception handler."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    socks = [lst]
    handled = []
    loop.set_exception_handler(lambda lp, ctx: handled.append(ctx["message"]))

    def new_client():
        c = socket.socket()
        socks.append(c)
        c.setblocking(False)
        return c

    async def main():
        # fill the accept queue: loopback answers a SYN within connect(), so a
        # client left in SYN_SENT proves the queue full
        for _ in range(16):
            c = new_client()
            c.connect_ex(lst.getsockname())
            if _syn_sent(c):
                break
        else:
            pytest.fail("the listener's accept queue never filled")
        c = new_client()
        task = loop.create_task(loop.sock_connect(c, lst.getsockname()))
        for _ in range(3):
            await asyncio.sleep(0)
        pending = not task.done() and _syn_sent(c)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            outcome = "cancelled"
        else:
            outcome = "connected"
        for _ in range(5):  # the cancel's completion arrives in these turns
            await asyncio.sleep(0)
        return pending, outcome

    try:
        return run_in(loop, main()), handled
    finally:
        for s in socks:
            s.close()


def test_cancelled_connect_late_completion_is_dropped(tloop):
    """The sock_connect of decision 437 drops its future when the await ends;
    the completion of a cancelled connect, which comes later, finds none and
    is dropped, as the stock loop's removed writer never runs."""
    want = on_stock(_cancelled_connect_case)
    assert want == ((True, "cancelled"), [])
    assert _cancelled_connect_case(tloop) == want
