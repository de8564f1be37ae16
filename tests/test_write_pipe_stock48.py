"""A write pipe where it still differed from stock (decision 1017; closed by
1027-1028).

(a) A ``write()`` while the pipe is full: stock's next writer callback
writes both writes' bytes in one ``os.write`` of its buffer; the engine's
write in flight ended with its own bytes and the rest left at the turn's
end, so the sizes seen between, and the turn and size of
``resume_writing()``, differed. (b) The reader closed in the turn after it
read a piece: stock's writer callback, behind what ``_ready`` held at the
poll, meets EPIPE (``connection_lost(BrokenPipeError)``, 0 left); the
engine's write had put the piece into the pipe at the poll, so ours saw the
close a turn later, and after the last piece ended cleanly. Every scenario
runs on the stock loop too and every look, protocol call and its argument
must be stock's.
"""

from __future__ import annotations

import asyncio
import fcntl
import os

import pytest
from conftest import run_in
from test_write_pipe_size import _KINDS, _PIECE, _loop


def _scenario(kind, piece, action, total=200_000, debug=False):
    """A write of ``total`` bytes into a 64 KiB pipe; the reader takes 64 KiB
    pieces a few turns apart. In the turn after piece ``piece`` is read, the
    first callback (queued before the poll that found the pipe writable)
    does ``action``: ``write:N`` writes N more bytes, ``rclose`` closes the
    read end. Every look after each step (three, each call_soon'd by the one
    before), the protocol's calls with the size they see, and the
    exception handler's calls are recorded."""
    lp = _loop(kind)
    lp.set_debug(debug)
    seq = []
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIECE)
    os.set_blocking(r, False)
    rfd = [r]
    got = [0]
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
            if action.startswith("write:"):
                wt.write(b"y" * int(action[6:]))
            elif action == "rclose":
                os.close(rfd.pop())
            look(action, 0)

        def later(fn, turns=3):
            if turns:
                lp.call_soon(later, fn, turns - 1)
            else:
                fn()

        def read_piece(i=1):
            if not rfd:
                return
            try:
                got[0] += len(os.read(rfd[0], _PIECE))
            except BlockingIOError:
                pass
            seq.append(("read", i, got[0]))
            if i == piece:
                lp.call_soon(act)
            if i < 12 and not lost.done():
                later(lambda: read_piece(i + 1), 4)
            elif not lost.done():
                wt.close()  # the end, where the action did not make one

        wt.write(b"x" * total)
        seq.append(("write", 0, wt.get_write_buffer_size(), wt.is_closing()))
        later(read_piece)
        await lost
        for _ in range(3):
            await asyncio.sleep(0)

    try:
        run_in(lp, main(), timeout=15)
    finally:
        lp.close()
        for fd in rfd:
            os.close(fd)
    return seq


_stock: dict = {}

_CASES = [
    (1, "write:1000"),
    (1, "write:200000"),
    (3, "write:1000"),
    (3, "write:200000"),
    (1, "rclose"),
    (3, "rclose"),
]


def _check(kind, piece, action, debug=False):
    key = (piece, action, debug)
    if key not in _stock:
        _stock[key] = _scenario("stock", piece, action, debug=debug)
    want = _stock[key]
    assert any(row[0] == "lost" for row in want)
    # what the scenarios prove on stock: the reader's close after the last
    # piece is a BrokenPipeError with 0 left; a write() queued behind the
    # pipe's bytes leaves with them (no look sees the second write whole)
    if action == "rclose" and piece == 3:
        assert ("lost", "BrokenPipeError", 0) in want
    if action == "write:200000":
        assert 200_000 not in [row[2] for row in want if len(row) == 4][1:]
    got = _scenario(kind, piece, action, debug=debug)
    assert got == want


@pytest.mark.parametrize(("piece", "action"), _CASES, ids=[f"piece{p}-{a}" for p, a in _CASES])
@pytest.mark.parametrize("kind", _KINDS)
def test_write_pipe_written_to_while_full_as_stock(kind, piece, action):
    """(a) and (b): every look, the pause/resume calls and their sizes, the
    bytes the reader got, and connection_lost's argument as stock's."""
    _check(kind, piece, action)


@pytest.mark.parametrize("action", ["write:200000", "rclose"])
@pytest.mark.parametrize("kind", _KINDS)
def test_write_pipe_written_to_while_full_as_stock_debug(kind, action):
    """The same in debug mode (the Python turn)."""
    _check(kind, 3, action, debug=True)


def _view_behind_queued(kind, second):
    """100,000 bytes written into a 64 KiB pipe, so some are queued; then
    ``second(wt)`` writes a view. Recorded: what that write raised, the
    size after, whether the reader got exactly the bytes written, and how
    the transport ends."""
    lp = _loop(kind)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIECE)
    os.set_blocking(r, False)
    seq = []

    class P(asyncio.Protocol):
        def connection_lost(self, exc):
            seq.append(("lost", type(exc).__name__))

    async def main():
        wt, _ = await lp.connect_write_pipe(P, os.fdopen(w, "wb", 0))
        wt.write(b"x" * 100_000)
        want = b"x" * 100_000
        try:
            want += second(wt)
        except Exception as exc:  # noqa: BLE001 - the exception is the result
            seq.append(("raised", type(exc).__name__, str(exc)))
        seq.append(("size", wt.get_write_buffer_size()))
        got = bytearray()
        for _ in range(2000):
            if len(got) >= len(want) or seq[-1][0] == "lost":
                break
            await asyncio.sleep(0.001)
            try:
                got += os.read(r, _PIECE)
            except BlockingIOError:
                pass
        seq.append(("read", bytes(got) == want))
        wt.close()
        for _ in range(5):
            await asyncio.sleep(0)

    try:
        run_in(lp, main(), timeout=15)
    finally:
        lp.close()
        os.close(r)
    return seq


def _noncontiguous(wt):
    view = memoryview(bytearray(range(64)))[::2]
    wt.write(view)
    return bytes(view)


def _released(wt):
    with memoryview(b"hello" * 1000) as view:
        wt.write(view)
    return b"hello" * 1000


@pytest.mark.parametrize("kind", _KINDS)
def test_write_pipe_refuses_a_noncontiguous_view_queued_as_stock(kind):
    """A non-contiguous memoryview written behind queued bytes: stock's
    write() raises TypeError and the transport goes on; it is not queued to
    fail later in the writer's writev."""
    want = _view_behind_queued("stock", _noncontiguous)
    assert want[0][:2] == ("raised", "TypeError") and ("read", True) in want
    assert _view_behind_queued(kind, _noncontiguous) == want


@pytest.mark.parametrize("kind", _KINDS)
def test_write_pipe_keeps_a_view_the_caller_released_as_stock(kind):
    """A memoryview of bytes written behind queued bytes and released by the
    caller right after write() (stock copies it into its buffer): every byte
    still reaches the reader, and the transport ends cleanly."""
    want = _view_behind_queued("stock", _released)
    assert ("read", True) in want and want[-1] == ("lost", "NoneType")
    assert _view_behind_queued(kind, _released) == want
