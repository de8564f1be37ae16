"""The native scheduler (uringloop/_core/sched.c) against the stock loop.

Each test runs one script on a uringloop.Loop (both backends, through the
``loop`` fixture) and on a fresh stock asyncio.SelectorEventLoop, and compares
what they did: the order callbacks ran in, the handles made, the errors raised,
the exception-handler contexts, the timer heap's bookkeeping. The stock run
proves the expectation; the native scheduler must not differ from it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import logging
import random
import signal
import socket
import sys
import threading
import time
import weakref
from asyncio import events

import pytest
from conftest import (
    both,
    error_of,
    run_in,
    skip_unless_wait_syscalls_known,
    wait_until_sleeping,
)

import uringloop
from uringloop import _sched


def test_loop_uses_the_native_core(loop):
    assert isinstance(loop, _sched.Core)
    assert isinstance(loop, asyncio.BaseEventLoop)
    for name in ("call_soon", "_call_soon", "call_at", "call_later", "time", "_run_once",
                 "create_task", "create_future"):
        assert getattr(type(loop), name) is getattr(_sched.Core, name), name
    assert type(loop._ready) is collections.deque
    assert type(loop._scheduled) is list


def _kind(h):
    """What user code can tell about a handle's class."""
    return (
        type(h).__name__,
        isinstance(h, events.Handle),
        isinstance(h, events.TimerHandle),
        isinstance(h, asyncio.Handle),
        isinstance(h, asyncio.TimerHandle),
    )


def test_handles_are_the_stock_classes(loop, stock):
    def script(lp):
        ctx = contextvars.copy_context()
        h = lp.call_soon(print, "a", 1)
        t1 = lp.call_later(10, print, context=ctx)
        t2 = lp.call_at(lp.time() + 5, print)
        out = [
            (_kind(h), _kind(t1), _kind(t2)),
            h._args, h._callback, h._cancelled, h._source_traceback, h._repr,
            h._loop is lp, type(h._context), t1._context is ctx,
            t1._scheduled, t2._scheduled, t1.when() > t2.when(),
            repr(h), h.cancelled(),
        ]
        h.cancel()
        t1.cancel()
        out += [h.cancelled(), h._callback, h._args, t1.cancelled(), lp._timer_cancelled_count]
        out += [repr(h), len(lp._ready), len(lp._scheduled)]
        t2.cancel()
        return out

    mine, theirs = both(loop, stock, script)
    assert theirs[0][0] == ("Handle", True, False, True, False)
    assert mine == theirs
    # the native scheduler's handles derive from the stock classes and add
    # nothing a Python program sees but C cancel() and _run() (decision 140)
    h, t = loop.call_soon(print), loop.call_later(1, print)
    assert type(h) is _sched.Handle and type(t) is _sched.TimerHandle
    assert type(h).__mro__[1:] == events.Handle.__mro__
    assert type(t).__mro__[1:] == events.TimerHandle.__mro__
    for tp in (type(h), type(t)):
        assert set(vars(tp)) <= {"cancel", "_run", "__module__", "__doc__"}, vars(tp)
        with pytest.raises(TypeError):
            type("Sub", (tp,), {})
    h.cancel()
    t.cancel()


def _order_script(seed):
    """Soon callbacks, timers with many equal deadlines, cancels, callbacks that
    schedule more: returns the order everything ran in."""

    def script(lp):
        rng = random.Random(seed)
        ran = []
        # deadlines in the past: every timer is due at once, so what decides the
        # order is the heap (ties included), not how fast a turn comes around
        base = lp.time() - 1.0
        timers = []

        def note(tag):
            ran.append(tag)
            if tag.startswith("s") and len(ran) < 60:
                lp.call_soon(note, f"c{tag}")
            if tag.startswith("t") and rng.random() < 0.3:
                lp.call_at(base + 0.002, note, f"late-{tag}")
                victim = rng.choice(timers)
                victim.cancel()

        for i in range(120):
            kind = rng.random()
            if kind < 0.3:
                lp.call_soon(note, f"s{i}")
            else:
                # 4 distinct deadlines only: the heap sees lots of ties
                when = base + rng.choice((0.0, 0.0005, 0.001, 0.0015))
                timers.append(lp.call_at(when, note, f"t{i}"))
            if rng.random() < 0.1 and timers:
                rng.choice(timers).cancel()
        done = lp.create_future()
        # past as well, after every other deadline: popped in the first turn
        # whatever the load (decision 386). A deadline in the future (it was
        # now + 0.05) is popped in the first turn only when the run stalls
        # that long, and then the "late" timers are pushed into a heap of
        # another shape: their ties come out in another order than on a loop
        # that did not stall.
        lp.call_at(base + 0.01, done.set_result, None)
        run_in(lp, done)
        return ran

    return script


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_callback_order_matches_stock_with_tied_deadlines(loop, stock, seed):
    mine, theirs = both(loop, stock, _order_script(seed))
    assert len(mine) > 100
    assert mine == theirs


