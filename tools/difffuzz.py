"""Differential fuzzer: random transport programs on the stock loop and on uringloop.

From a seed, ``generate(seed)`` makes a program: a family (a TCP or Unix
stream pair made by create_server/create_connection, two UDP endpoints, or an
``os.pipe`` through connect_read_pipe/connect_write_pipe; with ``--family
tls`` a TLS pair made by create_server/create_connection(ssl=...) or by
start_tls on a plain pair, decision 485), the protocols' kinds, and a
list of operations on the two ends (writes of every size,
writelines, write_eof, pause/resume_reading, set_write_buffer_limits,
get_write_buffer_size, is_closing, close, abort, RST, sendto, callbacks
through call_soon/call_later, loop.stop and a re-run). ``run(kind, program)``
runs it on a new loop of that kind, one operation at a time from outside the
loop (each is scheduled with ``call_soon``, then the loop runs until nothing
changes any more), and returns a trace: what each end's protocol saw and what
each call returned or raised. The traces of io_uring, epoll and
io_uring-fallbacks must equal the stock loop's.

Normalised away (decision 460), nothing else:

* how bytes are split across ``data_received``/``buffer_updated`` calls: each
  end's received bytes are compared as one concatenation, and the events that
  end sees (eof, connection_lost) carry the byte count received before them;
* where an end's events fall relative to the other end's (each end's events
  are a sequence of their own), and the number of loop turns anything takes;
* ``get_write_buffer_size()``: only whether it is 0 (how much the kernel took
  at once is not the loop's choice; the Known limits say io_uring counts a
  small write of the turn as queued until the turn ends);
* what stock handed over that its peer did not write (CPython gh-156275,
  decision 485): ours must hand over a prefix of the peer's writes;
* stock failures ours does not copy (``_stock_bug``, decisions 464(g), 488);
* object ids and addresses in messages; the stock loop's own nondeterminism
  (a program whose stock traces differ between two runs is skipped, as is one
  whose stock run is still busy when an op's ``SETTLE_MAX`` ends, 476).

A run is bounded (``TIMEOUT`` seconds, SIGALRM): a hang is a finding, as is an
exception out of the runner or an fd left open after the loop has closed.

    python tools/difffuzz.py --seeds 200            # seeds 0..199, every kind
    python tools/difffuzz.py --seed 17 --kind epoll --shrink --script /tmp/r.py
    python tools/difffuzz.py --fast --family unix --seeds 150   # 646, 636 (657)
    python tools/difffuzz.py --fast --callbacks --more --seeds 30 --triage  # 923

``--triage`` (decision 923) runs a seed that differs on io_uring alone twice
more on io_uring without the multishot receive (kind io_uring-nomultishot);
when both equal stock's run, the seed is printed and counted as 894's
read-ahead (the receive took the peer's bytes into pool buffers ahead of the
protocol), not as a difference. A difference that stays without the
multishot receive, or one on another kind too, still counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import logging
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import time
import zlib
from asyncio import selector_events as _selector_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a built tree
    sys.path.insert(0, ROOT)

KINDS = ["io_uring", "epoll", "io_uring-fallbacks"]
# io_uring without the multishot receive, not in the default set: --triage
# runs a seed that differs on io_uring alone again on it (decision 923).
NOMULTISHOT = "io_uring-nomultishot"
FAMILIES = ["tcp", "unix", "udp", "pipe"]  # a seed's family when none is asked for
ALL_FAMILIES = [*FAMILIES, "tls"]  # tls only when asked (the seeds above keep their programs)
TIMEOUT = 20.0  # seconds for one program on one loop
SETTLE_MAX = 3.0  # seconds one operation may keep things changing

STREAM_SIZES = [0, 1, 7, 100, 1000, 4096, 16384, 65536, 200_000, 1_000_000]
DGRAM_SIZES = [0, 1, 100, 1400, 8192, 32768, 65507, 65508]
PIPE_SIZES = [0, 1, 100, 4096, 65536, 70_000, 200_000]


_TYPES = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}
_WRAPS = ("soon", "later", "stoprun", "nosettle")


class Hang(Exception):
    pass


# --------------------------------------------------------------------------
# loops


def make_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "stock":
        return asyncio.SelectorEventLoop()
    from uringloop import Loop, engine

    if kind == "io_uring-fallbacks":
        # the kind tests/conftest.py's fallback_options() makes
        return Loop(backend="io_uring", options=engine.OPT_TEST_FALLBACKS)
    if kind == NOMULTISHOT:
        return Loop(backend="io_uring", options=engine.OPT_NO_MULTISHOT)
    return Loop(backend=kind)


# --------------------------------------------------------------------------
# programs


def generate(
    seed: int,
    family: str | None = None,
    callbacks: bool = False,
    more: bool = False,
    fast: bool = False,
) -> dict:
    r = random.Random(seed)
    fam = family or r.choice(FAMILIES)
    rf = random.Random(seed * 1_000_003 + 657)  # decision 657: --fast's own draws
    if fast and fam not in ("tcp", "unix"):
        fam = rf.choice(["tcp", "unix"])  # the fast paths are stream sockets'
    prog = {"seed": seed, "family": fam, "ops": []}
    n = r.randint(4, 24)
    if fam in ("tcp", "unix", "tls"):
        prog["buffered"] = {s: r.random() < 0.4 for s in "ab"}
        prog["bufsize"] = {s: r.choice([1, 100, 4096, 65536]) for s in "ab"}
        prog["keep_open"] = {s: r.random() < 0.4 for s in "ab"}
        gen = _stream_op
        if fam == "tls":
            gen = _tls_op
    if fam == "tls":
        # a TLS pair from create_server/create_connection, or a plain pair
        # that exchanges `plain` bytes each way, then start_tls on both ends;
        # the SSL timeouts of both ends (None: the default)
        prog["start_tls"] = r.random() < 0.35
        prog["plain"] = {s: r.choice([0, 1, 100, 4096]) for s in "ab"}
        prog["handshake_timeout"] = r.choice([None, 0.5, 10.0])
        prog["shutdown_timeout"] = r.choice([None, 0.02, 0.5, 30.0])
    elif fam == "udp":
        gen = _dgram_op
    elif fam == "pipe":
        prog["keep_open"] = {"r": False}
        gen = _pipe_op
    paused = {"n": None}  # pipes: bytes written since the reader paused
    unsettled: list[int] = []  # ops run for one turn since the last settled op
    for _ in range(n):
        op = gen(r, fam)
        if op[0] in ("pause_reading", "abort", "rst", "bufsize") and fam != "udp":
            # Decisions 162 and 475: a write run for one turn only (nosettle)
            # may leave bytes in the kernel that the reader has not read when
            # the next op pauses it. Stock's pause cancels its reader callback
            # and leaves them there, so its writer stays paused; ours has
            # read them or reads them anyway (a pipe's read stays armed while
            # paused, 162; a socket's multishot receive takes what comes
            # before its cancel, decision 75, io_uring only), so its writer
            # resumes. More than 32 KiB pending that way: those ops settle.
            # Decision 489: the same before an abort (or RST): on io_uring
            # the write's queued send and the peer's armed receive go on in
            # the kernel while the loop is stopped, so ours has sent more
            # when abort() drops the rest (seed 132, Unix: 1 MB against
            # stock's 219,264 bytes).
            # Decision 774(b): the same before a get_write_buffer_size(): on
            # io_uring the kernel had moved all of a 1 MB write between the
            # loop's turns (unix 21012 with --callbacks --more: ours 0,
            # stock 780,736 B left after one turn).
            pending = sum(_written(prog["ops"][j][1]) for j in unsettled)
            if pending > 32768:
                for j in unsettled:
                    prog["ops"][j] = prog["ops"][j][1]
                pending = 0
            if fam == "pipe" and op[0] == "pause_reading" and paused["n"] is None:
                paused["n"] = pending  # counted against 32 KiB below
        if fam == "pipe":
            # Decision 162 (Known limits): a paused pipe transport reads up to
            # 256 KiB more than stock's before it stops, so a writer that
            # fills the pipe behind a paused reader gets further on ours (its
            # close/abort then loses fewer bytes, it sees no EPIPE). Programs
            # keep what is written behind a paused reader within the pipe's
            # 64 KiB; writes of any size while it reads.
            if op[0] == "resume_reading":
                paused["n"] = None
            elif op[0] in ("write", "writelines") and paused["n"] is not None:
                sizes = [op[2]] if op[0] == "write" else op[2]
                if paused["n"] + sum(sizes) > 32768:
                    op = ["bufsize", "w"]
                else:
                    paused["n"] += sum(sizes)
        w = r.random()
        if w < 0.12:
            op = ["soon", op]
        elif w < 0.18:
            op = ["later", op]
        elif w < 0.24:
            op = ["stoprun", op]
        elif w < 0.28:
            op = ["nosettle", op]
        if op[0] == "nosettle":
            unsettled.append(len(prog["ops"]))
        else:
            unsettled = []
        prog["ops"].append(op)
    if callbacks:
        # decision 499: actions run from inside the protocols' callbacks,
        # from a second generator so the ops above are the seed's old ones
        prog["hooks"] = _hooks(random.Random(seed * 1_000_003 + 499), fam, gen)
    if fast:
        _fast(rf, prog)
    if more:
        # decision 611: shapes the ops above never take, from a third
        # generator, inserted between the seed's old ops (which keep their
        # order, wraps and draws)
        prog["ops"] = _more(random.Random(seed * 1_000_003 + 611), fam, prog["ops"])
    return prog


# decision 657: --fast
FAST_SIZES = [65536, 100_000, 150_000, 200_000]  # a's messages: reads fill b's 64 KiB
FAST_READS = [
    ["readexactly", 1],
    ["readexactly", 100],
    ["readexactly", 4096],
    ["readexactly", 65536],
    ["readexactly", 100_000],
    ["readuntil", 0],
    ["readuntil", 7],
    ["read", 1],
    ["read", 100],
    ["read", 65536],
    ["read", -1],
]


def _fast(r: random.Random, prog: dict) -> None:
    """Decision 657: programs that reach the two stream fast paths.

    "echo": end b is a BufferedProtocol with a 64 KiB get_buffer() buffer
    that writes back what it reads, as `transport.write(self.buf[a:b])`
    temporaries (whole, or split at 16 or 32 KiB, up to `cap` bytes), its
    high-water mark `high`; a writes messages of 64-200 KiB (inserted after
    the seed's ops), so b's reads fill its buffer and the echo is held
    (decision 646); hooks on b's data (so inside buffer_updated, after the
    echo) call get_write_buffer_size, set_write_buffer_limits, pause/resume
    _reading, close, abort, write_eof, writelines, write, or raise.
    "streams": end b is a stock asyncio.StreamReaderProtocol with a small
    limit (by asyncio.start_server or create_server), its reader read by
    readexactly/readuntil/read(n)/read(-1) ops (not readline: its
    ValueError past the limit drops what it had, so the bytes read would not
    be a prefix of the peer's writes any more) (one at a time),
    fed straight by C (decisions 636-638); a writes as above, and the
    seed's ops close, reset and pause either end."""
    mode = r.choice(["echo", "streams"])
    ops = []
    for op in prog["ops"]:
        ops.append(op)
        k = r.random()
        if k < 0.35:
            ops.append(["write", "a", r.choice(FAST_SIZES), r.choice(["bytes", "bytearray"])])
        elif k < 0.55 and mode == "streams":
            ops.append(["sread", "b", *r.choice(FAST_READS)])
        elif k < 0.62 and mode == "streams":
            ops.append(["soon", ["sread", "b", *r.choice(FAST_READS)]])
    if mode == "streams":
        ops.append(["sread", "b", *r.choice(FAST_READS)])
    prog["ops"] = ops
    if mode == "echo":
        prog["buffered"]["b"] = True
        prog["bufsize"]["b"] = 65536
        prog["fast"] = {
            "mode": "echo",
            "split": r.choice([None, None, 16384, 32768]),
            "high": r.choice([None, 16384, 65536, 100_000, 300_000]),
            "cap": r.choice([200_000, 1_000_000]),
        }
        acts = [
            lambda: ["bufsize", "b"],
            lambda: ["limits", "b", r.choice([0, 16384, 65536, 300_000])],
            lambda: ["pause_reading", "b"],
            lambda: ["resume_reading", "b"],
            lambda: ["close", "b"],
            lambda: ["abort", "b"],
            lambda: ["write_eof", "b"],
            lambda: ["writelines", "b", [r.choice([1, 16384, 65536]) for _ in range(2)]],
            lambda: ["write", "b", r.choice([16384, 65536]), "bytearray"],
            lambda: ["raise", "b"],
            lambda: ["is_closing", "b"],
        ]
        hooks = prog.setdefault("hooks", [])
        for _ in range(r.randint(1, 3)):
            at = r.choice([1, 65536, 70_000, 150_000, 300_000])
            hops = [r.choice(acts)() for _ in range(r.randint(1, 2))]
            hooks.append({"end": "b", "event": "data", "at": at, "ops": hops})
    else:
        prog["buffered"]["b"] = False
        prog["fast"] = {
            "mode": "streams",
            "limit": r.choice([1, 100, 4096, 65536]),
            "how": r.choice(["start_server", "protocol"]),
        }


# the fast paths' counters over the runs of this process (decision 657)
REACHED: collections.Counter = collections.Counter()


_MORE_OPS = ("writelines_typed", "limits_low", "sendfile", "server_close")


def _more(r: random.Random, fam: str, ops: list) -> list:
    """After each op, one time in five, one of `_MORE_OPS` (decision 611):
    writelines() of bytearray and memoryview parts, set_write_buffer_limits
    with a low mark or neither, loop.sendfile() on a stream end, the server
    closed with its connection live. Each settles and pauses nothing, so the
    bounds generate() keeps (475, 489, 162) still hold: a pipe's inserted
    writes stay within 300 bytes each."""
    out = []
    for op in ops:
        out.append(op)
        if r.random() >= 0.2:
            continue
        k = r.random()
        if fam == "udp":
            out.append(["limits_low", r.choice("ab"), *_low_marks(r)])
        elif fam == "pipe":
            if k < 0.6:
                n = r.randint(1, 3)
                sizes = [r.choice(PIPE_SIZES[:3]) for _ in range(n)]
                types = [r.choice(["bytearray", "memoryview"]) for _ in range(n)]
                out.append(["writelines_typed", "w", sizes, types])
            else:
                out.append(["limits_low", "w", *_low_marks(r)])
        elif k < 0.35:
            n = r.randint(1, 4)
            sizes = [r.choice(STREAM_SIZES[:8]) for _ in range(n)]
            types = [r.choice(["bytes", "bytearray", "memoryview"]) for _ in range(n)]
            out.append(["writelines_typed", r.choice("ab"), sizes, types])
        elif k < 0.55:
            out.append(["limits_low", r.choice("ab"), *_low_marks(r)])
        elif k < 0.9:
            size = r.choice([0, 1, 4096, 100_000, 1_000_000])
            out.append(["sendfile", r.choice("ab"), size, r.choice([0, 0, 10])])
        else:
            out.append(["server_close", "b"])
    return out


def _low_marks(r: random.Random) -> list:
    """(high, low) for set_write_buffer_limits; None leaves one out (a low
    above high raises ValueError on both loops)."""
    return [r.choice([None, 0, 100, 65536]), r.choice([None, 0, 1, 100, 4096])]


# the callbacks an end's hooks may fire on (decision 499)
_HOOK_EVENTS = {
    "stream": ["data", "data", "eof", "pause_writing", "resume_writing", "lost"],
    "udp": ["dgram", "dgram", "error_received", "pause_writing", "resume_writing", "lost"],
    "r": ["data", "data", "eof", "lost"],
    "w": ["pause_writing", "resume_writing", "lost"],
}


def _hooks(r: random.Random, fam: str, gen) -> list:
    """One to three hooks: when end `end`'s callback `event` fires (data: once
    `at` bytes have come, at the `nth` call; eof: returning `ret`), run `ops`
    from inside it, once."""
    out = []
    for _ in range(r.randint(1, 3)):
        if fam == "pipe":
            end = r.choice("rw")
            events = _HOOK_EVENTS[end]
        else:
            end = r.choice("ab")
            events = _HOOK_EVENTS["udp" if fam == "udp" else "stream"]
        h = {"end": end, "event": r.choice(events)}
        if h["event"] == "data":
            h["at"] = r.choice([1, 1, 100, 5000, 70_000])
        elif h["event"] == "dgram":
            h["nth"] = r.choice([1, 1, 2, 3])
        elif h["event"] == "eof":
            h["ret"] = r.choice([True, False, None])
        ops = []
        for _ in range(r.randint(1, 2)):
            k = r.random()
            op = ["stop"] if k < 0.08 else gen(r, fam)
            if 0.08 <= k < 0.23:
                op = ["soon", op]
            ops.append(op)
        # Decision 554: a write queued (soon) after this hook's close() of
        # the same end meets a timing race on both loops: it is taken while
        # the end still holds bytes, dropped once connection_lost ran. On
        # io_uring the kernel sends the held bytes while the hook runs, and
        # the completion's connection_lost takes stock's writer's place,
        # ahead of the queued write (535); stock's writer had not drained
        # (unix 694: 100 bytes fewer). Such a write becomes an is_closing; the
        # draws above are unchanged, so other seeds keep their programs.
        closed = set()
        for i, op in enumerate(ops):
            if op[0] == "close":
                closed.add(op[1])
            elif op[0] == "soon" and op[1][0] in ("write", "writelines") and op[1][1] in closed:
                ops[i] = ["soon", ["is_closing", op[1][1]]]
        h["ops"] = ops
        out.append(h)
    return out


def _written(op: list) -> int:
    """Bytes a write or writelines op sends (0 for any other op)."""
    if op[0] == "write":
        return op[2]
    if op[0] == "writelines":
        return sum(op[2])
    return 0


def _stream_op(r: random.Random, fam: str) -> list:
    s = r.choice("ab")
    k = r.random()
    if k < 0.30:
        return ["write", s, r.choice(STREAM_SIZES), r.choice(["bytes", "bytearray", "memoryview"])]
    if k < 0.38:
        return ["writelines", s, [r.choice(STREAM_SIZES[:8]) for _ in range(r.randint(0, 4))]]
    if k < 0.44:
        return ["write_eof", s]
    if k < 0.52:
        return ["pause_reading", s]
    if k < 0.60:
        return ["resume_reading", s]
    if k < 0.66:
        return ["limits", s, r.choice([0, 1, 100, 4096, 65536])]
    if k < 0.72:
        return ["bufsize", s]
    if k < 0.76:
        return ["is_closing", s]
    if k < 0.82:
        return ["close", s]
    if k < 0.87:
        return ["abort", s]
    if k < 0.91 and fam == "tcp":
        return ["rst", s]
    return ["write", s, r.choice(STREAM_SIZES[:6]), "bytes"]


def _tls_op(r: random.Random, fam: str) -> list:
    s = r.choice("ab")
    k = r.random()
    if k < 0.26:
        return ["write", s, r.choice(STREAM_SIZES), r.choice(["bytes", "bytearray", "memoryview"])]
    if k < 0.32:
        return ["writelines", s, [r.choice(STREAM_SIZES[:8]) for _ in range(r.randint(0, 4))]]
    if k < 0.36:
        return ["write_eof", s]
    if k < 0.38:
        return ["can_write_eof", s]
    if k < 0.45:
        return ["pause_reading", s]
    if k < 0.52:
        return ["resume_reading", s]
    if k < 0.55:
        return ["is_reading", s]
    if k < 0.60:
        return ["limits", s, r.choice([0, 1, 100, 4096, 65536])]
    if k < 0.65:
        return ["bufsize", s]
    if k < 0.68:
        return ["is_closing", s]
    if k < 0.73:
        return ["extra", s]
    if k < 0.80:
        return ["close", s]
    if k < 0.85:
        return ["abort", s]
    if k < 0.89:
        return ["rst", s]
    return ["write", s, r.choice(STREAM_SIZES[:6]), "bytes"]


def _dgram_op(r: random.Random, fam: str) -> list:
    s = r.choice("ab")
    k = r.random()
    if k < 0.55:
        return ["sendto", s, r.choice(DGRAM_SIZES)]
    if k < 0.63:
        return ["pause_reading", s]
    if k < 0.71:
        return ["resume_reading", s]
    if k < 0.77:
        return ["bufsize", s]
    if k < 0.82:
        return ["is_closing", s]
    if k < 0.88:
        return ["limits", s, r.choice([0, 1, 100, 65536])]
    if k < 0.94:
        return ["close", s]
    return ["abort", s]


def _pipe_op(r: random.Random, fam: str) -> list:
    k = r.random()
    if k < 0.35:
        return ["write", "w", r.choice(PIPE_SIZES), r.choice(["bytes", "bytearray"])]
    if k < 0.42:
        return ["writelines", "w", [r.choice(PIPE_SIZES[:5]) for _ in range(r.randint(0, 3))]]
    if k < 0.47:
        return ["write_eof", "w"]
    if k < 0.55:
        return ["pause_reading", "r"]
    if k < 0.63:
        return ["resume_reading", "r"]
    if k < 0.68:
        return ["limits", "w", r.choice([0, 1, 100, 4096, 65536])]
    if k < 0.74:
        return ["bufsize", "w"]
    if k < 0.78:
        return ["is_closing", r.choice("rw")]
    if k < 0.88:
        return ["close", r.choice("rw")]
    if k < 0.92:
        return ["abort", "w"]
    return ["write", "w", r.choice(PIPE_SIZES[:4]), "bytes"]


def payload(n: int, salt: int) -> bytes:
    return random.Random(n * 7919 + salt).randbytes(n)


# --------------------------------------------------------------------------
# protocols: each end appends its events to its own list


class End:
    def __init__(self, trace, side, keep_open=False):
        self.trace, self.side, self.keep_open = trace, side, keep_open
        self.events = trace["ends"].setdefault(side, [])
        self.data = bytearray()
        self.transport = None
        self.lost = False
        self.hooks: list = []  # [index, hook] not fired yet (decision 499)
        self.runner = None
        self.ndgram = 0
        self.eof_sent = False
        self.counters: dict = {}  # decision 657: the core's feeds/nows seen

    def log(self, *ev):
        self.events.append(list(ev))

    def fire(self, event):
        """Run the hooks on this callback whose condition holds (once each);
        the eof hook's `ret` is returned (-1: none)."""
        ret = -1
        for item in list(self.hooks):
            j, h = item
            if h["event"] != event:
                continue
            if event == "data" and len(self.data) < h["at"]:
                continue
            if event == "dgram" and self.ndgram < h["nth"]:
                continue
            self.hooks.remove(item)
            if event == "eof":
                ret = h["ret"]
            self.runner.hook(self, j, h)
        return ret

    def connection_made(self, transport):
        self.transport = transport
        self.log("made")

    def connection_lost(self, exc):
        self.lost = True
        self.log("lost", _exc(exc), len(self.data))
        self.fire("lost")

    def pause_writing(self):
        self.log("pause_writing")
        self.fire("pause_writing")

    def resume_writing(self):
        self.log("resume_writing")
        self.fire("resume_writing")

    def eof_received(self):
        self.log("eof", len(self.data))
        ret = self.fire("eof")
        if ret != -1:
            return ret
        return True if self.keep_open else None


class StreamEnd(End, asyncio.Protocol):
    def data_received(self, data):
        self.data += data
        self.fire("data")


class BufferedEnd(End, asyncio.BufferedProtocol):
    def __init__(self, trace, side, keep_open=False, size=65536):
        super().__init__(trace, side, keep_open)
        self.buf = bytearray(size)

    def get_buffer(self, sizehint):
        return self.buf

    echo = None  # decision 657: prog["fast"] of an echoing end
    echoed = 0

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]
        if self.echo is not None:
            self._echo(nbytes)
        self.fire("data")

    def _echo(self, nbytes):
        """Write back up to the cap's rest of this read as temporaries of
        the buffer (decision 657: the write hold of decision 646)."""
        t, m = self.transport, min(nbytes, self.echo["cap"] - self.echoed)
        if m <= 0 or t.is_closing() or self.eof_sent:
            return
        k = self.echo["split"]
        if self.runner.prog["family"] != "tls":
            self.runner._sendfile_taken(self.side)  # 903
        sent = self.runner.sent.setdefault(self.side, bytearray())
        n0 = len(sent)
        sent += self.buf[:m]
        self.echoed += m
        try:
            if k is None or m <= k:
                t.write(self.buf[:m])
            else:
                t.write(self.buf[:k])
                t.write(self.buf[k:m])
        except Exception as exc:
            del sent[n0:]
            self.log("echo", "raised", type(exc).__name__)
            return
        core = getattr(t, "_core", None)
        if core is not None and getattr(core, "hold", 0):
            REACHED["hold"] += 1


