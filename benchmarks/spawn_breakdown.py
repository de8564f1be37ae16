#!/usr/bin/env python3
"""Where a spawn-and-wait's wall time goes, loop by loop (design.md 972-974).

subprocess_bench.py's ``spawn x20`` row, taken apart: ``--parallel``
``create_subprocess_exec("/bin/true")`` + ``wait()`` at a time, ``--spawns``
in all, after the bench's two 128 MiB pipe runs when ``--pipes`` (as in the
bench's own interpreter). Reported per run:

* rate (/s) and the parent's CPU per process (µs);
* ``popen``: the time in ``subprocess.Popen._execute_child``, which is the
  parent's wait in ``vfork()`` until the child has exec'd (or, when the
  child keeps the CPU after its exec, until it has run): median, and the
  share of spawns under 200 µs, at 0.5-2 ms (queued behind the batch's own
  children) and over 2 ms (queued behind a neighbour until its slice or the
  tick ends);
* ``exit seen``: from Popen's return to the child watch's callback (ours:
  the pidfd's record; rloop: its pidfd reader), median; ``to wait``: from
  that callback to ``wait()`` returning, median (stock and uvloop: ``-``);
* the host's idle share over the run (/proc/stat), to tell a loop's own
  waits from the host's contention.

Each run is a fresh interpreter; repetition r rotates the loops' order.
This is a report: nothing here asserts a timing.

    python benchmarks/spawn_breakdown.py --loops rloop io_uring epoll --repeat 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _host_idle():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)


def child(kind, spawns, parallel, pipes):
    """One loop's run, in this interpreter; the hooks are undone after it."""
    sys.path.insert(0, HERE)
    import subprocess_bench as sb

    pc = time.perf_counter
    popen, seen = [], {}
    undo = []

    def hook(owner, name, make):
        orig = getattr(owner, name)
        undo.append((owner, name, orig))
        setattr(owner, name, make(orig))

    def timed_execute(execute):
        def wrapper(self, *a, **k):
            t = pc()
            try:
                return execute(self, *a, **k)
            finally:
                popen.append(pc() - t)
                seen[self.pid] = [pc(), None, None]

        return wrapper

    def exit_seen(watch):  # (…, pid, …) of our _reap and rloop's _do_wait
        def wrapper(a, pid, *rest):
            if pid in seen:
                seen[pid][1] = pc()
            return watch(a, pid, *rest)

        return wrapper

    hook(subprocess.Popen, "_execute_child", timed_execute)
    loop = None
    try:
        loop = sb.make_loop(kind)  # imports uringloop where asked
        if kind.startswith(("io_uring", "epoll")):
            from uringloop.transports import subprocess as us

            hook(us, "_reap", exit_seen)
        elif kind == "rloop":
            import rloop.subprocess as rs

            hook(rs._PidfdChildWatcher, "_do_wait", exit_seen)

        async def one():
            proc = await asyncio.create_subprocess_exec("/bin/true")
            await proc.wait()
            seen[proc.pid][2] = pc()

        async def run():
            for _ in range(spawns // parallel):
                await asyncio.gather(*(one() for _ in range(parallel)))

        if pipes:
            loop.run_until_complete(sb.pipe_mibs(128, 64 * 1024))
            loop.run_until_complete(sb.pipe_mibs(128, 1 << 20))
        popen.clear()
        seen.clear()
        i0, t0, c0, w0 = *_host_idle(), time.process_time(), pc()
        loop.run_until_complete(run())
        wall, cpu = pc() - w0, time.process_time() - c0
        i1, t1 = _host_idle()
    finally:
        if loop is not None:
            loop.close()
        for owner, name, orig in reversed(undo):
            setattr(owner, name, orig)
    n = len(popen)
    ends = [v for v in seen.values() if v[1] is not None]
    return {
        "rate": n / wall,
        "cpu": cpu * 1e6 / n,
        "popen": statistics.median(popen) * 1e6,
        "fast": sum(p < 2e-4 for p in popen) / n,
        "mid": sum(5e-4 <= p <= 2e-3 for p in popen) / n,
        "slow": sum(p > 2e-3 for p in popen) / n,
        "seen": statistics.median(v[1] - v[0] for v in ends) * 1e6 if ends else None,
        "to_wait": statistics.median(v[2] - v[1] for v in ends) * 1e6 if ends else None,
        "exits_seen": len(ends),
        "idle": 100 * (i1 - i0) / max(1, t1 - t0),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loops", nargs="*", default=["rloop", "io_uring", "epoll"])
    ap.add_argument("--spawns", type=int, default=400)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--pipes", action="store_true", help="the bench's pipe runs first")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.spawns, args.parallel, args.pipes)))
        return
    print(
        f"{args.spawns} spawns of /bin/true, {args.parallel} at a time, "
        f"{args.repeat} runs a loop, median of runs [min-max]"
    )
    runs = {k: [] for k in args.loops}
    for rep in range(args.repeat):
        order = args.loops[rep % len(args.loops) :] + args.loops[: rep % len(args.loops)]
        for kind in order:
            res = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--child",
                    kind,
                    "--spawns",
                    str(args.spawns),
                    "--parallel",
                    str(args.parallel),
                ]
                + (["--pipes"] if args.pipes else []),
                capture_output=True,
                text=True,
                timeout=600,
            )
            try:
                runs[kind].append(json.loads(res.stdout.strip().splitlines()[-1]))
            except (IndexError, ValueError):
                print(f"  {kind}: {(res.stderr.strip().splitlines() or ['failed'])[-1]}")
    for kind, rs in runs.items():
        if not rs:
            continue

        def med(c, fmt="{:.0f}", rs=rs):
            vals = [r[c] for r in rs if r[c] is not None]
            return fmt.format(statistics.median(vals)) if vals else "-"

        lo, hi = min(r["rate"] for r in rs), max(r["rate"] for r in rs)
        print(
            f"  {kind:9} {med('rate')}/s [{lo:.0f}-{hi:.0f}]  cpu {med('cpu')} µs  "
            f"popen {med('popen')} µs (<0.2 ms {med('fast', '{:.2f}')}, "
            f"0.5-2 ms {med('mid', '{:.2f}')}, >2 ms {med('slow', '{:.3f}')})  "
            f"exit seen {med('seen')} µs, to wait {med('to_wait')} µs  "
            f"host idle {med('idle')} %"
        )


if __name__ == "__main__":
    main()
