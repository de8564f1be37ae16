#!/usr/bin/env python3
"""User instructions per short-lived connection of a server (decision 595).

Like server_instructions.py (whose server template and callgrind run this
borrows), but each request is its own connection: connect, send one
``--size``-byte message, read the echo back, close (the client closes first,
as loadgen --reconnect's echo rows do), wait ``--gap`` ms, next. The server
(net_server.py ``--kind``, loopback TCP) runs alone under
``valgrind --tool=callgrind``; N and 2N connections, the difference over N:
start-up and shut-down cancelled out. User space only: count syscalls with
strace (net_bench.py --strace on the conn-* rows). ``--kind httptools``: a GET
and the fixed response, then the client's close (decision 788); with
``--server-close`` the conn-http-httptools row's own exchange (loadgen
--reconnect --http's): the GET says ``Connection: close``, the server closes
after its answer and the client reads to the EOF (decision 817).

``--conc C`` keeps C connections open at once, as loadgen --reconnect -c C
does (the conn-1k-c50-protocol-tcp and conn-http-httptools rows run 50): a
selector client of non-blocking sockets that opens the next connection as
soon as one is done, no gap (decision 824). The server, slowed down under
valgrind, then always has connections waiting: its turns batch accepts and
completions as a busy server's do.

    python benchmarks/conn_instructions.py --loop uvloop --loop uringloop-io_uring -n 200
    python benchmarks/conn_instructions.py --loop uvloop --loop uringloop-epoll --conc 50

Each line also gives the cyclic garbage collector's share (``gc``, the
instructions under ``gc_collect_main``) and the count without it: where a
collection falls moves a loop's count by thousands between runs (the "two
modes" of decisions 837 and 869; 1011).

Needs valgrind. A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import net_server  # noqa: E402  (after the path set-up above)
from server_instructions import HTTP_REQUEST, callgrind_server  # noqa: E402

ROW_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def drive(
    port: int, n: int, size: int, gap: float, http: bool = False, server_close: bool = False
) -> None:
    """n connections, one after the other (http: each sends loop_bench's GET
    and reads net_server.py's fixed response, the conn-http-httptools row's
    exchange; else a size-byte message and its echo)."""
    msg = (ROW_REQUEST if server_close else HTTP_REQUEST) if http else os.urandom(size)
    want = net_server.HTTP_RESPONSE if http else msg
    size = len(want)
    for _ in range(n):
        time.sleep(gap)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(msg)
            got = b""
            while len(got) < size:
                piece = s.recv(size - len(got))
                if not piece:
                    raise RuntimeError("the server closed early")
                got += piece
            if server_close and s.recv(1) != b"":
                raise RuntimeError("no EOF after the answer")
            if got != want:
                raise RuntimeError("the answer differs")


def drive_conc(
    port: int, n: int, conc: int, size: int, http: bool = False, server_close: bool = False
) -> None:
    """drive()'s exchange on n connections, conc of them open at once: the next
    one is opened as soon as one is done (loadgen --reconnect's -c)."""
    msg = (ROW_REQUEST if server_close else HTTP_REQUEST) if http else os.urandom(size)
    want = net_server.HTTP_RESPONSE if http else msg
    sel = selectors.DefaultSelector()
    started = 0

    def start() -> None:
        nonlocal started
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect_ex(("127.0.0.1", port))
        # [what is left to send, what came back]
        sel.register(s, selectors.EVENT_WRITE, [memoryview(msg), bytearray()])
        started += 1

    try:
        while started < min(n, conc):
            start()
        while sel.get_map():
            events = sel.select(60)
            if not events:
                raise RuntimeError("no answer for 60 s")
            for key, mask in events:
                s, st = key.fileobj, key.data
                if mask & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    try:
                        st[0] = st[0][s.send(st[0]) :]
                    except BlockingIOError:
                        pass
                    if not len(st[0]):
                        sel.modify(s, selectors.EVENT_READ, st)
                    continue
                try:
                    piece = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                got = st[1]
                if piece:
                    got += piece
                    if len(got) > len(want) or (len(got) == len(want) and got != want):
                        raise RuntimeError("the answer differs")
                    if len(got) < len(want) or server_close:
                        continue
                elif not server_close or len(got) != len(want):
                    raise RuntimeError("the server closed early")
                sel.unregister(s)
                s.close()
                if started < n:
                    start()
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()


def count(
    loop: str,
    kind: str,
    n: int,
    size: int,
    gap: float,
    tmp: str,
    server_close: bool = False,
    conc: int = 1,
) -> int:
    http = kind == "httptools"
    sc = server_close and http
    if conc > 1:
        client = lambda addr: drive_conc(addr[1], n, conc, size, http, sc)  # noqa: E731
    else:
        client = lambda addr: drive(addr[1], n, size, gap, http, sc)  # noqa: E731
    tag = str(n) if conc == 1 else f"{n}c{conc}"
    total, out = callgrind_server(loop, kind, tmp, tag, True, client)
    return total, gc_cost(out)


def gc_cost(path: str) -> int:
    """The cyclic garbage collector's instructions in a callgrind file: the
    inclusive cost of every call of ``gc_collect_main`` from another
    function. A collection comes once so many container objects are made
    (700 on 3.11), wherever that falls: an N run and its 2N run may hold
    one collection more or less, a few thousand instructions a connection
    that are no function's of ours (decision 1011)."""
    names: dict[str, str] = {}

    def name(value: str) -> str:
        value = value.strip()
        if value.startswith("("):
            ref, _, rest = value.partition(")")
            if rest.strip():
                names[ref] = rest.strip()
            return names.get(ref, value)
        return value

    total = 0
    fn = cfn = ""
    pending = False
    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                cfn = name(line[4:])
            elif line.startswith("calls="):
                pending = True
            elif pending and (line[:1].isdigit() or line[:1] in "+-*"):
                pending = False
                parts = line.split()
                if cfn == "gc_collect_main" and fn != cfn and len(parts) > 1:
                    total += int(parts[1], 0)
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", action="append", required=True)
    ap.add_argument("--kind", default="protocol")
    ap.add_argument("-n", type=int, default=200, help="connections of the short run")
    ap.add_argument("--size", type=int, default=1024, help="the echo's message (not httptools)")
    ap.add_argument("--gap", type=float, default=2.0, help="ms between connections (--conc 1)")
    ap.add_argument(
        "--conc", type=int, default=1, help="connections open at once (more than 1: no gap)"
    )
    ap.add_argument("--keep", metavar="DIR", help="keep callgrind's files in DIR")
    ap.add_argument(
        "--server-close",
        action="store_true",
        help="httptools: the row's GET (Connection: close), the server closes first",
    )
    a = ap.parse_args(argv)
    tmp = a.keep or tempfile.mkdtemp(prefix="conn_instr.")
    os.makedirs(tmp, exist_ok=True)
    for loop in a.loop:
        c1, g1 = count(loop, a.kind, a.n, a.size, a.gap / 1000, tmp, a.server_close, a.conc)
        c2, g2 = count(loop, a.kind, 2 * a.n, a.size, a.gap / 1000, tmp, a.server_close, a.conc)
        gc = (g2 - g1) / a.n
        print(
            f"{loop:20} {a.kind:9} c={a.conc:<3} {(c2 - c1) / a.n:10.0f} instructions/connection"
            f"  (gc {gc:.0f}, without gc {(c2 - c1) / a.n - gc:.0f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
