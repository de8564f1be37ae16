"""One test per op kind, on every backend: the results the contract promises."""

from __future__ import annotations

import errno
import os
import select
import socket
import threading

import pytest
from conftest import (
    Collector,
    drain,
    epoll_events,
    fd_is_open,
    pump_send,
    recv_exact,
    run_until,
    settle,
    skip_unless_wait_syscalls_known,
    wait_done,
    wait_until_sleeping,
)

from uringloop import engine

STATS_KEYS = {
    "enters",
    "waits",
    "submitted",
    "records",
    "cq_overflows",
    "rearms",
    "eagain_retries",
    "wakeups",
    "in_flight",
    "bufs_free",
}


def test_backend_info_keys():
    info = engine.backend_info()
    for key in ("backend", "reason", "kernel", "ring_flags", "features", "opcodes"):
        assert key in info
    for key in (
        "buffer_ring",
        "multishot_recv",
        "multishot_accept",
        "registered_ring",
        "cancel_fd",
    ):
        assert isinstance(info[key], bool), key
    assert info["backend"] in ("io_uring", "epoll")
    assert engine.backend_info() == info  # cached, stable


def test_engine_identity_and_stats(eng):
    assert eng.backend in ("io_uring", "epoll")
    assert isinstance(eng.reason, str)
    st = eng.stats()
    assert STATS_KEYS <= set(st), STATS_KEYS - set(st)
    assert st["in_flight"] == eng.in_flight == 0
    assert eng.run(0) == 0


def test_nop(eng):
    c = Collector()
    ud = eng.nop(c)
    assert isinstance(ud, int)
    assert eng.in_flight == 1
    wait_done(eng, c)
    assert c.records == [(0, False, None)]
    assert eng.in_flight == 0


def test_user_data_unique_among_live_ops(eng):
    cs = [Collector() for _ in range(50)]
    uds = [eng.nop(c) for c in cs]
    assert len(set(uds)) == len(uds)
    wait_done(eng, *cs)


# ------------------------------------------------------------------ recv


def test_recv_pool_multishot(make_engine, tcp_pair):
    # A tiny pool forces the "buffer pool empty" path: the engine must re-arm by
    # itself and Python must still see one op that lives until EOF.
    eng = make_engine(buf_count=4, buf_size=1024)
    c, s = tcp_pair()
    col = Collector()
    eng.recv(s.fileno(), col, multishot=True)
    eng.run(0)
    payload = os.urandom(200_000)
    pump_send(eng, c, payload)
    run_until(eng, lambda: len(col.payload()) >= len(payload), 10, "all bytes")
    assert col.finals == 0, "multishot recv ended before EOF"
    for res, more, data in col.records:
        assert more and res > 0
        assert isinstance(data, bytes) and len(data) == res and res <= eng.info()["buf_size"]
    assert col.payload() == payload
    c.shutdown(socket.SHUT_WR)
    wait_done(eng, col)
    assert col.final[:2] == (0, False)
    eng.run(0)  # buffers named in records are recycled on the next run
    assert eng.stats()["bufs_free"] == 4


def test_recv_pool_single_shot(eng, socketpair):
    a, b = socketpair()
    col = Collector()
    eng.recv(a.fileno(), col, multishot=False)
    eng.run(0)
    b.send(b"single shot")
    wait_done(eng, col)
    res, more, data = col.final
    assert len(col.records) == 1
    assert res == len(b"single shot") and data == b"single shot"


@pytest.mark.parametrize("multishot", [True, False], ids=["multishot", "oneshot"])
def test_recv_eof_is_final_zero(eng, socketpair, multishot):
    a, b = socketpair()
    col = Collector()
    eng.recv(a.fileno(), col, multishot=multishot)
    eng.run(0)
    b.shutdown(socket.SHUT_WR)
    wait_done(eng, col)
    assert col.records[-1][:2] == (0, False)
    assert eng.in_flight == 0


def test_recv_into(eng, socketpair):
    a, b = socketpair()
    buf = bytearray(64)
    col = Collector()
    eng.recv_into(a.fileno(), buf, col)
    eng.run(0)
    assert not col.done
    b.send(b"hello into")
    wait_done(eng, col)
    assert col.records == [(10, False, None)]
    assert buf[:10] == b"hello into"


