"""Review of stop 46's engine changes (decisions 1014-1019): the idle trim
(986), ``fd_closing`` (989) and ``write_progress`` (990-991), tried to
break; what broke is fixed here, and the strongest probes stay as guards.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket

import pytest
from conftest import Collector, run_in, run_until
from test_engine_idle_memory import _armed_pairs, _burst
from test_write_pipe_size import _KINDS, _PIECE, _loop

# the kernel hands a one-shot receive to io-wq after its poll woke it this
# many times with nothing to read (APOLL_MAX_RETRY, 6.x; 5.x at once)
_SPURIOUS = 130


def _oneshot_in_a_worker(eng, res_tracker, multishot=False):
    """A one-shot pool receive (sock_recv's) whose poll is woken _SPURIOUS
    times, the byte read each time behind its back before the engine's
    turn: on io_uring the kernel then runs it in an io-wq worker, blocked
    in recv(2) with a ring buffer taken. Returns (collector, sender)."""
    x, y = (res_tracker.sock(s) for s in socket.socketpair())
    x.setblocking(False)
    one = Collector("one-shot")
    eng.recv(x.fileno(), one, multishot=multishot)
    for _ in range(_SPURIOUS):
        y.send(b"z")
        try:
            x.recv(1)  # before the engine's turn: its retry finds nothing
        except BlockingIOError:
            pass  # a worker's recv took it first (it waits in recv(2) already)
        eng.run(0)
        if one.records:  # taken by the engine (epoll, or a worker): again
            assert one.records[-1][2] == b"z", one.records
            one.records.clear()
            if one.finals:
                one.finals = 0
                eng.recv(x.fileno(), one, multishot=multishot)
    return one, y


def test_a_trim_leaves_the_ring_buffer_of_a_worker_held_receive(eng, res_tracker):
    """Decision 1014: a one-shot receive run by an io-wq worker holds a
    ring buffer the kernel took without a record (it comes with the bytes).
    The idle trim took the ring back (CQ empty, no pool READ live), gave
    every buffer it believed the ring held to the free stack, that one too,
    and the ring again: the next burst's bytes of one socket were read as
    another's (5 sockets of 200 on 6.18). A live one-shot receive now keeps
    the ring as it is, as a pool READ does; every byte arrives as sent."""
    pairs, cols, _ = _armed_pairs(eng, res_tracker)
    one, y = _oneshot_in_a_worker(eng, res_tracker)
    _burst(eng, pairs, cols, 0)
    eng.run(0)
    assert eng.run(0.3) == 0  # idle: the trim
    _burst(eng, pairs, cols, 1)  # each socket's bytes, whole and its own
    y.send(b"the one-shot's")
    run_until(eng, lambda: one.payload(), what="the one-shot receive")
    assert one.payload() == b"the one-shot's"
    for _, b in [*pairs, (None, y)]:
        b.close()
    run_until(eng, lambda: all(c.done for c in [*cols, one]), what="every EOF")


# --- write_progress (990, 991): a write pipe's size beside stock's, with the
# transport ended or changed between a piece's record and the handle that
# takes its bytes off


def _act_between(kind, piece, action, total=200_000):
    """A write of total bytes into a 64 KiB pipe; the reader takes 64 KiB
    pieces a few turns apart. In the turn after piece ``piece`` is read the
    first callback (queued before the poll that brought the piece's record,
    so ahead of the handle that takes its bytes off) does ``action``; every
    look after that, and the protocol's calls, are recorded."""
    lp = _loop(kind)
    seq = []
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIECE)
    os.set_blocking(r, False)
    lp.set_exception_handler(
        lambda _lp, ctx: seq.append(("handler", type(ctx.get("exception")).__name__))
    )

    class P(asyncio.Protocol):
        def pause_writing(self):
            seq.append(("pause", wt.get_write_buffer_size()))

        def resume_writing(self):
            seq.append(("resume", wt.get_write_buffer_size()))

        def connection_lost(self, exc):
            seq.append(("lost", type(exc).__name__, wt.get_write_buffer_size()))
            lost.set_result(None)

    wt = lost = None

    async def main():
        nonlocal wt, lost
        lost = lp.create_future()
        wt, _ = await lp.connect_write_pipe(P, os.fdopen(w, "wb", 0))

        def look(tag, depth):
            seq.append((tag, depth, wt.get_write_buffer_size(), wt.is_closing()))
            if depth < 3:
                lp.call_soon(look, tag, depth + 1)

        def act():
            if action == "abort":
                wt.abort()
            elif action == "close":
                wt.close()
            elif action == "write_eof":
                wt.write_eof()
            elif action == "write0":
                wt.write(b"")
            look(action, 0)

        def later(fn, turns=3):
            if turns:
                lp.call_soon(later, fn, turns - 1)
            else:
                fn()

        def read_piece(i=1):
            # (what a read gets after an abort is left out: the engine's
            # write puts bytes into the pipe at the poll, stock's writer
            # callback after what _ready held)
            try:
                os.read(r, _PIECE)
            except BlockingIOError:
                pass
            seq.append(("read", i))
            if i == piece:
                lp.call_soon(act)
            if i < 6 and not lost.done():
                later(lambda: read_piece(i + 1), 4)
            elif not lost.done():
                wt.close()  # the end, where the action did not make one

        wt.write(b"x" * total)
        later(read_piece)
        await lost
        for _ in range(3):
            await asyncio.sleep(0)

    try:
        run_in(lp, main(), timeout=15)
    finally:
        lp.close()
        os.close(r)
    return seq


_stock_between: dict = {}


_BETWEEN = [(p, a) for p in (1, 3) for a in ("abort", "close", "write_eof", "write0")]


@pytest.mark.parametrize(
    ("piece", "action"),
    _BETWEEN,
    ids=[f"{'middle' if p == 1 else 'last'}-piece-{a}" for p, a in _BETWEEN],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_write_pipe_ended_between_a_piece_and_its_shrink_as_stock(kind, piece, action):
    """Decision 1016: the transport aborted, closed, ended, written to (an
    empty write too) or its reader gone in the turn after a piece's record,
    before the handle that takes the piece's bytes off (a middle piece's
    progress record, 990; the last piece's final record, 991): every look,
    the protocol's calls and the size they see are stock's, never below 0.
    The abort case needs _shrink's and _resume_behind's ``_lost`` guards
    (without them the held handle takes the piece off a size abort() set
    to 0). A write() there and the reader's close are left out: stock's
    writer callback writes both writes' bytes in one os.write, or meets the
    closed reader (EPIPE) in that turn, where the engine's write put the
    piece into the pipe at the poll before (decision 1017)."""
    key = (piece, action)
    if key not in _stock_between:
        _stock_between[key] = _act_between("stock", piece, action)
    want = _stock_between[key]
    assert any(row[0] == "lost" for row in want)
    got = _act_between(kind, piece, action)
    assert all(row[2] >= 0 for row in got if len(row) == 4), got
    assert got == want
