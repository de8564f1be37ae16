#!/usr/bin/env python3
"""Waits, kernel entries, context switches and syscalls per short-lived
connection of a server (issue 9; decision 845).

conn_instructions.py's exchanges (`--kind protocol`: a `--size`-byte echo,
the client closes first; `--kind httptools`, with `--server-close` the
conn-http-httptools row's GET with `Connection: close`, the server closing
after its answer), one at a time with `--gap` ms between them or `--conc C`
open at once (no gap), against net_server.py's server on loopback TCP,
natively: no valgrind. The server runs with coldwait.so preloaded (built
from coldwait.c into the run's directory), which counts, with no syscall of
its own, every wait that may block (`io_uring_enter` through `syscall()`
with GETEVENTS and a min_complete, `epoll_wait`/`epoll_pwait` with a
timeout other than 0) and every call of those kinds. Per connection:

  waits     coldwait's count of the waits that may block
  enters    every io_uring_enter, epoll_wait and epoll_pwait
  vcsw      voluntary context switches of the server (every thread's
            /proc/PID/task/*/status): the waits that did sleep
  ivcsw     involuntary ones (the host's other tasks)
  engine    uringloop's engine_stats() (enters, waits, submitted, records,
            cqes), asked of the server over its stdin
  syscalls  with --strace: `strace -c -f` attached to the server over the
            windows, by name (its stops then count in vcsw, and a slower
            server waits less often: read those from a run without it)

Two windows of one server, after `--warmup` connections: N connections,
then 2N, each between two snapshots taken while the server sleeps in its
wait (the stats request, which wakes the server, is outside both); the
figures are both windows' counts over their 3N connections (strace's attach
and detach, a few calls a window, stay in them). Counts, not times:
nothing is timed.

    python benchmarks/conn_counts.py --loop uringloop-io_uring --loop uringloop-epoll --loop uvloop
    python benchmarks/conn_counts.py --kind httptools --server-close --conc 50 --strace

A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import conn_instructions  # noqa: E402  (after the path set-up above)
import server_instructions  # noqa: E402

SERVER = r"""
import argparse, asyncio, json, os, sys
sys.path.insert(0, {here!r})
import net_server
loop = net_server.make_loop({loop!r})
asyncio.set_event_loop(loop)
args = argparse.Namespace(kind={kind!r}, unix=None, tcp=0, cert=None, key=None)
addr = loop.run_until_complete(net_server.serve(loop, args))
def command():
    # a line on stdin: print the engine's counters; its EOF: stop
    if not os.read(0, 4096):
        loop.stop()
        return
    st = getattr(loop, "engine_stats", None)
    print("STATS", json.dumps(dict(st()) if st else {{}}), flush=True)
loop.add_reader(0, command)
print("READY", addr[1], flush=True)
loop.run_forever()
os._exit(0)
"""

ENGINE_KEYS = ("enters", "waits", "submitted", "records", "cqes")


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of pid."""
    vol = invol = 0
    for path in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return vol, invol


def read_waits(path: str) -> tuple[int, int]:
    """coldwait's (waits, calls): 0, 0 before the first wait wrote them."""
    try:
        with open(path) as f:
            parts = f.read().split()
    except FileNotFoundError:
        return 0, 0
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else (0, 0)


def strace_summary(path: str) -> dict[str, int]:
    """`strace -c`'s table: calls by syscall name."""
    calls: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5 or not parts[0][0].isdigit() or parts[-1] == "total":
                continue
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    return calls


