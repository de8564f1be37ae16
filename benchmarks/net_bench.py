"""The network benchmark: echo, HTTP, TLS and idle connections, every loop side by side.

    python benchmarks/net_bench.py                 # everything, 3 repetitions, 5 s each
    python benchmarks/net_bench.py --quick         # 1 s windows, 0.5 s warm-up (~20 min in all)
    python benchmarks/net_bench.py --workloads echo-1k-c100 --loops uvloop,uringloop-io_uring

Each server runs in its own process (benchmarks/net_server.py) pinned to one
core; the client (benchmarks/loadgen.c, or wrk for the http-aiohttp and
http-httptools rows) runs pinned to the other, and so does this driver. The
same two HTTP servers are also driven by loadgen's --http mode (the
http-loadgen-* rows), a client that costs less per request than wrk -t1, so
that the server, not the client, is the side near 100 % busy. The conn-*
rows are short-lived connections (loadgen --reconnect, decision 593): each
of 50 slots connects, sends one 1 KiB echo (or one HTTP request with
`Connection: close`), reads the whole reply, closes and connects again, so
requests/s is connections/s and server CPU per request is per connection. Every loadgen
row's measured client follows a one-connection warm-up client that has closed
its connection, as wrk's rows follow their warm-up wrk (decision 376). Server CPU
time per request is the server process's time on a CPU
(/proc/<pid>/task/*/schedstat, in nanoseconds) over the measured window
divided by the requests the client completed in it; its user and system
parts are split as the kernel's tick samples split them (utime, stime in
/proc/<pid>/stat). Each side's busy % is its CPU time over
the window / the window: a side near 100 % is the limit of that row.
loadgen's plain echo and HTTP rows use its epoll mode, or its io_uring mode
with --client-mode uring (TLS and idle always use epoll). Repetitions are
interleaved: for each workload, every repetition runs every loop once, the
starting loop rotating, so drift on a shared machine hits all loops alike.
The conn-* rows run one unmeasured repetition of every loop first (their first
runs were slow for every loop: decision 1013).
Each repetition starts its servers with a PYTHONPATH of another length (a
nonexistent entry), so that start-up leaves glibc's heap in another layout:
the 100 KiB streams rows' page faults follow that layout (design.md decisions
585, 586), and a series with one layout would be one draw of it. --probe
samples a loop-free fixed workload (benchmarks/hostmodes.py) on the server's
CPU during every measured window and lists the runs made while the host ran
slow (decisions 660-662). rsloop, whose wheels need glibc 2.39, runs through
benchmarks/rsloop_env.py's folder (`make rsloop-env`) when it does not import
as it is: every server of the run then starts under that glibc (decisions
799, 800; --rsloop-env), and results.md's Malloc line names the libc.

Writes results.json, results.md (medians, min-max, ratios against uvloop; for
a row whose repetitions fell at two host speeds, each speed's repetitions and
in-speed ratios too: two_speeds(), decisions 995-998) and
chart.png (per family: req/s beside server CPU per request) into --out
(default benchmarks/results/<UTC date>/). A report, not a test: nothing here
is asserted; the exit status is 1 only when a client saw wrong bytes or a
server died.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import rsloop_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PKG = os.path.join(ROOT, "uringloop")
LOADGEN = os.path.join(HERE, "_build", "loadgen")
SERVER = os.path.join(HERE, "net_server.py")
ALL_LOOPS = ["asyncio", "uvloop", "rloop", "rsloop", "uringloop-io_uring", "uringloop-epoll"]
# the body of both HTTP servers' response (net_server.py): loadgen --http checks it
HTTP_BODY = "Hello, World!"


# ------------------------------------------------------------------ workloads


def _workloads():
    wl = []
    for size, conns, fam in (
        (1024, 1, "echo 1 KiB, 1 conn"),
        (1024, 100, "echo 1 KiB, 100 conns"),
        (102400, 10, "echo 100 KiB, 10 conns"),
    ):
        for kind in ("protocol", "buffered", "streams", "sock"):
            for transport in ("tcp", "unix"):
                tag = f"echo-{size // 1024}k-c{conns}"
                wl.append(
                    {
                        "id": f"{tag}-{kind}-{transport}",
                        "family": fam,
                        "client": "loadgen",
                        "kind": kind,
                        "transport": transport,
                        "size": size,
                        "conns": conns,
                        "label": f"{kind} {transport}",
                    }
                )
    wl.append(
        {
            "id": "http-aiohttp",
            "family": "HTTP keep-alive, wrk, 100 conns",
            "client": "wrk",
            "kind": "aiohttp",
            "transport": "tcp",
            "conns": 100,
            "label": "aiohttp",
        }
    )
    wl.append(
        {
            "id": "http-httptools",
            "family": "HTTP keep-alive, wrk, 100 conns",
            "client": "wrk",
            "kind": "httptools",
            "transport": "tcp",
            "conns": 100,
            "label": "httptools",
        }
    )
    # the same servers, with loadgen --http as the client (wrk -t1 is the busy
    # side of the httptools row: decision 378)
    for kind in ("aiohttp", "httptools"):
        wl.append(
            {
                "id": f"http-loadgen-{kind}",
                "family": "HTTP keep-alive, loadgen, 100 conns",
                "client": "loadgen",
                "http": "/",
                "kind": kind,
                "transport": "tcp",
                "conns": 100,
                "label": kind,
            }
        )
    # short-lived connections (decision 593): loadgen --reconnect, one message
    # (or one `Connection: close` request) per connection; req/s = conns/s
    wl.append(
        {
            "id": "conn-1k-c50-protocol-tcp",
            "family": "one echo 1 KiB per connection, 50 slots",
            "client": "loadgen",
            "reconnect": True,
            "kind": "protocol",
            "transport": "tcp",
            "size": 1024,
            "conns": 50,
            "label": "protocol tcp",
        }
    )
    wl.append(
        {
            "id": "conn-http-httptools",
            "family": "one HTTP request per connection, loadgen, 50 slots",
            "client": "loadgen",
            "reconnect": True,
            "http": "/",
            "kind": "httptools",
            "transport": "tcp",
            "conns": 50,
            "label": "httptools",
        }
    )
    wl.append(
        {
            "id": "tls-1k-c10",
            "family": "TLS echo 1 KiB, 10 conns",
            "client": "loadgen",
            "kind": "tls",
            "transport": "tcp",
            "size": 1024,
            "conns": 10,
            "label": "protocol+TLS",
        }
    )
    wl.append(
        {
            "id": "idle-10000",
            "family": "10,000 idle connections",
            "client": "idle",
            "kind": "protocol",
            "transport": "tcp",
            "size": 16,
            "conns": 10000,
            "label": "RSS per connection",
        }
    )
    return wl


WORKLOADS = _workloads()


def select_workloads(spec):
    """Comma-separated prefixes of workload ids ('echo-1k-c100', 'http', 'tls-1k-c10-')."""
    if not spec:
        return list(WORKLOADS)
    keys = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [w for w in WORKLOADS if any(w["id"] == k or w["id"].startswith(k) for k in keys)]
    if not chosen:
        sys.exit(
            f"net_bench: no workload matches {spec!r}; ids: "
            + ", ".join(w["id"] for w in WORKLOADS)
        )
    return chosen


# ------------------------------------------------------------------ helpers


def log(*a):
    print(*a, file=sys.stderr, flush=True)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_ticks(pid):
    """pid's utime and stime in clock ticks (fields 14 and 15 of /proc/<pid>/stat;
    for an exited, unreaped process: its whole life's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_ticks(pid):
    """pid's CPU time and sleeps: (ns on a CPU, summed over its threads'
    /proc/<pid>/task/*/schedstat; utime and stime in clock ticks; voluntary
    context switches of its threads; ns runnable but waiting for a CPU,
    schedstat's second field, which counts a wait once the thread runs)."""
    ns = sleeps = waited = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
                ns += int(fields[0])
                waited += int(fields[1])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        sleeps += int(line.split()[1])
        except FileNotFoundError:  # a thread that just ended
            pass
    return (ns, *stat_ticks(pid), sleeps, waited)


