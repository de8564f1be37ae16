"""What the engine keeps per idle connection, and after a burst.

An idle stream connection costs the engine its multishot receive's op
record: the address fields only sendmsg/recvmsg/connect/datagram receives use
live in a block of their own (decision 250). After a burst, the stream pool
pages beyond the working set go back to the kernel once the engine has been
idle a while (decision 251; the io_uring buffer ring is taken back and
registered again at its first size)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import socket

from conftest import Collector, drain, run_until, settle
from uringloop._engine_cffi import ffi

from uringloop import engine

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


def _pool_pages_resident(eng) -> int:
    """Pages of the stream pool in memory now (mincore)."""
    base = int(ffi.cast("uintptr_t", engine.lib.ul_pool(eng._e)))
    size = eng.info()["buf_count"] * eng.info()["buf_size"]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = ctypes.create_string_buffer(pages)
    assert _libc.mincore(base, size, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec.raw)


def test_an_op_record_carries_no_address(eng):
    """The per-op record: 352 bytes with the address fields inside."""
    assert eng.info()["op_bytes"] <= 160


def _drain_peer(sock, want, eng, timeout=10.0):
    """Read from sock until want bytes arrived, running eng meanwhile."""
    got = bytearray()
    for _ in range(int(timeout / 0.01)):
        if len(got) >= want:
            break
        eng.run(0)
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            select.select([sock], [], [], 0.01)
            continue
        assert chunk, "the peer closed"
        got += chunk
    assert len(got) >= want, f"peer got {len(got)} of {want} bytes"
    return bytes(got)


def test_an_op_record_is_two_cache_lines(eng):
    """An op record is 128 bytes (decision 1046): four one-bit flags share
    a byte and the write-progress fields are gone, so a record of the op
    array never straddles a third 64-byte line and an idle connection's
    receive op is 8 bytes smaller than 1003's 136."""
    assert eng.info()["op_bytes"] == 128


def test_an_op_record_carries_no_send_counts(eng, tcp_pair, res_tracker):
    """The counts and iovecs only a vectored send or a batch of queued sends
    use (niov, iov_idx, nbatch, iovs, batch) are in the iovec block such a
    send takes anyway (decision 1003): 160 -> 136 bytes a record, so an idle
    connection's receive op is 24 bytes smaller. Sends of every shape still
    leave in order, each with its whole count: vectored and plain, queued in
    one turn (io_uring batches them: a vectored head and vectored riders,
    the head's own iovecs kept under the batch's) into a small send buffer,
    so the batch comes back short and is cut inside a rider; then a vectored
    send cancelled while queued behind one the kernel cannot take."""
    assert eng.info()["op_bytes"] <= 136
    c, s = tcp_pair(sndbuf=4096)
    log = []
    shapes = [
        ("v1", [b"a" * 70_000, bytearray(b"b" * 50_001), memoryview(b"xc" * 40_000)[1:]]),
        ("s1", b"d" * 30_000),
        ("v2", [b"e" * 9, b"f" * 90_000]),
        ("s2", b"g" * 7),
        ("v3", [b"h" * 3, b"i" * 5, b"j" * 120_000]),
    ]
    cols = []
    for name, data in shapes:
        col = Collector(name, log)
        cols.append(col)
        if isinstance(data, list):
            eng.sendv(c.fileno(), data, col)
        else:
            eng.send(c.fileno(), data, col)
    want = b"".join(
        b"".join(bytes(p) for p in d) if isinstance(d, list) else d for _, d in shapes
    )
    assert _drain_peer(s, len(want), eng) == want
    drain(eng)
    for (name, data), col in zip(shapes, cols, strict=True):
        n = sum(map(len, data)) if isinstance(data, list) else len(data)
        assert col.records == [(n, False, None)], (name, col.records)
    assert [name for name, _, _ in log] == [name for name, _ in shapes]
    # a vectored send queued behind one that waits, cancelled there
    big, queued = Collector("big"), Collector("queued")
    eng.send(c.fileno(), b"k" * (4 << 20), big)
    settle(eng)
    ud = eng.sendv(c.fileno(), [b"l" * 10, b"m" * 20], queued)
    settle(eng)
    eng.cancel(ud)
    got = _drain_peer(s, 4 << 20, eng)
    drain(eng)
    assert got == b"k" * (4 << 20)
    assert big.records == [(4 << 20, False, None)]
    assert queued.res == -errno.ECANCELED
    assert eng.in_flight == 0


def test_the_fd_table_grows_by_steps(eng, socketpair):
    """An op on fd 1100 grows the fd table to 1,280 entries (60 bytes each,
    all written), not to the next power of two (2,048)."""
    a, b = socketpair()
    hi = 1100
    os.dup2(a.fileno(), hi)
    try:
        c = Collector()
        eng.recv(hi, c)
        assert hi < eng.stats()["fd_entries"] <= hi + 256
        b.send(b"x")
        run_until(eng, lambda: c.payload() == b"x", what="the byte")
        eng.cancel_fd(hi)
        drain(eng)
    finally:
        os.close(hi)


