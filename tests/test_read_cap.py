"""A stream transport takes at most the stock loop's one recv(max_size) a turn
from the kernel (256 KiB) before Python has its bytes (decisions 924-931).

a writes a few hundred KiB to a few MB in one write(); b pauses reading in
its first data_received. What b's transport has then taken from the kernel
(a's bytes that left a's transport and are in neither a's send queue nor
b's receive queue: delivered or held for the resume) stays within stock's
bound: the stock loop takes one recv(256 KiB) in the turn; io_uring's
multishot receive ends after 256 KiB (the kernel's total byte limit, Linux
6.16+) and its re-arm waits for the next run, which comes after Python has
had the records; epoll's read loop stops at 256 KiB a run. The slack is one
pool buffer: without bundles the kernel fills a whole buffer after the limit
was almost reached. Before decision 924 io_uring's receive took up to about
1 MB there (decisions 477(b), 894). After resume every byte comes, in order.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios

import pytest
from conftest import ANY_LOOP_KINDS, finish_loop, make_loop, run_in
from transport_helpers import pattern, until

MAX_SIZE = 256 * 1024  # selector_events' max_size: stock's one recv a turn
SLACK = 16384  # one pool buffer (the engine's default buf_size)


SIOCOUTQNSD = 0x894B  # TCP: bytes in the send queue not sent yet


def _ioctl_int(sock, req):
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), req, b"\0\0\0\0"))[0]


class _PausedReader(asyncio.Protocol):
    """Pauses its transport in its first data_received; then collects."""

    def __init__(self, total):
        self.total, self.data, self.t = total, bytearray(), None
        self.first = None  # len of the first data_received
        self.done = None

    def connection_made(self, t):
        self.t = t
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, d):
        if self.first is None:
            self.first = len(d)
            self.t.pause_reading()
        self.data += d
        if len(self.data) >= self.total and not self.done.done():
            self.done.set_result(None)

    def eof_received(self):
        return True


def _pair(family):
    if family == "unix":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        with socket.create_server(("127.0.0.1", 0)) as srv:
            a = socket.create_connection(srv.getsockname())
            b, _ = srv.accept()
    # room for more than stock's one recv before b's transport starts (a Unix
    # stream's bytes wait in b's queue, charged to a's send buffer; the
    # kernel caps the size at net.core.wmem_max, doubled)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    a.setblocking(False)
    return a, b


def _prefill(sa, payload):
    """a sends until the kernel takes no more: how much it took."""
    sent, view = 0, memoryview(payload)
    while sent < len(view):
        try:
            sent += sa.send(view[sent : sent + 65536])
        except BlockingIOError:
            break
    return sent


def _paused_reader_takes(kind, family, size, options=None):
    """What b's transport had taken from the kernel once paused and settled
    (taken), what a had put there before b's transport began (prefilled),
    b's first data_received's length (first), and whether the bytes after
    resume were a's, in order (ok)."""
    lp = make_loop(kind) if options is None else _loop_with(options)
    payload = pattern(size, size % 97)
    sa, sb = _pair(family)
    out = {}

    def state():
        # a Unix stream's bytes wait in the receiver's queue only; TCP's
        # unsent ones in the sender's too (loopback: what was sent is in
        # b's receive queue)
        unsent = _ioctl_int(sa, SIOCOUTQNSD) if family == "tcp" else 0
        return unsent, _ioctl_int(sb, termios.FIONREAD)

    async def main():
        sent = out["prefilled"] = _prefill(sa, payload)
        b = _PausedReader(size)
        await lp.connect_accepted_socket(lambda: b, sock=sb)
        await _until(lambda: b.first is not None, "b's first data_received")
        # what b's transport took is settled once its receive is cancelled:
        # the same state over a few turns
        last, same = None, 0
        for _ in range(20000):
            now = state()
            same = same + 1 if now == last else 0
            if same >= 5:
                break
            last = now
            await asyncio.sleep(0.001)
        else:
            raise AssertionError("the queues never settled")
        unsent, inq_b = now
        out["taken"] = sent - unsent - inq_b
        out["first"] = b.first
        b.t.resume_reading()
        await asyncio.wait_for(lp.sock_sendall(sa, payload[sent:]), 60)
        await asyncio.wait_for(b.done, 60)
        out["ok"] = bytes(b.data) == payload
        b.t.close()

    try:
        run_in(lp, main(), timeout=90)
    finally:
        problems = finish_loop(lp)
        sa.close()
        sb.close()
    assert not problems, problems
    return out


