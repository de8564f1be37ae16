"""Is a slow benchmark run the loop's or the machine's? (issue 9, decisions 660-662)

    python benchmarks/hostmodes.py probe --seconds 40            # the machine alone
    python benchmarks/hostmodes.py windows --reps 4 --windows 6  # servers, second by second

On the 2-CPU VM the benchmarks run on, a server's CPU time per request
moves by up to 1.5-1.8x for a second or a few, in whichever process runs
then, every loop alike (decision 660). Both modes answer that:

`probe` runs fixed work on one CPU (--cpu) with no event loop in it: a
1 KiB round trip over a Unix socketpair (four syscalls, the bytes copied
twice each way) and a little interpreter work, 200 at a time. For each
--window it prints the thread's own CPU time per round trip
(`time.thread_time_ns`: waiting for the CPU is not in it), the time other
tasks had on that CPU (/proc/stat's busy jiffies there less the probe's own),
that CPU's steal, the probe's involuntary switches and the other CPU's busy
jiffies. A window far above the run's best quartile while nothing else ran
on the CPU and nothing was stolen is the host's (decision 660).

`windows` starts net_server.py's servers (--kind, --unix or TCP, pinned to
--server-cpu) as net_bench.py does, with a counting streams handler (the
same read -> write -> drain, plus one integer increment a request, on every
loop), makes net_bench's one-connection warm-up client, then one loadgen run
of --windows seconds (100 connections of 1 KiB by default) and reads the
server's CPU time (schedstat) and its counters every second: CPU per
request for each second, and on uringloop the engine's and the streams'
counters per request (records, enters, feeds, sends), and the share of each
second the server waited for its CPU (schedstat). A loop whose seconds
switch between modes inside one process while its counters stay put is
meeting the machine, not a state of its own (decision 660). --probe S runs
the probe for S seconds before each server (its last window printed).
--fixed starts the servers with PYTHONHASHSEED=0 under `setarch -R` (no
address randomisation) and one PYTHONPATH (no net_bench padding): the same
start-up every time.

A report: nothing is asserted. Timings only; no perf counters are needed.
"""

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


# ------------------------------------------------------------------ probe


def cpu_jiffies(cpu):
    """(busy, steal) jiffies of one CPU from /proc/stat (busy: user, nice,
    system, irq, softirq)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return v[0] + v[1] + v[2] + v[5] + v[6], v[7]
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def probe(cpu, seconds, window, batch=200):
    """Fixed work on `cpu` for `seconds`: one dict per `window`."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    other = next((c for c in range(os.cpu_count() or 1) if c != cpu), None)
    other_ok = other is not None
    a, b = socket.socketpair()
    msg = b"x" * 1024
    d = {}
    out = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.thread_time_ns()
            w0 = time.monotonic()
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            j0 = cpu_jiffies(cpu)
            k0 = cpu_jiffies(other) if other_ok else (0, 0)
            n = 0
            while time.monotonic() - w0 < window:
                _round_trips(a, b, msg, d, batch)
                n += batch
            t1 = time.thread_time_ns()
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            j1 = cpu_jiffies(cpu)
            k1 = cpu_jiffies(other) if other_ok else (0, 0)
            out.append(
                {
                    "ns": round((t1 - t0) / n),
                    # jiffies are 10 ms: what else ran on the probe's CPU
                    "others": round(j1[0] - j0[0] - (t1 - t0) / 1e7, 1),
                    "steal": j1[1] - j0[1],
                    "preempted": r1.ru_nivcsw - r0.ru_nivcsw,
                    "other_cpu_busy": k1[0] - k0[0],
                }
            )
    finally:
        a.close()
        b.close()
        os.sched_setaffinity(0, before)
    return out


def _round_trips(a, b, msg, d, count):
    """The probe's unit of fixed work, count times: a 1 KiB round trip on a
    Unix socketpair and a few small slices stored in a dict."""
    for _ in range(count):
        a.send(msg)
        x = b.recv(65536)
        b.send(x)
        y = a.recv(65536)
        for i in range(20):
            d[i] = y[i : i + 8]


def tick(cpu, every, units):
    """Until killed: every `every` seconds, `units` round trips of the probe's
    work on `cpu`, printed as `<monotonic s> <thread-CPU ns per unit>`: a few
    per cent of the CPU, sampled while a server runs there (--tick)."""
    os.sched_setaffinity(0, {cpu})
    with contextlib.suppress(OSError):
        os.nice(-5)  # woken on time next to a busy server (root only)
    a, b = socket.socketpair()
    msg = b"x" * 1024
    d = {}
    while True:
        time.sleep(every)
        t0 = time.thread_time_ns()
        _round_trips(a, b, msg, d, units)
        print(f"{time.monotonic():.4f} {(time.thread_time_ns() - t0) / units:.0f}", flush=True)


