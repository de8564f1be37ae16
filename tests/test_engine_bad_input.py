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
