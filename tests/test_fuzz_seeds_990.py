"""The difffuzz seeds 990009 and 990109 as plain programs (decisions 903-908).

990009 (`tools/difffuzz.py --callbacks --more --family tcp --seed 990009`,
every kind), shrunk: a aborts; b's eof_received keeps b open and queues two
callbacks, a write() of 1 B and a writelines() of 100 B and 16 KiB. Stock's
write() sends each at once: the first reaches a closed socket (the peer
answers with RST), the second meets EPIPE: connection_lost(BrokenPipeError).
Ours queued both for the turn's flush, which sent them as one: no error,
connection_lost(None) at the end. Writes after the peer's EOF now leave at
once as stock's (903). The same on a Unix socket, where stock's first
write() already fails.

990109 (`--fast --callbacks --more --family tcp --seed 990109`, io_uring
kinds), shrunk: a's loop.sendfile() of 1,000,000 B to b, an echoing
BufferedProtocol whose data callback at 150,000 B writes 16 KiB and raises
(the transport aborts); b's connection_lost writes 1,000,000 B on a. What
each end received is a prefix of what the other wrote, in the order its
transport took it: the file, then the write accepted once the sendfile
ended (the fuzzer's record had them the other way round, 904).

990104 (`--fast --callbacks --more --family tcp --seed 990104`, io_uring
kinds, with or without the multishot receive), shrunk: b's loop.sendfile()
of 1,000,000 B to a; a's first data_received (at 5,000 B or more) queues a
write() on b with call_soon. The first sendfile(2) hands the kernel the
whole file and a's bytes arrive before stock's add_writer registers b:
its select then reports a's reader before b's writer, and the write runs
before the sendfile's task has ended ("sendfile is in progress").
io_uring posted b's writability poll, complete at its submission, ahead
of a's receive the kernel held as deferred work: the sendfile had ended
when the write ran (932).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import pytest
from conftest import ANY_LOOP_KINDS, finish_loop, make_loop, require_uring, run_in
from transport_helpers import pattern, until

_stock: dict = {}  # scenario -> the stock loop's outcome


async def _wait(pred, what):
    await until(pred, what, turns=4000, step=0.001)


class _Peer(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t

    def eof_received(self):
        return True


class _KeptOpen(asyncio.Protocol):
    """b: keeps itself open at EOF and writes from there (where: 'soon', two
    call_soon'd callbacks as 990009; 'eof', both from eof_received itself)."""

    def __init__(self, where):
        self.where, self.ev, self.t = where, [], None

    def connection_made(self, t):
        self.t = t
        self.ev.append("made")

    def data_received(self, data):
        self.ev.append(("data", len(data)))

    def _w1(self):
        self.ev.append(("write", self.t.write(b"x"), self.t.get_write_buffer_size()))

    def _w2(self):
        lost = self.t.is_closing()  # Unix: the first write() met EPIPE
        r = self.t.writelines([b"y" * 100, b"z" * 16384])
        size = self.t.get_write_buffer_size()
        if lost and sys.version_info >= (3, 12):
            # stock 3.12+'s writelines() after connection_lost leaves its
            # parts in the buffer (its bug, decisions 499(g), 806): ours
            # drops them as write() does; not compared
            size = "lost"
        self.ev.append(("writelines", r, size, self.t.is_closing()))

    def eof_received(self):
        self.ev.append("eof")
        if self.where == "soon":
            loop = asyncio.get_running_loop()
            loop.call_soon(self._w1)
            loop.call_soon(self._w2)
        else:
            self._w1()
            self._w2()
        return True

    def connection_lost(self, exc):
        self.ev.append(("lost", type(exc).__name__ if exc is not None else None))


def _writes_after_eof(kind, family, where, debug):
    lp = make_loop(kind)
    lp.set_debug(debug)
    handled = []
    lp.set_exception_handler(lambda loop, ctx: handled.append(ctx.get("message")))
    b = _KeptOpen(where)
    tmp = tempfile.mkdtemp(prefix="fuzz990-")
    path = os.path.join(tmp, "s")

    async def main():
        if family == "tcp":
            srv = await lp.create_server(lambda: b, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            ta, _ = await lp.create_connection(_Peer, "127.0.0.1", port)
        else:
            srv = await lp.create_unix_server(lambda: b, path)
            ta, _ = await lp.create_unix_connection(_Peer, path)
        await _wait(lambda: b.t is not None, "b's connection_made")
        ta.abort()  # nothing queued: a FIN, then a closed socket
        await _wait(lambda: any(e[0] == "lost" for e in b.ev if type(e) is tuple), "b's lost")
        srv.close()
        await srv.wait_closed()

    try:
        run_in(lp, main())
    finally:
        problems = finish_loop(lp)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.rmdir(tmp)
    assert not problems, problems
    return {"events": b.ev, "handler": handled}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("where", ["soon", "eof"])
@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("kind", ANY_LOOP_KINDS)
def test_writes_after_the_peers_eof_leave_at_once(kind, family, where, debug):
    """990009 (903): after the peer's EOF each write() and writelines() is
    sent at once, as stock's: the second meets the closed peer (EPIPE)
    in the call, and the buffer sizes read right after are stock's."""
    key = (family, where, debug)
    if key not in _stock:
        _stock[key] = _writes_after_eof("stock", family, where, debug)
    ref = _stock[key]
    got = ref if kind == "stock" else _writes_after_eof(kind, family, where, debug)
    assert any(e == ("lost", "BrokenPipeError") for e in ref["events"]), ref
    assert got == ref


class _Echo(asyncio.BufferedProtocol):
    """b of 990109: echoes what it reads; at 150,000 B it writes 16 KiB and
    raises (a fatal error: abort); its connection_lost writes 1 MB on a."""

    def __init__(self, run):
        self.run, self.buf, self.data, self.t = run, bytearray(65536), bytearray(), None
        self.fired, self.lost = False, False

    def connection_made(self, t):
        self.t = t

    def get_buffer(self, n):
        return self.buf

    def buffer_updated(self, n):
        self.data += self.buf[:n]
        self.run["sent_b"] += self.buf[:n]
        self.t.write(self.buf[:n])
        if len(self.data) >= 150_000 and not self.fired:
            self.fired = True
            more = pattern(16384, 5)
            self.run["sent_b"] += more
            self.t.write(more)
            raise ValueError("990109's hook")

    def connection_lost(self, exc):
        self.lost = True
        big = pattern(1_000_000, 9)
        try:
            self.run["ta"].write(big)
        except RuntimeError as e:  # io_uring-fallbacks: the sendfile still runs
            self.run["late"] = str(e)
        else:
            self.run["later"] = big


class _Reader(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()

    def connection_made(self, t):
        self.t = t

    def data_received(self, d):
        self.data += d

    def eof_received(self):
        return True


@pytest.mark.parametrize("kind", ANY_LOOP_KINDS)
def test_each_end_receives_a_prefix_of_its_peers_writes_990109(kind):
    """990109 (904): what b received is a prefix of the file followed by the
    write a's transport took after the sendfile ended; what a received is a
    prefix of b's echo and its 16 KiB."""
    lp = make_loop(kind)
    handled = []
    lp.set_exception_handler(lambda loop, ctx: handled.append(ctx.get("message")))
    run = {"sent_b": bytearray()}
    b = _Echo(run)
    a = _Reader()
    file_data = pattern(1_000_000, 3)
    f = tempfile.TemporaryFile()
    f.write(file_data)
    f.seek(0)

    async def main():
        srv = await lp.create_server(lambda: b, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        ta, _ = await lp.create_connection(lambda: a, "127.0.0.1", port)
        run["ta"] = ta
        await _wait(lambda: b.t is not None, "b's connection_made")
        try:
            res = await asyncio.wait_for(lp.sendfile(ta, f), 10)
        except (ConnectionError, OSError) as exc:
            res = exc
        await _wait(lambda: b.lost, "b's connection_lost")
        for _ in range(50):  # let what is on its way arrive
            await asyncio.sleep(0.002)
        ta.abort()
        srv.close()
        await srv.wait_closed()
        return res

    try:
        res = run_in(lp, main(), 30)
    finally:
        f.close()
        problems = finish_loop(lp)
    assert not problems, problems
    assert b.fired, len(b.data)
    assert handled == ["Fatal error: protocol.buffer_updated() call failed."]
    sent_a = file_data if res == 1_000_000 else file_data[: len(b.data)]
    if "later" in run:
        assert res == 1_000_000, res  # a write() taken only after the file
        sent_a = file_data + run["later"]
    assert sent_a.startswith(bytes(b.data)), (len(b.data), res)
    assert bytes(run["sent_b"]).startswith(bytes(a.data)), len(a.data)
    assert len(b.data) >= 150_000


_NOMULTISHOT = "io_uring-nomultishot"  # difffuzz's kind (923): 895 blamed that receive


def _loop_990104(kind):
    if kind != _NOMULTISHOT:
        return make_loop(kind)
    require_uring()
    from uringloop import Loop, engine

    return Loop(backend="io_uring", options=engine.OPT_NO_MULTISHOT)


class _Hooked(asyncio.Protocol):
    """a of 990104: its first data_received at 5,000 B or more queues a
    write() on b (and, with stop, stops the loop, as the fuzzer's hook)."""

    def __init__(self, run, stop):
        self.run, self.stop, self.n, self.t, self.hooked = run, stop, 0, None, False

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        self.n += len(data)
        if self.hooked or self.n < 5000:
            return
        self.hooked = True
        loop = asyncio.get_running_loop()
        loop.call_soon(self._write)
        if self.stop:
            loop.stop()

    def _write(self):
        try:
            self.run["tb"].write(b"w" * 1000)
        except RuntimeError as e:
            self.run["write"] = ("raised", str(e), self.run["task"].done())
        else:
            self.run["write"] = ("ok", None, self.run["task"].done())

    def eof_received(self):
        return True


def _sendfile_then_hook(kind, stop, debug):
    lp = _loop_990104(kind)
    lp.set_debug(debug)
    handled = []
    lp.set_exception_handler(lambda loop, ctx: handled.append(ctx.get("message")))
    run = {}
    a = _Hooked(run, stop)
    b = _Peer()
    file_data = pattern(1_000_000, 4)
    f = tempfile.TemporaryFile()
    f.write(file_data)
    f.seek(0)

    async def main():
        srv = await lp.create_server(lambda: b, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        ta, _ = await lp.create_connection(lambda: a, "127.0.0.1", port)
        await _wait(lambda: getattr(b, "t", None) is not None, "b's connection_made")
        run["tb"] = b.t
        return ta, srv

    async def rest():
        if "task" not in run:
            # started in the run that waits for it: a loop stopped between
            # its first sendfile(2) and the next run is another case (932)
            run["task"] = lp.create_task(lp.sendfile(run["tb"], f))
        res = await asyncio.wait_for(asyncio.shield(run["task"]), 10)
        await _wait(lambda: "write" in run, "a's hook's write")
        await _wait(lambda: a.n >= len(file_data) + (run["write"][0] == "ok") * 1000, "a's bytes")
        return res

    try:
        ta, srv = run_in(lp, main())
        try:
            res = run_in(lp, rest(), 30)
        except RuntimeError as e:  # a's hook stopped the loop: run it again
            assert stop and "stopped before" in str(e), e
            res = run_in(lp, rest(), 30)
        ta.abort()
        run["tb"].abort()  # (3.12+'s wait_closed waits for it)
        srv.close()
        run_in(lp, srv.wait_closed())
    finally:
        f.close()
        problems = finish_loop(lp)
    assert not problems, problems
    return {"sendfile": res, "write": run["write"], "a": a.n, "handler": handled}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("stop", [False, True], ids=["run", "stop"])
@pytest.mark.parametrize("kind", [*ANY_LOOP_KINDS, _NOMULTISHOT])
def test_a_write_queued_by_the_peers_first_read_finds_the_sendfile_running_990104(
    kind, stop, debug
):
    """990104 (932): b's sendfile of 1,000,000 B; a's first read queues a
    write() on b, which raises as stock's: the sendfile is still running,
    its writer reported behind a's reader; a gets the file and nothing more.
    (TCP only: a Unix socket the first sendfile(2) filled is not writable at
    the registration, so no kind reports its writer early there.)"""
    key = ("990104", stop, debug)
    if key not in _stock:
        _stock[key] = _sendfile_then_hook("stock", stop, debug)
    ref = _stock[key]
    got = ref if kind == "stock" else _sendfile_then_hook(kind, stop, debug)
    assert ref["write"] == ("raised", "unable to write; sendfile is in progress", False), ref
    assert ref["sendfile"] == 1_000_000 and ref["a"] == 1_000_000, ref
    assert got == ref


class _Writer(asyncio.Protocol):
    """a of 993067's trace (950): writes past what the socket takes, so a
    send waits for the peer; records what it saw."""

    def __init__(self, run):
        self.run, self.t = run, None

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        self.run.setdefault("a", []).append(("data", len(data)))

    def eof_received(self):
        self.run.setdefault("a", []).append(("eof",))
        return True

    def connection_lost(self, exc):
        self.run.setdefault("a", []).append(("lost", type(exc).__name__))


class _Aborted(asyncio.Protocol):
    """b: paused before a writes (a's bytes stay unread), aborted by the
    test; its connection_lost queues a look at a.is_closing() with
    call_soon."""

    def __init__(self, run, a):
        self.run, self.a, self.t = run, a, None

    def connection_made(self, t):
        self.t = t

    def connection_lost(self, exc):
        self.run["b"] = type(exc).__name__
        asyncio.get_running_loop().call_soon(self._look)

    def _look(self):
        self.run.setdefault("a", []).append(("is_closing", self.a.t.is_closing()))


def _send_fails_behind_ready(kind, family, debug):
    lp = _loop_990104(kind)
    lp.set_debug(debug)
    handled = []
    lp.set_exception_handler(lambda loop, ctx: handled.append(ctx.get("message")))
    run = {}
    a = _Writer(run)
    b = _Aborted(run, a)
    tmp = tempfile.TemporaryDirectory()

    async def main():
        if family == "unix":
            path = os.path.join(tmp.name, "s")
            srv = await lp.create_unix_server(lambda: b, path)
            await lp.create_unix_connection(lambda: a, path)
        else:
            srv = await lp.create_server(lambda: b, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            await lp.create_connection(lambda: a, "127.0.0.1", port)
        await _wait(lambda: b.t is not None, "b's connection_made")
        await asyncio.sleep(0.01)  # (3.10's stock reader is added after connection_made)
        b.t.pause_reading()
        a.t.write(pattern(8_000_000, 3))
        for _ in range(5):  # the kernel took what it takes; the rest waits
            await asyncio.sleep(0.01)
        run["queued"] = a.t.get_write_buffer_size() > 0
        b.t.abort()
        await _wait(lambda: run.get("a", [])[-1:] and run["a"][-1][0] == "lost", "a's end")
        srv.close()
        await srv.wait_closed()

    try:
        run_in(lp, main())
    finally:
        problems = finish_loop(lp)
        tmp.cleanup()
    assert not problems, problems
    return {**run, "handler": handled}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("family", ["unix", "tcp"])
@pytest.mark.parametrize("kind", [*ANY_LOOP_KINDS, _NOMULTISHOT])
def test_a_send_that_fails_waits_behind_the_callbacks_ready_at_the_poll_993067(kind, family, debug):
    """950: a's send waits for b, which is aborted with a's bytes unread;
    b's connection_lost queues a look at a.is_closing(). The poll that
    brings a's failed send has that look in _ready: stock's writer callback
    (and reader) run behind it, so a is not closing yet there (ours handled
    the send's failure in the I/O step, ahead of it: True)."""
    key = ("993067", family, debug)
    if key not in _stock:
        _stock[key] = _send_fails_behind_ready("stock", family, debug)
    ref = _stock[key]
    got = ref if kind == "stock" else _send_fails_behind_ready(kind, family, debug)
    assert ref["queued"] and ref["b"] == "NoneType", ref
    assert ref["a"][0] == ("is_closing", False), ref
    if (
        kind == "io_uring-fallbacks"
        and family == "unix"
        and got["a"][-1] == ("lost", "BrokenPipeError")
    ):
        # 464(b)'s Unix class: that kind's receive (between shots) has not
        # taken the reset by the poll that fails the send, so the send's
        # EPIPE ends a where stock's reader took ECONNRESET first (951)
        got = {**got, "a": [*got["a"][:-1], ("lost", "ConnectionResetError")]}
    assert got == ref