async def _until(pred, what):
    await until(pred, what, turns=20000, step=0.001)


def _loop_with(options):
    from uringloop import Loop

    return Loop(backend="io_uring", options=options)


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("kind", ANY_LOOP_KINDS)
def test_a_paused_reader_took_at_most_one_stock_recv(kind, family):
    """a has put 2 MB (or what its kernel takes) in the kernel before b's
    transport starts; b pauses in its first data_received: b's transport
    has taken at most 256 KiB (+ one pool buffer) from the kernel, as
    stock's one recv(256 KiB); then every byte comes after resume_reading,
    in order. Before decision 924, io_uring took about 1 MB (the ring's
    first 64 buffers; it still does without OPT_RECV_LIMIT, decision 945) and
    io_uring-fallbacks 290 KB."""
    options = None
    if kind == "io_uring":
        # the kernel's limit is asked for (decision 945: off by default)
        from uringloop import engine

        options = engine.OPT_RECV_LIMIT
        lp = _loop_with(options)
        info = lp._engine.info()
        lp.close()
        if info["recv_limit"] == 0:
            pytest.skip("no total byte limit for a multishot receive on this kernel (6.16+)")
    out = _paused_reader_takes(kind, family, 2_000_000, options)
    if out["prefilled"] <= MAX_SIZE + SLACK:
        pytest.skip(f"the kernel took only {out['prefilled']} B ahead of the reader")
    assert out["ok"], "the bytes after resume differ from a's write"
    assert 0 < out["taken"] <= MAX_SIZE + SLACK, out


def test_without_the_kernels_limit_the_receive_runs_on_and_loses_nothing():
    """Without the kernel's total byte limit for a multishot receive (the
    default, decision 945; before 6.16 there is none) the receive runs as
    before decision 924, until the pause's cancel: more than stock's one recv
    is taken ahead of the protocol (the Known limit), held, and handed over
    first on resume, every byte in order."""
    lp = _loop_with(0)
    info = lp._engine.info()
    lp.close()
    if not info["multishot_recv"]:
        pytest.skip("no multishot receive on this kernel: nothing to limit")
    assert info["recv_limit"] == 0
    out = _paused_reader_takes("io_uring", "unix", 2_000_000, 0)
    if out["prefilled"] <= 2 * (MAX_SIZE + SLACK):
        pytest.skip(f"the kernel took only {out['prefilled']} B ahead of the reader")
    assert out["ok"], "the bytes after resume differ from a's write"
    assert out["taken"] > MAX_SIZE + SLACK, out


def test_the_engine_says_where_the_receive_is_limited():
    """engine info's recv_limit: io_uring 0 by default, and with OPT_RECV_LIMIT
    256 KiB where the probe found the kernel's total byte limit (6.16+) and the
    multishot receive runs, else 0;
    epoll's read loop always stops at 256 KiB a turn."""
    from uringloop import engine

    with engine.Engine("epoll") as e:
        assert e.info()["recv_limit"] == MAX_SIZE
    lp = make_loop("io_uring")
    try:
        assert lp._engine.info()["recv_limit"] == 0  # asked for only (decision 945)
    finally:
        lp.close()
    lp = _loop_with(engine.OPT_RECV_LIMIT)
    try:
        info = lp._engine.info()
    finally:
        lp.close()
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    if info["multishot_recv"] and release >= (6, 16):
        assert info["recv_limit"] == MAX_SIZE
    elif release < (6, 16):
        assert info["recv_limit"] == 0
    lp = make_loop("io_uring-fallbacks")
    try:
        assert lp._engine.info()["recv_limit"] == 0  # no multishot receive there
    finally:
        lp.close()
