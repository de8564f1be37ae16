"""A review of the loop's public methods with bad and odd input, against the
stock loop (decisions 423-426).

Each scenario runs on io_uring, epoll and the stock ``asyncio.SelectorEventLoop``
(the ``tloop`` fixture) and compares its outcome with the stock loop's own
(``on_stock``): the result, or the exception's type and message. Each test
failed on uringloop before its decision's fix; what the review found the same
as stock, or different and left, is listed in decision 426.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pty
import socket
import warnings

import pytest
from conftest import LOOP_KINDS, make_loop
from transport_helpers import fd_count, on_stock, plain_listener, run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


# --------------------------------------------------------------------------
# decision 423: add_reader/add_writer on a device epoll cannot watch


def _watch_device(lp, path):
    """add_reader, then add_writer, on a character device; what each did, and
    whether remove_* found it registered."""
    fd = os.open(path, os.O_RDWR)
    try:
        out = []
        for add, remove in ((lp.add_reader, lp.remove_reader), (lp.add_writer, lp.remove_writer)):
            out.append(_outcome(add, fd, print))
            out.append(remove(fd))
        return out
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero"])
def test_add_reader_on_a_device_epoll_refuses(tloop, path):
    """The stock selector's epoll_ctl refuses a device without a poll method
    (EPERM): add_reader and add_writer raise PermissionError and register
    nothing. io_uring would poll it as always ready, and the epoll engine
    keeps such a file on its retry list: both accepted it."""
    expected = on_stock(_watch_device, path)
    assert expected[0] == ("PermissionError", "[Errno 1] Operation not permitted")
    assert _watch_device(tloop, path) == expected


def test_add_reader_on_a_pty_still_works(tloop):
    """A pty is a character device too, with a poll method: the probe of
    decision 423 lets it through, and the reader runs when the other side
    writes."""
    master, slave = pty.openpty()
    try:
        got = []

        async def main():
            ready = tloop.create_future()

            def on_read():
                got.append(os.read(master, 100))
                tloop.remove_reader(master)
                ready.set_result(None)

            tloop.add_reader(master, on_read)
            os.write(slave, b"ping\n")
            await wait_for(ready)

        run_in(tloop, main())
        assert got and got[0].startswith(b"ping")
    finally:
        os.close(master)
        os.close(slave)


# --------------------------------------------------------------------------
# decision 424: a second server on one listening socket


class _Named(asyncio.Protocol):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def connection_made(self, transport):
        self.log.append(self.name)
        transport.close()


def _second_server_serves(lp):
    """Two servers over one listening socket: which one's protocol factory
    serves a connection, and which server counts it."""
    log = []
    listener = plain_listener()
    port = listener.getsockname()[1]

    async def main():
        first = await lp.create_server(lambda: _Named("first", log), sock=listener)
        second = await lp.create_server(lambda: _Named("second", log), sock=listener)
        client = socket.socket()
        client.setblocking(False)
        try:
            await wait_for(lp.sock_connect(client, ("127.0.0.1", port)))
            while not log:
                await asyncio.sleep(0.005)
        finally:
            client.close()
        second.close()  # closes the listening socket
        try:
            first.close()
        except ValueError:
            pass  # stock: remove_reader(-1) on the socket the second closed
        await wait_for(second.wait_closed())
        return log

    return run_in(lp, main())


def test_second_server_on_a_socket_takes_its_connections(tloop):
    """The stock loop's add_reader replaces the first server's accept reader:
    the second server's factory serves the next connection. Ours kept the
    first server's Acceptor with its factory."""
    expected = on_stock(_second_server_serves)
    assert expected == ["second"]
    assert _second_server_serves(tloop) == expected


# --------------------------------------------------------------------------
# decision 425: a datagram or pipe transport left open at the loop's close


def _unclosed_warnings(kind):
    """Open a datagram endpoint and a read and a write pipe transport, drop
    them unclosed, close the loop, collect: the ResourceWarnings, each as its
    first two words ("unclosed transport", "unclosed <socket.socket", ...)."""
    lp = make_loop(kind)
    r, w = os.pipe()

    async def main():
        await lp.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        await lp.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb", 0))
        await lp.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run_in(lp, main())
        finally:
            lp.close()
            gc.collect()
    return sorted(
        " ".join(str(c.message).split()[:2]) for c in caught if c.category is ResourceWarning
    )


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_unclosed_transport_warns_once_as_stock(kind):
    """Stock: one "unclosed transport" per transport, its __del__ closing the
    socket or pipe. Ours warned for the socket and the two pipe files too:
    the collector finalized them before the transports (reference cycles
    through the C cores)."""
    gc.collect()
    before = fd_count()
    expected = _unclosed_warnings("stock")
    assert expected == ["unclosed transport"] * 3
    assert _unclosed_warnings(kind) == expected
    assert fd_count() <= before


# --------------------------------------------------------------------------
# decision 430: an fd closed while a reader watches it stays registered


def _closed_while_watched(lp):
    """A reader on a pipe whose read end is closed under it: what
    remove_reader answers; then, on a number reused by a new pipe, whether a
    reader added again (and one added after remove_reader) ever runs."""
    got = []
    r, w = os.pipe()
    try:
        lp.add_reader(r, got.append, "old")
        run_in(lp, asyncio.sleep(0.01))
        os.close(r)
        for _ in range(3):
            run_in(lp, asyncio.sleep(0.01))
        r2, w2 = os.pipe()  # the lowest free number: r's
        try:
            out = [r2 == r]
            lp.add_reader(r2, got.append, "again")  # the old key, as stock's selector keeps it
            os.write(w2, b"x")
            for _ in range(3):
                run_in(lp, asyncio.sleep(0.01))
            out.append(list(got))
            out.append(lp.remove_reader(r2))
            lp.add_reader(r2, got.append, "new")  # a fresh registration: it runs
            for _ in range(3):
                run_in(lp, asyncio.sleep(0.01))
            out.append(got.count("new") > 0)
            out.append(lp.remove_reader(r2))
            return out
        finally:
            os.close(r2)
            os.close(w2)
    finally:
        os.close(w)


def test_fd_closed_while_watched_stays_registered(tloop):
    """The stock selector keeps the key of an fd closed under it: remove_reader
    answers True, and a reader added again on the number's next file replaces
    the callback of the dead registration (it never runs). io_uring's poll
    ended with the close and the loop dropped the registration: remove_reader
    answered False, and the re-added reader ran (decision 430)."""
    expected = on_stock(_closed_while_watched)
    assert expected[0] is True  # the scenario reuses the number
    assert _closed_while_watched(tloop) == expected