# engine counters reported per request (net_server.py prints them on SIGUSR1;
# turns: the loop's _run_once calls, decision 938)
ENGINE_COUNTS = ("enters", "waits", "submitted", "cqes", "records", "turns")


def engine_stats(server):
    """The uringloop server's engine counters now, or None for other loops."""
    if not server.loop.startswith("uringloop-") or not server.alive():
        return None
    server.proc.send_signal(signal.SIGUSR1)
    line = readline(server.proc, 10)
    if not line or not line.startswith("STATS "):
        raise RuntimeError(f"server said {line!r} for its engine counters: {server.stderr()}")
    return json.loads(line[6:])


def start_probe(opts):
    """--probe: hostmodes.py's sampler on the server's CPU for the measured
    window (40 round trips of a 1 KiB Unix socketpair echo every 50 ms, about
    1 % of that CPU): it shows the host's slow seconds, which every loop meets
    (decisions 660-662)."""
    if not getattr(opts, "probe", False):
        return None
    ticker = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "hostmodes.py"), "tick", str(opts.server_cpu)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=pin(opts.server_cpu),
    )
    # The client starts once the sampler runs: its first sample is out. A
    # loaded host can take longer to start Python than loadgen takes to warm
    # up and measure, and the window then had no sample (decision 702).
    if select.select([ticker.stdout], [], [], 60)[0]:
        ticker.stdout.readline()
    return ticker


def stop_probe(ticker, since, until):
    """The sampler's median ns per round trip between two time.monotonic()
    readings, or None."""
    if ticker is None:
        return None
    ticker.kill()
    out = ticker.communicate()[0]
    got = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and since <= float(parts[0]) <= until:
            got.append(float(parts[1]))
    return statistics.median(got) if got else None


# a server that waited this much of its window for a CPU was starved by other
# load on its core (it is pinned: it cannot move): its row says so
STARVED_PCT = 10


def window(requests, seconds, t0, t1, s0, s1):
    """A measured window's server costs: CPU per request (user + system, and
    each), busy %, sleeps, the share of the window it was runnable but kept
    off its CPU, and the engine's counters where the server reports them."""
    n = max(requests, 1)
    cpu = (t1[0] - t0[0]) / 1e3 / n
    user, system = t1[1] - t0[1], t1[2] - t0[2]
    # the kernel samples user against system time at its ticks: the share is
    # theirs, the sum is the nanosecond count
    share = user / (user + system) if user + system else 0.5
    out = {
        "cpu_us_per_req": cpu,
        "user_us_per_req": cpu * share,
        "sys_us_per_req": cpu * (1 - share),
        "sleeps_per_req": (t1[3] - t0[3]) / n,
        "server_busy_pct": (t1[0] - t0[0]) / 1e7 / seconds,
        "server_wait_pct": (t1[4] - t0[4]) / 1e7 / seconds,
    }
    if out["server_wait_pct"] >= STARVED_PCT:
        # decision 610: a pinned server starved by another process's kernel
        # time on its core reads as a stall (even 0 requests); not the loop's
        out["note"] = (
            f"server waited for a CPU {out['server_wait_pct']:.0f} % of the window "
            "(other load on its core)"
        )
    if s0 is not None and s1 is not None:
        for k in ENGINE_COUNTS:
            if k in s0 and k in s1:  # (a server of an older tree has no turns)
                out[f"{k}_per_req"] = (s1[k] - s0[k]) / n
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def readline(proc, timeout):
    """One line of proc's stdout within timeout seconds, or None."""
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        return None
    return proc.stdout.readline().decode(errors="replace").strip()


def pin(cpu):
    return lambda: os.sched_setaffinity(0, {cpu})


def build_loadgen(cc="cc"):
    """Build LOADGEN; a file of this process's own, renamed onto LOADGEN when
    complete: another net_bench of the same tree (two CI legs, two suites at
    once) may be running the old one, and `cc -o LOADGEN` rewrote it under
    that run's exec (EACCES; decision 705)."""
    os.makedirs(os.path.dirname(LOADGEN), exist_ok=True)
    src = os.path.join(HERE, "loadgen.c")
    tmp = f"{LOADGEN}.{os.getpid()}.tmp"
    base = [cc, "-O2", "-Wall", "-Wextra", "-o", tmp, src]
    try:
        r = subprocess.run(base + ["-lssl", "-lcrypto"], capture_output=True, text=True)
        tls = r.returncode == 0
        if not tls:
            log(
                "net_bench: loadgen without OpenSSL (no TLS workload):",
                r.stderr.strip().splitlines()[-1:],
            )
            r = subprocess.run(
                base[:-2] + ["-DLOADGEN_NO_TLS"] + base[-2:], capture_output=True, text=True
            )
            if r.returncode != 0:
                sys.exit("net_bench: cannot build loadgen:\n" + r.stderr)
        os.replace(tmp, LOADGEN)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return tls


