"""A child's stdout/stderr pipe grows once the child streams (decisions
580-583), on io_uring, epoll, io_uring with every fallback and, to compare,
the stock loop (whose pipes never grow).

The child reports what ``F_GETPIPE_SZ`` says of its own stdout and stderr
after it wrote: a pipe the loop made for ``PIPE`` is the kernel's default
size at the child's start (test_subprocess_pipe.py
``test_child_stdio_pipes_are_the_kernels_own``) and ``GROW_TO`` once the
parent has read ``GROW_AFTER`` full pipes from it; the bytes are the same
either way.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import sys
import threading

import pytest
from conftest import is_stock, run_in

from uringloop.transports import pipe as ul_pipe

PIPE = asyncio.subprocess.PIPE
KIB = 1024
MIB = 1024 * KIB
PATTERN = bytes(range(256)) * 256  # 64 KiB

# argv: bytes for stdout, bytes for stderr, then "wait" to wait for stdin's EOF
# before it exits. It writes its pattern in 64 KiB writes, then one line
# "<stdout size> <stderr size>" (F_GETPIPE_SZ) to stdout.
_CHILD = """
import fcntl, os, sys
pattern = bytes(range(256)) * 256
for fd, n in ((1, int(sys.argv[1])), (2, int(sys.argv[2]))):
    while n:
        n -= os.write(fd, pattern[:min(n, len(pattern))])
sizes = [fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in (1, 2)]
os.write(1, ("%d %d\\n" % tuple(sizes)).encode())
if sys.argv[3:] == ["wait"]:
    sys.stdin.read()
