"""Sockets, fd numbers and the loop: what belongs to a socket stays with that
socket object, whatever number the kernel hands out next (issue 7, parts 2
and 6). Tests that take ``any_loop`` also run on the stock loop, whose
behaviour is the reference.
"""

from __future__ import annotations

import asyncio
import socket

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
