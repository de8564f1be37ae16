"""Where an idle connection's memory goes: tracemalloc over N accepted connections.

    python benchmarks/idle_breakdown.py [--loop uringloop-io_uring] [-n 2000]

Serves the protocol echo server of net_server.py on one loop, opens N
connections with the C load generator (``loadgen --idle``: one round trip
each, then held; build it with net_bench.py first), and prints the RSS and
the Python allocations per connection, by the line that made them (most
recent frame first), and by block size (an object and its attribute values
array are two blocks); then what outside the Python heap grew (each mapping
of /proc/self/smaps, by its start: the engine's op chunks are in glibc's
heap, its fd table a mapping of its own), the engine's counts and the stream
pool's resident pages (mincore). A report: nothing is asserted (decision
983).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import mmap
import os
import subprocess
import sys
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import net_server  # noqa: E402  (after the path set-up above)

LOADGEN = os.path.join(HERE, "_build", "loadgen")


def smaps():
    """{(start, name): resident KiB} of every mapping."""
    out, cur = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                cur = (int(parts[0].split("-")[0], 16), parts[5] if len(parts) > 5 else "")
            elif parts and parts[0] == "Rss:":
                out[cur] = int(parts[1])
    return out


def pool_pages(loop):
    """The stream pool's resident pages (mincore), or None (not uringloop)."""
    eng = getattr(loop, "_engine", None)
    if eng is None:
        return None
    from uringloop._engine_cffi import ffi

    from uringloop import engine

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    base = int(ffi.cast("uintptr_t", engine.lib.ul_pool(eng._e)))
    size = eng.info()["buf_count"] * eng.info()["buf_size"]
    vec = ctypes.create_string_buffer(size // mmap.PAGESIZE)
    if libc.mincore(base, size, vec) != 0:
        return None
    return sum(b & 1 for b in vec.raw)


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
    maps0 = smaps()
    cli = subprocess.Popen(
        [LOADGEN, "--tcp", f"127.0.0.1:{port}", "-c", str(n), "-s", "16", "--idle"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = await loop.run_in_executor(None, cli.stdout.readline)
    await asyncio.sleep(0.3)
    gc.collect()
    rss1 = rss_kib()
    maps1 = smaps()
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
    sizes = collections.Counter(t.size for t in after.traces)
    sizes.subtract(t.size for t in before.traces)
    print("Python blocks kept, by size (as asked for; pymalloc rounds up to 16):")
    for size, count in sorted(sizes.items(), key=lambda x: -x[0] * x[1]):
        if count >= n // 4:
            print(f"  {size:5d} B x {count / n:4.2f} = {size * count / n:6.1f} B per connection")
    print("Mappings that grew (resident KiB; tracemalloc's own tables are in [heap]):")
    grown = {k: kib - maps0.get(k, 0) for k, kib in maps1.items()}
    for (start, name), grew in sorted(grown.items(), key=lambda x: -x[1]):
        if grew >= 64:
            per = grew * 1024 / n
            print(f"  {name or hex(start):24s} {grew:7d} KiB {per:6.1f} B per connection")
    eng = getattr(asyncio.get_running_loop(), "_engine", None)
    if eng is not None:
        st = eng.stats()
        print(
            f"Engine: {st['in_flight']} ops of {eng.info()['op_bytes']} B, "
            f"{st['fd_entries']} fd entries, pool: {st['pool_resident']} buffers counted "
            f"resident, {pool_pages(asyncio.get_running_loop())} pages resident"
        )
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
