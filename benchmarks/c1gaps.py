#!/usr/bin/env python3
"""Where a one-connection round trip's time goes, server and client (decisions 909-912).

    python benchmarks/c1gaps.py --loops rsloop,uringloop-io_uring
    python benchmarks/c1gaps.py --workload echo-1k-c1-sock-tcp --reps 3
    python benchmarks/c1gaps.py --loops rsloop --env RSLOOP_WAKE_SPIN_US=0

Each run is net_bench's (benchmarks/net_bench.py): a fresh net_server.py
pinned to CPU 0, the one-connection warm-up client, then loadgen pinned to
CPU 1. Over the measured window it reads the server's threads from
/proc/<pid>/task (CPU time from schedstat, voluntary switches from status:
how many threads, which one is busy, which one sleeps), and `perf record`s
the raw syscall tracepoints of the server and the client (timestamps, no
sampling) for the gaps of each request, medians and quartiles in µs:

  reply -> request   the server's reply (its send returns) to the client's
                     next request (its send returns): the client's turn
  request -> reply   the client's request to the server's reply, and of it:
                     request -> woken (the server's waiting call returns;
                     only where it had waited) and woken -> reply
  client send        the client's send call itself (it wakes a sleeping
                     server: an IPI on this VM)
  reply -> wait      the server's reply to its next waiting call
                     (io_uring_enter with min_complete > 0, epoll_wait or
                     epoll_pwait with a timeout), where that call came before
                     the request; "waits first" is the share of requests
                     whose send began with the server already in such a
                     call (so it slept, unless a spurious wake-up came)

A server whose reply -> wait is shorter than the client's turn sleeps before
every request; one that is slower to get back to its wait (more work after
its reply, or a spin) meets the request already there and saves the
wake-up. perf's tracepoints slow every syscall by about a microsecond, so
the gaps are longer than in net_bench's runs, and the rates lower; compare
loops within one run. A report: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import net_bench  # noqa: E402
import rsloop_env  # noqa: E402

SENDS = (1, 44)  # write, sendto
WAITS_EPOLL = (232, 281)  # epoll_wait, epoll_pwait
IO_URING_ENTER = 426
TRACEPOINTS = "raw_syscalls:sys_enter,raw_syscalls:sys_exit"
EVENT_RE = re.compile(r"\s*(\d+)\s+([\d.]+):\s+(\S+):\s+(.*)")
ARGS_RE = re.compile(r"NR (\d+) \(([0-9a-f]+), ([0-9a-f]+), ([0-9a-f]+), ([0-9a-f]+)")


class Opts:
    duration = 1.5
    warmup = 0.3
    verify = True
    client_mode = "epoll"
    client_cpu = 1


def threads(pid):
    """{tid: (name, ns on a CPU, voluntary switches)} of pid's threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                vol = int(f.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[tid] = (name, ns, vol)
    return out


def is_wait(nr, a):
    return (nr == IO_URING_ENTER and a[2] >= 1) or (nr in WAITS_EPOLL and a[3] != 0)


def gaps(script, client, size):
    """perf script's lines -> lists of each request's gaps (µs)."""
    g = {k: [] for k in ("turn", "rtt", "woken", "work", "send", "wait")}
    firsts = requests = 0
    reply = req = woke = wait_at = None
    send_in = 0.0
    in_wait = False
    sent = re.compile(rf"NR ({'|'.join(map(str, SENDS))}) = {size}$")
    for ln in script.splitlines():
        m = EVENT_RE.match(ln)
        if not m:
            continue
        tid, t, ev, tr = int(m[1]), float(m[2]) * 1e6, m[3], m[4]
        if tid == client:
            if ev == "raw_syscalls:sys_enter" and int(tr.split()[1]) in SENDS:
                send_in = t
            elif ev == "raw_syscalls:sys_exit" and sent.match(tr) and reply is not None:
                requests += 1
                g["turn"].append(t - reply)
                g["send"].append(t - send_in)
                if wait_at is not None and wait_at < send_in:
                    firsts += 1
                    g["wait"].append(wait_at - reply)
                req, reply = t, None
        elif ev == "raw_syscalls:sys_enter":
            a = ARGS_RE.match(tr)
            if a:
                nr, args = int(a[1]), [int(a[i], 16) for i in range(2, 6)]
                in_wait = is_wait(nr, args)
                if in_wait and reply is not None and wait_at is None:
                    wait_at = t
        elif ev == "raw_syscalls:sys_exit":
            if in_wait and req is not None and woke is None:
                woke = t
            in_wait = False
            if sent.match(tr):
                if req is not None:
                    g["rtt"].append(t - req)
                    if woke is not None:
                        g["woken"].append(woke - req)
                        g["work"].append(t - woke)
                reply, req, woke, wait_at = t, None, None, None
    return g, firsts / max(requests, 1)