def make_cert(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    try:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
    except ImportError:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-keyout",
                key,
                "-out",
                cert,
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


def pad_entry(n):
    """A nonexistent PYTHONPATH entry n characters long ('' for 0): it moves
    where start-up leaves glibc's heap blocks (decision 570)."""
    return "/" + "p" * (n - 1) if n else ""


def layout_pad(rep):
    """The padding of repetition rep's servers (none for the first), so that
    the repetitions sample the heap's fault mode rather than draw it once
    (decisions 585, 586, 588)."""
    return (rep * 7) % 61


def server_launch(libc):
    """Every server's (argv up to the script, extra PYTHONPATH entries): this
    Python as it is, or, when the run uses the rsloop environment (libc: its
    manifest), this Python started through that environment's glibc loader,
    with rsloop's unpacked wheel on the path. One libc for every loop's server
    in a run (decision 800)."""
    if libc is None:
        return [sys.executable], []
    return rsloop_env.command_prefix(libc["dir"]), [rsloop_env.site_dir(libc["dir"])]


def libc_line(libc):
    """The results header's statement of the libc the servers and the
    client ran with."""
    host = f"the host's glibc {platform.libc_ver()[1]}"
    if libc is None:
        return f"every server on {host}, as the client"
    return f"every server (all loops alike) on {rsloop_env.describe(libc)}; the client on {host}"


def server_root():
    """The servers' first PYTHONPATH entry: the checkout, where its uringloop
    is built in place; else none, and the caller's PYTHONPATH or
    site-packages gives the package (CI runs an unbuilt clone's benchmarks
    against the installed package; decisions 852, 1047)."""
    return ROOT if any(f.startswith("_sched") for f in os.listdir(PKG)) else ""


class Server:
    def __init__(self, loop, wl, cpu, tmp, cert, pad=0, libc=None, extra=()):
        self.addr = self.skip = None
        self.loop = loop
        launch, extra_path = server_launch(libc)
        args = launch + [SERVER, "--loop", loop, "--kind", wl["kind"], "--cpu", str(cpu)]
        args += list(extra)  # more of net_server.py's options (turn_batches.py: --spin)
        if wl["transport"] == "unix":
            path = os.path.join(tmp, f"s{os.getpid()}-{time.monotonic_ns()}.sock")
            args += ["--unix", path]
        else:
            args += ["--tcp", "0"]
        if wl["kind"] == "tls":
            args += ["--cert", cert[0], "--key", cert[1]]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (server_root(), pad_entry(pad), *extra_path, env.get("PYTHONPATH", "")) if p
        )
        env.pop("URINGLOOP_BACKEND", None)
        env.pop("PYTHONASYNCIODEBUG", None)
        self.errf = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.errf, env=env)
        line = readline(self.proc, 30)
        if line is None or not line:
            self.stop()
            raise RuntimeError(f"server {loop} {wl['id']} did not start: {self.stderr()}")
        if line.startswith("SKIP "):
            self.skip = line[5:]
            self.stop()
        elif line.startswith("READY "):
            self.addr = line[6:]
        else:
            self.stop()
            raise RuntimeError(f"server {loop} {wl['id']} said {line!r}: {self.stderr()}")

    def stderr(self):
        self.errf.seek(0)
        return self.errf.read().decode(errors="replace")[-2000:]

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def client_target(wl, server):
    if wl["transport"] == "unix":
        return ["--unix", server.addr]
    return ["--tcp", f"127.0.0.1:{server.addr}"]


def client_mode(wl, opts):
    """loadgen's mode: --client-mode for the plain echo and HTTP rows, epoll for
    TLS and the conn-* (--reconnect) rows."""
    return "epoll" if wl["kind"] == "tls" or wl.get("reconnect") else opts.client_mode


def loadgen_args(wl, server, opts, conns=None, duration=None, warmup=None):
    """loadgen's command line for an echo, TLS or HTTP row (conns, duration
    and warmup: the row's and the options' unless given)."""
    args = (
        [LOADGEN]
        + client_target(wl, server)
        + [
            "-c",
            str(wl["conns"] if conns is None else conns),
            "-d",
            str(opts.duration if duration is None else duration),
            "-w",
            str(opts.warmup if warmup is None else warmup),
            "--mode",
            client_mode(wl, opts),
        ]
    )
    if wl.get("http"):
        args += ["--http", wl["http"]]
        if opts.verify:
            args += ["--verify", "--expect", HTTP_BODY]
    else:
        args += ["-s", str(wl["size"])]
        if opts.verify:
            args.append("--verify")
    if wl["kind"] == "tls":
        args.append("--tls")
    if wl.get("reconnect"):
        args.append("--reconnect")
    return args


# the warm-up connection's client run (decision 376): one connection, this long
WARM_CONN_S = 0.1


def warm_connection(wl, server, opts):
    """Before a loadgen row's measured client: the row's own client with one
    connection for WARM_CONN_S, then it exits and its connection closes, as
    wrk's rows have their warm-up wrk's closed connections before the measured
    one (decision 376: a stock-asyncio server's first EOF frees a whole
    256 KiB read buffer, and glibc raises its mmap threshold then). Nothing
    of it is measured; a failure is the row's."""
    args = loadgen_args(wl, server, opts, conns=1, duration=WARM_CONN_S, warmup=0)
    try:
        r = subprocess.run(args, capture_output=True, preexec_fn=pin(opts.client_cpu), timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"warm-up client did not finish: {exc}") from None
    if r.returncode != 0:
        raise RuntimeError(
            f"warm-up client exit {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}"
        )


def run_loadgen(wl, server, opts, strace_out=None):
    args = loadgen_args(wl, server, opts)
    if opts.warmup > 0:
        warm_connection(wl, server, opts)
    tracer = None
    if strace_out:
        # attached before the client connects, detached after it exits: the
        # counts cover every request loadgen completed (warm-up included)
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(server.proc.pid), "-o", strace_out],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
    # the probe's sampler runs before the client starts (start_probe)
    ticker = start_probe(opts)
    m0 = m1 = time.monotonic()
    try:
        cli = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pin(opts.client_cpu)
        )
        limit = opts.warmup + opts.duration + 60
        line = readline(cli, limit)
        if line != "START":
            cli.kill()
            _, err = cli.communicate()
            raise RuntimeError(
                f"loadgen did not start measuring ({line!r}): {err.decode(errors='replace')[-500:]}"
            )
        m0 = time.monotonic()
        t0 = cpu_ticks(server.proc.pid)
        s0 = engine_stats(server)
        line = readline(cli, limit)
        m1 = time.monotonic()
    finally:
        probe_ns = stop_probe(ticker, m0, m1)
    t1 = cpu_ticks(server.proc.pid) if server.alive() else None
    s1 = engine_stats(server) if t1 is not None else None
    if s1 is not None and server.alive():
        # a wait for a CPU is counted when the thread next runs: answering
        # SIGUSR1 made it run, so a starvation that lasted to the window's end
        # is in this read
        t1 = (*t1[:4], cpu_ticks(server.proc.pid)[4])
    _, err = cli.communicate(timeout=60)
    if cli.returncode != 0 or not line or t1 is None:
        raise RuntimeError(
            f"loadgen exit {cli.returncode}: {err.decode(errors='replace')[-500:]}"
            f" server: {server.stderr()[-500:]}"
        )
    res = json.loads(line)
    if res.get("http"):
        res["mode"] = "http-" + res["mode"]
    if res.get("reconnect"):
        res["mode"] = "reconnect-" + res["mode"]
    res.update(window(res["requests"], res["seconds"], t0, t1, s0, s1))
    res["client_cpu_us_per_req"] = res["cpu_s"] * 1e6 / max(res["requests"], 1)
    res["client_busy_pct"] = 100 * res["cpu_s"] / res["seconds"]
    if probe_ns is not None:
        res["probe_ns"] = probe_ns
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
        res["syscalls_per_req"] = parse_strace(strace_out, res["completed"])
    return res


