"""Bad input: Python errors at submission, -errno records for bad fds.

Submission raises only for bad Python input (TypeError / ValueError) or a
closed engine (RuntimeError); a rejected submission leaves no op behind.
Everything the kernel rejects comes back as a record with -errno.
"""

from __future__ import annotations

import errno
import select
import socket

import pytest
from conftest import Collector, wait_done

from uringloop import engine


def noop_cb(res, more, data):
    raise AssertionError(f"callback of a rejected op was called: {res}, {more}, {data}")


# Each entry: name -> function(eng, fd, cb) submitting one op on fd.
OPS_ON_FD = {
    "recv": lambda eng, fd, cb: eng.recv(fd, cb),
    "recv_into": lambda eng, fd, cb: eng.recv_into(fd, bytearray(8), cb),
    "send": lambda eng, fd, cb: eng.send(fd, b"x", cb),
    "sendmsg": lambda eng, fd, cb: eng.sendmsg(fd, b"x", ("127.0.0.1", 9), cb, socket.AF_INET),
    "recvmsg": lambda eng, fd, cb: eng.recvmsg(fd, bytearray(8), cb, socket.AF_INET),
    "accept": lambda eng, fd, cb: eng.accept(fd, cb),
    "connect": lambda eng, fd, cb: eng.connect(fd, socket.AF_INET, ("127.0.0.1", 9), cb),
    "poll": lambda eng, fd, cb: eng.poll(fd, select.POLLIN, cb),
    "read": lambda eng, fd, cb: eng.read(fd, bytearray(8), cb),
    "write": lambda eng, fd, cb: eng.write(fd, b"x", cb),
    "shutdown": lambda eng, fd, cb: eng.shutdown(fd, socket.SHUT_WR, cb),
    "close_fd": lambda eng, fd, cb: eng.close_fd(fd, cb),
}


def assert_nothing_pending(eng):
    assert eng.in_flight == 0
    eng.run(0)  # and no record shows up for the rejected op (noop_cb would raise)
    col = Collector()
    eng.nop(col)  # the engine is still fine
    wait_done(eng, col)
    assert eng.in_flight == 0


@pytest.mark.parametrize("op", list(OPS_ON_FD))
def test_negative_fd_is_value_error(eng, op):
    with pytest.raises(ValueError):
        OPS_ON_FD[op](eng, -1, noop_cb)
    assert_nothing_pending(eng)


@pytest.mark.parametrize("bad_fd", ["3", 3.0, None, b"3"], ids=["str", "float", "None", "bytes"])
@pytest.mark.parametrize("op", ["recv", "recv_into", "send", "poll", "close_fd"])
def test_non_int_fd_is_type_error(eng, op, bad_fd):
    with pytest.raises(TypeError):
        OPS_ON_FD[op](eng, bad_fd, noop_cb)
    assert_nothing_pending(eng)


def test_cancel_fd_negative_is_value_error(eng):
    with pytest.raises(ValueError):
        eng.cancel_fd(-1)
    with pytest.raises(TypeError):
        eng.cancel_fd("0")


def test_read_only_buffers_are_type_errors(eng, socketpair):
    a, _ = socketpair()
    fd = a.fileno()
    with pytest.raises(TypeError):
        eng.recv_into(fd, b"read-only bytes", noop_cb)
    with pytest.raises(TypeError):
        eng.recv_into(fd, memoryview(b"read-only view"), noop_cb)
    with pytest.raises(TypeError):
        eng.read(fd, b"read-only bytes", noop_cb)
    with pytest.raises(TypeError):
        eng.recvmsg(fd, b"read-only bytes", noop_cb, socket.AF_INET)
    assert_nothing_pending(eng)


def test_str_data_is_type_error(eng, socketpair, udp_socket):
    a, _ = socketpair()
    with pytest.raises(TypeError):
        eng.send(a.fileno(), "text, not bytes", noop_cb)
    with pytest.raises(TypeError):
        eng.write(a.fileno(), "text, not bytes", noop_cb)
    u = udp_socket()
    with pytest.raises(TypeError):
        eng.sendmsg(u.fileno(), "text", u.getsockname(), noop_cb, socket.AF_INET)
    assert_nothing_pending(eng)


def test_negative_nbytes_is_value_error(eng, socketpair):
    a, _ = socketpair()
    with pytest.raises(ValueError):
        eng.recv_into(a.fileno(), bytearray(16), noop_cb, nbytes=-1)
    assert_nothing_pending(eng)


