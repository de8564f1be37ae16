"""Where an idle connection's memory goes: tracemalloc over N accepted connections.

    python benchmarks/idle_breakdown.py [--loop uringloop-io_uring] [-n 2000]

Serves the protocol echo server of net_server.py on one loop, opens N
connections with the C load generator (``loadgen --idle``: one round trip
each, then held; build it with net_bench.py first), and prints the RSS and
the Python allocations per connection, by the line that made them (most
recent frame first). C allocations (the engine's op and fd tables, the pool)
show in the RSS only. A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import net_server  # noqa: E402  (after the path set-up above)

LOADGEN = os.path.join(HERE, "_build", "loadgen")


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def serve(n, transports):
    loop = asyncio.get_running_loop()

    class Keep(net_server.Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            transports.append(transport)

    server = await loop.create_server(Keep, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gc.collect()
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    rss0 = rss_kib()
    cli = subprocess.Popen(
        [LOADGEN, "--tcp", f"127.0.0.1:{port}", "-c", str(n), "-s", "16", "--idle"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = await loop.run_in_executor(None, cli.stdout.readline)
    await asyncio.sleep(0.3)
    gc.collect()
    rss1 = rss_kib()
    after = tracemalloc.take_snapshot()
    print(f"{line.decode().strip()}: {len(transports)} connections")
    print(f"RSS {(rss1 - rss0) / n:.2f} KiB per connection (tracemalloc's own share included)")
    stats = after.compare_to(before, "traceback")
    total = sum(s.size_diff for s in stats)
    print(f"Python allocations {total / n:.0f} bytes per connection")
    for s in stats[:20]:
        if s.size_diff < n * 8:
            continue
        frames = list(s.traceback)[::-1][:4]
        where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in frames)
        print(f"  {s.size_diff / n:7.1f} B {s.count_diff / n:5.2f} objects  {where}")
    cli.stdin.close()
    cli.wait(timeout=60)
    for t in transports:
        t.close()
    server.close()
    await server.wait_closed()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", default="uringloop-io_uring", choices=net_server.LOOPS)
    ap.add_argument("-n", type=int, default=2000, help="connections (2000)")
    opts = ap.parse_args()
    if not os.path.exists(LOADGEN):
        sys.exit(f"idle_breakdown: {LOADGEN} is missing: run benchmarks/net_bench.py once")
    loop = net_server.make_loop(opts.loop)
    try:
        loop.run_until_complete(serve(opts.n, []))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