def test_recv_into_nbytes_limits_and_eof(eng, socketpair):
    a, b = socketpair()
    b.send(b"0123456789")
    buf = bytearray(64)
    first = Collector()
    eng.recv_into(a.fileno(), buf, first, nbytes=4)
    wait_done(eng, first)
    assert first.res == 4 and buf[:4] == b"0123"
    assert buf[4:] == bytes(60)

    view = memoryview(buf)[8:]  # any writable buffer, also a slice of one
    second = Collector()
    eng.recv_into(a.fileno(), view, second)
    wait_done(eng, second)
    assert second.res == 6 and buf[8:14] == b"456789"

    b.close()
    third = Collector()
    eng.recv_into(a.fileno(), buf, third)
    wait_done(eng, third)
    assert third.res == 0


# ------------------------------------------------------------------ send


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_send(eng, socketpair, kind):
    a, b = socketpair()
    col = Collector()
    eng.send(a.fileno(), kind(b"payload"), col)
    wait_done(eng, col)
    assert col.records == [(7, False, None)]
    assert recv_exact(b, 7) == b"payload"


def test_send_to_closed_peer_reports_errno(eng, socketpair):
    a, b = socketpair()
    b.close()
    col = Collector()
    eng.send(a.fileno(), b"x" * 1000, col, flags=socket.MSG_NOSIGNAL)
    wait_done(eng, col)
    assert col.res in (-errno.EPIPE, -errno.ECONNRESET)


# ------------------------------------------------------------------ datagrams


def test_udp_sendmsg_recvmsg_with_address(eng, udp_socket):
    u1, u2 = udp_socket(), udp_socket()
    buf = bytearray(2048)
    rcol = Collector()
    eng.recvmsg(u2.fileno(), buf, rcol, socket.AF_INET)
    eng.run(0)
    scol = Collector()
    eng.sendmsg(u1.fileno(), b"datagram!", u2.getsockname(), scol, socket.AF_INET)
    wait_done(eng, scol, rcol)
    assert scol.res == 9
    res, more, addr = rcol.final
    assert res == 9 and buf[:9] == b"datagram!"
    assert tuple(addr) == u1.getsockname()

    # a second datagram from another sender reports that sender's address
    u3 = udp_socket()
    u3.sendto(b"third", u2.getsockname())
    rcol2 = Collector()
    eng.recvmsg(u2.fileno(), buf, rcol2, socket.AF_INET)
    wait_done(eng, rcol2)
    assert rcol2.res == 5 and buf[:5] == b"third"
    assert tuple(rcol2.final[2]) == u3.getsockname()


def test_udp_sendmsg_connected_without_address(eng, udp_socket):
    u1, u2 = udp_socket(), udp_socket()
    u1.connect(u2.getsockname())
    col = Collector()
    eng.sendmsg(u1.fileno(), b"connected", None, col, socket.AF_INET)
    wait_done(eng, col)
    assert col.res == 9
    u2.settimeout(5)
    data, addr = u2.recvfrom(100)
    assert data == b"connected" and addr == u1.getsockname()


# ------------------------------------------------------------------ accept / connect


def _adopt_accepted(fd: int, res_tracker) -> socket.socket:
    """Check an accepted fd's flags and wrap it in a (tracked) socket object."""
    assert fd >= 0, fd
    assert os.get_blocking(fd) is False, "accepted fd must be non-blocking"
    assert os.get_inheritable(fd) is False, "accepted fd must be close-on-exec"
    return res_tracker.sock(socket.socket(fileno=fd))


def _check_usable(srv: socket.socket, client: socket.socket) -> None:
    client.sendall(b"ping")
    assert recv_exact(srv, 4) == b"ping"
    srv.sendall(b"pong")
    assert recv_exact(client, 4) == b"pong"


def test_accept_multishot(eng, tcp_listener, res_tracker):
    lst = tcp_listener()
    col = Collector()
    ud = eng.accept(lst.fileno(), col, multishot=True)
    eng.run(0)
    clients = {}
    for _ in range(5):
        c = res_tracker.sock(socket.create_connection(lst.getsockname(), timeout=5))
        clients[c.getsockname()] = c
    run_until(eng, lambda: len(col.records) >= 5, what="5 accepts")
    assert col.finals == 0, col.records
    assert len(col.records) == 5
    for res, more, _ in col.records:
        assert more
        srv = _adopt_accepted(res, res_tracker)
        # each accepted socket is connected to exactly one of our clients
        _check_usable(srv, clients.pop(srv.getpeername()))
    assert not clients
    assert eng.cancel(ud)
    wait_done(eng, col)
    res = col.final[0]
    assert res == -errno.ECANCELED or res >= 0
    if res >= 0:  # a connection that won the race against the cancel
        _adopt_accepted(res, res_tracker)
    drain(eng)


