"""No op of ours may block in a kernel io-wq worker (decisions 479-484).

io_uring hands a request whose poll said "ready" and whose attempt said
EAGAIN, APOLL_MAX_RETRY (128) times over, to an io-wq worker, which tries it
once more *blocking*. Where that attempt ignores the socket's O_NONBLOCK
(IORING_OP_SEND and IORING_OP_RECV call the socket's sendmsg/recvmsg with the
SQE's flags alone) it sleeps there; a park (decision 31) whose cancel met the
request before it reached the worker spent its 2 s at every stop and left the
loop bound to its thread (decision 483: park now cancels again). Each
scenario: an op of a kind whose poll and attempt disagree, the loop stopped
and run again, then from another thread (as stock's can), then the op
finished by real data, every kind against the stock loop.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import socket
import threading

import pytest
from conftest import is_stock, skip_if_stock_lacks
from transport_helpers import run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)


def _run_from_another_thread(lp) -> list:
    """Run lp for one turn from a new thread; the errors it met."""
    errors = []

    def other():
        try:
            lp.run_until_complete(asyncio.sleep(0))
        except Exception as exc:  # noqa: BLE001 - the point is to report it
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert not t.is_alive()
    return errors


def _udp_with_queued_error():
    """A connected UDP socket with IP_RECVERR whose error queue holds an ICMP
    port-unreachable entry (its first receive reported the error): its poll
    says EPOLLERR for as long as the entry stays, its receive says EAGAIN."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    addr = probe.getsockname()
    probe.close()  # nobody listens there now
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    a.connect(addr)
    a.setblocking(False)
    a.send(b"q")
    a.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        a.recv(10)  # the error itself (sk_err); the queue entry stays
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        a.recv(10)
    return a, addr


@pytest.mark.parametrize("how", ["sock_recv", "sock_recv_into"])
def test_a_receive_whose_poll_says_error_leaves_the_kernel(tloop, how):
    """sock_recv/sock_recv_into on a UDP socket whose error queue keeps
    EPOLLERR up: IORING_OP_RECV went to io-wq after 128 retries and blocked
    there (the loop stopped in 2 s, then could not run from another thread:
    "the engine is bound to the thread that last ran it"). Park's repeated
    cancel (decision 483) takes the worker's receive out at each stop (479:
    the receive keeps IORING_RECVSEND_POLL_FIRST, no MSG_DONTWAIT); stock
    spins in its selector. Data sent then is what the receive returns."""
    lp = tloop
    a, addr = _udp_with_queued_error()
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(addr)  # the port a is connected to: its datagrams reach a
    try:
        b.connect(a.getsockname())
        buf = bytearray(100)
        if how == "sock_recv":
            task = lp.create_task(lp.sock_recv(a, 100))
        else:
            task = lp.create_task(lp.sock_recv_into(a, buf))
        lp.run_until_complete(asyncio.sleep(0.05))
        for _ in range(2):
            lp.call_soon(lp.stop)
            lp.run_forever()
        assert not task.done()
        assert _run_from_another_thread(lp) == []
        b.send(b"data")
        res = run_in(lp, wait_for(task))
        assert (res if how == "sock_recv" else bytes(buf[:res])) == b"data"
    finally:
        a.close()
        b.close()


def _full_unix_receiver(tmp_path):
    """A bound Unix datagram receiver r that reads nothing, and a
    non-blocking sender a that filled its queue with n datagrams of 100 B."""
    path = str(tmp_path / "r")
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(path)
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    n = 0
    while True:
        try:
            a.sendto(b"d" * 100, path)
        except BlockingIOError:
            return r, a, path, n
        n += 1


