#!/usr/bin/env python3
"""What one submission costs, and how queued sends progress.

submit: N ``nop`` submissions in batches of 64, each batch followed by run(0)
calls until its records are back; only the submissions are timed (a run
itself releases the GIL while it may wait, which is not what this measures),
three ways:

``python``  ``eng.nop(cb)`` in a Python ``for`` loop: the hot submission is
            a C method of uringloop._sched.Table (no cffi, the GIL is kept)
``c``       the same C method driven from C (``deque(map(eng.nop, repeat(cb,
            64)), 0)``): no interpreter loop per submission
``cffi``    the old path: a slot taken from the table, then
            ``lib.ul_nop(e, ud)`` through cffi, which releases and re-takes
            the GIL around every call (what every Engine method did before)

each alone and with one CPU-bound Python thread running (``while not stop:
pass``): with cffi every submission offers the GIL to that thread.

sends: the review's P5 scenario. 8 sends of 100 bytes queued on one socket in
one turn; how many ``run(0)`` calls and kernel entries until all 8 completed.
Turn and entry counts are deterministic on one machine; times are not.

This is a report: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import socket
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from uringloop import engine  # noqa: E402, I001
from uringloop._engine_cffi import lib  # noqa: E402, I001

BATCH = 64


def cb(res, more, data):
    pass


def submit_round(eng, how: str, n: int) -> float:
    """(seconds spent submitting, seconds in all) for n nops, in batches of
    64, each followed by run(0) until its records are back."""
    clock = time.perf_counter
    spent = 0.0
    start = clock()
    if how == "cffi":
        take, refused, e, ul_nop = eng._t.take, eng._t.refused, eng._e, lib.ul_nop
    nop = eng.nop
    for _ in range(n // BATCH):
        t0 = clock()
        if how == "python":
            for _ in range(BATCH):
                nop(cb)
        elif how == "c":
            collections.deque(map(nop, itertools.repeat(cb, BATCH)), 0)
        else:
            for _ in range(BATCH):
                ud = take(cb, None)
                rc = ul_nop(e, ud)
                if rc < 0:
                    refused(ud, rc)
        spent += clock() - t0
        while eng.in_flight:
            eng.run(0)
    return spent, clock() - start


def bench_submit(backend: str, n: int, repeat: int) -> list[str]:
    rows = []
    for busy in (False, True):
        stop = threading.Event()

        def spin(stop=stop):
            while not stop.is_set():
                pass

        t = None
        if busy:
            t = threading.Thread(target=spin)
            t.start()
            time.sleep(0.05)
        try:
            eng = engine.Engine(backend)
            results = {}
            for how in ("python", "c", "cffi"):
                submit_round(eng, how, BATCH * 4)  # warm up
            times = {how: [] for how in ("python", "c", "cffi")}
            for _ in range(repeat):
                for how in times:  # interleaved, so drift hits all alike
                    times[how].append(submit_round(eng, how, n))
            for how, ts in times.items():
                results[how] = (statistics.median(t[0] for t in ts),
                                statistics.median(t[1] for t in ts))
            eng.close()
        finally:
            stop.set()
            if t is not None:
                t.join()
        label = "1 busy thread" if busy else "alone"
        rows.append(
            f"| {backend} | {label} | "
            + " | ".join(f"{results[h][0] * 1e3:.2f} ms ({results[h][0] / n * 1e6:.2f} µs)"
                         for h in ("python", "c", "cffi"))
            + " | " + " | ".join(f"{results[h][1] * 1e3:.2f} ms" for h in ("python", "c", "cffi"))
            + " |"
        )
    return rows


def bench_sends(backend: str) -> str:
    eng = engine.Engine(backend)
    a, b = socket.socketpair()
    a.setblocking(False)
    done = []
    eng.run(0)
    s0 = eng.stats()
    for _ in range(8):
        eng.send(a.fileno(), b"x" * 100, lambda r, m, d: done.append(r))
    runs = 0
    while len(done) < 8:
        eng.run(0)
        runs += 1
    s1 = eng.stats()
    eng.close()
    a.close()
    b.close()
    enters, submitted = s1["enters"] - s0["enters"], s1["submitted"] - s0["submitted"]
    return f"| {backend} | {runs} | {enters} | {submitted} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="submissions per round (5000)")
    p.add_argument("--repeat", type=int, default=7, help="rounds; median reported (7)")
    p.add_argument("--backend", action="append", choices=("io_uring", "epoll"))
    args = p.parse_args()
    backends = args.backend or ["io_uring", "epoll"]
    print(f"## submission cost ({args.n} nops, median of {args.repeat}; "
          "per submission in brackets)\n")
    print("| backend | other threads | submitting: Python loop, C method | C-driven, C method "
          "| via cffi (old path) | with the runs: Python loop | C-driven | via cffi |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for be in backends:
        for row in bench_submit(be, args.n, args.repeat):
            print(row, flush=True)
    print("\n## 8 queued sends on one socket (P5)\n")
    print("| backend | run(0) calls | kernel entries | submitted |")
    print("|---|---:|---:|---:|")
    for be in backends:
        print(bench_sends(be))


if __name__ == "__main__":
    main()
