"""An adversarial review of the compiled SSL protocol (decisions 393-395, 402, 403).

Each scenario runs with the stock ``asyncio.sslproto.SSLProtocol`` and with
ours on the hand-fed harness of test_transport_tls_core.py (its helpers are
imported), and the two logs must be the same: the app's callbacks calling
back into the transport from inside the C read and write loops
(close/abort/set_protocol/pause/resume/write/limits), the raw transport's
pause_writing and connection_lost arriving during a flush, exceptions in
every callback (Exception, BaseException, KeyboardInterrupt), odd buffers
from the app's get_buffer and an ``sslobject_class`` whose read, write or
pending misbehave.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ssl
import sys

import pytest
from test_transport_tls_core import CLASSES, App, BufApp, Pair, both
from transport_helpers import pattern, tloop, tls

assert tloop and tls  # fixtures, imported for the tests below

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="3.10 keeps the stock SSL protocol (old _SSLPipe design)"
)

OURS = CLASSES.get("ours")


def catch_handler(loop, log):
    """Exception handler contexts into log: message, exception type and text,
    whether the handler ran inside the except clause, transport/protocol kinds."""

    def handler(lp, ctx):
        exc = ctx.get("exception")
        log.append(
            (
                "handler",
                ctx["message"],
                type(exc).__name__,
                str(exc),
                sys.exc_info()[1] is exc,
                type(ctx.get("transport")).__name__,
            )
        )

    loop.set_exception_handler(handler)


def digest(data):
    """What the app got, short: its length and a hash."""
    return len(data), hashlib.sha1(bytes(data)).hexdigest()[:12]


def run_scenario(loop, tls, cls, app, act, *, payloads=(b"x" * 100,), sslobject_class=None):
    """Handshake, install hooks (act(p)), feed the peer's records, run the
    loop; the log plus what the app got and what the peer decrypts."""
    p = Pair(loop, tls, cls, app, sslobject_class=sslobject_class)
    catch_handler(loop, app.log)
    try:
        act(p)
        for payload in payloads:
            data, _ = p.peer_records(payload)
            p.feed(data)
            p.turn()
        p.turn()
        app.log.append(("state", p.proto._state.name, digest(app.data)))
        if not p.raw.closed or p.raw.out:
            try:
                app.log.append(("peer", p.peer_read_all()))
            except ssl.SSLError as exc:
                app.log.append(("peer-error", type(exc).__name__))
    finally:
        loop.set_exception_handler(None)
    return list(app.log)  # a copy: re-reads still queued must not add to it


def hook(app, name, fn):
    """Wrap app.<name> so fn(app, *args) runs after the original (logged)."""
    orig = getattr(app, name)

    def wrapped(*args):
        r = orig(*args)
        fn(*args)
        return r

    setattr(app, name, wrapped)


# --------------------------------------------------------------------------
# the app's callbacks calling the transport from inside the C read loop

ACTIONS = {
    "close": lambda p: p.app_tr.close(),
    "abort": lambda p: p.app_tr.abort(),
    "pause_reading": lambda p: p.app_tr.pause_reading(),
    "pause_resume": lambda p: (p.app_tr.pause_reading(), p.app_tr.resume_reading()),
    "write": lambda p: p.app_tr.write(b"reply" * 100),
    "writelines": lambda p: p.app_tr.writelines([b"a" * 10, b"b" * 20000]),
    "limits0": lambda p: (p.app_tr.set_write_buffer_limits(0), p.app_tr.write(b"y" * 3000)),
    "size": lambda p: p.log.append(("size", p.app_tr.get_write_buffer_size())),
    "write_close": lambda p: (p.app_tr.write(b"bye" * 10), p.app_tr.close()),
    "force_close": lambda p: p.app_tr._force_close(None),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize(
    "buffered, where",
    [(False, "data"), (True, "data"), (True, "get_buffer")],
    ids=["copied", "buffered", "buffered-get_buffer"],
)
def test_app_callback_calls_transport(tloop, tls, action, buffered, where):
    """data_received/buffer_updated (or get_buffer) calls the transport; three
    records arrive in one feed and two more in later ones."""

    def run(cls):
        log = []
        app = BufApp(log, size=700) if buffered else App(log)
        calls = []

        def act(p):
            def once(*args):
                if not calls:
                    calls.append(1)
                    ACTIONS[action](p)

            name = (
                "get_buffer"
                if where == "get_buffer"
                else ("buffer_updated" if buffered else "data_received")
            )
            hook(app, name, once)
            if buffered:
                p.proto._app_protocol_get_buffer = app.get_buffer
                p.proto._app_protocol_buffer_updated = app.buffer_updated

        return run_scenario(
            tloop, tls, cls, app, act, payloads=[pattern(3000, 1), pattern(500, 2), pattern(20, 3)]
        )

    both(run)


@pytest.mark.parametrize("to_buffered", [False, True], ids=["to-copied", "to-buffered"])
@pytest.mark.parametrize("buffered", [False, True], ids=["copied", "buffered"])
def test_set_protocol_inside_callback(tloop, tls, buffered, to_buffered):
    def run(cls):
        log = []
        app = BufApp(log, size=700) if buffered else App(log)
        new_log = []
        new = BufApp(new_log, size=300) if to_buffered else App(new_log)

        def act(p):
            name = "buffer_updated" if buffered else "data_received"
            hook(
                app,
                name,
                lambda *a: (
                    p.app_tr.set_protocol(new)
                    if new_log == [] and not new_log.append("set")
                    else None
                ),
            )
            if buffered:
                p.proto._app_protocol_buffer_updated = app.buffer_updated

        out = run_scenario(tloop, tls, cls, app, act, payloads=[pattern(3000, 1), pattern(900, 2)])
        return out + new_log + [digest(new.data)]

    both(run)


def test_eof_received_writes_and_closes(tloop, tls):
    def run(cls):
        log = []
        app = App(log)

        def act(p):
            hook(app, "eof_received", lambda: (p.app_tr.write(b"late"), p.app_tr.close()))

        p_holder = []

        def act2(p):
            act(p)
            p_holder.append(p)

        run_scenario(tloop, tls, cls, app, act2, payloads=[pattern(100, 1)])
        p = p_holder[0]
        p.feed(p.peer_close_notify())
        p.turn()
        log.append(("end", p.proto._state.name, p.raw.closed))
        return log

    both(run)


# --------------------------------------------------------------------------
# the raw transport during a flush


class PausingRaw:
    """The raw transport's write calls the SSL protocol's pause_writing (its
    buffer went over the high-water mark), or connection_lost."""

    def __init__(self, p, what):
        self.p, self.what, self.done = p, what, False
        orig = p.raw.write

        def write(data):
            orig(data)
            if not self.done:
                self.done = True
                p.log.append(("raw.write-hook", what))
                if what == "pause":
                    p.proto.pause_writing()
                    p.loop.call_soon(p.proto.resume_writing)
                else:
                    p.proto.connection_lost(None)

        p.raw.write = write


@pytest.mark.parametrize("what", ["pause", "lost"])
@pytest.mark.parametrize("via", ["app-write", "read-reply"])
def test_raw_transport_reacts_during_flush(tloop, tls, what, via):
    def run(cls):
        log = []
        app = App(log)

        def act(p):
            PausingRaw(p, what)
            if via == "app-write":
                p.app_tr.write(b"w" * 5000)
                p.app_tr.write(b"v" * 100)
            else:
                hook(app, "data_received", lambda d: p.app_tr.write(b"r" * 100))

        return run_scenario(tloop, tls, cls, app, act, payloads=[pattern(200, 1), pattern(10, 2)])

    both(run)


def test_pause_writing_callback_writes_and_closes(tloop, tls):
    """The app's pause_writing (called from the C write's flow-control check)
    writes again and closes; resume_writing writes."""

    def run(cls):
        log = []
        app = App(log)

        def act(p):
            p.app_tr.set_write_buffer_limits(high=100)
            hook(app, "pause_writing", lambda: p.app_tr.write(b"more" * 100))
            hook(app, "resume_writing", lambda: p.app_tr.write(b"again"))
            p.raw.write = lambda data, w=p.raw.write: (
                (w(data), p.proto.pause_writing()) if not p.proto._ssl_writing_paused else w(data)
            )
            p.app_tr.write(b"a" * 1000)
            p.proto.resume_writing()
            p.app_tr.close()

        return run_scenario(tloop, tls, cls, app, act, payloads=[])

    both(run)


# --------------------------------------------------------------------------
# exceptions


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
@pytest.mark.parametrize(
    "where", ["data_received", "get_buffer", "buffer_updated", "eof_received", "pause_writing"]
)
def test_exception_in_app_callback(tloop, tls, exc, where):
    def run(cls):
        log = []
        buffered = where in ("get_buffer", "buffer_updated")
        app = BufApp(log, size=700) if buffered else App(log)

        def bad(*args):
            log.append(("raise", where))
            raise exc("app")

        def act(p):
            setattr(app, where, bad)
            if buffered:
                p.proto._app_protocol_get_buffer = app.get_buffer
                p.proto._app_protocol_buffer_updated = app.buffer_updated
            if where == "pause_writing":
                p.app_tr.set_write_buffer_limits(high=10)

        p = Pair(tloop, tls, cls, app)
        catch_handler(tloop, log)
        try:
            act(p)
            if where == "pause_writing":
                try:
                    p.app_tr.write(b"z" * 100)
                except BaseException as e:
                    log.append(("raised", type(e).__name__))
            payload = pattern(2000, 1)
            data, _ = p.peer_records(payload)
            if where == "eof_received":
                data += p.peer_close_notify()
            try:
                p.feed(data)
            except BaseException as e:
                log.append(("raised", type(e).__name__, e.__context__ is None))
            for _ in range(5):  # the re-reads call_soon scheduled raise too
                try:
                    p.turn()
                except BaseException as e:
                    log.append(("raised in turn", type(e).__name__))
            log.append(("state", p.proto._state.name, digest(app.data), p.raw.closed))
        finally:
            tloop.set_exception_handler(None)
        return list(log)

    both(run)


# --------------------------------------------------------------------------
# odd buffers from the app's get_buffer


BUFFERS = {
    "bytearray": lambda n: bytearray(n),
    "readonly": lambda n: memoryview(b"\0" * n),
    "zero": lambda n: memoryview(bytearray(0)),
    "none": lambda n: None,
    "list": lambda n: [0] * 10,
    "huge": lambda n: memoryview(bytearray(64 << 20)),
    "one": lambda n: memoryview(bytearray(1)),
}


@pytest.mark.parametrize("kind", sorted(BUFFERS))
def test_odd_app_buffers(tloop, tls, kind):
    def run(cls):
        log = []
        app = BufApp(log)
        bufs = []

        def get_buffer(hint):
            log.append("app.get_buffer")
            b = BUFFERS[kind](hint)
            bufs.append(b)
            return b

        def buffer_updated(n):
            log.append(("app.updated", n))
            app.data += bytes(bufs[-1][:n])

        def act(p):
            p.proto._app_protocol_get_buffer = get_buffer
            p.proto._app_protocol_buffer_updated = buffer_updated

        out = run_scenario(tloop, tls, cls, app, act, payloads=[pattern(3000, 1), pattern(10, 2)])
        bufs.clear()
        return out

    both(run)


# --------------------------------------------------------------------------
# an sslobject_class that misbehaves


class IntSub(int):
    pass


def odd_class(read=None, write=None, pending=None):
    """An SSLObject subclass whose read/write/pending results go through the
    given functions (result -> result), or raise."""

    def do_read(self, len=1024, buffer=None):
        r = ssl.SSLObject.read(self, len, buffer)
        return read(r) if read else r

    def do_write(self, data):
        r = ssl.SSLObject.write(self, data)
        return write(r) if write else r

    def do_pending(self):
        r = ssl.SSLObject.pending(self)
        return pending(r) if pending else r

    return type(
        "Odd", (ssl.SSLObject,), {"read": do_read, "write": do_write, "pending": do_pending}
    )


def raise_(exc):
    def f(r):
        raise exc

    return f


ODD = {
    "read-intsub": dict(read=lambda r: IntSub(r) if isinstance(r, int) else r),
    "read-bool": dict(read=lambda r: (r > 0) if isinstance(r, int) and r <= 1 else r),
    "read-raises": dict(read=raise_(ValueError("read failed"))),
    "read-bytearray": dict(read=lambda r: bytearray(r) if isinstance(r, bytes) else r),
    "write-intsub": dict(write=IntSub),
    "write-float": dict(write=float),
    "write-intsub-partial": dict(write=lambda r: IntSub(max(r - 10, 1))),
    "write-float-partial": dict(write=lambda r: float(r - 10) if r > 10 else r),
    "write-raises": dict(write=raise_(ValueError("write failed"))),
    "write-want-write": dict(write=raise_(ssl.SSLWantWriteError())),
    "pending-raises": dict(pending=raise_(ValueError("pending failed"))),
    "pending-none": dict(pending=lambda r: None),
    "pending-zero": dict(pending=lambda r: 0),
}


@pytest.mark.parametrize("odd", sorted(ODD))
@pytest.mark.parametrize("buffered", [False, True], ids=["copied", "buffered"])
def test_misbehaving_sslobject_class(tloop, tls, odd, buffered):
    def run(cls):
        log = []
        app = BufApp(log, size=700) if buffered else App(log)

        def act(p):
            p.app_tr.write(b"hello" * 10)

        return run_scenario(
            tloop,
            tls,
            cls,
            app,
            act,
            payloads=[pattern(3000, 1), pattern(10, 2)],
            sslobject_class=odd_class(**ODD[odd]),
        )

    both(run)


# --------------------------------------------------------------------------
# members replaced while a C function uses them


def test_buffer_updated_view_replaced_during_slice(tloop, tls):
    """nbytes's __index__ replaces _ssl_buffer_view while buffer_updated
    slices it: the old view stays alive until the slice is made, as the
    stock method's frame holds it (without that: a use after free)."""
    import weakref

    def run(cls):
        log = []
        app = App(log)
        p = Pair(tloop, tls, cls, app)
        data, _ = p.peer_records(b"q" * 50)
        buf = p.proto.get_buffer(len(data))
        buf[: len(data)] = data
        del buf
        n = len(data)
        keep = [p.proto._ssl_buffer]  # the bytes stay readable whatever happens
        old = weakref.ref(p.proto._ssl_buffer_view)

        class Evil:
            def __index__(self):
                p.proto._ssl_buffer = bytearray(p.proto._ssl_buffer)
                p.proto._ssl_buffer_view = memoryview(p.proto._ssl_buffer)
                gc.collect()
                log.append(("old view alive in __index__", old() is not None))
                return n

        p.proto.buffer_updated(Evil())
        p.turn()
        log.append(bytes(app.data))
        keep.clear()
        return list(log)

    log = both(run)
    assert log[-1] == b"q" * 50
    assert ("old view alive in __index__", True) in log


