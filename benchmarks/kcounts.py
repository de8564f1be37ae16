"""Kernel event counts per request, server and client, loop by loop (decision 515).

    python benchmarks/kcounts.py          # echo-1k-c100, Protocol and BufferedProtocol, TCP
    python benchmarks/kcounts.py --loops uvloop,uringloop-io_uring --workloads echo-1k-c100-protocol
    python benchmarks/kcounts.py --reps 3 --record /tmp/prof   # where the server's CPU goes
    python benchmarks/kcounts.py --record /tmp/pf --event page-faults   # where it faults
    python benchmarks/kcounts.py --workloads http-httptools --loops uvloop,uringloop-io_uring
    python benchmarks/kcounts.py --workloads http-httptools --record /tmp/w --record-side client \
        --symbols sock_def_readable,do_epoll_wait --json /tmp/w/runs.json   # where wrk's time goes

Timings on a shared machine move by tens of per cent; counts of what the
kernel did do not. Each run is net_bench's (benchmarks/net_bench.py): a
fresh net_server.py pinned to --server-cpu, the one-connection warm-up
client, then loadgen pinned to --client-cpu. `perf stat -e <tracepoints>`
is attached to the server process before the measured client starts and
stopped after it exits, and the client runs under its own `perf stat`; each
count is divided by the requests the client completed (warm-up included, as
net_bench's --strace does). Tracepoints are attributed to the task that was
running: the loopback delivery of a send runs as a softirq in the sender's
context, so the server's row also holds the client sockets' receive of the
server's data (and the other way round).

A wrk row (http-httptools, http-aiohttp; decision 725) runs a warm-up wrk,
then the measured `wrk -t1` started stopped (a shell that stops itself and
execs wrk under its pid) so that `perf stat -p` (or `perf record -p`) is
attached to it and to the server before it sends anything; both sides'
user and system CPU per request come from /proc/<pid>/stat (ticks), and
the requests from wrk's summary. `--record-side client` profiles the
client (wrk or loadgen) instead of the server, with the wake-ups split out
of the send's softirq; under cpu-clock (no PMU on this VM) a wake
callback runs with interrupts off, so its samples land on
`_raw_spin_unlock_irqrestore` in `sock_def_readable`: `--symbols
sock_def_readable` is the whole wake path (epoll's callback, io_uring's
poll wake and task-work add, the try_to_wake_up of a sleeper).

Rows (per request):
  syscalls          raw_syscalls:sys_enter; indented below it, syscalls:sys_enter_<name>
                    for the SYSCALLS named (decision 551)
  epoll_*wait -> N  syscalls:sys_exit_epoll_wait / _epoll_pwait by return (events handed
                    back), in buckets; "epoll events per wait (>=)" sums them at each
                    bucket's lower bound (exact below 4)
  switches          sched:sched_switch (sleeps, mostly); preempted: prev_state == 0
  page faults       the page-faults software event, user and kernel mode (a receive's copy
                    into a fresh page faults in the kernel); in user mode:
                    exceptions:page_fault_user
  wakeups           sched:sched_wakeup done by this side (of the other side, of ksoftirqd)
  xmit data / ack   net:net_dev_xmit, len > 100 / len <= 100 (a pure ACK is 66 bytes)
  softirqs          irq:softirq_entry; net_rx: vec == NET_RX
  seg->srv data/ack tcp:tcp_probe on the server's sockets (sport == port), data_len > 0 / == 0
  seg->cli data/ack tcp:tcp_probe on the client's sockets (dport == port); TCP rows only
  recv ok / EAGAIN  sock:sock_recv_length ret > 0 / ret < 0; ok split by size
  skbs copied out   skb:skb_copy_datagram_iovec (each skb a receive copies to user space)
  sends             sock:sock_send_length, split by size
  data_ready        sock:sk_data_ready (a socket told of data)
  uring ...         io_uring:io_uring_task_add, _local_work_run, _task_work_run,
                    _poll_arm, _submit_req, _complete, _cqring_wait, io-wq:
                    _queue_async_work, _req_failed

With --heap, rows (bytes, not per request) of the server's glibc malloc state
read with gdb after the warm-up client and after the run: mp_'s mmap and trim
thresholds (glibc raises them when an mmapped block is freed, decision 584),
the main arena's size and its top chunk. --pads N,... runs each loop once per
start-up layout (a nonexistent PYTHONPATH entry N characters long, decision
570), each a column.

Needs perf and root (tracepoints). A report: nothing is asserted.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import heapstate  # noqa: E402
import net_bench  # noqa: E402
import rsloop_env  # noqa: E402

NET_RX = 3
# the syscalls counted one by one under "syscalls" (all of them)
SYSCALLS = (
    "recvfrom",
    "recvmsg",
    "read",
    "sendto",
    "sendmsg",
    "write",
    "io_uring_enter",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "brk",
    "mmap",
    "munmap",
    "madvise",
)


# the buckets of an epoll wait's return (events handed back): wrk and
# loadgen call epoll_wait, libuv (uvloop) and our epoll backend epoll_pwait
# or epoll_wait; both are counted, each bucket summed over the two
EPOLL_BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 1 << 30))


def epoll_returns():
    """(label, tracepoint, filter) rows of the epoll waits' returns, by bucket."""
    rows = []
    for name in ("epoll_wait", "epoll_pwait"):
        for lo, hi in EPOLL_BUCKETS:
            what = f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi < 1 << 30 else f">= {lo}")
            flt = f"ret == {lo}" if lo == hi else f"ret >= {lo} && ret <= {hi}"
            rows.append((f"  {name} -> {what}", f"syscalls:sys_exit_{name}", flt))
    return rows


