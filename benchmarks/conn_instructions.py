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

    python benchmarks/conn_instructions.py --loop uvloop --loop uringloop-io_uring -n 200

Needs valgrind. A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
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


def count(
    loop: str, kind: str, n: int, size: int, gap: float, tmp: str, server_close: bool = False
) -> int:
    http = kind == "httptools"
    total, _ = callgrind_server(
        loop,
        kind,
        tmp,
        str(n),
        True,
        lambda addr: drive(addr[1], n, size, gap, http, server_close and http),
    )
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", action="append", required=True)
    ap.add_argument("--kind", default="protocol")
    ap.add_argument("-n", type=int, default=200, help="connections of the short run")
    ap.add_argument("--size", type=int, default=1024, help="the echo's message (not httptools)")
    ap.add_argument("--gap", type=float, default=2.0, help="ms between connections")
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
        c1 = count(loop, a.kind, a.n, a.size, a.gap / 1000, tmp, a.server_close)
        c2 = count(loop, a.kind, 2 * a.n, a.size, a.gap / 1000, tmp, a.server_close)
        print(f"{loop:20} {a.kind:9} {(c2 - c1) / a.n:10.0f} instructions/connection", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