def test_fields_deleted_give_stock_attribute_error(tloop, tls):
    """A hot attribute deleted: the AttributeError Python code would get."""

    def run(cls):
        log = []
        app = App(log)
        p = Pair(tloop, tls, cls, app)
        catch_handler(tloop, log)
        try:
            del p.proto._outgoing_high_water
            p.app_tr.write(b"x" * 10)
            data, _ = p.peer_records(b"d" * 10)
            p.feed(data)
            p.turn()
        finally:
            tloop.set_exception_handler(None)
        return [x if x[0] != "handler" else x[:3] for x in log]

    both(run)


@pytest.mark.skipif(OURS is None, reason="3.11+ only")
def test_small_buffer_reread_then_close_mid_read(tloop, tls):
    """The re-read scheduled when the app's buffer fills calls _do_read (3.12+
    passes the bound method, 3.11 a lambda): either way the next turn reads
    the rest, in the FLUSHING state too."""

    def run(cls):
        log = []
        app = BufApp(log, size=100)

        def act(p):
            hook(
                app, "buffer_updated", lambda n: p.app_tr.close() if len(app.data) == 100 else None
            )
            p.proto._app_protocol_buffer_updated = app.buffer_updated

        return run_scenario(tloop, tls, cls, app, act, payloads=[pattern(1000, 1)])

    both(run)


