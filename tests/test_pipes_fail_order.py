"""A write pipe's failed write, and its close after the last write, where
the stock loop has them (decisions 960-965).

Stock's ``_UnixWritePipeTransport`` watches the pipe with a reader (the
read end closed: EPOLLERR, which its selector reports as readable and
writable) and, while bytes are buffered, with a writer. The selector queues
both callbacks behind what ``_ready`` held at the poll, reader first: the
reader closes with ``BrokenPipeError()``, and removing the writer cancels
its handle. A character device (a tty) has no reader: its writer's failed
``os.write`` calls ``_fatal_error``. Either way a callback queued before the
poll sees the transport open, and ``connection_lost`` comes a turn after the
poll. Ours took the write's failure in the I/O step, ahead of that callback,
on epoll (its write record comes before the watch's, 409) and, for a tty,
on every kind whose record came in that poll (960, 961).

Stock's writer that empties the buffer of a closing transport calls
``_call_connection_lost``, which closes the pipe right after
``connection_lost``: a callback later in that turn (a due timer) sees the
fd closed. Ours kept the pipe open until the peer watch's cancel had its
final record (the next run), 886; now it closes there once that cancel has
ended (962).

Every scenario runs on the stock loop too, which proves the expectation;
turns are counted by a callback that queues itself.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import subprocess
import sys

import pytest
from conftest import ANY_LOOP_KINDS, finish_loop, make_loop, require_uring, run_in
from transport_helpers import fd_state

_NOMULTISHOT = "io_uring-nomultishot"
_KINDS = [*ANY_LOOP_KINDS, _NOMULTISHOT]
_stock: dict = {}  # scenario -> the stock loop's outcome


def _loop(kind):
    if kind != _NOMULTISHOT:
        return make_loop(kind)
    require_uring()
    from uringloop import Loop, engine

    return Loop(backend="io_uring", options=engine.OPT_NO_MULTISHOT)


def _wait_closed_peer(fd):
    """Block until fd (a pipe's write end) has no reader: POLLERR."""
    pl = select.poll()
    pl.register(fd, 0)
    assert pl.poll(10_000), "the read end did not close within 10 s"


class _Counter:
    """Turns, counted by a callback that queues itself (first in each turn's
    _ready, so it looks before the turn's I/O callbacks run)."""

    def __init__(self, lp, look=None):
        self.lp, self.n, self.stop_at, self.look = lp, 0, None, look
        self.looks = []

    def tick(self):
        self.n += 1
        if self.look is not None:
            self.looks.append((self.n, *self.look()))
        if self.stop_at is None or self.n < self.stop_at:
            self.lp.call_soon(self.tick)


class _Writer(asyncio.Protocol):
    def __init__(self, ev, counter):
        self.ev, self.counter, self.t, self.fd = ev, counter, None, None

    def connection_made(self, t):
        self.t = t

    def connection_lost(self, exc):
        c = self.counter
        self.ev.append(
            (
                "lost",
                c.n,
                type(exc).__name__,
                exc.args if exc is not None else None,
                self.t.is_closing(),
                self.t.get_write_buffer_size(),
                fd_state(self.fd),
            )
        )
        lp = asyncio.get_running_loop()
        lp.call_soon(lambda: self.ev.append(("lost+1", c.n, fd_state(self.fd))))
        c.stop_at = c.n + 3


def _fail_behind_ready(kind, how, then, debug):
    """A write pipe with bytes buffered (200,000 B written, the pipe holds
    64 KiB); its read end closes in a callback (os.close, or a child that
    holds it exits while the callback waits for the pipe's POLLERR), which
    then queues a look at the transport; `then` acts from that look
    (abort(), close(), write())."""
    lp = _loop(kind)
    lp.set_debug(debug)
    handled = []
    lp.set_exception_handler(lambda loop, ctx: handled.append(ctx.get("message")))
    ev = []
    counter = _Counter(lp)
    w = _Writer(ev, counter)

    async def main():
        r, wfd = os.pipe()
        child = None
        if how == "child":
            cr, cw = os.pipe()
            code = f"import os; os.read({cr}, 1)"
            child = subprocess.Popen([sys.executable, "-c", code], stdin=r, pass_fds=(cr,))
            os.close(r)
            os.close(cr)
        await lp.connect_write_pipe(lambda: w, os.fdopen(wfd, "wb", 0))
        w.fd = wfd
        for _ in range(3):  # connection_made, the peer watch armed
            await asyncio.sleep(0)
        w.t.write(b"x" * 200_000)
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the rest waits (ours: its write is in flight)
        ev.append(("queued", w.t.get_write_buffer_size() > 0))

        def look():
            t = w.t
            ev.append(("look", counter.n, t.is_closing(), t.get_write_buffer_size()))
            if then == "abort":
                t.abort()
            elif then == "close":
                t.close()
            elif then == "write":
                t.write(b"y" * 1000)
                ev.append(("wrote", t.is_closing(), t.get_write_buffer_size()))

        def act():
            if child is None:
                os.close(r)
            else:
                os.write(cw, b"x")
                _wait_closed_peer(wfd)
            lp.call_soon(look)

        lp.call_soon(counter.tick)
        lp.call_soon(act)
        for _ in range(2000):
            if counter.stop_at is not None and counter.n >= counter.stop_at:
                break
            await asyncio.sleep(0)
        if child is not None:
            os.close(cw)
            await lp.run_in_executor(None, child.wait)

    try:
        run_in(lp, main(), 20)
    finally:
        problems = finish_loop(lp)
    assert not problems, problems
    return ev, handled


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("then", ["look", "abort", "close", "write"])
@pytest.mark.parametrize("how", ["close", "child"])
@pytest.mark.parametrize("kind", _KINDS)
def test_a_write_pipes_failed_write_waits_behind_the_callbacks_ready_at_the_poll(
    kind, how, then, debug
):
    """960: the read end closes with 134 KiB buffered; a look queued before
    the poll that sees it finds the transport open with its bytes, and what
    it does there (abort: connection_lost(None); close or write: still
    BrokenPipeError()) is stock's. Ours closed in the I/O step ahead of the
    look on epoll (True, 0; connection_lost a turn early)."""
    key = ("fail", how, then, debug)
    if key not in _stock:
        _stock[key] = _fail_behind_ready("stock", how, then, debug)
    ref = _stock[key]
    got = ref if kind == "stock" else _fail_behind_ready(kind, how, then, debug)
    ev, handled = ref
    assert ("queued", True) in ev, ref
    look = next(e for e in ev if e[0] == "look")
    assert look[2:3] == (False,) and look[3] > 0, ref
    lost = next(e for e in ev if e[0] == "lost")
    assert lost[1] == look[1] + 1, ref  # the turn after the poll's
    assert lost[2:4] == (("NoneType", None) if then == "abort" else ("BrokenPipeError", ())), ref
    assert not handled, ref
    assert got == ref


def _stdin_fails_behind_ready(kind, debug):
    """A child's stdin (create_subprocess_exec, PIPE) with 134 KiB buffered;
    the child exits when told, the callback waits for the pipe's POLLERR and
    queues a look; then drain()."""
    lp = _loop(kind)
    lp.set_debug(debug)
    ev = []
    counter = _Counter(lp)

    async def main():
        cr, cw = os.pipe()
        code = f"import os; os.read({cr}, 1)"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=subprocess.PIPE, pass_fds=(cr,)
        )
        os.close(cr)
        tr = proc.stdin.transport
        fd = tr.get_extra_info("pipe").fileno()
        counter.look = lambda: (tr.is_closing(), tr.get_write_buffer_size())
        for _ in range(3):
            await asyncio.sleep(0)
        proc.stdin.write(b"x" * 200_000)
        await asyncio.sleep(0)
        ev.append(("queued", tr.get_write_buffer_size() > 0))

        def look():
            ev.append(("look", counter.n, tr.is_closing(), tr.get_write_buffer_size()))

        def act():
            os.write(cw, b"x")
            _wait_closed_peer(fd)
            lp.call_soon(look)

        lp.call_soon(counter.tick)
        lp.call_soon(act)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ev.append(("after", counter.n, tr.is_closing()))
        try:
            await proc.stdin.drain()
            ev.append(("drain", "ok"))
        except Exception as e:  # stock: BrokenPipeError()
            ev.append(("drain", type(e).__name__, e.args))
        counter.stop_at = counter.n
        proc.stdin.close()
        try:
            await proc.stdin.wait_closed()
        except Exception as e:
            ev.append(("wait_closed", type(e).__name__, e.args))
        ev.append(("rc", await proc.wait()))
        os.close(cw)
        ev.append(("looks", counter.looks))

    try:
        run_in(lp, main(), 20)
    finally:
        problems = finish_loop(lp)
    assert not problems, problems
    return ev


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("kind", _KINDS)
def test_a_childs_stdin_fails_behind_the_callbacks_ready_at_the_poll(kind, debug):
    """960, a subprocess's stdin: the look queued before the poll finds it
    open, and drain() then raises the reader's BrokenPipeError() (ours, on
    epoll: closing already, and drain's ConnectionResetError('Connection
    lost'): its connection_lost had run a turn early)."""
    key = ("stdin", debug)
    if key not in _stock:
        _stock[key] = _stdin_fails_behind_ready("stock", debug)
    ref = _stock[key]
    got = ref if kind == "stock" else _stdin_fails_behind_ready(kind, debug)
    assert ("queued", True) in ref, ref
    look = next(e for e in ref if e[0] == "look")
    assert look[2] is False and look[3] > 0, ref
    assert ("drain", "BrokenPipeError", ()) in ref, ref
    assert got == ref


