"""Hunt for a server stall (issue 9, decisions 605+): many short net_bench runs.

    python benchmarks/stallhunt.py --minutes 20
    python benchmarks/stallhunt.py --workloads conn-http-httptools --slots 50 --busy 0 -n 100

Each attempt starts a fresh net_bench server (net_bench.Server, the padding of
--pads), runs net_bench.run_loadgen on it exactly as net_bench does (the
one-connection warm-up client, then the measured client with --verify, the
SIGUSR1 engine counters at START and at the end) and, while the client runs,
samples `ss -tanie` for the server's port every --every seconds. A hit is:
  - a loadgen or server error (net_bench would print ERROR);
  - a window with 0 requests, or fewer than --low of its shape's median;
  - a socket of the row (client or server side, not LISTEN or TIME-WAIT)
    that has neither sent nor received for --stale seconds (ss's lastsnd,
    lastrcv, lastack; an accepted connection that waits in the listener's
    queue is one too): one slot stuck is a hang too, though the row's count
    would hide it.
On a hit the state is kept before anything is killed (into --out/hit-N/):
ss of the port, each server thread's /proc stack, wchan and state, the
server's fd table and io_uring fdinfo, then a Python traceback of every
server thread (faulthandler on SIGUSR2, registered by this script's server
mode), the engine counters, and whether a fresh connection is still served.
If the engine counters do not come within 10 s of their SIGUSR1, the hit
says when they came (up to 30 s more) and how long the server waited for a
CPU meanwhile (stats_late_s, stats_wait_s: a starved server's wait covers its
delay). --busy C[,C] adds one busy-loop process per listed CPU (the server
runs on CPU 0, the client on CPU 1); --signal-hz sends the server a signal
with a Python-level handler that often (net_bench itself sends SIGUSR1 twice a
run, for the engine counters); --fallbacks makes the uringloop-io_uring
servers force every engine fallback (the tests' io_uring-fallbacks kind).
Every attempt goes to --out/attempts.jsonl and a summary is printed. A
report, not a test: nothing is asserted; exit 1 when there was a hit.
"""

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import net_bench  # noqa: E402
import rsloop_env  # noqa: E402

LOOPS = ["uringloop-io_uring", "uringloop-epoll"]
WORKLOADS = [
    "conn-http-httptools",
    "conn-1k-c50-protocol-tcp",
    "http-loadgen-httptools",
    "echo-1k-c100-protocol-tcp",
]


def serve():
    """Server mode (net_bench.Server runs this file in net_server.py's place):
    net_server.py with a traceback dump of every thread on SIGUSR2."""
    import faulthandler

    faulthandler.register(signal.SIGUSR2, all_threads=True)
    signal.signal(signal.SIGWINCH, lambda *a: None)  # --signal-hz: a Python-level handler
    import net_server

    make_loop = net_server.make_loop

    def made(name):
        if name == "uringloop-io_uring" and os.environ.get("STALLHUNT_FALLBACKS"):
            # --fallbacks: every engine fallback forced, as the tests'
            # io_uring-fallbacks kind (tests/conftest.py fallback_options)
            from uringloop import Loop, engine

            loop = Loop(backend="io_uring", options=engine.OPT_TEST_FALLBACKS)
        else:
            loop = make_loop(name)
        if name.startswith("uringloop-"):  # for gdb on a hit (capture)
            from uringloop.engine import ffi

            addr = int(ffi.cast("uintptr_t", loop._engine._e))
            print(f"ENGINE {addr:#x}", file=sys.stderr, flush=True)
        return loop

    net_server.make_loop = made
    sys.argv = [net_server.__file__] + sys.argv[1:]
    net_server.main()


# ------------------------------------------------------------------ sampling


def ss_port(port):
    """ss's sockets of a TCP port: [(state, recvq, local, peer, {field: value})]."""
    r = subprocess.run(
        ["ss", "-HtanieO", f"sport = :{port} or dport = :{port}"],
        capture_output=True,
        text=True,
    )
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        info = {}
        for p in parts[5:]:
            if ":" in p:
                k, _, v = p.partition(":")
                info[k] = v
        info["sendq"] = parts[2]
        out.append((parts[0], int(parts[1]), parts[3], parts[4], info))
    return out


