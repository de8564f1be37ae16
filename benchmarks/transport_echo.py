#!/usr/bin/env python3
"""Protocol echo server on stock asyncio, uvloop and uringloop, side by side.

The server under test runs in a child process (an ``asyncio.Protocol`` whose
``data_received`` writes the bytes back); the load comes from this process,
on uvloop when it is installed: N connections, each sending a message of
``--size`` bytes and waiting for its echo, for ``--seconds``. Reported per
server loop: requests/s, and the server's CPU time per request (user+sys of
the server process, the fairer number on a shared machine).

    python benchmarks/transport_echo.py --conns 1 100 --size 1024 --seconds 3

This is a report: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOPS = ("stock", "uvloop", "io_uring", "epoll")


def make_loop(kind):
    if kind == "stock":
        return asyncio.SelectorEventLoop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    sys.path.insert(0, ROOT)
    import uringloop

    return uringloop.Loop(backend=kind)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve(kind):
    loop = make_loop(kind)
    start = [0.0]

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        start[0] = cpu()  # startup and imports are not the server's work
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
        server.close()

    loop.run_until_complete(main())
    print(f"{cpu() - start[0]:.6f}", flush=True)
    loop.close()


async def client(port, conns, size, seconds):
    msg = b"x" * size
    count = 0
    stop = time.monotonic() + seconds

    async def one():
        nonlocal count
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            writer.write(msg)
            await reader.readexactly(size)
            count += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return count


def run_one(kind, conns, size, seconds):
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    port = int(proc.stdout.readline())
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        t0 = time.monotonic()
        count = loop.run_until_complete(client(port, conns, size, seconds))
        elapsed = time.monotonic() - t0
    finally:
        loop.close()
    proc.stdin.close()
    cpu = float(proc.stdout.readline())
    proc.wait(timeout=30)
    return count / elapsed, cpu / max(count, 1) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", choices=LOOPS)
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--loops", nargs="+", default=list(LOOPS))
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(f"echo {args.size} B, {args.seconds:g} s per run, client on uvloop if installed")
    print(f"{'server loop':12} {'conns':>5} {'req/s':>10} {'server CPU us/req':>18}")
    for conns in args.conns:
        for kind in args.loops:
            try:
                rate, cpu = run_one(kind, conns, args.size, args.seconds)
            except ImportError as exc:
                print(f"{kind:12} {conns:5} skipped: {exc}")
                continue
            print(f"{kind:12} {conns:5} {rate:10.0f} {cpu:18.2f}")


if __name__ == "__main__":
    main()
