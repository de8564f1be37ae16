"""uringloop example: a TCP echo server in three styles.

    python examples/echo_server.py protocol              # serve on 127.0.0.1:8888
    python examples/echo_server.py buffered --port 9000
    python examples/echo_server.py streams --selftest    # serve, test, exit

Modes:

* ``protocol``  -- ``asyncio.Protocol``: data_received() writes the bytes back;
* ``buffered``  -- ``asyncio.BufferedProtocol``: the loop receives straight into
  the protocol's own buffer (get_buffer/buffer_updated), no bytes object per read;
* ``streams``   -- ``asyncio.start_server`` with a StreamReader/StreamWriter.

``--selftest`` starts the server on an ephemeral port, runs clients against it
on the same loop (each sends messages of 1 byte to 1 MiB and checks every byte
echoed back), prints a line of timing and exits 0. Every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import uringloop

TIMEOUT = 60  # seconds for the whole self-test


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    # eof_received returns None: the transport closes once the echo is flushed


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def __init__(self):
        self.buffer = bytearray(64 * 1024)  # one buffer per connection, reused

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        # a copy (a bytearray slice): a transport may keep what it is given
        # until it is sent (the stock loop does since 3.12), and this buffer is
        # refilled by the next receive
        self.transport.write(self.buffer[:nbytes])


async def handle_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def start(mode: str, host: str, port: int) -> asyncio.AbstractServer:
    if mode == "streams":
        return await asyncio.start_server(handle_stream, host, port)
    factory = EchoProtocol if mode == "protocol" else EchoBufferedProtocol
    return await asyncio.get_running_loop().create_server(factory, host, port)


async def client(port: int, sizes: list[int]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    total = 0
    try:
        for size in sizes:
            msg = os.urandom(size)
            writer.write(msg)
            # read the echo while the rest may still be leaving
            got = await reader.readexactly(size)
            if got != msg:
                raise AssertionError(f"echo mismatch for a {size}-byte message")
            total += size
        writer.write_eof()
        if await reader.read() != b"":
            raise AssertionError("bytes after the last echo")
    finally:
        writer.close()
        await writer.wait_closed()
    return total


async def selftest(mode: str, clients: int) -> None:
    loop = asyncio.get_running_loop()
    print(f"loop: {describe(loop)}; mode: {mode}")
    server = await start(mode, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sizes = [1, 7, 100, 4096, 65536, 300_000, 1 << 20]
    t0 = time.perf_counter()
    totals = await asyncio.gather(*(client(port, sizes) for _ in range(clients)))
    dt = time.perf_counter() - t0
    server.close()
    await server.wait_closed()
    total = sum(totals)
    print(
        f"{clients} clients echoed {total:,} bytes, every byte checked, in {dt * 1000:.1f} ms "
        f"({2 * total / dt / 1e6:,.0f} MB/s both ways)"
    )


def describe(loop) -> str:
    if isinstance(loop, uringloop.Loop):
        return f"uringloop, backend {loop.backend}"
    return f"stock asyncio ({type(loop).__name__})"


async def serve(mode: str, host: str, port: int) -> None:
    server = await start(mode, host, port)
    addr = server.sockets[0].getsockname()
    print(f"loop: {describe(asyncio.get_running_loop())}; {mode} echo on {addr[0]}:{addr[1]}")
    async with server:
        await server.serve_forever()


def main() -> int:
    ap = argparse.ArgumentParser(description="TCP echo server on uringloop")
    ap.add_argument("mode", choices=["protocol", "buffered", "streams"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8888)
    ap.add_argument("--selftest", action="store_true", help="run clients against it and exit")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--stock", action="store_true", help="use the stock asyncio loop")
    args = ap.parse_args()
    run = asyncio.run if args.stock else uringloop.run

    if not args.selftest:
        try:
            run(serve(args.mode, args.host, args.port))
        except KeyboardInterrupt:
            pass
        return 0

    async def bounded():
        await asyncio.wait_for(selftest(args.mode, args.clients), TIMEOUT)

    try:
        run(bounded())
    except asyncio.TimeoutError:
        print(f"error: the self-test did not finish within {TIMEOUT} s", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