def parse_strace(path, requests):
    """strace -c's summary -> {syscall: calls per request}, with "total"."""
    calls = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
    out = {k: v / max(requests, 1) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
    out["total"] = sum(calls.values()) / max(requests, 1)
    return out


CLIENT_MODES = {
    "uring": "loadgen, io_uring mode",
    "epoll": "loadgen, epoll mode",
    "http-uring": "loadgen --http, io_uring mode",
    "http-epoll": "loadgen --http, epoll mode",
    "reconnect-epoll": "loadgen --reconnect, epoll mode",
    "reconnect-http-epoll": "loadgen --reconnect --http (Connection: close), epoll mode",
    "wrk": "wrk -t1",
}

WRK_RE = {
    "requests": re.compile(r"(\d+) requests in ([\d.]+)(\w+)"),
    "p50": re.compile(r"^\s+50%\s+([\d.]+)(\w+)", re.M),
    "p99": re.compile(r"^\s+99%\s+([\d.]+)(\w+)", re.M),
}


def _us(value, unit):
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[unit]


def run_wrk(wl, server, opts):
    url = f"http://127.0.0.1:{server.addr}/"
    base = [opts.wrk, "-t1", f"-c{wl['conns']}"]
    if opts.warmup > 0:
        subprocess.run(
            base + [f"-d{max(1, round(opts.warmup))}s", url],
            capture_output=True,
            preexec_fn=pin(opts.client_cpu),
            timeout=opts.warmup + 60,
        )
    t0 = cpu_ticks(server.proc.pid)
    s0 = engine_stats(server)
    start = time.monotonic()
    proc = subprocess.Popen(
        base + [f"-d{max(1, round(opts.duration))}s", "--latency", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pin(opts.client_cpu),
    )
    killer = threading.Timer(opts.duration + 60, proc.kill)
    killer.start()
    # wait for wrk's exit without reaping it: its /proc/<pid>/stat then holds
    # the CPU time of its whole life (its output is far below a pipe's size)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    wall = time.monotonic() - start
    t1 = cpu_ticks(server.proc.pid) if server.alive() else None
    s1 = engine_stats(server) if t1 is not None else None
    wrk_s = sum(stat_ticks(proc.pid)) / CLK_TCK
    killer.cancel()
    out, err = proc.communicate()
    m = WRK_RE["requests"].search(out)
    if proc.returncode != 0 or not m or t1 is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-500:]} {err[-300:]}")
    requests = int(m.group(1))
    secs = _us(m.group(2), m.group(3)) / 1e6
    res = {
        "requests": requests,
        "seconds": secs,
        "rps": requests / secs,
        "p50_us": _us(*WRK_RE["p50"].search(out).groups()),
        "p99_us": _us(*WRK_RE["p99"].search(out).groups()),
        **window(requests, wall, t0, t1, s0, s1),
        "client_cpu_us_per_req": wrk_s * 1e6 / max(requests, 1),
        "client_busy_pct": 100 * wrk_s / wall,
        "mode": "wrk",
    }
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    if bad or errs:
        res["note"] = "; ".join(x.group(0) for x in (bad, errs) if x)
    return res


def run_idle(wl, server, opts):
    base = rss_kib(server.proc.pid)
    args = (
        [LOADGEN]
        + client_target(wl, server)
        + ["-c", str(wl["conns"]), "-s", str(wl["size"]), "--idle"]
    )
    if opts.verify:
        args.append("--verify")
    cli = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=pin(opts.client_cpu),
    )
    line = readline(cli, 120)
    time.sleep(0.5)  # let the server settle (its last callbacks, any lazy frees)
    held = rss_kib(server.proc.pid) if server.alive() else None
    cli.stdin.close()  # the client's signal to close its connections and exit
    cli.wait(timeout=60)
    err = cli.stderr.read()
    if not line or not line.startswith("READY") or held is None:
        raise RuntimeError(
            f"idle client failed ({line!r}, exit {cli.returncode}): "
            f"{err.decode(errors='replace')[-500:]} server: {server.stderr()[-500:]}"
        )
    return {
        "rss_base_kib": base,
        "rss_held_kib": held,
        "kib_per_conn": (held - base) / wl["conns"],
        "mode": "epoll",
    }


# ------------------------------------------------------------------ report


# two host speeds (decision 995): a loop at both sides of the row's cut, its
# fast repetitions' median this many times its slow ones', in two loops or more
SPEED_RATIO = 1.5


def two_speeds(per, cut=None):
    """Whether one requests/s row's repetitions fell at two host speeds
    (decision 995). per: {loop: {"runs": [...]}}. The cut: `cut` (req/s) when
    given, else the one that splits all loops' served repetitions, pooled, in
    log req/s, into the two groups with the largest between-group variance
    (Otsu's cut, one-dimensional 2-means). Two speeds when at least two loops
    each have repetitions on both sides and their fast side's median is
    SPEED_RATIO x their slow side's or more: a host speed reaches whichever
    loop runs then, while the loops' own levels (one loop 0.6x another) or one
    loop's own modes (decision 585) show in one loop. A given `cut` is always
    applied. Returns None, or {"slow_max", "fast_min": req/s either side of
    the cut, "cut": the given one or None, "both": the loops that count,
    "fast", "slow": {loop: [runs]}}. Windows that served nothing stay out."""
    runs = [(r["rps"], lp, r) for lp, e in per.items() for r in e.get("runs", []) if r.get("rps")]
    if len(runs) < 4:
        return None
    runs.sort(key=lambda x: x[0])
    if cut is None:
        logs = [math.log(x[0]) for x in runs]
        n, total = len(logs), sum(logs)
        best, k, left = -1.0, 0, 0.0
        for i in range(1, n):
            left += logs[i - 1]
            # between-group variance, times n: i (n - i) / n (mean_a - mean_b)^2
            gap = left / i - (total - left) / (n - i)
            between = i * (n - i) * gap * gap
            if between > best:
                best, k = between, i
    else:
        k = sum(1 for x in runs if x[0] <= cut)
        if k in (0, len(runs)):
            return None
    slow, fast = {}, {}
    for i, (_, lp, r) in enumerate(runs):
        (slow if i < k else fast).setdefault(lp, []).append(r)
    both = [
        lp
        for lp in per
        if lp in slow
        and lp in fast
        and statistics.median(r["rps"] for r in fast[lp])
        >= SPEED_RATIO * statistics.median(r["rps"] for r in slow[lp])
    ]
    if cut is None and len(both) < 2:
        return None
    return {
        "slow_max": runs[k - 1][0],
        "fast_min": runs[k][0],
        "cut": cut,
        "both": both,
        "fast": fast,
        "slow": slow,
    }


def speed_stats(runs, ref):
    """One speed's repetitions of one loop: count, medians, ratios against
    uvloop's in the same speed (ref: its stats, or None)."""
    if not runs:
        return {"n": 0}
    served = [r for r in runs if "cpu_us_per_req" in r]
    st = {"n": len(runs), "rps": statistics.median(r["rps"] for r in runs)}
    if served:
        st["cpu_us_per_req"] = statistics.median(r["cpu_us_per_req"] for r in served)
    if ref and ref.get("n"):
        st["ratio"] = st["rps"] / ref["rps"]
        if st.get("cpu_us_per_req") and ref.get("cpu_us_per_req"):
            st["cpu_ratio"] = st["cpu_us_per_req"] / ref["cpu_us_per_req"]
    return st