def test_cancelled_timers_purged_as_stock(loop, stock):
    def script(lp):
        out = []
        hs = [lp.call_later(100 + i, print) for i in range(300)]
        for h in hs[:200]:
            h.cancel()
        out.append((len(lp._scheduled), lp._timer_cancelled_count))
        lp.run_until_complete(asyncio.sleep(0))  # one turn: too many cancelled, rebuilt
        out.append((len(lp._scheduled), lp._timer_cancelled_count, type(lp._scheduled)))
        out.append([h._scheduled for h in hs[195:205]])
        out.append(sorted(h.when() for h in lp._scheduled)[:3] == [h.when() for h in hs[200:203]])
        # a cancelled head is popped off at the next turn
        lp._scheduled[0].cancel()
        lp.run_until_complete(asyncio.sleep(0))
        out.append((len(lp._scheduled), lp._timer_cancelled_count))
        for h in hs:
            h.cancel()
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[1][:2] == (100, 0)
    assert mine == theirs


def test_exception_in_callback_reported_as_stock(loop, stock):
    def script(lp):
        seen = []
        lp.set_exception_handler(lambda _lp, ctx: seen.append(ctx))

        def boom(x):
            raise ValueError(f"boom {x}")

        h = lp.call_soon(boom, 1)
        t = lp.call_later(0, boom, 2)
        lp.call_soon(lp.stop)
        lp.run_forever()
        lp.run_until_complete(asyncio.sleep(0.01))
        out = []
        for ctx, handle in zip(seen, (h, t), strict=True):
            out.append(
                (
                    sorted(ctx),
                    ctx["message"],
                    type(ctx["exception"]),
                    str(ctx["exception"]),
                    ctx["handle"] is handle,
                )
            )
        return out

    mine, theirs = both(loop, stock, script)
    assert len(mine) == 2
    assert mine == theirs


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate(loop, stock, exc_type):
    def script(lp):
        ran = []

        def stop_hard():
            raise exc_type("out")

        lp.call_soon(ran.append, 1)
        lp.call_soon(stop_hard)
        lp.call_soon(ran.append, 2)
        try:
            lp.run_forever()
        except exc_type as e:
            caught = str(e)
        else:
            caught = None
        # the callbacks after the one that raised stay ready for the next turn
        left = len(lp._ready)
        lp.call_soon(lp.stop)
        lp.run_forever()
        return caught, left, ran

    mine, theirs = both(loop, stock, script)
    assert mine == ("out", 1, [1, 2])
    assert mine == theirs


def test_context_argument(loop, stock):
    var = contextvars.ContextVar("var", default="unset")

    def script(lp):
        seen = []
        errors = []
        lp.set_exception_handler(lambda _lp, ctx: errors.append(repr(ctx["exception"])))
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in ctx")
        lp.call_soon(lambda: seen.append(var.get()), context=ctx)
        lp.call_later(0, lambda: seen.append(var.get()), context=ctx)
        lp.call_soon(lambda: seen.append(var.get()))
        # not a Context: stock fails when it runs (no .run), through the handler
        lp.call_soon(print, context=42)
        token = var.set("outside")
        lp.call_soon(lambda: seen.append(var.get()))  # copies the current context
        var.reset(token)
        lp.run_until_complete(asyncio.sleep(0.01))
        return seen, errors

    mine, theirs = both(loop, stock, script)
    assert mine == (["in ctx", "unset", "outside", "in ctx"], [mine[1][0]])
    assert "AttributeError" in mine[1][0]
    assert mine == theirs


