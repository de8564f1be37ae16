"""An adversarial review of subprocesses and pipe transports at run time
(transports/subprocess.py, transports/pipe.py; decisions 431-434).

Each scenario runs on the loop under test (``tloop``: io_uring, epoll,
io_uring with every fallback, and the stock loop itself) and on a stock
``SelectorEventLoop`` beside it (``on_stock``), and the two logs must be the
same: the protocol's callbacks, the bytes that arrived, the return code,
the warnings logged. What the review found the same as stock, and what it
found different and left, is in decision 434.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest
from conftest import is_stock, wait_child_exited
from transport_helpers import on_stock, run_in, tloop, wait_for

assert tloop  # a fixture, imported for the tests below


class Log(asyncio.Protocol):
    def __init__(self, log, loop, resume_raises=False):
        self.log = log
        self.lost = loop.create_future()
        self.resume_raises = resume_raises

    def connection_made(self, transport):
        self.log.append("made")

    def pause_writing(self):
        self.log.append("pause")

    def resume_writing(self):
        self.log.append("resume")
        if self.resume_raises:
            self.resume_raises = False
            raise KeyboardInterrupt

    def connection_lost(self, exc):
        self.log.append(("lost", repr(exc)))
        if not self.lost.done():
            self.lost.set_result(None)


class Warnings(logging.Handler):
    """The asyncio logger's warnings while it is attached."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("asyncio").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("asyncio").removeHandler(self)


async def _read_until_lost(r, proto, log):
    """Read the pipe's other end until connection_lost, then to its EOF."""
    got = 0
    while not proto.lost.done():
        try:
            got += len(os.read(r, 1 << 20))
        except BlockingIOError:
            pass
        await asyncio.sleep(0.002)
    while True:
        try:
            data = os.read(r, 1 << 20)
        except BlockingIOError:
            log.append("no EOF")
            break
        if not data:
            break
        got += len(data)
    log.append(("read", got))


def _write_after_the_end(loop, how):
    log = []
    r, w = os.pipe()
    os.set_blocking(r, False)

    async def main():
        proto = Log(log, loop)
        t, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
        t.write(b"x" * 200_000)  # the pipe takes 64 KiB, the rest is queued
        getattr(t, how)()
        log.append(("closing", t.is_closing(), t.get_write_buffer_size()))
        for _ in range(7):
            t.write(b"late")  # dropped and counted; the 6th and 7th warn
        await wait_for(_read_until_lost(r, proto, log), 10)

    try:
        with Warnings() as warned:
            run_in(loop, main())
    finally:
        os.close(r)
    log.append(("warnings", len(warned.messages)))
    return log


@pytest.mark.parametrize("how", ["write_eof", "close", "abort"])
def test_a_write_after_the_end_changes_nothing(tloop, how):
    """Decision 431: a write() after write_eof()/close() while a write was
    queued made the transport take itself for lost: the queue never left,
    connection_lost never came, the fd stayed open. After abort() the stock
    counter of late writes started at 1 (one warning too many)."""
    assert _write_after_the_end(tloop, how) == on_stock(_write_after_the_end, how)


def _stdin_written_after_close(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            "sh", "-c", "read x; wc -c", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        p.stdin.write(b"x\n" + b"y" * 300_000)
        p.stdin.close()
        p.stdin.write(b"late")
        out = await wait_for(p.stdout.read())
        return out.strip(), await wait_for(p.wait())

    return run_in(loop, main())


def test_a_childs_stdin_written_after_close_still_flushes(tloop):
    """Decision 431 through a subprocess's StreamWriter."""
    assert _stdin_written_after_close(tloop) == on_stock(_stdin_written_after_close)


def _interrupt_in_resume_writing(loop):
    log = []
    r, w = os.pipe()
    os.set_blocking(r, False)
    proto = Log(log, loop, resume_raises=True)

    async def start():
        t, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
        t.set_write_buffer_limits(high=1000, low=100)
        t.write(b"x" * 100_000)  # queued past the pipe's 64 KiB: paused
        await asyncio.sleep(0)  # the rest is in flight (ours) or waits (stock)
        t.write(b"y" * 100)  # queued behind it
        return t

    t = run_in(loop, start())

    async def drain():
        got = 0
        while got < 100_100:
            try:
                got += len(os.read(r, 1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.002)
        log.append(("read", got, t.get_write_buffer_size()))
        t.close()
        await proto.lost

    task = loop.create_task(wait_for(drain(), 10))
    try:
        for _ in range(3):
            try:
                loop.run_until_complete(task)  # resumed after the interrupt
                break
            except KeyboardInterrupt:
                log.append("KeyboardInterrupt")
    finally:
        os.close(r)
    return log


def test_an_interrupt_out_of_resume_writing_strands_nothing(tloop):
    """Decision 433: KeyboardInterrupt out of resume_writing (called when a
    write in flight ended) left what was written meanwhile queued with no
    write to come: the bytes stayed until the next write(), a close never
    finished."""
    assert _interrupt_in_resume_writing(tloop) == on_stock(_interrupt_in_resume_writing)


class Exits(asyncio.SubprocessProtocol):
    def __init__(self, log):
        self.log = log

    def connection_made(self, transport):
        self.transport = transport

    def process_exited(self):
        self.log.append(("exited", self.transport.get_returncode()))


def _closed_before_the_exit_is_seen(loop):
    log = []

    async def main():
        t, _ = await loop.subprocess_exec(
            lambda: Exits(log), "sh", "-c", "read x; exit 7",
            stdin=subprocess.PIPE, stdout=None, stderr=None,
        )
        t.get_pipe_transport(0).write(b"\n")  # written at once (nothing queued)
        # the child exits; the loop does not run meanwhile. Stock 3.10-3.11:
        # its threaded watcher's waitpid reaps the child as it exits (then
        # close()'s Popen.poll() finds no child); wait for that too, or
        # close() can reap it first and the watcher reports 255.
        wait_child_exited(t.get_pid(), reaped=is_stock(loop))
        t.close()  # Popen.poll() in close() reaps it
        await wait_for(t._wait())
        log.append(("returncode", t.get_returncode()))

    with Warnings() as warned:
        run_in(loop, main())
    log.append(("warnings", warned.messages))
    return log


def test_a_child_reaped_by_close_keeps_its_status(tloop):
    """Decision 432: a child that had exited when transport.close() ran was
    reaped by close()'s Popen.poll(); the pidfd's waitpid then failed and
    the loop reported 255 with "exit status already read". The status is
    Popen's, as 3.10-3.11's stock (threaded) watcher reports it."""
    if is_stock(tloop) and sys.version_info >= (3, 12):
        pytest.skip("3.12+'s stock pidfd watcher reports 255 here (its waitpid finds no child)")
    want = [("exited", 7), ("returncode", 7), ("warnings", [])]
    assert _closed_before_the_exit_is_seen(tloop) == want
    if sys.version_info < (3, 12):
        assert on_stock(_closed_before_the_exit_is_seen) == want