NSTAT = (
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPSynRetrans",
    "TcpExtTCPTimeouts",
    "TcpExtPAWSEstab",
    "TcpExtTCPBacklogDrop",
    "TcpExtTCPRcvQDrop",
    "TcpExtTCPAbortOnData",
    "TcpRetransSegs",
)


def nstat():
    """The machine's TCP counters above (nstat; machine-wide: other processes
    count too), {} without nstat."""
    try:
        r = subprocess.run(["nstat", "-asz"], capture_output=True, text=True)
    except OSError:
        return {}
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in NSTAT:
            out[parts[0]] = int(parts[1])
    return out


def idle_ms(info):
    """How long a socket has neither sent nor received (ms), or None."""
    vals = [int(info[k]) for k in ("lastsnd", "lastrcv", "lastack") if info.get(k, "").isdigit()]
    return min(vals) if vals else None


class Sampler(threading.Thread):
    """ss of the server's port every `every` s while the client runs; calls
    on_stale(reason) once when a socket stays idle for `stale` s (a
    connection stuck in the accept queue is one too: its request came in
    and nothing since)."""

    def __init__(self, port, every, stale, on_stale):
        super().__init__(daemon=True)
        self.port, self.every, self.stale, self.on_stale = port, every, stale, on_stale
        self.done = threading.Event()
        self.samples = 0
        self.max_idle = 0
        self.max_idle_sock = ""
        self.slow = []  # sockets idle >= a quarter of `stale` while others were not
        self.all_idle = 0  # the longest time every socket of a sample was idle
        self.max_queue = 0
        self.fired = None
        self.t0 = time.monotonic()
        self.fired_at = None  # seconds after the server was ready

    def run(self):
        while not self.done.wait(self.every):
            socks = ss_port(self.port)
            self.samples += 1
            idles, long = [], []
            for state, recvq, local, peer, info in socks:
                if state == "LISTEN":
                    self.max_queue = max(self.max_queue, recvq)
                    continue
                if state == "TIME-WAIT":
                    continue
                idle = idle_ms(info)
                if idle is None:
                    continue
                idles.append(idle)
                what = f"{state} {local} -> {peer} recvq {recvq} sendq {info['sendq']} idle {idle}"
                if idle > self.max_idle:
                    self.max_idle, self.max_idle_sock = idle, what
                if idle >= self.stale * 250:
                    long.append(what)
                if idle >= self.stale * 1000 and self.fired is None:
                    self.fired = what
                    self.fired_at = round(time.monotonic() - self.t0, 3)
            if idles:
                self.all_idle = max(self.all_idle, min(idles))
                if long and min(idles) < self.stale * 250 and len(self.slow) < 20:
                    self.slow.append(long[:4])
            if self.fired is not None:
                self.on_stale(self.fired)
                return


# ------------------------------------------------------------------ capture


def sh(args):
    r = subprocess.run(args, capture_output=True, text=True)
    return r.stdout + r.stderr


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return f"<{exc}>"


def capture(server, port, where, dump=True):
    """The server's state now, into folder `where`; nothing is killed. The
    traceback dump (a signal) comes last: it may cut a wait short."""
    os.makedirs(where, exist_ok=True)
    pid = server.proc.pid
    with open(os.path.join(where, "ss.txt"), "w") as f:
        f.write(sh(["ss", "-tanpie", f"sport = :{port} or dport = :{port}"]))
    with open(os.path.join(where, "proc.txt"), "w") as f:
        f.write(f"at {time.monotonic():.3f}\n")
        f.write("".join(line for line in read("/proc/stat").splitlines(True) if line[:3] == "cpu"))
        for tid in sorted(os.listdir(f"/proc/{pid}/task")):
            base = f"/proc/{pid}/task/{tid}"
            f.write(f"== task {tid} comm {read(base + '/comm').strip()}\n")
            f.write(f"wchan: {read(base + '/wchan')}\n")
            f.write(f"stat: {read(base + '/stat')}")
            f.write(f"syscall: {read(base + '/syscall')}")
            # ns on a CPU, ns runnable but waiting for one, timeslices
            f.write(f"schedstat: {read(base + '/schedstat')}")
            f.write(f"stack:\n{read(base + '/stack')}\n")
        f.write("== fds\n")
        for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            f.write(f"{fd} -> {target}\n")
            if "io_uring" in target or "eventpoll" in target:
                f.write(read(f"/proc/{pid}/fdinfo/{fd}") + "\n")
    gdb_fds(server, port, where)
    if dump and server.alive():
        server.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.3)
        with open(os.path.join(where, "tracebacks.txt"), "w") as f:
            f.write(server.stderr())