def test_bad_input_same_exceptions(loop, stock):
    def script(lp):
        lp.set_debug(False)  # debug mode checks callables at once (PYTHONASYNCIODEBUG)
        out = [
            error_of(lp.call_soon),
            error_of(lp.call_soon, print, foo=1),
            error_of(lp.call_soon, print, context=None, foo=1),
            error_of(lp.call_later, 1),
            error_of(lp.call_later, "soon", print),
            error_of(lp.call_later, 1, print, bogus=2),
            error_of(lp.call_at, lp.time()),
            error_of(lp._call_soon, print, ()),
        ]
        if sys.version_info >= (3, 11):  # 3.10's stock loop asserts instead
            out += [error_of(lp.call_later, None, print), error_of(lp.call_at, None, print)]
        # no check outside debug mode: a non-callable fails when it runs
        errors = []
        lp.set_exception_handler(lambda _lp, ctx: errors.append(repr(ctx["exception"])))
        lp.call_soon(42)
        lp.call_later(0, "nope")
        lp.run_until_complete(asyncio.sleep(0.01))
        out.append(errors)
        return out

    mine, theirs = both(loop, stock, script)
    assert all(e is not None for e in mine[:-1]), mine
    assert len(mine[-1]) == 2
    assert mine == theirs


def test_closed_loop_errors(stock):
    def script(lp):
        lp.close()
        return [
            error_of(lp.call_soon, print),
            error_of(lp.call_later, 1, print),
            error_of(lp.call_at, 1, print),
            error_of(lp.run_forever),
        ]

    mine, theirs = script(uringloop.new_event_loop()), script(stock)
    assert mine[0] == (RuntimeError, "Event loop is closed")
    assert mine == theirs


def test_debug_mode_takes_the_stock_paths(loop, stock, caplog):
    async def coro():
        pass

    def script(lp):
        lp.set_debug(True)
        lp.slow_callback_duration = 0.01
        h = lp.call_soon(time.sleep, 0.02)
        t = lp.call_later(0, print)
        out = [
            bool(h._source_traceback),
            bool(t._source_traceback),
            h._source_traceback[-1].name,
            error_of(lp.call_soon, coro),
            error_of(lp.call_soon, 42),
            error_of(lp.call_later, 0, coro),
        ]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            lp.run_until_complete(asyncio.sleep(0.01))
        out.append(any("Executing <Handle sleep(0.02)" in r.getMessage() for r in caplog.records))
        lp.set_debug(False)
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[0] and mine[-1]
    assert mine == theirs


def test_debug_switched_on_by_a_callback(loop, stock, caplog):
    """A turn that starts out of debug mode and enters it: the callbacks after
    the switch are timed, as the stock turn checks _debug per callback."""

    def script(lp):
        lp.set_debug(False)  # even under PYTHONASYNCIODEBUG
        lp.slow_callback_duration = 0.01
        lp.call_soon(lp.set_debug, True)
        lp.call_soon(time.sleep, 0.02)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            lp.run_until_complete(asyncio.sleep(0))
        lp.set_debug(False)
        return [r.getMessage().split(" took ")[0] for r in caplog.records
                if r.getMessage().startswith("Executing")]

    mine, theirs = both(loop, stock, script)
    assert mine == ["Executing <Handle sleep(0.02)>"]
    assert mine == theirs


def test_time_overridden_by_subclass_and_instance():
    class Fake(uringloop.Loop):
        def time(self):
            return 1000.0

    lp = Fake()
    try:
        assert lp.call_later(5, print).when() == 1005.0
        lp.time = lambda: 2000.0
        assert lp.call_later(5, print).when() == 2005.0
    finally:
        lp.close()


def test_call_at_overridden_by_subclass_is_used_by_call_later():
    calls = []

    class Sub(uringloop.Loop):
        def call_at(self, when, callback, *args, context=None):
            calls.append(when)
            return super().call_at(when, callback, *args, context=context)

    lp = Sub()
    try:
        h = lp.call_later(3, print)
        assert calls == [h.when()]
    finally:
        lp.close()


def test_time_is_monotonic(loop):
    a = time.monotonic()
    b = loop.time()
    c = time.monotonic()
    assert a <= b <= c


