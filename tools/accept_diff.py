"""Accepted connections whose protocol misbehaves: stock vs uringloop, compared
(decision 773). python tools/accept_diff.py [N [BACKEND]], from a built tree.

Each connection i (the peer sends its index line then does END) gets a protocol
behaviour from a table; the events each protocol sees and the exception
handler's messages are compared between loops.
"""
import asyncio
import os
import socket
import struct
import sys

sys.path.insert(0, os.getcwd())
import uringloop  # noqa: E402

BEHAVIOURS = ["plain", "factory_raises", "made_raises", "made_pause", "made_close",
              "made_abort", "data_raises", "eof_raises", "eof_true", "lost_raises",
              "data_close", "data_pause", "made_write_close"]
ENDS = ["close", "rst", "eof_wait", "send_nothing_close"]


def run(loop_factory, n):
    events = {}
    handler_msgs = []

    class P(asyncio.Protocol):
        def __init__(self, beh):
            self.beh = beh
            self.i = None
            self.ev = []
            self.t = None

        def connection_made(self, t):
            self.t = t
            self.ev.append("made")
            b = self.beh
            if b == "made_raises":
                raise RuntimeError("made")
            if b == "made_pause":
                t.pause_reading()
                asyncio.get_running_loop().call_later(0.05, t.resume_reading)
            if b == "made_close":
                t.close()
            if b == "made_abort":
                t.abort()
            if b == "made_write_close":
                t.write(b"bye")
                t.close()

        def data_received(self, d):
            self.ev.append(("data", len(d)))
            if self.beh == "data_raises":
                raise RuntimeError("data")
            if self.beh == "data_close":
                self.t.close()
            if self.beh == "data_pause":
                self.t.pause_reading()

        def eof_received(self):
            self.ev.append("eof")
            if self.beh == "eof_raises":
                raise RuntimeError("eof")
            if self.beh == "eof_true":
                asyncio.get_running_loop().call_later(0.02, self.t.close)
                return True

        def connection_lost(self, exc):
            self.ev.append(("lost", type(exc).__name__ if exc else None))
            events.setdefault(self.key, []).append(tuple(self.ev))
            if self.beh == "lost_raises":
                raise RuntimeError("lost")

    counter = [0]
    order = []

    def factory():
        k = counter[0]
        counter[0] += 1
        beh = order[k]
        if beh == "factory_raises":
            events.setdefault(k, []).append(("factory_raised",))
            raise RuntimeError("factory")
        p = P(beh)
        p.key = k
        return p

    async def main():
        loop = asyncio.get_running_loop()

        def h(loop, ctx):
            m = ctx.get("message", "")
            e = ctx.get("exception")
            m = m.replace("_SelectorSocketTransport", "SocketTransport").split("(")[0]
            handler_msgs.append((m, type(e).__name__ if e else None))
        loop.set_exception_handler(h)
        srv = await loop.create_server(factory, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        for k in range(n):
            beh = BEHAVIOURS[k % len(BEHAVIOURS)]
            end = ENDS[(k // len(BEHAVIOURS)) % len(ENDS)]
            order.append(beh)
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            if end != "send_nothing_close":
                s.sendall(b"hello %d\n" % k)
            if end == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            elif end == "eof_wait":
                s.shutdown(socket.SHUT_WR)
                # wait for the server's side to end (or give up after 2 s)
                s.setblocking(False)
                for _ in range(200):
                    try:
                        r = s.recv(100)
                        if r == b"":
                            break
                    except BlockingIOError:
                        pass
                    except OSError:
                        break
                    await asyncio.sleep(0.01)
                s.close()
            else:
                s.close()
            # let this connection finish before the next
            for _ in range(300):
                if k in events:
                    break
                await asyncio.sleep(0.01)
            else:
                events.setdefault(k, []).append(("unfinished", order[k], end))
                # make it end
        srv.close()
        await asyncio.sleep(0.2)
    with asyncio.Runner(loop_factory=loop_factory) as r:
        r.run(main())
    return events, handler_msgs


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else len(BEHAVIOURS) * len(ENDS)
    stock = run(None, n)
    os.environ["URINGLOOP_BACKEND"] = sys.argv[2] if len(sys.argv) > 2 else "io_uring"
    ours = run(uringloop.new_event_loop, n)
    same = True
    for k in range(n):
        a, b = stock[0].get(k), ours[0].get(k)
        if a != b:
            same = False
            print(k, BEHAVIOURS[k % len(BEHAVIOURS)], ENDS[(k // len(BEHAVIOURS)) % len(ENDS)])
            print("   stock", a)
            print("   ours ", b)
    hs, ho = sorted(stock[1]), sorted(ours[1])
    if hs != ho:
        same = False
        print("handler stock", hs)
        print("handler ours ", ho)
    print("same" if same else "DIFFER", n, os.environ["URINGLOOP_BACKEND"])
