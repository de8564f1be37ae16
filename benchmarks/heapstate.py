"""Which frees move glibc's dynamic malloc thresholds in a benchmark server (decision 584).

    python benchmarks/heapstate.py --loops uringloop-io_uring,uringloop-epoll \\
        --workloads echo-100k-c10-streams-tcp,echo-100k-c10-streams-unix --pads 0,7

glibc raises its mmap threshold to the size of an mmapped block that is freed
while larger than the threshold, and its trim threshold to twice that (its
`free`, unless a threshold was set explicitly). Each run starts net_server.py
under gdb with a hardware watchpoint on `mp_.mmap_threshold` (needs gdb and
glibc's debug symbols, Debian's libc6-dbg), makes the row's one-connection
warm-up client and a short measured client (--duration), and prints every
change of the threshold: its new value (the freed block's size), the C frames
that freed it and the innermost Python frames (`_Py_DumpTraceback` called from
gdb), and the thresholds the run ended with. --pads adds a nonexistent
PYTHONPATH entry of each length (decision 570's start-up layouts).
`mp_state(pid)` reads a running process's thresholds, arena size and top
chunk with `gdb -p` (kcounts.py --heap).
A report: nothing is asserted.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import net_bench  # noqa: E402
import rsloop_env  # noqa: E402
from net_bench import pad_entry  # noqa: E402  (kcounts and the tests use it from here too)

GDB_SCRIPT = """\
set pagination off
set confirm off
set breakpoint pending on
set print thread-events off
set print inferior-events off
handle SIGPIPE SIGUSR1 SIGUSR2 SIGCHLD nostop noprint pass
break main
run
delete
watch -l mp_.mmap_threshold
commands
  silent
  printf "HIT %lu\\n", mp_.mmap_threshold
  bt 8
  call (void)_Py_DumpTraceback(1, (void*)PyGILState_GetThisThreadState())
  printf "ENDHIT\\n"
  continue