class Server:
    """net_server.py's `kind` server on `loop`, coldwait.so preloaded."""

    def __init__(self, loop: str, kind: str, tmp: str):
        self.log = os.path.join(tmp, f"coldwait.{loop}.log")
        env = dict(
            os.environ,
            PYTHONHASHSEED="0",
            LD_PRELOAD=server_instructions.coldwait_so(tmp),
            COLDWAIT_LOG=self.log,
        )
        if server_instructions.checkout_is_built():
            env["PYTHONPATH"] = ROOT
        else:
            # no build of the checkout for this interpreter (a clone that was
            # pip-installed, as CI's): the installed package, never the
            # checkout's unbuilt half (decision 852's rule)
            env.pop("PYTHONPATH", None)
        cwd = os.path.join(tmp, "cwd")
        os.makedirs(cwd, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER.format(here=HERE, loop=loop, kind=kind)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        line = self.proc.stdout.readline().split()
        if line[:1] != [b"READY"]:
            self.close()
            raise RuntimeError(f"{loop}: the server did not start ({line!r})")
        self.port = int(line[1])

    def engine(self) -> dict:
        self.proc.stdin.write(b"stats\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith(b"STATS "):
            raise RuntimeError(f"no stats from the server: {line!r}")
        return json.loads(line[6:])

    def counts(self, settle: float) -> dict:
        """The counters that do not wake the server, read once it sleeps."""
        time.sleep(settle)
        waits, calls = read_waits(self.log)
        vol, invol = switches(self.proc.pid)
        return {"waits": waits, "enters": calls, "vcsw": vol, "ivcsw": invol}

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def window(srv: Server, client, n: int, settle: float, trace: str | None) -> dict:
    """The counts of n connections: the server's engine asked before the
    first snapshot (its wake-up is not in the window) and after the second."""
    eng0 = srv.engine()
    before = srv.counts(settle)
    tracer = None
    if trace is not None:
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-q", "-o", trace, "-p", str(srv.proc.pid)],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(settle)  # attached (strace -q says nothing when it is)
    client(n)
    after = srv.counts(settle)
    out = {k: after[k] - before[k] for k in after}
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
        for name, c in strace_summary(trace).items():
            out["sys " + name] = c
    eng1 = srv.engine()
    for k in ENGINE_KEYS:
        if k in eng0 and k in eng1:
            out["engine " + k] = eng1[k] - eng0[k]
    return out


def measure(
    loop: str,
    kind: str,
    n: int,
    conc: int,
    gap: float,
    size: int,
    server_close: bool,
    warmup: int,
    strace: bool,
    tmp: str,
    settle: float = 0.3,
) -> dict:
    """Counts per connection: the n and 2n windows over their 3n connections."""
    http = kind == "httptools"
    sc = server_close and http
    srv = Server(loop, kind, tmp)
    try:

        def client(k: int) -> None:
            if conc > 1:
                conn_instructions.drive_conc(srv.port, k, conc, size, http, sc)
            else:
                conn_instructions.drive(srv.port, k, size, gap, http, sc)

        client(warmup)
        w1 = window(srv, client, n, settle, os.path.join(tmp, "st1") if strace else None)
        w2 = window(srv, client, 2 * n, settle, os.path.join(tmp, "st2") if strace else None)
    finally:
        srv.close()
    # both windows pooled: the snapshots' wake-ups are outside them, and at many
    # connections at once a window's count moves with how the turns batched,
    # which a difference of two windows would only add up
    return {k: (w1.get(k, 0) + w2.get(k, 0)) / (3 * n) for k in sorted(set(w1) | set(w2))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loop", action="append", help="net_server.py's loop names (repeatable)")
    ap.add_argument("--kind", default="protocol", choices=("protocol", "httptools"))
    ap.add_argument("-n", type=int, default=500, help="connections of the first window")
    ap.add_argument("--size", type=int, default=1024, help="the echo's message (not httptools)")
    ap.add_argument("--gap", type=float, default=2.0, help="ms between connections (--conc 1)")
    ap.add_argument("--conc", type=int, default=1, help="connections open at once (no gap)")
    ap.add_argument("--warmup", type=int, default=50, help="connections before the windows")
    ap.add_argument(
        "--server-close",
        action="store_true",
        help="httptools: the row's GET (Connection: close), the server closes first",
    )
    ap.add_argument("--strace", action="store_true", help="also syscalls by name (strace -c -f)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args(argv)
    if a.strace and not shutil.which("strace"):
        ap.error("strace is not installed")
    loops = a.loop or ["uvloop", "uringloop-io_uring", "uringloop-epoll"]
    what = a.kind + (" server-close" if a.server_close and a.kind == "httptools" else "")
    print(f"{what}, c={a.conc}, n={a.n}" + (f", gap {a.gap:g} ms" if a.conc == 1 else ""))
    results = {}
    for loop in loops:
        with tempfile.TemporaryDirectory(prefix="conn_counts.") as tmp:
            per = measure(
                loop,
                a.kind,
                a.n,
                a.conc,
                a.gap / 1000,
                a.size,
                a.server_close,
                a.warmup,
                a.strace,
                tmp,
            )
        results[loop] = per
        head = ("waits", "enters", "vcsw", "ivcsw")
        print(f"{loop:20}" + "".join(f"  {k} {per.get(k, 0):.2f}" for k in head), flush=True)
        eng = [k for k in per if k.startswith("engine ")]
        if eng:
            print(" " * 20 + "".join(f"  {k} {per[k]:.2f}" for k in eng), flush=True)
        sysc = sorted((k for k in per if k.startswith("sys ")), key=lambda k: -per[k])
        if sysc:
            total = sum(per[k] for k in sysc)
            print(
                " " * 20
                + f"  syscalls {total:.2f}:"
                + "".join(f" {k[4:]} {per[k]:.2f}" for k in sysc if abs(per[k]) >= 0.005),
                flush=True,
            )
    if a.json:
        conf = {
            "kind": a.kind,
            "server_close": a.server_close,
            "conc": a.conc,
            "n": a.n,
            "gap_ms": a.gap,
            "strace": a.strace,
        }
        with open(a.json, "w") as f:
            json.dump({"config": conf, "per_connection": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
