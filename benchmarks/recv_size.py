#!/usr/bin/env python3
"""Which pool buffer size for stream receives: measured, not guessed.

Two scenarios per engine configuration (pool buffer size; the pool stays
16 MiB, so the buffer count shrinks as buffers grow):

``bulk``  64 MiB through one loopback TCP connection: a plain Python thread
          sendall()s 1 MiB chunks, the engine's multishot recv takes them
          (records counted, bytes dropped after the copy into ``bytes``
          every delivery makes). MiB/s of the receiving side.
``echo``  1 KiB messages bounced over one loopback TCP connection, both ends
          on the engine (multishot recv, every record sent straight back).
          Round trips per second.

Each configuration runs ``--repeat`` times, configurations interleaved; the
median is reported. This is a report: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from uringloop import engine  # noqa: E402

POOL = 16 << 20
SIZES = (16 << 10, 64 << 10, 128 << 10, 256 << 10)


def tcp_pair():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    c = socket.create_connection(lst.getsockname())
    s, _ = lst.accept()
    lst.close()
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, s


def bulk(backend: str, size: int, total: int) -> tuple[float, float]:
    eng = engine.Engine(backend, buf_size=size, buf_count=POOL // size)
    c, s = tcp_pair()
    s.setblocking(False)
    got = [0, 0]

    def on_data(res, more, data):
        if res > 0:
            got[0] += res
            got[1] += 1

    eng.recv(s.fileno(), on_data)
    eng.run(0)
    chunk = b"b" * (1 << 20)

    def writer():
        for _ in range(total // len(chunk)):
            c.sendall(chunk)

    t0 = time.perf_counter()
    t = threading.Thread(target=writer)
    t.start()
    while got[0] < total:
        eng.run(1.0)
    elapsed = time.perf_counter() - t0
    t.join()
    eng.cancel_fd(s.fileno())
    eng.run(0.1)
    eng.close()
    c.close()
    s.close()
    return total / elapsed / (1 << 20), got[0] / got[1]


def echo(backend: str, size: int, rounds: int) -> float:
    eng = engine.Engine(backend, buf_size=size, buf_count=POOL // size)
    c, s = tcp_pair()
    for x in (c, s):
        x.setblocking(False)
    msg = b"e" * 1024
    state = {"left": rounds, "have": 0}
    nop = lambda r, m, d: None  # noqa: E731

    def server(res, more, data):
        if res > 0:
            eng.send(s.fileno(), data, nop)

    def client(res, more, data):
        if res <= 0:
            return
        state["have"] += res
        while state["have"] >= len(msg):
            state["have"] -= len(msg)
            state["left"] -= 1
            if state["left"] > 0:
                eng.send(c.fileno(), msg, nop)

    eng.recv(s.fileno(), server)
    eng.recv(c.fileno(), client)
    eng.run(0)
    t0 = time.perf_counter()
    eng.send(c.fileno(), msg, nop)
    while state["left"] > 0:
        eng.run(1.0)
    elapsed = time.perf_counter() - t0
    for x in (c, s):
        eng.cancel_fd(x.fileno())
    eng.run(0.1)
    eng.close()
    c.close()
    s.close()
    return rounds / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--mib", type=int, default=64, help="bulk transfer size in MiB (64)")
    p.add_argument("--rounds", type=int, default=20000, help="echo round trips (20000)")
    p.add_argument("--backend", action="append", choices=("io_uring", "epoll"))
    args = p.parse_args()
    backends = args.backend or ["io_uring", "epoll"]
    total = args.mib << 20
    res: dict = {}
    for rep in range(args.repeat):
        for be in backends:
            for size in SIZES:
                mibs, per_rec = bulk(be, size, total)
                res.setdefault((be, size, "bulk"), []).append(mibs)
                res.setdefault((be, size, "rec"), []).append(per_rec)
                res.setdefault((be, size, "echo"), []).append(echo(be, size, args.rounds))
        print(f"repetition {rep + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    print(f"pool {POOL >> 20} MiB; median of {args.repeat}; bulk {args.mib} MiB, "
          f"echo {args.rounds} x 1 KiB\n")
    print("| backend | buffer | bulk MiB/s | bytes per record (bulk) | echo round trips/s |")
    print("|---|---:|---:|---:|---:|")
    for be in backends:
        for size in SIZES:
            print(f"| {be} | {size >> 10} KiB x {POOL // size} "
                  f"| {statistics.median(res[(be, size, 'bulk')]):.0f} "
                  f"| {statistics.median(res[(be, size, 'rec')]):.0f} "
                  f"| {statistics.median(res[(be, size, 'echo')]) / 1000:.1f} k |")


if __name__ == "__main__":
    main()
