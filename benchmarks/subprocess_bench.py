#!/usr/bin/env python3
"""Subprocess pipes and spawn rate on stock asyncio, uvloop, rloop, rsloop and
uringloop (io_uring, epoll), side by side.

* pipe: a child (``dd``, C) writes ``--mib`` MiB to its stdout in blocks of
  64 KiB and of 1 MiB; the parent reads it through
  ``create_subprocess_exec(stdout=PIPE)`` and ``read(1 MiB)``. MiB/s, the
  parent's and the child's CPU (user + system) per MiB (the writer woken by a
  read of its pipe takes the reader's CPU, so the two mostly run one after
  the other: their sum sets the pace), and the child's waits per MiB (its
  voluntary context switches: each time it blocked on a full pipe or socket,
  and was woken again by the parent's read), the parent's waits per MiB (its
  own voluntary context switches: each time it found nothing to read) and
  its minor page faults per MiB. ``--pipe-size N`` sets the
  child's stdout pipe to N bytes (F_SETPIPE_SZ, right after the spawn) where
  the loop gives one (the stock loop's and uringloop's; uvloop gives a
  socketpair), to measure what a bigger pipe does (decision 325). uringloop
  enlarges the child's pipe itself once the child streams (decision 580):
  ``io_uring@N`` / ``epoll@N`` as a loop name grows it to N bytes instead,
  ``@0`` never (as before decision 580).
* spawn: ``/bin/true`` spawned and waited for, ``--spawns`` times one after
  the other, then the same number 20 at a time. Processes/s, and the parent's
  CPU per process.

Each measurement runs in a fresh interpreter; repetition r runs every loop
once, the order rotated by r, so drift on a shared machine reaches every loop
alike. Reported: the median over ``--repeat`` repetitions, [min-max], and the
ratio of medians against uvloop (``x uv``; for CPU lower is better). Loops
that are not installed, or do not support subprocesses, say so. Where rsloop
does not import but benchmarks/.rsloop-env was built (benchmarks/rsloop_env.py),
every loop's measuring interpreter runs under that environment's glibc
(``--rsloop-env``, decision 801); the first line says which glibc.

    python benchmarks/subprocess_bench.py --mib 256 --spawns 300 --repeat 5

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

    backend, _, grow = kind.partition("@")
    if grow:  # io_uring@N: the child's pipe grows to N bytes once it streams, 0: never
        from uringloop.transports import pipe

        pipe.GROW_TO = int(grow)
        if not pipe.GROW_TO:
            pipe.GROW_AFTER = 0
    return uringloop.Loop(backend=backend)


def _self():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)  # this interpreter, not dd
    return r.ru_utime + r.ru_stime, r.ru_minflt, r.ru_nvcsw


def _cpu():
    return _self()[0]


def _children():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children
    return r.ru_nvcsw, r.ru_utime + r.ru_stime


def _set_pipe_size(proc, size):
    import fcntl

    try:
        pipe = proc._transport.get_pipe_transport(1).get_extra_info("pipe")
    except AttributeError:
        pipe = None
    if pipe is not None and os.readlink(f"/proc/self/fd/{pipe.fileno()}").startswith("pipe:"):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, size)


async def pipe_mibs(mib, block, pipe_size=0):
    count = mib * 1024 * 1024 // block
    s0, c0, t0 = _self(), _children(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "dd", "if=/dev/zero", f"bs={block}", f"count={count}", "status=none",
        stdout=asyncio.subprocess.PIPE,
    )
    if pipe_size:
        _set_pipe_size(proc, pipe_size)
    total = 0
    while True:
        chunk = await proc.stdout.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
    await proc.wait()
    dt, s1, c1 = time.perf_counter() - t0, _self(), _children()
    assert total == count * block, total
    cpu, faults, pwaits = (b - a for a, b in zip(s0, s1, strict=True))
    waits, ccpu = (b - a for a, b in zip(c0, c1, strict=True))
    # MiB/s, CPU ms/MiB, the child's CPU ms/MiB, the child's and the parent's
    # waits per MiB, page faults per MiB
    return (total / dt / (1024 * 1024), cpu * 1e3 / mib, ccpu * 1e3 / mib, waits / mib,
            pwaits / mib, faults / mib)


async def spawn_rate(n, parallel):
    async def one():
        proc = await asyncio.create_subprocess_exec("/bin/true")
        await proc.wait()

    c0, t0 = _cpu(), time.perf_counter()
    for _ in range(n // parallel):
        await asyncio.gather(*(one() for _ in range(parallel)))
    return n / (time.perf_counter() - t0), (_cpu() - c0) * 1e6 / n  # /s, CPU us/process


# (name, higher is better)
COLS = (
    ("pipe 64K MiB/s", True), ("pipe 64K cpu ms/MiB", False),
    ("pipe 64K child cpu ms/MiB", False), ("pipe 64K child waits/MiB", False),
    ("pipe 64K parent waits/MiB", False), ("pipe 64K faults/MiB", False),
    ("pipe 1M MiB/s", True), ("pipe 1M cpu ms/MiB", False), ("pipe 1M child cpu ms/MiB", False),
    ("pipe 1M child waits/MiB", False), ("pipe 1M parent waits/MiB", False),
    ("pipe 1M faults/MiB", False),
    ("spawn seq /s", True), ("spawn seq cpu us", False),
    ("spawn x20 /s", True), ("spawn x20 cpu us", False),
)


def child(kind, mib, spawns, pipe_size=0):
    try:
        loop = make_loop(kind)
    except ImportError as exc:
        return {"error": f"not installed ({exc})"}
    out = {}
    try:
        for name, coro_fn in (
            ("pipe 64K", lambda: pipe_mibs(mib, 64 * 1024, pipe_size)),
            ("pipe 1M", lambda: pipe_mibs(mib, 1024 * 1024, pipe_size)),
            ("spawn seq", lambda: spawn_rate(spawns, 1)),
            ("spawn x20", lambda: spawn_rate(spawns, 20)),
        ):
            rate, cpu, *pipe = loop.run_until_complete(coro_fn())
            unit = "MiB/s" if name.startswith("pipe") else "/s"
            out[f"{name} {unit}"] = rate
            out[f"{name} cpu {'ms/MiB' if name.startswith('pipe') else 'us'}"] = cpu
            cols = ("child cpu ms/MiB", "child waits/MiB", "parent waits/MiB", "faults/MiB")
            for col, v in zip(cols, pipe, strict=False):  # none for spawn
                out[f"{name} {col}"] = v
    except (NotImplementedError, AttributeError) as exc:
        out["error"] = f"unsupported ({type(exc).__name__}: {exc})"
    finally:
        loop.close()
    return out


def child_launch(spec, wanted):
    """(argv up to the script, environment, the libc in words) for every
    measuring interpreter: this Python, or this Python under the rsloop
    environment's glibc when rsloop is wanted and does not import as it is
    (one libc for every loop: decision 801)."""
    import platform

    sys.path.insert(0, HERE)
    try:
        import rsloop_env
    finally:
        sys.path.remove(HERE)
    man = rsloop_env.choose(spec, wanted)
    if man is None:
        return [sys.executable], None, f"the host's glibc {platform.libc_ver()[1]}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (rsloop_env.site_dir(man["dir"]), env.get("PYTHONPATH")) if p
    )
    return rsloop_env.command_prefix(man["dir"]), env, rsloop_env.describe(man)


def main():
    import statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--spawns", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loops", nargs="*", default=list(LOOPS))
    ap.add_argument("--pipe-size", type=int, default=0,
                    help="F_SETPIPE_SZ for the child's stdout pipe, where it is a pipe")
    ap.add_argument("--rsloop-env", default="auto", metavar="auto|off|DIR",
                    help="run every loop's interpreter under the rsloop environment's glibc "
                    "(auto: when rsloop is among the loops, does not import as it is and "
                    "benchmarks/.rsloop-env was built; decision 801)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mib, args.spawns, args.pipe_size)))
        return
    launch, env, libc = child_launch(args.rsloop_env, "rsloop" in args.loops)
    runs = {k: [] for k in args.loops}
    errors = {}
    for rep in range(args.repeat):
        order = args.loops[rep % len(args.loops):] + args.loops[:rep % len(args.loops)]
        for kind in order:
            if kind in errors:
                continue
            res = subprocess.run(
                launch + [os.path.abspath(__file__), "--child", kind, "--mib", str(args.mib),
                          "--spawns", str(args.spawns), "--pipe-size", str(args.pipe_size)],
                capture_output=True, text=True, timeout=900, env=env,
            )
            try:
                r = json.loads(res.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                r = {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
            if "error" in r:
                errors[kind] = r["error"]
            if len(r) > 1 or "error" not in r:
                runs[kind].append(r)
    med = {k: {c: statistics.median(r[c] for r in v) for c, _ in COLS if all(c in r for r in v)}
           for k, v in runs.items() if v}
    print(f"every loop's interpreter on {libc}")
    print(f"{args.repeat} repetitions, {args.mib} MiB per pipe run, {args.spawns} spawns; "
          "median [min-max], x uv = ratio of medians against uvloop"
          + (f"; child's stdout pipe set to {args.pipe_size} bytes" if args.pipe_size else ""))
    for col, _ in COLS:
        print(f"\n{col}")
        for kind in args.loops:
            if kind not in med or col not in med[kind]:
                print(f"  {kind:10} {errors.get(kind, 'no result')}")
                continue
            vals = [r[col] for r in runs[kind]]
            m = med[kind][col]
            uv = med.get("uvloop", {}).get(col)
            ratio = f"  x uv {m / uv:5.2f}" if uv else ""
            print(f"  {kind:10} {m:9.2f} [{min(vals):.2f}-{max(vals):.2f}]{ratio}")


if __name__ == "__main__":
    main()