def test_an_fd_entry_holds_only_what_every_backend_uses(eng, socketpair):
    """What only epoll keeps per fd (its registration flags, its write and
    poll queues, its retry list link, its registration count) is in a table
    of its own beside the engine's (decision 1004): an fd table entry is 44
    bytes, was 76, so an io_uring connection's is 32 bytes smaller; epoll
    keeps its 32 beside it. Epoll's table grows with the engine's: a
    writer, a poll and a receive on fd 1100 (past the first 256 entries),
    then the number closed and made again and its ops again."""
    info = eng.info()
    extra = 0 if info["backend"] == "io_uring" else 32
    assert info["fd_bytes"] <= 44 + extra, info["fd_bytes"]
    a, b = socketpair()
    hi = 1100
    for _ in range(2):
        os.dup2(a.fileno(), hi)
        try:
            got, sent, polled = Collector("got"), Collector("sent"), Collector("polled")
            eng.poll(hi, select.POLLOUT, polled)
            eng.send(hi, b"y" * 10, sent)
            eng.recv(hi, got)
            b.send(b"x")
            run_until(
                eng,
                lambda got=got, sent=sent, polled=polled: (
                    got.payload() == b"x" and sent.done and polled.done
                ),
                what="the byte, the send and the poll",
            )
            assert sent.res == 10 and polled.res & select.POLLOUT
            assert b.recv(16) == b"y" * 10
            eng.cancel_fd(hi)
            drain(eng)
        finally:
            eng.fd_closing(hi)  # its owner closes it: forgotten (989)
            os.close(hi)


def test_stream_ops_take_no_address_block(eng, socketpair, tcp_listener):
    """Receives, sends (one buffer or many) and accepts hold no address
    block."""
    pairs = [socketpair() for _ in range(20)]
    cols = [Collector() for _ in pairs]
    sent = []
    for (a, _), c in zip(pairs, cols, strict=True):
        eng.recv(a.fileno(), c)
        sent += [Collector(), Collector(), Collector()]
        eng.send(a.fileno(), b"x", sent[-3])
        eng.sendv(a.fileno(), [b"a", b"b"], sent[-2])
        eng.sendv(a.fileno(), [b"c"], sent[-1])
    lst = tcp_listener()
    eng.accept(lst.fileno(), Collector())
    assert eng.stats()["addr_blocks"] == 0
    run_until(eng, lambda: all(c.done for c in sent), what="the sends")
    assert all(c.records == [(n, False, None)] for c, n in zip(sent, [1, 2, 1] * 20, strict=True))
    for _, b in pairs:
        assert b.recv(16) == b"xabc"
    eng.cancel_fd(lst.fileno())
    for a, _ in pairs:
        eng.cancel_fd(a.fileno())
    drain(eng)
    assert eng.stats()["addr_blocks"] == 0


def test_a_connect_slot_gives_its_address_block_back(eng, tcp_listener, res_tracker):
    """A connect holds an address block until its slot is reused by a kind
    that needs none (the address of a recvmsg is read after its final
    record, before the slot is reused)."""
    lst = tcp_listener()
    acc = Collector()
    eng.accept(lst.fileno(), acc)
    s = res_tracker.sock(socket.socket())
    s.setblocking(False)
    col = Collector()
    ud = eng.connect(s.fileno(), socket.AF_INET, lst.getsockname(), col)
    assert eng.stats()["addr_blocks"] == 1
    run_until(eng, lambda: col.done and acc.records, what="connect and accept")
    assert col.records[-1][0] == 0
    assert eng.stats()["addr_blocks"] == 1
    c2 = Collector()
    assert eng.recv(s.fileno(), c2) & 0xFFFFFFFF == ud & 0xFFFFFFFF  # the same slot
    assert eng.stats()["addr_blocks"] == 0
    eng.cancel_fd(s.fileno())
    eng.cancel_fd(lst.fileno())
    drain(eng)
    res_tracker.sock(socket.socket(fileno=acc.records[0][0]))


def _armed_pairs(eng, res_tracker, n=200):
    """n socketpairs, each with a multishot receive armed on one end (a
    Collector each) and a 1 MiB send buffer on the other; returns (pairs,
    collectors, how many pool buffers the armed receives hold: engine-picked
    buffers, no ring, hold one each)."""
    pairs = [tuple(map(res_tracker.sock, socket.socketpair())) for _ in range(n)]
    for _, b in pairs:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    cols = [Collector(str(i)) for i in range(n)]
    for (a, _), c in zip(pairs, cols, strict=True):
        eng.recv(a.fileno(), c)
    settle(eng, 2)
    held = n if eng.backend == "io_uring" and not eng.info()["buffer_ring"] else 0
    return pairs, cols, held


