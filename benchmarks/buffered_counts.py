"""What a BufferedProtocol echo asks of its loop, per request (decision 830).

    python benchmarks/buffered_counts.py                      # 100 KiB, 10 connections, Unix
    python benchmarks/buffered_counts.py --trace strace   # + the server's syscalls (strace -c -f)
    python benchmarks/buffered_counts.py --trace perf --events kmem:mm_page_alloc,skb:consume_skb
    python benchmarks/buffered_counts.py --tcp --size 1024 --conns 100 --loops uringloop-io_uring

net_server.py's `buffered` server (a 64 KiB buffer, `buffer_updated` writes
`self.buf[:n]`) with counters in its two methods: how many `get_buffer`
calls and with which size hints (-1 is the stock loop's, and uringloop's
direct reads', decision 350), how many `buffer_updated` calls and of which
sizes, and, on uringloop, `loop.engine_stats()`: entries, SQEs (epoll:
syscalls for ops), CQEs, records, pool takes (each a receive into a pool
buffer and a copy out of it), EAGAIN retries. Optionally the server's
syscalls (`--trace strace`: `strace -c -f`) or kernel events (`--trace
perf --events ...`: `perf stat -e`) over the same span. The client is
net_bench's loadgen (`--verify`, one message in flight per connection),
pinned to --client-cpu, after the one-connection warm-up client of net_bench
(decision 376); the server is pinned to --server-cpu.

A request is `--size` bytes the server handed `buffer_updated`: every count
is divided by (bytes / size), counted by the server between two snapshots
taken before the measured client starts and after it exits, the tracer
running between them. Counts, not times: nothing here is timed but the
client's window, whose length only sets how many requests are counted.
"""

import argparse
import asyncio
import collections
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUF = 65536  # net_server.py's BufferedEcho buffer

# get_buffer hints and buffer_updated sizes, in these buckets
BUCKETS = ((16384, "< 16 KiB"), (BUF, "16-64 KiB"), (BUF + 1, "64 KiB"))


def bucket(n):
    if n < 0:
        return "-1"
    for lim, name in BUCKETS:
        if n < lim:
            return name
    return "> 64 KiB"


def serve(argv):
    """The server process: net_server.py's main with a counting BufferedEcho;
    SIGUSR2 prints `COUNTS <json>`."""
    sys.path.insert(0, HERE)
    import net_server

    counts = collections.Counter()

    class CountingBufferedEcho(asyncio.BufferedProtocol):
        # net_server.BufferedEcho's body, counted
        def connection_made(self, transport):
            self.transport = transport
            self.buf = bytearray(BUF)
            self.view = memoryview(self.buf)

        def get_buffer(self, sizehint):
            counts["get_buffer"] += 1
            counts["hint " + bucket(sizehint)] += 1
            return self.view

        def buffer_updated(self, nbytes):
            counts["buffer_updated"] += 1
            counts["updated " + bucket(nbytes)] += 1
            counts["bytes"] += nbytes
            self.transport.write(self.buf[:nbytes])

    net_server.BufferedEcho = CountingBufferedEcho
    make_loop = net_server.make_loop

    def counting_loop(name):
        loop = make_loop(name)

        def dump():
            out = dict(counts)
            if hasattr(loop, "engine_stats"):
                out["engine"] = loop.engine_stats()
            print("COUNTS " + json.dumps(out), flush=True)

        loop.add_signal_handler(signal.SIGUSR2, dump)
        return loop

    net_server.make_loop = counting_loop
    sys.argv = [os.path.join(HERE, "net_server.py")] + argv
    net_server.main()


def snapshot(srv):
    srv.send_signal(signal.SIGUSR2)
    line = readline(srv, 30)
    if not line or not line.startswith("COUNTS "):
        raise RuntimeError(f"server said {line!r}")
    return json.loads(line[7:])


def readline(proc, timeout):
    sys.path.insert(0, HERE)
    import net_bench

    return net_bench.readline(proc, timeout)