def summarise(results, loops, cuts=None):
    """results: {wid: {loop: {"runs": [...], "skip": str|None}}} -> rows.
    cuts: {wid: req/s}, cuts given by hand for two_speeds()."""
    rows = []
    for wl in WORKLOADS:
        if wl["id"] not in results:
            continue
        per = results[wl["id"]]
        key = "kib_per_conn" if wl["client"] == "idle" else "rps"
        speeds = None
        if key == "rps":
            speeds = two_speeds(
                {lp: per[lp] for lp in loops if lp in per}, (cuts or {}).get(wl["id"])
            )
        med = {}
        for loop in loops:
            runs = per.get(loop, {}).get("runs", [])
            if runs:
                # a window in which the client completed nothing (the server
                # starved on a loaded machine) has no cost per request: its
                # per-request fields are 0 by construction and stay out of
                # their medians; its req/s (0) counts. A field some runs lack
                # (pooled runs, one made without --probe: pool_runs.py) is the
                # median of those that have it
                served = [r for r in runs if r.get("requests", 1) > 0] or runs
                med[loop] = {
                    k: statistics.median(
                        r[k] for r in (served if k.endswith("_per_req") else runs) if k in r
                    )
                    for k in runs[0]
                    if isinstance(runs[0][k], (int, float))
                }
                med[loop]["client_mode"] = runs[0].get("mode")
                med[loop]["min"] = min(r[key] for r in runs)
                med[loop]["max"] = max(r[key] for r in runs)
                if key == "rps" and all("cpu_us_per_req" in r for r in runs):
                    med[loop]["cpu_min"] = min(r["cpu_us_per_req"] for r in served)
                    med[loop]["cpu_max"] = max(r["cpu_us_per_req"] for r in served)
                med[loop]["n"] = len(runs)
        ref = med.get("uvloop")
        for loop in loops:
            entry = per.get(loop, {})
            row = {
                "workload": wl["id"],
                "family": wl["family"],
                "label": wl["label"],
                "loop": loop,
                "kind": wl["client"],
                "skip": entry.get("skip"),
                "error": entry.get("error"),
            }
            m = med.get(loop)
            if m:
                row.update(m)
                if ref:
                    row["ratio"] = m[key] / ref[key] if ref[key] else None
                    if wl["client"] != "idle" and ref.get("cpu_us_per_req"):
                        row["cpu_ratio"] = m["cpu_us_per_req"] / ref["cpu_us_per_req"]
                if speeds:
                    row["speeds"] = {
                        "slow_max": speeds["slow_max"],
                        "fast_min": speeds["fast_min"],
                        "cut": speeds["cut"],
                        "both": speeds["both"],
                    }
                    for sp in ("fast", "slow"):
                        ref_sp = speed_stats(speeds[sp].get("uvloop"), None)
                        row["speeds"][sp] = speed_stats(speeds[sp].get(loop), ref_sp)
            rows.append(row)
    return rows


def fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def summary(rows):
    """One line per workload: uvloop's median, then each loop's ratios against it
    (req/s, server CPU/request; for idle: RSS/connection)."""
    loops = []
    for r in rows:
        if r["loop"] != "uvloop" and r["loop"] not in loops:
            loops.append(r["loop"])
    head = ["| workload | uvloop | " + " | ".join(loops) + " |", "|---|---|" + "---|" * len(loops)]
    lines = []
    for wid in dict.fromkeys(r["workload"] for r in rows):
        by = {r["loop"]: r for r in rows if r["workload"] == wid}
        ref = by.get("uvloop", {})
        if "n" not in ref:
            continue
        idle = ref["kind"] == "idle"
        base = f"{ref['kib_per_conn']:.2f} KiB/conn" if idle else f"{ref['rps']:,.0f}/s"
        cells = []
        for lp in loops:
            r = by.get(lp, {})
            if "n" not in r:
                cells.append("skip")
            elif idle:
                cells.append(f"{r['ratio']:.2f}")
            else:
                cells.append(f"{r['ratio']:.2f} / {r.get('cpu_ratio', 0):.2f}")
        mark = " (two host speeds: see below)" if "speeds" in ref else ""
        lines.append(f"| {wid}{mark} | {base} | " + " | ".join(cells) + " |")
    return head + lines


