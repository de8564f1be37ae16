"""The stream pool's working set: receives reuse the buffers used last.

The io_uring buffer ring is first in, first out: a ring that holds the whole
pool walks all of it (1,024 buffers, 16 MiB) before it hands a buffer out
again, so traffic keeps landing in memory that is cold in the cache and, the
first time round, not yet mapped. The ring holds only what a turn needs, topped
up from a last-in-first-out free stack (uring.c ring_top_up); epoll and the
engine-picked path take from that stack directly."""

from __future__ import annotations

import socket

from conftest import Collector, run_until, settle
from uringloop._engine_cffi import ffi

from uringloop import engine


def _buffer_index(eng, view: memoryview) -> int:
    """Which pool buffer a pool view lies in."""
    pool = int(ffi.cast("uintptr_t", engine.lib.ul_pool(eng._e)))
    addr = int(ffi.cast("uintptr_t", ffi.from_buffer(view)))
    return (addr - pool) // eng._buf_size


def _one_at_a_time(eng, socketpair, n: int) -> list[int]:
    """n messages, one at a time, on one socket's multishot receive: the pool
    buffer each landed in. Then the peer closes and the receive ends at EOF."""
    a, b = socketpair()
    seen = []
    c = Collector()

    def cb(res, more, data):
        if res > 0:
            seen.append(_buffer_index(eng, data))
        c(res, more, None)

    eng.recv(a.fileno(), cb, view=True)
    settle(eng, 2)
    for i in range(n):
        b.send(b"m%d" % i)
        run_until(eng, lambda i=i: len(seen) == i + 1, what=f"message {i}")
    b.close()
    run_until(eng, lambda: c.done, what="EOF")
    assert c.records[-1] == (0, False, None)
    return seen


def test_sequential_receives_reuse_a_few_buffers(eng, socketpair):
    """300 messages, one at a time, on one socket touch a handful of pool
    buffers (before: 300 different ones, each 16 KiB apart, on io_uring)."""
    seen = _one_at_a_time(eng, socketpair, 300)
    assert len(set(seen)) <= 128, sorted(set(seen))


def test_the_ring_shrinks_to_what_the_runs_take(eng, res_tracker, socketpair):
    """A ring that a burst grew and that no run then comes near emptying
    shrinks (decision 759): after a burst on 20 sockets at once has grown it
    past 16, runs that each take one buffer halve it window by window down
    to 16, with no re-arm, and the last 200 sequential receives land in at
    most 16 pool buffers, as epoll's free stack reuses a few (before: the
    ring walked whole, its buffers 16 KiB apart, the TLS echo's receive copy
    into cache-cold memory)."""
    ring = eng.backend == "io_uring" and eng.info()["buffer_ring"]
    pairs = [tuple(map(res_tracker.sock, socket.socketpair())) for _ in range(20)]
    cols = [Collector(str(i)) for i in range(len(pairs))]
    for (x, y), col in zip(pairs, cols, strict=True):
        y.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # a message in one send
        eng.recv(x.fileno(), col)
    settle(eng, 2)
    for i, (_, y) in enumerate(pairs):
        y.sendall((b"socket %d " % i * 8000)[:65536])  # 4 pool buffers each
    run_until(eng, lambda: all(len(col.payload()) == 65536 for col in cols), what="the burst")
    if ring:
        assert eng.stats()["ring_want"] > 16  # the burst grew it
    for _, y in pairs:
        y.close()
    run_until(eng, lambda: all(col.done for col in cols), what="the burst's EOFs")
    rearms = eng.stats()["rearms"]
    seen = _one_at_a_time(eng, socketpair, 1200)
    assert len(set(seen[-200:])) <= 16, sorted(set(seen[-200:]))
    if ring:
        assert eng.stats()["rearms"] == rearms  # the smaller ring never ran dry
        assert eng.stats()["ring_want"] == 16


