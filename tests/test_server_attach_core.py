"""The stock Server's _attach and _detach in C (decisions 861-863): for the
exact asyncio.base_events.Server with its class's functions unpatched (and on
3.13+ the exact weakref.WeakSet _clients with its class's add, discard and
__len__), an accepted transport attaches and detaches with no Python frame;
what the server holds is the stock loop's (each behaviour test runs on it
too). A patched method (class or instance), a Server subclass, a non-int
_active_count, another _clients and a WeakSet with pending removals still
call the Python methods."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import weakref
from asyncio import base_events

import pytest
from transport_helpers import run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below

TRACKS = base_events.Server._attach.__code__.co_argcount == 2  # 3.13+: _clients
_STOCK = {
    base_events.Server._attach.__code__: "_attach",
    base_events.Server._detach.__code__: "_detach",
    weakref.WeakSet.add.__code__: "add",
    weakref.WeakSet.discard.__code__: "discard",
    weakref.WeakSet.__len__.__code__: "__len__",
}


def _ours(lp):
    return type(lp).__module__.startswith("uringloop")


def _counter(server):
    """A sys.setprofile hook counting the Python frames of the stock
    Server._attach/_detach (of server) and WeakSet.add/discard/__len__ (of its
    _clients, whatever it is by then), and the list it appends to."""
    calls = []

    def hook(frame, event, arg):
        if event == "call":
            name = _STOCK.get(frame.f_code)
            if name is None:
                return
            if frame.f_back is not None and frame.f_back.f_code.co_name == "_active":
                return  # (the test's own len(server._clients))
            this = frame.f_locals.get("self")
            if this is server or (this is not None and this is getattr(server, "_clients", None)):
                calls.append(name)

    return hook, calls


def _active(server):
    """The server's count of live connections (len(_clients) on 3.13+)."""
    if hasattr(server, "_active_count"):
        return server._active_count
    return len(server._clients)


async def _until(pred):
    async def spin():
        while not pred():
            await asyncio.sleep(0)

    await wait_for(spin())


class _Conns:
    """A server whose protocol records its transports and their ends, and
    peers connected to it."""

    def __init__(self):
        self.made, self.lost, self.peers = [], [], []

    async def start(self, setup=None):
        loop = asyncio.get_running_loop()
        conns = self

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                conns.made.append(transport)

            def connection_lost(self, exc):
                conns.lost.append(exc)

        self.server = await loop.create_server(P, "127.0.0.1", 0)
        if setup is not None:
            setup(self.server)
        self.addr = self.server.sockets[0].getsockname()
        return self.server

    async def connect(self, n=1):
        loop = asyncio.get_running_loop()
        for _ in range(n):
            peer = socket.socket()
            peer.setblocking(False)
            self.peers.append(peer)
            await wait_for(loop.sock_connect(peer, self.addr))
        want = len(self.peers)
        await _until(lambda: len(self.made) == want)

    async def close_peers(self):
        for p in self.peers:
            p.close()
        await _until(lambda: len(self.lost) == len(self.made))

    def close(self):
        for p in self.peers:
            p.close()


def _run(lp, fn):
    c = _Conns()
    try:
        return run_in(lp, fn(c))
    finally:
        c.close()


# --------------------------------------------------------------------------
# the frame count: none on the exact stock path (fails on the parent tree)


@pytest.mark.parametrize("n", [1, 4])
def test_the_stock_servers_attach_and_detach_run_no_python_frame(tloop, n):
    """n connections open and close: on uringloop no Python frame of
    Server._attach/_detach (nor WeakSet.add/discard/__len__ on 3.13+); the
    stock loop runs them, once each a connection."""

    async def main(c):
        server = await c.start()
        hook, calls = _counter(server)
        sys.setprofile(hook)
        try:
            await c.connect(n)
            opened = _active(server)
            await c.close_peers()
        finally:
            sys.setprofile(None)
        closed = _active(server)
        server.close()
        await wait_for(server.wait_closed())
        return calls, opened, closed

    calls, opened, closed = _run(tloop, main)
    assert (opened, closed) == (n, 0)
    if _ours(tloop):
        assert calls == [], calls
    else:
        per = (
            ["_attach", "add", "_detach", "discard", "__len__"]
            if TRACKS
            else ["_attach", "_detach"]
        )
        assert sorted(calls) == sorted(per * n), calls


# --------------------------------------------------------------------------
# what the server holds


