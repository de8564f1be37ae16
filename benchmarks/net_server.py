"""One benchmark server in its own process, for benchmarks/net_bench.py.

    python benchmarks/net_server.py --loop uvloop --kind protocol --tcp 0 --cpu 0

Pins itself to --cpu, makes the named loop, serves, and prints one line on
stdout: ``READY <tcp port or unix path>``, or ``SKIP <reason>`` (exit 3) when
this loop cannot serve this workload here. It runs until killed (SIGTERM).
On uringloop, SIGUSR1 makes it print ``STATS <json>``: the engine's counters
(``loop.engine_stats()``) and the loop's turns (``turns``).

Server kinds (all echo servers write back exactly what they read):
  protocol   asyncio.Protocol, data_received -> transport.write
  buffered   asyncio.BufferedProtocol with a 64 KiB buffer
             (these two with --spin N: N turns of an empty loop after each write)
  streams    asyncio.start_server, read(64 KiB) -> write -> drain
  sock       loop.sock_accept / sock_recv(64 KiB) / sock_sendall on a task per connection
  tls        the protocol server under TLS (--cert/--key)
  aiohttp    aiohttp.web hello world
  httptools  asyncio.Protocol + httptools parser, hello world, keep-alive
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import ssl
import sys

LOOPS = ("asyncio", "uvloop", "rloop", "rsloop", "uringloop-io_uring", "uringloop-epoll")


def make_loop(name):
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "rloop":
        import rloop

        return rloop.new_event_loop()
    if name == "rsloop":
        try:
            import rsloop
        except ImportError as exc:
            raise RuntimeError(
                f"not installed ({exc}); its Linux wheels need glibc 2.39, this process runs "
                f"on {platform.libc_ver()[1]}: `make rsloop-env` builds benchmarks/.rsloop-env, "
                "which net_bench.py then runs every server under (benchmarks/rsloop_env.py)"
            ) from None

        return rsloop.new_event_loop()
    if name.startswith("uringloop-"):
        backend = name.split("-", 1)[1]
        os.environ["URINGLOOP_BACKEND"] = backend
        import uringloop

        loop = uringloop.new_event_loop()
        got = loop.backend
        if got != backend:
            raise RuntimeError(f"asked for {backend}, the loop runs on {got}")
        return loop
    raise ValueError(name)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class BufferedEcho(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray(65536)
        self.view = memoryview(self.buf)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        # a copy: the transport may keep what it could not send yet
        self.transport.write(self.buf[:nbytes])


def spinning(spin):
    """The protocol and buffered echo servers made slower per request by a
    known amount: `spin` turns of an empty Python loop after each write
    (--spin; decision 940)."""
    turns = range(spin)

    class SpinEcho(Echo):
        def data_received(self, data):
            self.transport.write(data)
            for _ in turns:
                pass

    class SpinBufferedEcho(BufferedEcho):
        def buffer_updated(self, nbytes):
            self.transport.write(self.buf[:nbytes])
            for _ in turns:
                pass

    return SpinEcho, SpinBufferedEcho


async def streams_handler(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def sock_client(loop, conn):
    try:
        while True:
            data = await loop.sock_recv(conn, 65536)
            if not data:
                break
            await loop.sock_sendall(conn, data)
    except ConnectionError:
        pass
    finally:
        conn.close()


async def sock_server(loop, lsock):
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = loop.create_task(sock_client(loop, conn))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


HTTP_BODY = b"Hello, World!"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(HTTP_BODY)).encode()
    + b"\r\n\r\n"
    + HTTP_BODY
)


class HttpToolsProtocol(asyncio.Protocol):
    def __init__(self):
        import httptools

        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except Exception:
            self.transport.close()

    def on_message_complete(self):
        self.transport.write(HTTP_RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(loop, args):
    kind = args.kind
    unix = args.unix
    backlog = 4096
    if kind == "sock":
        if unix:
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(unix)
        else:
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(("127.0.0.1", args.tcp))
        lsock.listen(backlog)
        lsock.setblocking(False)
        loop.create_task(sock_server(loop, lsock))
        return lsock.getsockname()
    if kind == "aiohttp":
        from aiohttp import web

        async def hello(request):
            return web.Response(text="Hello, World!")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.tcp, backlog=backlog)
        await site.start()
        return site._server.sockets[0].getsockname()
    sslctx = None
    if kind == "tls":
        sslctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sslctx.load_cert_chain(args.cert, args.key)
    if kind == "streams":
        if unix:
            srv = await asyncio.start_unix_server(streams_handler, unix, backlog=backlog)
        else:
            srv = await asyncio.start_server(
                streams_handler, "127.0.0.1", args.tcp, backlog=backlog
            )
    else:
        spin = getattr(args, "spin", 0)  # (server_instructions.py's Namespace has none)
        echo, buffered = spinning(spin) if spin else (Echo, BufferedEcho)
        factory = {
            "protocol": echo,
            "tls": Echo,
            "buffered": buffered,
            "httptools": HttpToolsProtocol,
        }[kind]
        if unix:
            srv = await loop.create_unix_server(factory, unix, backlog=backlog, ssl=sslctx)
        else:
            srv = await loop.create_server(
                factory, "127.0.0.1", args.tcp, backlog=backlog, ssl=sslctx
            )
    return srv.sockets[0].getsockname()


def stats(loop):
    """The engine's counters and the loop's turns (``_turns``, the scheduler's
    count of ``_run_once`` calls): a turn that finds no record and no
    deferred work makes no kernel entry, so turns against enters tell a
    server that spins through empty turns from one whose every turn takes
    records (decision 938)."""
    out = loop.engine_stats()
    out["turns"] = loop._turns
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", required=True, choices=LOOPS)
    ap.add_argument("--kind", required=True)
    ap.add_argument("--tcp", type=int, default=None, help="TCP port on 127.0.0.1 (0: any)")
    ap.add_argument("--unix", default=None, help="Unix socket path")
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--spin", type=int, default=0, help="protocol, buffered: busy work a request")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    try:
        loop = make_loop(args.loop)
    except Exception as exc:  # not installed, or cannot run on this machine
        print(f"SKIP {args.loop} does not start here: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(3)
    asyncio.set_event_loop(loop)
    try:
        addr = loop.run_until_complete(serve(loop, args))
    except Exception as exc:
        print(
            f"SKIP {args.loop} cannot serve {args.kind} ({'unix' if args.unix else 'tcp'}): "
            f"{type(exc).__name__}: {exc}",
            flush=True,
        )
        sys.exit(3)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    if args.loop.startswith("uringloop-"):
        # the loop's own handler, not signal.signal(): a plain handler runs
        # only when the loop next wakes, and a signal that lands between the
        # loop's last check and its wait (an idle server after the window)
        # waited for the next event (net_bench's 10 s, "said None")
        loop.add_signal_handler(
            signal.SIGUSR1,
            lambda: print("STATS " + json.dumps(stats(loop)), flush=True),
        )
    where = addr if isinstance(addr, str) else addr[1]
    print(f"READY {where}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
