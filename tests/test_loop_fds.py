"""Sockets, fd numbers and the loop: what belongs to a socket stays with that
socket object, whatever number the kernel hands out next (issue 7, parts 2
and 6). Tests that take ``any_loop`` also run on the stock loop, whose
behaviour is the reference.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import socket

import pytest
from conftest import nb_socketpair as _pair
from conftest import run_in


def test_reader_runs_before_writer_and_can_remove_it(any_loop, res_tracker):
    """A reader and a writer on one fd, both ready in one turn: the reader runs
    first (the stock order) and a writer it removes does not run."""
    lp = any_loop
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    b.send(b"x")  # a is readable, and writable all along
    log = []

    async def main():
        done = lp.create_future()

        def on_write():
            log.append("w")

        def on_read():
            log.append("r")
            lp.remove_writer(a)
            lp.remove_reader(a)
            lp.call_soon(done.set_result, None)

        lp.add_writer(a, on_write)
        lp.add_reader(a, on_read)
        await done
        await asyncio.sleep(0.01)

    run_in(lp, main())
    assert log == ["r"]


def test_reader_and_writer_both_run_in_order(any_loop, res_tracker):
    lp = any_loop
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    b.send(b"x")
    log = []

    async def main():
        done = lp.create_future()

        def on_write():
            log.append("w")
            lp.remove_writer(a)
            if not done.done():
                done.set_result(None)

        def on_read():
            log.append("r")
            lp.remove_reader(a)

        lp.add_writer(a, on_write)
        lp.add_reader(a, on_read)
        await done

    run_in(lp, main())
    assert log == ["r", "w"]


# --------------------------------------------------------------------------
# datagrams (review D4, P3)


def _dgram_pair(res_tracker):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
        res_tracker.sock(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return a, b


def test_datagram_larger_than_pool_buffer_comes_whole(any_loop, res_tracker):
    lp = any_loop
    a, b = _dgram_pair(res_tracker)

    async def main():
        b.send(b"x" * 40000)
        d = await lp.sock_recv(a, 65536)
        b.send(b"y" * 40000)
        buf = bytearray(65536)
        n = await lp.sock_recv_into(a, buf)
        return len(d), d == b"x" * 40000, n, bytes(buf[:n]) == b"y" * 40000

    assert run_in(lp, main()) == (40000, True, 40000, True)


def test_recv_sizes_of_4_gib_and_more(any_loop, res_tracker):
    """n >= 2**32 is an ordinary size for the stock loop (the buffer is only
    address space until touched)."""
    lp = any_loop
    s1, s2 = (res_tracker.sock(s) for s in socket.socketpair())
    d1, d2 = _dgram_pair(res_tracker)
    for s in (s1, s2):
        s.setblocking(False)
    big = mmap.mmap(-1, (1 << 32) + 4096)

    async def main():
        out = []
        s2.send(b"stream")
        out.append(await lp.sock_recv(s1, 1 << 32))
        s2.send(b"into")
        out.append(await lp.sock_recv_into(s1, big))
        d2.send(b"dgram")
        out.append(await lp.sock_recv(d1, (1 << 32) + 1))
        d2.send(b"dgram-into")
        out.append(await lp.sock_recv_into(d1, big))
        return out

    try:
        assert run_in(lp, main()) == [b"stream", 4, b"dgram", 10]
        assert big[:10] == b"dgram-into"
    finally:
        big.close()


def test_cancelled_datagram_receives_keep_boundaries_and_order(loop, res_tracker):
    """Datagrams kept from cancelled receives stay datagrams and come back in
    the order they arrived, whether sock_recv or sock_recvfrom took them and
    whichever takes them back: a receive smaller than a kept datagram gets its
    head, as recv(n) does, never the rest of it later. (uringloop only: the
    stock loop's cancelled receive takes nothing.)"""
    lp = loop
    a, b = _dgram_pair(res_tracker)

    async def main():
        tasks = [
            asyncio.ensure_future(lp.sock_recv(a, 100) if i % 2 else lp.sock_recvfrom(a, 100))
            for i in range(6)
        ]
        await asyncio.sleep(0)  # all six receives are in the engine
        sent = [b"%d-datagram" % i for i in range(6)]
        for msg in sent:
            b.send(msg)
        # the ops completed; cancel the tasks before they resume: all kept
        while not all(t._fut_waiter.done() for t in tasks):
            await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(t.cancelled() for t in tasks)
        got = []
        for i in range(6):
            if i % 3:
                got.append(await asyncio.wait_for(lp.sock_recv(a, 4), 2))
            else:
                data, _addr = await asyncio.wait_for(lp.sock_recvfrom(a, 4), 2)
                got.append(data)
        return sent, got

    sent, got = run_in(lp, main())
    assert got == [m[:4] for m in sent]


# --------------------------------------------------------------------------
# accept


def test_accepted_socket_is_what_the_stock_loop_builds(any_loop, tcp_listener, res_tracker):
    lp = any_loop
    lst = tcp_listener()

    async def main():
        c = res_tracker.sock(socket.socket())
        c.setblocking(False)
        await lp.sock_connect(c, lst.getsockname())
        conn, addr = await lp.sock_accept(lst)
        res_tracker.sock(conn)
        return conn.family, conn.type, conn.proto, conn.gettimeout(), addr == c.getsockname()

    assert run_in(lp, main()) == (socket.AF_INET, socket.SOCK_STREAM, 0, 0.0, True)


async def _keep_one_accept(lp, lst, res_tracker):
    """A connection that an accept took just as its task was cancelled: the
    op completed, the task was cancelled before it could resume, so the loop
    keeps the connection for the next accept. Returns the client."""
    task = asyncio.ensure_future(lp.sock_accept(lst))
    await asyncio.sleep(0)
    c = res_tracker.sock(socket.socket())
    c.settimeout(2)
    c.connect(lst.getsockname())
    while not task._fut_waiter.done():  # the op's future, done before the task resumes
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the task was cancelled before it could resume")
    assert len(lp._sock_state[lst.fileno()].accepted) == 1
    return c


@pytest.mark.parametrize("how", ["loop.close", "sock_close", "_stop_serving", "number reused"])
def test_kept_connection_closed_with_its_listener(loop, tcp_listener, res_tracker, how):
    """A connection kept for the next accept is closed when the listener is
    closed (through the loop, or plainly and its number reused) or the loop
    closes: its client sees EOF."""
    lp = loop
    lst = tcp_listener()

    async def main():
        c = await _keep_one_accept(lp, lst, res_tracker)
        if how == "sock_close":
            lp.sock_close(lst)
        elif how == "_stop_serving":  # what Server.close() calls
            lp._stop_serving(lst)
        elif how == "number reused":
            n = lst.fileno()
            lst.close()
            a, b = (res_tracker.sock(s) for s in socket.socketpair())
            a.setblocking(False)
            assert a.fileno() == n
            b.send(b"x")
            assert await lp.sock_recv(a, 10) == b"x"
        await asyncio.sleep(0.01)
        return c

    c = run_in(lp, main())
    if how == "loop.close":
        lp.close()
    assert c.recv(1) == b""


# --------------------------------------------------------------------------
# connect errors


def test_connect_error_messages_are_the_stock_ones(any_loop, tcp_listener, res_tracker):
    lp = any_loop
    lst = tcp_listener()

    async def main():
        out = []
        s = res_tracker.sock(socket.socket())
        s.setblocking(False)
        for port in (70000, -1):
            try:
                await lp.sock_connect(s, ("127.0.0.1", port))
            except Exception as exc:
                out.append((type(exc), str(exc)))
        await lp.sock_connect(s, lst.getsockname())
        for _ in range(3):  # the stock loop's socket says "connected" once more
            try:
                await lp.sock_connect(s, lst.getsockname())
            except OSError as exc:
                out.append((type(exc), exc.errno, str(exc)))
                break
        return out

    assert run_in(lp, main()) == [
        (OverflowError, "connect(): port must be 0-65535."),
        (OverflowError, "connect(): port must be 0-65535."),
        (OSError, errno.EISCONN, "[Errno 106] Transport endpoint is already connected"),
    ]


# --------------------------------------------------------------------------
# per-socket state, closed sockets and reused numbers


async def _settle(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_new_socket_does_not_wait_behind_old_sockets_send(any_loop, res_tracker):
    """A sendall blocked on a socket that was then closed must not hold up a
    small sendall on a new socket that got the same number."""
    lp = any_loop

    async def main():
        a, b = _pair(res_tracker, sndbuf=4096)
        old = asyncio.ensure_future(lp.sock_sendall(a, b"o" * (8 << 20)))  # b never reads
        await asyncio.sleep(0.02)
        assert not old.done()
        n = a.fileno()
        a.close()
        c, d = _pair(res_tracker)
        assert c.fileno() == n
        await asyncio.wait_for(lp.sock_sendall(c, b"small"), 2)
        got = d.recv(100)
        await _settle(old)
        return got

    assert run_in(lp, main()) == b"small"


def test_late_cancel_of_closed_socket_keeps_new_sockets_bytes(loop, res_tracker):
    """Receives on a closed socket cancelled late never wipe what a new socket
    with the same number kept from its own cancelled receives."""
    lp = loop

    async def main():
        for i in range(30):
            a, b = _pair(res_tracker)
            old = asyncio.ensure_future(lp.sock_recv(a, 100))
            await asyncio.sleep(0)
            a.close()
            old.cancel()
            c, d = _pair(res_tracker)
            d.send(b"new%d" % i)
            task = asyncio.ensure_future(lp.sock_recv(c, 100))
            for _ in range(i % 3):
                await asyncio.sleep(0)
            task.cancel()
            got = b""
            try:
                got = await task
            except asyncio.CancelledError:
                pass
            while len(got) < len(b"new%d" % i):
                got += await asyncio.wait_for(lp.sock_recv(c, 100), 2)
            assert got == b"new%d" % i
            await asyncio.gather(old, return_exceptions=True)
            for s in (b, c, d):
                s.close()

    run_in(lp, main(), timeout=30)


def test_sock_close_with_pending_recv_gives_peer_eof(any_loop, res_tracker):
    """Review P12: loop.sock_close(sock) closes the connection at once even
    with a receive pending (io_uring holds the file while an op is in
    flight); the pending receive raises EBADF. The stock loop has no
    sock_close: sock.close() is its equivalent."""
    lp = any_loop

    async def main():
        a, b = _pair(res_tracker)
        pending = asyncio.ensure_future(lp.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        if hasattr(lp, "sock_close"):
            lp.sock_close(a)
        else:
            a.close()
        await asyncio.sleep(0.01)
        b.settimeout(2)
        eof = b.recv(10)
        if not pending.done():  # the stock loop never wakes it
            await _settle(pending)
            return eof, None
        with pytest.raises(OSError) as info:
            await pending
        return eof, info.value.errno

    eof, err = run_in(lp, main())
    assert eof == b""
    assert err == (None if isinstance(lp, asyncio.SelectorEventLoop) else errno.EBADF)


def test_plain_close_then_reuse_lets_the_old_connection_go(any_loop, res_tracker):
    """A socket closed plainly (not through the loop) with a receive pending:
    once its number is used by another socket in a sock_* call, the old
    operation is cancelled, so the old file is closed (its peer sees EOF; on
    io_uring the op held it open until then) and the old receive raises EBADF."""
    lp = any_loop

    async def main():
        a, b = _pair(res_tracker)
        pending = asyncio.ensure_future(lp.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        n = a.fileno()
        a.close()
        c, d = _pair(res_tracker)
        assert c.fileno() == n
        d.send(b"new")
        got = await asyncio.wait_for(lp.sock_recv(c, 100), 2)
        await asyncio.sleep(0.01)
        b.settimeout(2)
        eof = b.recv(10)
        if not pending.done():
            await _settle(pending)
        return got, eof

    assert run_in(lp, main()) == (b"new", b"")


# --------------------------------------------------------------------------
# more than 2 GiB in one sendall


def test_sendall_of_more_than_2_gib(loop, res_tracker):
    """2 GiB + 16 MiB of zero pages (a read-only private mapping: no memory is
    allocated for them) in one sock_sendall; a thread counts what arrives.
    (The stock loop sends it too; not run here, it takes seconds.)"""
    lp = loop
    size = (1 << 31) + (1 << 24)  # what is left after the first plain send is still > 2 GiB
    try:
        data = mmap.mmap(-1, size, prot=mmap.PROT_READ)
    except OSError as exc:
        pytest.skip(f"cannot map {size} bytes of address space: {exc}")
    a, b = (res_tracker.sock(s) for s in socket.socketpair())
    a.setblocking(False)
    b.settimeout(10)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    count = [0]

    def reader():
        buf = bytearray(4 << 20)
        while True:
            n = b.recv_into(buf)
            if not n:
                return
            count[0] += n

    import threading

    t = threading.Thread(target=reader, daemon=True)
    t.start()

    async def main():
        await lp.sock_sendall(a, data)
        a.shutdown(socket.SHUT_WR)

    try:
        run_in(lp, main(), timeout=60)
        t.join(10)
        assert not t.is_alive()
        assert count[0] == size
    finally:
        data.close()


def test_rest_of_a_cancelled_send_never_goes_to_a_new_socket(any_loop, res_tracker):
    """Issue 7 part 6: a socket closed with a sock_sendall pending, the task
    cancelled and a new socket with the same number opened, all in one step:
    nothing of the old send reaches the new socket (on io_uring the rest of a
    short send was reissued by number). Tried at many points of the send."""
    lp = any_loop

    async def main():
        for i in range(20):
            a, b = _pair(res_tracker, sndbuf=8192)
            task = asyncio.ensure_future(lp.sock_sendall(a, b"o" * (4 << 20)))
            for _ in range(2 + i % 5):
                await asyncio.sleep(0)
                try:
                    b.recv(65536)  # the send progresses, short by short
                except BlockingIOError:
                    pass
            n = a.fileno()
            a.close()
            task.cancel()
            c, d = _pair(res_tracker)
            assert c.fileno() == n
            for _ in range(5):
                await asyncio.sleep(0)
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.01)
            with pytest.raises(BlockingIOError):
                got = d.recv(65536)
                raise AssertionError(f"iteration {i}: {len(got)} bytes of the old send")
            for s in (b, c, d):
                s.close()

    run_in(lp, main(), timeout=30)


def test_receive_pending_across_a_stop_never_reaches_a_reused_number(loop, res_tracker):
    """A receive still pending when the loop stops running (io_uring parks it:
    taken out of the kernel, issued again by the next run); meanwhile its
    socket is closed and the number reused. The next run must not issue it on
    the new socket, whose bytes belong to the new socket's own receive."""
    lp = loop
    a, b = _pair(res_tracker)
    old = lp.create_task(lp.sock_recv(a, 100))
    lp.run_until_complete(asyncio.sleep(0.01))  # old's receive is in the engine
    n = a.fileno()
    a.close()
    c, d = _pair(res_tracker)
    assert c.fileno() == n
    d.send(b"new")
    assert run_in(lp, lp.sock_recv(c, 100), timeout=5) == b"new"
    run_in(lp, asyncio.gather(old, return_exceptions=True))
    assert isinstance(old.exception(), OSError) and old.exception().errno == errno.EBADF
