"""The ceiling of a loadgen echo row: a C server beside the loops (decision 1034).

    python benchmarks/echo_floor.py                       # echo-100k-c10-protocol-unix, 5 reps
    python benchmarks/echo_floor.py \
        --workloads echo-100k-c10-protocol-unix,echo-100k-c10-buffered-unix \
        --loops uvloop,uringloop-io_uring,uringloop-epoll --reps 5 --json /tmp/floor.json

benchmarks/echo_floor.c is the echo server that costs the least (one
recv() of up to 256 KiB and one send() a request, no loop, no Python). This
runs it and net_server.py's servers for the given loops through net_bench's
own measured window (`run_loadgen`: the warm-up connection, loadgen pinned to
--client-cpu, the server to --server-cpu, the server's CPU from /proc),
interleaved, the order rotated each repetition, and prints requests/s,
the server's CPU a request (user, system), its sleeps a request and
loadgen's own CPU a request and busy share, each repetition and the
medians. Where loadgen is near 100 % busy against the C server, the row's
requests/s are the client's, and no server passes them by much: the
server's side is then at its floor. Unix-socket rows only (the C server
listens on a path). Timings: ratios inside one run, under `nice` on a
shared host, as net_bench's.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import net_bench  # noqa: E402

FLOOR = os.path.join(HERE, "_build", "echo_floor")


def build_floor(cc="cc"):
    """Build FLOOR from echo_floor.c (a file of this process's, renamed
    onto FLOOR when complete, as net_bench's loadgen)."""
    os.makedirs(os.path.dirname(FLOOR), exist_ok=True)
    tmp = f"{FLOOR}.{os.getpid()}.tmp"
    src = os.path.join(HERE, "echo_floor.c")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", tmp, src]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("echo_floor: cannot build echo_floor.c:\n" + r.stderr)
    os.replace(tmp, FLOOR)


class FloorServer:
    """echo_floor.c on a Unix path, as net_bench.Server looks to run_loadgen."""

    loop = "c-floor"
    skip = None

    def __init__(self, tmp, cpu):
        self.addr = os.path.join(tmp, f"floor{os.getpid()}.sock")
        self.proc = subprocess.Popen([FLOOR, self.addr, str(cpu)], stdout=subprocess.PIPE)
        line = net_bench.readline(self.proc, 30)
        if not line or not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"echo_floor said {line!r}")

    def stderr(self):
        return ""

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


KEYS = (
    ("rps", "req/s", 0),
    ("cpu_us_per_req", "server µs", 2),
    ("user_us_per_req", "user", 2),
    ("sys_us_per_req", "system", 2),
    ("sleeps_per_req", "sleeps", 3),
    ("client_cpu_us_per_req", "client µs", 2),
    ("client_busy_pct", "client busy %", 0),
)


def line(r):
    return "  ".join(f"{name} {r[k]:,.{nd}f}" for k, name, nd in KEYS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="echo-100k-c10-protocol-unix")
    ap.add_argument("--loops", default="uvloop,uringloop-io_uring,uringloop-epoll")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--client-mode", choices=("epoll", "uring"), default="epoll")
    ap.add_argument("--json", help="every repetition's window, by workload and server")
    args = ap.parse_args()
    every = {w["id"]: w for w in net_bench._workloads()}
    wls = []
    for wid in args.workloads.split(","):
        wl = every.get(wid)
        if wl is None or wl.get("client") != "loadgen" or wl.get("transport") != "unix":
            sys.exit(f"echo_floor: {wid}: not a loadgen row over a Unix socket")
        wls.append(wl)
    servers = ["c-floor"] + [x for x in args.loops.split(",") if x]
    opts = types.SimpleNamespace(
        warmup=args.warmup,
        duration=args.duration,
        verify=True,
        client_mode=args.client_mode,
        client_cpu=args.client_cpu,
        server_cpu=args.server_cpu,
        probe=False,
    )
    net_bench.build_loadgen()
    build_floor()
    out = {}
    with tempfile.TemporaryDirectory(prefix="echofloor-") as tmp:
        for wl in wls:
            for rep in range(args.reps):
                k = rep % len(servers)
                for name in servers[k:] + servers[:k]:
                    if name == "c-floor":
                        srv = FloorServer(tmp, args.server_cpu)
                    else:
                        srv = net_bench.Server(name, wl, args.server_cpu, tmp, None)
                    try:
                        if srv.skip:
                            sys.exit(f"echo_floor: {name} skips {wl['id']}: {srv.skip}")
                        r = net_bench.run_loadgen(wl, srv, opts)
                    finally:
                        srv.stop()
                    out.setdefault(wl["id"], {}).setdefault(name, []).append(r)
                    print(f"{wl['id']} {name:20s} rep {rep + 1}: {line(r)}", flush=True)
    print()
    for wid, by in out.items():
        print(f"## {wid}: medians of {args.reps}")
        for name, runs in by.items():
            med = {k: statistics.median(r[k] for r in runs) for k, _, _ in KEYS}
            print(f"{name:20s} {line(med)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
