"""The suite's own switches, each checked to be able to fail.

* backend selection: an io_uring the probe says is available is what ``auto``
  picks (an init regression would otherwise only move the whole suite to epoll);
* URINGLOOP_REQUIRE_IO_URING=1 turns an io_uring skip into a failure;
* OPT_TEST_EAGAIN really sends ops down the EAGAIN -> poll -> reissue path and
  connect down EINPROGRESS -> POLLOUT -> SO_ERROR, with correct results;
* the loop kind ``io_uring-fallbacks`` really runs the fallbacks;
* guard mode: pool buffers nobody owns are inaccessible to the kernel (EFAULT)
  and to user space (SIGSEGV), and the owned ones work.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap

import conftest
import pytest
from conftest import Collector, make_loop, require_uring, run_in, settle, wait_done

from uringloop import Loop, engine

PAGE = os.sysconf("SC_PAGESIZE")


# ------------------------------------------------------- backend selection


def test_auto_picks_io_uring_when_the_probe_says_available(monkeypatch, res_tracker):
    monkeypatch.delenv("URINGLOOP_BACKEND", raising=False)
    info = engine.backend_info()
    with engine.Engine("auto") as eng:
        auto = eng.backend
    lp = Loop()
    try:
        loop_backend = lp.backend
    finally:
        lp.close()
    if info["io_uring_available"]:
        assert auto == "io_uring", f"the probe says io_uring works, auto picked {auto}"
        assert loop_backend == "io_uring"
    else:
        assert auto == "epoll"
        assert info["probe_reason"], "epoll picked without a reason"
        require_uring()  # skips with the reason (fails under the CI switch)


def test_io_uring_cases_ignore_URINGLOOP_BACKEND(monkeypatch):
    """Cases that name io_uring run it even when the default is forced to epoll
    (``make test-epoll`` used to turn them all into skips)."""
    monkeypatch.setenv("URINGLOOP_BACKEND", "epoll")
    conftest.uring_unavailable_reason.cache_clear()
    try:
        require_uring()
        with engine.Engine("io_uring") as eng:
            assert eng.backend == "io_uring"
    finally:
        conftest.uring_unavailable_reason.cache_clear()


@pytest.mark.parametrize("required", [False, True])
def test_require_io_uring_switch(monkeypatch, required):
    monkeypatch.setattr(conftest, "REQUIRE_IO_URING", required)
    monkeypatch.setattr(conftest, "uring_unavailable_reason", lambda: "refused by a test")
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected) as caught:
        require_uring()
    assert "refused by a test" in str(caught.value)


# ---------------------------------------------------------- OPT_TEST_EAGAIN


@pytest.fixture
def eagain_engine(res_tracker):
    require_uring()
    eng = engine.Engine("io_uring", options=engine.OPT_TEST_EAGAIN)
    yield eng
    left = eng.in_flight
    eng.close()
    assert left == 0


def test_forced_eagain_paths(eagain_engine, tcp_listener, res_tracker):
    eng = eagain_engine
    lst = tcp_listener()
    c = res_tracker.sock(socket.socket())
    c.setblocking(False)
    acc, con = Collector("accept"), Collector("connect")
    eng.accept(lst.fileno(), acc, multishot=False)
    eng.connect(c.fileno(), socket.AF_INET, lst.getsockname(), con)
    wait_done(eng, acc, con)
    assert con.res == 0
    s = res_tracker.sock(socket.socket(fileno=acc.res))
    s.setblocking(False)
    assert eng.stats()["eagain_retries"] == 2  # the accept and the connect

    # a send on a full socket buffer: the one case a send can say EAGAIN
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    filled = 0
    while True:
        try:
            filled += c.send(b"f" * 65536)
        except BlockingIOError:
            break
    payload = os.urandom(100_000)
    sent = Collector("send")
    eng.send(c.fileno(), payload, sent)
    settle(eng)
    # the send's stand-in came back EAGAIN; each real send that follows a
    # POLLOUT wake may find the buffer full again and say EAGAIN too
    # (MSG_DONTWAIT: the kernel's own poll is off for sends, decision 474).
    # How often that happens while the peer reads nothing depends on the
    # loopback's ACK timing (a loaded CI machine saw two such rounds), so the
    # count is at least the stand-in's one, not an exact number.
    after_send = eng.stats()["eagain_retries"]
    assert after_send >= 3
    assert not sent.done
    got = bytearray()
    while len(got) < filled + len(payload):
        try:
            got += s.recv(1 << 20)
        except BlockingIOError:
            eng.run(0.01)
    wait_done(eng, sent)
    assert sent.res == len(payload)
    assert bytes(got[filled:]) == payload
    # the rest of the send went out while the peer read, in as many short
    # sends as the window opened for, each maybe ending in EAGAIN: counted
    # from here, where nothing is in flight, not from after_send
    sent_all = eng.stats()["eagain_retries"]
    assert sent_all >= after_send

    # a receive before any data is there
    rcv = Collector("recv")
    eng.recv(s.fileno(), rcv, multishot=False)
    settle(eng)
    assert eng.stats()["eagain_retries"] == sent_all + 1
    c.send(b"late")
    wait_done(eng, rcv)
    assert rcv.payload() == b"late"
    # a receive with data waiting, and a send with room, never say EAGAIN
    c.send(b"now")
    more, out = Collector("recv"), Collector("send")
    eng.recv(s.fileno(), more, multishot=False)
    wait_done(eng, more)
    eng.send(s.fileno(), b"back", out)
    wait_done(eng, out)
    assert more.payload() == b"now" and out.res == 4
    assert eng.stats()["eagain_retries"] == sent_all + 1


def test_forced_eagain_datagrams(eagain_engine, udp_socket):
    eng = eagain_engine
    a, b = udp_socket(), udp_socket()
    sent, got = Collector("sendmsg"), Collector("recvmsg")
    buf = bytearray(100)
    eng.recvmsg(b.fileno(), buf, got, socket.AF_INET)
    eng.sendmsg(a.fileno(), b"ping", b.getsockname(), sent, socket.AF_INET)
    wait_done(eng, sent, got)
    assert sent.res == 4 and got.res == 4 and bytes(buf[:4]) == b"ping"
    assert got.final[2] == a.getsockname()
    # the receive waited (no datagram yet); the send had room, so no EAGAIN
    assert eng.stats()["eagain_retries"] == 1


def test_forced_eagain_cancel_and_refused_connect(eagain_engine, socketpair, res_tracker):
    eng = eagain_engine
    a, _ = socketpair()
    col = Collector()
    ud = eng.recv(a.fileno(), col, multishot=False)
    assert eng.cancel(ud)  # lands on the stand-in NOP: the op never ran
    wait_done(eng, col)
    assert col.res == -errno.ECANCELED
    # a connect that fails keeps its own error (only a success becomes EINPROGRESS)
    probe = res_tracker.sock(socket.socket())
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]  # bound, not listening: refused
    c = res_tracker.sock(socket.socket())
    c.setblocking(False)
    con = Collector()
    eng.connect(c.fileno(), socket.AF_INET, ("127.0.0.1", port), con)
    wait_done(eng, con)
    assert con.res == -errno.ECONNREFUSED


def test_fallbacks_loop_kind_runs_the_fallbacks(res_tracker):
    lp = make_loop("io_uring-fallbacks")
    try:
        info = lp._engine.info()
        assert not info["multishot_recv"] and not info["multishot_accept"]
        assert not info["buffer_ring"] and not info["cancel_fd"]
        assert "DEFER_TASKRUN" not in info["ring_flags"]

        async def main():
            lst = res_tracker.sock(socket.socket())
            lst.bind(("127.0.0.1", 0))
            lst.listen()
            lst.setblocking(False)
            c = res_tracker.sock(socket.socket())
            c.setblocking(False)
            accepted = lp.create_task(lp.sock_accept(lst))
            await lp.sock_connect(c, lst.getsockname())
            s, _ = await accepted
            res_tracker.sock(s)
            await lp.sock_sendall(c, b"x" * 300_000)
            n = 0
            while n < 300_000:
                n += len(await lp.sock_recv(s, 65536))

        before = lp.engine_stats()["eagain_retries"]
        run_in(lp, main())
        assert lp.engine_stats()["eagain_retries"] > before
    finally:
        lp.close()


# ---------------------------------------------------------------- guard mode


GUARD_KINDS = [
    pytest.param(("io_uring", engine.OPT_NO_BUFRING), id="io_uring-no-bufring"),
    pytest.param(("io_uring", 0), id="io_uring"),
    pytest.param(("epoll", 0), id="epoll"),
]


@pytest.fixture(params=GUARD_KINDS)
def guard_engine(request, res_tracker):
    backend, options = request.param
    if backend == "io_uring":
        require_uring()
    eng = engine.Engine(backend, options=options | engine.OPT_GUARD, buf_size=1000)
    yield eng
    faults = eng.stats()["guard_faults"]
    eng.close()
    assert faults == 0


def _pool(eng) -> int:
    return int(engine.ffi.cast("uintptr_t", engine.lib.ul_pool(eng._e)))


def test_guard_buffers_are_whole_pages(guard_engine):
    info = guard_engine.info()
    assert info["guard"]
    assert info["buf_size"] % PAGE == 0 and info["buf_size"] >= 1000
    assert _pool(guard_engine) % PAGE == 0


def test_guard_free_buffer_refuses_kernel_writes(guard_engine, socketpair):
    """The guard's point: a kernel write into a buffer that is neither provided
    to the kernel nor named by a record fails with EFAULT."""
    eng = guard_engine
    a, b = socketpair()
    col = Collector()
    eng.recv(b.fileno(), col, multishot=False)
    a.send(b"hello")
    wait_done(eng, col)
    assert col.payload() == b"hello"
    eng.run(0)  # recycles the buffer the record named
    libc = ctypes.CDLL(None, use_errno=True)
    libc.recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.recv.restype = ctypes.c_ssize_t
    a.send(b"stray")
    if eng.info()["buffer_ring"]:
        # with a buffer ring every buffer is the kernel's to fill: all open
        assert libc.recv(b.fileno(), _pool(eng), 5, 0) == 5
    else:
        assert libc.recv(b.fileno(), _pool(eng), 5, 0) == -1
        assert ctypes.get_errno() == errno.EFAULT


def test_guard_user_space_access_faults():
    """A read of a free pool buffer from user space kills the process."""
    code = textwrap.dedent(
        """
        import ctypes
        from uringloop import engine
        eng = engine.Engine("epoll", options=engine.OPT_GUARD)
        addr = int(engine.ffi.cast("uintptr_t", engine.lib.ul_pool(eng._e)))
        print("reading", flush=True)
        ctypes.string_at(addr, 1)
        print("read it")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(engine.__file__)),
               PYTHONFAULTHANDLER="")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout == "reading\n", (proc.stdout, proc.stderr)
    if "AddressSanitizer" in proc.stderr:  # under make asan: ASan reports the SEGV, aborts
        assert "SEGV" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stderr)