def events_per_wait(counts):
    """(waits, events handed back: each bucket at its lower bound, exact
    below 4) per request, from one side's counts."""
    waits = got = 0.0
    for label, v in counts.items():
        if "epoll_wait -> " in label or "epoll_pwait -> " in label:
            what = label.split("-> ")[1]
            lo = int(what.removeprefix(">= ").split("-")[0])
            waits += v
            got += v * lo
    return waits, got


def events(port, timers=False):
    """(label, tracepoint, filter or None) for a server on TCP port `port`
    (None: a Unix socket server, no tcp_probe rows); with `timers`, the
    rows of TIMER_EVENTS too."""
    evs = [
        ("syscalls", "raw_syscalls:sys_enter", None),
        *[(f"  {name}", f"syscalls:sys_enter_{name}", None) for name in SYSCALLS],
        *epoll_returns(),
        ("switches", "sched:sched_switch", None),
        ("  preempted", "sched:sched_switch", "prev_state == 0"),
        ("page faults", "page-faults", None),
        ("  in user mode", "exceptions:page_fault_user", None),
        ("wakeups", "sched:sched_wakeup", None),
        ("xmit data", "net:net_dev_xmit", "len > 100"),
        ("xmit ack", "net:net_dev_xmit", "len <= 100"),
        ("softirqs", "irq:softirq_entry", None),
        ("  net_rx", "irq:softirq_entry", f"vec == {NET_RX}"),
        ("seg->srv data", "tcp:tcp_probe", f"sport == {port} && data_len > 0"),
        ("seg->srv ack", "tcp:tcp_probe", f"sport == {port} && data_len == 0"),
        ("seg->cli data", "tcp:tcp_probe", f"dport == {port} && data_len > 0"),
        ("seg->cli ack", "tcp:tcp_probe", f"dport == {port} && data_len == 0"),
        ("recv ok", "sock:sock_recv_length", "ret > 0"),
        ("  recv < 16 KiB", "sock:sock_recv_length", "ret > 0 && ret < 16384"),
        ("  recv 16-64 KiB", "sock:sock_recv_length", "ret >= 16384 && ret < 65536"),
        ("  recv >= 64 KiB", "sock:sock_recv_length", "ret >= 65536"),
        ("recv EAGAIN", "sock:sock_recv_length", "ret < 0"),
        ("skbs copied out", "skb:skb_copy_datagram_iovec", None),
        ("sends", "sock:sock_send_length", None),
        ("  send < 16 KiB", "sock:sock_send_length", "ret >= 0 && ret < 16384"),
        ("  send 16-64 KiB", "sock:sock_send_length", "ret >= 16384 && ret < 65536"),
        ("  send >= 64 KiB", "sock:sock_send_length", "ret >= 65536"),
        ("data_ready", "sock:sk_data_ready", None),
        ("uring task_add", "io_uring:io_uring_task_add", None),
        ("uring local_work_run", "io_uring:io_uring_local_work_run", None),
        ("uring task_work_run", "io_uring:io_uring_task_work_run", None),
        ("uring poll_arm", "io_uring:io_uring_poll_arm", None),
        ("uring submit_req", "io_uring:io_uring_submit_req", None),
        ("uring complete", "io_uring:io_uring_complete", None),
        ("uring cqring_wait", "io_uring:io_uring_cqring_wait", None),
        ("uring io-wq", "io_uring:io_uring_queue_async_work", None),
        ("uring req_failed", "io_uring:io_uring_req_failed", None),
    ]
    if timers:
        evs += TIMER_EVENTS
    return [e for e in evs if port is not None or not e[1].startswith("tcp:")]