end
continue
"""


def server_command(loop, wl, cpu, tmp, pad, libc=None):
    """net_server.py's argv and environment, as net_bench.Server starts it:
    this Python, or (libc: --rsloop-env's manifest) this Python through that
    environment's glibc loader with rsloop's site on the path (decision
    841). gdb then debugs the loader, which maps the environment's glibc:
    the watchpoint and mp_state need that glibc's debug symbols, which the
    environment does not carry (gdb says so, and no change is seen)."""
    launch, extra_path = net_bench.server_launch(libc)
    args = launch + [net_bench.SERVER, "--loop", loop, "--kind", wl["kind"]]
    args += ["--cpu", str(cpu)]
    if wl["transport"] == "unix":
        args += ["--unix", os.path.join(tmp, f"s{time.monotonic_ns()}.sock")]
    else:
        args += ["--tcp", "0"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (net_bench.ROOT, pad_entry(pad), *extra_path) if p
    )
    env.pop("URINGLOOP_BACKEND", None)
    return args, env


class GdbServer:
    """net_server.py under gdb; .addr as net_bench.Server's, .log the gdb output."""

    def __init__(self, loop, wl, cpu, tmp, pad, libc=None):
        self.log = os.path.join(tmp, f"gdb-{time.monotonic_ns()}.log")
        script = os.path.join(tmp, "watch.gdb")
        with open(script, "w") as f:
            f.write(GDB_SCRIPT)
        args, env = server_command(loop, wl, cpu, tmp, pad, libc)
        self.out = open(self.log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["gdb", "-q", "-batch", "-x", script, "--args", *args],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.addr = self.skip = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.addr is None and self.skip is None:
            time.sleep(0.2)
            m = re.search(r"^(READY|SKIP) (.+)$", open(self.log).read(), re.M)
            if m and m.group(1) == "READY":
                self.addr = m.group(2)
            elif m:
                self.skip = m.group(2)
        if self.addr is None and self.skip is None:
            self.stop()
            raise RuntimeError(f"{loop} did not start under gdb: {open(self.log).read()[-2000:]}")

    def inferior(self):
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            kids = f.read().split()
        return int(kids[0])

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.inferior(), signal.SIGKILL)
            except (OSError, IndexError):
                pass
            self.proc.kill()
        self.proc.wait()
        self.out.close()


def mp_state(pid):
    """glibc's mp_ and the heap's size of a running process, read with gdb."""
    out = subprocess.run(
        [
            "gdb",
            "-q",
            "-batch",
            "-p",
            str(pid),
            "-ex",
            'printf "MP %lu %lu %d %lu\\n", mp_.mmap_threshold, mp_.trim_threshold, '
            "mp_.no_dyn_threshold, main_arena.system_mem",
            "-ex",
            'printf "TOP %lu\\n", main_arena.top->mchunk_size & ~7',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    m = re.search(r"^MP (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    t = re.search(r"^TOP (\d+)$", out, re.M)
    if not m:
        return None
    return {
        "mmap_threshold": int(m.group(1)),
        "trim_threshold": int(m.group(2)),
        "no_dyn_threshold": int(m.group(3)),
        "heap": int(m.group(4)),
        "top": int(t.group(1)) if t else None,
    }


def hits(log):
    """[(offset, threshold, C frames, Python frames)] from a GdbServer log."""
    out = []
    for m in re.finditer(r"^HIT (\d+)\n(.*?)^ENDHIT$", log, re.M | re.S):
        size, body = int(m.group(1)), m.group(2)
        cframes = re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", body, re.M)
        py = re.findall(r'^  File "([^"]+)", line (\d+) in (\S+)$', body, re.M)
        py = [f"{os.path.basename(f)}:{ln} {fn}" for f, ln, fn in py if "<frozen" not in f]
        out.append((m.start(), size, cframes, py))
    return out


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loops", default="uvloop,rloop,uringloop-io_uring,uringloop-epoll")
    ap.add_argument("--workloads", default="echo-100k-c10-streams-tcp,echo-100k-c10-streams-unix")
    ap.add_argument("--pads", default="0", help="PYTHONPATH padding lengths, comma-separated")
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--client-mode", choices=("epoll", "uring"), default="epoll")
    ap.add_argument("--frames", type=int, default=3, help="Python frames shown per change")
    rsloop_env.add_option(ap)
    opts = ap.parse_args()
    opts.verify = True
    opts.warmup = 0.0
    net_bench.build_loadgen()
    loops = [x for x in opts.loops.split(",") if x]
    libc = rsloop_env.choose(opts.rsloop_env, "rsloop" in loops)
    print(f"heapstate: {net_bench.libc_line(libc)}", flush=True)
    pads = [int(x) for x in opts.pads.split(",") if x]
    with tempfile.TemporaryDirectory() as tmp:
        for wl in net_bench.select_workloads(opts.workloads):
            for pad in pads:
                for loop in loops:
                    srv = GdbServer(loop, wl, opts.server_cpu, tmp, pad, libc)
                    try:
                        if srv.skip:
                            print(f"\n## {wl['id']} {loop} pad {pad}: skipped, {srv.skip}")
                            continue
                        net_bench.warm_connection(wl, srv, opts)
                        cli = subprocess.run(
                            net_bench.loadgen_args(wl, srv, opts),
                            capture_output=True,
                            preexec_fn=net_bench.pin(opts.client_cpu),
                            timeout=opts.duration + 60,
                        )
                        if cli.returncode != 0:
                            err = cli.stderr.decode(errors="replace").strip()[-300:]
                            print(f"\n## {wl['id']} {loop} pad {pad}: loadgen failed, {err}")
                            continue
                        time.sleep(0.3)
                        log = open(srv.log).read()
                        ready = log.index("READY ")
                        print(f"\n## {wl['id']} {loop} pad {pad}")
                        last = 131072  # glibc's default
                        for at, size, cframes, py in hits(log):
                            last = size
                            when = "start-up" if at < ready else "serving"
                            print(
                                f"  {when}: mmap_threshold -> {size} (trim {2 * size}); "
                                f"{' < '.join(cframes[1:4])}; "
                                + (" < ".join(py[: opts.frames]) or "(no Python frame)")
                            )
                        trim = 2 * last if last != 131072 else 131072
                        print(f"  after the run: mmap_threshold {last}, trim {trim}")
                    finally:
                        srv.stop()
    print()


if __name__ == "__main__":
    main()