def speeds_section(rows):
    """The rows whose repetitions fell at two host speeds (decision 995):
    each speed's repetitions, medians and ratios against uvloop's in the same
    speed, beside the plain medians; nothing when no row has two speeds."""
    split = [r for r in rows if "speeds" in r and "n" in r]
    if not split:
        return []

    def cell(st):
        if not st.get("n"):
            return "0 | – | –"
        ratios = f"{fmt(st.get('ratio'), 2)} / {fmt(st.get('cpu_ratio'), 2)}"
        return f"{st['n']} | {fmt(st['rps'])} ({fmt(st.get('cpu_us_per_req'), 1)} µs) | {ratios}"

    out = [
        "",
        "## Rows at two host speeds: each speed apart (decision 995)",
        "",
        "These rows' repetitions fell at two speeds of the host, for several loops: pooled "
        "over every loop, their requests/s split at one cut (Otsu's, in log requests/s, unless "
        f"a cut was given) with at least two loops on both sides, each with its fast median "
        f"{SPEED_RATIO}x its slow one or more. A plain median above then says which speed a "
        "loop drew more often; here each speed's repetitions apart, their medians (req/s and "
        "server CPU µs/req) and ratios against uvloop's in the same speed (– when uvloop drew "
        "none there). The tables above stay the plain medians over all repetitions.",
        "",
        "| workload | loop | all reps: ×uvloop / CPU ×uvloop | fast: reps | median | "
        "×uvloop / CPU ×uvloop | slow: reps | median | ×uvloop / CPU ×uvloop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cuts = {}
    for r in split:
        sp = r["speeds"]
        cuts.setdefault(r["workload"], sp)
        plain = f"{fmt(r.get('ratio'), 2)} / {fmt(r.get('cpu_ratio'), 2)} ({r['n']})"
        out.append(
            f"| {r['workload']} | {r['loop']} | {plain} | {cell(sp['fast'])} | {cell(sp['slow'])} |"
        )
    out.append("")
    for wid, sp in cuts.items():
        how = f"the cut given, {fmt(sp['cut'])}/s" if sp.get("cut") is not None else "Otsu's cut"
        out.append(
            f"- {wid}: slow ≤ {fmt(sp['slow_max'])}/s < fast ≥ {fmt(sp['fast_min'])}/s ({how}); "
            f"at both speeds, {SPEED_RATIO}x apart or more: " + (", ".join(sp["both"]) or "none")
        )
    return out


def markdown(rows, meta):
    out = [
        f"# Network benchmark, {meta['date']}",
        "",
        f"Machine: {meta['machine']}  ",
        f"Command: `{meta['command']}`  ",
        *([f"{meta['note']}  "] if meta.get("note") else []),
        f"Settings: {meta['settings']}  ",
        f"Loops: {meta['versions']}  ",
        f"Malloc: {meta['malloc']}",
        "",
        "## Summary: ratios of medians against uvloop in the same run",
        "",
        "Each cell: requests/s ×uvloop / server CPU per request ×uvloop (higher is better, "
        "then lower is better); idle: RSS per connection ×uvloop (lower is better).",
        "",
        *summary(rows),
        *speeds_section(rows),
        "",
    ]
    notes = []
    fam = None
    for r in rows:
        if r["family"] != fam:
            fam = r["family"]
            out += ["", f"## {fam}", ""]
            modes = sorted(
                {x["client_mode"] for x in rows if x["family"] == fam and x.get("client_mode")}
            )
            if modes:
                out += ["Client: " + ", ".join(CLIENT_MODES.get(m, m) for m in modes) + ".", ""]
            if r["kind"] == "idle":
                out += [
                    "| workload | loop | KiB RSS/conn (min–max) | ratio vs uvloop |",
                    "|---|---|---|---|",
                ]
            else:
                out += [
                    "| workload | loop | req/s median (min–max) | ×uvloop | p50 µs | p99 µs "
                    "| server CPU µs/req | CPU ×uvloop | server busy % | client busy % |",
                    "|---|---|---|---|---|---|---|---|---|---|",
                ]
        if r.get("skip") or r.get("error"):
            why = r.get("skip") or r.get("error")
            notes.append(f"- {r['workload']} / {r['loop']}: {why}")
            cols = 4 if r["kind"] == "idle" else 10
            out.append(
                f"| {r['label']} | {r['loop']} "
                f"| skipped ({'see note' if r.get('skip') else 'error'}) |" + " |" * (cols - 3)
            )
            continue
        if "n" not in r:
            continue
        if r["kind"] == "idle":
            out.append(
                f"| {r['label']} | {r['loop']} | {fmt(r['kib_per_conn'], 2)} "
                f"({fmt(r['min'], 2)}–{fmt(r['max'], 2)}) | {fmt(r.get('ratio'), 2)} |"
            )
        else:
            out.append(
                f"| {r['label']} | {r['loop']} | {fmt(r['rps'])} ({fmt(r['min'])}–{fmt(r['max'])}) "
                f"| {fmt(r.get('ratio'), 2)} | {fmt(r['p50_us'], 0)} | {fmt(r['p99_us'], 0)} "
                f"| {fmt(r['cpu_us_per_req'], 2)} | {fmt(r.get('cpu_ratio'), 2)} "
                f"| {fmt(r.get('server_busy_pct'))} | {fmt(r.get('client_busy_pct'))} |"
            )
    split = [r for r in rows if "n" in r and "sys_us_per_req" in r]
    if split:
        out += [
            "",
            "## Server CPU per request, user and system; engine counts per request",
            "",
            "Medians over the repetitions; user and system split as the kernel's tick "
            "samples split them (utime, stime); sleeps: voluntary context switches; "
            "the engine's counters (`loop.engine_stats()`) "
            "for uringloop: kernel entries, of them waits, SQEs submitted (epoll: syscalls "
            "for ops), CQEs reaped, records, the loop's turns.",
            "",
            "| workload | loop | CPU µs/req | user | system | system share | sleeps "
            "| enters | waits | SQEs | CQEs | records | turns |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in split:
            counts = " | ".join(
                fmt(r.get(f"{k}_per_req"), 3) if f"{k}_per_req" in r else "" for k in ENGINE_COUNTS
            )
            out.append(
                f"| {r['workload']} | {r['loop']} | {fmt(r['cpu_us_per_req'], 2)} "
                f"| {fmt(r['user_us_per_req'], 2)} | {fmt(r['sys_us_per_req'], 2)} "
                f"| {r['sys_us_per_req'] / max(r['cpu_us_per_req'], 1e-9):.2f} "
                f"| {fmt(r.get('sleeps_per_req'), 3)} | {counts} |"
            )
    traced = [
        (wid, lp, e["strace"])
        for wid, per in meta.get("_results", {}).items()
        for lp, e in per.items()
        if e.get("strace")
    ]
    if traced:
        out += [
            "",
            "## Server syscalls per request (strace -c -f, one extra run each)",
            "",
            "| workload | loop | syscalls/request | the largest |",
            "|---|---|---|---|",
        ]
        for wid, lp, st in traced:
            top = ", ".join(f"{k} {v:.3f}" for k, v in list(st.items())[:4] if k != "total")
            out.append(f"| {wid} | {lp} | {st['total']:.3f} | {top} |")
    out += probe_section(meta.get("_results", {}))
    if notes:
        # a loop that does not start at all gives the same note for every workload: say it once
        seen, uniq = set(), []
        for n in notes:
            head, key = n.split(": ", 1)
            if "does not start here" in key:
                if key in seen:
                    continue
                n = f"- {head.split(' / ')[1]} (every workload): {key}"
            seen.add(key)
            uniq.append(n)
        out += ["", "## Notes (skipped runs)", ""] + uniq
    return "\n".join(out) + "\n"


# a run whose probe took this much over the run's best quartile met a slow host
PROBE_SLOW = 1.25


def probe_section(results):
    """--probe's figures (decision 662): each run's probe, ns per round trip,
    and the runs whose probe was PROBE_SLOW x the whole run's best quartile or
    more, whose figures are the host's slow seconds as much as the loop's."""
    runs = [
        (wid, lp, i, r["probe_ns"])
        for wid, per in results.items()
        for lp, e in per.items()
        for i, r in enumerate(e.get("runs", []))
        if r.get("probe_ns")
    ]
    if not runs:
        return []
    ns = sorted(x[3] for x in runs)
    q1 = ns[len(ns) // 4]
    slow = [x for x in runs if x[3] >= PROBE_SLOW * q1]
    out = [
        "",
        "## Host probe (--probe)",
        "",
        f"A loop-free probe (benchmarks/hostmodes.py: a 1 KiB round trip on a Unix "
        f"socketpair) sampled on the server's CPU during every measured window: median "
        f"{statistics.median(ns):,.0f} ns a round trip, best quartile {q1:,.0f}, "
        f"{len(slow)} of {len(runs)} runs at {PROBE_SLOW}x that or more, listed here "
        "(repetition, probe ns): the host ran slow in them, whatever the loop (decision 660).",
        "",
    ]
    by = {}
    for wid, lp, i, p in slow:
        by.setdefault(wid, []).append(f"{lp} #{i + 1} {p:,.0f}")
    out += [f"- {wid}: " + ", ".join(v) for wid, v in by.items()] or ["- none"]
    return out


# what each kind of chart panel shows: (row value, its min and max, scale, y label, title tail)
PANELS = {
    "rps": ("rps", "min", "max", 1000, "k requests/s", "requests/s, higher is better"),
    "cpu": (
        "cpu_us_per_req",
        "cpu_min",
        "cpu_max",
        1,
        "server CPU µs / request",
        "server CPU per request, LOWER is better",
    ),
    "idle": ("kib_per_conn", "min", "max", 1, "KiB RSS / connection", "LOWER is better"),
}


def chart_layout(rows):
    """The chart's panels: [(grid row, first column, columns, family, panel kind)]
    on a 4-column grid, and the number of rows. Each family with more than two
    server kinds (the echo families) gets a row: requests/s on its left half,
    server CPU per request on its right (decision 379); the others (HTTP, TLS,
    idle) put their pair side by side, several families to a row; idle has one
    panel, RSS per connection."""
    fams = []
    for r in rows:
        if r["family"] not in fams:
            fams.append(r["family"])
    panels, row, col = [], 0, 0
    for fam in fams:
        frows = [r for r in rows if r["family"] == fam]
        if frows[0]["kind"] == "idle":
            kinds, span = ["idle"], 1
        elif len({r["label"] for r in frows}) > 2:
            kinds, span = ["rps", "cpu"], 2
        else:
            kinds, span = ["rps", "cpu"], 1
        if col + span * len(kinds) > 4:
            row, col = row + 1, 0
        for kind in kinds:
            panels.append((row, col, span, fam, kind))
            col += span
    return panels, (row + 1 if panels else 0)


def chart_figure(rows, loops, meta):
    """The chart as a matplotlib figure (chart() saves it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [lp for lp in loops if any("n" in r for r in rows if r["loop"] == lp)]
    colors = {
        "asyncio": "#9e9e9e",
        "uvloop": "#1f77b4",
        "rloop": "#ff7f0e",
        "rsloop": "#8c564b",
        "uringloop-io_uring": "#2ca02c",
        "uringloop-epoll": "#98df8a",
    }
    panels, nrows = chart_layout(rows)
    fig = plt.figure(figsize=(18, 3.6 * max(nrows, 1)))
    grid = fig.add_gridspec(nrows, 4)
    width = 0.8 / max(len(shown), 1)
    axes = []
    for grow, col, span, fam, kind in panels:
        ax = fig.add_subplot(grid[grow, col : col + span])
        ax.panel = (fam, kind)
        axes.append(ax)
        value, low, high, scale, ylabel, what = PANELS[kind]
        frows = [r for r in rows if r["family"] == fam]
        labels = []
        for r in frows:
            if r["label"] not in labels:
                labels.append(r["label"])
        # a row at two host speeds (decision 995): its bars mix them, say so
        two = {r["label"] for r in frows if "speeds" in r}
        for i, lp in enumerate(shown):
            xs, ys, lo, hi = [], [], [], []
            for j, lab in enumerate(labels):
                r = next(
                    (r for r in frows if r["label"] == lab and r["loop"] == lp and "n" in r), None
                )
                if r is None or r.get(value) is None:
                    continue
                v = r[value] / scale
                xs.append(j + (i - (len(shown) - 1) / 2) * width)
                ys.append(v)
                lo.append(v - r.get(low, r[value]) / scale)
                hi.append(r.get(high, r[value]) / scale - v)
            ax.bar(
                xs,
                ys,
                width * 0.95,
                yerr=[lo, hi],
                capsize=2,
                color=colors.get(lp),
                label=lp,
                error_kw={"elinewidth": 0.8},
            )
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(
            [f"{lab}\n(2 speeds)" if lab in two else lab for lab in labels],
            fontsize=8 if span == 2 else 9,
        )
        ax.set_title(f"{fam}:\n{what}", fontsize=10, loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    height = 3.6 * max(nrows, 1)
    top = 1 - 0.55 / height  # the title's two lines and the legend
    if axes:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            ncol=len(shown),
            loc="upper center",
            fontsize=10,
            bbox_to_anchor=(0.5, 1 - 0.42 / height),
        )
    fig.suptitle(
        f"uringloop network benchmark, {meta['date']}: median of {meta['reps']} "
        f"(whiskers: min–max; no bar: skipped, see results.md); {meta['machine_short']}\n"
        "Left of each pair: requests/s (higher is better; on a shared VM it moves 2-5x "
        "between runs). Right: the server's CPU time per request (LOWER is better; "
        "it holds from run to run).",
        fontsize=12,
        y=0.998,
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def chart(rows, loops, path, meta):
    import matplotlib.pyplot as plt

    fig = chart_figure(rows, loops, meta)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"glibc {platform.libc_ver()[1]}, Python {platform.python_version()}"
    ), f"{os.cpu_count()} CPUs, Linux {platform.release()}"


def versions(loops, libc=None):
    out = []
    for lp in loops:
        if lp == "rsloop" and libc is not None:
            out.append(f"rsloop {libc['rsloop']} ({libc['wheel']['file']}, rsloop environment)")
            continue
        mod = "uringloop" if lp.startswith("uringloop") else lp
        if mod == "asyncio" or lp == "uringloop-epoll":
            continue
        try:
            from importlib.metadata import version

            out.append(f"{mod} {version(mod)}")
        except Exception:
            if mod == "uringloop":
                out.append("uringloop (in-place build)")
            else:
                out.append(f"{mod} not installed")
    return ", ".join(out)


# ------------------------------------------------------------------ main


def default_out(root, date):
    """The first of root/date, root/date-2, root/date-3, ... that does not
    exist: a run without --out never writes over an earlier run's results."""
    out, n = os.path.join(root, date), 1
    while os.path.exists(out):
        n += 1
        out = os.path.join(root, f"{date}-{n}")
    return out


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="1 s windows, 0.5 s warm-up, 3 repetitions"
    )
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per run (5)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run (1)")
    ap.add_argument(
        "--reps", type=int, default=3, help="repetitions (at least 3 for a published table)"
    )
    ap.add_argument(
        "--loops", default=",".join(ALL_LOOPS), help="comma-separated, of: " + ", ".join(ALL_LOOPS)
    )
    ap.add_argument(
        "--workloads",
        default="",
        help="comma-separated id prefixes (echo-1k-c100, http, tls, idle, "
        "echo-100k-c10-sock-unix, ...); --list shows them",
    )
    ap.add_argument("--list", action="store_true", help="list the workload ids and exit")
    ap.add_argument(
        "--out",
        default=None,
        help="results folder (benchmarks/results/<UTC date>, or <date>-2, -3, ... "
        "when that one exists: a default never overwrites a published run)",
    )
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument(
        "--client-mode",
        choices=("epoll", "uring"),
        default="epoll",
        help="loadgen's mode for the plain echo and HTTP rows (TLS and idle always use epoll)",
    )
    ap.add_argument(
        "--no-verify", dest="verify", action="store_false", help="do not compare echoed bytes"
    )
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument(
        "--strace",
        action="store_true",
        help="after the repetitions, one more echo run per loop under strace -c -f "
        "(syscalls per request; that run's speed is not used)",
    )
    ap.add_argument(
        "--probe",
        action="store_true",
        help="sample benchmarks/hostmodes.py's fixed work on the server's CPU during each "
        "measured window (about 1 %% of it): results.md lists the runs made while the "
        "host ran slow (decisions 660-662)",
    )
    ap.add_argument(
        "--rsloop-env",
        default="auto",
        metavar="auto|off|DIR",
        help="run every server under the rsloop environment's glibc (benchmarks/rsloop_env.py): "
        "auto (default) when rsloop is among the loops, does not import as it is, and "
        "benchmarks/.rsloop-env was built; off: never; DIR: that folder's (decision 800)",
    )
    ap.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite results.md and chart.png next to a saved results.json",
    )
    ap.add_argument(
        "--cut",
        action="append",
        metavar="WORKLOAD=REQ_PER_S",
        help="split that row's repetitions into two host speeds at that req/s, whatever "
        "the rule finds (repeatable; decision 995)",
    )
    opts = ap.parse_args()
    if opts.list:
        for w in WORKLOADS:
            print(f"{w['id']:32} {w['family']}")
        return 0
    if opts.render:
        with open(opts.render) as f:
            saved = json.load(f)
        out = os.path.dirname(os.path.abspath(opts.render))
        write_report(saved["meta"], saved["results"], out, opts)
        return 0
    opts.duration = opts.duration if opts.duration is not None else (1.0 if opts.quick else 5.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.5 if opts.quick else 1.0)
    loops = [x.strip() for x in opts.loops.split(",") if x.strip()]
    for lp in loops:
        if lp not in ALL_LOOPS:
            sys.exit(f"net_bench: unknown loop {lp!r}; loops: {', '.join(ALL_LOOPS)}")
    wls = select_workloads(opts.workloads)
    libc = rsloop_env.choose(opts.rsloop_env, "rsloop" in loops)
    if libc is not None:
        log(f"net_bench: {libc_line(libc)}")
    if os.cpu_count() < 2:
        log("net_bench: fewer than 2 CPUs: server and client share one core")
    os.sched_setaffinity(0, {opts.client_cpu})
    have_tls = build_loadgen()
    opts.wrk = shutil.which("wrk")
    if not opts.wrk and any(w["client"] == "wrk" for w in wls):
        log(
            "net_bench: wrk is not installed: the HTTP workloads are skipped.\n"
            "           Install it with: apt-get update && apt-get install -y wrk"
        )

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = opts.out or default_out(os.path.join(HERE, "results"), date)
    os.makedirs(out, exist_ok=True)
    mach, mach_short = machine()
    malloc_env = {
        k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"
    }
    meta = {
        "date": date,
        "machine": mach,
        "machine_short": mach_short,
        "reps": opts.reps,
        "command": "python benchmarks/net_bench.py " + " ".join(sys.argv[1:]),
        "settings": f"{opts.duration:g} s measured after {opts.warmup:g} s warm-up, "
        f"{opts.reps} repetitions "
        f"interleaved, server on CPU {opts.server_cpu}, client on CPU {opts.client_cpu}, "
        f"echo bytes and HTTP bodies verified: {'yes' if opts.verify else 'no'} (loadgen "
        f"--http always checks the status, 200); TLS client: loadgen.c with "
        f"OpenSSL (TLS 1.3); busy % = a side's utime+stime over the window / the window "
        f"(server: /proc/<pid>/stat; loadgen: getrusage; wrk: /proc/<pid>/stat at its exit)",
        "versions": versions(loops, libc),
        "malloc": libc_line(libc)
        + "; "
        + (
            ("glibc malloc with " + ", ".join(f"{k}={v}" for k, v in malloc_env.items()))
            if malloc_env
            else "glibc malloc, default settings (no MALLOC_* or GLIBC_TUNABLES set)"
        ),
    }

    results = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="netbench-") as tmp:
        cert = make_cert(tmp) if any(w["kind"] == "tls" for w in wls) else None
        for wl in wls:
            per = results.setdefault(wl["id"], {})
            if wl["client"] == "wrk" and not opts.wrk:
                for lp in loops:
                    per[lp] = {"skip": "wrk not installed (apt-get install -y wrk)", "runs": []}
                continue
            if wl["kind"] == "tls" and not have_tls:
                for lp in loops:
                    per[lp] = {
                        "skip": "loadgen built without OpenSSL (install libssl-dev)",
                        "runs": [],
                    }
                continue
            if wl.get("reconnect"):
                row_warmup(wl, loops, opts, tmp, cert, libc)
            for rep in range(opts.reps):
                order = loops[rep % len(loops) :] + loops[: rep % len(loops)]
                for lp in order:
                    entry = per.setdefault(lp, {"runs": []})
                    if entry.get("skip") or entry.get("error"):
                        continue
                    try:
                        server = Server(lp, wl, opts.server_cpu, tmp, cert, layout_pad(rep), libc)
                    except RuntimeError as exc:
                        entry["error"] = str(exc).splitlines()[0][:300]
                        log(f"  {wl['id']:28} {lp:20} ERROR {entry['error']}")
                        failed = True
                        continue
                    if server.skip:
                        entry["skip"] = server.skip
                        log(f"  {wl['id']:28} {lp:20} skip: {server.skip}")
                        continue
                    try:
                        run = {"wrk": run_wrk, "idle": run_idle}.get(wl["client"], run_loadgen)(
                            wl, server, opts
                        )
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        entry["error"] = " ".join(str(exc).split())[:300]
                        log(f"  {wl['id']:28} {lp:20} ERROR {entry['error']}")
                        failed = True
                        continue
                    finally:
                        server.stop()
                    entry["runs"].append(run)
                    if wl["client"] == "idle":
                        log(
                            f"  {wl['id']:28} {lp:20} rep {rep + 1}: "
                            f"{run['kib_per_conn']:.2f} KiB/conn"
                        )
                    else:
                        log(
                            f"  {wl['id']:28} {lp:20} rep {rep + 1}: {run['rps']:>10,.0f} req/s "
                            f"{run['cpu_us_per_req']:6.2f} µs CPU/req p99 {run['p99_us']:.0f} µs "
                            f"busy server {run['server_busy_pct']:.0f} % "
                            f"client {run['client_busy_pct']:.0f} % ({run['mode']})"
                            + (f" probe {run['probe_ns']:,.0f} ns" if run.get("probe_ns") else "")
                            + (f" ({run['note']})" if run.get("note") else "")
                        )
            if opts.strace and wl["client"] == "loadgen":
                for lp in loops:
                    entry = per.get(lp, {})
                    if entry.get("skip") or entry.get("error"):
                        continue
                    server = Server(lp, wl, opts.server_cpu, tmp, cert, libc=libc)
                    try:
                        run = run_loadgen(wl, server, opts, os.path.join(tmp, "strace.txt"))
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        log(f"  {wl['id']:28} {lp:20} strace run failed: {exc}")
                        continue
                    finally:
                        server.stop()
                    entry["strace"] = run["syscalls_per_req"]
                    log(
                        f"  {wl['id']:28} {lp:20} strace: "
                        f"{run['syscalls_per_req']['total']:.2f} syscalls/request"
                    )
    meta["loops"] = loops
    write_report(meta, results, out, opts)
    return 1 if failed else 0