@pytest.mark.parametrize("debug", [False, True], ids=["native", "debug"])
def test_timers_within_a_millisecond_run_after_one_wait(loop, debug):
    """A timer's wait is rounded up to the whole millisecond, as the stock
    selector rounds it (math.ceil(timeout * 1e3) * 1e-3): nine timers 0.1 to
    0.9 ms away all run after the first wait (none, if the machine stalled
    past them first). A nanosecond-precise wait woke for each, up to nine
    kernel waits per batch. Ten batches, so that a few stalls of a loaded
    machine cannot hide precise waits. The bound allows a few batches of two
    waits: on a 2-CPU Xeon VM about 1 batch in 100 took a second wait on
    epoll (inside pytest only; not reproduced in 20,000 batches outside it,
    cause not found), where precise waits would take up to 90. The debug turn
    is the Python one (loop._Turn.select)."""
    loop.set_debug(debug)

    async def batch():
        fired = []
        done = loop.create_future()

        def fire(tag):
            fired.append(tag)
            if tag == 9:
                done.set_result(None)

        t0 = loop.time()
        for k in range(1, 10):
            loop.call_at(t0 + k * 0.0001, fire, k)
        await done
        return fired

    async def main():
        before = loop.engine_stats()["waits"]
        fired = [await batch() for _ in range(10)]
        return loop.engine_stats()["waits"] - before, fired

    waits, fired = run_in(loop, main())
    assert fired == [list(range(1, 10))] * 10
    assert waits <= 15, waits


def test_timers_never_run_early(any_loop):
    """The stock rule: a timer runs in the first turn after which
    time() + clock_resolution > when; rounding the wait up keeps that."""
    lp = any_loop
    res = lp._clock_resolution
    early = []
    left = [300]
    done = lp.create_future()

    def fire(when):
        if time.monotonic() + res <= when:
            early.append(when - time.monotonic())
        left[0] -= 1
        if not left[0]:
            done.set_result(None)

    async def main():
        rnd = random.Random(7)
        for _ in range(left[0]):
            when = lp.time() + rnd.uniform(0, 0.003)
            lp.call_at(when, fire, when)
        await done

    run_in(lp, main())
    assert early == []


def test_replaced_containers_still_work(loop):
    """A _ready or _scheduled replaced by something else sends the turn down the
    stock Python path instead of misreading it."""
    ran = []
    loop._ready = collections.deque()
    loop.call_soon(ran.append, 1)
    loop._scheduled = []
    loop.call_later(0, ran.append, 2)
    run_in(loop, asyncio.sleep(0.01))
    assert ran == [1, 2]


def test_call_soon_threadsafe_from_many_threads_while_blocked(loop):
    got = []
    done = loop.create_future()
    n = 400

    def add(i):
        got.append(i)
        if len(got) == n:
            done.set_result(None)

    def worker(k):
        for i in range(100):
            loop.call_soon_threadsafe(add, k * 100 + i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]

    async def main():
        for t in threads:
            t.start()
        await done

    run_in(loop, main())
    for t in threads:
        t.join(5)
    assert sorted(got) == list(range(n))


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals are delivered to the main thread only",
)
def test_sigint_interrupts_a_blocking_turn(loop):
    """A signal that arrives while the native turn waits in the kernel runs
    Python's handler at once: here the default SIGINT handler raises."""
    skip_unless_wait_syscalls_known()
    main_tid = threading.get_native_id()
    main_ident = threading.get_ident()
    at_kill = {}

    def kill_when_asleep():  # a state check: the signal always lands in the wait
        wait_until_sleeping(main_tid)
        at_kill["waits"] = loop.engine_stats()["waits"]  # the sleeper cannot change it now
        # to the waiting thread itself: kill(getpid()) lets the kernel pick any
        # thread that does not block SIGINT (this one, a leftover executor
        # thread), and one taken by another thread does not end this thread's
        # syscall with EINTR (decision 385's failures of this test, with
        # pytest started in the background, were more likely SIGINT ignored:
        # decision 703, below)
        signal.pthread_kill(main_ident, signal.SIGINT)

    # Python's default handler, whatever this process inherited: a pytest
    # started in the background by a shell without job control (`cmd &`)
    # begins with SIGINT ignored, Python then installs no handler for it, and
    # the signal was discarded: DID NOT RAISE on every kind (decision 703).
    # CI's legs run pytest under timeout(1), which catches SIGINT, so its
    # child starts with the default disposition.
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=kill_when_asleep, daemon=True)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(10))
    finally:
        thread.join(10)
        signal.signal(signal.SIGINT, old_handler)
    # the interrupted wait itself returned to Python: no further wait ran (the
    # sleep's own timer would otherwise be what ended it)
    assert loop.engine_stats()["waits"] == at_kill["waits"] + 1


