#!/usr/bin/env python3
"""Parent-side CPU instructions per MiB read from a child's pipe: the
noise-free companion to subprocess_bench.py's pipe rows.

A child (``dd``, not traced) writes M MiB of zeros in 64 KiB blocks; the
parent reads them through ``create_subprocess_exec(stdout=PIPE)`` and
``read(1 MiB)`` (subprocess_bench.py's consumer), under ``valgrind
--tool=callgrind``, once with 16 and once with 48 MiB: the difference over 32
is one MiB's cost, start-up cancelled out. Reported apart: memcpy (callgrind
counts ``rep movsb`` once per byte, so copies weigh far more here than on the
CPU; the other loops copy each byte three times in user space: into the
chunk, into the StreamReader's buffer, out of it; uringloop's pipe transport
twice, as read(2) fills the chunk itself, design.md decision 365) and
everything else, the
loop's and the consumer's work per chunk. Kernel work (the pipe copies, page
faults) is not counted: see subprocess_bench.py's CPU ms/MiB for that.

    python benchmarks/pipe_instructions.py --loop uvloop --loop io_uring --loop epoll

Under valgrind the parent is slow, so the child keeps the pipe full and each
turn brings what the pipe holds. The child is not waited for (see CHILD). This
is a report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import asyncio, os, sys
sys.path.insert(0, {here!r})
from subprocess_bench import make_loop

async def main(mib):
    proc = await asyncio.create_subprocess_exec(
        "dd", "if=/dev/zero", "bs=65536", f"count={{mib * 16}}", "status=none",
        stdout=asyncio.subprocess.PIPE)
    total = chunks = 0
    while True:
        chunk = await proc.stdout.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        chunks += 1
    assert total == mib << 20, total
    print("READS", chunks, flush=True)

loop = make_loop({loop!r})
loop.run_until_complete(main({mib}))
# no proc.wait(): valgrind 3.19 refuses pidfd_open (ENOSYS), so the loop
# falls back to the stock watcher thread, which cannot run while the main
# thread waits in io_uring_enter under valgrind's lock (it hangs)
os._exit(0)
"""


def count(loop: str, mib: int) -> tuple[int, int, int]:
    """(instructions, of them in memcpy, read() calls) of one traced run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-c", CHILD.format(here=HERE, loop=loop, mib=mib)],
            capture_output=True, text=True, timeout=900,
        )
        ir = re.search(r"Collected : (\d+)", proc.stderr)
        reads = re.search(r"^READS (\d+)", proc.stdout, re.M)
        if proc.returncode != 0 or not ir or not reads:
            raise RuntimeError(f"{loop} failed:\n{proc.stdout}\n{proc.stderr[-2000:]}")
        ann = subprocess.run(["callgrind_annotate", out], capture_output=True, text=True).stdout
        mem = sum(int(m.group(1).replace(",", ""))
                  for m in re.finditer(r"^\s*([\d,]+) \([\d.]+%\)\s+\S*memmove-vec", ann, re.M))
        return int(ir.group(1)), mem, int(reads.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", action="append", help="uvloop, rloop, stock, io_uring, epoll")
    args = ap.parse_args(argv)
    loops = args.loop or ["stock", "uvloop", "rloop", "io_uring", "epoll"]
    print("instructions per MiB read from a child's pipe (parent only, user space)")
    print(f"  {'loop':10} {'total':>10} {'memcpy':>10} {'other':>10} {'reads/MiB':>10}")
    for loop in loops:
        try:
            a, am, ar = count(loop, 16)
            b, bm, br = count(loop, 48)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"  {loop:10} failed: {str(exc).splitlines()[0]}")
            continue
        print(f"  {loop:10} {(b - a) // 32:10} {(bm - am) // 32:10} "
              f"{(b - a - bm + am) // 32:10} {(br - ar) / 32:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