def test_a_datagram_sendto_a_full_receiver_waits_in_the_engine(tloop, tmp_path):
    """sock_sendto (IORING_OP_SENDMSG) to a Unix datagram receiver whose
    queue is full: the unconnected sender's poll says writable, its sendmsg
    says EAGAIN, so the kernel retries 128 times and hands it to io-wq; there
    the attempt honours the socket's O_NONBLOCK (the sendmsg(2) path adds
    MSG_DONTWAIT for it) and says EAGAIN: nothing blocks, the engine waits
    again (decision 480; no flag needed). Stock spins in its selector alike.
    The loop stops at once and runs from another thread; the datagram
    leaves once the receiver reads."""
    lp = tloop
    skip_if_stock_lacks(lp, "sock_sendto")
    r, a, path, n = _full_unix_receiver(tmp_path)
    try:
        task = lp.create_task(lp.sock_sendto(a, b"x" * 100, path))
        lp.run_until_complete(asyncio.sleep(0.05))
        lp.call_soon(lp.stop)
        lp.run_forever()
        assert not task.done()
        assert _run_from_another_thread(lp) == []
        r.setblocking(False)
        got = [r.recv(200) for _ in range(n)]
        assert run_in(lp, wait_for(task)) == 100
        got.append(r.recv(200))
        assert got[-1] == b"x" * 100
    finally:
        a.close()
        r.close()


def test_a_datagram_sendto_a_receiver_that_reads_while_the_loop_runs_sends_it_whole(
    tloop, tmp_path
):
    """As above, but the receiver reads while the loop runs: sock_sendto
    returns 100 and the receiver gets the 100 bytes, as stock's. On io_uring
    it returned 0 and an empty datagram went out (3 of 3): the Unix datagram
    sendmsg copies the bytes before it finds the receiver full, and the
    kernel's own retries of the request went on from the spent iterator
    until one found room. The send now carries MSG_DONTWAIT: its EAGAIN
    ends the request, the engine polls and issues it afresh (decision
    529)."""
    lp = tloop
    skip_if_stock_lacks(lp, "sock_sendto")
    r, a, path, n = _full_unix_receiver(tmp_path)
    r.setblocking(False)

    async def scenario():
        task = asyncio.ensure_future(lp.sock_sendto(a, b"x" * 100, path))
        await asyncio.sleep(0.02)  # the request waits for room
        assert not task.done()
        got = [r.recv(200) for _ in range(n)]
        assert got == [b"d" * 100] * n
        return await asyncio.wait_for(task, 5)

    try:
        assert run_in(lp, scenario()) == 100
        r.settimeout(5)
        assert r.recv(200) == b"x" * 100
    finally:
        a.close()
        r.close()


def _stock_keeps_header_bytes() -> bool:
    """Stock's datagram transport adds len + 8 per queued datagram but
    subtracts only len when it sends one (3.13.0)."""
    cls = asyncio.selector_events._SelectorDatagramTransport
    return "+ 8" in inspect.getsource(cls.sendto) and (
        "self._buffer_size -= len(data)\n" in inspect.getsource(cls._sendto_ready)
    )


class _DgramProto(asyncio.DatagramProtocol):
    def __init__(self):
        self.events = []

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def error_received(self, exc):
        self.events.append(("error", type(exc).__name__))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))


def test_a_unix_datagram_transport_to_a_full_peer_buffers_as_stock(tloop, tmp_path):
    """A Unix datagram endpoint whose peer's queue is full
    (net.unix.max_dgram_qlen) and which then sends past the high-water mark:
    the buffer size, pause_writing, no error_received, then everything
    delivered in order once the peer reads, and resume_writing, exactly as
    stock's (decision 481)."""
    lp = tloop
    path = str(tmp_path / "peer")
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(path)
    peer.setblocking(False)

    async def scenario():
        tr, pr = await lp.create_datagram_endpoint(
            _DgramProto, remote_addr=path, family=socket.AF_UNIX
        )
        tr.set_write_buffer_limits(high=4000, low=1000)
        sizes = []
        for i in range(40):
            tr.sendto(b"%03d" % i + b"." * 497)
            sizes.append(tr.get_write_buffer_size())
        await asyncio.sleep(0.05)
        sizes.append(tr.get_write_buffer_size())
        events_full = list(pr.events)
        got = []
        for _ in range(2000):
            try:
                while True:
                    got.append(peer.recv(1000)[:3])
            except BlockingIOError:
                pass
            if len(got) == 40:
                break
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.01)
        end = (tr.get_write_buffer_size(), list(pr.events))
        tr.close()
        await asyncio.sleep(0)
        return sizes, events_full, got, end

    try:
        ours = run_in(lp, scenario())
    finally:
        peer.close()
    os.unlink(path)
    stock_lp = asyncio.SelectorEventLoop()
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(path)
    peer.setblocking(False)
    try:
        saved, lp = lp, stock_lp
        stock = run_in(stock_lp, scenario())
        lp = saved
    finally:
        peer.close()
        stock_lp.close()
    sizes, events_full, got, end = ours
    assert got == [b"%03d" % i for i in range(40)]
    assert "pause" in events_full and not any(isinstance(e, tuple) for e in events_full)
    # every datagram sent: ours counts nothing left. Stock 3.13.0 counts 8
    # header bytes per queued datagram and takes back only the payload's
    # length as it sends one (_sendto_ready), so its count stays at 8 per
    # datagram it queued; ours does not copy that
    if _stock_keeps_header_bytes():
        assert stock[3][0] > 0 and stock[3][0] % 8 == 0
        stock = (*stock[:3], (0, stock[3][1]))
        if is_stock(lp):
            ours = stock
    assert end[0] == 0 or ours is stock
    assert ours == stock