def test_the_count_and_the_clients_follow_the_connections(tloop):
    """After N connections open: the count is N (and on 3.13+ _clients holds
    exactly the N transports); as they close it falls to 0; server.close()
    with the last one open: wait_closed() wakes when that one is lost."""

    async def main(c):
        server = await c.start()
        seen = []
        await c.connect(5)
        seen.append(_active(server))
        if TRACKS:
            seen.append(set(server._clients) == set(c.made))
        for p in c.peers[:4]:
            p.close()
        await _until(lambda: len(c.lost) == 4)
        seen.append(_active(server))
        server.close()
        waited = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)
        seen.append(server._waiters is None)  # (3.10/3.11's wait_closed returns at once)
        c.peers[4].close()
        await wait_for(waited)
        await _until(lambda: len(c.lost) == 5)
        seen.append((_active(server), server._waiters is None))
        return seen

    seen = _run(tloop, main)
    want = [5, True, 1, False, (0, True)] if TRACKS else [5, 1, False, (0, True)]
    assert seen == want


@pytest.mark.skipif(not TRACKS, reason="close_clients()/abort_clients() are 3.13's")
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_and_abort_clients_reach_every_live_transport(tloop, how):
    async def main(c):
        server = await c.start()
        await c.connect(4)
        c.peers[0].close()
        await _until(lambda: len(c.lost) == 1)
        getattr(server, how)()
        await _until(lambda: len(c.lost) == 4)
        closing = [t.is_closing() for t in c.made]
        server.close()
        await wait_for(server.wait_closed())
        return closing, len(server._clients)

    assert _run(tloop, main) == ([True] * 4, 0)


# --------------------------------------------------------------------------
# anything but the stock path calls the Python methods


def _wrappers(log):
    attach, detach = base_events.Server._attach, base_events.Server._detach

    def my_attach(self, *args):
        log.append("attach")
        return attach(self, *args)

    def my_detach(self, *args):
        log.append("detach")
        return detach(self, *args)

    return my_attach, my_detach


@pytest.mark.parametrize("where", ["class", "instance"])
def test_a_patched_attach_and_detach_are_called(tloop, where, monkeypatch):
    """Patched after a first connection took the stock path (and its class
    check was made): the patches are called from then on."""
    log = []
    my_attach, my_detach = _wrappers(log)

    async def main(c):
        server = await c.start()
        await c.connect(1)
        if where == "class":
            monkeypatch.setattr(base_events.Server, "_attach", my_attach)
            monkeypatch.setattr(base_events.Server, "_detach", my_detach)
        else:
            server._attach = my_attach.__get__(server)
            server._detach = my_detach.__get__(server)
        await c.connect(3)
        opened = _active(server)
        await c.close_peers()
        return opened, _active(server)

    assert _run(tloop, main) == (4, 0)
    assert log == ["attach"] * 3 + ["detach"] * 4


@pytest.mark.parametrize("override", [False, True])
def test_a_server_subclass_runs_the_python_methods(tloop, override):
    """A Server subclass (its instance's class set after create_server): the
    stock functions run as Python frames (inherited), or its overrides."""
    log = []

    class Sub(base_events.Server):
        if override:

            def _attach(self, *args):
                log.append("attach")
                return super()._attach(*args)

            def _detach(self, *args):
                log.append("detach")
                return super()._detach(*args)

    async def main(c):
        server = await c.start(lambda s: setattr(s, "__class__", Sub))
        hook, calls = _counter(server)
        sys.setprofile(hook)
        try:
            await c.connect(2)
            opened = _active(server)
            await c.close_peers()
        finally:
            sys.setprofile(None)
        return calls, opened, _active(server)

    calls, opened, closed = _run(tloop, main)
    assert (opened, closed) == (2, 0)
    assert calls.count("_attach") == 2 and calls.count("_detach") == 2, calls
    assert log == (["attach"] * 2 + ["detach"] * 2 if override else [])


@pytest.mark.skipif(TRACKS, reason="3.10-3.12's _active_count (3.13 counts _clients)")
def test_an_active_count_that_is_not_an_int_takes_the_python_methods(tloop):
    class Count(int):
        pass

    async def main(c):
        server = await c.start()
        server._active_count = Count(0)
        hook, calls = _counter(server)
        sys.setprofile(hook)
        try:
            await c.connect(1)
            after_attach = server._active_count
            server._active_count = Count(after_attach)
            await c.close_peers()
        finally:
            sys.setprofile(None)
        return calls, type(after_attach), after_attach, type(server._active_count)

    calls, t1, v1, t2 = _run(tloop, main)
    assert calls == ["_attach", "_detach"], calls
    assert (t1, v1, t2) == (int, 1, int)


