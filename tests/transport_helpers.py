"""Fixtures and helpers for the transport scenario tests (tests/test_transport_*.py).

Kept out of conftest.py on purpose: the scenario tests import what they use
from here (``from transport_helpers import tloop, ...``), so the engine and loop
fixtures in conftest.py and these evolve without touching each other.

``tloop`` is the loop of every scenario test: io_uring, epoll and the stock
``asyncio.SelectorEventLoop`` (the stock loop proves the expectation itself:
a scenario that fails only on uringloop is a uringloop bug). Around the loop it
counts the entries of ``/proc/self/fd``: after the loop has closed, the count
must be back where it was before the loop was made, so no test leaks an fd
(sockets, the ring, the epoll fd, the loop's self-pipe...).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import ssl

import pytest
from conftest import ANY_LOOP_KINDS, ensure_nofile, finish_loop, make_loop

__all__ = [
    "ANY_LOOP_KINDS",
    "ensure_nofile",
    "fd_count",
    "open_fds",
    "run_in",
    "tloop",
    "tls",
    "wait_for",
]


def open_fds() -> dict[int, str]:
    """fd -> what it points to, for every open fd of this process."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the fd listdir itself used, closed by now
    return out


def fd_state(fd: int) -> str:
    """'open' while fd names a file, else the errno's name (EBADF): where a
    closed transport's close(2) has happened (decisions 873, 884)."""
    try:
        os.fstat(fd)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "open"


def drop_lost_handle(lp, tr) -> None:
    """Take tr's one queued handle (its _call_connection_lost, after close())
    out of lp's _ready: the transport then never reaches it, as one
    collected before it runs (decisions 873, 884)."""
    mine = [h for h in lp._ready if getattr(h._callback, "__self__", None) is tr]
    assert len(mine) == 1, list(lp._ready)
    lp._ready.remove(mine[0])


def fd_count() -> int:
    return len(open_fds())


@pytest.fixture(params=ANY_LOOP_KINDS)
def tloop(request):
    """A loop of each kind (io_uring, epoll, stock); fails on an fd leak.

    The fds are counted before the loop is made and again after it has been
    closed (tasks cancelled, async generators shut down) and garbage collected.
    """
    gc.collect()
    before = open_fds()
    lp = make_loop(request.param)
    asyncio.set_event_loop(None)  # tests pass the loop explicitly
    try:
        yield lp
    finally:
        problems = finish_loop(lp)
        asyncio.set_event_loop(None)
        gc.collect()
    after = open_fds()
    leaked = {fd: what for fd, what in after.items() if fd not in before or before[fd] != what}
    assert not problems, problems
    assert len(after) <= len(before), f"fds leaked by the test ({request.param}): {leaked}"


def on_stock(fn, *args):
    """``fn(loop, *args)`` on a fresh stock selector loop, closed after: the
    oracle's answer for a scenario that is then run on the loop under test."""
    stock = asyncio.SelectorEventLoop()
    try:
        return fn(stock, *args)
    finally:
        stock.close()


def run_in(lp, coro, timeout: float = 20.0):
    """Run coro on lp to completion, bounded by ``timeout`` seconds."""
    return lp.run_until_complete(asyncio.wait_for(coro, timeout))


async def wait_for(aw, timeout: float = 10.0):
    """``await aw`` bounded by ``timeout`` seconds (every wait in the suite is bounded)."""
    return await asyncio.wait_for(aw, timeout)


async def until(pred, what: str, turns: int = 2000, step: float = 0.005):
    """Wait (bounded: ``turns`` sleeps of ``step`` seconds) until pred() holds."""
    for _ in range(turns):
        if pred():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------
# TLS: one trustme CA per test session (key generation is the slow part)


class TLS:
    """Server and client ``ssl.SSLContext`` objects for 'localhost'/127.0.0.1."""

    def __init__(self):
        import trustme

        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1")

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        # create_default_context()'s client context (hostname checked, the
        # certificate required) without loading the system's CA store, which
        # nothing here trusts and which took 20-60 ms a context
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(scope="session")
def tls():
    return TLS()


# --------------------------------------------------------------------------
# sockets


def plain_listener(backlog: int = 128) -> socket.socket:
    """A non-blocking TCP listener on 127.0.0.1 (the caller closes it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    s.setblocking(False)
    return s


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ from one offset to the next (a shifted or lost chunk shows)."""
    import random

    return random.Random(seed).randbytes(n)