def test_errno_of_a_refused_first_receive_matches_stock():
    """Sanity of the scenario above: the first receive reports the ICMP error
    (ECONNREFUSED) and a second one EAGAIN, the error queue entry staying."""
    a, _addr = _udp_with_queued_error()
    try:
        with pytest.raises(BlockingIOError) as ei:
            a.recv(10)
        assert ei.value.errno == errno.EAGAIN
    finally:
        a.close()


def test_park_takes_out_a_request_that_reached_io_wq_after_its_cancel():
    """Engine level: park's ASYNC_CANCEL can reach a request while the kernel
    is between two of its own poll retries (a receive on a UDP socket whose
    error queue keeps EPOLLERR up: its poll says an event, its attempt says
    EAGAIN); it finds nothing (-ENOENT), and the request then goes to an
    io-wq worker, where IORING_OP_RECV blocks. Park now asks again every
    10 ms, and a cancel that finds the request running in the worker
    interrupts it (decision 483): every park succeeds, and the engine then
    runs from another thread. Without it the second park timed out (2 s)
    and left the engine bound. (A blocking socket's sendmsg to a full Unix
    receiver was the request here until 529 gave sendmsg MSG_DONTWAIT.)"""
    from conftest import Collector, require_uring, run_until

    from uringloop import engine

    require_uring()
    a, addr = _udp_with_queued_error()
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(addr)  # the port a is connected to: its datagrams reach a
    eng = engine.Engine("io_uring")
    try:
        col = Collector("recv")
        eng.recv(a.fileno(), col, multishot=False)
        eng.run(0.02)  # in the worker by now
        parks = [eng.park()]
        for _ in range(3):  # re-issued, then parked in the same breath
            eng.run(0)
            parks.append(eng.park())
        assert parks == [True, True, True, True]
        errors = []

        def other():
            try:
                eng.run(0)
                eng.park()
            except Exception as exc:  # noqa: BLE001 - the point is to report it
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(30)
        assert errors == []
        b.sendto(b"data", a.getsockname())
        run_until(eng, lambda: col.done, what="the receive")
        assert col.final[:1] == (4,) and col.payload() == b"data"
    finally:
        eng.close()
        a.close()
        b.close()


def test_park_takes_out_a_cancelled_request_that_reached_io_wq():
    """Engine level: a receive on a UDP socket whose error queue keeps
    EPOLLERR up (the first test's), re-issued from the backlog by a run that
    stops at once and cancelled by its owner just before the park (a
    `wait_for` timing out, say): that cancel meets 483's window (-ENOENT),
    and the request goes to io-wq and sleeps. Park, which left a cancelled
    op to its own cancel, waited its 2 s and left the engine bound, each
    time; the op ended only when a datagram came. Park's re-cancel now asks
    for those too (decision 527): the park succeeds at once and the
    cancelled receive ends, -ECANCELED, with nothing sent."""
    from conftest import Collector, require_uring, run_until

    from uringloop import engine

    require_uring()
    a, _addr = _udp_with_queued_error()
    eng = engine.Engine("io_uring")
    try:
        col = Collector("recv")
        ud = eng.recv(a.fileno(), col, multishot=False)
        eng.run(0.02)  # in the worker by now
        parks = [eng.park()]
        eng.run(0)  # re-issued: between the kernel's poll retries
        assert eng.cancel(ud) is True
        parks.append(eng.park())
        assert parks == [True, True]
        run_until(eng, lambda: col.done, what="the cancelled receive")
        assert col.res == -errno.ECANCELED
    finally:
        eng.close()
        a.close()
