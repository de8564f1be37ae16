"""The loop's sock_* coroutines, on each backend and on the stock loop.

Tests that take ``any_loop`` also run on asyncio.SelectorEventLoop: the stock
run proves each expected value or exception is asyncio's own behaviour.
Everything is loopback and bounded (``run_in`` wraps every run in wait_for).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import socket
import ssl

import pytest
from conftest import is_stock, make_loop, run_in, skip_if_stock_lacks

MiB = 1 << 20


def _payload(n: int, seed: int = 0) -> bytes:
    """n bytes that are not periodic at any small period (catches reordering)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


async def _recv_exactly(lp, sock, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await lp.sock_recv(sock, min(n - len(out), 256 * 1024))
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def _recv_until_eof(lp, sock) -> bytes:
    out = bytearray()
    while True:
        chunk = await lp.sock_recv(sock, 65536)
        if not chunk:
            return bytes(out)
        out += chunk


# --------------------------------------------------------------------------
# receive


def test_sock_recv(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()

    async def main():
        task = asyncio.ensure_future(lp.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not task.done()  # nothing sent yet: it waits
        b.send(b"hello")
        first = await task
        b.send(b"0123456789")
        part = await lp.sock_recv(a, 4)  # at most n bytes
        rest = await lp.sock_recv(a, 100)
        return first, part, rest

    assert run_in(lp, main()) == (b"hello", b"0123", b"456789")


def test_sock_recv_large_n_and_eof(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()
    data = _payload(3 * MiB)

    async def main():
        async def writer():
            await lp.sock_sendall(b, data)
            b.shutdown(socket.SHUT_WR)

        w = asyncio.ensure_future(writer())
        got = bytearray()
        while True:
            chunk = await lp.sock_recv(a, 4 * MiB)  # larger than any pool buffer
            assert len(chunk) <= 4 * MiB
            if not chunk:
                break
            got += chunk
        await w
        # EOF stays EOF
        assert await lp.sock_recv(a, 10) == b""
        return bytes(got)

    assert run_in(lp, main(), timeout=30) == data


def test_sock_recv_into(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()

    async def main():
        buf = bytearray(8)
        b.send(b"abcdefghijkl")
        n1 = await lp.sock_recv_into(a, buf)
        first = bytes(buf[:n1])
        view = memoryview(bytearray(10))[2:6]  # a slice: write only inside it
        n2 = await lp.sock_recv_into(a, view)
        whole = bytes(view.obj)
        b.close()
        n3 = await lp.sock_recv_into(a, bytearray(4))
        return first, n2, whole, n3

    first, n2, whole, n3 = run_in(lp, main())
    assert first == b"abcdefgh"
    assert n2 == 4 and whole == b"\0\0ijkl\0\0\0\0"
    assert n3 == 0


def test_sock_recv_into_waits_then_fills(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()

    async def main():
        buf = bytearray(b"-" * 16)
        task = asyncio.ensure_future(lp.sock_recv_into(a, buf))
        await asyncio.sleep(0.01)
        assert not task.done()
        b.send(b"xyz")
        n = await task
        return n, bytes(buf)

    assert run_in(lp, main()) == (3, b"xyz" + b"-" * 13)


def test_sock_recvfrom(any_loop, udp_socket):
    lp = any_loop
    skip_if_stock_lacks(lp, "sock_recvfrom")
    u, v = udp_socket(), udp_socket()

    async def main():
        task = asyncio.ensure_future(lp.sock_recvfrom(u, 100))
        await asyncio.sleep(0.01)
        assert not task.done()
        v.sendto(b"dgram-1", u.getsockname())
        first = await task
        v.sendto(b"a-long-datagram", u.getsockname())
        v.sendto(b"next", u.getsockname())
        truncated = await lp.sock_recvfrom(u, 6)  # the rest of it is discarded
        after = await lp.sock_recvfrom(u, 100)
        v.sendto(b"", u.getsockname())
        empty = await lp.sock_recvfrom(u, 100)
        return first, truncated, after, empty

    first, truncated, after, empty = run_in(lp, main())
    addr = v.getsockname()
    assert first == (b"dgram-1", addr)
    assert truncated == (b"a-long", addr)
    assert after == (b"next", addr)
    assert empty == (b"", addr)


def test_sock_recvfrom_into(any_loop, udp_socket):
    lp = any_loop
    skip_if_stock_lacks(lp, "sock_recvfrom_into")
    u, v = udp_socket(), udp_socket()

    async def main():
        buf = bytearray(b"." * 10)
        v.sendto(b"abcdef", u.getsockname())
        r1 = await lp.sock_recvfrom_into(u, buf)
        snap1 = bytes(buf)
        buf2 = bytearray(b"." * 10)
        v.sendto(b"123456", u.getsockname())
        r2 = await lp.sock_recvfrom_into(u, buf2, 3)
        return r1, snap1, r2, bytes(buf2)

    r1, snap1, r2, snap2 = run_in(lp, main())
    addr = v.getsockname()
    assert r1 == (6, addr) and snap1 == b"abcdef...."
    assert r2 == (3, addr) and snap2 == b"123......."


def test_sock_recvfrom_unix_datagram(any_loop, tmp_path, res_tracker):
    lp = any_loop
    skip_if_stock_lacks(lp, "sock_recvfrom", "sock_sendto")
    path_u, path_v = str(tmp_path / "u.sock"), str(tmp_path / "v.sock")
    u = res_tracker.sock(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    v = res_tracker.sock(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    u.bind(path_u)
    v.bind(path_v)
    u.setblocking(False)
    v.setblocking(False)

    async def main():
        await lp.sock_sendto(v, b"over unix", path_u)
        return await lp.sock_recvfrom(u, 100)

    assert run_in(lp, main()) == (b"over unix", path_v)


# --------------------------------------------------------------------------
# send


def test_sock_sendall_8mib_socketpair(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()
    data = _payload(8 * MiB, seed=1)

    async def main():
        reader = asyncio.ensure_future(_recv_exactly(lp, b, len(data)))
        await lp.sock_sendall(a, data)
        return await reader

    got = run_in(lp, main(), timeout=40)
    assert len(got) == len(data)
    assert got == data


def test_sock_sendall_tcp_full_duplex(any_loop, tcp_pair):
    lp = any_loop
    c, s = tcp_pair()
    up, down = _payload(4 * MiB, seed=2), _payload(4 * MiB, seed=3)

    async def main():
        r_server = asyncio.ensure_future(_recv_exactly(lp, s, len(up)))
        r_client = asyncio.ensure_future(_recv_exactly(lp, c, len(down)))
        await asyncio.gather(lp.sock_sendall(c, up), lp.sock_sendall(s, down))
        return await r_server, await r_client

    got_up, got_down = run_in(lp, main(), timeout=40)
    assert got_up == up
    assert got_down == down


def test_sock_sendall_buffer_types_and_order(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()

    async def main():
        buf = bytearray(b"from-bytearray|")
        await lp.sock_sendall(a, buf)
        buf[:] = b"MUTATED AFTERWARDS"  # already sent: must not matter
        await lp.sock_sendall(a, memoryview(b"from-memoryview|"))
        await lp.sock_sendall(a, b"")
        await lp.sock_sendall(a, b"from-bytes")
        a.shutdown(socket.SHUT_WR)
        return await _recv_until_eof(lp, b)

    assert run_in(lp, main()) == b"from-bytearray|from-memoryview|from-bytes"


def test_sock_sendall_many_concurrent_in_order(loop, socketpair):
    """sendalls started in order deliver in order (the engine's ordered queue)."""
    a, b = socketpair()
    chunks = [_payload(1000 + 97 * i, seed=i) for i in range(50)]

    async def main():
        reader = asyncio.ensure_future(_recv_exactly(loop, b, sum(map(len, chunks))))
        await asyncio.gather(*(loop.sock_sendall(a, c) for c in chunks))
        return await reader

    assert run_in(loop, main()) == b"".join(chunks)


def test_sock_sendall_peer_closed(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()
    b.close()

    async def main():
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):
                await lp.sock_sendall(a, b"x" * 65536)
        return "raised"

    assert run_in(lp, main()) == "raised"


def test_sock_sendto(any_loop, udp_socket):
    lp = any_loop
    skip_if_stock_lacks(lp, "sock_sendto", "sock_recvfrom")
    u, v = udp_socket(), udp_socket()
    port = u.getsockname()[1]

    async def main():
        n1 = await lp.sock_sendto(v, b"numeric", ("127.0.0.1", port))
        n2 = await lp.sock_sendto(v, bytearray(b"by-name"), ("localhost", port))
        n3 = await lp.sock_sendto(v, b"", ("127.0.0.1", port))
        got = [await lp.sock_recvfrom(u, 100) for _ in range(3)]
        return (n1, n2, n3), got

    counts, got = run_in(lp, main())
    assert counts == (7, 7, 0)
    addr = v.getsockname()
    assert got == [(b"numeric", addr), (b"by-name", addr), (b"", addr)]


def test_sock_sendto_errors(any_loop, udp_socket):
    lp = any_loop
    skip_if_stock_lacks(lp, "sock_sendto")
    v = udp_socket()

    async def main():
        with pytest.raises(TypeError):
            await lp.sock_sendto(v, b"x", "not a tuple")
        with pytest.raises(OverflowError):  # port out of range
            await lp.sock_sendto(v, b"x", ("127.0.0.1", 70000))
        with pytest.raises(socket.gaierror):
            await lp.sock_sendto(v, b"x", ("name.invalid", 9))
        return "ok"

    assert run_in(lp, main()) == "ok"


# --------------------------------------------------------------------------
# connect / accept


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_sock_connect_tcp_and_accept(any_loop, tcp_listener, res_tracker, host):
    lp = any_loop
    lst = tcp_listener()
    port = lst.getsockname()[1]
    c = res_tracker.sock(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    c.setblocking(False)

    async def main():
        accept = asyncio.ensure_future(lp.sock_accept(lst))
        await lp.sock_connect(c, (host, port))
        conn, addr = await accept
        res_tracker.sock(conn)
        await lp.sock_sendall(c, b"ping")
        got = await lp.sock_recv(conn, 10)
        return conn, addr, got

    conn, addr, got = run_in(lp, main())
    assert got == b"ping"
    assert addr == c.getsockname()
    assert conn.getpeername() == c.getsockname()
    assert c.getpeername() == ("127.0.0.1", port)
    assert conn.gettimeout() == 0.0
    assert not conn.getblocking()
    assert conn.family == socket.AF_INET and conn.type == socket.SOCK_STREAM


def test_sock_accept_many(any_loop, tcp_listener, res_tracker):
    lp = any_loop
    lst = tcp_listener(backlog=32)
    clients = []

    async def main():
        accepted = []
        for _ in range(20):
            c = res_tracker.sock(socket.socket())
            c.setblocking(False)
            clients.append(c)
            task = asyncio.ensure_future(lp.sock_connect(c, lst.getsockname()))
            conn, addr = await lp.sock_accept(lst)
            res_tracker.sock(conn)
            await task
            accepted.append(addr)
        return accepted

    accepted = run_in(lp, main())
    assert accepted == [c.getsockname() for c in clients]


def test_sock_connect_unix(any_loop, tmp_path, res_tracker):
    lp = any_loop
    path = str(tmp_path / "srv.sock")
    lst = res_tracker.sock(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    lst.bind(path)
    lst.listen(4)
    lst.setblocking(False)
    c = res_tracker.sock(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    c.setblocking(False)

    async def main():
        accept = asyncio.ensure_future(lp.sock_accept(lst))
        await lp.sock_connect(c, path)
        conn, addr = await accept
        res_tracker.sock(conn)
        await lp.sock_sendall(conn, b"unix!")
        return addr, await lp.sock_recv(c, 10), conn

    addr, got, conn = run_in(lp, main())
    assert got == b"unix!"
    assert addr == c.getsockname()  # unnamed client: ''
    assert c.getpeername() == path
    assert not conn.getblocking()


def test_sock_connect_unix_missing_path(any_loop, tmp_path, res_tracker):
    lp = any_loop
    c = res_tracker.sock(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    c.setblocking(False)

    async def main():
        with pytest.raises(FileNotFoundError) as info:
            await lp.sock_connect(c, str(tmp_path / "nobody-here"))
        return info.value.errno

    assert run_in(lp, main()) == errno.ENOENT


def test_sock_connect_refused(any_loop, res_tracker):
    lp = any_loop
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    c = res_tracker.sock(socket.socket())
    c.setblocking(False)

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await lp.sock_connect(c, ("127.0.0.1", port))
        return info.value

    exc = run_in(lp, main())
    assert exc.errno == errno.ECONNREFUSED
    assert str(exc) == f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})"


def test_sock_connect_bad_name(any_loop, res_tracker):
    lp = any_loop
    c = res_tracker.sock(socket.socket())
    c.setblocking(False)

    async def main():
        with pytest.raises(socket.gaierror):
            await lp.sock_connect(c, ("name.invalid", 80))
        return "ok"

    assert run_in(lp, main()) == "ok"


# --------------------------------------------------------------------------
# sendfile


@pytest.fixture
def data_file(tmp_path):
    data = _payload(300_000, seed=7)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


def test_sock_sendfile_whole_file(any_loop, socketpair, data_file):
    lp = any_loop
    path, data = data_file
    a, b = socketpair()

    async def main():
        with open(path, "rb") as f:
            reader = asyncio.ensure_future(_recv_exactly(lp, b, len(data)))
            sent = await lp.sock_sendfile(a, f)
            return sent, f.tell(), await reader

    sent, pos, got = run_in(lp, main(), timeout=20)
    assert sent == len(data)
    assert pos == len(data)
    assert got == data


@pytest.mark.parametrize("offset,count", [(0, 1000), (12345, 100_000), (299_990, None),
                                          (299_990, 500)])
def test_sock_sendfile_offset_count(any_loop, socketpair, data_file, offset, count):
    lp = any_loop
    path, data = data_file
    a, b = socketpair()
    expected = data[offset:offset + count] if count else data[offset:]

    async def main():
        with open(path, "rb") as f:
            f.seek(17)  # the file position is not where sending starts
            reader = asyncio.ensure_future(_recv_exactly(lp, b, len(expected)))
            sent = await lp.sock_sendfile(a, f, offset, count)
            pos = f.tell()
            tail = f.read(5)
            return sent, pos, tail, await reader

    sent, pos, tail, got = run_in(lp, main(), timeout=20)
    assert sent == len(expected)
    assert got == expected
    # as the stock loop: the position ends right after the last byte sent
    assert pos == offset + len(expected)
    assert tail == data[pos:pos + 5]


def test_sock_sendfile_offset_past_end(any_loop, socketpair, data_file):
    lp = any_loop
    path, data = data_file
    a, b = socketpair()

    async def main():
        with open(path, "rb") as f:
            f.seek(3)
            sent = await lp.sock_sendfile(a, f, len(data) + 10)
            return sent, f.tell()

    assert run_in(lp, main()) == (0, 3)


@pytest.mark.parametrize("via", ["sock", "transport"])
def test_sendfile_closed_under_it_sends_nothing_to_a_new_socket(loop, via, tmp_path):
    """Decision 859: a sendfile waiting for its socket to turn writable when
    the socket (sock.close()) or its transport (close()) closes, a new socket
    taking the fd's number, then the old socket turning writable (its peer
    reads): no byte goes to the new socket. A socket's sendfile fails with
    EBADF, what the stock loop's sendfile(2) on sock.fileno() (-1) gives
    (stock itself does not end here: its writer is gone with the fd); a
    transport's waits on, as stock's, whose close() removes its writer
    (decision 892; EBADF from the poll's cancelled record before). Before,
    the task resumed by the poll's record called sendfile(2) on the number
    (io_uring's poll keeps the old socket alive: `sock` sent 262,144 B to
    the new socket); without the check, the record of the poll the
    transport's close cancelled did (epoll: `transport`). A number the
    engine has not closed yet (io_uring's transport close) is not taken."""
    lp = loop
    a, peer = socket.socketpair()
    for s in (a, peer):
        s.setblocking(False)
    made = []
    path = tmp_path / "big.bin"
    path.write_bytes(_payload(4_000_000, seed=3))

    async def main():
        with open(path, "rb") as f:
            if via == "sock":
                sock = a
                task = lp.create_task(lp.sock_sendfile(a, f))
            else:
                tr, _ = await lp.create_unix_connection(asyncio.Protocol, sock=a)
                sock = tr.get_extra_info("socket")
                task = lp.create_task(lp.sendfile(tr, f))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not task.done()  # waits: the peer does not read
            fd = sock.fileno()
            if via == "sock":
                a.close()
            else:
                tr.close()
            other = None
            for _ in range(50):  # a new socket takes fd's number, if free
                x, y = socket.socketpair()
                x.setblocking(False)
                y.setblocking(False)
                made.extend((x, y))
                if fd in (x.fileno(), y.fileno()):
                    other = y if x.fileno() == fd else x
                    break
            for _ in range(50):  # the old socket's peer reads: writable
                try:
                    peer.recv(1 << 20)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0)
            stray = 0
            if other is not None:
                try:
                    stray = len(other.recv(1 << 20))
                except BlockingIOError:
                    pass
            if task.done():
                exc = task.exception()
                res = (type(exc), exc.errno) if isinstance(exc, OSError) else repr(exc)
            else:
                task.cancel()  # (epoll's poll of a socket closed behind it)
                await asyncio.gather(task, return_exceptions=True)
                res = "pending"
            return stray, res

    try:
        stray, res = run_in(lp, main(), timeout=30)
    finally:
        for s in made + [a, peer]:
            s.close()
    assert stray == 0
    assert res in ((OSError, errno.EBADF), "pending")
    if via == "transport":
        assert res == "pending"


def test_sock_sendfile_not_regular_file(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()

    async def main():
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await lp.sock_sendfile(a, io.BytesIO(b"in memory"), fallback=False)
        # with the fallback it is read and sent
        sent = await lp.sock_sendfile(a, io.BytesIO(b"in memory"))
        return sent, await _recv_exactly(lp, b, 9)

    assert run_in(lp, main()) == (9, b"in memory")


def _sendfile_outcome(lp, make_file, **kwargs):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    f = make_file()

    async def main():
        try:
            return ("ok", await lp.sock_sendfile(a, f, **kwargs))
        except Exception as exc:
            return ("raised", type(exc))

    try:
        return run_in(lp, main())
    finally:
        f.close()
        a.close()
        b.close()


def _pipe_file():
    r, w = os.pipe()
    os.write(w, b"pipe contents")
    os.close(w)
    return open(r, "rb")


@pytest.mark.parametrize("count", [None, 5])
def test_sock_sendfile_pipe_no_fallback_like_stock(loop, count):
    """A pipe is not a regular file: whatever the stock loop does, we do."""
    stock = make_loop("stock")
    try:
        expected = _sendfile_outcome(stock, _pipe_file, count=count, fallback=False)
    finally:
        stock.close()
    assert _sendfile_outcome(loop, _pipe_file, count=count, fallback=False) == expected


def test_sock_sendfile_bad_params(any_loop, socketpair, udp_socket, data_file, tmp_path):
    lp = any_loop
    path, _ = data_file
    a, _b = socketpair()
    u = udp_socket()
    text = tmp_path / "text.txt"
    text.write_text("text")

    async def main():
        with open(path, "rb") as f:
            with pytest.raises(ValueError):
                await lp.sock_sendfile(u, f)  # not SOCK_STREAM
            with pytest.raises(ValueError):
                await lp.sock_sendfile(a, f, -1)
            with pytest.raises(ValueError):
                await lp.sock_sendfile(a, f, 0, 0)
            with pytest.raises(TypeError):
                await lp.sock_sendfile(a, f, "0")
        with open(text) as tf:
            with pytest.raises(ValueError):
                await lp.sock_sendfile(a, tf)
        return "ok"

    assert run_in(lp, main()) == "ok"


# --------------------------------------------------------------------------
# bad input, as the stock loop reports it


def _sock_calls(lp, sock, peer_addr=("127.0.0.1", 9)):
    """(name, zero-arg coroutine factory) for every sock_* method (for the stock
    loop of Python 3.10, those it has: it gained the datagram ones in 3.11)."""
    calls = [
        ("sock_recv", lambda: lp.sock_recv(sock, 10)),
        ("sock_recv_into", lambda: lp.sock_recv_into(sock, bytearray(10))),
        ("sock_recvfrom", lambda: lp.sock_recvfrom(sock, 10)),
        ("sock_recvfrom_into", lambda: lp.sock_recvfrom_into(sock, bytearray(10))),
        ("sock_sendall", lambda: lp.sock_sendall(sock, b"x")),
        ("sock_sendto", lambda: lp.sock_sendto(sock, b"x", peer_addr)),
        ("sock_connect", lambda: lp.sock_connect(sock, peer_addr)),
        ("sock_accept", lambda: lp.sock_accept(sock)),
    ]
    if is_stock(lp):
        calls = [(name, call) for name, call in calls if hasattr(lp, name)]
    return calls


def test_ssl_socket_rejected(any_loop, res_tracker, data_file):
    lp = any_loop
    ctx = ssl.create_default_context()
    raw = socket.socket()
    sslsock = res_tracker.sock(
        ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
    )
    sslsock.setblocking(False)
    path, _ = data_file

    async def main():
        failures = []
        for name, make in _sock_calls(lp, sslsock):
            try:
                await make()
            except TypeError:
                continue
            except BaseException as exc:
                failures.append((name, repr(exc)))
            else:
                failures.append((name, "no error"))
        with open(path, "rb") as f:
            with pytest.raises(TypeError):
                await lp.sock_sendfile(sslsock, f)
        return failures

    assert run_in(lp, main()) == []


def test_debug_blocking_socket_rejected(any_loop, res_tracker, data_file):
    lp = any_loop
    lp.set_debug(True)
    s = res_tracker.sock(socket.socket())
    assert s.gettimeout() is None  # blocking
    path, _ = data_file

    async def main():
        failures = []
        for name, make in _sock_calls(lp, s):
            try:
                await make()
            except ValueError as exc:
                if str(exc) != "the socket must be non-blocking":
                    failures.append((name, repr(exc)))
            except BaseException as exc:
                failures.append((name, repr(exc)))
            else:
                failures.append((name, "no error"))
        with open(path, "rb") as f:
            with pytest.raises(ValueError, match="the socket must be non-blocking"):
                await lp.sock_sendfile(s, f)
        return failures

    assert run_in(lp, main()) == []


def test_negative_sizes(any_loop, socketpair):
    lp = any_loop
    a, _b = socketpair()

    async def main():
        with pytest.raises(ValueError, match="negative buffersize in recv"):
            await lp.sock_recv(a, -1)
        # the stock loop of 3.10 has no datagram sock_* methods; uringloop always does
        if not is_stock(lp) or hasattr(lp, "sock_recvfrom"):
            with pytest.raises(ValueError, match="negative buffersize in recvfrom"):
                await lp.sock_recvfrom(a, -1)
            with pytest.raises(ValueError, match="negative buffersize in recvfrom_into"):
                await lp.sock_recvfrom_into(a, bytearray(4), -1)
            with pytest.raises(ValueError, match="nbytes is greater than the length"):
                await lp.sock_recvfrom_into(a, bytearray(4), 5)
        with pytest.raises(TypeError):
            await lp.sock_recv_into(a, b"read-only")
        assert await lp.sock_recv(a, 0) == b""
        return "ok"

    assert run_in(lp, main()) == "ok"


def test_closed_socket(any_loop, tcp_listener):
    lp = any_loop
    s = socket.socket()
    s.setblocking(False)
    s.close()
    peer = tcp_listener().getsockname()

    async def main():
        failures = []
        for name, make in _sock_calls(lp, s, peer):
            try:
                await asyncio.wait_for(make(), 2)
            except asyncio.TimeoutError:
                failures.append((name, "hung"))
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    failures.append((name, repr(exc)))
            except BaseException as exc:
                failures.append((name, repr(exc)))
            else:
                failures.append((name, "no error"))
        return failures

    assert run_in(lp, main()) == []


def test_socket_closed_by_peer_while_receiving(any_loop, socketpair):
    lp = any_loop
    a, b = socketpair()

    async def main():
        task = asyncio.ensure_future(lp.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        b.close()
        return await task

    assert run_in(lp, main()) == b""


def test_recv_reset_by_peer(any_loop, tcp_pair):
    lp = any_loop
    c, s = tcp_pair()

    async def main():
        task = asyncio.ensure_future(lp.sock_recv(c, 100))
        await asyncio.sleep(0.01)
        # SO_LINGER 0: close sends RST
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()
        with pytest.raises(ConnectionResetError):
            await task
        return "reset"

    assert run_in(lp, main()) == "reset"


def test_close_loop_with_receive_in_flight(loop, socketpair):
    """Closing a loop whose receive never finished: no kernel op outlives the
    loop (no ResourceWarning) and no later byte is swallowed by a stale op."""
    import warnings

    a, b = socketpair()
    task = loop.create_task(loop.sock_recv(a, 100))
    run_in(loop, asyncio.sleep(0.02))
    assert not task.done()
    task.cancel()  # without running the loop again: the op is still in the engine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.close()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    b.send(b"after close")
    a.settimeout(5)
    assert a.recv(100) == b"after close"