def _tty_fails_behind_ready(kind, soon):
    """A tty's slave as the write end (a character device: stock has no
    reader on it, its writer fails with EIO), 200,000 B written to it, its
    master closed in a callback (soon) or a task step, which then queues a
    look."""
    import pty
    import tty

    lp = _loop(kind)
    ev = []
    counter = _Counter(lp)
    w = _Writer(ev, counter)

    async def main():
        master, slave = pty.openpty()
        tty.setraw(slave)
        await lp.connect_write_pipe(lambda: w, open(slave, "wb", 0))
        w.fd = slave
        for _ in range(3):
            await asyncio.sleep(0)
        w.t.write(b"x" * 200_000)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ev.append(("queued", w.t.get_write_buffer_size() > 0))

        def look():
            ev.append(("look", w.t.is_closing()))

        def act():
            os.close(master)
            lp.call_soon(look)

        lp.call_soon(counter.tick)
        if soon:
            lp.call_soon(act)
        else:
            act()
        for _ in range(2000):
            if counter.stop_at is not None and counter.n >= counter.stop_at:
                break
            await asyncio.sleep(0)

    try:
        run_in(lp, main(), 20)
    finally:
        problems = finish_loop(lp)
    assert not problems, problems
    lost = next(e for e in ev if e[0] == "lost")
    # the bytes a tty takes vary from run to run, and io_uring's write to a
    # tty (the kernel's worker) may see EIO a turn after stock's select: the
    # order around the look is compared, not the turn of connection_lost
    return [e for e in ev if e[0] != "lost+1" and e[0] != "lost"] + [("lost", *lost[2:5])]


