"""uringloop example: TLS echo, with certificates made at run time.

    python examples/tls_echo.py            # self-test: TLS echo + STARTTLS, then exit 0
    python examples/tls_echo.py --stock    # the same on the stock asyncio loop

A throw-away certificate authority and a server certificate for 'localhost' are
generated in memory with ``trustme`` (pip install trustme). TLS is the stdlib's
(``ssl`` + asyncio's own TLS layer) over the loop's transports. The self-test:

1. a TLS echo server (``asyncio.start_server(..., ssl=...)``) and clients that
   verify the certificate, send messages up to 1 MiB and check every byte;
2. STARTTLS: a plain connection upgraded in place on both sides with
   ``StreamWriter.start_tls`` (Python 3.11+).

Every wait has a timeout; the program never hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time

try:
    import trustme
except ImportError:
    sys.exit("this example makes its certificates with trustme: pip install trustme")

import uringloop

TIMEOUT = 60


def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()  # verifies the chain and the host name
    ca.configure_trust(client)
    return server, client


async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def tls_echo(server_ctx, client_ctx, clients: int) -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]

    async def client():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        total = 0
        for size in (1, 100, 16384, 100_000, 1 << 20):
            msg = os.urandom(size)
            writer.write(msg)
            if await reader.readexactly(size) != msg:
                raise AssertionError("TLS echo mismatch")
            total += size
        version = writer.get_extra_info("ssl_object").version()
        cipher = writer.get_extra_info("cipher")[0]
        writer.close()
        await writer.wait_closed()
        return total, version, cipher

    t0 = time.perf_counter()
    results = await asyncio.gather(*(client() for _ in range(clients)))
    dt = time.perf_counter() - t0
    server.close()
    await server.wait_closed()
    total = sum(r[0] for r in results)
    print(f"TLS echo: {clients} clients, {total:,} bytes checked in {dt * 1000:.1f} ms "
          f"({results[0][1]}, {results[0][2]})")  # fmt: skip


async def starttls(server_ctx, client_ctx) -> None:
    if sys.version_info < (3, 11):
        print("STARTTLS: skipped (StreamWriter.start_tls needs Python 3.11+)")
        return
    done = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        try:
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"OK\n")
            await writer.drain()
            await writer.start_tls(server_ctx)  # the same connection, now TLS
            line = await reader.readline()
            writer.write(b"secret received: " + line)
            await writer.drain()
        finally:
            writer.close()
            done.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"STARTTLS\n")
    assert await reader.readline() == b"OK\n"
    await writer.start_tls(client_ctx, server_hostname="localhost")
    assert writer.get_extra_info("ssl_object") is not None
    writer.write(b"hello over TLS\n")
    reply = await reader.readline()
    assert reply == b"secret received: hello over TLS\n", reply
    writer.close()
    await writer.wait_closed()
    await done
    server.close()
    await server.wait_closed()
    print(f"STARTTLS: plain connection upgraded on both sides; reply {reply.strip()!r}")


async def selftest(clients: int) -> None:
    loop = asyncio.get_running_loop()
    if isinstance(loop, uringloop.Loop):
        print(f"loop: uringloop, backend {loop.backend}")
    else:
        print(f"loop: stock asyncio ({type(loop).__name__})")
    server_ctx, client_ctx = contexts()
    print("certificates: a trustme CA and a 'localhost' certificate, made in memory")
    await tls_echo(server_ctx, client_ctx, clients)
    await starttls(server_ctx, client_ctx)


def main() -> int:
    ap = argparse.ArgumentParser(description="TLS echo self-test on uringloop")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--stock", action="store_true", help="use the stock asyncio loop")
    args = ap.parse_args()
    run = asyncio.run if args.stock else uringloop.run

    async def bounded():
        await asyncio.wait_for(selftest(args.clients), TIMEOUT)

    try:
        run(bounded())
    except asyncio.TimeoutError:
        print(f"error: the self-test did not finish within {TIMEOUT} s", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