@pytest.mark.skipif(OURS is None, reason="3.11+ only")
def test_many_protocols_are_freed(tloop, tls):
    """No reference cycle through the C members outlives gc (traverse/clear)."""
    import weakref

    refs = []
    for _ in range(3):
        log = []
        p = Pair(tloop, tls, OURS, App(log))
        data, _ = p.peer_records(b"x" * 10)
        p.feed(data)
        p.turn()
        p.app_tr.abort()
        p.turn()
        refs.append(weakref.ref(p.proto))
        del p
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


class ListApp(list, asyncio.Protocol):
    """An app whose data_received is a C method (list.count) that runs
    Python code (its items' __eq__) while it walks the list."""

    data_received = list.count

    def connection_made(self, transport):
        pass


def test_app_replaced_inside_a_c_data_received(tloop, tls):
    """data_received replaces the app protocol (set_protocol) while a C
    method of the app runs: the app stays alive until the call returns, as
    the stock frame's reference keeps it (without that: a use after free)."""
    import weakref

    def run(cls):
        log = []
        new = App(log)
        app = ListApp()
        p = Pair(tloop, tls, cls, App(log))
        p.app_tr.set_protocol(app)
        ref = weakref.ref(app)

        class Item:
            def __eq__(self, other):
                if not log.count("swap"):
                    log.append("swap")
                    p.app_tr.set_protocol(new)
                    gc.collect()
                    log.append(("old app alive in its data_received", ref() is not None))
                return False

        app.extend([Item(), 0, 1])
        del app
        data, _ = p.peer_records(b"z" * 20)
        p.feed(data)
        p.turn()
        data, _ = p.peer_records(b"y" * 20)
        p.feed(data)
        p.turn()
        log.append(bytes(new.data))
        return list(log)

    log = both(run)
    assert ("old app alive in its data_received", True) in log
    assert log[-1] == b"y" * 20


