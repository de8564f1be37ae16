#!/usr/bin/env python3
"""Subprocess pipes and spawn rate on stock asyncio, uvloop, rloop, rsloop and
uringloop (io_uring, epoll), side by side.

* pipe: a child (``dd``, C) writes ``--mib`` MiB to its stdout in blocks of
  64 KiB and of 1 MiB; the parent reads it through
  ``create_subprocess_exec(stdout=PIPE)``. Reported in MiB/s.
* spawn: ``/bin/true`` spawned and waited for, ``--spawns`` times one after
  the other, then the same number 20 at a time. Reported in processes/s.

Each loop runs in a fresh interpreter; best of ``--repeat`` runs. Loops that
are not installed, or do not support subprocesses, say so.

    python benchmarks/subprocess_bench.py --mib 256 --spawns 300

This is a report: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOPS = ("stock", "uvloop", "rloop", "rsloop", "io_uring", "epoll")


def make_loop(kind):
    if kind == "stock":
        return asyncio.SelectorEventLoop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "rloop":
        import rloop

        return rloop.new_event_loop()
    if kind == "rsloop":
        import rsloop

        return rsloop.new_event_loop()
    sys.path.insert(0, ROOT)
    import uringloop

    return uringloop.Loop(backend=kind)


async def pipe_mibs(mib, block):
    count = mib * 1024 * 1024 // block
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "dd", "if=/dev/zero", f"bs={block}", f"count={count}", "status=none",
        stdout=asyncio.subprocess.PIPE,
    )
    total = 0
    while True:
        chunk = await proc.stdout.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
    await proc.wait()
    dt = time.perf_counter() - t0
    assert total == count * block, total
    return total / dt / (1024 * 1024)


async def spawn_rate(n, parallel):
    async def one():
        proc = await asyncio.create_subprocess_exec("/bin/true")
        await proc.wait()

    t0 = time.perf_counter()
    for _ in range(n // parallel):
        await asyncio.gather(*(one() for _ in range(parallel)))
    return n / (time.perf_counter() - t0)


def child(kind, mib, spawns, repeat):
    try:
        loop = make_loop(kind)
    except ImportError as exc:
        return {"error": f"not installed ({exc})"}
    out = {}
    try:
        for name, coro_fn in (
            ("pipe 64K MiB/s", lambda: pipe_mibs(mib, 64 * 1024)),
            ("pipe 1M MiB/s", lambda: pipe_mibs(mib, 1024 * 1024)),
            ("spawn seq /s", lambda: spawn_rate(spawns, 1)),
            ("spawn x20 /s", lambda: spawn_rate(spawns, 20)),
        ):
            out[name] = max(loop.run_until_complete(coro_fn()) for _ in range(repeat))
    except (NotImplementedError, AttributeError) as exc:
        out["error"] = f"unsupported ({type(exc).__name__}: {exc})"
    finally:
        loop.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--spawns", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loops", nargs="*", default=list(LOOPS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mib, args.spawns, args.repeat)))
        return
    cols = ("pipe 64K MiB/s", "pipe 1M MiB/s", "spawn seq /s", "spawn x20 /s")
    print(f"{'loop':10}" + "".join(f"{c:>16}" for c in cols))
    for kind in args.loops:
        res = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--mib", str(args.mib),
             "--spawns", str(args.spawns), "--repeat", str(args.repeat)],
            capture_output=True, text=True, timeout=900,
        )
        try:
            r = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            r = {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
        if "error" in r and len(r) == 1:
            print(f"{kind:10}  {r['error']}")
            continue
        print(f"{kind:10}" + "".join(f"{r.get(c, float('nan')):16.0f}" for c in cols)
              + (f"  {r['error']}" if "error" in r else ""))


if __name__ == "__main__":
    main()