def test_nbytes_beyond_buffer_never_overruns(eng, socketpair):
    """nbytes larger than the buffer: rejected (ValueError) or clamped, but the
    bytes after the buffer must stay untouched."""
    a, b = socketpair()
    backing = bytearray(b"\xaa" * 64)
    view = memoryview(backing)[:8]
    col = Collector()
    try:
        eng.recv_into(a.fileno(), view, col, nbytes=32)
    except ValueError:
        assert_nothing_pending(eng)
        return
    b.send(b"0123456789abcdefghijklmnopqrstuvwxyz")
    wait_done(eng, col)
    assert 0 < col.res <= 8
    assert backing[8:] == b"\xaa" * 56, "recv_into wrote past the end of the buffer"


def test_ops_on_closed_engine_raise_runtime_error(make_engine, socketpair):
    eng = make_engine()
    a, _ = socketpair()
    eng.close()
    with pytest.raises(RuntimeError):
        eng.nop(noop_cb)
    with pytest.raises(RuntimeError):
        eng.recv(a.fileno(), noop_cb)
    with pytest.raises(RuntimeError):
        eng.send(a.fileno(), b"x", noop_cb)
    with pytest.raises(RuntimeError):
        eng.poll(a.fileno(), select.POLLIN, noop_cb)


def test_run_or_close_from_a_completion_callback_is_refused(eng):
    """The records being delivered live in the engine: a callback may neither
    overwrite them (run) nor free them (close). Both raise; the engine goes on."""
    seen = []

    def cb(res, more, data):
        for what in (lambda: eng.run(0), eng.close):
            try:
                what()
            except RuntimeError as exc:
                seen.append(str(exc))

    first, second = Collector(), Collector()
    eng.nop(first)
    eng.nop(cb)
    eng.nop(second)
    wait_done(eng, first, second)
    assert seen == [
        "run() from a completion callback",
        "close() from a completion callback: close after run() returns",
    ]
    assert eng.in_flight == 0
    col = Collector()
    eng.nop(col)
    wait_done(eng, col)
    assert col.res == 0


def closed_fd_number() -> int:
    s = socket.socket()
    n = s.fileno()
    s.close()
    return n


@pytest.mark.parametrize(
    "op", ["recv", "recv_into", "send", "recvmsg", "accept", "poll", "read", "write", "close_fd"]
)
def test_op_on_closed_fd_number_is_ebadf(eng, op):
    fd = closed_fd_number()
    col = Collector()
    OPS_ON_FD[op](eng, fd, col)
    wait_done(eng, col)
    assert col.records == [(-errno.EBADF, False, None)]
    assert eng.in_flight == 0
    assert eng.stats()["in_flight"] == 0


def test_bogus_backend_is_value_error():
    with pytest.raises(ValueError):
        engine.Engine(backend="bogus")


class _BadBool:
    def __bool__(self):
        raise ZeroDivisionError("no truth value")


