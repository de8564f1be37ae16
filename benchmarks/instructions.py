#!/usr/bin/env python3
"""CPU instructions per operation, side by side: a noise-free companion to loop_bench.py.

The machines are shared and their timings swing by ±30 %; instruction counts do
not. Each scenario of loop_bench.py runs under ``valgrind --tool=callgrind`` in
a child process twice, with N and 2N operations, on each loop; the difference
of the two totals over N is the cost of one operation with start-up, imports
and set-up cancelled out. Counts are instructions executed (callgrind's Ir),
kernel time excluded, so syscalls count only their user-side instructions: for
the socket scenarios use loop_bench.py's timings as well.

    python benchmarks/instructions.py                      # all scenarios, all loops
    python benchmarks/instructions.py --scenario sleep0 --loop uvloop --loop io_uring
    python benchmarks/instructions.py --scenario http_httptools16 --loop io_uring --breakdown 25

``--breakdown K`` also prints, per loop, the K functions whose own (exclusive)
instructions grew most per op between the two runs (callgrind_annotate).

Needs valgrind (``apt-get install valgrind``). This is a report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loop_bench  # noqa: E402  (after the path set-up above)

# N per scenario: small, since callgrind runs Python about 50x slower
COUNTS = {
    "call_soon": 20_000,
    "chain": 20_000,
    "call_later": 10_000,
    "timer_churn": 20_000,
    "create_task": 10_000,
    "sleep0": 16_000,
    "future": 10_000,
    "pingpong": 2_000,
    "pingpong16": 3_200,
    "sock_1k_pingpong": 2_000,
    "sock_100k_pingpong4": 400,
    "stream_pingpong16": 3_200,
    "buffered_pingpong16": 3_200,
    "streams_pingpong16": 3_200,
    "stream_100k_pingpong4": 400,
    "buffered_100k_pingpong4": 400,
    "streams_100k_pingpong4": 400,
    "http_httptools16": 1_600,
    "http_aiohttp16": 800,
    "tls_pingpong16": 800,
    "udp_pingpong": 2_000,
    "udp_pingpong16": 3_200,
    "udp_pingpong_1k": 2_000,
    "udp_pingpong16_1k": 3_200,
    "udp_flood": 4_000,
}

CHILD = """
import sys
sys.path.insert(0, {here!r})
import loop_bench
loop_bench._import_loops()
ops, _, _ = loop_bench.run_once({loop!r}, loop_bench.SCENARIOS[{scen!r}], {n})
print("OPS", ops)
"""


def count(loop: str, scen: str, n: int, keep: str | None = None) -> tuple[int, int]:
    """(instructions, ops) of one child run under callgrind; keep: copy the
    callgrind output there."""
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-c", CHILD.format(here=HERE, loop=loop, scen=scen, n=n)],
            capture_output=True, text=True, timeout=1800,
        )
        ops = re.search(r"^OPS (\d+)", proc.stdout, re.M)
        ir = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or not ops or not ir:
            raise RuntimeError(f"{loop}/{scen} failed:\n{proc.stdout}\n{proc.stderr[-2000:]}")
        return int(ir.group(1)), int(ops.group(1))


def functions(path: str) -> dict[str, int]:
    """function -> exclusive instructions, from callgrind_annotate."""
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, timeout=600,
    ).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*(?:\[.*\])?$", line)
        if m and ":" in m.group(2) and "=>" not in line:
            name = m.group(2)
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def breakdown(paths: tuple[str, str], ops: int, top: int) -> list[tuple[str, float]]:
    """The top functions by exclusive instructions per op (2N run minus N run)."""
    small, big = functions(paths[0]), functions(paths[1])
    diff = {k: (big.get(k, 0) - small.get(k, 0)) / ops for k in set(small) | set(big)}
    return sorted(diff.items(), key=lambda kv: -kv[1])[:top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append", choices=list(COUNTS))
    ap.add_argument("--loop", action="append", choices=list(loop_bench.LOOPS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every N")
    ap.add_argument("--breakdown", type=int, default=0, metavar="K",
                    help="also print the K costliest functions per op (exclusive)")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    notes = loop_bench._import_loops()
    loops = args.loop or [
        x for x in loop_bench.LOOPS if x not in loop_bench.PEERS or x in loop_bench.peers
    ]
    scens = args.scenario or list(COUNTS)
    rows, tops = [], []
    tmp = tempfile.mkdtemp(prefix="instructions-")
    for scen in scens:
        n = max(1, int(COUNTS[scen] * args.scale))
        per_op = {}
        for loop in loops:
            keep = [os.path.join(tmp, f"{scen}-{loop}-{k}.out") for k in (1, 2)]
            ir1, ops1 = count(loop, scen, n, keep[0] if args.breakdown else None)
            ir2, ops2 = count(loop, scen, 2 * n, keep[1] if args.breakdown else None)
            per_op[loop] = (ir2 - ir1) / (ops2 - ops1)
            print(f"{scen} {loop}: {per_op[loop]:.0f} instructions/op", file=sys.stderr)
            if args.breakdown:
                tops.append((scen, loop, breakdown(keep, ops2 - ops1, args.breakdown)))
        rows.append((scen, per_op))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"instructions per op (callgrind Ir, runs of N and 2N ops); {' '.join(notes)}\n")
    ratio_to = "uvloop" if "uvloop" in loops else None
    head = ["scenario"] + [f"{loop_bench.LABELS[x]} Ir/op" for x in loops]
    if ratio_to:
        head += [f"{loop_bench.LABELS[x]} speed vs uvloop" for x in loops if x != ratio_to]
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    for scen, per_op in rows:
        cells = [scen] + [f"{per_op[x]:.0f}" for x in loops]
        if ratio_to:
            cells += [f"{per_op[ratio_to] / per_op[x]:.2f}x" for x in loops if x != ratio_to]
        print("| " + " | ".join(cells) + " |")
    for scen, loop, top in tops:
        print(f"\n{scen} on {loop_bench.LABELS[loop]}: exclusive instructions per op\n")
        for name, ir in top:
            print(f"  {ir:9.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