def test_accept_single_shot(eng, tcp_listener, res_tracker):
    lst = tcp_listener()
    col = Collector()
    eng.accept(lst.fileno(), col, multishot=False)
    eng.run(0)
    c = res_tracker.sock(socket.create_connection(lst.getsockname(), timeout=5))
    wait_done(eng, col)
    assert len(col.records) == 1
    _check_usable(_adopt_accepted(col.res, res_tracker), c)


def test_connect_success(eng, tcp_listener, res_tracker):
    lst = tcp_listener()
    s = res_tracker.sock(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.setblocking(False)
    col = Collector()
    eng.connect(s.fileno(), socket.AF_INET, lst.getsockname(), col)
    wait_done(eng, col)
    assert col.records == [(0, False, None)]
    lst.settimeout(5)
    srv, addr = lst.accept()
    res_tracker.sock(srv)
    assert addr == s.getsockname()


def test_connect_refused(eng, res_tracker):
    tmp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tmp.bind(("127.0.0.1", 0))
    closed_addr = tmp.getsockname()
    tmp.close()  # bound but never listening, now closed: nobody is on that port
    s = res_tracker.sock(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.setblocking(False)
    col = Collector()
    eng.connect(s.fileno(), socket.AF_INET, closed_addr, col)
    wait_done(eng, col)
    assert col.res == -errno.ECONNREFUSED


# ------------------------------------------------------------------ poll


def test_poll_oneshot(eng, socketpair):
    a, b = socketpair()
    # data already there
    b.send(b"x")
    first = Collector()
    eng.poll(a.fileno(), select.POLLIN, first)
    wait_done(eng, first)
    assert len(first.records) == 1 and first.res & select.POLLIN

    # data arriving later
    assert a.recv(10) == b"x"
    later = Collector()
    eng.poll(a.fileno(), select.POLLIN, later)
    settle(eng)
    assert not later.done
    b.send(b"y")
    wait_done(eng, later)
    assert len(later.records) == 1 and later.res & select.POLLIN

    # POLLOUT is immediately true on an empty socket
    out = Collector()
    eng.poll(a.fileno(), select.POLLOUT, out)
    wait_done(eng, out)
    assert out.res & select.POLLOUT


def test_poll_level(eng, socketpair):
    a, b = socketpair()
    b.send(b"stays unread")
    col = Collector()
    ud = eng.poll(a.fileno(), select.POLLIN, col, level=True)
    run_until(eng, lambda: len(col.records) >= 1, what="first level record")
    for _ in range(3):  # fires again on later turns while the data stays unread
        n = len(col.records)
        run_until(eng, lambda n=n: len(col.records) > n, what="level re-fire")
    assert col.finals == 0
    assert all(more and res & select.POLLIN for res, more, _ in col.records)

    assert eng.cancel(ud)
    wait_done(eng, col)
    res = col.final[0]
    assert res == -errno.ECANCELED or res & select.POLLIN
    n = len(col.records)
    settle(eng)
    assert len(col.records) == n, "level poll fired after its final record"
    assert eng.in_flight == 0


def test_poll_level_kept(eng, pipe):
    """A kept level poll (engine.POLL_KEPT: the owner keeps the fd open and
    reads it at each record, as a pipe transport) is a level poll: a record
    at each run while the pipe holds data, none once it is read empty, again
    when more comes; after its final record, nothing."""
    r, w = pipe()
    os.write(w, b"stays unread")
    col = Collector()
    ud = eng.poll(r, select.POLLIN, col, level=engine.POLL_KEPT)
    for n in range(1, 4):
        run_until(eng, lambda n=n: len(col.records) >= n, what="kept level record")
    assert os.read(r, 100) == b"stays unread"
    settle(eng)
    n = len(col.records)
    settle(eng)
    assert len(col.records) == n, "fired with nothing to read"
    os.write(w, b"more")
    run_until(eng, lambda: len(col.records) > n, what="fired again for new data")
    assert col.finals == 0
    assert all(more and res & select.POLLIN for res, more, _ in col.records)
    assert eng.cancel(ud)
    wait_done(eng, col)
    n = len(col.records)
    settle(eng)
    assert len(col.records) == n, "kept level poll fired after its final record"
    assert eng.in_flight == 0


def test_poll_multi(eng, socketpair):
    """engine.POLL_MULTI (decision 765): a record (more) each time the fd may
    have become ready, one SQE for all of them on io_uring (a multishot
    POLL_ADD; epoll takes it as a level poll); after the cancel, its final
    record and nothing more."""
    a, b = socketpair()
    col = Collector()
    before = eng.stats()["submitted"]
    ud = eng.poll(a.fileno(), select.POLLIN, col, level=engine.POLL_MULTI)
    settle(eng)
    assert not col.records  # nothing to read yet
    for k in range(1, 4):
        b.send(b"x")
        run_until(eng, lambda k=k: len(col.records) >= k, what="a multi poll's record")
        assert a.recv(10) == b"x"  # read empty: the next record is for the next byte
        settle(eng)
    if eng.backend == "io_uring":
        assert len(col.records) == 3, col.records  # one a byte, none while empty
        assert eng.stats()["submitted"] - before == 1  # its one SQE
    assert col.finals == 0
    assert all(more and res & select.POLLIN for res, more, _ in col.records)
    assert eng.cancel(ud)
    b.send(b"after the cancel")
    wait_done(eng, col)
    assert col.final[0] == -errno.ECANCELED or col.final[0] & select.POLLIN
    n = len(col.records)
    settle(eng)
    assert len(col.records) == n, "multi poll fired after its final record"
    assert eng.in_flight == 0


def test_epoll_kept_level_poll_rearms_without_epoll_ctl(pipe):
    """Decision 382: on epoll a kept level poll's fd is registered level-
    triggered while such polls are all that waits on it, so its re-arm at
    each run is no syscall (``submitted`` counts epoll_ctl calls here: the
    poll itself makes none). A plain level poll re-arms with a MOD per
    record. Once the kept poll is cancelled the fd goes back to edge-
    triggered at its next event, so a readable fd nothing waits on does not
    fire at every wait; a reader joining the fd makes it edge-triggered too."""
    eng = engine.Engine("epoll")
    try:
        r, w = pipe()
        os.write(w, b"x")  # stays unread: readable at every run
        col = Collector()
        before = eng.stats()["submitted"]
        ud = eng.poll(r, select.POLLIN, col, level=engine.POLL_KEPT)
        run_until(eng, lambda: len(col.records) >= 20, what="kept level records")
        assert eng.stats()["submitted"] - before == 1  # the registration
        assert not epoll_events(r) & select.EPOLLET

        r2, w2 = pipe()
        os.write(w2, b"x")
        plain = Collector()
        before = eng.stats()["submitted"]
        ud2 = eng.poll(r2, select.POLLIN, plain, level=True)
        run_until(eng, lambda: len(plain.records) >= 20, what="level records")
        assert eng.stats()["submitted"] - before >= 20  # a MOD per re-arm
        assert epoll_events(r2) & select.EPOLLET
        assert eng.cancel(ud2)
        wait_done(eng, plain)

        assert eng.cancel(ud)
        wait_done(eng, col)
        settle(eng)
        assert epoll_events(r) & select.EPOLLET, "an fd nothing waits on stays level"
        n = eng.stats()["submitted"]
        settle(eng)
        assert eng.stats()["submitted"] == n

        col = Collector()
        ud = eng.poll(r, select.POLLIN, col, level=engine.POLL_KEPT)
        run_until(eng, lambda: len(col.records) >= 2, what="kept level records")
        assert not epoll_events(r) & select.EPOLLET
        reader = Collector()
        eng.read_pool(r, reader)  # a reader joins: edge-triggered again
        run_until(eng, lambda: reader.payload() == b"x", what="the reader's byte")
        assert epoll_events(r) & select.EPOLLET
        eng.cancel_fd(r)
        wait_done(eng, col)
        wait_done(eng, reader)
    finally:
        eng.close()


# ------------------------------------------------------------------ read / write


@pytest.fixture(params=["pipe", "fifo"])
def stream_fds(request, pipe, tmp_path, res_tracker):
    """(read_fd, write_fd) of a pipe or of a FIFO in tmp_path, non-blocking."""
    if request.param == "pipe":
        return pipe()
    path = tmp_path / "fifo"
    os.mkfifo(path)
    r = res_tracker.fd(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    w = res_tracker.fd(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    return r, w


def test_read_write_pipe_or_fifo(eng, stream_fds, res_tracker):
    r, w = stream_fds
    buf = bytearray(64)
    rcol = Collector()
    eng.read(r, buf, rcol)
    settle(eng, 1)
    assert not rcol.done
    wcol = Collector()
    eng.write(w, b"through the pipe", wcol)
    wait_done(eng, rcol, wcol)
    assert wcol.records == [(16, False, None)]
    assert rcol.records == [(16, False, None)] and buf[:16] == b"through the pipe"

    # more than the pipe capacity in one ordered write: the engine waits for room
    big = os.urandom(300_000)
    wbig = Collector()
    eng.write(w, big, wbig)
    got = bytearray()
    chunk = bytearray(65536)
    while len(got) < len(big):
        c = Collector()
        eng.read(r, chunk, c)
        wait_done(eng, c)
        assert c.res > 0, c.records
        got += chunk[: c.res]
    wait_done(eng, wbig)
    assert wbig.res == len(big)
    assert bytes(got) == big

    os.close(w)
    res_tracker.forget(w)
    eof = Collector()
    eng.read(r, buf, eof)
    wait_done(eng, eof)
    assert eof.res == 0


def test_read_write_regular_file_offsets(eng, tmp_path, res_tracker):
    fd = res_tracker.fd(os.open(tmp_path / "data.bin", os.O_RDWR | os.O_CREAT, 0o600))

    # offset -1: ordered writes at the file position
    w1, w2 = Collector("w1"), Collector("w2")
    eng.write(fd, b"abc", w1, offset=-1)
    eng.write(fd, b"defgh", w2, offset=-1)
    wait_done(eng, w1, w2)
    assert (w1.res, w2.res) == (3, 5)
    assert os.pread(fd, 100, 0) == b"abcdefgh"
    assert os.lseek(fd, 0, os.SEEK_CUR) == 8

    # explicit offset: lands there, leaves a hole, does not move the position
    w3 = Collector()
    eng.write(fd, b"XY", w3, offset=100)
    wait_done(eng, w3)
    assert w3.res == 2
    assert os.fstat(fd).st_size == 102
    assert os.pread(fd, 2, 100) == b"XY"
    assert os.pread(fd, 4, 96) == b"\0\0\0\0"
    assert os.lseek(fd, 0, os.SEEK_CUR) == 8

    buf = bytearray(5)
    r1 = Collector()
    eng.read(fd, buf, r1, offset=2)
    wait_done(eng, r1)
    assert r1.res == 5 and buf == b"cdefg"

    # offset -1 reads from (and advances) the file position
    os.lseek(fd, 0, os.SEEK_SET)
    buf4 = bytearray(4)
    r2 = Collector()
    eng.read(fd, buf4, r2, offset=-1)
    wait_done(eng, r2)
    assert r2.res == 4 and buf4 == b"abcd"
    r3 = Collector()
    eng.read(fd, buf4, r3, offset=-1)
    wait_done(eng, r3)
    assert r3.res == 4 and buf4 == b"efgh"

    # reading past the end gives 0
    r4 = Collector()
    eng.read(fd, buf4, r4, offset=1000)
    wait_done(eng, r4)
    assert r4.res == 0


# ------------------------------------------------------------------ shutdown / close_fd


def test_shutdown_after_queued_sends(eng, tcp_pair):
    c, s = tcp_pair()
    log: list = []
    chunks = [os.urandom(n) for n in (10, 150_000, 1, 400_000, 33)]
    sends = [Collector(f"send{i}", log) for i in range(len(chunks))]
    for chunk, col in zip(chunks, sends, strict=True):
        eng.send(c.fileno(), chunk, col)
    sh = Collector("shutdown", log)
    eng.shutdown(c.fileno(), socket.SHUT_WR, sh)
    rcv = Collector("recv", log)
    eng.recv(s.fileno(), rcv)
    wait_done(eng, rcv, sh, *sends, timeout=10)

    assert [col.res for col in sends] == [len(ch) for ch in chunks]
    assert sh.res == 0
    assert rcv.payload() == b"".join(chunks)
    assert rcv.records[-1][:2] == (0, False), "peer must see EOF after all data"
    finals = [name for name, _, more in log if not more and name != "recv"]
    assert finals == [f"send{i}" for i in range(len(chunks))] + ["shutdown"]


def test_close_fd(eng, socketpair):
    a, b = socketpair()
    fd = a.detach()
    col = Collector()
    eng.close_fd(fd, col)
    wait_done(eng, col)
    assert col.records == [(0, False, None)]
    assert not fd_is_open(fd)
    assert recv_exact(b, 1) == b""  # peer sees EOF


def test_close_fd_of_pipe_end(eng, pipe, res_tracker):
    r, w = pipe()
    col = Collector()
    eng.close_fd(w, col)
    wait_done(eng, col)
    res_tracker.forget(w)
    assert col.res == 0
    assert not fd_is_open(w)
    eof = Collector()
    eng.read(r, bytearray(8), eof)
    wait_done(eng, eof)
    assert eof.res == 0


# ------------------------------------------------------------------ wake


def test_wake_from_thread_interrupts_blocking_run(eng, socketpair):
    skip_unless_wait_syscalls_known()
    a, _ = socketpair()
    pending = Collector()
    ud = eng.recv(a.fileno(), pending)  # something in flight, so run(None) really blocks
    settle(eng)
    before = eng.stats()["wakeups"]
    main_tid = threading.get_native_id()
    waits_before = eng.stats()["waits"]

    in_run = threading.Event()
    woke = threading.Event()
    seen_blocked: list[bool] = []

    def waker():
        # The wake under test is the "asleep" one: wait until the main thread
        # is inside run() and blocked in the kernel (not in a GIL handover:
        # cffi released the GIL before ul_run, and this thread holds it now).
        in_run.wait()
        wait_until_sleeping(main_tid)
        seen_blocked.append(True)
        woke.set()
        eng.wake()

    thread = threading.Thread(target=waker, daemon=True)
    thread.start()
    early_returns = 0
    while True:
        in_run.set()
        n = eng.run(None)  # returns on the wake (or EINTR); a lost wake hangs: pytest-timeout
        assert n == 0 and not pending.records
        if woke.is_set():
            break
        # run(None) came back before anyone called wake() (-EINTR maps to 0)
        early_returns += 1
        assert early_returns < 20, "run(None) keeps returning without a wake"
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen_blocked
    assert eng.stats()["waits"] > waits_before
    assert eng.stats()["wakeups"] >= before + 1  # it was asleep: one eventfd write

    assert eng.cancel(ud)
    wait_done(eng, pending)


def test_wake_while_awake_makes_no_syscall(eng):
    before = eng.stats()["wakeups"]
    for _ in range(10):
        eng.wake()  # nobody is asleep in run(): the design says no syscall
    assert eng.stats()["wakeups"] == before
    eng.run(0)


def test_idle_and_ready_runs_enter_the_kernel_only_when_needed(eng):
    """Syscall thrift: with nothing to submit and nothing pending, io_uring turns
    make no kernel entry at all; completions already visible are reaped from the
    mapped CQ. epoll polls once per turn while an op is in flight (docs/design.md
    §10), not when none is (decision 291)."""
    eng.run(0)  # first run enables the ring and arms the engine's own wake poll
    before = eng.stats()["enters"]
    for _ in range(100):
        assert eng.run(0) == 0
    idle_enters = eng.stats()["enters"] - before
    done = []
    for _ in range(64):
        eng.nop(lambda res, more, data: done.append(res))
    before = eng.stats()["enters"]
    while len(done) < 64:
        eng.run(0)
    batch_enters = eng.stats()["enters"] - before
    assert done == [0] * 64
    if eng.backend == "io_uring" and "TASKRUN_FLAG" not in eng.info()["ring_flags"]:
        pytest.skip(
            "this ring has no IORING_SETUP_TASKRUN_FLAG (Linux < 5.19): it cannot see "
            "pending task work without entering, so every turn enters by design"
        )
    if eng.backend == "io_uring":
        assert idle_enters == 0, f"{idle_enters} kernel entries for 100 idle turns"
        assert batch_enters == 1, f"64 NOPs took {batch_enters} kernel entries, not 1"
    else:
        assert idle_enters == 0  # nothing in flight: nothing epoll_wait(0) could find