def _bad_calls(fd, cb):
    """(method, args, kwargs, exception): bad arguments to the C table's
    methods, whole positional calls (the transports' form) among them."""
    big = 2**31
    return [
        # recv(fd, cb, multishot=True, nbytes=0, coalesce=False, view=False,
        # stream=False) / read_pool(the same but stream)
        ("recv", (fd, cb, True, 0, False, False, False, 0), {}, TypeError),
        ("recv", (fd, cb, True, 0, False, False, _BadBool()), {}, ZeroDivisionError),
        ("recv", (fd, cb), {"stream": _BadBool()}, ZeroDivisionError),
        ("read_pool", (fd, cb, True, 0, False, False, False), {}, TypeError),
        ("read_pool", (fd, cb), {"stream": False}, TypeError),
        *[
            c
            for m in ("recv", "read_pool")
            for c in [
                (m, (), {}, TypeError),
                (m, (fd,), {}, TypeError),
                (m, (fd, cb), {"bogus": 1}, TypeError),
                (m, (fd, cb), {"fd": fd}, TypeError),
                (m, (fd, cb, True), {"multishot": True}, TypeError),
                (m, ("3", cb, True, 0, False, False), {}, TypeError),
                (m, (3.0, cb, True, 0, False, False), {}, TypeError),
                (m, (None, cb), {}, TypeError),
                (m, (-1, cb, True, 0, False, False), {}, ValueError),
                (m, (big, cb, True, 0, False, False), {}, ValueError),
                (m, (2**70, cb, True, 0, False, False), {}, ValueError),
                (m, (-(2**70), cb), {}, ValueError),
                (m, (fd, 5, True, 0, False, False), {}, TypeError),
                (m, (fd, None), {}, TypeError),
                (m, (fd, cb, True, "0", False, False), {}, TypeError),
                (m, (fd, cb, True, -1, False, False), {}, ValueError),
                (m, (fd, cb, True, 2**32, False, False), {}, ValueError),
                (m, (fd, cb, True, 2**70, False, False), {}, ValueError),
                (m, (fd, cb), {"nbytes": 1.5}, TypeError),
                (m, (fd, cb, _BadBool(), 0, False, False), {}, ZeroDivisionError),
                (m, (fd, cb, True, 0, _BadBool(), False), {}, ZeroDivisionError),
                (m, (fd, cb, True, 0, False, _BadBool()), {}, ZeroDivisionError),
                (m, (fd, cb), {"view": _BadBool()}, ZeroDivisionError),
            ]
        ],
        # close_fd(fd, cb, reset_if_data=False, hold=False) (decision 873)
        ("close_fd", (), {}, TypeError),
        ("close_fd", (fd,), {}, TypeError),
        ("close_fd", (fd, cb, False, False, 0), {}, TypeError),
        ("close_fd", (fd, cb), {"held": True}, TypeError),
        ("close_fd", (fd, cb), {"reset": True}, TypeError),
        ("close_fd", (fd, cb, False), {"reset_if_data": False}, TypeError),
        ("close_fd", ("3", cb, False), {}, TypeError),
        ("close_fd", (b"3", cb, False), {}, TypeError),
        ("close_fd", (-1, cb, False), {}, ValueError),
        ("close_fd", (big, cb, False), {}, ValueError),
        ("close_fd", (2**70, cb, False), {}, ValueError),
        ("close_fd", (fd, "cb", False), {}, TypeError),
        ("close_fd", (fd, cb, _BadBool()), {}, ZeroDivisionError),
        ("close_fd", (fd, cb), {"reset_if_data": _BadBool()}, ZeroDivisionError),
        # send / sendv(fd, data, cb, flags=0)
        ("send", (fd, b"x"), {}, TypeError),
        ("send", (fd, b"x", cb, 0, 0), {}, TypeError),
        ("send", (-1, b"x", cb, 0), {}, ValueError),
        ("send", (fd, "x", cb, 0), {}, TypeError),
        ("send", (fd, b"x", cb, "0"), {}, TypeError),
        ("send", (fd, b"x", cb, big), {}, ValueError),
        ("send", (fd, b"x", 1, 0), {}, TypeError),
        ("sendv", (fd, [b"x"]), {}, TypeError),
        ("sendv", (fd, 5, cb, 0), {}, TypeError),
        ("sendv", (fd, [b"x"], cb, big), {}, ValueError),
        ("sendv", (big, [b"x"], cb, 0), {}, ValueError),
        # accept(fd, cb, multishot=True)
        ("accept", (fd,), {}, TypeError),
        ("accept", (fd, cb, True, 1), {}, TypeError),
        ("accept", ("3", cb, True), {}, TypeError),
        ("accept", (-1, cb, True), {}, ValueError),
        ("accept", (fd, 1, True), {}, TypeError),
        ("accept", (fd, cb, _BadBool()), {}, ZeroDivisionError),
        # shutdown(fd, how, cb)
        ("shutdown", (fd, socket.SHUT_WR), {}, TypeError),
        ("shutdown", (fd, 7, cb), {}, ValueError),
        ("shutdown", (fd, "1", cb), {}, ValueError),
        ("shutdown", (-1, socket.SHUT_WR, cb), {}, ValueError),
        ("shutdown", (fd, socket.SHUT_WR, 1), {}, TypeError),
    ]


def test_bad_arguments_to_the_table_methods_raise_as_before(eng, socketpair):
    """Every count, keyword, type and range check of recv, read_pool,
    close_fd, send, sendv, accept and shutdown raises its exception, whether
    the call names its arguments or gives them all positionally (the form
    the transports use, which skips the keyword parse: decision 720); no op is
    left behind. And the good positional calls still work."""
    a, b = socketpair()
    fd = a.fileno()
    for name, args, kwargs, exc in _bad_calls(fd, noop_cb):
        with pytest.raises(exc):
            getattr(eng, name)(*args, **kwargs)
        assert eng.in_flight == 0, (name, args, kwargs)
    assert_nothing_pending(eng)
    col = Collector()
    eng.recv(fd, col, False, 0, False, False)
    b.send(b"abc")
    wait_done(eng, col)
    assert col.records[0][0] == 3
    col = Collector()
    eng.close_fd(a.detach(), col, False)
    wait_done(eng, col)
    assert col.records == [(0, False, None)]
