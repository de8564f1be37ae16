"""uringloop demo: an echo server and clients on one loop, with sock_* methods.

    python examples/echo.py [--clients N] [--messages M]

Prints which backend runs and why, echoes messages of 1 B to 64 KiB between
N clients and the server over 127.0.0.1, checks every byte, and exits 0.
"""

import argparse
import asyncio
import os
import socket
import sys
import time

import uringloop


async def serve(loop, listener, stop):
    conns = []

    async def handle(conn):
        with conn:
            while data := await loop.sock_recv(conn, 65536):
                await loop.sock_sendall(conn, data)

    while not stop.is_set():
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({accept, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if accept in done:
            conn, _ = accept.result()
            conns.append(asyncio.ensure_future(handle(conn)))
        else:
            accept.cancel()
        stopped.cancel()
    await asyncio.gather(*conns)


async def client(loop, address, messages):
    sock = socket.socket()
    sock.setblocking(False)
    with sock:
        await loop.sock_connect(sock, address)
        for i in range(messages):
            msg = os.urandom(1 << (i % 17))  # 1 B .. 64 KiB
            await loop.sock_sendall(sock, msg)
            got = bytearray()
            while len(got) < len(msg):
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    raise ConnectionError("server closed early")
                got += chunk
            if got != msg:
                raise AssertionError(f"echo mismatch on message {i}")
        return messages


async def main(clients, messages):
    loop = asyncio.get_running_loop()
    reason = loop.backend_reason or "io_uring available"
    print(f"uringloop {uringloop.__version__}: backend {loop.backend} ({reason})")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    stop = asyncio.Event()
    server = asyncio.ensure_future(serve(loop, listener, stop))
    start = time.perf_counter()
    counts = await asyncio.wait_for(
        asyncio.gather(*(client(loop, listener.getsockname(), messages) for _ in range(clients))),
        timeout=10,
    )
    elapsed = time.perf_counter() - start
    stop.set()
    await asyncio.wait_for(server, 5)
    listener.close()
    stats = loop.engine_stats()
    print(
        f"{clients} clients echoed {sum(counts)} messages byte-exact in {elapsed * 1000:.0f} ms"
        f" ({stats['enters']} kernel entries, {stats['records']} completions)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    try:
        uringloop.run(main(args.clients, args.messages))
    except Exception as exc:
        print(f"demo failed: {exc!r}", file=sys.stderr)
        sys.exit(1)
