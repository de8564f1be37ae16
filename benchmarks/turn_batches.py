"""How many requests a server's turn takes, and what sets it (decisions 938-941).

    python benchmarks/turn_batches.py              # Protocol + Buffered Unix, io_uring
    python benchmarks/turn_batches.py --think 0,400 --spin 0,30 --reps 5
    python benchmarks/turn_batches.py --workloads echo-1k-c100-protocol-tcp \\
        --loops uringloop-io_uring,uringloop-epoll,uvloop --record 0

net_bench's setup for an echo row (net_server.py pinned to CPU 0, the
one-connection warm-up client, loadgen on CPU 1, `--duration` s measured):
per run the requests/s, each side's CPU per request and busy share, the
engine's counters and the loop's turns per request (uringloop; net_server's
STATS line). With `--record S` (0.3; 0: counts only), `perf record` of a few
syscall tracepoints on both processes for S seconds in the middle of the
window: the server's sends between two of its kernel waits (`io_uring_enter`,
`epoll_wait`, `epoll_pwait`: the requests a turn answered, each echo being one
send) and the client's events per `epoll_wait` (the replies it found at once),
as distributions (mean, p10, median, p90, the share of zeros). Tracing
costs both sides about the same per request, so the distributions are
those of a slightly slower pair; the counts come from the whole window.

`--think NS` (loadgen: NS ns of busy work before each message) and `--spin N`
(net_server's protocol and buffered echo: N turns of an empty Python loop
after each write) take comma lists; every combination runs once per
repetition, interleaved. They make one side slower per request by a known
amount: in a closed loop of 100 messages the slower side holds most of them,
and the faster side's turns take what arrives while it runs one (decision
939). Needs perf and root for `--record`.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import net_bench as nb  # noqa: E402

# a server's turn ends at its next kernel wait; its sends in between are its replies
WAITS = ("io_uring_enter", "epoll_wait", "epoll_pwait")
SENDS = ("sendto", "sendmsg", "write", "writev")
EVENTS = [f"syscalls:sys_enter_{n}" for n in WAITS + SENDS] + [
    "syscalls:sys_exit_epoll_wait",
    "syscalls:sys_exit_epoll_pwait",
]


def parse_script(text, server_pid, client_pid):
    """`perf script -F pid,event,trace` of EVENTS -> (the server's sends per
    kernel wait, the client's events per epoll_wait). A count starts at a
    side's first wait, so the first, partial turn is not counted; a wait's
    count is closed by the next one."""
    turns, per_wait = [], []
    cur = None
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        pid, ev = int(parts[0]), parts[1].rstrip(":").rsplit(":", 1)[-1]
        if pid == server_pid:
            if ev.startswith("sys_enter_") and ev[10:] in WAITS:
                if cur is not None:
                    turns.append(cur)
                cur = 0
            elif ev.startswith("sys_enter_") and ev[10:] in SENDS and cur is not None:
                cur += 1
        elif pid == client_pid and ev in ("sys_exit_epoll_wait", "sys_exit_epoll_pwait"):
            ret = int(line.rsplit("0x", 1)[1], 16) if "0x" in line else -1
            if ret < 1 << 63:  # (a negative errno reads as a huge unsigned)
                per_wait.append(ret)
    return turns, per_wait


def dist(xs):
    """mean, p10, median, p90, count and the share of zeros (a turn that
    answered nothing) of a list of counts (None if empty)."""
    if not xs:
        return None
    s = sorted(xs)
    at = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {
        "n": len(s),
        "mean": sum(s) / len(s),
        "p10": at(0.1),
        "median": at(0.5),
        "p90": at(0.9),
        "zero": s.count(0) / len(s),
    }


def fmt_dist(d):
    if d is None:
        return "-"
    return f"{d['mean']:5.1f} ({d['p10']}/{d['median']}/{d['p90']}, n={d['n']}, 0: {d['zero']:.0%})"


def run_one(wl, loop, opts, tmp, think, spin):
    server = nb.Server(loop, wl, opts.server_cpu, tmp, None, extra=["--spin", str(spin)])
    if server.skip:
        return {"skip": server.skip}
    try:
        nb.warm_connection(wl, server, opts)
        args = nb.loadgen_args(wl, server, opts) + ["--think", str(think)]
        cli = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=nb.pin(opts.client_cpu)
        )
        line = nb.readline(cli, opts.warmup + opts.duration + 60)
        if line != "START":
            cli.kill()
            raise RuntimeError(f"loadgen said {line!r}: {cli.communicate()[1][-500:]!r}")
        t0, c0, s0 = nb.cpu_ticks(server.proc.pid), nb.cpu_ticks(cli.pid), nb.engine_stats(server)
        perf = data = None
        if opts.record > 0:
            time.sleep(max(0.0, (opts.duration - opts.record) / 2))
            data = os.path.join(tmp, f"turns-{os.getpid()}-{time.monotonic_ns()}.data")
            pa = ["perf", "record", "-q", "-o", data, "-p", f"{server.proc.pid},{cli.pid}"]
            for ev in EVENTS:
                pa += ["-e", ev]
            perf = subprocess.Popen(
                pa + ["--", "sleep", str(opts.record)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        line = nb.readline(cli, opts.duration + 60)
        t1, c1, s1 = nb.cpu_ticks(server.proc.pid), nb.cpu_ticks(cli.pid), nb.engine_stats(server)
        cli.communicate(timeout=60)
        if perf is not None:
            perf.wait(timeout=60)
        if cli.returncode != 0 or not line:
            raise RuntimeError(f"loadgen exit {cli.returncode}")
        res = json.loads(line)
        res.update(nb.window(res["requests"], res["seconds"], t0, t1, s0, s1))
        n = max(res["requests"], 1)
        res["client_cpu_us_per_req"] = (c1[0] - c0[0]) / 1e3 / n
        res["client_busy_pct"] = (c1[0] - c0[0]) / 1e7 / res["seconds"]
        res["client_sleeps_per_req"] = (c1[3] - c0[3]) / n
        if data is not None:
            text = subprocess.run(
                ["perf", "script", "-i", data, "-F", "pid,event,trace"],
                capture_output=True,
                text=True,
            ).stdout
            turns, per_wait = parse_script(text, server.proc.pid, cli.pid)
            res["server_sends_per_turn"] = dist(turns)
            res["client_events_per_wait"] = dist(per_wait)
            os.unlink(data)
        return res
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="echo-1k-c100-protocol-unix,echo-1k-c100-buffered-unix")
    ap.add_argument("--loops", default="uringloop-io_uring")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--record", type=float, default=0.3, help="s of perf record (0: none)")
    ap.add_argument("--think", default="0", help="loadgen --think NS values, comma-separated")
    ap.add_argument("--spin", default="0", help="net_server --spin N values, comma-separated")
    ap.add_argument("--json")
    o = ap.parse_args()
    opts = argparse.Namespace(
        server_cpu=0,
        client_cpu=1,
        duration=o.duration,
        warmup=o.warmup,
        client_mode="epoll",
        verify=True,
        probe=False,
        record=o.record,
    )
    nb.build_loadgen()
    wls = [w for w in nb._workloads() if w["id"] in o.workloads.split(",")]
    arms = list(
        itertools.product([int(t) for t in o.think.split(",")], [int(s) for s in o.spin.split(",")])
    )
    tmp = tempfile.mkdtemp(prefix="turn_batches-")
    runs = []
    for rep in range(o.reps):
        for wl in wls:
            for loop in o.loops.split(","):
                for think, spin in arms:
                    r = run_one(wl, loop, opts, tmp, think, spin)
                    r.update(rep=rep, workload=wl["id"], loop=loop, think=think, spin=spin)
                    r["loadavg"] = os.getloadavg()[0]
                    runs.append(r)
                    if "skip" in r:
                        print(f"{wl['id']} {loop}: skipped: {r['skip']}", flush=True)
                        continue

                    def per(k, r=r):
                        return f"{r[k]:.3f}" if k in r else "-"

                    print(
                        f"{wl['id']} {loop} think {think} spin {spin} rep {rep}: "
                        f"{r['rps']:,.0f}/s server {r['cpu_us_per_req']:.2f} µs "
                        f"{r['server_busy_pct']:.0f} % client {r['client_cpu_us_per_req']:.2f} µs "
                        f"{r['client_busy_pct']:.0f} % enters {per('enters_per_req')} "
                        f"turns {per('turns_per_req')} waits {per('waits_per_req')} "
                        f"load {r['loadavg']:.1f}",
                        flush=True,
                    )
                    if o.record > 0:
                        print(
                            f"    server sends/turn {fmt_dist(r.get('server_sends_per_turn'))}"
                            f"  client events/wait {fmt_dist(r.get('client_events_per_wait'))}",
                            flush=True,
                        )
    print("\nmedians (min-max) over the repetitions:")
    for wl in wls:
        for loop in o.loops.split(","):
            for think, spin in arms:
                rs = [
                    r
                    for r in runs
                    if r["workload"] == wl["id"]
                    and r["loop"] == loop
                    and (r["think"], r["spin"]) == (think, spin)
                    and "skip" not in r
                ]
                if not rs:
                    continue

                def med(k, rs=rs):
                    xs = [r[k] for r in rs if k in r]
                    return (
                        f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})" if xs else "-"
                    )

                print(
                    f"  {wl['id']} {loop} think {think} spin {spin}: "
                    f"enters/req {med('enters_per_req')} turns/req {med('turns_per_req')}"
                    f" server µs/req {med('cpu_us_per_req')}"
                    f" client µs/req {med('client_cpu_us_per_req')}"
                )
    if o.json:
        with open(o.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