def _burst(eng, res_tracker, n: int = 20) -> None:
    """n sockets at once, 64 KiB each (4 pool buffers): a ring of 16 runs dry
    and doubles. Each is read whole, then the peers close."""
    pairs = [tuple(map(res_tracker.sock, socket.socketpair())) for _ in range(n)]
    cols = [Collector(str(i)) for i in range(n)]
    for (x, y), col in zip(pairs, cols, strict=True):
        y.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # a message in one send
        eng.recv(x.fileno(), col)
    settle(eng, 2)
    for i, (_, y) in enumerate(pairs):
        y.sendall((b"socket %d " % i * 8000)[:65536])
    run_until(eng, lambda: all(len(col.payload()) == 65536 for col in cols), what="the burst")
    for _, y in pairs:
        y.close()
    run_until(eng, lambda: all(col.done for col in cols), what="the burst's EOFs")
    for i, col in enumerate(cols):
        assert col.payload() == (b"socket %d " % i * 8000)[:65536]


def test_the_idle_trim_keeps_the_shrunk_ring_size(eng, res_tracker, socketpair):
    """A ring that shrank to 16 (decision 759), grew again in a burst, and was
    then taken back by the idle trim (decision 251) is registered again at
    16, the size its last whole window ended at, not at its first 64
    (decision 797): the runs after it take a few buffers, no re-arm, and
    only those stay resident; a burst after it still doubles the ring."""
    ring = eng.backend == "io_uring" and eng.info()["buffer_ring"]
    trims_ring = ring and "DEFER_TASKRUN" in eng.info()["ring_flags"]
    _burst(eng, res_tracker)
    _one_at_a_time(eng, socketpair, 1200)
    if ring:
        assert eng.stats()["ring_want"] == 16
    _burst(eng, res_tracker, 100)  # 400 buffers: past what the trim waits for (128)
    if ring:
        assert eng.stats()["ring_want"] > 16  # it ran dry and doubled
    assert eng.stats()["pool_resident"] > 128
    eng.run(0)  # the last records' buffers go back
    assert eng.run(0.3) == 0  # idle: the trim
    if trims_ring:
        assert eng.stats()["ring_want"] == 16  # was 64
        assert eng.stats()["pool_resident"] <= 16
    rearms = eng.stats()["rearms"]
    seen = _one_at_a_time(eng, socketpair, 100)
    if trims_ring or not ring:  # without the trim the grown ring is walked whole
        assert len(set(seen)) <= 16, sorted(set(seen))
    if trims_ring:
        assert eng.stats()["rearms"] == rearms
        assert eng.stats()["ring_want"] == 16
    _burst(eng, res_tracker)
    if ring:
        assert eng.stats()["ring_want"] > 16


def test_a_burst_larger_than_the_ring_is_all_received(eng, res_tracker):
    """More sockets with data at once than the ring holds at first: every
    receive that found the ring empty is armed again after the next top-up,
    nothing is lost or reordered, and the ring grows so that the next burst
    of the same size finds enough buffers."""
    pairs = [tuple(map(res_tracker.sock, socket.socketpair())) for _ in range(200)]
    for _, b in pairs:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # a message in one send
    cols = [Collector(str(i)) for i in range(len(pairs))]
    for (a, _), c in zip(pairs, cols, strict=True):
        eng.recv(a.fileno(), c)
    settle(eng, 2)
    for burst in range(2):
        want = []
        for i, (_, b) in enumerate(pairs):
            # 4 pool buffers each: a kernel entry reaps at most about 20
            # receives (DEFER_TASKRUN), so small messages never empty a ring of 64
            msg = (b"burst %d socket %d " % (burst, i) * 4000)[:65536]
            b.sendall(msg)
            want.append(msg)
        got_before = [len(c.payload()) for c in cols]
        rearms = eng.stats()["rearms"]
        run_until(
            eng,
            lambda g0=got_before, w0=want: all(
                len(c.payload()) - g == len(w) for c, g, w in zip(cols, g0, w0, strict=True)
            ),
            what=f"burst {burst}",
        )
        for c, g, w in zip(cols, got_before, want, strict=True):
            assert c.payload()[g:] == w
        if eng.backend == "io_uring" and eng.info()["buffer_ring"]:
            # the first burst ran the ring dry and grew it; the second did not
            assert (eng.stats()["rearms"] > rearms) == (burst == 0)
    for _, b in pairs:
        b.close()
    run_until(eng, lambda: all(c.done for c in cols), what="every EOF")