def quartiles(xs):
    if not xs:
        return "-"
    xs = sorted(xs)
    n = len(xs)
    return f"{xs[n // 4]:.0f} / {xs[n // 2]:.0f} / {xs[3 * n // 4]:.0f}"


def run(loop, wl, libc, tmp, opts):
    srv = net_bench.Server(loop, wl, 0, tmp, None, 0, libc)
    if srv.skip:
        print(f"{loop}: skipped ({srv.skip})")
        return
    data = os.path.join(tmp, "perf.data")
    try:
        net_bench.warm_connection(wl, srv, opts)
        cli = subprocess.Popen(
            net_bench.loadgen_args(wl, srv, opts),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=net_bench.pin(opts.client_cpu),
        )
        if net_bench.readline(cli, 60) != "START":
            raise RuntimeError(f"loadgen did not start: {cli.stderr.read()[-300:]!r}")
        t0 = threads(srv.proc.pid)
        rec = subprocess.Popen(
            ["perf", "record", "-q", "-o", data, "-e", TRACEPOINTS]
            + ["-p", f"{srv.proc.pid},{cli.pid}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        line = net_bench.readline(cli, 60)
        t1 = threads(srv.proc.pid)
        rec.send_signal(2)
        rec.wait()
        cli.communicate(timeout=60)
    finally:
        srv.stop()
    res = json.loads(line)
    n = res["requests"]
    script = subprocess.run(
        ["perf", "script", "-i", data, "-F", "tid,time,event,trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    g, firsts = gaps(script, cli.pid, wl["size"])
    print(f"{loop}: {n / res['seconds']:,.0f} req/s under perf, {len(t1)} thread(s)")
    for tid, (name, ns, vol) in sorted(t1.items(), key=lambda kv: -kv[1][1]):
        _, ns0, vol0 = t0.get(tid, (name, 0, 0))
        print(
            f"  thread {tid} {name[:15]:<15} busy {100 * (ns - ns0) / 1e9 / res['seconds']:5.1f} %"
            f"  {(ns - ns0) / 1e3 / n:6.2f} µs/request  sleeps/request {(vol - vol0) / n:.3f}"
        )
    print(f"  per request, µs (25th / 50th / 75th percentile), {len(g['turn'])} requests:")
    print(f"    reply -> request {quartiles(g['turn'])}   client send {quartiles(g['send'])}")
    print(
        f"    request -> reply {quartiles(g['rtt'])}   of it request -> woken "
        f"{quartiles(g['woken'])}, woken -> reply {quartiles(g['work'])}"
    )
    print(f"    reply -> wait {quartiles(g['wait'])}   waits first {firsts:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loops", default="rsloop,rloop,uringloop-io_uring,uringloop-epoll")
    ap.add_argument("--workload", default="echo-1k-c1-sock-unix", help="a c=1 echo row")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--duration", type=float, default=Opts.duration)
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="for the servers")
    rsloop_env.add_option(ap)
    opts = ap.parse_args(argv)
    loops = opts.loops.split(",")
    wl = next((w for w in net_bench.WORKLOADS if w["id"] == opts.workload), None)
    if wl is None or wl.get("http") or wl["conns"] != 1:
        ap.error(f"{opts.workload}: not a one-connection echo row of net_bench")
    for kv in opts.env:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    libc = rsloop_env.choose(opts.rsloop_env, "rsloop" in loops)
    run_opts = Opts()
    run_opts.duration = opts.duration
    with tempfile.TemporaryDirectory(prefix="c1gaps-") as tmp:
        for rep in range(opts.reps):
            print(f"## {opts.workload}, repetition {rep + 1}")
            for loop in loops:
                run(loop, wl, libc, tmp, run_opts)


if __name__ == "__main__":
    main()