def test_loop_is_collected(loop):
    """Handles and the loop reference each other; the core's GC support must let
    a closed, dropped loop go."""
    lp = uringloop.new_event_loop()
    lp.call_soon(print)
    lp.call_later(10, print)
    ref = weakref.ref(lp)
    lp.close()
    del lp
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("name", ["_debug", "_clock_resolution", "_stopping", "_ready"])
def test_attribute_deleted_by_a_callback_is_an_error_not_a_crash(loop, stock, name):
    """BaseEventLoop's attributes live in the C struct: one deleted under the
    turn raises AttributeError as the stock turn does, and puts back works."""

    def script(lp):
        saved = getattr(lp, name)

        def delete():
            delattr(lp, name)
            lp.call_later(0, print)  # a timer: the next turn reads _clock_resolution

        lp.call_soon(delete)
        lp.call_soon(print)
        try:
            with pytest.raises(AttributeError, match=name):
                lp.run_forever()
        finally:
            setattr(lp, name, saved)
            lp._stopping = False
        lp.call_soon(lp.stop)
        lp.run_forever()
        return True

    assert both(loop, stock, script) == (True, True)


def test_call_soon_bound_once_and_still_patchable(loop):
    """loop.call_soon is made once per loop (Task and Future look it up on every
    step); an instance attribute still replaces it, as on the stock loop, and
    the class attribute is the plain method."""
    from unittest import mock

    assert loop.call_soon is loop.call_soon
    ran = []
    type(loop).call_soon(loop, ran.append, "via the class")
    with mock.patch.object(loop, "call_soon") as patched:
        loop.call_soon(ran.append, "patched")
        patched.assert_called_once_with(ran.append, "patched")
    loop.call_soon(ran.append, "restored")
    run_in(loop, asyncio.sleep(0))
    assert ran == ["via the class", "restored"]
    with pytest.raises(TypeError):
        type(loop).call_soon(object(), print)


async def _named():
    await asyncio.sleep(0)
    return asyncio.current_task().get_name()


def test_create_task_as_stock(loop, stock):
    """create_task's C path (no factory, not debug) makes the same Task the stock
    method makes; every other case is the stock method itself."""
    var = contextvars.ContextVar("var", default="unset")

    async def read_var():
        return var.get()

    def script(lp):
        made = []
        out = []
        t1 = lp.create_task(_named(), name="one")
        t2 = lp.create_task(_named())
        t3 = lp.create_task(coro=_named())  # coro is positional-or-keyword
        made += [t1, t2, t3]
        out.append([type(t) for t in made])
        out.append([t._source_traceback for t in made])
        if sys.version_info >= (3, 11):
            ctx = contextvars.copy_context()
            ctx.run(var.set, "from ctx")
            made += [lp.create_task(read_var(), context=ctx, name="ctx"),
                     lp.create_task(read_var(), context=None)]
        out.append(lp.run_until_complete(asyncio.gather(*made))[:1])
        out.append([t.get_name() for t in made][:1] + [t.get_name() for t in made][3:4])
        coro = _named()
        out.append(error_of(lp.create_task, coro, bogus=1))
        out.append(error_of(lp.create_task, coro, coro))
        out.append(error_of(lp.create_task))
        coro.close()
        out.append(error_of(lp.create_task, 42))
        out.append(error_of(lp.create_task, None, name="x"))
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[0] == [asyncio.Task] * 3
    assert mine[3] == ["one"] + (["ctx"] if sys.version_info >= (3, 11) else [])
    assert all(e is not None for e in mine[4:]), mine[4:]
    assert mine == theirs