def summarise(values):
    """median, best quartile, max and the share above 1.25x the best quartile"""
    v = sorted(values)
    q1 = v[len(v) // 4]
    return {
        "n": len(v),
        "median": statistics.median(v),
        "q1": q1,
        "max": v[-1],
        "slow_share": sum(x > 1.25 * q1 for x in v) / len(v),
    }


def cmd_probe(args):
    wins = probe(args.cpu, args.seconds, args.window)
    for i, w in enumerate(wins):
        print(
            f"{i * args.window:6.1f} s  {w['ns']:6d} ns  others {w['others']:5.1f}  "
            f"steal {w['steal']:2d}  preempted {w['preempted']:3d}  "
            f"other cpu busy {w['other_cpu_busy']:3d}"
        )
    s = summarise([w["ns"] for w in wins])
    quiet = [w["ns"] for w in wins if abs(w["others"]) <= 1.5 and w["steal"] == 0]
    print(
        f"ns per round trip: median {s['median']:.0f}, best quartile {s['q1']}, max {s['max']}; "
        f"{100 * s['slow_share']:.0f} % of {s['n']} windows above 1.25x the best quartile "
        f"({sum(x > 1.25 * s['q1'] for x in quiet)} of them with nothing else on the CPU "
        f"and no steal)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"windows": wins, "summary": s}, f)


# ------------------------------------------------------------------ server side


def serve(argv):
    """net_server.py with a streams handler that counts its reads, and the
    counts (plus, on uringloop, the engine's and the streams' counters) on
    SIGUSR1 for every loop."""
    import net_server

    transports = []
    reads = [0]

    async def handler(reader, writer):
        transports.append(writer.transport)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                reads[0] += 1
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    net_server.streams_handler = handler
    make = net_server.make_loop

    def make_loop(name):
        loop = make(name)
        engine = getattr(loop, "engine_stats", None)

        def stats():
            d = dict(engine()) if engine else {}
            for f in ("sends", "inline_sends", "directs", "nows", "feeds"):
                d["stream_" + f] = sum(
                    getattr(t._core, f, 0)
                    for t in transports
                    if getattr(t, "_core", None) is not None
                )
            d["reads"] = reads[0]
            return d

        loop.engine_stats = stats
        if not name.startswith("uringloop-"):
            signal.signal(
                signal.SIGUSR1, lambda *a: print("STATS " + json.dumps(stats()), flush=True)
            )
        return loop

    net_server.make_loop = make_loop
    sys.argv = ["net_server.py"] + argv
    net_server.main()


COUNTERS = ("records", "enters", "stream_feeds", "stream_sends", "stream_inline_sends")


def cmd_windows(args):
    import net_bench as nb

    wl = next((w for w in nb._workloads() if w["id"] == args.workload), None)
    if wl is None or wl["client"] != "loadgen" or wl.get("reconnect"):
        sys.exit(f"hostmodes: {args.workload} is not a plain loadgen echo row")
    if wl["kind"] != "streams":
        sys.exit("hostmodes: windows counts requests in the streams handler: a streams row")
    nb.build_loadgen()

    class Opts:
        duration = args.windows
        warmup = args.warmup
        client_mode = "epoll"
        verify = True
        client_cpu = args.client_cpu

    os.sched_setaffinity(0, {args.client_cpu})  # as net_bench.py's driver
    tmp = tempfile.mkdtemp(prefix="hostmodes-")
    out = open(args.json, "a") if args.json else None
    for rep in range(args.reps):
        for loop in args.loops.split(","):
            if args.probe:
                p = probe(args.server_cpu, args.probe, 0.5)
                print(f"probe before {loop}: {p[-1]['ns']} ns, others {p[-1]['others']}")
                if out:
                    print(json.dumps({"probe": p, "before": loop, "rep": rep}), file=out)
            cmd = [sys.executable, os.path.abspath(__file__), "serve", "--loop", loop]
            cmd += ["--kind", wl["kind"], "--cpu", str(args.server_cpu)]
            if wl["transport"] == "unix":
                cmd += ["--unix", os.path.join(tmp, f"s{time.monotonic_ns()}.sock")]
            else:
                cmd += ["--tcp", "0"]
            env = dict(os.environ)
            pad = 0 if args.fixed else nb.layout_pad(rep)  # net_bench's, unless --fixed
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (nb.ROOT, nb.pad_entry(pad), env.get("PYTHONPATH")) if p
            )
            env.pop("URINGLOOP_BACKEND", None)
            env.pop("PYTHONASYNCIODEBUG", None)
            if args.fixed:
                env["PYTHONHASHSEED"] = "0"
                cmd = ["setarch", os.uname().machine, "-R"] + cmd
            server = nb.Server.__new__(nb.Server)
            server.loop, server.skip = loop, None
            server.errf = tempfile.TemporaryFile()
            server.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=server.errf, env=env)
            try:
                line = nb.readline(server.proc, 30)
                if not line or not line.startswith("READY "):
                    print(f"{loop}: no server ({line!r}): {server.stderr()}")
                    continue
                server.addr = line[6:]
                row = one_run(nb, wl, server, Opts, args)
            finally:
                server.stop()
            row.update({"loop": loop, "rep": rep, "workload": wl["id"], "fixed": args.fixed})
            waited = " ".join(f"{w['waited_pct']:.0f}" for w in row["seconds"])
            print(
                f"{loop:20} rep {rep}: µs/request by second "
                + " ".join(f"{w['cpu_us']:.2f}" for w in row["seconds"])
                + f"  (% of each second it waited for its CPU: {waited})"
            )
            if args.tick:
                print(
                    f"{'':20}   probe ns/round trip "
                    + " ".join(f"{w.get('tick_ns') or 0:.0f}" for w in row["seconds"])
                )
            if loop.startswith("uringloop-"):
                for k in COUNTERS:
                    print(
                        f"{'':20}   {k} per request "
                        + " ".join(f"{w[k]:.3f}" for w in row["seconds"])
                    )
            if out:
                print(json.dumps(row), file=out, flush=True)