@pytest.mark.skipif(not TRACKS, reason="_clients is 3.13's")
@pytest.mark.parametrize("kind", ["set", "weakset-subclass", "weakset-patched"])
def test_other_clients_take_the_python_methods(tloop, kind, monkeypatch):
    """_clients replaced by a plain set or a WeakSet subclass, or WeakSet's
    add/discard patched: the stock _attach/_detach run as Python (and the
    subclass's or the patched add/discard)."""
    log = []

    class WS(weakref.WeakSet):
        def add(self, item):
            log.append("add")
            super().add(item)

        def discard(self, item):
            log.append("discard")
            super().discard(item)

    def setup(server):
        if kind == "weakset-patched":
            add, discard = weakref.WeakSet.add, weakref.WeakSet.discard

            def my_add(ws, item):
                if ws is server._clients:  # (the stock loop has other WeakSets)
                    log.append("add")
                add(ws, item)

            def my_discard(ws, item):
                if ws is server._clients:
                    log.append("discard")
                discard(ws, item)

            monkeypatch.setattr(weakref.WeakSet, "add", my_add)
            monkeypatch.setattr(weakref.WeakSet, "discard", my_discard)
        else:
            server._clients = set() if kind == "set" else WS()

    async def main(c):
        server = await c.start(setup)
        hook, calls = _counter(server)
        sys.setprofile(hook)
        try:
            await c.connect(2)
            held = set(server._clients) == set(c.made)
            await c.close_peers()
        finally:
            sys.setprofile(None)
        return calls, held, len(server._clients)

    calls, held, left = _run(tloop, main)
    assert (held, left) == (True, 0)
    assert calls.count("_attach") == 2 and calls.count("_detach") == 2, calls
    assert log == ([] if kind == "set" else ["add"] * 2 + ["discard"] * 2)


# --------------------------------------------------------------------------
# 3.13's WeakSet: the weakref callback and pending removals as stock


async def _drop(c, i):
    """Connection i's transport forgotten by its server (as one dropped without
    _detach), closed, and freed: the WeakSet's callback is all that removes
    it."""
    t = c.made[i]
    t._server = None
    want = len(c.lost) + 1
    t.close()
    await _until(lambda: len(c.lost) == want)
    c.made[i] = None
    del t
    for _ in range(3):
        await asyncio.sleep(0)
        gc.collect()


def _state(clients):
    return (len(clients._pending_removals), len(clients.data), len(clients))


@pytest.mark.skipif(not TRACKS, reason="_clients is 3.13's")
def test_a_transport_dropped_without_detach_leaves_the_clients(tloop):
    async def main(c):
        server = await c.start()
        await c.connect(2)
        clients = server._clients
        callbacks = {r.__callback__ is clients._remove for r in clients.data}
        before = _state(clients)
        await _drop(c, 0)
        after = _state(clients)
        await c.close_peers()
        return callbacks, before, after, _state(clients)

    assert _run(tloop, main) == ({True}, (0, 2, 2), (0, 1, 1), (0, 0, 0))


@pytest.mark.skipif(not TRACKS, reason="_clients is 3.13's")
def test_pending_removals_while_iterating_as_stock(tloop):
    """While _clients is iterated (close_clients' copy, here its guard held),
    a freed transport's ref is a pending removal; the next attach and detach
    commit it first (WeakSet.add/discard), as stock."""
    from _weakrefset import _IterationGuard

    async def main(c):
        server = await c.start()
        await c.connect(2)
        clients = server._clients
        states = []
        with _IterationGuard(clients):
            await _drop(c, 0)
            states.append(_state(clients))  # pending 1
            await c.connect(1)  # _attach commits, adds
            states.append(_state(clients))
            await _drop(c, 1)
            states.append(_state(clients))  # pending again
            c.peers[2].close()  # _detach commits, discards
            await _until(lambda: len(c.lost) == 3)
            states.append(_state(clients))
        server.close()
        await wait_for(server.wait_closed())
        return states

    assert _run(tloop, main) == [(1, 2, 1), (0, 2, 2), (1, 2, 1), (0, 0, 0)]


@pytest.mark.skipif(not TRACKS, reason="_clients is 3.13's")
def test_other_weakrefs_to_a_transport_leave_its_detach_as_stock(tloop):
    """A transport with other weakrefs to it (a basic ref, one with a
    callback, a ref subclass's) leaves _clients at its detach all the same,
    and those refs are untouched (the discard's key is a ref equal to
    ref(transport))."""

    class R(weakref.ref):
        pass

    async def main(c):
        server = await c.start()
        await c.connect(3)
        held = []
        for i, t in enumerate(c.made):
            refs = [R(t), weakref.ref(t, lambda r: None)]
            if i != 1:
                refs.insert(i, weakref.ref(t))  # a basic ref, first or last
            held.append(refs)
        before = _state(server._clients)
        await c.close_peers()
        alive = [[r() is c.made[i] for r in refs] for i, refs in enumerate(held)]
        return before, _state(server._clients), alive

    before, after, alive = _run(tloop, main)
    assert (before, after) == ((0, 3, 3), (0, 0, 0))
    assert alive == [[True] * 3, [True] * 2, [True] * 3]