def test_create_task_context_values(loop, stock):
    if sys.version_info < (3, 11):
        pytest.skip("create_task(context=) exists from Python 3.11")
    var = contextvars.ContextVar("var", default="unset")

    async def read_var():
        await asyncio.sleep(0)
        return var.get()

    def script(lp):
        ctx = contextvars.copy_context()
        ctx.run(var.set, "from ctx")
        a = lp.create_task(read_var(), context=ctx)
        b = lp.create_task(read_var())
        return lp.run_until_complete(asyncio.gather(a, b))

    assert both(loop, stock, script) == (["from ctx", "unset"], ["from ctx", "unset"])


def test_create_task_debug_factory_closed_and_patched_as_stock(loop, stock):
    """The cases the C path hands to the stock method, and the lookups it must
    repeat per call: debug mode (the traceback ends at the caller), a task
    factory, a closed loop, a replaced asyncio.tasks.Task, a subclass whose
    get_debug() says yes."""
    from unittest import mock

    class Mine(asyncio.Task):
        pass

    def script(lp):
        out = []
        lp.set_debug(True)
        t = lp.create_task(_named())
        out.append((t._source_traceback[-1].name, t._source_traceback[-1].line))
        lp.run_until_complete(t)
        lp.set_debug(False)
        lp.set_task_factory(lambda loop, coro, **kw: Mine(coro, loop=loop, **kw))
        t = lp.create_task(_named(), name="f")
        out.append((type(t), lp.run_until_complete(t)))
        lp.set_task_factory(None)
        with mock.patch("asyncio.tasks.Task", Mine):
            t = lp.create_task(_named(), name="p")
        out.append((type(t), lp.run_until_complete(t)))
        coro = _named()
        with mock.patch.dict(asyncio.tasks.__dict__):
            del asyncio.tasks.Task
            out.append(error_of(lp.create_task, coro))
        coro.close()
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[0][0] == "script"
    assert mine[1] == (Mine, "f") and mine[2] == (Mine, "p")
    assert mine[3][0] is AttributeError
    assert mine == theirs

    class Noisy(uringloop.Loop):
        def get_debug(self):
            return True

    class StockNoisy(asyncio.SelectorEventLoop):
        def get_debug(self):
            return True

    def traced(lp):
        try:
            t = lp.create_task(_named())
            frame = t._source_traceback[-1]
            lp.run_until_complete(t)
            lp.close()
            coro = _named()
            err = error_of(lp.create_task, coro)
            coro.close()
            return frame.name, err
        finally:
            lp.close()

    assert traced(Noisy()) == traced(StockNoisy()) == (
        "traced", (RuntimeError, "Event loop is closed"))


def test_get_debug_as_stock(loop, stock):
    """get_debug() is a C method (decision 735): its answer (the _debug object
    itself, however set), what futures and tasks make of it (their source
    traceback), a deleted _debug, an instance attribute, a subclass calling
    super(): as on the stock loop."""

    def script(lp):
        out = [lp.get_debug()]
        lp.set_debug(True)
        out.append(lp.get_debug())
        out.append(lp.create_future()._source_traceback is not None)
        t = lp.create_task(_named())
        out.append(t._source_traceback is not None)
        lp.run_until_complete(t)
        lp.set_debug(False)
        out.append((lp.get_debug(), lp.create_future()._source_traceback))
        lp._debug = 0
        out.append(repr(lp.get_debug()))
        del lp._debug
        name = type(lp).__name__
        # (the stock Python get_debug reads our Core's `_debug` slot: from
        # 3.13 a member descriptor's AttributeError names the class with its
        # module, a known limit in docs/design.md, so that one is read as
        # the short name; get_debug and create_future must match as they are)
        qual = f"{type(lp).__module__}.{name}"
        stock_fn = asyncio.BaseEventLoop.get_debug.__get__(lp)
        for fn in (lp.get_debug, lp.create_future, stock_fn):
            err = error_of(fn)
            msg = err and (err[1].replace(qual, name) if fn is stock_fn else err[1])
            out.append(err and (err[0], msg.replace(name, "L")))
        lp._debug = False
        lp.get_debug = lambda: True
        out.append(lp.create_future()._source_traceback is not None)
        del lp.get_debug
        out.append((lp.get_debug(), lp.create_future()._source_traceback))
        return out

    mine, theirs = both(loop, stock, script)
    assert mine[:6] == [False, True, True, True, (False, None), "0"]
    assert mine[6] == (AttributeError, "'L' object has no attribute '_debug'")
    assert mine == theirs

    class Asks(uringloop.Loop):
        def get_debug(self):
            return [super().get_debug()]

    class StockAsks(asyncio.SelectorEventLoop):
        def get_debug(self):
            return [super().get_debug()]

    def sub(lp):
        try:
            return lp.get_debug(), lp.create_future()._source_traceback is not None
        finally:
            lp.close()

    assert sub(Asks()) == sub(StockAsks()) == ([False], True)


