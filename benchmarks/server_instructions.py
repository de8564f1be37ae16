#!/usr/bin/env python3
"""User instructions per request of a server that sleeps between requests.

instructions.py runs both ends of a scenario in one loop, which never sleeps.
This runs one of net_server.py's echo servers (``--kind``: sock, protocol,
buffered or streams; or httptools, its HTTP server, which gets a keep-alive
GET and answers its fixed response; or aiohttp, its aiohttp.web hello world,
which gets the same GET over loopback TCP only and whose answer, with its
Date header, is checked by its status line, Content-Length and body:
``--size`` does not apply to either; or tls, its protocol echo under TLS
with a certificate made as net_bench.py makes it, whose client does each
connection's handshake before the rounds with the stdlib's ssl, so that only
the echo's records are counted) alone under
``valgrind --tool=callgrind``, over a Unix socket or loopback TCP (``--tcp``),
driven from this process by a client of non-blocking sockets and a selector,
in rounds: it waits ``--gap`` ms, sends one ``--size``-byte message on each
of its ``--conns`` connections, and reads every echo back before the next
round. N and 2N requests in all, the difference over N: start-up and
shut-down cancelled out. Kernel time is not
counted (callgrind's Ir is user space); count syscalls with perf or strace
(net_bench.py --strace, kcounts.py). libc's copies are shown apart: callgrind
counts a ``rep movsb`` byte by byte, so they are most of a 100 KiB echo's
count and move with the heap's layout (glibc picks its copy loop by the
addresses too).

The gap (default 3 ms with one connection, 0 with more) decides whether the
server sleeps. With one connection and no gap the client, at native speed,
always has the next message waiting for the slowed-down server, and a loop
that tries ``recv`` first never waits; with the gap every receive is asked
for before its data comes, as with loadgen at c=1. With ``--conns 10`` a
round's messages reach the server, far slower under valgrind than the
client, while it works: turns batch as in net_bench's c=10 rows, where the
server is the busy side. Rounds, not connections that each send again as
soon as their echo is back: those keep the slowed-down server's _ready
non-empty at every poll, a state loadgen at native speed hardly makes
(decision 577), and the count would be of that state.

    python benchmarks/server_instructions.py --loop rloop --loop uringloop-io_uring
    python benchmarks/server_instructions.py --loop uringloop-epoll --breakdown 25
    python benchmarks/server_instructions.py --kind buffered --size 102400 --tcp --conns 10 -n 200
    python benchmarks/server_instructions.py --kind httptools --tcp --conns 100 -n 1000
    python benchmarks/server_instructions.py --kind aiohttp --tcp --conns 100 -n 2000
    python benchmarks/server_instructions.py --kind tls --tcp --conns 10 -n 500
    python benchmarks/server_instructions.py --kind protocol --tcp --cache --breakdown 30
    python benchmarks/server_instructions.py --kind protocol --tcp --cold --breakdown 30

``--cache`` adds callgrind's cache and branch simulation (CACHE_SIM: this
host's 32 KiB L1s, one core's 1 MiB L2 as the last level): data references,
L1 and last-level misses and mispredicted branches per request, and with
``--breakdown`` per function, ordered by ``--sort``. The simulated caches see
the server's user-space accesses only, never the kernel's or other tasks',
so between requests they stay as warm as the server's own footprint lets
them. ``--cold`` empties them at every wait that may block (coldwait.c,
preloaded; decision 779): a request's misses are then the cache lines it
touches after a wake-up, the most a wake-up into caches the kernel and the
other tasks used meanwhile can cost; the line after a row says how often
a request emptied them (1.00 at c=1 with its gap, 30 ms).

Needs valgrind. A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import instructions  # noqa: E402  (after the path set-up above)
import net_bench  # noqa: E402
import net_server  # noqa: E402

# the httptools kind's request (loop_bench.py's) and the answer it must bring back
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: loop_bench\r\n\r\n"

KINDS = ("sock", "protocol", "buffered", "streams", "httptools", "aiohttp", "tls")
# the aiohttp kind's answer: its Date header changes, so the check is this status
# line, a complete head, Content-Length and this body
AIOHTTP_STATUS = b"HTTP/1.1 200 OK\r\n"
AIOHTTP_BODY = b"Hello, World!"
# libc's copy functions: callgrind counts a ``rep movsb`` byte by byte, and which
# path glibc takes (``rep movsb`` or vector loops) depends on the sizes and on the
# two addresses (4 KiB aliasing), so their count moves with the heap's layout
COPY = re.compile(r":__(memcpy|memmove|mempcpy)\w*$")

SERVER = r"""
import argparse, asyncio, os, sys
sys.path.insert(0, {here!r})
import net_server
loop = net_server.make_loop({loop!r})
asyncio.set_event_loop(loop)
# which uringloop the server runs (the checkout's or the interpreter's installed one)
_ul = sys.modules.get("uringloop")
_ul = os.path.dirname(_ul.__file__) if _ul is not None else "-"
args = argparse.Namespace(kind={kind!r}, unix={unix!r}, tcp={tcp!r}, cert={cert!r}, key={key!r})
addr = loop.run_until_complete(net_server.serve(loop, args))
# the end: stdin's EOF, seen by the loop (under valgrind a blocked io_uring_enter holds
# off signals and other threads); an idle reader costs no request anything
loop.add_reader(0, loop.stop)
print("READY", addr if isinstance(addr, str) else addr[1], _ul, flush=True)
loop.run_forever()
os._exit(0)
"""


def checkout_is_built() -> bool:
    """Whether the checkout's uringloop has its _sched extension built for the
    running interpreter (``make build`` builds it in place for one Python)."""
    import importlib.machinery

    pkg = os.path.join(ROOT, "uringloop")
    return any(
        os.path.exists(os.path.join(pkg, "_sched" + suffix))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def uringloop_dir() -> str:
    """The uringloop package the server runs: the checkout's if it is built for
    this interpreter, else the one installed for it (``pip install .``)."""
    if checkout_is_built():
        return os.path.join(ROOT, "uringloop")
    import importlib.util

    spec = importlib.util.find_spec("uringloop")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the checkout is not built for {sys.executable} and no uringloop is "
            "installed for it: pip install the checkout into its environment"
        )
    return os.path.dirname(spec.origin)


def aiohttp_done(got: bytes, name: str) -> bool:
    """Whether got is one whole aiohttp hello-world answer (RuntimeError if it
    is not one, or is more than one)."""
    head_end = got.find(b"\r\n\r\n")
    if head_end < 0:
        if len(got) > 4096:
            raise RuntimeError(f"{name}: no end of the head in 4 KiB")
        return False
    head = bytes(got[: head_end + 4])
    m = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.IGNORECASE)
    if not head.startswith(AIOHTTP_STATUS) or m is None:
        raise RuntimeError(f"{name}: not a 200 with a Content-Length: {head!r}")
    want = len(head) + int(m.group(1))
    if len(got) < want:
        return False
    if len(got) > want or bytes(got[len(head) :]) != AIOHTTP_BODY:
        raise RuntimeError(f"{name}: the answer differs: {bytes(got)!r}")
    return True


def drive(
    addr,
    n: int,
    conns: int,
    size: int,
    gap: float,
    name: str,
    http: bool = False,
    aiohttp: bool = False,
    tls: bool = False,
) -> None:
    """n echo requests in rounds: gap, then one message on each of conns
    connections, then every echo back before the next round (http: the message
    is an HTTP GET and what comes back net_server.py's fixed response; aiohttp:
    the same GET, and the answer aiohttp_done() checks; tls: each connection
    is a TLS client's, its handshake done before the first round)."""
    family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    http = http or aiohttp
    msg = HTTP_REQUEST if http else os.urandom(size)
    answer = net_server.HTTP_RESPONSE if http else msg
    size = len(answer)
    sel = selectors.DefaultSelector()
    socks = []
    ctx = tls_client_context() if tls else None
    for _ in range(conns):
        s = socket.socket(family)
        s.settimeout(60)
        s.connect(addr)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ctx is not None:
            # a blocking handshake (timeout 60 s): the server's share of it is
            # start-up, the same in the N and 2N runs
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.setblocking(False)
        socks.append(s)
    try:
        while n > 0:
            time.sleep(gap)
            # per connection of the round: [what is left to send, what came back]
            todo = {s: [memoryview(msg), bytearray()] for s in socks[: min(n, conns)]}
            n -= len(todo)
            for s in todo:
                sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while todo:
                events = sel.select(60)
                if not events:
                    raise RuntimeError(f"{name}: no echo for 60 s")
                for key, mask in events:
                    s = key.fileobj
                    out, got = todo[s]
                    if mask & selectors.EVENT_WRITE and len(out):
                        try:
                            out = todo[s][0] = out[s.send(out) :]
                        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            pass
                        if not len(out):
                            sel.modify(s, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        try:
                            piece = s.recv(1 << 18)
                            # a TLS socket's records already decrypted (the
                            # selector does not see them)
                            while tls and piece and s.pending():
                                piece += s.recv(1 << 18)
                        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            # TLS: a partial record, or only a session ticket
                            continue
                        if not piece:
                            raise RuntimeError(f"{name}: the server closed early")
                        got += piece
                        if aiohttp:
                            done = aiohttp_done(got, name)
                        else:
                            if len(got) > size or (len(got) == size and got != answer):
                                raise RuntimeError(f"{name}: the echo differs")
                            done = len(got) == size
                        if done:
                            sel.unregister(s)
                            del todo[s]
    finally:
        sel.close()
        for s in socks:
            s.close()


def tls_client_context() -> ssl.SSLContext:
    """The tls kind's client: no certificate check (net_bench's certificate is
    made for the run); TLS 1.3 as loadgen's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --cache: callgrind's cache and branch simulation, with this host's caches
# given (its guest CPUID reports a 320 MiB direct-mapped L3): 32 KiB 8-way L1s
# and, as the last level, one core's 1 MiB 8-way L2 (the 32 MiB L3 is shared
# with the other tasks and guests)
CACHE_SIM = [
    "--cache-sim=yes",
    "--branch-sim=yes",
    "--I1=32768,8,64",
    "--D1=32768,8,64",
    "--LL=1048576,8,64",
]
# the per-request columns --cache prints: (label, callgrind's events summed)
CACHE_COLUMNS = (
    ("Ir", ("Ir",)),
    ("D refs", ("Dr", "Dw")),
    ("D1 miss", ("D1mr", "D1mw")),
    ("LL D miss", ("DLmr", "DLmw")),
    ("I1 miss", ("I1mr",)),
    ("LL I miss", ("ILmr",)),
    ("mispred", ("Bcm", "Bim")),
)


def coldwait_so(tmp: str) -> str:
    """coldwait.c built into tmp (--cold's preload)."""
    so = os.path.join(tmp, "coldwait.so")
    if not os.path.exists(so):
        subprocess.run(
            ["cc", "-O2", "-shared", "-fPIC", "-o", so, os.path.join(HERE, "coldwait.c"), "-ldl"],
            check=True,
        )
    return so


def callgrind_events(path: str) -> tuple[list[str], dict[str, list[int]]]:
    """A callgrind file's event names and each function's exclusive costs
    ("function [object]" -> a count per event); a call's inclusive cost line
    (the one after calls=) is not the caller's own."""
    names: dict[tuple[str, str], str] = {}

    def name(kind: str, value: str) -> str:
        value = value.strip()
        if value.startswith("("):
            ref, _, rest = value.partition(")")
            key = (kind, ref + ")")
            if rest.strip():
                names[key] = rest.strip()
            return names.get(key, value)
        return value

    events: list[str] = []
    npos = 1
    costs: dict[str, list[int]] = {}
    ob = fn = ""
    skip = False
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("positions:"):
                npos = len(line.split()) - 1
            elif line.startswith("ob="):
                ob = os.path.basename(name("ob", line[3:]))
            elif line.startswith("cob="):
                name("ob", line[4:])
            elif line.startswith("fn="):
                fn = name("fn", line[3:])
            elif line.startswith("cfn="):
                name("fn", line[4:])
            elif line.startswith(("fl=", "fi=", "fe=", "cfi=", "cfl=")):
                name("fl", line.split("=", 1)[1])
            elif line.startswith("calls="):
                skip = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                vals = line.split()[npos:]
                row = costs.setdefault(f"{fn} [{ob}]", [0] * len(events))
                for i, v in enumerate(vals):
                    row[i] += int(v, 0)
    return events, costs


def cache_per_request(paths: tuple[str, str], n: int):
    """(label -> count per request, [(function, {label: per request})]) from
    a run of n and one of 2n requests."""
    ev1, small = callgrind_events(paths[0])
    ev2, big = callgrind_events(paths[1])
    if ev1 != ev2:
        raise RuntimeError(f"the runs' events differ: {ev1} {ev2}")

    def cols(row1, row2):
        d = [(b - a) / n for a, b in zip(row1, row2, strict=True)]
        return {
            label: sum(d[ev1.index(e)] for e in evs if e in ev1) for label, evs in CACHE_COLUMNS
        }

    zero = [0] * len(ev1)
    per_fn = [(k, cols(small.get(k, zero), big.get(k, zero))) for k in set(small) | set(big)]
    total = cols(
        [sum(r[i] for r in small.values()) for i in range(len(ev1))],
        [sum(r[i] for r in big.values()) for i in range(len(ev1))],
    )
    return total, per_fn


def callgrind_server(
    loop: str,
    kind: str,
    tmp: str,
    tag: str,
    tcp: bool,
    client,
    cache: bool = False,
    cold: bool = False,
) -> tuple[int, str]:
    """net_server.py's `kind` server on `loop` alone under callgrind (loopback
    TCP, or a Unix socket in tmp), driven by client(addr); callgrind's total
    and its output file. The tls kind's certificate and key are tmp's
    cert.pem and key.pem (made by net_bench.make_cert if absent)."""
    path = None if tcp else os.path.join(tmp, f"s.{tag}")
    out = os.path.join(tmp, f"cg.{loop}.{tag}.out")
    env = dict(os.environ, PYTHONHASHSEED="0")
    if checkout_is_built():
        env["PYTHONPATH"] = ROOT
    else:
        # this interpreter has no build of the checkout (its extension is another
        # Python's): the server runs the one installed in this interpreter's
        # environment, never the checkout's half (decision 852)
        env.pop("PYTHONPATH", None)
    cert = key = None
    if kind == "tls":
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        if not os.path.exists(cert):
            net_bench.make_cert(tmp)
    code = SERVER.format(
        here=HERE, loop=loop, kind=kind, unix=path, tcp=0 if tcp else None, cert=cert, key=key
    )
    # an empty working directory: `python -c` puts it first on sys.path, and the
    # start-up's imports list it (a busy /tmp's listing, which changes between
    # the N and 2N runs, was thousands of instructions per request of noise)
    cwd = os.path.join(tmp, f"cwd.{tag}")
    os.makedirs(cwd, exist_ok=True)
    tool = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if cache or cold:
        tool += CACHE_SIM
    if cold:
        env["LD_PRELOAD"] = coldwait_so(tmp)
        env["COLDWAIT_LOG"] = os.path.join(tmp, f"coldwait.{tag}.log")
    srv = subprocess.Popen(
        [*tool, sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    try:
        line = srv.stdout.readline().split()
        if line[:1] != [b"READY"]:
            raise RuntimeError(f"{loop}: the server did not start ({line!r})")
        if loop.startswith("uringloop") and line[2:3] != [os.fsencode(uringloop_dir())]:
            raise RuntimeError(f"{loop}: the server ran {line[2:3]!r}, not {uringloop_dir()}")
        client(("127.0.0.1", int(line[1])) if tcp else path)
        # let the server see the EOFs, then stop it: its loop stops at its stdin's
        # EOF (callgrind writes its file at the exit)
        time.sleep(1.0)
        srv.stdin.close()
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


def count(
    loop: str,
    n: int,
    gap: float,
    tmp: str,
    kind: str = "sock",
    size: int = 1024,
    tcp: bool = False,
    conns: int = 1,
    cache: bool = False,
    cold: bool = False,
) -> tuple[int, str]:
    """callgrind's total for a server run of n requests, and its output file."""
    return callgrind_server(
        loop,
        kind,
        tmp,
        str(n),
        tcp,
        lambda addr: client(addr, n, conns, size, gap, loop, kind),
        cache=cache,
        cold=cold,
    )


def client(addr, n: int, conns: int, size: int, gap: float, name: str, kind: str) -> None:
    """drive()'s rounds; for aiohttp, after one request on a connection of its
    own (as net_bench's warm-up client): CPython 3.11 shrinks a class's shared
    instance keys by one with every instance made, so an attribute first set
    after a burst of instances never joins them, and every later instance
    materializes its dict. aiohttp's StreamWriter sets buffer_size, output_size
    and _eof only when it writes: a first round of `conns` requests made
    `conns` writers before the first write or not, by the loop's order, and
    that cost (about 1,900 instructions a request) came or went with it
    (decision 739)."""
    if kind == "aiohttp":
        drive(addr, 1, 1, size, 0, name, aiohttp=True)
    drive(
        addr,
        n,
        conns,
        size,
        gap,
        name,
        http=kind == "httptools",
        aiohttp=kind == "aiohttp",
        tls=kind == "tls",
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loop", action="append", help="net_server.py's loop names (repeatable)")
    ap.add_argument("--kind", choices=KINDS, default="sock", help="net_server.py's server kind")
    ap.add_argument("--size", type=int, default=1024, help="bytes a message (not httptools)")
    ap.add_argument("--tcp", action="store_true", help="loopback TCP (default: a Unix socket)")
    ap.add_argument("--conns", type=int, default=1, help="client connections")
    ap.add_argument(
        "-n",
        type=int,
        default=500,
        help="requests of the short run (the long: 2n); a few hundred where a request "
        "costs little (start-up's own noise is thousands)",
    )
    ap.add_argument(
        "--gap",
        type=float,
        default=None,
        help="ms a connection waits after an echo before its next message "
        "(default 3 with one connection, 30 with --cold, 0 with more)",
    )
    ap.add_argument("--breakdown", type=int, default=0, metavar="K")
    ap.add_argument("--keep", metavar="DIR", help="keep callgrind's files in DIR")
    ap.add_argument(
        "--cache",
        action="store_true",
        help="also simulate the caches and branches (CACHE_SIM): data and instruction "
        "misses and mispredicted branches per request; --breakdown then lists them",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="--cache with the simulated caches emptied at every wait that may block "
        "(coldwait.c): a request's misses are then the lines it touches",
    )
    ap.add_argument(
        "--sort",
        default="D1 miss",
        choices=[c[0] for c in CACHE_COLUMNS],
        help="--cache's breakdown order",
    )
    opts = ap.parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind is not installed", file=sys.stderr)
        return 2
    if opts.kind == "aiohttp" and not opts.tcp:
        ap.error("--kind aiohttp serves loopback TCP only: add --tcp")
    # --cold: every wait empties callgrind's caches and drops its translations,
    # so a request takes the server some ms; with 3 ms between them the next
    # message is often there before io_uring's wait (which then does not
    # wait), and the count is of that state: 30 ms
    one_gap = 30.0 if opts.cold else 3.0
    gap = (opts.gap if opts.gap is not None else one_gap if opts.conns == 1 else 0.0) / 1000
    loops = opts.loop or ["uvloop", "rloop", "uringloop-io_uring", "uringloop-epoll"]
    cache = opts.cache or opts.cold
    conf = dict(
        kind=opts.kind, size=opts.size, tcp=opts.tcp, conns=opts.conns, cache=cache, cold=opts.cold
    )
    what = "GET" if opts.kind in ("httptools", "aiohttp") else f"{opts.size} B"
    print(
        f"{opts.kind}, {what}, {'TCP' if opts.tcp else 'Unix'}, c={opts.conns}, "
        f"gap {gap * 1000:g} ms, n={opts.n}",
        flush=True,
    )
    for lp in loops:
        with tempfile.TemporaryDirectory(prefix="srvinstr-") as tmp:
            small, p1 = count(lp, opts.n, gap, tmp, **conf)
            big, p2 = count(lp, 2 * opts.n, gap, tmp, **conf)
            if cache:
                total, per_fn = cache_per_request((p1, p2), opts.n)
                waits = ""
                if opts.cold:
                    w1, w2 = (
                        int(open(os.path.join(tmp, f"coldwait.{k}.log")).read().split()[0])
                        for k in (opts.n, 2 * opts.n)
                    )
                    waits = f"  (caches emptied {(w2 - w1) / opts.n:.2f} times a request)"
                print(
                    f"{lp:22} per request"
                    + "".join(f"  {label} {v:,.0f}" for label, v in total.items())
                    + waits,
                    flush=True,
                )
                per_fn.sort(key=lambda kv: -kv[1][opts.sort])
                if opts.breakdown:
                    print("    " + "".join(f"{label[:8]:>8}" for label, _ in CACHE_COLUMNS))
                for name, c in per_fn[: opts.breakdown]:
                    print("    " + "".join(f"{v:8,.0f}" for v in c.values()) + f"  {name}")
                if opts.keep:
                    os.makedirs(opts.keep, exist_ok=True)
                    for p in (p1, p2):
                        shutil.copy(p, opts.keep)
                continue
            per_fn = instructions.breakdown((p1, p2), opts.n, 1 << 30)
            copy = sum(per for name, per in per_fn if COPY.search(name))
            print(
                f"{lp:22} {(big - small) / opts.n:10,.0f} instructions per request "
                f"(memcpy/memmove {copy:,.0f}, the rest {(big - small) / opts.n - copy:,.0f})",
                flush=True,
            )
            for name, per in per_fn[: opts.breakdown]:
                print(f"    {per:9,.0f}  {name}")
            if opts.keep:
                os.makedirs(opts.keep, exist_ok=True)
                for p in (p1, p2):
                    shutil.copy(p, opts.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
