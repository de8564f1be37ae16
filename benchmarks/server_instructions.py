#!/usr/bin/env python3
"""User instructions per request of a server that sleeps between requests.

instructions.py runs both ends of a scenario in one loop, which never sleeps.
This runs net_server.py's sock echo (``sock_recv(conn, 65536)`` then
``sock_sendall``) alone under ``valgrind --tool=callgrind``, one connection
over a Unix socket, driven from this process by a blocking client that sends
1 KiB, reads the echo back, and pauses ``--gap`` ms before the next message
(so that every receive of the server is asked for before its data comes, as
with loadgen at c=1: without the pause the client, at native speed, always
has the next message waiting for the slowed-down server, and a loop that
tries ``recv`` first never waits). N and 2N requests, the difference over N:
start-up cancelled out. Kernel time is not counted (callgrind's Ir is user
space); count syscalls with perf or strace (net_bench.py --strace).

    python benchmarks/server_instructions.py --loop rloop --loop uringloop-io_uring
    python benchmarks/server_instructions.py --loop uringloop-epoll --breakdown 25

Needs valgrind. A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import instructions  # noqa: E402  (after the path set-up above)

SERVER = r"""
import os, socket, sys
sys.path.insert(0, {here!r})
import net_server
loop = net_server.make_loop({loop!r})
ls = socket.socket(socket.AF_UNIX)
ls.bind({path!r})
ls.listen(1)
ls.setblocking(False)
print("READY", flush=True)

async def main():
    conn, _ = await loop.sock_accept(ls)
    conn.setblocking(False)
    await net_server.sock_client(loop, conn)

loop.run_until_complete(main())
loop.close()
"""


def count(loop: str, n: int, gap: float, tmp: str, size: int = 1024) -> tuple[int, str]:
    """callgrind's total for a server run of n requests, and its output file."""
    path = os.path.join(tmp, f"s.{n}")
    out = os.path.join(tmp, f"cg.{loop}.{n}.out")
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=ROOT)
    srv = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            SERVER.format(here=HERE, loop=loop, path=path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        line = srv.stdout.readline()
        if not line.startswith(b"READY"):
            raise RuntimeError(f"{loop}: the server did not start ({line!r})")
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(60)
        c.connect(path)
        msg = os.urandom(size)
        for _ in range(n):
            time.sleep(gap)
            c.sendall(msg)
            got = b""
            while len(got) < size:
                piece = c.recv(65536)
                if not piece:
                    raise RuntimeError(f"{loop}: the server closed early")
                got += piece
            if got != msg:
                raise RuntimeError(f"{loop}: the echo differs")
        c.close()
        srv.wait(timeout=120)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]), out
    raise RuntimeError(f"{loop}: no total in {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loop", action="append", help="net_server.py's loop names (repeatable)")
    ap.add_argument("-n", type=int, default=500, help="requests of the short run (the long: 2n)")
    ap.add_argument("--gap", type=float, default=3.0, help="ms the client waits before a message")
    ap.add_argument("--breakdown", type=int, default=0, metavar="K")
    opts = ap.parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind is not installed", file=sys.stderr)
        return 2
    loops = opts.loop or ["uvloop", "rloop", "uringloop-io_uring", "uringloop-epoll"]
    for lp in loops:
        with tempfile.TemporaryDirectory(prefix="srvinstr-") as tmp:
            small, p1 = count(lp, opts.n, opts.gap / 1000, tmp)
            big, p2 = count(lp, 2 * opts.n, opts.gap / 1000, tmp)
            print(f"{lp:22} {(big - small) / opts.n:10,.0f} instructions per request", flush=True)
            for name, per in instructions.breakdown((p1, p2), opts.n, opts.breakdown):
                print(f"    {per:9,.0f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
