"""A write pipe's get_write_buffer_size() shrinks where stock's does
(decision 990; 965(b)).

Stock's ``_UnixWritePipeTransport`` keeps a bytearray and its writer
callback takes off what each ``os.write`` took; that callback runs behind
what ``_ready`` held at the poll. Ours counted the engine's write in flight
whole until its final record: with 200,000 B queued and a reader taking
64 KiB pieces, a look a turn after each piece saw stock's buffer shrink and
ours not. The write now says what it took each time it waits with part of
its bytes out (``ul_write_progress``); the transport takes that off behind
what ``_ready`` held, where stock's callback runs; so do the final
record's (decision 991). Every scenario runs on the stock loop too.
"""

from __future__ import annotations

import asyncio
import fcntl
import os

import pytest
from conftest import LOOP_KINDS, make_loop, require_uring, run_in

_NOMULTISHOT = "io_uring-nomultishot"
_KINDS = [*LOOP_KINDS, _NOMULTISHOT]
_PIECE = 65536
_stock: dict = {}


def _loop(kind):
    if kind != _NOMULTISHOT:
        return make_loop(kind)
    require_uring()
    from uringloop import Loop, engine

    return Loop(backend="io_uring", options=engine.OPT_NO_MULTISHOT)


def _looks(kind, debug, total=200_000, close=False):
    """(tag, depth, size, is_closing) after the write, then three looks
    (each call_soon'd by the one before) after each 64 KiB piece read."""
    lp = _loop(kind)
    lp.set_debug(debug)
    seq = []
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIECE)
    os.set_blocking(r, False)

    async def main():
        wt, _ = await lp.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))
        done = lp.create_future()

        def look(tag, depth):
            seq.append((tag, depth, wt.get_write_buffer_size(), wt.is_closing()))
            if depth < 2:
                lp.call_soon(look, tag, depth + 1)

        def later(fn, turns=3):
            if turns:
                lp.call_soon(later, fn, turns - 1)
            else:
                fn()

        def read_piece(i=1):
            try:
                n = len(os.read(r, _PIECE))
            except BlockingIOError:
                n = -1
            lp.call_soon(look, f"read{i}:{n}", 0)
            if i < 6:
                later(lambda: read_piece(i + 1))
            else:
                later(lambda: done.set_result(None))

        wt.write(b"x" * total)
        seq.append(("write", 0, wt.get_write_buffer_size(), wt.is_closing()))
        if close:
            wt.close()
            seq.append(("close", 0, wt.get_write_buffer_size(), wt.is_closing()))
        lp.call_soon(look, "soon", 0)
        later(read_piece)
        await done
        wt.close()
        await asyncio.sleep(0)

    try:
        run_in(lp, main())
    finally:
        lp.close()
        os.close(r)
    return seq


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("kind", _KINDS)
def test_write_pipe_size_shrinks_as_stock_at_each_piece(kind, debug):
    if debug not in _stock:
        _stock[debug] = _looks("stock", debug)
    want = _stock[debug]
    # stock's buffer shrinks a piece at a time (proves the scenario)
    sizes = [row[2] for row in want]
    assert sizes[0] == 200_000 - _PIECE and 200_000 - 2 * _PIECE in sizes
    assert _looks(kind, debug) == want


@pytest.mark.parametrize("kind", _KINDS)
def test_write_pipe_size_and_close_as_stock_when_closed_with_bytes_queued(kind):
    """close() right after the write: is_closing() at once, the size as
    stock's at each look, the last piece's look included."""
    if "close" not in _stock:
        _stock["close"] = _looks("stock", False, close=True)
    want = _stock["close"]
    assert [row[3] for row in want[1:]] == [True] * (len(want) - 1)
    assert _looks(kind, False, close=True) == want
