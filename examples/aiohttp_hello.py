"""uringloop demo: an aiohttp server and client on one uringloop loop.

    python examples/aiohttp_hello.py            # serve, fetch a few pages, print, exit 0
    python examples/aiohttp_hello.py --serve    # just serve on 127.0.0.1:8080 (Ctrl-C stops)
    python examples/aiohttp_hello.py --stock    # the same on the stock asyncio loop

Starts an aiohttp web server on 127.0.0.1 (an ephemeral port), fetches a few
pages from it with aiohttp's own client on the same loop, prints which loop and
backend served them, the responses and a line of timing, and exits 0. Every step
is bounded by a timeout: the demo never hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

try:
    from aiohttp import ClientSession, ClientTimeout, web
except ImportError:
    sys.exit("this demo needs aiohttp: pip install aiohttp")

import uringloop

TIMEOUT = 30  # seconds for the whole demo


def make_app() -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/")
    async def index(request):
        return web.Response(text="Hello from aiohttp\n")

    @routes.get("/hello/{name}")
    async def hello(request):
        return web.Response(text=f"Hello, {request.match_info['name']}!\n")

    @routes.get("/loop")
    async def which_loop(request):
        loop = asyncio.get_running_loop()
        return web.json_response(
            {
                "loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
                "backend": getattr(loop, "backend", "stock asyncio"),
            }
        )

    @routes.post("/echo")
    async def echo(request):
        return web.Response(body=await request.read())

    app = web.Application()
    app.add_routes(routes)
    return app


def describe(loop) -> str:
    if isinstance(loop, uringloop.Loop):
        return f"uringloop, backend {loop.backend} ({loop.backend_reason or 'auto'})"
    return f"stock asyncio ({type(loop).__name__})"


async def demo(requests: int) -> None:
    loop = asyncio.get_running_loop()
    print(f"loop: {describe(loop)}")
    runner = web.AppRunner(make_app())
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        print(f"serving on {base}")
        async with ClientSession(timeout=ClientTimeout(total=10)) as session:
            for path in ("/", "/hello/world", "/loop"):
                async with session.get(base + path) as resp:
                    body = (await resp.text()).strip()
                    print(f"GET {path} -> {resp.status} {body}")
            async with session.post(base + "/echo", data=b"ping" * 1000) as resp:
                body = await resp.read()
                assert body == b"ping" * 1000, "echo mismatch"
                print(f"POST /echo -> {resp.status} ({len(body)} bytes echoed)")

            async def get(i):
                async with session.get(f"{base}/hello/{i}") as resp:
                    assert await resp.text() == f"Hello, {i}!\n"

            t0 = time.perf_counter()
            await asyncio.gather(*(get(i) for i in range(requests)))
            dt = time.perf_counter() - t0
            print(
                f"{requests} concurrent GETs in {dt * 1000:.1f} ms "
                f"({requests / dt:,.0f} requests/s, server and client on one loop)"
            )
    finally:
        await runner.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="store_true", help="serve until Ctrl-C instead")
    ap.add_argument("--port", type=int, default=8080, help="port for --serve")
    ap.add_argument("--stock", action="store_true", help="use the stock asyncio loop")
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    factory = asyncio.new_event_loop if args.stock else uringloop.new_event_loop

    if args.serve:
        loop = factory()
        print(f"loop: {describe(loop)}")
        web.run_app(make_app(), host="127.0.0.1", port=args.port, loop=loop)
        return 0

    async def bounded():
        await asyncio.wait_for(demo(args.requests), TIMEOUT)

    run = asyncio.run if args.stock else uringloop.run  # uringloop.run: like asyncio.run
    try:
        run(bounded())
    except asyncio.TimeoutError:
        print(f"error: the demo did not finish within {TIMEOUT} s", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
