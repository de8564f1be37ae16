"""Kernel event counts per request, server and client, loop by loop (decision 515).

    python benchmarks/kcounts.py          # echo-1k-c100, Protocol and BufferedProtocol, TCP
    python benchmarks/kcounts.py --loops uvloop,uringloop-io_uring --workloads echo-1k-c100-protocol
    python benchmarks/kcounts.py --reps 3 --record /tmp/prof   # where the server's CPU goes
    python benchmarks/kcounts.py --record /tmp/pf --event page-faults   # where it faults

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

Rows (per request):
  syscalls          raw_syscalls:sys_enter; indented below it, syscalls:sys_enter_<name>
                    for the SYSCALLS named (decision 551)
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


def events(port):
    """(label, tracepoint, filter or None) for a server on TCP port `port`
    (None: a Unix socket server, no tcp_probe rows)."""
    evs = [
        ("syscalls", "raw_syscalls:sys_enter", None),
        *[(f"  {name}", f"syscalls:sys_enter_{name}", None) for name in SYSCALLS],
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
    return [e for e in evs if port is not None or not e[1].startswith("tcp:")]


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


def run_one(wl, loop, opts, tmp, pad=0):
    server = net_bench.Server(loop, wl, opts.server_cpu, tmp, None, pad)
    try:
        if server.skip:
            return {"skip": server.skip}
        port = int(server.addr) if wl["transport"] == "tcp" else None
        evs = events(port)
        net_bench.warm_connection(wl, server, opts)
        heap0 = heapstate.mp_state(server.proc.pid) if opts.heap else None
        sout, cout = os.path.join(tmp, "server.perf"), os.path.join(tmp, "client.perf")
        if opts.record:
            tag = f"{loop}-pad{pad}" if pad else loop
            data = os.path.join(opts.record, f"{wl['id']}-{tag}-{opts.rep}.data")
            targs = [
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
    ap.add_argument("--freq", type=int, default=4999, help="--record's sampling frequency (Hz)")
    ap.add_argument(
        "--event",
        default="cpu-clock",
        help="--record's event; another one (page-faults, exceptions:page_fault_user) is "
        "recorded at every occurrence and the table counts them per request, user-space "
        "samples split by their innermost function",
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
    opts = ap.parse_args()
    opts.verify = True
    if opts.record:
        os.makedirs(opts.record, exist_ok=True)
    loops = [x for x in opts.loops.split(",") if x]
    wls = [w for w in net_bench.select_workloads(opts.workloads) if w["transport"] != "udp"]
    if not wls:
        sys.exit("kcounts: TCP and Unix echo workloads only")
    pads = [int(x) for x in opts.pads.split(",") if x]
    cols = [(lp, pad) for pad in pads for lp in loops]
    os.sched_setaffinity(0, {opts.client_cpu})
    net_bench.build_loadgen()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for wl in wls:
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
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"loadavg": os.getloadavg(), "runs": runs}, f, indent=1)
    if len(pads) > 1:
        loops = [f"{lp} pad {pad}" for lp, pad in cols]
    if opts.record:
        profile_report(runs, wls, loops, opts.event)
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


def classify(frames, split_user=False):
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
    for part, names in PARTS:
        if any(sym in names for sym in syms):
            return call, part
    return call, "rest"


def profile(path, split_user=False):
    """{(syscall, part): ns, or events} from a perf record -g file."""
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
            parts = ln.strip().split(None, 1)
            if len(parts) < 2:
                continue
            sym, _, dso = parts[1].rpartition(" (")
            frames.append((sym, dso))
        key = classify(frames, split_user)
        acc[key] = acc.get(key, 0) + period
    return acc


def profile_report(runs, wls, loops, event="cpu-clock"):
    clock = event == "cpu-clock"
    print(
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        + (
            "server CPU (cpu-clock samples) per request, ns"
            if clock
            else f"server {event} per request (user-space ones by innermost function)"
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
                for key, ns in profile(r["data"], not clock).items():
                    table.setdefault(key, {}).setdefault(lp, 0)
                    table[key][lp] += ns / n
        print(f"\n## {wl['id']}")
        print("| syscall | part | " + " | ".join(shown) + " |")
        print("|" + "---|" * (2 + len(shown)))
        total = {lp: sum(v.get(lp, 0) for v in table.values()) for lp in shown}
        fmt = 0 if clock else 2
        for key in sorted(table, key=lambda k: -max(table[k].values())):
            vals = [table[key].get(lp, 0) for lp in shown]
            if max(vals) < (20 if clock else 0.05):
                continue
            print(f"| {key[0]} | {key[1]} | " + " | ".join(f"{v:.{fmt}f}" for v in vals) + " |")
        print("| all | | " + " | ".join(f"{total[lp]:.{fmt}f}" for lp in shown) + " |")


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