def gdb_fds(server, port, where):
    """The engine's own record of the server's connection fds that hold
    unread bytes (ss: Recv-Q > 0), through gdb (the engine's address is
    on the server's stderr), and the retry list. Nothing if no gdb."""
    m = re.search(r"ENGINE (0x[0-9a-f]+)", server.stderr())
    if not m or not shutil.which("gdb"):
        return
    out = sh(["ss", "-HtanpiO", f"sport = :{port}"])
    fds = []
    for line in out.splitlines():
        parts = line.split()
        f = re.search(r"fd=(\d+)", line)
        idle = re.search(r"lastrcv:(\d+)", line)
        if parts and parts[0] != "LISTEN" and int(parts[1]) > 0 and f:
            if idle and int(idle.group(1)) >= 250:
                fds.append(int(f.group(1)))
    e = f"((ul_engine *){m.group(1)})"
    cmds = ["-ex", "bt 6", "-ex", f"p {e}->in_flight", "-ex", f"p {e}->bl_count"]
    cmds += ["-ex", f"p {e}->npend", "-ex", f"p {e}->nfree"]
    if server.loop.endswith("epoll"):
        cmds += ["-ex", f"p ((struct ep *){e}->bs)->ready_head"]
    else:
        cmds += ["-ex", f"p *(struct uring *){e}->bs"]
    for fd in fds[:6]:
        f = f"{e}->fds[{fd}]"
        cmds += ["-ex", f"p {f}"]
        for q in ("rq_head", "pq_head", "ops_head"):  # the first op of each list
            cmds += ["-ex", f"p {f}.{q} >= 0 ? {e}->chunks[{f}.{q} >> 10][{f}.{q} & 1023] : 0"]
    with open(os.path.join(where, "gdb.txt"), "w") as f:
        f.write(f"fds with bytes unread for 250 ms: {len(fds)}: {fds[:50]}\n")
        f.write(sh(["gdb", "-p", str(server.proc.pid), "-batch", "-nx"] + cmds))