# --timers (decision 747): what a wait's timer, the wake-up IPIs and the
# guest's MSR writes (each a VM exit on a guest without an offloaded APIC
# timer) cost the side; a futex is a thread's lock or the GIL's
TSC_DEADLINE_MSR = 0x6E0
TIMER_EVENTS = [
    ("futex", "syscalls:sys_enter_futex", None),
    ("hrtimer start", "timer:hrtimer_start", None),
    ("hrtimer cancel", "timer:hrtimer_cancel", None),
    ("hrtimer expire", "timer:hrtimer_expire_entry", None),
    ("local timer irq", "irq_vectors:local_timer_entry", None),
    ("reschedule irq", "irq_vectors:reschedule_entry", None),
    ("call function irq", "irq_vectors:call_function_single_entry", None),
    ("IPIs sent", "ipi:ipi_send_cpu", None),
    ("MSR writes", "msr:write_msr", None),
    ("  TSC deadline", "msr:write_msr", f"msr == {TSC_DEADLINE_MSR}"),
    ("MSR reads", "msr:read_msr", None),
]


def perf_args(evs, out):
    args = ["perf", "stat", "-x", ",", "--no-big-num", "-o", out]
    for _, ev, flt in evs:
        args += ["-e", ev]
        if flt:
            args += ["--filter", flt]
    return args


def parse_perf(path, evs):
    """The counts of perf stat -x, in the order the events were given."""
    vals = []
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            field = line.split(",")[0]
            vals.append(int(field) if field.isdigit() else 0)
    if len(vals) != len(evs):
        raise RuntimeError(f"perf stat gave {len(vals)} counts for {len(evs)} events: {path}")
    return {label: v for (label, _, _), v in zip(evs, vals, strict=True)}


def record_args(opts, data):
    return [
        "perf",
        "record",
        "-q",
        "-e",
        opts.event,
        *(["-F", str(opts.freq)] if opts.event == "cpu-clock" else ["-c", "1"]),
        "-g",
        "-o",
        data,
    ]


def wrk_args(wl, server, opts, seconds, latency=False):
    return [
        opts.wrk,
        "-t1",
        f"-c{wl['conns']}",
        f"-d{max(1, round(seconds))}s",
        *(["--latency"] if latency else []),
        f"http://127.0.0.1:{server.addr}/",
    ]