def test_loop_made_by_object_new_as_stock():
    """Core.__new__ is object.__new__ (decision 736), as the stock loops':
    an abstract subclass cannot be made, the arguments go to __init__ alone,
    instance attributes set and read back as on the stock loop."""
    import abc

    def make(base):
        class Abstract(base, metaclass=abc.ABCMeta):
            @abc.abstractmethod
            def extra(self): ...

        class Args(base):
            def __init__(self, a, *, b):
                super().__init__()
                self.got = (a, b)

        err = error_of(Abstract)
        lp = Args(1, b=2)
        try:
            lp.mine = "x"
            return (err[0], err[1].replace(base.__name__, "B")), lp.got, lp.mine
        finally:
            lp.close()

    mine, theirs = make(uringloop.Loop), make(asyncio.SelectorEventLoop)
    assert mine[0][0] is TypeError and "abstract" in mine[0][1]
    assert mine == theirs


def _chain(lp, steps, at=None):
    """A coroutine running a call_soon chain of ``steps`` callbacks (one per
    turn); ``at(k)`` is called from step k. Returns the steps run."""

    async def main():
        done = lp.create_future()
        count = [0]

        def step():
            count[0] += 1
            if at is not None:
                at(count[0])
            if count[0] < steps:
                lp.call_soon(step)
            else:
                done.set_result(count[0])

        lp.call_soon(step)
        return await done

    return main()


def test_epoll_turn_polls_only_while_an_op_is_in_flight():
    """Decision 291: a no-wait epoll turn skips epoll_wait(0) when no op is in
    flight (nothing it could return concerns an op), and polls on every turn
    while one is (the stock selector's promise: readiness is seen in the next
    turn, never starved by a stream of callbacks). Without the skip the first
    chain made one epoll_wait per turn."""
    lp = uringloop.Loop(backend="epoll")
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        before = lp.engine_stats()["enters"]
        run_in(lp, _chain(lp, 200))
        idle = lp.engine_stats()["enters"] - before

        async def waiting():
            recv = lp.create_task(lp.sock_recv(a, 10))
            await asyncio.sleep(0)  # the receive is in flight, waiting on a
            start = lp.engine_stats()["enters"]
            await _chain(lp, 200)
            polls = lp.engine_stats()["enters"] - start
            b.send(b"x")
            return polls, await recv

        polls, got = run_in(lp, waiting())
    finally:
        lp.close()
        a.close()
        b.close()
    assert idle <= 5, f"{idle} epoll_wait calls for 200 turns with nothing in flight"
    assert polls >= 200, f"only {polls} epoll_wait calls for 200 turns with a receive waiting"
    assert got == b"x"


def test_io_readiness_seen_within_a_turn_during_a_callback_chain(any_loop):
    """Data that arrives while callbacks keep every turn busy completes a
    waiting sock_recv within the next turns, as on the stock loop (whose
    selector polls each turn): neither the epoll skip (decision 291) nor the
    GIL-keeping probe (decision 290) may starve I/O."""
    lp = any_loop
    a, b = socket.socketpair()
    a.setblocking(False)
    seen = {}

    def at(k):
        if k == 20:
            b.send(b"ping")

    async def main():
        async def reader():
            data = await lp.sock_recv(a, 10)
            seen["step"] = steps[0]
            return data

        steps = [0]

        def count(k):
            steps[0] = k
            at(k)

        task = lp.create_task(reader())
        await asyncio.sleep(0)
        await _chain(lp, 60, count)
        return await task

    try:
        assert run_in(lp, main()) == b"ping"
    finally:
        a.close()
        b.close()
    # sent from step 20: stock sees it in the next turn and resumes the task in
    # the one after
    assert 20 <= seen["step"] <= 22, seen