class StreamsEnd(End):
    """Decision 657: a stock asyncio.StreamReaderProtocol's end (not a
    protocol itself): its reads' results are its events, what they returned
    its data."""

    def __init__(self, trace, side):
        super().__init__(trace, side)
        self.reader = None
        self.writer = None
        self.reading = False

    def connected(self, reader, transport, writer=None):
        # decision 670: a start_server end keeps its StreamWriter, as an
        # application's handler does; 3.13's protocol holds none, and a
        # writer dropped there closes the transport at once (its __del__)
        self.reader, self.transport, self.writer = reader, transport, writer
        self.log("made")

    def sread(self, loop, op):
        """Start one read (a task); its result goes to the events when it ends."""
        if self.reader is None or self.reading:
            return ["busy"]
        reader, how, arg = self.reader, op[0], op[1:]
        if how == "readuntil":
            coro = reader.readuntil(bytes(arg))
        elif how == "readline":
            coro = reader.readline()
        else:
            coro = getattr(reader, how)(*arg)
        self.reading = True

        def done(task):
            self.reading = False
            exc = task.exception()
            if exc is not None:
                part = getattr(exc, "partial", None)
                if part:
                    self.data += part
                self.log("read", *op, "raised", _exc(exc), None if part is None else len(part))
                return
            res = task.result()
            self.data += res
            # read(n) returns what the buffer holds, which follows the split
            # (460): its length is not compared, its bytes are (data)
            self.log("read", *op, "ok", "n" if how == "read" else len(res))

        loop.create_task(coro).add_done_callback(done)
        return ["started"]