class ListRaw(list):
    """A raw transport whose write is a C method (list.count) that runs
    Python code (its items' __eq__) while it walks the list."""

    write = list.count

    def abort(self):
        pass

    def _force_close(self, exc):
        pass

    def close(self):
        pass


def test_raw_transport_dropped_inside_its_c_write(tloop, tls):
    """A synchronous connection_lost inside the raw transport's write clears
    _transport: the raw transport stays alive until its write returns, as
    the stock frame's reference keeps it (without that: a use after free)."""
    import weakref

    def run(cls):
        log = []
        app = App(log)
        p = Pair(tloop, tls, cls, app)
        raw = ListRaw()
        ref = weakref.ref(raw)

        class Item:
            def __eq__(self, other):
                if not log.count("lost"):
                    log.append("lost")
                    p.proto.connection_lost(None)
                    gc.collect()
                    log.append(("raw alive in its write", ref() is not None))
                return False

        raw.extend([Item(), 0])
        p.proto._transport = raw
        del raw
        catch_handler(tloop, log)
        try:
            p.app_tr.write(b"w" * 100)  # the flush after the SSL write: raw.write
            p.turn()
        finally:
            tloop.set_exception_handler(None)
        return [x[:3] if x[0] == "handler" else x for x in log]

    log = both(run)
    assert ("raw alive in its write", True) in log
