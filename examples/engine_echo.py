#!/usr/bin/env python3
"""TCP echo server and clients, all on the uringloop completion engine.

One engine, one thread, loopback only:

* server: a listening socket on 127.0.0.1 (ephemeral port) with a multishot
  ``accept``; each accepted connection gets a multishot ``recv`` whose bytes are
  sent straight back with ``send``; ``close_fd`` on EOF;
* clients: a few sockets that ``connect`` through the engine, queue several
  messages of different sizes with ``send`` (the engine keeps them in order),
  read the echo with a multishot ``recv``, check it byte for byte, then
  ``shutdown`` their write side and ``close_fd`` on the server's EOF.

Exits 0 when every echo matched, 1 with a message otherwise, and gives up after
10 seconds. Run ``URINGLOOP_BACKEND=epoll python examples/engine_echo.py`` (or
``--backend epoll``) to watch the fallback do the same work.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from uringloop import engine  # noqa: E402

TIME_LIMIT = 10.0
MESSAGE_SIZES = (1, 64, 1500, 16_384, 100_000)


class Failed(Exception):
    pass


# Callbacks record problems here instead of raising, so a failure surfaces the same
# way whatever the engine does with an exception escaping a callback.
PROBLEMS: list[str] = []


def fail(msg: str) -> None:
    PROBLEMS.append(msg)


def nodelay(fd: int) -> None:
    """TCP_NODELAY, as asyncio sets on its TCP transports: without it, the last
    small segment of a burst waits for the peer's delayed ACK (about 40 ms)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.detach()


def _err(res: int) -> str:
    return f"{res} ({os.strerror(-res)})" if res < 0 else str(res)


class EchoServer:
    def __init__(self, eng: engine.Engine) -> None:
        self.eng = eng
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        lsock.setblocking(False)
        self.address = lsock.getsockname()
        self.lfd = lsock.detach()  # from here on the engine owns the fd
        self.accepted = 0
        self.open = 0
        self.echoed = 0
        self.stopping = False
        self.closed = False
        eng.accept(self.lfd, self._on_accept, multishot=True)

    def _on_accept(self, res: int, more: bool, data) -> None:
        if res >= 0:
            self.accepted += 1
            self.open += 1
            nodelay(res)
            self._serve(res)
        elif not self.stopping:
            fail(f"accept failed: {_err(res)}")
        if not more and not self.stopping:
            fail("multishot accept ended on its own")

    def _serve(self, fd: int) -> None:
        eng = self.eng

        def on_sent(res: int, more: bool, data) -> None:
            if res < 0:
                fail(f"server send on fd {fd}: {_err(res)}")

        def on_closed(res: int, more: bool, data) -> None:
            if res != 0:
                fail(f"server close_fd({fd}): {_err(res)}")
            self.open -= 1

        def on_recv(res: int, more: bool, data) -> None:
            if res > 0:
                self.echoed += res
                eng.send(fd, data, on_sent)
            elif res == 0:  # EOF: the client shut its write side
                if not more:
                    eng.close_fd(fd, on_closed)
            else:
                fail(f"server recv on fd {fd}: {_err(res)}")
            if res > 0 and not more:
                fail(f"server recv on fd {fd} ended without EOF")

        eng.recv(fd, on_recv, multishot=True)

    def stop(self) -> None:
        self.stopping = True

        def on_closed(res: int, more: bool, data) -> None:
            if res != 0:
                fail(f"listener close_fd: {_err(res)}")
            self.closed = True

        self.eng.close_fd(self.lfd, on_closed)