class DgramEnd(End, asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        self.log("dgram", len(data), zlib.crc32(data))
        self.data += data
        self.ndgram += 1
        self.fire("dgram")

    def error_received(self, exc):
        self.log("error_received", _exc(exc))
        self.fire("error_received")


def _exc(exc):
    if exc is None:
        return None
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{name}[{exc.errno}]"
    return name


def _empty_waiter_bug(exc) -> bool:
    """Decision 954: an InvalidStateError raised by the stock socket
    transport's `_call_connection_lost` (613's bug: set_exception on the
    done empty waiter), wherever it was called from. Its `_write_ready`
    calls it itself once a closing transport's buffer drained, after
    `_remove_writer` cancelled that running handle: the handler's message
    is then "Exception in callback None()" (unix 996011 with --fast
    --callbacks --more), not 613's `_call_connection_lost(...)`."""
    if type(exc).__name__ != "InvalidStateError":
        return False
    code, tb = None, exc.__traceback__
    while tb is not None:  # the innermost frame (a pure-Python Future's aside)
        if not tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "futures.py")):
            code = tb.tb_frame.f_code
        tb = tb.tb_next
    return (
        code is not None
        and code.co_name == "_call_connection_lost"
        and code.co_filename.endswith(os.path.join("asyncio", "selector_events.py"))
    )


def _msg(text) -> str:
    return re.sub(r"0x[0-9a-f]+|fd=-?\d+|\bfd \d+", "#", str(text))


# --------------------------------------------------------------------------
# running a program on one loop


_TLS: list = []


def tls_contexts():
    """(server, client) SSLContexts for 'localhost', one trustme CA a process."""
    if not _TLS:
        import ssl

        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(client)
        _TLS.extend([server, client])
    return _TLS[0], _TLS[1]


def run(kind: str, prog: dict) -> dict:
    """The program's normalised trace on a new loop of this kind."""
    if prog["family"] == "tls":
        tls_contexts()  # made before the fds are counted
    gc.collect()
    fds_before = _fds()
    trace = {"ends": {}, "ops": [], "handler": [], "log": [], "fatal": None}
    log = _LogTrace(trace["log"])
    logging.getLogger("asyncio").addHandler(log)
    logging.getLogger("asyncio").propagate = False
    loop = make_loop(kind)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        _Runner(loop, prog, trace).go()
    except Hang:
        trace["fatal"] = "hang"
    except Exception as exc:  # a finding: the runner itself failed
        trace["fatal"] = f"{type(exc).__name__}: {_msg(exc)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        with contextlib.suppress(Exception):
            if not loop.is_running():
                loop.close()
        logging.getLogger("asyncio").removeHandler(log)
        logging.getLogger("asyncio").propagate = True
    gc.collect()
    leaked = sorted(v for k, v in _fds().items() if fds_before.get(k) != v)
    trace["leaked_fds"] = [re.sub(r"\[\d+\]", "[#]", v) for v in leaked]
    return trace


class _LogTrace(logging.Handler):
    """The asyncio logger's records (warnings such as "socket.send() raised
    exception.") are behaviour too."""

    def __init__(self, out):
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record):
        self.out.append([record.levelname, _msg(record.getMessage())])


def _alarm(signum, frame):
    raise Hang()


def _fds() -> dict:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