def test_a_visible_completion_is_taken_without_a_wait():
    """Decision 290: when the turn would wait but the ring already shows a
    completion (deferred task work flagged by the kernel, or CQEs), the native
    turn takes it with a no-wait run, the GIL kept; a waiting run (GIL
    released) follows only if that found nothing. In a sock_* ping-pong inside
    one loop every reply is flagged before the turn: no turn waits. Without
    the probe every turn was a wait (two per round)."""
    lp = uringloop.Loop(backend="io_uring")
    if "TASKRUN_FLAG" not in lp._engine.info()["ring_flags"]:
        lp.close()
        pytest.skip("no IORING_SETUP_TASKRUN_FLAG (Linux < 5.19): deferred work is not visible")
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    rounds = 200

    async def main():
        async def echo():
            for _ in range(rounds):
                await lp.sock_sendall(b, await lp.sock_recv(b, 64))

        server = lp.create_task(echo())
        await lp.sock_sendall(a, b"hello")  # the first round may wait
        await lp.sock_recv(a, 64)
        start = lp.engine_stats()["waits"]
        for _ in range(rounds - 1):
            await lp.sock_sendall(a, b"hello")
            assert await lp.sock_recv(a, 64) == b"hello"
        waits = lp.engine_stats()["waits"] - start
        await server
        return waits

    try:
        waits = run_in(lp, main())
    finally:
        lp.close()
        a.close()
        b.close()
    assert waits <= rounds // 10, f"{waits} waiting runs for {rounds - 1} round trips"


def test_a_send_queued_from_python_makes_the_engine_ready(make_engine):
    """Decision 340 at the engine: a send submitted outside a run waits in the
    backlog for the next run, and ul_ready says 1 for it, so the turn submits
    it with a no-wait run (GIL kept) instead of a waiting one. Without the
    flag, ul_ready is 0 here (nothing in the CQ yet). epoll sends at submit
    (nothing waits), so it is not asked."""
    from uringloop.engine import lib

    eng = make_engine()
    if eng.backend != "io_uring":
        pytest.skip("epoll sends at submit: no send waits for the run")
    a, b = socket.socketpair()
    try:
        done = []
        eng.run(0)  # the ring is enabled and owned by this thread at its first run
        assert lib.ul_ready(eng._e) == 0
        eng.send(a.fileno(), b"ping", lambda *r: done.append(r))
        assert lib.ul_ready(eng._e) == 1  # the queued send
        eng.run(0)
        assert [r[0] for r in done] == [4]
        assert b.recv(16) == b"ping"
        assert lib.ul_ready(eng._e) == 0  # submitted and reaped: nothing left
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["io_uring", "io_uring-fallbacks"])
def test_a_turn_submits_its_queued_sends_without_a_wait(kind):
    """Decision 340: a stream write leaves at the end of the turn as an engine
    send that waits for the next run (decision 71). The next turn, with
    nothing else ready, used to submit it in the enter that waits (GIL
    released): the send completes inside that enter, so it never slept, but
    every turn of a transport ping-pong was a waiting run. A queued send now
    makes the turn run without a wait first (GIL kept): its completion and
    the peer's receive come back from that enter, and no turn waits. Since
    decision 305 the flush sends inline when the socket takes it all, so this
    loop-level count passes with or without 340; the engine-level test above
    is the one that fails without it."""
    from conftest import make_loop

    lp = make_loop(kind)
    a, b = socket.socketpair()
    rounds = 200
    msg = b"x" * 64

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.tr.write(data)

    class Client(asyncio.Protocol):
        def __init__(self):
            self.left, self.got, self.done = rounds, b"", lp.create_future()
            self.waits = None

        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.got += data
            if len(self.got) < len(msg):
                return
            self.got = b""
            self.left -= 1
            if self.left == rounds - 1:  # the first round may wait
                self.waits = lp.engine_stats()["waits"]
            if self.left:
                self.tr.write(msg)
            else:
                self.waits = lp.engine_stats()["waits"] - self.waits
                self.done.set_result(None)

    async def main():
        srv, _ = await lp.create_connection(Echo, sock=a)
        cli, proto = await lp.create_connection(Client, sock=b)
        try:
            cli.write(msg)
            await proto.done
            return proto.waits
        finally:
            srv.close()
            cli.close()

    try:
        waits = run_in(lp, main())
    finally:
        lp.close()
    assert waits <= rounds // 10, f"{waits} waiting runs for {rounds - 1} round trips"