"""


def _default_size() -> int:
    r, w = os.pipe()
    try:
        return fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)


def _expect(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def _split(out: bytes, n: int) -> tuple[bytes, list[int]]:
    """The pattern the child wrote to stdout, and its report."""
    data, line = out[:n], out[n:]
    return data, [int(v) for v in line.split()]


async def _child(nout: int, nerr: int, *extra: str):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(nout), str(nerr), *extra,
        stdin=PIPE if extra else None, stdout=PIPE, stderr=PIPE,
    )


async def _stream_once(n: int) -> tuple[bytes, list[int]]:
    """A child that writes n bytes to stdout, run to its end: what it wrote
    and the pipe sizes it reported."""
    proc = await _child(n, 0)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return _split(out, n)


def test_streaming_child_pipes_grow_a_short_ones_do_not(any_loop):
    """A child writing 4 MiB to stdout and to stderr sees both pipes grown to
    GROW_TO after it wrote (the stock loop's stay the default); one writing
    256 KiB (4 full pipes, under GROW_AFTER) keeps the default; a user's pipe
    through connect_read_pipe never grows; every byte arrives in order; the
    budget is whole again once the pipes closed. Fails without decision 580
    (the streaming child's pipes stay at the default)."""
    default = _default_size()
    grown = default if is_stock(any_loop) else ul_pipe.GROW_TO
    assert ul_pipe.GROW_TO > default and ul_pipe.GROW_AFTER * default < 4 * MIB

    async def one(n):
        proc = await _child(n, n)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err[-300:]
        data, sizes = _split(out, n)
        assert data == _expect(n) and err == _expect(n)
        return sizes

    async def users_pipe():
        # a pipe of the application's: connect_read_pipe reads 4 MiB of it
        r, w = os.pipe()
        got = bytearray()
        done = any_loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                got.extend(data)

            def connection_lost(self, exc):
                done.set_result(None)

        measured = threading.Event()

        def writer():
            with open(w, "wb", buffering=0) as f:
                f.write(_expect(4 * MIB))
                measured.wait(10)  # the read end stays open till then

        t = threading.Thread(target=writer)
        with open(r, "rb", buffering=0) as rf:
            transport, _ = await any_loop.connect_read_pipe(P, rf)
            t.start()
            while len(got) < 4 * MIB:
                await asyncio.sleep(0.001)
            size = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
            measured.set()
            await done
        t.join(10)
        assert bytes(got) == _expect(4 * MIB)
        return size

    async def main():
        return await one(4 * MIB), await one(256 * KIB), await users_pipe()

    streaming, short, users = run_in(any_loop, main())
    assert streaming == [grown, grown]
    assert short == [default, default]
    assert users == default
    assert ul_pipe._grown == 0


def test_growth_budget_holds_with_many_children(any_loop, monkeypatch):
    """Six children stream 4 MiB each at once and stay (their pipes open)
    until the parent closes their stdin: with a budget of two pipes' growth,
    exactly two pipes grow and the budget counts them; once all have closed
    it is whole again and the next streaming child's pipe grows. The stock
    loop grows none. Fails without decision 581 (all six grow)."""
    default = _default_size()
    per_pipe = ul_pipe.GROW_TO - default
    monkeypatch.setattr(ul_pipe, "GROW_BUDGET", 2 * per_pipe)
    n = 4 * MIB

    async def streams(proc):
        data = await proc.stdout.readexactly(n)
        sizes = [int(v) for v in (await proc.stdout.readline()).split()]
        assert data == _expect(n)
        return sizes[0]

    async def main():
        procs = [await _child(n, 0, "wait") for _ in range(6)]
        sizes = await asyncio.gather(*(streams(p) for p in procs))
        held = ul_pipe._grown
        for p in procs:
            p.stdin.close()
        for p in procs:
            assert await p.stdout.read() == b""
            assert await p.wait() == 0
        await asyncio.sleep(0)  # the pipes' connection_lost
        after = ul_pipe._grown
        data, again = await _stream_once(n)
        assert data == _expect(n)
        return sizes, held, after, again[0]

    sizes, held, after, again = run_in(any_loop, main(), timeout=60)
    if is_stock(any_loop):
        assert (sizes, held, after, again) == ([default] * 6, 0, 0, default)
        return
    assert sorted(sizes) == [default] * 4 + [ul_pipe.GROW_TO] * 2
    assert held == 2 * per_pipe
    assert after == 0
    assert again == ul_pipe.GROW_TO
    assert ul_pipe._grown == 0


@pytest.mark.parametrize("err", [errno.EPERM, errno.EBUSY])
def test_growth_refused_is_ignored(any_loop, monkeypatch, err):
    """F_SETPIPE_SZ refused (EPERM: past the user's pipe quota or
    pipe-max-size; EBUSY): the pipe keeps its size, the budget is not
    charged, every byte arrives. Fails without decision 580 (no F_SETPIPE_SZ
    is asked for)."""
    default = _default_size()
    asked = []

    class Fcntl:
        F_GETPIPE_SZ = fcntl.F_GETPIPE_SZ
        F_SETPIPE_SZ = fcntl.F_SETPIPE_SZ

        @staticmethod
        def fcntl(fd, cmd, arg=0):
            if cmd == fcntl.F_SETPIPE_SZ:
                asked.append(arg)
                raise OSError(err, os.strerror(err))
            return fcntl.fcntl(fd, cmd, arg)

    monkeypatch.setattr(ul_pipe, "fcntl", Fcntl)
    n = 4 * MIB
    data, sizes = run_in(any_loop, _stream_once(n))
    assert data == _expect(n)
    assert sizes == [default, default]
    assert asked == ([] if is_stock(any_loop) else [ul_pipe.GROW_TO])
    assert ul_pipe._grown == 0


# streams argv[1] bytes to stdout and reports the pipe's size, twice: the
# second time after a line (or EOF) on stdin; exits at stdin's EOF
_CHILD_TWICE = """
import fcntl, os, sys
pattern = bytes(range(256)) * 256
for _ in range(2):
    n = int(sys.argv[1])
    while n:
        n -= os.write(1, pattern[:min(n, len(pattern))])
    os.write(1, b"%d\\n" % fcntl.fcntl(1, fcntl.F_GETPIPE_SZ))
    sys.stdin.readline()
sys.stdin.read()
"""


def test_growth_past_the_budget_asks_again_later(any_loop, monkeypatch):
    """With the budget one pipe's growth, a second streaming child's pipe is
    refused while the first holds it, and grows when it streams again after
    the first has gone (it asks again every GROW_AFTER full reads). Fails
    without the asking again (the second child's pipe stays at the default)."""
    default = _default_size()
    grown = default if is_stock(any_loop) else ul_pipe.GROW_TO
    monkeypatch.setattr(ul_pipe, "GROW_BUDGET", ul_pipe.GROW_TO - default)
    n = 4 * MIB

    async def part(proc):
        data = await proc.stdout.readexactly(n)
        assert data == _expect(n)
        return int(await proc.stdout.readline())

    async def main():
        def spawn():
            return asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD_TWICE, str(n), stdin=PIPE, stdout=PIPE
            )

        a = await spawn()
        b = await spawn()
        sizes = [await part(a), await part(b)]
        a.stdin.close()  # a streams once more, then ends: its pipe closes
        sizes.append(await part(a))
        assert await a.stdout.read() == b"" and await a.wait() == 0
        b.stdin.write(b"again\n")
        sizes.append(await part(b))
        b.stdin.close()
        assert await b.stdout.read() == b"" and await b.wait() == 0
        return sizes

    assert run_in(any_loop, main(), timeout=60) == [grown, default, grown, grown]
    assert ul_pipe._grown == 0


def test_growth_where_pidfds_are_refused(loop, pidfd_refused):
    """The stock child watcher's path (pidfd_open refused, decision 506b)
    grows a streaming child's pipe too."""
    n = 4 * MIB
    data, sizes = run_in(loop, _stream_once(n))
    assert data == _expect(n)
    assert sizes == [ul_pipe.GROW_TO, _default_size()]
