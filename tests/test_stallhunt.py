"""benchmarks/stallhunt.py's detector (decision 605): a connection whose
server never reads what came is reported, with its unread bytes, however
busy the other connections are. Nothing here measures speed; the stuck
connection stays stuck, so the wait for the report has a bound but no
timing in it."""

import os
import shutil
import socket
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import stallhunt  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("ss") is None, reason="no ss (iproute2) to read the sockets' idle times"
)


def test_ss_fields_parse():
    assert stallhunt.idle_ms({"lastsnd": "700", "lastrcv": "350", "lastack": "900"}) == 350
    assert stallhunt.idle_ms({"lastsnd": "5"}) == 5
    assert stallhunt.idle_ms({}) is None


def test_a_connection_the_server_never_reads_is_reported():
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    held = []
    stop = threading.Event()

    def serve():
        # the first connection is accepted and never read; the second is
        # echoed for as long as the test runs (the "others progress" case)
        a, _ = lsock.accept()
        held.append(a)
        b, _ = lsock.accept()
        held.append(b)
        b.settimeout(0.05)
        while not stop.is_set():
            try:
                data = b.recv(1024)
            except TimeoutError:
                continue
            if not data:
                return
            b.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    stuck = socket.create_connection(("127.0.0.1", port), timeout=10)
    stuck.sendall(b"x" * 1024)  # never read by the server
    busy = socket.create_connection(("127.0.0.1", port), timeout=10)
    reported = threading.Event()
    why = []
    sampler = stallhunt.Sampler(port, 0.05, 0.3, lambda w: (why.append(w), reported.set()))
    sampler.start()
    try:
        for _ in range(3000):  # a bound on the wait, not a timed assertion: 0.3 s is needed
            busy.sendall(b"ping")
            got = b""
            while len(got) < 4:
                got += busy.recv(4)
            if reported.wait(0.01):
                break
        assert reported.is_set(), "a connection unread all along was never reported"
        # what it saw is the server's side holding the 1024 bytes
        server_side = [
            sk for sk in stallhunt.ss_port(port) if sk[0] == "ESTAB" and sk[2].endswith(f":{port}")
        ]
        assert any(sk[1] == 1024 for sk in server_side), server_side
    finally:
        sampler.done.set()
        sampler.join(30)
        stop.set()
        t.join(10)  # its echo loop ends (a 0.05 s recv timeout) before the sockets close
        for s in (stuck, busy, *held, lsock):
            s.close()
    assert why and "idle" in why[0], why


def test_net_bench_says_when_the_server_waited_for_its_cpu():
    """Decision 610: a pinned server kept off its core by other load reads
    as a stall; net_bench's window carries the wait (schedstat's second
    field) and a note past STARVED_PCT."""
    import net_bench

    ticks = net_bench.cpu_ticks(os.getpid())
    assert len(ticks) == 5 and ticks[4] >= 0
    t0 = (0, 0, 0, 0, 0)
    # 1 s window, 0.1 s on a CPU, 0.6 s runnable but waiting
    starved = net_bench.window(1000, 1.0, t0, (100_000_000, 5, 5, 10, 600_000_000), None, None)
    assert round(starved["server_wait_pct"]) == 60
    assert "waited for a CPU 60 %" in starved["note"]
    fine = net_bench.window(1000, 1.0, t0, (100_000_000, 5, 5, 10, 1_000_000), None, None)
    assert round(fine["server_wait_pct"], 1) == 0.1 and "note" not in fine
