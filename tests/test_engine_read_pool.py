"""The engine's pool read (``read_pool``): read(2) into the stream pool, for
the files that refuse recv (pipes, FIFOs, ptys, character devices).

Records follow stream recv's rules: data with ``more`` while the multishot op
lives, a final 0 at EOF, a final -errno on error, -ECANCELED (or the data that
won the race) after a cancel; buffers recycled at the next run. Every test
runs on io_uring (READ_MULTISHOT on this kernel), epoll (a read without
waiting per attempt) and io_uring-fallbacks (one-shot READs into
engine-picked buffers, EAGAIN forced on the first issue).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import socket

import pytest
from conftest import Collector, engine, require_uring, run_until, settle, wait_done


@pytest.fixture(params=["pipe", "fifo", "pty", "socket", "blocking-pipe"])
def source(request, tmp_path, res_tracker):
    """(read_fd, write_fd) of one kind of stream file; the read end is
    non-blocking (as asyncio's pipe transports make it) except for
    blocking-pipe, where the engine must still never block."""
    kind = request.param
    if kind in ("pipe", "blocking-pipe"):
        r, w = os.pipe()
    elif kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        w = os.open(path, os.O_WRONLY)
    elif kind == "pty":
        w, r = pty.openpty()  # master writes, slave reads
        import termios
        import tty

        tty.setraw(r)  # bytes through unchanged, no echo
        termios.tcflush(r, termios.TCIOFLUSH)
    else:
        a, b = socket.socketpair()
        r, w = a.detach(), b.detach()
    res_tracker.fd(r)
    res_tracker.fd(w)
    os.set_blocking(r, kind == "blocking-pipe")
    return kind, r, w


def test_multishot_bytes_exact_then_eof(make_engine, source, res_tracker):
    """One op lives until EOF through a tiny pool (the pool runs dry again and
    again: the engine re-arms by itself), every byte in order, then a final 0.
    The engine never changes the caller's file status flags."""
    kind, r, w = source
    eng = make_engine(buf_count=4, buf_size=1024)
    flags = fcntl.fcntl(r, fcntl.F_GETFL)
    col = Collector()
    eng.read_pool(r, col)
    settle(eng, 1)
    assert not col.records
    payload = os.urandom(100_000 if kind != "pty" else 3000)
    sent = 0
    while sent < len(payload):
        sent += os.write(w, payload[sent:sent + 1000])
        run_until(eng, lambda n=sent: len(col.payload()) >= n, 10, f"{sent} bytes")
    assert col.finals == 0, "multishot read ended before EOF"
    for res, more, data in col.records:
        assert more and res > 0 and isinstance(data, bytes) and len(data) == res <= 1024
    assert col.payload() == payload
    assert fcntl.fcntl(r, fcntl.F_GETFL) == flags
    if kind == "pty":
        # a pty has no EOF for the slave while the master is open: a cancel ends it
        eng.cancel_fd(r)
        wait_done(eng, col)
        assert col.final[0] == -errno.ECANCELED
    else:
        os.close(w)
        res_tracker.forget(w)
        wait_done(eng, col)
        assert col.final[:2] == (0, False)
    eng.run(0)  # buffers named in records are recycled at the next run
    assert eng.stats()["bufs_free"] == 4


@pytest.mark.parametrize("eof", [False, True], ids=["data", "eof"])
def test_one_shot(eng, source, res_tracker, eof):
    kind, r, w = source
    if eof and kind == "pty":
        pytest.skip("a pty slave sees no EOF while its master is open")
    col = Collector()
    eng.read_pool(r, col, multishot=False, nbytes=5)
    settle(eng, 1)
    assert not col.records
    if eof:
        os.close(w)
        res_tracker.forget(w)
    else:
        os.write(w, b"one shot")
    wait_done(eng, col)
    assert len(col.records) == 1
    assert col.final == ((0, False, None) if eof else (5, False, b"one s"))


def test_error_is_final(eng, pipe):
    """read(2) on the write end of a pipe: EBADF, as the final record."""
    r, w = pipe()
    col = Collector()
    eng.read_pool(w, col)
    wait_done(eng, col)
    assert col.final[:2] == (-errno.EBADF, False)


def test_cancel_while_waiting(eng, pipe):
    r, w = pipe()
    col = Collector()
    ud = eng.read_pool(r, col)
    settle(eng, 1)
    assert eng.cancel(ud)
    wait_done(eng, col)
    assert col.records == [(-errno.ECANCELED, False, None)]
    os.write(w, b"after")  # the op is gone: the bytes stay in the pipe
    settle(eng)
    assert os.read(r, 100) == b"after"


@pytest.mark.parametrize("delay", [0, 1], ids=["before-run", "after-run"])
def test_cancel_race_loses_no_byte(eng, pipe, delay):
    """Data and a cancel in the same turn: what the op read is reported (with
    more, or as the final record), what it did not read stays in the pipe."""
    r, w = pipe()
    col = Collector()
    ud = eng.read_pool(r, col)
    if delay:
        settle(eng, 1)
    os.write(w, b"raced" * 1000)
    eng.cancel(ud)
    wait_done(eng, col)
    res, more, data = col.records[-1]
    assert res == -errno.ECANCELED or res > 0
    rest = b""
    try:
        rest = os.read(r, 100_000)
    except BlockingIOError:
        pass
    assert col.payload() + rest == b"raced" * 1000


def test_fallback_is_chosen_and_reported(make_engine):
    """READ_MULTISHOT where the kernel has it; OPT_NO_MULTISHOT (and the
    fallbacks flavour) force one-shot reads; epoll never has it."""
    eng = make_engine()
    info = eng.info()
    kernel_has = "READ_MULTISHOT" in engine.backend_info()["opcodes"]
    native = eng.backend == "io_uring" and not make_engine.fallbacks
    assert info["multishot_read"] == (native and kernel_has and info["buffer_ring"])
    if eng.backend == "io_uring":
        forced = make_engine(options=engine.OPT_NO_MULTISHOT)
        assert forced.info()["multishot_read"] is False


def test_one_shot_buffer_select_path(pipe, res_tracker):
    """io_uring with a buffer ring but no multishot: one-shot READs that pick
    their buffer from the ring, re-issued after each record."""
    require_uring()
    eng = engine.Engine("io_uring", options=engine.OPT_NO_MULTISHOT, buf_count=4, buf_size=1024)
    try:
        _one_shot_buffer_select(eng, pipe, res_tracker)
    finally:
        eng.close()


def _one_shot_buffer_select(eng, pipe, res_tracker):
    assert eng.info()["buffer_ring"] and not eng.info()["multishot_read"]
    r, w = pipe()
    col = Collector()
    eng.read_pool(r, col)
    payload = os.urandom(20_000)
    sent = 0
    while sent < len(payload):
        sent += os.write(w, payload[sent:sent + 3000])
        run_until(eng, lambda n=sent: len(col.payload()) >= n, 10, f"{sent} bytes")
    assert col.finals == 0 and col.payload() == payload
    assert eng.stats()["rearms"] > 0
    os.close(w)
    res_tracker.forget(w)
    wait_done(eng, col)
    assert col.final[:2] == (0, False)


def test_character_device_that_cannot_be_polled(eng, res_tracker):
    """/dev/zero: io_uring's READ_MULTISHOT refuses a file it cannot poll
    (EBADFD): the op goes on with one-shot reads; epoll cannot watch it and
    reads it from the retry list. Either way zeros come until the cancel."""
    fd = res_tracker.fd(os.open("/dev/zero", os.O_RDONLY))
    col = Collector()
    ud = eng.read_pool(fd, col)
    run_until(eng, lambda: len(col.records) >= 3, 5, "three records")
    eng.cancel(ud)
    wait_done(eng, col)
    assert col.finals == 1
    for res, more, data in col.records[:-1]:
        assert more and res > 0 and data == bytes(res)
    assert col.records[-1][0] in (-errno.ECANCELED,) or col.records[-1][0] > 0


def test_never_reads_a_file_that_reused_the_number(eng, pipe, res_tracker):
    """The read end is closed behind the engine's back and its number reused
    by another pipe: the live op never delivers the new pipe's bytes (the
    kernel's request keeps the old file; epoll's wait was for the old file;
    an emulated re-arm compares the file's identity)."""
    r1, w1 = pipe()
    col = Collector()
    ud = eng.read_pool(r1, col)
    os.write(w1, b"old")
    run_until(eng, lambda: col.payload() == b"old")
    os.close(r1)
    res_tracker.forget(r1)
    r2, w2 = pipe()
    assert r2 == r1
    os.write(w2, b"new")
    settle(eng)
    eng.cancel(ud)
    wait_done(eng, col)
    assert b"new" not in col.payload()
    assert os.read(r2, 100) == b"new"


def test_guard_and_pool_accounting(make_engine, pipe, res_tracker):
    """Records hand out buffers that come back: after many records through a
    2-buffer pool, every buffer is free again (and none hit a guard)."""
    eng = make_engine(buf_count=2, buf_size=4096)
    r, w = pipe()
    col = Collector()
    eng.read_pool(r, col)
    for i in range(50):
        os.write(w, b"%05d" % i * 100)
        run_until(eng, lambda i=i: len(col.payload()) >= (i + 1) * 500)
    os.close(w)
    res_tracker.forget(w)
    wait_done(eng, col)
    eng.run(0)
    assert eng.stats()["bufs_free"] == 2
    assert col.payload() == b"".join(b"%05d" % i * 100 for i in range(50))


def test_epoll_reads_a_pipe_worth_per_turn_and_goes_on_without_an_edge(pipe, res_tracker):
    """epoll: a pool read takes at most 32 KiB per attempt and is tried at most
    twice per run (64 KiB per turn; the first turn also delivers what the
    submission itself read: 96 KiB), decision 165; the rest comes in the next
    runs with no new event (the writer is done: no edge will come again)."""
    eng = engine.Engine("epoll")
    try:
        r, w = pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        payload = os.urandom(600_000)
        assert os.write(w, payload) == len(payload)
        col = Collector()
        eng.read_pool(r, col)
        per_run = []
        while len(col.payload()) < len(payload) and len(per_run) < 100:
            before = len(col.payload())
            eng.run(0)  # never waits: each run must bring the next part
            per_run.append(len(col.payload()) - before)
        assert col.payload() == payload
        assert per_run[0] <= 3 * 32768 and max(per_run[1:]) <= 65536, per_run
        eng.cancel_fd(r)
        wait_done(eng, col)
    finally:
        eng.close()


def test_epoll_one_read_fills_the_attempts_buffers(pipe, res_tracker):
    """epoll: one readv fills as many pool buffers as an attempt's 32 KiB has
    room for (decision 326): a full 64 KiB pipe comes in 2 reads, not 4, with
    a record per 16 KiB buffer, in order. (``submitted`` counts the epoll_ctl
    that registers the pipe and every read, the EAGAIN one included.)"""
    eng = engine.Engine("epoll")
    try:
        r, w = pipe()
        payload = os.urandom(65536)
        assert os.write(w, payload) == len(payload)
        col = Collector()
        before = eng.stats()["submitted"]
        eng.read_pool(r, col)
        run_until(eng, lambda: len(col.payload()) == len(payload))
        eng.run(0)  # the read that meets EAGAIN, if not already made
        syscalls = eng.stats()["submitted"] - before
        assert col.payload() == payload
        assert [(res, more) for res, more, _ in col.records] == [(16384, True)] * 4
        assert syscalls == 1 + 2 + 1, syscalls  # a read per buffer: 1 + 4 + 1
        os.write(w, b"tail")  # the op waits for an edge again, and reads on
        run_until(eng, lambda: col.payload().endswith(b"tail"))
        assert col.payload() == payload + b"tail"
        eng.cancel_fd(r)
        wait_done(eng, col)
    finally:
        eng.close()