class _Runner:
    def __init__(self, loop, prog, trace):
        self.loop, self.prog, self.trace = loop, prog, trace
        self.ends: dict[str, End] = {}
        self.server = None
        self.tmpdir = None
        self.salt = 0
        self.sent: dict[str, bytearray] = {}  # each end's written bytes, in order
        self.sendfiling: set = set()  # ends with a loop.sendfile() running (611)
        # end -> [(task, record)] of its sendfiles' sent records, until taken
        # (903; a list: a second sendfile on the end may start while the
        # first waits, and fail, 932)
        self.sendfile_rec: dict = {}
        self.unsettled = False  # the last op ran one turn only (nosettle)
        # TLS with a 20 ms shutdown timeout: nothing changes for 4 x 10 ms,
        # so the timeout, if it runs, fires within the settle of the op that
        # started it (decision 485); no other timer of a program is that
        # short, so every other program settles on 4 x 2 ms (decision 549)
        short = prog["family"] == "tls" and prog.get("shutdown_timeout") == 0.02
        self.quiet = 0.01 if short else 0.002
        loop.set_exception_handler(self._handler)

    def _handler(self, loop, ctx):
        exc = ctx.get("exception")
        self.trace["handler"].append([_msg(ctx.get("message", "")), _exc(exc)])
        if _empty_waiter_bug(exc):
            self.trace["empty_waiter_bug"] = True  # decisions 613, 954

    def go(self):
        loop = self.loop
        try:
            loop.run_until_complete(self.setup())
            self.settle()
            for e in self.ends.values():
                e.runner = self
            for j, h in enumerate(self.prog.get("hooks", ())):
                e = self.ends[h["end"]]  # armed once set up (decision 499)
                e.runner = self
                e.hooks.append([j, h])
            for i, op in enumerate(self.prog["ops"]):
                self.step(i, op)
            self.teardown()
        finally:
            if self.tmpdir is not None:
                self.tmpdir.cleanup()

    # -- setup / teardown

    async def setup(self):
        fam, loop, p = self.prog["family"], self.loop, self.prog
        streams = p.get("fast", {}).get("mode") == "streams"
        if fam in ("tcp", "unix"):

            def mk(side):
                if side == "b" and streams:
                    return StreamsEnd(self.trace, side)
                if p["buffered"][side]:
                    return BufferedEnd(self.trace, side, p["keep_open"][side], p["bufsize"][side])
                return StreamEnd(self.trace, side, p["keep_open"][side])

            self.ends["b"] = mk("b")
            self.ends["a"] = mk("a")
            factory = lambda: self.ends["b"]  # noqa: E731
            if streams:
                factory, sfactory = self._streams_factories()
            if fam == "tcp":
                if streams and sfactory is not None:
                    self.server = await asyncio.start_server(sfactory, "127.0.0.1", 0, **self.lim)
                else:
                    self.server = await loop.create_server(factory, "127.0.0.1", 0)
                port = self.server.sockets[0].getsockname()[1]
                await loop.create_connection(lambda: self.ends["a"], "127.0.0.1", port)
            else:
                self.tmpdir = tempfile.TemporaryDirectory(prefix="difffuzz-")
                path = os.path.join(self.tmpdir.name, "s")
                if streams and sfactory is not None:
                    self.server = await asyncio.start_unix_server(sfactory, path, **self.lim)
                else:
                    self.server = await loop.create_unix_server(factory, path)
                await loop.create_unix_connection(lambda: self.ends["a"], path)
            await self._accepted()
            fast = p.get("fast")
            if fast and fast["mode"] == "echo":
                b = self.ends["b"]
                b.echo = fast
                self.trace["echoing"] = ["b"]
                if fast["high"] is not None:
                    b.transport.set_write_buffer_limits(high=fast["high"])
        elif fam == "tls":
            await self._setup_tls()
        elif fam == "udp":
            self.ends["a"] = DgramEnd(self.trace, "a")
            self.ends["b"] = DgramEnd(self.trace, "b")
            for s in "ab":
                await loop.create_datagram_endpoint(
                    lambda s=s: self.ends[s], local_addr=("127.0.0.1", 0)
                )
            self.addr = {s: self.ends[s].transport.get_extra_info("sockname") for s in "ab"}
        else:
            rfd, wfd = os.pipe()
            self.ends["r"] = StreamEnd(self.trace, "r")
            self.ends["w"] = End(self.trace, "w")
            await loop.connect_read_pipe(lambda: self.ends["r"], os.fdopen(rfd, "rb", 0))
            await loop.connect_write_pipe(lambda: self.ends["w"], os.fdopen(wfd, "wb", 0))

    def _streams_factories(self):
        """Decision 657: (protocol factory, start_server callback or None)
        making end b a stock StreamReaderProtocol with the program's limit."""
        fast, b = self.prog["fast"], self.ends["b"]
        self.lim = {"limit": fast["limit"]}
        if fast["how"] == "start_server":

            def connected(reader, writer):
                b.connected(reader, writer.transport, writer)

            return None, connected

        def factory():
            reader = asyncio.StreamReader(limit=fast["limit"], loop=self.loop)
            proto = asyncio.StreamReaderProtocol(reader, loop=self.loop)
            orig = proto.connection_made

            def made(transport):
                orig(transport)
                b.connected(reader, transport)

            proto.connection_made = made  # an instance attribute: the class stays stock
            return proto

        return factory, None

    async def _accepted(self):
        for _ in range(5000):
            if self.ends["b"].transport is not None:
                break
            await asyncio.sleep(0.001)

    async def _setup_tls(self):
        loop, p = self.loop, self.prog
        sctx, cctx = tls_contexts()
        kw = {"ssl_handshake_timeout": p["handshake_timeout"]}
        if p["shutdown_timeout"] is not None and sys.version_info >= (3, 11):
            kw["ssl_shutdown_timeout"] = p["shutdown_timeout"]  # 3.10 has none

        def mk(side):
            if p["buffered"][side]:
                return BufferedEnd(self.trace, side, p["keep_open"][side], p["bufsize"][side])
            return StreamEnd(self.trace, side, p["keep_open"][side])

        a, b = self.ends["a"], self.ends["b"] = mk("a"), mk("b")
        if not p["start_tls"]:
            self.server = await loop.create_server(lambda: b, "127.0.0.1", 0, ssl=sctx, **kw)
            port = self.server.sockets[0].getsockname()[1]
            await loop.create_connection(
                lambda: a, "127.0.0.1", port, ssl=cctx, server_hostname="localhost", **kw
            )
            await self._accepted()
            return
        self.server = await loop.create_server(lambda: b, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        await loop.create_connection(lambda: a, "127.0.0.1", port)
        await self._accepted()
        # plain bytes each way, all received before the upgrade
        for s in "ab":
            data = payload(p["plain"][s], self._salt())
            self.ends[s].transport.write(data)
            self.sent.setdefault(s, bytearray()).extend(data)
        for _ in range(5000):
            if len(a.data) == p["plain"]["b"] and len(b.data) == p["plain"]["a"]:
                break
            await asyncio.sleep(0.001)
        tb, ta = await asyncio.gather(
            loop.start_tls(b.transport, b, sctx, server_side=True, **kw),
            loop.start_tls(a.transport, a, cctx, server_hostname="localhost", **kw),
        )
        a.transport, b.transport = ta, tb
        a.log("start_tls", len(a.data))
        b.log("start_tls", len(b.data))

    def teardown(self):
        self._counters()
        for e in self.ends.values():  # decision 657: the fast paths' counters
            for name, n in e.counters.items():
                REACHED[name] += n
        for s in sorted(self.ends):
            e = self.ends[s]
            reader = getattr(e, "reader", None)
            if reader is not None and reader._paused:
                # decision 778(a): the run ends with the reader holding past
                # 2 * limit, as 657(a)'s close: how much it had been fed
                # follows each loop's read sizes (--fast unix 20004:
                # stock 131,072 B, ours 114,688)
                self.trace.setdefault("cut", []).append(s)
            if e.transport is not None and not e.transport.is_closing():
                getattr(e.transport, "abort", e.transport.close)()  # a read pipe has no abort
        self.settle()
        if self.server is not None:
            self.server.close()
            self.loop.run_until_complete(asyncio.wait_for(self.server.wait_closed(), 5))
        self.settle()
        for s in sorted(self.ends):
            e = self.ends[s]
            self.trace["ends"][s].append(["data", len(e.data), zlib.crc32(e.data)])
        if self.prog["family"] != "udp":
            # decision 485: what a stream end received is a prefix of what
            # its peer's write()/writelines() calls that returned gave
            peer = {"a": "b", "b": "a", "r": "w"}
            self.trace["intact"] = {
                s: bytes(self.sent.get(peer[s], b"")).startswith(self.ends[s].data)
                for s in sorted(self.ends)
                if s in peer
            }
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    # -- one operation

    def hook(self, end, j, h):
        """Hook j's ops, from inside `end`'s callback; each result goes to
        that end's own events (a call_soon'd one when it runs)."""
        for op in h["ops"]:
            inner = op[1] if op[0] == "soon" else op
            if inner[0] == "raise":
                # decision 657: a raise from the callback is the transport's
                # fatal error, an abort() there; counted as one below
                inner = ["abort", inner[1]]
            if getattr(end, "echo", None) and inner[0] in (*_CUT, "write_eof"):
                # decision 657: the echo stops where this read ended
                self.trace.setdefault("echo_cut", []).append({"a": "b", "b": "a"}[end.side])
            target = self.ends.get(inner[1]) if len(inner) > 1 else None
            stops = inner[0] in (*_CUT, "write_eof") and h["event"] in _SPLIT
            if stops and target is not end and getattr(target, "echo", None):
                # decision 955: this end's read stopped its echoing peer, so
                # how much the peer had echoed follows where this end's read
                # fell among the peer's: stock's select reads one buffer a
                # turn and interleaves them, ours hands the peer the turn's
                # buffers in a row (335, the Known limit; 951): --fast tcp and
                # unix 996035, a's first read at 100 B writes b's EOF after
                # stock's 131,072 B of echo, ours 150,000 (epoll tcp 127,973)
                self.trace.setdefault("echo_cut", []).append(end.side)
            if h["event"] in _SPLIT and inner[0] in _CUT:
                # decision 499(c): an end stops reading where a read's bytes
                # end (or when its writer's buffer crossed a mark, which
                # follows them), and how they split is not compared (460)
                self.trace.setdefault("cut", []).append(inner[1])
            streams = self.prog["family"] in ("tcp", "unix", "tls")
            if h["event"] in _SPLIT and inner[0] == "write_eof" and streams:
                # decision 547: the EOF leaves where a read's bytes ended;
                # whether the peer's writer had drained (resume_writing)
                # before that EOF reached it follows the split and, on
                # io_uring, how far the kernel ran the peer's send and this
                # end's multishot receive before the callback (unix 618)
                self.trace.setdefault("eof_cut", []).append("b" if inner[1] == "a" else "a")
            if h["event"] == "data" and inner[0] in ("abort", "rst") and inner[1] != end.side:
                # 499(c): the peer drops its socket where this end's read
                # ended; what this end had read ahead by then follows the split
                self.trace.setdefault("cut", []).append(end.side)
            fam = self.prog["family"]
            # decision 657: a close() from a read's callback of an end with
            # bytes unread resets the peer (tcp 80 with --fast: b's close at
            # 150,000 B after its echo), which drops what its kernel had not
            # sent yet; ours closes the fd at close() (426(b)), stock's a
            # turn later: the peer's count follows that timing as 523's does
            fast = "fast" in self.prog and fam == "tcp"
            fast_close = fast and h["event"] == "data" and inner[0] == "close"
            resets = inner[0] in ("abort", "rst") or fast_close
            if h["event"] in _SPLIT and resets and fam in ("tcp", "tls"):
                # decision 523: an abort with bytes unread (463) or an RST
                # resets the peer, whose kernel then drops what it had not
                # read yet: its byte counts follow how far its reads had got
                # (tcp 332: 160,769 of 200,001 on stock, 65,537 to 200,001
                # on ours by kind)
                self.trace.setdefault("reset_peer", []).append("b" if inner[1] == "a" else "a")
            if h["event"] in ("data", "pause_writing") and inner[0] == "abort" and inner[1] == "w":
                # 499(c): a pipe writer's abort drops what its reader had not
                # taken, and ours reads a pipe ahead (decision 162)
                self.trace.setdefault("cut", []).append("r")
            if h["event"] in ("pause_writing", "resume_writing") and j not in self.trace.get(
                "flow_hooks", ()
            ):
                # decision 524: where an end's flow control is not compared,
                # neither is what its flow hooks did (pipe 370)
                self.trace.setdefault("flow_hooks", []).append(j)
            if inner[0] in ("write_eof", "close", "abort", "rst") and inner[1] in self.sendfiling:
                # decision 615: sendfile(2) goes on the socket itself, so the
                # shutdown or close cuts it at once where it had got, which
                # follows how far this callback's end had read (unix 6264
                # with --more --callbacks: b's data hook at 70,000 B ends a's
                # 1 MB sendfile; b then has 262,144 B on stock and epoll,
                # 524,288 on io_uring, 131,072 on io_uring-fallbacks)
                self.trace.setdefault("cut", []).append({"a": "b", "b": "a"}[inner[1]])
            if h["event"] == "lost" and inner[0] != "stop":
                self.trace.setdefault("lost_hook", []).append(end.side)  # 499(b)
            if op[0] == "stop":
                self.loop.stop()
                end.log("hook", j, "stop")
            elif op[0] == "raise":
                end.log("hook", j, "raise")  # decision 657: out of the callback
                raise ValueError("difffuzz hook raised")
            elif op[0] == "soon":
                self.loop.call_soon(
                    lambda op=op: end.log("hook-soon", j, *self.call(op[1], hooked=True))
                )
            else:
                end.log("hook", j, *self.call(op, hooked=True))

    def step(self, i, op):
        loop = self.loop
        wrap = op[0] if op[0] in ("soon", "later", "stoprun", "nosettle") else None
        inner = op[1] if wrap else op
        rec = self.trace["ops"]

        def do():
            rec.append([i, *self.call(inner)])

        if wrap == "later":
            loop.call_later(0, do)
            loop.call_soon(rec.append, [i, "marker-soon"])
        elif wrap == "soon":
            loop.call_soon(do)
            loop.call_soon(rec.append, [i, "marker-soon"])
        else:
            loop.call_soon(do)
        if wrap == "stoprun":
            loop.call_soon(loop.stop)
            loop.run_forever()
        if wrap != "nosettle":
            self.settle()
        else:
            loop.call_soon(loop.stop)
            loop.run_forever()
        self.unsettled = wrap == "nosettle"

    def call(self, op, hooked=False):
        name, side = op[0], op[1]
        e = self.ends[side]
        t = e.transport
        writes = ("write", "writelines", "writelines_typed", "sendfile")
        echo = getattr(e, "echo", None)
        if echo and name in writes and (hooked or self.unsettled) and e.echoed < echo["cap"]:
            # decision 657: a write of the echoing end from inside a read's
            # callback (or while the previous op's bytes still come) lands
            # among the echo's writes where a read ended, which follows the
            # split (460): its peer's bytes are compared by count (and
            # checked as a prefix of this end's writes), not by CRC
            self.trace.setdefault("echo_mix", []).append({"a": "b", "b": "a"}[side])
        if name in writes[:3] and side in self.sendfiling and self.prog["family"] == "tls":
            # decision 807: a TLS end's loop.sendfile() is the stock
            # fallback (write() a chunk, wait for the drain), which lets a
            # write() run meanwhile on both loops: the file's bytes go out
            # among this end's later writes, while its sent record takes
            # them when the sendfile ends, so the peer's bytes are no prefix
            # of that record, stock's as ours; as for 485's stock bytes that
            # are no prefix, their count is compared with stock's, not their
            # CRC (tls 22028 with --callbacks --more)
            self.trace.setdefault("sendfile_mix", []).append({"a": "b", "b": "a"}[side])
        reader = getattr(e, "reader", None)
        if name in ("close", "abort", "rst") and reader is not None and reader._paused:
            # decision 657: the reader paused its transport past 2 * limit
            # after a read whose size was the loop's choice (stock: up to
            # 256 KiB); what it holds when the end goes is cut there (460)
            e.log(_READ_CUT)
            self.trace.setdefault("cut", []).append(side)
        if name in ("close", "write_eof") and _stuck_empty(t):
            self.trace.setdefault("stuck_empty", []).append(side)  # 573
        if name in writes and self.prog["family"] != "tls":
            self._sendfile_taken(side)  # 903
        try:
            if name == "write":
                data = payload(op[2], self._salt())
                # recorded first: a hook in pause_writing writes from inside
                # this write, after its bytes (decision 499)
                sent = self.sent.setdefault(side, bytearray())
                n = len(sent)
                sent += data
                try:
                    res = t.write(_TYPES[op[3]](data))
                except Exception:
                    del sent[n : n + len(data)]
                    raise
            elif name in ("writelines", "writelines_typed"):
                parts = [payload(n, self._salt()) for n in op[2]]
                data = b"".join(parts)
                sent = self.sent.setdefault(side, bytearray())
                n = len(sent)
                sent += data
                if name == "writelines_typed":  # decision 611: bytearray and memoryview parts
                    parts = [_TYPES[k](x) for k, x in zip(op[3], parts, strict=True)]
                try:
                    res = t.writelines(parts)
                except Exception:
                    del sent[n : n + len(data)]
                    raise
                if 0 in op[2] and any(op[2]):
                    self.trace.setdefault("empty_part", []).append(side)  # 488
                if not _STOCK_WL_PAUSES and any(op[2]) and self.prog["family"] in ("tcp", "unix"):
                    self.trace.setdefault("wl_no_pause", []).append(side)  # 671
            elif name == "limits_low":
                kw = {k: v for k, v in zip(("high", "low"), op[2:], strict=True) if v is not None}
                t.set_write_buffer_limits(**kw)
                res = t.get_write_buffer_limits()
            elif name == "sendfile":
                return self._sendfile(op, side, t)
            elif name == "server_close":
                res = self.server.close()
            elif name == "sendto":
                other = "b" if side == "a" else "a"
                res = t.sendto(payload(op[2], self._salt()), self.addr[other])
            elif name == "write_eof":
                res = t.write_eof()
                e.eof_sent = True
            elif name == "sread":
                return [name, side, *e.sread(self.loop, op[2:])]
            elif name == "can_write_eof":
                res = t.can_write_eof()
            elif name == "is_reading":
                res = t.is_reading()
            elif name == "extra":
                # the SSL keys: the object's type, whether there is a peer
                # certificate (the client's is the server's; the server asks
                # for none), the cipher's name, the context's presence
                so, pc = t.get_extra_info("ssl_object"), t.get_extra_info("peercert")
                ci, cx = t.get_extra_info("cipher"), t.get_extra_info("sslcontext")
                res = [
                    None if so is None else type(so).__name__,
                    None if pc is None else bool(pc),
                    None if ci is None else ci[0],
                    cx is not None,
                ]
            elif name == "pause_reading":
                res = t.pause_reading()
            elif name == "resume_reading":
                res = t.resume_reading()
            elif name == "limits":
                t.set_write_buffer_limits(high=op[2])
                res = t.get_write_buffer_limits()
            elif name == "bufsize":
                res = t.get_write_buffer_size()
                res = "0" if res == 0 else ">0" if isinstance(res, int) and res > 0 else repr(res)
            elif name == "is_closing":
                res = t.is_closing()
            elif name == "close":
                res = t.close()
            elif name == "abort":
                res = t.abort()
            elif name == "rst":
                if t.is_closing():
                    return [name, side, "closing"]
                sock = t.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                res = t.abort()
            else:
                raise AssertionError(name)
        except Exception as exc:
            msg = _msg(exc)
            pipe = self.prog["family"] == "pipe"
            if name == "abort" and pipe and isinstance(exc, AttributeError):
                # decision 434(c): abort() after the pipe transport closed is
                # an AttributeError on both, naming a different attribute
                msg = "(attribute: decision 434(c))"
            return [name, side, "raised", type(exc).__name__, msg]
        return [name, side, "ok", res if not isinstance(res, tuple) else list(res)]

    def _sendfile_taken(self, side):
        """Decision 903: a socket end's sendfile whose task has ended puts
        its bytes in the sent record before a write() made before the
        task's done callback ran: the transport took writes again at the
        task's end (stock's _sendfile_native resets its empty waiter there),
        so that write's bytes left after the file's; recorded in the done
        callback's turn, they read as a peer's bytes out of order (tcp
        990109 with --fast --callbacks --more: b's lost hook wrote on a in
        between)."""
        for task, rec in list(self.sendfile_rec.get(side, ())):
            if task.done():
                rec()

    def _sendfile(self, op, side, t):
        """Decision 611: loop.sendfile(t, file, offset) as a task; its result
        goes to the ops' record when it ends (the settle waits for it or
        for the bytes to stop moving), its bytes to the end's sent record
        then (no write() may run meanwhile on a socket end: both loops
        raise; on a TLS end it may, decision 807)."""
        data = payload(op[2], self._salt())
        f = tempfile.TemporaryFile()
        f.write(data)
        f.seek(0)
        task = self.loop.create_task(self.loop.sendfile(t, f, op[3]))
        self.sendfiling.add(side)

        def record():
            recs = self.sendfile_rec.get(side, [])
            mine = [x for x in recs if x[0] is task]
            if not mine:
                return  # taken already (903)
            recs.remove(mine[0])
            if task.cancelled():
                return
            exc = task.exception()
            if exc is not None:
                if not isinstance(exc, RuntimeError):
                    # failed part way, how far not known (a RuntimeError is
                    # raised before anything is sent): the peer's bytes must
                    # be a prefix of the file's, as nothing later gets out
                    self.sent.setdefault(side, bytearray()).extend(data[op[3] :])
            else:
                n = task.result()
                self.sent.setdefault(side, bytearray()).extend(data[op[3] : op[3] + n])

        self.sendfile_rec.setdefault(side, []).append((task, record))

        def done(task):
            f.close()
            record()
            if not self.sendfile_rec.get(side):  # (another may still run, 932)
                self.sendfiling.discard(side)
            if task.cancelled():
                res = ["cancelled"]
            elif task.exception() is not None:
                exc = task.exception()
                res = ["raised", type(exc).__name__, _msg(exc)]
            else:
                res = ["ok", task.result()]
            self.trace["ops"].append(["-", "sendfile-done", side, *res])

        task.add_done_callback(done)
        return ["sendfile", side, "started"]

    def _salt(self):
        self.salt += 1
        return self.salt

    def settle(self):
        """Run the loop until nothing has changed for a few short sleeps."""

        async def quiet():
            deadline = time.monotonic() + SETTLE_MAX
            # from the state the op left (it ran before this first step; a
            # call_later'd one runs during the first sleep): four sleeps
            # without a change, not five (decision 549)
            prev, stable = self._snapshot(), 0
            while stable < 4 and time.monotonic() < deadline:
                await asyncio.sleep(self.quiet)
                cur = self._snapshot()
                stable = stable + 1 if cur == prev else 0
                prev = cur
            if stable < 4:
                # still changing at SETTLE_MAX: what the next op finds depends
                # on the loop's speed (decision 476); not compared
                self.trace["slow"] = True

        # a hook's loop.stop() ends run_until_complete early (decision 499)
        task = self.loop.create_task(quiet())
        while not task.done():
            try:
                self.loop.run_until_complete(task)
            except RuntimeError as exc:
                if "stopped before" not in str(exc):
                    raise

    def _counters(self):
        """Decision 657: each end's core counters as last seen (a closed
        transport's core is gone by teardown)."""
        for e in self.ends.values():
            core = getattr(e.transport, "_core", None)
            for name in ("feeds", "nows"):
                n = getattr(core, name, None)
                if isinstance(n, int):
                    e.counters[name] = max(e.counters.get(name, 0), n)

    def _snapshot(self):
        self._counters()
        out = [len(self.trace["ops"]), len(self.trace["handler"])]
        for s in sorted(self.ends):
            e = self.ends[s]
            out += [len(e.events), len(e.data)]
            if getattr(e, "reader", None) is not None:
                out.append(len(e.reader._buffer))  # 657: bytes still coming in
                if e.reader._paused and s not in self.trace.get("reader_paused", ()):
                    self.trace.setdefault("reader_paused", []).append(s)
            t = e.transport
            if t is not None and not e.lost:
                with contextlib.suppress(Exception):
                    out.append(t.get_write_buffer_size())
        return out


# --------------------------------------------------------------------------
# comparing


def _left(events: list, family: str) -> list:
    """What decision 464 leaves, made one event on both sides; Unix stream
    sockets only. (a) A peer that closes with bytes ours had taken from the
    kernel but not delivered: its close(2) found nothing unread, so this end
    gets EOF; stock's peer had left them unread and this end gets
    ECONNRESET (TCP is fixed: SO_LINGER 0, decision 463; a Unix socket has
    no such reset to ask for). (b) A write to a peer that has closed: stock's
    write() fails at once (EPIPE, connection_lost), ours leaves with the
    turn's flush and the EOF that came meanwhile is handed over first, so
    eof_received comes before the same connection_lost(BrokenPipeError).
    So on a Unix socket how this end sees its peer gone (EOF then
    connection_lost(None), EOF then EPIPE, EPIPE, ECONNRESET) is one event,
    at the byte count where it comes (which covers (e) below for Unix)."""
    if family == "pipe":
        # (d) a read pipe's read(2) is made when the poll's record comes, not
        # after the callbacks queued ahead of it as stock's reader callback:
        # a writer sees the pipe drained a callback earlier and may not
        # fill it, so a pause_writing/resume_writing pair can be missing
        return _no_pause_pair(events)
    if family in ("tcp", "tls"):  # TLS: a TCP socket below (decision 485)
        # (e) decision 426(b): close() closes our fd at once, stock's at
        # connection_lost a turn later, so the peer may get its EOF before
        # its own close() of that turn: EOF then connection_lost(None), not
        # connection_lost(None) alone. (b) on TCP (decision 523, tcp 346,
        # io_uring): a write from a callback to a peer that has closed and
        # reset leaves with the turn's flush (decision 71; epoll sends it
        # in write() while records are delivered, 398), so the EOF that
        # came with it is handed over first: EOF then connection_lost
        # (BrokenPipeError), stock's connection_lost(BrokenPipeError) alone
        out, i = [], 0
        while i < len(events):
            ev = events[i]
            nxt = events[i + 1 : i + 2]
            if ev[0] == "eof" and nxt == [["lost", None, *ev[1:2]]]:
                ev = ["lost", None, *ev[1:2]]
                i += 1
            elif ev[0] == "eof" and nxt == [["lost", "BrokenPipeError[32]", *ev[1:2]]]:
                ev = nxt[0]
                i += 1
            out.append(ev)
            i += 1
        return out
    gone = (None, "BrokenPipeError[32]", "ConnectionResetError[104]")
    out, i, eof_hooks = [], 0, set()
    while i < len(events):
        ev = events[i]
        # an eof hook's results come between (decision 524: unix 560): its
        # callback ran on ours only, so they go with the EOF, and so do
        # those of its call_soon'd ops
        k = i + 1
        while k < len(events) and events[k][0] == "hook":
            k += 1
        nxt = events[k] if k < len(events) else None
        # (counts may be gone: 499(c))
        if ev[0] == "eof" and nxt and nxt[0] == "lost" and nxt[1] in gone and nxt[2:] == ev[1:]:
            out.append(["peer gone (decision 464)", *ev[1:]])  # (a), (b), both
            eof_hooks |= {e[1] for e in events[i + 1 : k]}
            i = k + 1
            continue
        if ev[0] == "lost" and ev[1] in gone:  # None too: (e)
            ev = ["peer gone (decision 464)", *ev[2:]]
        out.append(ev)
        i += 1
    return [ev for ev in out if not (ev[0] == "hook-soon" and ev[1] in eof_hooks)]


_CUT = ("close", "abort", "rst", "pause_reading")
_SPLIT = ("data", "dgram", "pause_writing", "resume_writing")  # when follows the split
# a write pipe's BrokenPipeError() when its reader goes has no errno
_GONE = (None, "BrokenPipeError[32]", "BrokenPipeError", "ConnectionResetError[104]")


def _soon_apart(events: list) -> list:
    """Decision 499(a): a hook's call_soon'd op runs after the turn's other
    callbacks, and how many of this end's callbacks a turn holds is not
    compared (460): its results are a sequence of their own, each marked
    with the side of connection_lost it ran on."""
    out, soon, lost = [], [], False
    for e in events:
        lost = lost or e[0] == "lost"
        if e[0] == "hook-soon":
            # which side of connection_lost it ran on is kept (501)
            soon.append([*e, "after lost" if lost else "before lost"])
        else:
            out.append(e)
    return out + soon


_PEER_GONE = "peer gone (decision 499)"


def _gone_after_lost_hook(events: list) -> list:
    """Decision 499(b): the peer acted from inside its connection_lost after
    a close(). Stock's socket is still open then (`_call_connection_lost`
    closes it after the protocol's callback), so what this end writes there
    is left unread in it and the close resets: ECONNRESET. Ours closed the
    fd at close() (426(b)): this end gets EOF (and runs its eof hooks) then
    EPIPE or nothing. One event, at the byte count where it comes."""
    i = next((i for i, ev in enumerate(events) if ev[0] in ("eof", "lost")), None)
    if i is None:
        return events
    for k in range(i, len(events)):
        ev = events[k]
        if ev[0] == "lost":
            if ev[1] in _GONE and all(e[0] in ("eof", "hook") for e in events[i:k]):
                return [*events[:i], [_PEER_GONE, *ev[2:]], *events[k + 1 :]]
            return events
    return events


def _peer_closing_apart(events: list, side: str) -> list:
    peer = {"a": "b", "b": "a", "r": "w", "w": "r"}[side]
    hooked = ("hook", "hook-soon")
    return [ev[:4] if ev[0] in hooked and ev[3:4] == [peer] else ev for ev in events]


def _no_counts(events: list) -> list:
    """Decision 499(c): an end that stopped reading from inside a read's
    callback: its events without byte counts (its bytes are a prefix of its
    peer's writes, checked apart)."""
    out, after = [], False
    for ev in events:
        if ev[0] == _READ_CUT:
            # decision 657: a StreamReaderProtocol end closed while its
            # reader had paused it: how much its reads take after that
            # follows each loop's read sizes, so not their results either
            after = True
            continue
        if ev[0] == "read" and after:
            ev = ev[: min(i for i, x in enumerate(ev) if x in ("ok", "raised"))]
        out.append(ev[:1] if ev[0] in ("data", "eof") else ev[:2] if ev[0] == "lost" else ev)
    return out


_READ_CUT = "closed with its reader paused (decision 657)"


def _stock_bug(x: list, y: list) -> bool:
    """A stock failure ours does not copy. Python 3.12+'s
    `_SelectorSocketTransport.writelines` has no `_conn_lost` check: after
    connection_lost (the transport's `_loop` is None) a call with data it
    cannot send at once raises AttributeError from `self._loop._add_writer`
    (3.12.1 and 3.13.0 here; seed 55); `write()` and ours warn and return.
    Python 3.10's read pipe transport inherits `is_reading()` from
    ReadTransport, which raises NotImplementedError, and its
    pause_reading/resume_reading call it (decision 426(h)); ours has one;
    3.10's datagram transport has neither (488). 3.13.0's writelines and
    3.12+'s write after some connection_lost paths: `_WRITELINES_BUG` (488)."""
    if (
        x[1] == y[1] == "abort"
        and x[3:] == ["raised", "AttributeError", _ABORT_BUG]
        and y[3] == "ok"
    ):
        # decision 499(f): stock's connection_lost came with `_conn_lost` 0
        # (a close whose buffer drained, 3.11 unix seed 163 with callbacks):
        # its abort() then calls the cleared loop's call_soon
        return True
    if (
        x[1] == y[1] == "sendfile-done"
        and x[3:5] == ["raised", "KeyError"]
        and y[3:] == ["raised", "RuntimeError", "Empty waiter is already set"]
    ):
        # decision 844(e): a second loop.sendfile while one runs; stock's
        # `_sendfile_native` deletes the transport's `_transports` entry
        # first and fails there (KeyError: the fd), before the empty
        # waiter's RuntimeError that ours raises (unix 910108, 940015)
        return True
    if (
        x[1] == y[1]
        and x[1] in ("pause_reading", "resume_reading")
        and x[3:5] == ["raised", "NotImplementedError"]
        and y[3:] == ["ok", None]
    ):
        return True  # Python 3.10's read pipe has no is_reading() (426(h)); seed 7
    return (
        x[1] == y[1]
        and x[1] in ("write", "writelines", "writelines_typed")  # 611's too
        and x[3:4] == ["raised"]
        and x[5] in _WRITELINES_BUG
        and y[3:] == ["ok", None]
    )


_ABORT_BUG = "'NoneType' object has no attribute 'call_soon'"

# what 3.12's and 3.13's writelines() raise after connection_lost: 3.12.1
# calls the cleared `_loop._add_writer`, 3.13.0 the cleared `_write_ready`
# (its `_call_connection_lost` sets it to None); and what 3.12+'s write()
# raises after a connection_lost that came with `_conn_lost` still 0 (a
# close whose buffer drained through the writelines path): it sends on the
# cleared socket and its `_fatal_error` calls the cleared loop (3.11 too,
# where the close() had bytes queued and its writer drained them: unix 694,
# decision 546); decisions 464(g), 488
_WRITELINES_BUG = (
    "'NoneType' object has no attribute '_add_writer'",
    "'NoneType' object is not callable",
    "'NoneType' object has no attribute 'call_exception_handler'",
)


def _stock_writelines_pauses() -> bool:
    """Decision 671: whether the stock socket transport's writelines() pauses
    the protocol past the high-water mark. 3.12's and 3.13's own
    writelines() (3.11 has none: WriteTransport's calls write()) did not
    until CPython gh-127655 (3.12.9, 3.13.2): 3.12.1 and 3.13.0 queue past
    the mark with no pause_writing; ours pauses as write() does."""
    fn = vars(_selector_events._SelectorSocketTransport).get("writelines")
    code = getattr(fn, "__code__", None)
    return code is None or "_maybe_pause_protocol" in code.co_names


_STOCK_WL_PAUSES = _stock_writelines_pauses()
# decision 672: 3.12+'s stock transport has its own writelines(), which
# leaves a 0-byte part in its buffer (488(c)); 3.11's is write()'s
_STOCK_OWN_WL = "writelines" in vars(_selector_events._SelectorSocketTransport)
_EPIPE = "BrokenPipeError[32]"


def _failed_at(events: list) -> int | None:
    """Decision 672: where an end's connection failed (its `lost` with an
    error, or its StreamReader's first read that raised one), or None."""
    for i, ev in enumerate(events):
        if ev[0] == "lost" and ev[1] in _GONE[1:]:
            return i
        if ev[0] == "read" and "raised" in ev and ev[ev.index("raised") + 1] in _GONE[1:]:
            return i
    return None


def _empty_part_went(a: list, b: list) -> bool:
    """Decision 672: stock's end (a) failed with EPIPE first, ours (b) failed
    there or later, and the two agree until stock's failure. 3.12+'s stock
    writelines() leaves a 0-byte part in the buffer, so its writer stays
    armed; when the peer closes, it sends that part: EPIPE, a fatal error,
    the bytes the peer sent before its close never read. Ours (and 3.11's)
    has nothing to send, reads them, and fails at its next write or read."""
    k, j = _failed_at(a), _failed_at(b)
    return k is not None and j is not None and j >= k and _EPIPE in a[k] and a[:k] == b[:k]


def _stock_lacks_pause(ops: list) -> set:
    """Decision 488: the ends whose stock pause_reading() raised
    NotImplementedError (Python 3.10: the datagram transport has none, the
    read pipe's calls the missing is_reading(), 426(h)). Stock's end kept
    reading; ours paused. Their events are not compared."""
    return {
        x[2]
        for x in ops
        if len(x) > 4 and x[1] == "pause_reading" and x[3:5] == ["raised", "NotImplementedError"]
    }


def _no_pause_pair(events: list) -> list:
    out = []
    for ev in events:
        if ev == ["resume_writing"] and out and out[-1] == ["pause_writing"]:
            out.pop()
            continue
        out.append(ev)
    return out


def _no_pause(events: list) -> list:
    """Decision 612: without pause/resume pairs, and without a pause that
    no resume follows (the end stayed paused until it went)."""
    out = _no_pause_pair(events)
    resumed = lambda i: ["resume_writing"] in out[i:]  # noqa: E731
    return [ev for i, ev in enumerate(out) if ev != ["pause_writing"] or resumed(i)]


_FALLBACK_LOST = "Exception in callback _SendfileFallbackProtocol.connection_lost("


def _fallback_lost_race(trace: dict) -> bool:
    """Decision 819: stock's sendfile fallback restored the end's protocol
    after sslproto had queued the fallback protocol's connection_lost."""
    return any(
        h[0].startswith(_FALLBACK_LOST) and h[1] == "InvalidStateError" for h in trace["handler"]
    )


def _zero_high(trace: dict) -> set:
    """Decision 490: the TLS ends given a high-water mark of 0. The stock
    SSL protocol's `_control_app_writing` pauses when the buffer's size >=
    high (0 >= 0: empty too) and resumes when it is <= low: at 0 each call
    (one per `_process_outgoing`, at the end of each read and write) flips
    pause_writing/resume_writing, so their number follows how the bytes
    were split over reads (460), and ours reads more a call (393). By an
    op or by a hook (decision 520: tls 74 and 80), whose results are in the
    firing end's events as ["hook", j, name, side, ...]. Decision 774(a): by
    `--more`'s `limits_low` too (high 0, low left out: tls 20021)."""
    calls = list(trace["ops"])
    for events in trace["ends"].values():
        calls += [ev[1:] for ev in events if ev[0] in ("hook", "hook-soon")]
    return {
        x[2]
        for x in calls
        if len(x) > 4 and x[1] in ("limits", "limits_low") and x[3] == "ok" and x[4][1] == 0
    }


def _no_flow(events: list, flow_hooks=()) -> list:
    """An end's events without its flow control, and without the results of
    the hooks that fired on it (decision 524: pipe 370)."""
    return [
        ev
        for ev in events
        if ev[0] not in ("pause_writing", "resume_writing")
        and not (ev[0] in ("hook", "hook-soon") and ev[1] in flow_hooks)
    ]


def _queued_then_limits(trace: dict) -> set:
    """Decision 547: the ends on which one hook wrote, then set the write
    buffer limits (in that callback or a call_soon of it: one turn). On
    io_uring a small write() made from a callback is queued for the turn's
    flush (decisions 71, 305; Known limits: get_write_buffer_size() counts
    it), so the limits call finds it over a low mark and pauses, and the
    flush resumes; stock's write() had sent it at once (unix 603, and 524's
    tcp/unix 508, 500's 238)."""
    did: dict = {}
    for events in trace["ends"].values():
        for ev in events:
            if ev[0] in ("hook", "hook-soon") and len(ev) > 3:
                did.setdefault((ev[1], ev[3]), []).append(ev[2])
    return {
        side
        for (j, side), names in did.items()
        if "limits" in names
        and any(n in ("write", "writelines") for n in names[: names.index("limits")])
    }


def _no_crc(events: list) -> list:
    return [ev[:2] if ev[0] == "data" else ev for ev in events]


def _no_echo_bufsize(events: list, echoing: set) -> list:
    """Decision 778(b): a hook's get_write_buffer_size() of the echoing end
    runs in the callback whose echo write() came first, so it meets the
    Known limit (a small write of a turn counted as queued on io_uring;
    stock and epoll had sent it: --fast tcp 21040, io_uring and
    io_uring-fallbacks): its result is not compared."""
    hooked = ("hook", "hook-soon")
    return [
        ev[:5] if ev[0] in hooked and ev[2:3] == ["bufsize"] and ev[3] in echoing else ev
        for ev in events
    ]


def _hook_write_bufsize(a: list, b: list) -> list:
    """Decision 905: a hook's get_write_buffer_size() of an end the same
    hook wrote on just before, ">0" on ours where stock's is "0", is the
    Known limit (io_uring counts a small write made from a callback as
    queued until the turn's flush; stock's write() had sent it: --fast tcp
    990102, a's data hook writes 16 KiB on b, then asks b), as 778(b) for
    the echoing end: stock's event is taken as ours. a: stock's events, b:
    ours (the same length); returns a."""
    hooked = ("hook", "hook-soon")
    out, wrote, fire = [], set(), None
    for x, y in zip(a, b, strict=True):
        key = tuple(x[:2]) if x[0] in hooked else None
        if key != fire:
            wrote, fire = set(), key  # one callback's calls are consecutive
        if key is not None and x[2] in ("write", "writelines", "writelines_typed"):
            if x[4:5] == ["ok"]:
                wrote.add(x[3])
        elif (
            key is not None
            and x[2] == "bufsize"
            and x[3] in wrote
            and x[:5] == y[:5]
            and x[5:] == ["0"]
            and y[5:] == [">0"]
        ):
            x = y
        out.append(x)
    return out


def _soon_mix(ref: dict, got: dict) -> set:
    """Decision 775(a): the ends whose peer's writes from hooks ran in another
    order. A hook-soon runs after the turn's callbacks (499(a)); where a
    turn held more reads (460: pipe 21058 with --callbacks --more on
    io_uring-fallbacks, whose pipe read stays armed, 162) a later hook's
    write came before it, so the bytes are the same writes in another order
    (each a prefix of what was written, 485, but another CRC). The order of
    the write hooks is read from each firing end's own events."""
    writes = ("write", "writelines", "writelines_typed", "sendfile")
    peer = {"a": "b", "b": "a", "r": "w", "w": "r"}
    out = set()
    for s in set(ref["ends"]) & set(got["ends"]):
        hooked = ("hook", "hook-soon")
        runs = [
            [tuple(ev[:4]) for ev in t["ends"][s] if ev[0] in hooked and ev[2] in writes]
            for t in (ref, got)
        ]
        if runs[0] != runs[1] and sorted(runs[0]) == sorted(runs[1]):
            out |= {peer[x[3]] for x in runs[0] if x[3] in peer}
    return out


def _soon_written(ref: dict, got: dict) -> set:
    """Decision 775(b): the ends written to by a hook's call_soon'd op. That
    write runs in the next turn's callbacks, after the loop has polled:
    stock's writer callback for the same poll is queued behind it, ours
    flushes as the event comes in, so whether the write found the buffer
    flushed (and crossed the high-water mark) follows where each end's
    callbacks fall in a turn (460): pipe 21038 with --callbacks --more,
    every kind, w's 70,000 B then r's first read's soon writelines
    [65536, 100]: stock queued it behind w's 4,464 B left and paused w."""
    writes = ("write", "writelines", "writelines_typed", "sendfile")
    return {
        ev[3]
        for t in (ref, got)
        for events in t["ends"].values()
        for ev in events
        if ev[0] == "hook-soon" and len(ev) > 3 and ev[2] in writes
    }


def _stock_tls_held(ref: dict, got: dict, family: str) -> set:
    """Decision 776 (tls 21011 with --callbacks --more, epoll and
    io_uring-fallbacks): a's connection_lost hook paused b's reading after
    a's abort. Stock's socket was still open when a's protocol was told
    (499(b)), so b's EOF came after the pause: stock's SSL protocol, paused,
    answers EOF with FLUSHING and waits for resume_reading, and b's close()
    then returns at once (`_start_shutdown` does nothing in FLUSHING): b is
    never lost and its socket stays open (a leaked fd). Ours had closed a's
    fd at abort() (426(b)), b's EOF came before the pause and b shut down.
    The TLS ends stock never ended while ours saw their peer go there (as
    `_gone_after_lost_hook`, everything else the same)."""
    if family != "tls":
        return set()
    peer = {"a": "b", "b": "a"}
    lost_hook = set(ref.get("lost_hook", ())) | set(got.get("lost_hook", ()))
    out = set()
    for s in set(ref["ends"]) & set(got["ends"]):
        a, b = ref["ends"][s], got["ends"][s]
        if peer.get(s) not in lost_hook or any(ev[0] in ("eof", "lost") for ev in a):
            continue
        gb = _gone_after_lost_hook(b)
        if gb != b and [ev for ev in gb if ev[0] != _PEER_GONE] == a:
            out.add(s)
    return out


def differences(ref: dict, got: dict, family: str = "", ours: bool = True) -> list[str]:
    """What differs between stock's trace and got (ours; or stock's second
    run, ours=False: its bytes are not checked against what was written)."""
    out = []
    held = _stock_tls_held(ref, got, family)
    fallback_race = family == "tls" and (_fallback_lost_race(ref) or _fallback_lost_race(got))
    for key in ("fatal", "leaked_fds"):
        r, g = ref.get(key), got.get(key)
        if key == "leaked_fds" and held and r and not g and len(r) <= len(held):
            continue  # decision 776: stock's held TLS ends keep their sockets
        if r != g:
            out.append(f"{key}: stock {r!r} ours {g!r}")
    sendfile_mix = set(ref.get("sendfile_mix", ())) | set(got.get("sendfile_mix", ()))
    for s, ok in sorted(got.get("intact", {}).items()):
        if ours and not ok and s not in sendfile_mix:
            out.append(f"end {s}: received bytes that are not a prefix of its peer's writes")
    unpaused = _stock_lacks_pause(ref["ops"])
    zero_high = _zero_high(ref) if family == "tls" else set()
    cut = set(ref.get("cut", ())) | set(got.get("cut", ()))
    reset_peer = set(ref.get("reset_peer", ())) | set(got.get("reset_peer", ()))
    flow_hooks = set(ref.get("flow_hooks", ())) | set(got.get("flow_hooks", ()))
    lost_hook = set(ref.get("lost_hook", ())) | set(got.get("lost_hook", ()))
    eof_cut = set(ref.get("eof_cut", ())) | set(got.get("eof_cut", ()))
    echo_mix = set(ref.get("echo_mix", ())) | set(got.get("echo_mix", ()))
    soon_mix = _soon_mix(ref, got)
    soon_written = _soon_written(ref, got)
    reader_paused = set(ref.get("reader_paused", ())) | set(got.get("reader_paused", ()))
    echoing = set(ref.get("echoing", ()))
    echo_cut = set(ref.get("echo_cut", ())) | set(got.get("echo_cut", ()))
    wl_no_pause = set(ref.get("wl_no_pause", ()))  # decision 671: stock's only
    queued = _queued_then_limits(ref) | _queued_then_limits(got)
    peer = {"a": "b", "b": "a", "r": "w", "w": "r"}
    gone = set()  # ends whose peer's going was normalised: their ops differ too
    broken = set()  # ends whose stock write()/writelines() failed after connection_lost
    for s in sorted(set(ref["ends"]) | set(got["ends"])):
        a, b = ref["ends"].get(s, []), got["ends"].get(s, [])
        if s in unpaused:
            continue  # decision 488
        if a != b and len(a) == len(b):
            # 499(g): a hook's call that failed on stock as _stock_bug's
            # (3.13's writelines after connection_lost, tcp 58)
            hooked = ("hook", "hook-soon")
            fixed = []
            for x, y in zip(a, b, strict=True):
                if x[0] == y[0] in hooked and _stock_bug(x[1:], y[1:]):
                    if x[2] in ("write", "writelines", "writelines_typed"):
                        # decision 806: as 488's below for an op, the bytes
                        # the hook's failed call left in stock's buffer make
                        # that end's later calls stock's bug too (3.12+
                        # --fast tcp and unix 22010: a hook's writelines after
                        # close, then the program's set_write_buffer_limits
                        # calls the cleared loop's call_exception_handler)
                        broken.add(x[3])
                    x = y
                fixed.append(x)
            a = fixed
        a, b = _soon_apart(a), _soon_apart(b)  # 499(a)
        if s in held:
            gone.add(s)  # decision 776: its calls' results differ too
            continue
        if a != b and s in wl_no_pause:
            # decision 671: 3.12.1's and 3.13.0's stock writelines() queues
            # past the high-water mark without pausing the protocol (CPython
            # gh-127655, fixed in 3.12.9 and 3.13.2); ours pauses as write()
            # does (unix 10 with --fast on 3.12.1 and 3.13.0: a's writelines
            # of 147,457 B to a paused peer, then the peer aborted: stock
            # never paused a, ours paused it for good). On an end that wrote
            # a writelines there, its pauses are not compared (612's rule);
            # the rest of its events still are, by the rules below
            a, b = _no_pause(a), _no_pause(b)
        if a != b and (s in cut or s in reset_peer):
            a, b = _no_counts(a), _no_counts(b)  # 499(c), 523
        if a != b and s in echo_mix:
            a, b = _no_crc(a), _no_crc(b)  # decision 657
        if a != b and s in soon_mix:
            a, b = _no_crc(a), _no_crc(b)  # decision 775(a)
        if a != b and s in soon_written:
            a, b = _no_flow(a, flow_hooks), _no_flow(b, flow_hooks)  # decision 775(b)
        if a != b and echoing:
            a, b = _no_echo_bufsize(a, echoing), _no_echo_bufsize(b, echoing)  # 778(b)
        if a != b and len(a) == len(b):
            a = _hook_write_bufsize(a, b)  # 905
        if a != b and s in echoing:
            # decision 657: the echo's writes race the peer's reads within a
            # turn (where each end's callbacks fall is not compared, 460), so
            # whether the kernel had room for one at once is timing (unix 100
            # and 136 with --fast, every kind: a 64 KiB echo left 28,992 B
            # queued over a 16 KiB mark on epoll); a pause_writing/
            # resume_writing pair of the echoing end is not compared
            a, b = _no_pause_pair(a), _no_pause_pair(b)
        if a != b and s in echo_cut:
            # decision 657: the echoing peer stopped reading or echoing at a
            # split (499(c)), so how much it echoed follows the split too
            # (tcp 12 with --fast: b's hook paused it at 70,000 B; a had
            # 196,608 B of echo on stock, 193,536 on epoll; tcp 142: its
            # hook's write_eof)
            a, b = _no_counts(a), _no_counts(b)
        if a != b and peer.get(s) in reader_paused:
            # decision 657: the peer's StreamReader paused its transport
            # past 2 * limit from inside a read's feed, a pause at a split
            # as a hook's (499(c)); on io_uring its multishot receive takes
            # what comes before the cancel (decisions 75, 477: unix seed 36
            # with --fast, this end's writer drained, resume_writing), so
            # this end's flow control is not compared
            a, b = _no_flow(a, flow_hooks), _no_flow(b, flow_hooks)
        if a != b and peer.get(s) in cut and family != "udp":
            # 499(c): the peer stopped reading (or the writer aborted) at a
            # split; whether this end's writes were all taken then (its flow
            # control, whether it sees the peer go with a flush pending) follows it
            a = _no_flow(_gone_after_lost_hook(a), flow_hooks)
            b = _no_flow(_gone_after_lost_hook(b), flow_hooks)
            gone.add(s)
        if a != b and s in lost_hook:
            # 499(b): this end's connection_lost acted on its peer, which
            # meets a closed socket on ours (426(b): the fd was closed at
            # close(); is_closing() True, write_eof() ENOTCONN after the
            # reset) and an open one on stock: those results not compared
            a, b = _peer_closing_apart(a, s), _peer_closing_apart(b, s)
        if a != b and peer.get(s) in lost_hook and family in ("tcp", "unix", "tls", "pipe"):
            ga, gb = _gone_after_lost_hook(a), _gone_after_lost_hook(b)
            if ga == gb:
                gone.add(s)
                continue  # 499(b)
            if any(ev[0] == _PEER_GONE for ev in ga) and _uncounted(ga) == _uncounted(gb):
                # Decision 574(b): this end's own write from its peer's
                # connection_lost met the closed peer (EPIPE) with the
                # peer's last bytes still unread here; the fatal error
                # drops them, so the count it ends at is how far its reads
                # had got, which follows each loop's read sizes (unix seed
                # 909 with --callbacks: stock 877056, io_uring 1000000,
                # fallbacks 884736, on 3.11 to 3.13). Its bytes are still
                # checked as a prefix of the peer's writes
                gone.add(s)
                continue
        if a != b and s in zero_high and _no_flow(a, flow_hooks) == _no_flow(b, flow_hooks):
            continue  # decision 490
        if (
            a != b
            and fallback_race
            and [e for e in a if e[0] != "lost"] == [e for e in b if e[0] != "lost"]
        ):
            continue  # decision 819: the fallback's connection_lost raced its restore()
        if a != b and s in eof_cut and _no_flow(a, flow_hooks) == _no_flow(b, flow_hooks):
            continue  # decision 547: the peer's EOF came from a read's hook
        if a != b and s in queued and _no_pause_pair(a) == _no_pause_pair(b):
            continue  # decision 547: a hook's small write held for the flush
        if a != b and s in ref.get("empty_part", ()) and _no_pause(a) == _no_pause(b):
            # decision 488: 3.12+'s writelines() leaves a 0-byte part in the
            # stock transport's buffer after sending the rest, so its next
            # write() is queued behind it, not sent: a large one pauses and
            # resumes the protocol; ours (and 3.11's) sends at once.
            # Decision 612: or pauses it for good, where the peer reads no
            # more before the end goes (unix 2239 on 3.12 with --callbacks:
            # pause_writing, then connection_lost)
            continue
        if a != b and s in ref.get("empty_part", ()) and _STOCK_OWN_WL and _empty_part_went(a, b):
            # decision 672 (unix 94 with --fast on 3.12.1 and 3.13.0, every
            # kind: b's writelines [4096, 100, 0], then a closed; stock's b
            # sent its 0-byte part at the close: EPIPE, every read of its
            # StreamReader raised; ours read 102 B first): the events until
            # stock's failure are compared, ours' bytes as a prefix (485)
            gone.add(s)
            continue
        if a != b and not ref.get("intact", {}).get(s, True):
            # CPython gh-156275 (decision 485): stock's SSL protocol reads a
            # BufferedProtocol's second record of a read into a copy of a
            # bytearray buffer's tail and hands over stale bytes of the same
            # count; ours reads into the buffer. Only the CRC is not compared
            a, b = _no_crc(a), _no_crc(b)
        if a != b and _left(a, family) == _left(b, family):
            gone.add(s)
            continue  # decision 464
        if a != b:
            out.append(f"end {s}: stock {a} ours {b}")
    if ref["ops"] != got["ops"]:
        for x, y in zip(ref["ops"], got["ops"], strict=False):
            if x != y and _stock_bug(x, y):
                if x[1] in ("write", "writelines", "writelines_typed"):
                    # decision 488: the failed call left its bytes in the
                    # stock transport's buffer, so what that end's later
                    # calls see (get_write_buffer_size, the limits' test
                    # that calls the cleared protocol) is stock's bug too
                    broken.add(x[2])
                continue
            if x != y and len(x) > 2 and x[2] in gone and family in ("unix", "tcp", "tls"):
                # decision 499(d): this end saw its peer go as EOF on one
                # loop and as a reset on the other (464, 499(b)); a reset
                # closed it, an EOF kept it open (keep_open), so what its
                # calls return after that differs as well
                continue
            if x != y and family == "pipe" and "r" in cut and x[1:3] == y[1:3] == ["bufsize", "w"]:
                # Decision 574(c): a hook paused the reader where a read's
                # bytes ended (499(c)); ours keeps reading a paused pipe, up
                # to 256 KiB held (162, Known limits), so the writer's
                # buffer emptied where stock's kept bytes (pipe seed 940
                # with --callbacks: a resume_writing hook's soon
                # pause_reading; the generator bounds only the program's own
                # writes behind a pause)
                continue
            if x != y and not (len(x) > 2 and x[2] in broken):
                out.append(f"op: stock {x} ours {y}")
                break
        if len(ref["ops"]) != len(got["ops"]):
            out.append(f"ops: stock {len(ref['ops'])} results, ours {len(got['ops'])}")
    rh, gh = ref["handler"], got["handler"]
    if rh != gh and zero_high:
        # decision 490: a flip that comes after connection_lost calls the
        # cleared app protocol (stock's too): AttributeError to the handler
        flips = ("protocol.pause_writing() failed", "protocol.resume_writing() failed")
        keep = lambda h: not (h[0] in flips and h[1] == "AttributeError")  # noqa: E731
        rh, gh = [h for h in rh if keep(h)], [h for h in gh if keep(h)]
    twice = (  # 3.13: "()"
        "Exception in callback _UnixWritePipeTransport._call_connection_lost(",
        "Exception in callback _SelectorSocketTransport._call_connection_lost(",  # 574
    )
    extra = [h for h in rh if h not in gh]
    if (
        rh != gh
        and 1 <= len(extra) <= 2
        and all(h[0].startswith(twice) and h[1] == "AttributeError" for h in extra)
    ):
        # decision 499(e): stock's write pipe calls _call_connection_lost
        # twice when its protocol's resume_writing() closes it (write_eof()
        # queues one with call_soon, _write_ready then calls it itself); the
        # second finds its protocol None. Ours calls it once (3.11 seed 15)
        # Decision 574(a): the socket transport's does the same when
        # resume_writing() closes it from the writer that drained its
        # buffer (close() queues one, _write_send calls it again; 3.11,
        # 3.12 and 3.13, unix seed 909 with --callbacks)
        # Decision 617: a hook that calls close() then abort() there queues
        # two, so stock's third and second fail (pipe 7515 with --more
        # --callbacks, 3.11 and 3.12, shrunk to a 200,000 B write whose
        # resume_writing hook closes and aborts w)
        rh = [h for h in rh if h in gh]
    if rh != gh and fallback_race:
        # decision 819: the race's InvalidStateError, on either loop
        keep = lambda h: not (h[0].startswith(_FALLBACK_LOST) and h[1] == "InvalidStateError")  # noqa: E731
        rh, gh = [h for h in rh if keep(h)], [h for h in gh if keep(h)]
    if rh != gh:
        out.append(f"exception handler: stock {ref['handler']} ours {got['handler']}")
    rl, gl = ref["log"], got["log"]
    if rl != gl and family == "pipe" and "r" in cut:
        # 499(c): how many writes met the closed reader follows the split
        rl, gl = sorted({tuple(x) for x in rl}), sorted({tuple(x) for x in gl})
    streams = family in ("tcp", "unix", "tls")
    if rl != gl and (lost_hook or gone or reset_peer or reader_paused) and streams:
        # decision 521 (499(b)): the peer wrote from this end's
        # connection_lost after its close(); stock's socket was still open
        # (the write went in), ours was closed (426(b): EPIPE, the peer's
        # connection is lost a write earlier), so the peer's later writes
        # meet the lost connection one more time: the stock write() warns
        # from its fifth such call on (unix 299). TLS the same: the peer's
        # SSL protocol had met that EOF (SHUTDOWN) on ours, so the hook's
        # writes already count towards its warning; on stock they went out
        # (WRAPPED), tls 193. Likewise wherever an end's going was
        # normalised (gone: 464, 499(b), (c)) or its peer was aborted from
        # a hook (reset_peer): tcp 388 on epoll, the peer's abort inside
        # buffer_updated sent FIN, not stock's RST (the Known limit of
        # decision 497), so this end's first write after it still went out
        # and the second failed (stock: the first)
        # and decision 657 (unix 122 with --fast): a StreamReader that
        # paused its transport past 2 * limit after reads of other sizes
        # (unix 36: stock's reader held 236,544 B, ours 114,688) left the
        # peer's buffer full on ours, so its close()
        # waited and its later writes came before connection_lost
        # and decision 548 (tls 322, epoll): where that going was EOF on one
        # loop and a reset on the other, sslproto's warning for an
        # eof_received() that returned true comes with the EOF alone
        sent = (
            ["WARNING", "socket.send() raised exception."],
            ["WARNING", "SSL connection is closed"],
            ["WARNING", "returning true from eof_received() has no effect when using ssl"],
        )
        rl, gl = [x for x in rl if x not in sent], [x for x in gl if x not in sent]
    if rl != gl and broken:
        # decision 546: stock's write() after a connection_lost that left
        # `_conn_lost` 0 (a close() with bytes queued, then its writer's
        # drain: `_write_ready` calls `_call_connection_lost` itself, 533)
        # sends on the cleared socket and raises AttributeError from
        # `_fatal_error` (`_stock_bug`), on 3.11 too (unix 694); ours counts
        # such writes as the stock transport does after any other
        # connection_lost and warns from the fifth on
        warn = ["WARNING", "socket.send() raised exception."]
        rl, gl = [x for x in rl if x != warn], [x for x in gl if x != warn]
    if rl != gl:
        out.append(f"asyncio log: stock {ref['log']} ours {got['log']}")
    return out


def _uncounted(events: list) -> list:
    """Decision 574(b): an end's events with the byte counts of its
    peer-gone marker and its data left out."""
    return [ev[:1] if ev[0] in (_PEER_GONE, "data") else ev for ev in events]


def _stuck_empty(t) -> bool:
    """Decision 573: a stock 3.12+ socket transport whose buffer holds only
    0-byte parts (left by writelines()), which its writer never drops."""
    buf = getattr(t, "_buffer", None)
    return (
        type(t).__module__ == "asyncio.selector_events"
        and isinstance(buf, collections.deque)
        and len(buf) > 0
        and not any(len(b) for b in buf)
    )


def check(prog: dict, kinds, stock_twice=True) -> dict:
    """{kind: [differences]} for this program; {'stock': [...]} if stock itself varies."""
    ref = run("stock", prog)
    if ref.get("slow"):
        # Decision 476: an op whose stock run was still moving bytes at
        # SETTLE_MAX (seed 2017: 1 MB through a 1-byte BufferedProtocol
        # buffer, one recv_into(1) a turn, ~950 KB in 3 s) hands the next op
        # a state that depends on the loop's speed; ours, faster, had
        # settled. Skipped, as a stock run that varies.
        return {"stock": [f"stock still busy after an op's {SETTLE_MAX} s settle"]}
    if ref.get("stuck_empty"):
        # Decision 573: 3.12+'s writelines() leaves a 0-byte last part in
        # the stock transport's buffer (488(c)) and its writer never drops
        # it (a sendmsg of it sends 0; `_adjust_leftover_buffer(0)` stops),
        # so a close() or write_eof() with only such parts queued never
        # ends: no connection_lost or EOF, the socket kept open (3.13 with
        # --callbacks, tcp seed 942: writelines [65536, 1, 7, 0] then
        # close; plain tcp seed 990: [1000, 7, 0] then close). Ours and
        # 3.11 close. What follows is not comparable: skipped.
        return {"stock": ["3.12+ writelines() left a 0-byte part: stock's close never ends"]}
    lost_bug = ref.get("empty_waiter_bug")  # decision 954: from _write_ready too
    if lost_bug or any(
        h[1] == "InvalidStateError" and "_call_connection_lost" in h[0] for h in ref["handler"]
    ):
        # Decision 613: stock's socket transport losing its connection while
        # loop.sendfile() runs on it natively (its empty waiter already set)
        # calls set_exception on that done future: InvalidStateError to the
        # handler, and the sendfile's task never ends (its sock_sendfile
        # writer was removed with the transport's; "Task was destroyed but
        # it is pending!"). Ours ends it with the error. Not comparable.
        # Decision 954: the same bug met in `_write_ready`, which calls
        # `_call_connection_lost` itself when a closing transport's buffer
        # drains; its handle was cancelled by then, so the handler's
        # message is "Exception in callback None()": told by the
        # exception's innermost frame (`_empty_waiter_bug`)
        return {"stock": ["stock's connection_lost during sendfile: InvalidStateError, no end"]}
    if stock_twice:
        ref2 = run("stock", prog)
        d = differences(ref, ref2, prog["family"], ours=False)
        if d:
            return {"stock": d}
    return {k: differences(ref, run(k, prog), prog["family"]) for k in kinds}


def shrink(prog: dict, kind: str) -> dict:
    """ddmin over the op list, keeping a program that still differs on `kind`."""

    def fails(ops):
        p = dict(prog, ops=ops)
        res = check(p, [kind], stock_twice=True)
        return bool(res.get(kind))

    ops = list(prog["ops"])
    n = 2
    while len(ops) >= 2:
        size = max(1, len(ops) // n)
        chunks = [ops[i : i + size] for i in range(0, len(ops), size)]
        for j in range(len(chunks)):
            rest = [o for c in chunks[:j] + chunks[j + 1 :] for o in c]
            if fails(rest):
                ops, n = rest, max(n - 1, 2)
                break
        else:
            if n >= len(ops):
                break
            n = min(len(ops), n * 2)
    # unwrap soon/later/stoprun where the plain op still fails
    for j, op in enumerate(ops):
        if op[0] in ("soon", "later", "stoprun", "nosettle"):
            cand = ops[:j] + [op[1]] + ops[j + 1 :]
            if fails(cand):
                ops = cand
    prog = dict(prog, ops=ops)
    for h in list(prog.get("hooks", ())):  # decision 499: drop hooks not needed
        cand = dict(prog, hooks=[x for x in prog["hooks"] if x is not h])
        if bool(check(cand, [kind], stock_twice=True).get(kind)):
            prog = cand
    return prog


def script(prog: dict) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return f'''"""difffuzz repro, seed {prog["seed"]} (the dev interpreter, a built tree)."""
import json, sys
sys.path.insert(0, {here!r})
import difffuzz

PROGRAM = json.loads({__import__("json").dumps(prog)!r})
for kind in ["stock"] + difffuzz.KINDS:
    print(kind, json.dumps(difffuzz.run(kind, PROGRAM)))
for kind, diffs in difffuzz.check(PROGRAM, difffuzz.KINDS).items():
    print(kind, "SAME" if not diffs else "DIFFERENT")
    for d in diffs:
        print("   ", d)
'''


def _read_ahead(prog: dict) -> bool:
    """Decision 923: a program that differs on io_uring alone and gives
    stock's result on io_uring without the multishot receive shows 894's
    class (the receive takes the peer's bytes into pool buffers ahead of
    the protocol). Run twice, as stock is, so that a run that merely
    happened to agree does not count."""
    return all(not any(check(prog, [NOMULTISHOT], stock_twice=False).values()) for _ in range(2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="run seeds start..start+N-1")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--seed", type=int, help="one seed only")
    ap.add_argument(
        "--kind", action="append", choices=[*KINDS, NOMULTISHOT], help="default: the first three"
    )
    ap.add_argument("--family", choices=ALL_FAMILIES, help=f"default: one of {FAMILIES} a seed")
    ap.add_argument(
        "--callbacks", action="store_true", help="add actions run from inside callbacks (499)"
    )
    ap.add_argument(
        "--more",
        action="store_true",
        help="insert writelines of bytearray/memoryview parts, "
        "limits with a low mark, loop.sendfile, a server closed with its connection live (611)",
    )
    ap.add_argument(
        "--fast",
        action="store_true",
        help="programs that reach the write hold (646) and the "
        "StreamReader feed (636-638): an echoing BufferedProtocol or a StreamReaderProtocol (657)",
    )
    ap.add_argument(
        "--triage",
        action="store_true",
        help="a seed that differs on io_uring alone is run again without the multishot "
        "receive; if that run is stock's, it is counted as read-ahead (894), not as a difference",
    )
    ap.add_argument("--shrink", action="store_true", help="minimise a failing seed's op list")
    ap.add_argument("--script", help="write the (minimal) failing program as a script here")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    kinds = args.kind or KINDS
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    failed, varied, readahead, ops_mix = 0, 0, 0, {}
    t0 = time.monotonic()
    for seed in seeds:
        prog = generate(seed, args.family, args.callbacks, args.more, args.fast)
        for op in prog["ops"]:
            name = f"{op[0]}:{op[1][0]}" if op[0] in _WRAPS else op[0]
            ops_mix[name] = ops_mix.get(name, 0) + 1
        res = check(prog, kinds)
        if "stock" in res:
            varied += 1
            if args.verbose:
                print(f"seed {seed} ({prog['family']}): stock varies: {res['stock'][:2]}")
            continue
        bad = {k: d for k, d in res.items() if d}
        if not bad:
            if args.verbose:
                print(f"seed {seed} ({prog['family']}): same")
            continue
        if args.triage and list(bad) == ["io_uring"] and _read_ahead(prog):
            readahead += 1
            print(f"seed {seed} ({prog['family']}) io_uring: read-ahead (894):", bad["io_uring"][0])
            continue
        failed += 1
        for k, d in bad.items():
            print(f"seed {seed} ({prog['family']}) {k}:")
            for line in d:
                print("    " + line[:2000])
        if args.shrink:
            kind = next(iter(bad))
            small = shrink(prog, kind)
            print(f"  minimal ({kind}): {small}")
            if args.script:
                with open(args.script, "w") as f:
                    f.write(script(small))
                print(f"  script: {args.script}")
        sys.stdout.flush()
    n = len(seeds)
    print(
        f"{n} seeds x {len(kinds)} kinds ({', '.join(kinds)}) in {time.monotonic() - t0:.0f} s: "
        f"{failed} differ, {varied} skipped (stock varies or is still busy at SETTLE_MAX)"
        + (f", {readahead} read-ahead (894)" if args.triage else "")
    )
    print("op mix:", dict(sorted(ops_mix.items())))
    if args.fast:
        print("fast paths reached (657):", dict(sorted(REACHED.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