def start_stopped(args, cpu):
    """`args` started pinned to `cpu`, stopped before its exec (a shell that
    stops itself, then execs it under the same pid): a tracer attached to
    the pid now sees the whole of its run, and /proc/<pid>/stat at its exit
    holds its CPU time (decision 725)."""
    proc = subprocess.Popen(
        ["sh", "-c", 'kill -STOP $$; exec "$@"', "sh", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=net_bench.pin(cpu),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return proc
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError("the client did not stop before its exec")


def run_client_traced(wl, server, opts, tmp, evs, tag):
    """A wrk row (or --record-side client): the client started stopped, the
    tracers attached to both pids, then the client let go; per request: the
    counts of both sides (perf stat) or the recorded side's profile, and the
    CPU time of both sides from /proc (user and system)."""
    wrk = wl["client"] == "wrk"
    if wrk:
        if opts.warmup > 0:
            subprocess.run(
                wrk_args(wl, server, opts, opts.warmup),
                capture_output=True,
                preexec_fn=net_bench.pin(opts.client_cpu),
                timeout=opts.warmup + 60,
            )
        args = wrk_args(wl, server, opts, opts.duration)
    else:
        net_bench.warm_connection(wl, server, opts)
        args = net_bench.loadgen_args(wl, server, opts)
    cli = start_stopped(args, opts.client_cpu)
    out = {}
    tracers = []
    try:
        for side, pid in (("server", server.proc.pid), ("client", cli.pid)):
            if opts.record:
                if side != opts.record_side:
                    continue
                data = os.path.join(opts.record, f"{wl['id']}-{tag}-{side}-{opts.rep}.data")
                out["data"] = data
                targs = record_args(opts, data)
            else:
                targs = perf_args(evs, os.path.join(tmp, f"{side}.perf"))
            tracers.append(
                subprocess.Popen(
                    targs + ["-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
            )
        time.sleep(0.5)  # perf attached before the client runs
        t0 = net_bench.cpu_ticks(server.proc.pid)
        os.kill(cli.pid, signal.SIGCONT)
        os.waitid(os.P_PID, cli.pid, os.WEXITED | os.WNOWAIT)
        t1 = net_bench.cpu_ticks(server.proc.pid)
        cticks = net_bench.stat_ticks(cli.pid)
    finally:
        for tr in tracers:
            tr.send_signal(signal.SIGINT)
            tr.communicate(timeout=60)
        if cli.poll() is None:
            cli.kill()
    stdout, stderr = cli.communicate(timeout=60)
    if cli.returncode != 0:
        raise RuntimeError(f"client exit {cli.returncode}: {stderr[-500:]}")
    if wrk:
        m = net_bench.WRK_RE["requests"].search(stdout)
        if not m or "Non-2xx" in stdout or "Socket errors" in stdout:
            raise RuntimeError(f"wrk: {stdout[-500:]}")
        done = int(m.group(1))
        rps = done / (net_bench._us(m.group(2), m.group(3)) / 1e6)
    else:
        res = json.loads([x for x in stdout.splitlines() if x.startswith("{")][-1])
        done, rps = res["completed"], res["rps"]
    n = max(done, 1)
    out.update(completed=done, rps=rps)
    if opts.record:
        return out
    tick_us = 1e6 / net_bench.CLK_TCK
    cpu = {
        "server": (t1[1] - t0[1], t1[2] - t0[2]),
        "client": cticks,
    }
    for side in ("server", "client"):
        counts = parse_perf(os.path.join(tmp, f"{side}.perf"), evs)
        row = {k: v / n for k, v in counts.items()}
        user, system = cpu[side]
        row["CPU user (us, /proc ticks)"] = user * tick_us / n
        row["CPU system (us, /proc ticks)"] = system * tick_us / n
        waits, got = events_per_wait(row)
        row["epoll events per wait (>=)"] = got / waits if waits else 0.0
        out[side] = row
    return out


def run_one(wl, loop, opts, tmp, pad=0):
    # the TLS row's certificate: made once per run, as net_bench makes it
    cert = None
    if wl["kind"] == "tls":
        cert = getattr(opts, "cert", None) or net_bench.make_cert(tmp)
        opts.cert = cert
    libc = getattr(opts, "libc", None)  # --rsloop-env's manifest (decision 841)
    server = net_bench.Server(loop, wl, opts.server_cpu, tmp, cert, pad, libc=libc)
    try:
        if server.skip:
            return {"skip": server.skip}
        port = int(server.addr) if wl["transport"] == "tcp" else None
        evs = events(port, opts.timers)
        if wl["client"] == "wrk" or (opts.record and opts.record_side == "client"):
            tag = f"{loop}-pad{pad}" if pad else loop
            return run_client_traced(wl, server, opts, tmp, evs, tag)
        net_bench.warm_connection(wl, server, opts)
        heap0 = heapstate.mp_state(server.proc.pid) if opts.heap else None
        sout, cout = os.path.join(tmp, "server.perf"), os.path.join(tmp, "client.perf")
        if opts.record:
            tag = f"{loop}-pad{pad}" if pad else loop
            data = os.path.join(opts.record, f"{wl['id']}-{tag}-{opts.rep}.data")
            targs = record_args(opts, data)
        else:
            targs = perf_args(evs, sout)
        tracer = subprocess.Popen(
            targs + ["-p", str(server.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # perf attached before the client connects
        args = net_bench.loadgen_args(wl, server, opts)
        if not opts.record:
            args = perf_args(evs, cout) + ["--"] + args
        cli = subprocess.run(
            args,
            capture_output=True,
            preexec_fn=net_bench.pin(opts.client_cpu),
            timeout=opts.warmup + opts.duration + 60,
        )
        tracer.send_signal(signal.SIGINT)
        _, err = tracer.communicate(timeout=60)
        if cli.returncode != 0:
            raise RuntimeError(f"loadgen exit {cli.returncode}: {cli.stderr.decode()[-500:]}")
        line = [x for x in cli.stdout.decode().splitlines() if x.startswith("{")][-1]
        res = json.loads(line)
        n = max(res["completed"], 1)
        out = {"completed": res["completed"], "rps": res["rps"]}
        if opts.record:
            out["data"] = data
            return out
        for side, path in (("server", sout), ("client", cout)):
            counts = parse_perf(path, evs)
            out[side] = {k: v / n for k, v in counts.items()}
            waits, got = events_per_wait(out[side])
            out[side]["epoll events per wait (>=)"] = got / waits if waits else 0.0
        if opts.heap:
            heap1 = heapstate.mp_state(server.proc.pid)
            for when, st in (("after warm-up", heap0), ("after the run", heap1)):
                for key in ("mmap_threshold", "trim_threshold", "heap", "top"):
                    out["server"][f"glibc {key}, {when} (bytes)"] = st[key] if st else -1
        return out
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loops", default="uvloop,uringloop-io_uring,uringloop-epoll")
    ap.add_argument("--workloads", default="echo-1k-c100-protocol-tcp,echo-1k-c100-buffered-tcp")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--client-mode", choices=("epoll", "uring"), default="epoll")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", help="write every run's counts here")
    ap.add_argument(
        "--record",
        metavar="DIR",
        help="instead of counting: perf record -e cpu-clock -g the server into "
        "DIR/<workload>-<loop>-<rep>.data, then a table of where its time went",
    )
    ap.add_argument(
        "--record-side",
        choices=("server", "client"),
        default="server",
        help="--record's process: the server (default) or the client (wrk, loadgen)",
    )
    ap.add_argument(
        "--split-wakes",
        action="store_true",
        help="--record's table splits out the wake-ups paid in a send's softirq "
        "(try_to_wake_up, io_uring's poll wake, epoll's callback); on for the client",
    )
    ap.add_argument(
        "--symbols",
        default="",
        metavar="SYM,...",
        help="--record's table also gives, per request and as a share of the side's "
        "time, the samples with each of these functions anywhere in their stack",
    )
    ap.add_argument(
        "--from-json",
        metavar="FILE",
        help="run nothing: print the tables of an earlier run's --json (with --record and "
        "the same DIR: its profiles again, e.g. with other --symbols)",
    )
    ap.add_argument("--freq", type=int, default=4999, help="--record's sampling frequency (Hz)")
    ap.add_argument(
        "--event",
        default="cpu-clock",
        help="--record's event; another one (page-faults, exceptions:page_fault_user) is "
        "recorded at every occurrence and the table counts them per request, user-space "
        "samples split by their innermost function",
    )
    ap.add_argument(
        "--timers",
        action="store_true",
        help="also count futex calls, hrtimer starts, cancels and expiries, timer, "
        "reschedule and call-function interrupts, IPIs sent and MSR writes (the "
        "TSC deadline's apart) and reads per request (decision 747)",
    )
    ap.add_argument(
        "--heap",
        action="store_true",
        help="also read the server's glibc malloc state (mp_'s thresholds, the main "
        "arena's size and top chunk) with gdb after the warm-up client and after the run "
        "(needs glibc's debug symbols, Debian's libc6-dbg; decision 585)",
    )
    ap.add_argument(
        "--pads",
        default="0",
        help="start-up layouts: a nonexistent PYTHONPATH entry of each of these lengths "
        "(0: none), each a column of its own (decision 570)",
    )
    rsloop_env.add_option(ap)
    opts = ap.parse_args()
    opts.verify = True
    if opts.record:
        os.makedirs(opts.record, exist_ok=True)
    loops = [x for x in opts.loops.split(",") if x]
    wls = [
        w
        for w in net_bench.select_workloads(opts.workloads)
        if w["transport"] != "udp" and w["client"] in ("loadgen", "wrk")
    ]
    if not wls:
        sys.exit("kcounts: TCP and Unix workloads of loadgen or wrk only")
    if opts.heap and any(w["client"] == "wrk" for w in wls):
        sys.exit("kcounts: --heap is read on loadgen rows only, not on wrk's")
    opts.wrk = shutil.which("wrk")
    if not opts.wrk and any(w["client"] == "wrk" for w in wls):
        sys.exit("kcounts: wrk is not installed (apt-get install -y wrk)")
    pads = [int(x) for x in opts.pads.split(",") if x]
    cols = [(lp, pad) for pad in pads for lp in loops]
    runs = []
    if opts.from_json:
        # no runs: the tables of an earlier --json (with --record: its files)
        with open(opts.from_json) as f:
            runs = json.load(f)["runs"]
        wls = [w for w in wls if any(r["workload"] == w["id"] for r in runs)]
    else:
        opts.libc = rsloop_env.choose(opts.rsloop_env, "rsloop" in loops)
        net_bench.log(f"kcounts: {net_bench.libc_line(opts.libc)}")
        os.sched_setaffinity(0, {opts.client_cpu})
        net_bench.build_loadgen()
    with tempfile.TemporaryDirectory() as tmp:
        for wl in wls if not opts.from_json else ():
            for r in range(opts.reps):
                opts.rep = r
                for loop, pad in cols[r % len(cols) :] + cols[: r % len(cols)]:
                    res = run_one(wl, loop, opts, tmp, pad)
                    if len(pads) > 1:
                        loop = f"{loop} pad {pad}"
                    res.update(workload=wl["id"], loop=loop, rep=r)
                    runs.append(res)
                    net_bench.log(
                        f"{wl['id']} {loop} rep {r}: "
                        + (res["skip"] if "skip" in res else f"{res['completed']} requests")
                        + (f" -> {res['data']}" if "data" in res else "")
                    )
    if opts.json and not opts.from_json:
        with open(opts.json, "w") as f:
            json.dump({"loadavg": os.getloadavg(), "runs": runs}, f, indent=1)
    if len(pads) > 1:
        loops = [f"{lp} pad {pad}" for lp, pad in cols]
    if opts.record:
        split = opts.split_wakes or opts.record_side == "client"
        syms = [x for x in opts.symbols.split(",") if x]
        profile_report(runs, wls, loops, opts.event, opts.record_side, split, syms)
    else:
        report(runs, wls, loops)


# what a kernel stack spends its time on, first match from the leaf's side up
PARTS = (
    ("copy to user", ("_copy_to_iter",)),
    ("net_rx softirq", ("net_rx_action",)),
    ("uring task work: recv", ("io_recv", "io_recvmsg")),
    ("uring task work: other", ("io_poll_task_func", "__io_run_local_work", "tctx_task_work")),
    ("tcp_sendmsg", ("tcp_sendmsg",)),
    ("tcp_recvmsg", ("tcp_recvmsg",)),
    ("epoll", ("ep_poll", "do_epoll_wait", "do_epoll_ctl")),
)


# with --split-wakes (the default for --record-side client), tried before
# PARTS: the wake-up a socket's data (or ACK) pays for inside the softirq of
# the sender's syscall, by whom it wakes (decision 725)
WAKE_PARTS = (
    ("wake: try_to_wake_up", ("try_to_wake_up",)),
    ("wake: io_uring poll/task work", ("io_poll_wake", "__io_req_task_work_add")),
    ("wake: epoll callback", ("ep_poll_callback",)),
    ("wake: sock_def_readable, rest", ("sock_def_readable",)),
)


def classify(frames, split_user=False, parts=PARTS):
    """(syscall, part) of one sample's stack (leaf first: (sym, dso) pairs)."""
    if not frames or "kernel.kallsyms" not in frames[0][1]:
        if split_user and frames:
            return "user", next((s for s, d in frames if not s.startswith("[unknown]")), "?")
        return "user", ""
    syms = [f[0] for f in frames]
    call = "no syscall (irq, fault)"
    if "do_syscall_64" in syms:
        below = [x for x in syms[: syms.index("do_syscall_64")] if x != "x64_sys_call"]
        if below:
            call = below[-1]
            for prefix in ("__x64_sys_", "__do_sys_", "__se_sys_", "ksys_", "__sys_"):
                call = call.removeprefix(prefix)
    if call in ("recvfrom", "recvmsg", "read"):
        call = "recv (" + call + ")"
    elif call in ("sendto", "sendmsg", "write"):
        call = "send (" + call + ")"
    for part, names in parts:
        if any(sym in names for sym in syms):
            return call, part
    return call, "rest"


def profile(path, split_user=False, parts=PARTS, symbols=()):
    """{(syscall, part): ns, or events} from a perf record -g file, and
    {("contains", sym): ns} for each of `symbols` anywhere in a stack."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "period,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    acc = {}
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].strip().isdigit():
            continue
        period = int(lines[0])
        frames = []
        for ln in lines[1:]:
            fields = ln.strip().split(None, 1)
            if len(fields) < 2:
                continue
            sym, _, dso = fields[1].rpartition(" (")
            frames.append((sym, dso))
        key = classify(frames, split_user, parts)
        acc[key] = acc.get(key, 0) + period
        if symbols:
            inside = {f[0] for f in frames}
            for sym in symbols:
                if sym in inside:
                    acc[("contains", sym)] = acc.get(("contains", sym), 0) + period
    return acc


def profile_report(
    runs, wls, loops, event="cpu-clock", side="server", split_wakes=False, symbols=()
):
    clock = event == "cpu-clock"
    parts = WAKE_PARTS + PARTS if split_wakes else PARTS
    print(
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        + (
            f"{side} CPU (cpu-clock samples) per request, ns"
            if clock
            else f"{side} {event} per request (user-space ones by innermost function)"
        )
        + ", all reps pooled"
    )
    for wl in wls:
        got = {
            lp: [r for r in runs if r["workload"] == wl["id"] and r["loop"] == lp and "data" in r]
            for lp in loops
        }
        shown = [lp for lp in loops if got[lp]]
        table = {}
        for lp in shown:
            n = sum(r["completed"] for r in got[lp])
            for r in got[lp]:
                for key, ns in profile(r["data"], not clock, parts, symbols).items():
                    table.setdefault(key, {}).setdefault(lp, 0)
                    table[key][lp] += ns / n
        print(f"\n## {wl['id']}")
        print("| syscall | part | " + " | ".join(shown) + " |")
        print("|" + "---|" * (2 + len(shown)))
        incl = {k: table.pop(k) for k in list(table) if k[0] == "contains"}
        total = {lp: sum(v.get(lp, 0) for v in table.values()) for lp in shown}
        fmt = 0 if clock else 2
        for key in sorted(table, key=lambda k: -max(table[k].values())):
            vals = [table[key].get(lp, 0) for lp in shown]
            if max(vals) < (20 if clock else 0.05):
                continue
            print(f"| {key[0]} | {key[1]} | " + " | ".join(f"{v:.{fmt}f}" for v in vals) + " |")
        print("| all | | " + " | ".join(f"{total[lp]:.{fmt}f}" for lp in shown) + " |")
        if symbols:
            # a uniform slowdown of the side (a noisy host) moves every ns
            # figure; a path's share of the side's total does not
            print("\n| in the stack | " + " | ".join(f"{lp} (share)" for lp in shown) + " |")
            print("|" + "---|" * (1 + len(shown)))
            for sym in symbols:
                vals = [incl.get(("contains", sym), {}).get(lp, 0) for lp in shown]
                print(
                    f"| {sym} | "
                    + " | ".join(
                        f"{v:.{fmt}f} ({100 * v / total[lp] if total[lp] else 0:.1f} %)"
                        for v, lp in zip(vals, shown, strict=True)
                    )
                    + " |"
                )


def loadavg():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(runs, wls, loops):
    print(f"load average {loadavg()}; per request, medians over reps")
    for wl in wls:
        got = {
            lp: [
                r for r in runs if r["workload"] == wl["id"] and r["loop"] == lp and "skip" not in r
            ]
            for lp in loops
        }
        shown = [lp for lp in loops if got[lp]]
        if not shown:
            continue
        labels = list(got[shown[0]][0]["server"])
        print(
            f"\n## {wl['id']}  (requests: "
            + ", ".join(f"{lp} {sum(r['completed'] for r in got[lp])}" for lp in shown)
            + ")"
        )
        head = "| side | event | " + " | ".join(shown) + " |"
        print(head)
        print("|" + "---|" * (2 + len(shown)))
        for side in ("server", "client"):
            for label in labels:
                vals = [statistics.median(r[side].get(label, 0) for r in got[lp]) for lp in shown]
                if not any(vals):
                    continue
                fmt = ".0f" if label.startswith("glibc ") else ".3f"
                print(f"| {side} | {label} | " + " | ".join(f"{v:{fmt}}" for v in vals) + " |")


if __name__ == "__main__":
    main()