def probe(port, http, timeout=3.0):
    """One fresh connection, one request (HTTP with Connection: close, or a
    16-byte echo): 'ok' or what went wrong."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            if http:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = b""
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    got += b
                return "ok" if got.endswith(net_bench.HTTP_BODY.encode()) else f"bad {got!r}"
            s.sendall(b"x" * 16)
            got = b""
            while len(got) < 16:
                b = s.recv(16)
                if not b:
                    return f"EOF after {got!r}"
                got += b
            return "ok"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ attempts


class Busy:
    """One busy-loop process per CPU listed."""

    def __init__(self, cpus):
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", "while True: pass"], preexec_fn=net_bench.pin(c)
            )
            for c in cpus
        ]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def attempt(opts, shape, tmp, out, nhit):
    """One fresh server, one net_bench loadgen run, sampled. Returns the record."""
    loop, wid, slots, pad = shape
    wl = dict(next(w for w in net_bench.WORKLOADS if w["id"] == wid), conns=slots)
    rec = {"loop": loop, "wl": wid, "slots": slots, "pad": pad, "t": time.time()}
    try:
        libc = getattr(opts, "libc", None)  # --rsloop-env's manifest (decision 841)
        server = net_bench.Server(loop, wl, opts.server_cpu, tmp, None, pad, libc=libc)
    except RuntimeError as exc:
        rec["error"] = f"server start: {exc}"
        return rec
    before = nstat()
    try:
        return sampled(opts, wl, server, rec, out, nhit)
    finally:
        server.stop()
        after = nstat()
        rec["nstat"] = {k: after[k] - before[k] for k in after if after[k] != before.get(k)}


def sampled(opts, wl, server, rec, out, nhit):
    port = int(server.addr)
    hit_dir = os.path.join(out, f"hit-{nhit}")
    sampler = Sampler(
        port, opts.every, opts.stale, lambda why: capture(server, port, hit_dir, dump=False)
    )
    sampler.start()
    storm = None
    if opts.signal_hz:

        def signals():
            while not sampler.done.wait(1 / opts.signal_hz):
                server.proc.send_signal(signal.SIGWINCH)

        storm = threading.Thread(target=signals, daemon=True)
        storm.start()
    try:
        res = net_bench.run_loadgen(wl, server, opts)
        rec.update(
            {
                k: res.get(k)
                for k in (
                    "requests",
                    "rps",
                    "p99_us",
                    "completed",
                    "connects",
                    "server_wait_pct",
                    "note",
                )
            }
        )
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        rec["error"] = " ".join(str(exc).split())[:400]
    finally:
        sampler.done.set()
        sampler.join()
        if storm is not None:
            storm.join()
    rec.update(
        max_idle_ms=sampler.max_idle,
        max_idle_sock=sampler.max_idle_sock,
        all_idle_ms=sampler.all_idle,
        slow=sampler.slow,
        max_queue=sampler.max_queue,
        samples=sampler.samples,
    )
    if sampler.fired:
        rec["stale"] = sampler.fired
        rec["stale_at_s"] = sampler.fired_at
    bad = rec.get("error") or sampler.fired or rec.get("requests", 0) == 0
    if bad and server.alive():
        if not sampler.fired:
            capture(server, port, hit_dir, dump=False)
        late_stats(server, rec)
        rec["probe"] = probe(port, bool(wl.get("http")))
        capture(server, port, os.path.join(hit_dir, "after"), dump=True)
    rec["server_alive"] = server.alive()
    return rec


def late_stats(server, rec):
    """The engine counters after a hit (SIGUSR1), and if they do not come in
    10 s, when they come (up to 30 s more) and how long the server waited
    for a CPU meanwhile (schedstat's run_delay, counted when it runs): a
    late answer with a wait as long as its delay is a starved server; one
    without is a handler that waited for something else (decision 632)."""
    if not server.loop.startswith("uringloop-") or not server.alive():
        return
    pid = server.proc.pid
    w0, t0 = net_bench.cpu_ticks(pid)[4], time.monotonic()
    server.proc.send_signal(signal.SIGUSR1)
    line = net_bench.readline(server.proc, 10)
    if line is None:
        line = net_bench.readline(server.proc, 30)
        rec["stats_late_s"] = round(time.monotonic() - t0, 3)
        try:
            rec["stats_wait_s"] = round((net_bench.cpu_ticks(pid)[4] - w0) / 1e9, 3)
        except FileNotFoundError:
            pass
    if line and line.startswith("STATS "):
        rec["stats"] = json.loads(line[6:])
    else:
        rec["stats"] = f"server said {line!r} for its engine counters"


def shapes(opts):
    pads = []
    for p in opts.pads.split(","):
        pads += [0] if p == "0" else [net_bench.layout_pad(r) for r in range(1, 9)]
    loops = opts.loops.split(",")
    wls = opts.workloads.split(",")
    slots = [int(s) for s in opts.slots.split(",")]
    base = list(itertools.product(loops, wls, slots))
    return base, pads


def main():
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # servers stopped on the way out
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=0, help="attempts (0: until --minutes)")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--slots", default="1,50,200")
    ap.add_argument("--pads", default="0,layout", help="0 and/or layout (net_bench's paddings)")
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--every", type=float, default=0.2, help="ss sample period (s)")
    ap.add_argument("--stale", type=float, default=1.0, help="idle socket = hit after (s)")
    ap.add_argument("--low", type=float, default=0.1, help="hit below this x shape median")
    ap.add_argument("--busy", default="", help="CPUs to load with a busy loop each")
    ap.add_argument(
        "--signal-hz",
        type=float,
        default=0,
        help="send the server SIGWINCH (a Python-level no-op handler) this often while "
        "the client runs: signals cut the engine's waits short (EINTR)",
    )
    ap.add_argument(
        "--fallbacks",
        action="store_true",
        help="uringloop-io_uring servers force every engine fallback (the tests' "
        "io_uring-fallbacks kind)",
    )
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--out", default=None)
    rsloop_env.add_option(ap)
    opts = ap.parse_args()
    opts.verify = True
    opts.libc = rsloop_env.choose(opts.rsloop_env, "rsloop" in opts.loops.split(","))
    opts.client_mode = "epoll"
    if opts.fallbacks:
        os.environ["STALLHUNT_FALLBACKS"] = "1"  # the servers' environment (serve)
    out = opts.out or tempfile.mkdtemp(prefix="stallhunt-")
    os.makedirs(out, exist_ok=True)
    os.sched_setaffinity(0, {opts.client_cpu})
    if not os.path.exists(net_bench.LOADGEN):
        net_bench.build_loadgen()
    net_bench.SERVER = os.path.abspath(__file__)  # serve() with the SIGUSR2 dump
    base, pads = shapes(opts)
    busy = Busy([int(c) for c in opts.busy.split(",") if c]) if opts.busy else None
    records, hits = [], []
    end = time.monotonic() + opts.minutes * 60
    net_bench.log(f"stallhunt: {len(base)} shapes x pads {pads}, results in {out}")
    net_bench.log(f"stallhunt: {net_bench.libc_line(opts.libc)}")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="stallhunt-srv-") as tmp,
            open(os.path.join(out, "attempts.jsonl"), "a") as jf,
        ):
            for i in itertools.count():
                if (opts.n and i >= opts.n) or (not opts.n and time.monotonic() > end):
                    break
                loop, wid, slots = base[i % len(base)]
                pad = pads[(i // len(base)) % len(pads)]
                rec = attempt(opts, (loop, wid, slots, pad), tmp, out, len(hits))
                rec["busy"] = opts.busy
                rec["signal_hz"] = opts.signal_hz
                rec["fallbacks"] = opts.fallbacks
                same = [
                    r["requests"]
                    for r in records
                    if (r["loop"], r["wl"], r["slots"]) == (loop, wid, slots) and "requests" in r
                ]
                med = statistics.median(same) if len(same) >= 3 else None
                low = med is not None and rec.get("requests", 0) < opts.low * med
                if rec.get("error") or rec.get("stale") or rec.get("requests", 1) == 0 or low:
                    rec["hit"] = len(hits)
                    hits.append(rec)
                records.append(rec)
                jf.write(json.dumps(rec) + "\n")
                jf.flush()
                net_bench.log(
                    f"{i:4d} {loop:19} {wid:26} c{slots:<3} pad{pad:<2} "
                    f"{rec.get('requests', '-'):>6} req idle<={rec['max_idle_ms']} "
                    f"(all {rec['all_idle_ms']}) ms "
                    f"q<={rec['max_queue']}" + (f"  HIT {rec}" if "hit" in rec else "")
                )
    finally:
        if busy:
            busy.stop()
    print(f"stallhunt: {len(records)} attempts, {len(hits)} hits; {out}")
    for key, grp in itertools.groupby(
        sorted(records, key=lambda r: (r["loop"], r["wl"], r["slots"])),
        key=lambda r: (r["loop"], r["wl"], r["slots"]),
    ):
        grp = list(grp)
        reqs = [r["requests"] for r in grp if "requests" in r]
        print(
            f"  {key[0]:19} {key[1]:26} c{key[2]:<3} n={len(grp):3d} "
            f"req min {min(reqs, default=0):6d} median {statistics.median(reqs or [0]):8.0f} "
            f"max idle {max(r['max_idle_ms'] for r in grp)} ms"
        )
    return 1 if hits else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loop":
        serve()
    else:
        sys.exit(main())