class Client:
    def __init__(self, eng: engine.Engine, n: int, address) -> None:
        self.eng = eng
        self.n = n
        self.messages = [os.urandom(size) for size in MESSAGE_SIZES]
        self.expected = b"".join(self.messages)
        self.received = bytearray()
        self.verified = False
        self.done = False
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = sock.detach()
        eng.connect(self.fd, socket.AF_INET, address, self._on_connect)

    def _on_connect(self, res: int, more: bool, data) -> None:
        if res != 0:
            fail(f"client {self.n}: connect: {_err(res)}")
            return
        self.eng.recv(self.fd, self._on_recv, multishot=True)
        for msg in self.messages:  # queued back to back; the engine keeps their order
            self.eng.send(self.fd, msg, self._on_sent)

    def _on_sent(self, res: int, more: bool, data) -> None:
        if res < 0:
            fail(f"client {self.n}: send: {_err(res)}")

    def _on_recv(self, res: int, more: bool, data) -> None:
        if res > 0:
            self.received += data
            if len(self.received) > len(self.expected):
                fail(f"client {self.n}: more bytes echoed than sent")
            elif len(self.received) == len(self.expected):
                if self.received != self.expected:
                    at = next(
                        i
                        for i, (a, b) in enumerate(zip(self.received, self.expected, strict=True))
                        if a != b
                    )
                    fail(f"client {self.n}: echo differs at byte {at}")
                    return
                self.verified = True
                self.eng.shutdown(self.fd, socket.SHUT_WR, self._on_shutdown)
        elif res == 0:
            if not self.verified:
                fail(
                    f"client {self.n}: EOF after {len(self.received)} of {len(self.expected)} bytes"
                )
            if not more:
                self.eng.close_fd(self.fd, self._on_closed)
        else:
            fail(f"client {self.n}: recv: {_err(res)}")

    def _on_shutdown(self, res: int, more: bool, data) -> None:
        if res != 0:
            fail(f"client {self.n}: shutdown: {_err(res)}")

    def _on_closed(self, res: int, more: bool, data) -> None:
        if res != 0:
            fail(f"client {self.n}: close_fd: {_err(res)}")
        self.done = True


def run_until(eng: engine.Engine, cond, deadline: float, what: str) -> None:
    while not cond():
        if PROBLEMS:
            raise Failed("; ".join(PROBLEMS[:5]))
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failed(f"timed out after {TIME_LIMIT:.0f} s waiting for {what}")
        eng.run(min(left, 0.5))
    if PROBLEMS:
        raise Failed("; ".join(PROBLEMS[:5]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("auto", "io_uring", "epoll"), default=None)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args()

    info = engine.backend_info()
    print(f"uringloop engine on Linux {info.get('kernel')}")
    reason = f" ({info['reason']})" if info["reason"] else ""
    print(f"  default backend: {info['backend']}{reason}")
    if info["backend"] == "io_uring":
        print(
            f"  ring flags: {', '.join(info.get('ring_flags', [])) or '-'}; "
            f"multishot recv/accept: {info.get('multishot_recv')}/"
            f"{info.get('multishot_accept')}; buffer ring: {info.get('buffer_ring')}"
        )

    t0 = time.monotonic()
    deadline = t0 + TIME_LIMIT
    eng = engine.Engine(backend=args.backend)
    print(f"  this engine: {eng.backend}" + (f" ({eng.reason})" if eng.reason else ""))
    try:
        server = EchoServer(eng)
        host, port = server.address
        print(f"echo server on {host}:{port}")
        clients = [Client(eng, n, server.address) for n in range(args.clients)]
        run_until(eng, lambda: all(c.done for c in clients), deadline, "the echoes")
        run_until(eng, lambda: server.open == 0, deadline, "the server to close its sockets")
        server.stop()
        run_until(eng, lambda: server.closed and eng.in_flight == 0, deadline, "the listener")
    except Failed as exc:
        print(f"FAILED ({eng.backend}): {exc}", file=sys.stderr)
        return 1
    finally:
        stats = eng.stats()
        eng.close()

    total = sum(len(c.expected) for c in clients)
    records = stats.get("records", stats.get("completions"))
    print(
        f"OK: {len(clients)} clients x {len(MESSAGE_SIZES)} messages, {total} bytes echoed "
        f"byte-exact via {server.accepted} accepted connections in "
        f"{(time.monotonic() - t0) * 1e3:.1f} ms"
    )
    print(
        f"engine stats: {stats.get('enters')} kernel entries, {stats.get('submitted')} "
        f"submitted, {records} records"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
