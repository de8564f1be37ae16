"""The native scheduler's own handles (uringloop/_core/handles.c, sched.c) and
its turn loop, against the stock loop.

The handles are subclasses of asyncio's Handle/TimerHandle with free lists, a
C cancel() and lazy GC tracking; run_forever's turns run in C. Each test runs
one script on a uringloop.Loop (both backends) and on a stock
SelectorEventLoop and compares what they did, or proves a GC property
directly (a cycle through a handle is collected; what a queued handle refers
to is never freed early).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
import weakref
from asyncio import events, futures

import pytest
from conftest import both, error_of, make_loop

import uringloop


def _noop(*args):
    pass


# ------------------------------------------------------------- the classes


def test_timer_handles_compare_and_hash_as_stock(loop, stock):
    def script(lp):
        when = lp.time() + 100
        a = lp.call_at(when, _noop, 1)
        b = lp.call_at(when, _noop, 1)
        c = lp.call_at(when + 1, _noop)
        made = events.TimerHandle(when, _noop, (1,), lp)  # a stock-class handle
        h1, h2 = lp.call_soon(_noop), lp.call_soon(_noop)
        out = [
            a == b, a != b, a == made, made == a, hash(a) == hash(made), hash(a) == hash(b),
            a < c, c > a, a <= b, a >= b, sorted([c, made, a])[-1] is c,
            a == "x", a.__eq__("x"), a.__lt__(1),
            h1 == h2, h1 == h1, hash(h1) == id(h1) >> 4 or hash(h1) == hash(h1),
            error_of(lambda: h1 < h2),
            a.when() == when, a.cancelled(), a.get_context() is a._context
            if sys.version_info >= (3, 12) else True,
        ]
        b.cancel()
        out += [a == b, a.cancelled(), b.cancelled(), repr(b).split(" when=")[0], repr(h1)[:14]]
        for h in (a, c, h1, h2):
            h.cancel()
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[:3] == [True, False, True]
    assert mine == theirs


def test_debug_mode_makes_stock_handles(loop, stock):
    """In debug mode every handle is made by the stock Python methods: the
    stock classes themselves, with their source tracebacks."""

    def script(lp):
        lp.set_debug(True)
        try:
            h = lp.call_soon(_noop)
            t = lp.call_later(1, _noop)
            out = [type(h), type(t), bool(h._source_traceback), bool(t._source_traceback)]
            h.cancel()
            t.cancel()
            r = repr(h)
            out.append(r.startswith("<Handle cancelled _noop() at ") and " created at " in r)
            return out
        finally:
            lp.set_debug(False)

    mine, theirs = both(loop, stock, script)
    assert mine == [events.Handle, events.TimerHandle, True, True, True]
    assert mine == theirs


# --------------------------------------------------------------- cancel()


class _Recording:
    """Mixed into a loop class: _timer_handle_cancelled overridden."""

    def _timer_handle_cancelled(self, handle):
        self.noted.append(handle.when())
        super()._timer_handle_cancelled(handle)


class _MyLoop(_Recording, uringloop.Loop):
    pass


class _MyStock(_Recording, asyncio.SelectorEventLoop):
    pass


def _cancel_script(lp):
    lp.noted = []
    out = []
    t = lp.call_later(10, _noop)
    t.cancel()
    t.cancel()  # a second cancel changes nothing
    out.append((lp._timer_cancelled_count, t._callback, t._args, t.cancelled()))
    done = lp.call_later(0, _noop)
    lp.run_until_complete(asyncio.sleep(0.01))
    done.cancel()  # ran already: no longer scheduled, not counted
    out.append((lp._timer_cancelled_count, done._scheduled, repr(done).split(" when=")[0]))
    h = lp.call_soon(_noop, 1)
    h.cancel()
    h.cancel()
    out.append((h._callback, h._args, h._repr, repr(h)))
    # get_debug replaced on the instance: the stock cancel keeps the repr
    lp.get_debug = lambda: True
    h2 = lp.call_soon(_noop, 2)
    t2 = lp.call_later(5, _noop, 3)
    h2.cancel()
    t2.cancel()
    del lp.get_debug
    out.append((h2._repr, t2._repr is not None, lp._timer_cancelled_count))
    # _timer_handle_cancelled replaced on the instance
    seen = []
    lp._timer_handle_cancelled = seen.append
    t3 = lp.call_later(7, _noop)
    t3.cancel()
    del lp._timer_handle_cancelled
    out.append((seen == [t3], lp._timer_cancelled_count))
    out.append(len(lp.noted))
    lp.run_until_complete(asyncio.sleep(0))
    return out


def test_cancel_bookkeeping_as_stock(loop, stock):
    mine, theirs = both(loop, stock, _cancel_script)
    assert mine[0] == (1, None, None, True)
    assert mine == theirs


def test_cancel_with_an_overridden_loop_method_as_stock():
    mine_lp, stock_lp = _MyLoop(), _MyStock()
    try:
        mine, theirs = _cancel_script(mine_lp), _cancel_script(stock_lp)
        assert mine[-1] >= 3  # the subclass heard of every timer cancelled
        assert mine == theirs
    finally:
        mine_lp.close()
        stock_lp.close()


def test_cancel_follows_a_patched_stock_class(loop, monkeypatch):
    calls = []

    def cancel(self):
        calls.append(self)

    h = loop.call_soon(_noop)
    t = loop.call_later(1, _noop)
    monkeypatch.setattr(events.Handle, "cancel", cancel)
    monkeypatch.setattr(events.TimerHandle, "cancel", cancel)
    h.cancel()
    t.cancel()
    assert calls == [h, t]
    assert not h.cancelled() and not t.cancelled()
    monkeypatch.undo()
    h.cancel()
    t.cancel()
    assert h.cancelled() and t.cancelled()


def test_bad_handle_use_as_stock(loop, stock):
    """A cancelled handle run (twice), a handle run after its slots were
    emptied, a callback that raises when run by hand: the stock outcome."""

    def script(lp):
        errors = []
        lp.set_exception_handler(lambda _lp, ctx: errors.append(
            (ctx["message"][:30], repr(ctx.get("exception")), ctx.get("handle") is h)))
        h = lp.call_soon(_noop)
        h.cancel()
        out = [error_of(h._run), error_of(h._run)]

        def boom():
            raise ZeroDivisionError("x")

        h = lp.call_soon(boom)
        out.append(error_of(h._run))
        lp.run_until_complete(asyncio.sleep(0))  # runs it again, as queued
        t = lp.call_later(1, _noop)
        del t._when
        out.append(error_of(t.when))
        out.append(error_of(t.cancel))
        out.append(errors)
        return out

    mine, theirs = both(loop, stock, script)
    assert len(mine[-1]) >= 3
    assert mine == theirs


# ------------------------------------------------------------- GC


class _Owner:
    def __init__(self, lp, how):
        if how == "timer":
            self.handle = lp.call_later(0, self.callback)
        else:
            self.handle = lp.call_soon(self.callback)  # owner <-> handle: a cycle
        if how == "cancelled":
            self.handle.cancel()

    def callback(self):
        pass


@pytest.mark.parametrize("how", ["ran", "cancelled", "timer", "queued at close"])
def test_a_cycle_through_a_kept_handle_is_collected(how):
    lp = uringloop.Loop()
    try:
        ref = weakref.ref(_Owner(lp, how))
        if how != "queued at close":
            lp.run_until_complete(asyncio.sleep(0.01))
    finally:
        lp.close()
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("kind", ["io_uring", "epoll", "stock"])
def test_a_loop_dropped_with_callbacks_queued_is_collected(kind, res_tracker):
    """Decision 141's gap: the untracked queued handles held the loop, so a loop
    dropped without close() was never collected. It is now, with the stock
    loop's "unclosed event loop" ResourceWarning (its __del__ closes it)."""
    lp = make_loop(kind)
    lp.call_soon(_noop)
    lp.call_soon(_noop, 1)
    lp.call_soon(lp.stop)  # a bound method of the loop: one more path to it
    lp.call_later(60, _noop)
    ref = weakref.ref(lp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    assert ref() is None
    unclosed = [
        w for w in caught
        if w.category is ResourceWarning and str(w.message).startswith("unclosed event loop")
    ]
    assert len(unclosed) == 1, [str(w.message) for w in caught]


@pytest.mark.parametrize("kept", ["handle", "queue"])
@pytest.mark.parametrize("kind", ["io_uring", "epoll", "stock"])
def test_a_queued_handle_kept_elsewhere_keeps_the_loop(kind, kept, res_tracker):
    """The loop's traversal sees through a queued handle only while the queue
    alone holds it and the loop alone holds the queue: a handle (or the whole
    _ready deque) kept elsewhere keeps the loop and what the handle holds alive
    through collections, as a stock handle does."""
    lp = make_loop(kind)
    ran = []

    class Callback:
        def __call__(self):
            ran.append(1)

    h = lp.call_soon(Callback())
    callback = weakref.ref(h._callback)
    holder = h if kept == "handle" else lp._ready
    ref = weakref.ref(lp)
    del lp, h
    gc.collect()
    lp = ref()
    try:
        assert lp is not None and not lp.is_closed()
        assert callback() is not None
        lp.run_until_complete(asyncio.sleep(0))
        assert ran == [1]
    finally:
        if lp is not None:
            lp.close()
    del holder


def test_what_a_queued_handle_holds_survives_collections(loop):
    ran = []

    class Callback:
        def __call__(self, tag):
            ran.append(tag)

    for i in range(2000):  # several young collections while they wait
        loop.call_soon(Callback(), i)
    gc.collect()
    loop.run_until_complete(asyncio.sleep(0))
    assert ran == list(range(2000))


# ------------------------------------------------------------- the turn


def test_run_once_outside_run_forever_is_one_turn(loop, stock):
    def script(lp):
        ran = []

        def again(n):
            ran.append(n)
            lp.call_soon(again, n + 1)

        lp.call_soon(again, 0)
        lp._run_once()
        lp._run_once()
        out = [list(ran)]

        def nested():
            ran.append("nested")
            lp._run_once()  # inside a running loop: one turn, then back here
            ran.append("back")

        lp.call_soon(nested)
        lp.call_soon(lp.stop)
        lp.run_forever()
        out.append(ran[2:])
        lp._ready.clear()
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[0] == [0, 1]
    assert mine == theirs


def test_stop_and_run_again(loop, stock):
    def script(lp):
        ran = []
        lp.call_soon(ran.append, 1)
        lp.call_soon(lp.stop)
        lp.call_soon(ran.append, 2)  # same turn as stop: runs before the loop stops
        lp.call_soon(lambda: lp.call_soon(ran.append, 3))
        lp.run_forever()
        out = [list(ran), len(lp._ready)]
        lp.call_soon(lp.stop)
        lp.run_forever()
        out.append(ran)
        return out

    mine, theirs = both(loop, stock, script)
    assert mine == [[1, 2], 1, [1, 2, 3]]
    assert mine == theirs


# --------------------------------------------------------- create_future


def test_create_future_as_stock(loop, stock, monkeypatch):
    def script(lp):
        f = lp.create_future()
        out = [type(f), f.get_loop() is lp, f.done()]
        lp.set_debug(True)
        try:
            g = lp.create_future()
            out.append(g._source_traceback[-1].name)
        finally:
            lp.set_debug(False)
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[0] is futures.Future
    assert mine == theirs

    class Mine(futures.Future):
        pass

    monkeypatch.setattr(futures, "Future", Mine)  # looked up per call, as stock
    assert type(loop.create_future()) is Mine
    assert type(stock.create_future()) is Mine


def test_get_debug_replaced_on_the_class_later_as_stock():
    """Handle.__init__ asks loop.get_debug(): a class changed after the loop
    was made (and its first handles) decides the next handles' tracebacks."""

    class Mine(uringloop.Loop):
        pass

    class Stock(asyncio.SelectorEventLoop):
        pass

    def script(lp):
        first = lp.call_soon(_noop)
        type(lp).get_debug = lambda self: True
        try:
            second = lp.call_soon(_noop)
            third = lp.call_later(1, _noop)
        finally:
            del type(lp).get_debug
        fourth = lp.call_soon(_noop)
        out = [bool(h._source_traceback) for h in (first, second, third, fourth)]
        for h in (first, second, third, fourth):
            h.cancel()
        return out

    mine_lp, stock_lp = Mine(), Stock()
    try:
        mine, theirs = script(mine_lp), script(stock_lp)
    finally:
        mine_lp.close()
        stock_lp.close()
    assert mine == [False, True, True, False]
    assert mine == theirs
