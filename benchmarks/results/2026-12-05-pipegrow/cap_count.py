"""How often a paused read pipe hits the cap of decision 162 (design.md 583).

    python benchmarks/results/2026-12-05-pipegrow/cap_count.py io_uring@0 io_uring@262144 epoll@0

`dd` writes 256 MiB in 64 KiB or 1 MiB blocks; the parent reads 64 KiB at a
time, at once (slow 0) or yielding 8 times after each read (slow 8, a
consumer that lags). Printed per MiB: pause_reading calls, and the cap's
cancels (the read cancelled with max_size held). `@N`: the child's pipe grows
to N bytes once it streams, @0 never.
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import uringloop  # noqa: E402
from uringloop.transports import pipe as P  # noqa: E402

MIB = 256
stats: dict = {}
_on_read, _pause = P.ReadPipeTransport._on_read, P.ReadPipeTransport.pause_reading


def on_read(self, res, more, data):
    was = self._cancelled
    r = _on_read(self, res, more, data)
    if self._cancelled and not was and self._paused:
        stats["cap"] = stats.get("cap", 0) + 1
    return r


def pause(self):
    stats["pause"] = stats.get("pause", 0) + 1
    return _pause(self)


P.ReadPipeTransport._on_read = on_read
P.ReadPipeTransport.pause_reading = pause


async def main(bs, slow):
    proc = await asyncio.create_subprocess_exec(
        "dd", "if=/dev/zero", f"bs={bs}", f"count={MIB * (1 << 20) // bs}", "status=none",
        stdout=asyncio.subprocess.PIPE,
    )
    while await proc.stdout.read(65536):
        for _ in range(slow):
            await asyncio.sleep(0)
    await proc.wait()


for kind in sys.argv[1:]:
    backend, _, grow = kind.partition("@")
    P.GROW_TO = int(grow or P.GROW_TO)
    P.GROW_AFTER = 16 if P.GROW_TO else 0
    for bs in (65536, 1 << 20):
        for slow in (0, 8):
            stats.clear()
            loop = uringloop.Loop(backend=backend)
            loop.run_until_complete(main(bs, slow))
            loop.close()
            print(kind, "block", bs, "slow", slow, {k: round(v / MIB, 2) for k, v in stats.items()})