def stats_of(server):
    server.proc.send_signal(signal.SIGUSR1)
    import net_bench as nb

    line = nb.readline(server.proc, 10)
    if not line or not line.startswith("STATS "):
        raise RuntimeError(f"server said {line!r}: {server.stderr()}")
    return json.loads(line[6:])


def one_run(nb, wl, server, opts, args):
    nb.warm_connection(wl, server, opts)
    cli = subprocess.Popen(
        nb.loadgen_args(wl, server, opts),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=nb.pin(args.client_cpu),
    )
    try:
        line = nb.readline(cli, args.warmup + 60)
        if line != "START":
            raise RuntimeError(f"loadgen did not start measuring: {line!r}")
        seconds = []
        ticker = None
        if args.tick:
            ticker = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "tick", str(args.server_cpu)],
                stdout=subprocess.PIPE,
                text=True,
            )
        edges = [time.monotonic()]
        t_prev, s_prev = nb.cpu_ticks(server.proc.pid), stats_of(server)
        j_prev = cpu_jiffies(args.server_cpu)
        for _ in range(args.windows):
            time.sleep(1.0)
            t, s, j = nb.cpu_ticks(server.proc.pid), stats_of(server), cpu_jiffies(args.server_cpu)
            n = max(s["reads"] - s_prev["reads"], 1)
            w = {
                "cpu_us": (t[0] - t_prev[0]) / 1e3 / n,
                "requests": n,
                # tick-sampled: within 10-20 jiffies of the truth at best
                "others": round(j[0] - j_prev[0] - (t[0] - t_prev[0]) / 1e7, 1),
                "steal": j[1] - j_prev[1],
                "waited_pct": (t[4] - t_prev[4]) / 1e7,
            }
            for k in COUNTERS:
                if k in s:
                    w[k] = (s[k] - s_prev[k]) / n
            seconds.append(w)
            edges.append(time.monotonic())
            t_prev, s_prev, j_prev = t, s, j
        if ticker is not None:
            ticker.kill()
            lines = ticker.communicate()[0].split("\n")
            samples = [tuple(map(float, x.split())) for x in lines if x]
            for w, lo, hi in zip(seconds, edges[:-1], edges[1:], strict=True):
                got = sorted(ns for at, ns in samples if lo <= at < hi)
                # the probe's own ns per round trip while this second's server ran
                w["tick_ns"] = statistics.median(got) if got else None
                w["ticks"] = len(got)
        line = nb.readline(cli, 60)
        cli.communicate(timeout=60)
        res = json.loads(line)
        if not res.get("verified", True) or res.get("verify_errors"):
            raise RuntimeError("loadgen saw wrong bytes")
        return {"seconds": seconds, "rps": res["rps"]}
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "tick":
        tick(int(sys.argv[2]), 0.05, 40)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="fixed work on one CPU, window by window")
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--window", type=float, default=0.5)
    p.add_argument("--json")
    w = sub.add_parser("windows", help="servers' CPU per request, second by second")
    w.add_argument("--workload", default="echo-1k-c100-streams-unix")
    w.add_argument("--loops", default="uringloop-io_uring,uvloop,uringloop-epoll")
    w.add_argument("--reps", type=int, default=3)
    w.add_argument("--windows", type=int, default=6, help="seconds measured per server")
    w.add_argument("--warmup", type=float, default=0.5)
    w.add_argument("--server-cpu", type=int, default=0)
    w.add_argument("--client-cpu", type=int, default=1)
    w.add_argument("--probe", type=float, default=0, help="probe seconds before each server")
    w.add_argument("--fixed", action="store_true", help="PYTHONHASHSEED=0, setarch -R, no padding")
    w.add_argument(
        "--tick", action="store_true", help="sample the probe on the server's CPU meanwhile"
    )
    w.add_argument("--json", help="append one JSON line per server (and probe)")
    sub.add_parser("serve", help="(internal) the counting server")
    args = ap.parse_args()
    {"probe": cmd_probe, "windows": cmd_windows}[args.cmd](args)


if __name__ == "__main__":
    main()
