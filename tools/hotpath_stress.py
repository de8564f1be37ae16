"""Stress of the hot paths changed by 753-755, 759, 765 (decision 773).

Three parts, each with invariants checked against the asyncio contract (no
timings):
  big   Protocol (not Buffered) reads of many MiB with pause/resume/close/abort
        at random points, from inside data_received and from call_soon/later;
        the peer sometimes write_eof()s or closes while paused.
  accept  many short connections: the peer resets (SO_LINGER 0) or closes right
        after connect, before or during the accept; the protocol pauses,
        closes or aborts in connection_made at random.
  ring  a server idle for many one-at-a-time receives (the ring shrinks, 759),
        then a burst of many connections sending at once.
Usage, from a built tree (the ASan one too, LD_PRELOAD as the Makefile's asan):
    python tools/hotpath_stress.py PART ROUNDS SEED  (URINGLOOP_BACKEND picks;
    STRESS_STOCK=1 runs the stock loop, the invariants' own check)
"""
import asyncio
import gc
import os
import random
import socket
import struct
import sys

sys.path.insert(0, os.getcwd())
import uringloop  # noqa: E402

ERRORS = []
STATS = {"bytes": 0, "pauses": 0, "closes": 0, "eofs": 0, "rounds_full": 0}


def handler(loop, ctx):
    ERRORS.append(repr(ctx.get("message")) + " " + repr(ctx.get("exception")))


def payload(n, seed):
    r = random.Random(seed)
    return r.randbytes(n)


class BigReader(asyncio.Protocol):
    def __init__(self, rnd, loop, done):
        self.rnd, self.loop, self.done = rnd, loop, done
        self.buf = bytearray()
        self.paused = False
        self.closed = False
        self.lost = 0
        self.eof = 0
        self.bad = []
        self.t = None
        self.close_at = rnd.choice([None, None, rnd.randrange(1, 8 << 20)])
        self.close_kind = rnd.choice(["close", "abort"])
        self.p_pause = rnd.choice([0.02, 0.2, 0.5])

    def connection_made(self, t):
        self.t = t
        if self.rnd.random() < 0.2:
            self.pause()

    def pause(self):
        if self.closed or self.paused:
            return
        self.t.pause_reading()
        STATS["pauses"] += 1
        self.paused = True
        how = self.rnd.random()
        if how < 0.3:
            self.loop.call_soon(self.resume)
        elif how < 0.9:
            self.loop.call_later(self.rnd.random() * 0.01, self.resume)
        else:
            self.loop.call_later(0.02, self.resume)

    def resume(self):
        if self.closed or not self.paused:
            return
        self.paused = False
        self.t.resume_reading()

    def data_received(self, data):
        if self.paused:
            self.bad.append("data while paused")
        if self.closed:
            self.bad.append("data after close")
        if self.eof:
            self.bad.append("data after eof")
        if not data:
            self.bad.append("empty data")
        self.buf += data
        r = self.rnd.random()
        if self.close_at is not None and len(self.buf) >= self.close_at:
            self.closed = True
            if self.close_kind == "close":
                self.t.close()
            else:
                self.t.abort()
            self.close_at = None
            return
        pp = self.p_pause
        if r < pp:
            self.pause()
        elif r < pp * 1.4:
            self.loop.call_soon(self.pause)
        elif r < pp * 1.4 + 0.005:
            # close from a later callback
            def later():
                if not self.closed:
                    self.closed = True
                    self.t.close()
            self.loop.call_soon(later)

    def eof_received(self):
        self.eof += 1
        if self.closed:
            self.bad.append("eof after close")
        return None

    def connection_lost(self, exc):
        self.lost += 1
        if not self.done.done():
            self.done.set_result(exc)