def parse_strace(path):
    """strace -c's table -> {syscall: (calls, errors)}."""
    out = {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 5 and p[3].isdigit() and p[-1] != "total":
                errors = int(p[4]) if len(p) == 6 else 0
                out[p[-1]] = (int(p[3]), errors)
    return out


def parse_perf(path):
    """perf stat -x, output -> {event: count}."""
    out = {}
    with open(path) as f:
        for line in f:
            p = line.strip().split(",")
            if len(p) > 2 and p[0].replace(".", "", 1).isdigit():
                out[p[2]] = float(p[0])
    return out


def run_one(loop, opts, tmp):
    sys.path.insert(0, HERE)
    import net_bench

    args = [sys.executable, os.path.abspath(__file__), "--serve", "--loop", loop]
    args += ["--kind", "buffered", "--cpu", str(opts.server_cpu)]
    if opts.tcp:
        args += ["--tcp", "0"]
    else:
        args += ["--unix", os.path.join(tmp, f"s-{loop}.sock")]
    # the checkout's uringloop where it is built in place; else the one the
    # caller's PYTHONPATH or site-packages gives (CI runs an unbuilt clone's
    # benchmarks against the installed package)
    built = glob.glob(os.path.join(ROOT, "uringloop", "_sched*.so"))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            p for p in (ROOT if built else "", os.environ.get("PYTHONPATH")) if p
        ),
    )
    env.pop("URINGLOOP_BACKEND", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    srv = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = readline(srv, 30)
        if not line or not line.startswith("READY "):
            srv.kill()
            err = srv.communicate()[1].decode(errors="replace")[-500:]
            return {"skip": (line or "no answer") + " " + err}
        addr = line[6:]
        target = ["--tcp", f"127.0.0.1:{addr}"] if opts.tcp else ["--unix", addr]
        base = [
            net_bench.LOADGEN,
            *target,
            "-s",
            str(opts.size),
            "--verify",
            "--mode",
            opts.client_mode,
        ]
        pin = net_bench.pin(opts.client_cpu)
        if opts.warmup > 0:
            subprocess.run(
                base + ["-c", "1", "-d", "0.1", "-w", "0"],
                check=True,
                capture_output=True,
                preexec_fn=pin,
                timeout=60,
            )
        a = snapshot(srv)
        tracer = None
        out_path = os.path.join(tmp, f"trace-{loop}.txt")
        if opts.trace == "strace":
            tracer = ["strace", "-c", "-f", "-p", str(srv.pid), "-o", out_path]
        elif opts.trace == "perf":
            tracer = ["perf", "stat", "-x,", "-e", opts.events, "-p", str(srv.pid), "-o", out_path]
        if tracer:
            tracer = subprocess.Popen(tracer, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # attached before the client connects
        cli = subprocess.run(
            base + ["-c", str(opts.conns), "-d", str(opts.duration), "-w", str(opts.warmup)],
            capture_output=True,
            preexec_fn=pin,
            timeout=opts.duration + opts.warmup + 60,
        )
        if tracer:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
        b = snapshot(srv)
    finally:
        if srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=30)
    if cli.returncode != 0:
        raise RuntimeError(
            f"loadgen exit {cli.returncode}: {cli.stderr.decode(errors='replace')[-500:]}"
        )
    res = json.loads(cli.stdout.decode().splitlines()[-1])
    requests = (b.get("bytes", 0) - a.get("bytes", 0)) / opts.size
    per = {k: (b[k] - a.get(k, 0)) / requests for k in b if k not in ("engine", "bytes")}
    per["bytes per buffer_updated"] = (b["bytes"] - a.get("bytes", 0)) / max(
        b["buffer_updated"] - a.get("buffer_updated", 0), 1
    )
    eng = {}
    if "engine" in b:
        eng = {k: (b["engine"][k] - a["engine"][k]) / requests for k in b["engine"]}
    sysc = {}
    if opts.trace == "strace":
        sysc = {k: (c / requests, e / requests) for k, (c, e) in parse_strace(out_path).items()}
    elif opts.trace == "perf":
        sysc = {k: (c / requests, 0) for k, c in parse_perf(out_path).items()}
    return {
        "requests": requests,
        "client_completed": res.get("completed", res["requests"]),
        "protocol": per,
        "engine": eng,
        "trace": sysc,
    }


ENGINE_ROWS = (
    "enters",
    "waits",
    "submitted",
    "cqes",
    "records",
    "pool_takes",
    "eagain_retries",
    "rearms",
)


def table(runs, loops, opts):
    cols = [lp for lp in loops if lp in runs and "skip" not in runs[lp]]
    lines = ["| per request | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def row(name, get, fmt="{:.3f}"):
        vals = [get(runs[c]) for c in cols]
        if all(v is None for v in vals):
            return
        lines.append(
            f"| {name} | " + " | ".join("" if v is None else fmt.format(v) for v in vals) + " |"
        )

    row("requests (server bytes / size)", lambda r: r["requests"], "{:.0f}")
    keys = sorted({k for c in cols for k in runs[c]["protocol"]})
    for k in ["get_buffer"] + [k for k in keys if k.startswith("hint ")]:
        row(k if k == "get_buffer" else "  " + k, lambda r, k=k: r["protocol"].get(k, 0.0))
    for k in ["buffer_updated"] + [k for k in keys if k.startswith("updated ")]:
        row(k if k == "buffer_updated" else "  " + k, lambda r, k=k: r["protocol"].get(k, 0.0))
    row("bytes per buffer_updated", lambda r: r["protocol"]["bytes per buffer_updated"], "{:.0f}")
    for k in ENGINE_ROWS:
        row("engine " + k, lambda r, k=k: r["engine"].get(k) if r["engine"] else None)
    names = sorted(
        {k for c in cols for k in runs[c]["trace"]},
        key=lambda k: -max(runs[c]["trace"].get(k, (0, 0))[0] for c in cols),
    )
    for k in names:
        row(k, lambda r, k=k: r["trace"].get(k, (0.0, 0))[0])
        if any(runs[c]["trace"].get(k, (0, 0))[1] for c in cols):
            row(f"  {k} errors", lambda r, k=k: r["trace"].get(k, (0.0, 0.0))[1])
    for lp in loops:
        if lp in runs and "skip" in runs[lp]:
            lines.append(f"\n{lp}: skipped, {runs[lp]['skip']}")
    return "\n".join(lines)


def main():
    if "--serve" in sys.argv:
        argv = list(sys.argv[1:])
        argv.remove("--serve")
        return serve(argv)
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loops", default="uvloop,uringloop-io_uring,uringloop-epoll")
    ap.add_argument("--size", type=int, default=102400)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--tcp", action="store_true", help="TCP on 127.0.0.1 (default: a Unix socket)")
    ap.add_argument("--trace", choices=("strace", "perf"))
    ap.add_argument("--events", default="syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendmsg")
    ap.add_argument("--client-mode", choices=("epoll", "uring"), default="epoll")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", help="write the counts here")
    opts = ap.parse_args()
    sys.path.insert(0, HERE)
    import net_bench

    net_bench.build_loadgen()
    loops = [x for x in opts.loops.split(",") if x]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="buffered-counts-") as tmp:
        for lp in loops:
            runs[lp] = run_one(lp, opts, tmp)
            run = runs[lp]
            said = run["skip"] if "skip" in run else "{:.0f} requests".format(run["requests"])
            net_bench.log(f"{lp}: {said}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": vars(opts), "runs": runs}, f, indent=1)
    where = "TCP" if opts.tcp else "Unix"
    print(f"## buffered echo, {opts.size} B, {opts.conns} connections, {where}\n")
    print(table(runs, loops, opts))


if __name__ == "__main__":
    main()