def row_warmup(wl, loops, opts, tmp, cert, libc):
    """A conn-* row's unmeasured repetition: one run of each loop, as a
    measured one, before the row's first measured window, its figures
    dropped. The row's first runs were slow for every loop in 13 of 14
    published runs (decisions 998, 999 (b), 1013): an order effect inside
    the row, not the host's speed. A run that fails here is only logged;
    the measured runs say what fails."""
    for lp in loops:
        try:
            server = Server(lp, wl, opts.server_cpu, tmp, cert, layout_pad(0), libc)
        except RuntimeError as exc:
            log(f"  {wl['id']:28} {lp:20} warm-up: {str(exc).splitlines()[0][:200]}")
            continue
        try:
            if server.skip:
                continue
            run = run_loadgen(wl, server, opts)
            log(f"  {wl['id']:28} {lp:20} warm-up: {run['rps']:>10,.0f} req/s (not measured)")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log(f"  {wl['id']:28} {lp:20} warm-up: {' '.join(str(exc).split())[:200]}")
        finally:
            server.stop()


def parse_cuts(specs):
    """--cut WORKLOAD=REQ_PER_S, repeated -> {workload: req/s}."""
    cuts = {}
    for spec in specs or ():
        wid, sep, rps = spec.partition("=")
        if not sep or wid not in {w["id"] for w in WORKLOADS}:
            raise SystemExit(f"--cut {spec!r}: want WORKLOAD=REQ_PER_S, WORKLOAD an id (--list)")
        cuts[wid] = float(rps)
    return cuts


def write_report(meta, results, out, opts):
    loops = meta.get("loops") or [
        lp for lp in ALL_LOOPS if any(lp in per for per in results.values())
    ]
    rows = summarise(results, loops, parse_cuts(getattr(opts, "cut", None)))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "rows": rows}, f, indent=1)
    md = markdown(rows, dict(meta, _results=results))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    if not opts.no_chart:
        try:
            chart(rows, loops, os.path.join(out, "chart.png"), meta)
        except ImportError:
            log("net_bench: matplotlib is not installed: no chart (pip install matplotlib)")
    print(md)
    log(f"net_bench: results in {out}")


if __name__ == "__main__":
    sys.exit(main())