async def big_round(loop, rnd, family):
    done = loop.create_future()
    proto_holder = []

    def factory():
        p = BigReader(rnd, loop, done)
        proto_holder.append(p)
        return p

    if family == "unix":
        path = f"/tmp/ul-hotpath-stress-{os.getpid()}.sock"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        srv = await loop.create_unix_server(factory, path)
        r, w = await asyncio.wait_for(asyncio.open_unix_connection(path), 10)
    else:
        srv = await loop.create_server(factory, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    size = rnd.choice([1 << 16, 1 << 20, 4 << 20, 8 << 20]) + rnd.randrange(1000)
    data = payload(size, rnd.random())
    end = rnd.choice(["eof", "close", "none"])
    sent = 0
    try:
        while sent < size:
            n = rnd.choice([1, 100, 4096, 65536, 300000])
            w.write(data[sent:sent + n])
            sent += len(data[sent:sent + n])
            if rnd.random() < 0.3:
                await asyncio.wait_for(w.drain(), 30)
            if rnd.random() < 0.1:
                await asyncio.sleep(rnd.choice([0, 0, 0.001]))
            if done.done():
                break
        if not done.done():
            await asyncio.wait_for(w.drain(), 30)
            if end == "eof":
                w.write_eof()
            elif end == "close":
                w.close()
    except (ConnectionError, OSError):
        pass
    # wait for the server side to end, or to have everything
    p = None
    for _ in range(3000):
        if proto_holder:
            p = proto_holder[0]
            if done.done():
                break
            if end == "none" and len(p.buf) >= sent and not p.paused:
                break
        await asyncio.sleep(0.01)
    else:
        ERRORS.append(f"big: stuck size={size} got={len(p.buf) if p else None} end={end} "
                      f"paused={p.paused if p else None} closed={p.closed if p else None}")
    if p is not None:
        STATS["bytes"] += len(p.buf)
        STATS["closes"] += p.closed
        STATS["eofs"] += p.eof
        STATS["rounds_full"] += len(p.buf) == size
        if bytes(p.buf) != data[:len(p.buf)]:
            ERRORS.append("big: not a prefix")
        if p.bad:
            ERRORS.append(f"big: {sorted(set(p.bad))}")
        if not p.closed and end in ("eof", "close") and done.done():
            if len(p.buf) != sent:
                ERRORS.append(f"big: lost bytes got {len(p.buf)} of {sent} end={end}")
        if not done.done():
            p.closed = True
            p.t.close()
        await asyncio.wait_for(done, 10)
        await asyncio.sleep(0)
        if p.lost != 1:
            ERRORS.append(f"big: lost called {p.lost}")
        if p.eof > 1:
            ERRORS.append(f"big: eof {p.eof}")
    w.close()
    srv.close()
    await asyncio.wait_for(srv.wait_closed(), 10)


class Short(asyncio.Protocol):
    made = 0
    lost = 0
    data = 0

    def __init__(self, rnd, loop):
        self.rnd, self.loop = rnd, loop
        self.closed = False

    def connection_made(self, t):
        Short.made += 1
        self.t = t
        r = self.rnd.random()
        if r < 0.2:
            t.pause_reading()
            self.loop.call_soon(self._resume)
        elif r < 0.3:
            self.closed = True
            t.close()
        elif r < 0.4:
            self.closed = True
            t.abort()
        elif r < 0.5:
            t.write(b"hello")

    def _resume(self):
        if not self.t.is_closing():
            self.t.resume_reading()

    def data_received(self, data):
        Short.data += 1
        if self.closed:
            ERRORS.append("accept: data after close")
        if self.rnd.random() < 0.3:
            self.t.write(data)
        if self.rnd.random() < 0.2:
            self.closed = True
            self.t.close()

    def connection_lost(self, exc):
        Short.lost += 1


def nfds():
    return len(os.listdir("/proc/self/fd"))


async def accept_round(loop, rnd):
    srv = await loop.create_server(lambda: Short(rnd, loop), "127.0.0.1", 0,
                                   backlog=rnd.choice([1, 8, 128]))
    port = srv.sockets[0].getsockname()[1]
    n = rnd.randrange(20, 200)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        r = rnd.random()
        if r < 0.4:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        elif r < 0.6:
            try:
                s.send(b"x" * rnd.randrange(1, 5000))
            except OSError:
                pass
            s.close()
        elif r < 0.8:
            try:
                s.send(b"abc")
            except OSError:
                pass
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        else:
            socks.append(s)
        if rnd.random() < 0.3:
            await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    for s in socks:
        if rnd.random() < 0.5:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # every connection made must end
    for _ in range(2000):
        if Short.lost == Short.made:
            break
        await asyncio.sleep(0.01)
    else:
        ERRORS.append(f"accept: made {Short.made} lost {Short.lost}")
    srv.close()
    await asyncio.wait_for(srv.wait_closed(), 10)


class Echo(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        self.t.write(data)

    def eof_received(self):
        return False


async def ring_round(loop, rnd):
    eng = getattr(loop, "_engine", None)
    srv = await loop.create_server(Echo, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    # idle-ish: one-at-a-time small exchanges, each its own run
    for i in range(rnd.randrange(300, 900)):
        w.write(b"p%d" % i)
        want = len(b"p%d" % i)
        got = await asyncio.wait_for(r.readexactly(want), 10)
        if got != b"p%d" % i:
            ERRORS.append("ring: ping mismatch")
    before = (eng.stats().get("ring_want") if eng else None)
    if rnd.random() < 0.3:
        await asyncio.sleep(rnd.choice([0.5, 1.5]))  # maybe the idle trim
    # burst
    n = rnd.randrange(10, 60)
    size = rnd.choice([4096, 65536, 300000])

    async def one(k):
        r2, w2 = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        d = payload(size, k * 7 + 1)
        w2.write(d)
        w2.write_eof()
        got = await asyncio.wait_for(r2.read(), 60)
        w2.close()
        if got != d:
            ERRORS.append(f"ring: burst mismatch {len(got)} of {len(d)}")

    await asyncio.gather(*(one(k) for k in range(n)))
    after = (eng.stats().get("ring_want") if eng else None)
    w.close()
    srv.close()
    await asyncio.wait_for(srv.wait_closed(), 10)
    return before, after


async def main(part, rounds, seed):
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(handler)
    rnd = random.Random(seed)
    fds0 = nfds()
    wants = []
    for _ in range(rounds):
        if part == "big":
            await big_round(loop, rnd, rnd.choice(["tcp", "unix"]))
        elif part == "accept":
            await accept_round(loop, rnd)
        elif part == "ring":
            wants.append(await ring_round(loop, rnd))
        gc.collect()
    await asyncio.sleep(0.1)
    gc.collect()
    fds1 = nfds()
    if fds1 > fds0 + 2:
        ERRORS.append(f"fds {fds0} -> {fds1}")
    extra = ""
    if part == "big":
        extra = f" {STATS}"
    if part == "accept":
        extra = f" made={Short.made} lost={Short.lost} data={Short.data}"
    if part == "ring":
        extra = f" ring_want before/after burst: {wants[:6]}"
    print(f"{part} seed={seed} rounds={rounds} backend={getattr(loop, 'backend', 'stock')}"
          f" errors={len(ERRORS)}{extra}")
    for e in ERRORS[:20]:
        print("  ", e)


if __name__ == "__main__":
    part, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    stock = os.environ.get("STRESS_STOCK") == "1"
    with asyncio.Runner(loop_factory=None if stock else uringloop.new_event_loop) as runner:
        runner.run(main(part, rounds, seed))
    sys.exit(1 if ERRORS else 0)