def _burst(eng, pairs, cols, burst):
    """64 KiB into every pair at once, each received whole and in order."""
    want = []
    for i, (_, b) in enumerate(pairs):
        msg = (b"burst %d socket %d " % (burst, i) * 4000)[:65536]
        b.sendall(msg)
        want.append(msg)
    got_before = [len(c.payload()) for c in cols]
    run_until(
        eng,
        lambda: all(
            len(c.payload()) - g == len(w) for c, g, w in zip(cols, got_before, want, strict=True)
        ),
        what=f"burst {burst}",
    )
    for c, g, w in zip(cols, got_before, want, strict=True):
        assert c.payload()[g:] == w


def test_pool_pages_go_back_after_a_burst(eng, res_tracker):
    """A burst that walks most of the pool, then an idle wait: the pool pages
    beyond the working set are handed back (before: every page the burst
    touched stayed, about 3,000 of the pool's 4,096); a second burst after
    that is received whole."""
    pairs, cols, held = _armed_pairs(eng, res_tracker)
    page_per_buf = eng.info()["buf_size"] // mmap.PAGESIZE
    for burst in range(2):
        _burst(eng, pairs, cols, burst)
        assert _pool_pages_resident(eng) > 2 * (64 + held) * page_per_buf
        assert eng.stats()["pool_resident"] > 2 * 64
        eng.run(0)  # the last records' buffers go back
        assert eng.run(0.3) == 0  # idle: nothing arrives
        assert eng.stats()["pool_resident"] <= 64 + held
        assert _pool_pages_resident(eng) <= (64 + held) * page_per_buf
    for _, b in pairs:
        b.close()
    run_until(eng, lambda: all(c.done for c in cols), what="every EOF")


def test_an_idle_wait_that_submits_still_trims(eng, res_tracker):
    """The idle wait after a burst also hands a new op to the kernel (a poll
    submitted just before it): its first 100 ms, timed out with nothing to
    reap, still ends in the trim. It used to be reported as interrupted
    (io_uring drops ETIME when the same enter submitted, and an empty CQ was
    read as a signal), so the run returned without trimming (decision 331)."""
    pairs, cols, held = _armed_pairs(eng, res_tracker)
    for _, b in pairs:
        b.sendall(b"x" * 65536)
    run_until(eng, lambda: all(len(c.payload()) == 65536 for c in cols), what="the burst")
    assert eng.stats()["pool_resident"] > 2 * 64
    eng.run(0)  # the last records' buffers go back
    idle_a, idle_b = map(res_tracker.sock, socket.socketpair())
    polled = Collector()
    ud = eng.poll(idle_a.fileno(), select.POLLIN, polled)
    assert eng.run(0.3) == 0  # submits the poll, then idle: nothing arrives
    assert eng.stats()["pool_resident"] <= 64 + held
    eng.cancel(ud)
    for _, b in pairs:
        b.close()
    run_until(eng, lambda: all(c.done for c in cols) and polled.done, what="every end")


def test_an_idle_engine_hands_every_pool_page_back(eng, res_tracker):
    """After a burst and an idle wait, no pool page stays resident: the free
    stack's top and, on io_uring with DEFER_TASKRUN, the buffers the stream
    ring holds go back too (decision 986; before, 64 buffers' pages stayed:
    256 pages after 64 KiB reads). The next bytes land in those buffers
    (zeroed pages faulted in) and arrive whole. Where the kernel may fill a
    ring buffer outside our own enter (no DEFER_TASKRUN), or armed receives
    hold engine-picked buffers, those stay as they were."""
    pairs, cols, held = _armed_pairs(eng, res_tracker)
    page_per_buf = eng.info()["buf_size"] // mmap.PAGESIZE
    ring_kept = (
        eng.backend == "io_uring"
        and eng.info()["buffer_ring"]
        and "DEFER_TASKRUN" not in eng.info()["ring_flags"]
    )
    bound = (held + (64 if ring_kept else 0)) * page_per_buf
    for burst in range(2):
        _burst(eng, pairs, cols, burst)
        eng.run(0)  # the last records' buffers go back
        assert eng.run(0.3) == 0  # idle: nothing arrives
        assert _pool_pages_resident(eng) <= bound, (burst, bound)
    # a few bytes into the released buffers, each socket in turn
    for i, ((_, b), c) in enumerate(zip(pairs[:80], cols, strict=False)):
        n0 = len(c.payload())
        b.sendall(b"after %d" % i)
        run_until(
            eng,
            lambda c=c, n0=n0, i=i: len(c.payload()) - n0 == len(b"after %d" % i),
            what=f"socket {i}'s bytes",
        )
        assert c.payload()[n0:] == b"after %d" % i
    for _, b in pairs:
        b.close()
    run_until(eng, lambda: all(c.done for c in cols), what="every EOF")