@pytest.mark.parametrize("soon", [False, True], ids=["task", "soon"])
@pytest.mark.parametrize("kind", _KINDS)
def test_a_failed_write_to_a_tty_waits_behind_the_callbacks_ready_at_the_poll(kind, soon):
    """961: stock's writer callback, whose os.write fails (EIO: the master
    closed), runs behind the look queued before the poll: False. Ours ran
    _fatal_error in the I/O step on epoll and io_uring-fallbacks (True)."""
    key = ("tty", soon)
    if key not in _stock:
        _stock[key] = _tty_fails_behind_ready("stock", soon)
    ref = _stock[key]
    got = ref if kind == "stock" else _tty_fails_behind_ready(kind, soon)
    assert ref == [
        ("queued", True),
        ("look", False),
        ("lost", "OSError", (errno.EIO, os.strerror(errno.EIO)), True),
    ], ref
    assert got == ref


def _last_write_closes(kind, debug, soon):
    """A write pipe closed with 34,464 B queued; a callback reads the pipe's
    64 KiB (the rest fits) and schedules call_later(0) (and, soon, a
    call_soon) looks at the fd: the next poll brings the last write, whose
    completion calls connection_lost; the timer, due in that turn, runs after
    it."""
    lp = _loop(kind)
    lp.set_debug(debug)
    ev = []
    pipe = []

    class P(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t

        def connection_lost(self, exc):
            ev.append(("lost", exc, fd_state(pipe[1]), pipe[0].closed))
            lp.call_soon(lambda: ev.append(("lost+1", fd_state(pipe[1]), pipe[0].closed)))

    async def main():
        r, w = os.pipe()
        p = P()
        pipe[:] = [os.fdopen(w, "wb", 0), w]
        await lp.connect_write_pipe(lambda: p, pipe[0])
        for _ in range(3):
            await asyncio.sleep(0)
        p.t.write(b"x" * 100_000)
        p.t.close()
        ev.append(("closed", p.t.get_write_buffer_size() > 0, fd_state(w)))
        await asyncio.sleep(0)
        done = lp.create_future()

        def check(tag):
            ev.append((tag, fd_state(w), pipe[0].closed))

        def drain():
            n = 0
            while n < 65536:
                n += len(os.read(r, 65536))
            lp.call_later(0, check, "timer")
            if soon:
                lp.call_soon(check, "soon")
            lp.call_later(0.05, done.set_result, None)

        lp.call_soon(drain)
        await done
        check("end")
        os.close(r)

    try:
        run_in(lp, main(), 20)
    finally:
        problems = finish_loop(lp)
    assert not problems, problems
    return ev


@pytest.mark.parametrize("soon", [False, True], ids=["timer", "soon"])
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("kind", _KINDS)
def test_a_write_pipe_its_last_write_ends_is_closed_for_the_turns_later_callbacks(
    kind, debug, soon
):
    """886, 962: stock's writer empties the buffer and calls
    _call_connection_lost, which closes the pipe right after connection_lost;
    the timer due in that turn sees EBADF and the pipe object closed. Ours
    kept it open until the peer watch's cancel had its final record."""
    key = ("last", debug, soon)
    if key not in _stock:
        _stock[key] = _last_write_closes("stock", debug, soon)
    ref = _stock[key]
    got = ref if kind == "stock" else _last_write_closes(kind, debug, soon)
    expect = [("closed", True, "open")]
    if soon:
        expect.append(("soon", "open", False))
    expect += [
        ("lost", None, "open", False),
        ("timer", "EBADF", True),
        ("lost+1", "EBADF", True),
        ("end", "EBADF", True),
    ]
    assert ref == expect, ref
    assert got == ref
