"""Smoke test of the network benchmark's harness (benchmarks/loadgen.c,
benchmarks/net_server.py and net_bench.py's accounting), so that it cannot rot
unnoticed. Nothing here measures speed: it only checks that the load generator
builds cleanly, that it completes requests against a stock-asyncio echo server
with every echoed byte verified, in both of its modes (epoll, io_uring), that
its verification does catch a server that corrupts bytes, that its HTTP mode
reads the benchmark's HTTP servers' responses (and responses in pieces) and
catches a wrong status or body and refuses a chunked one, and that the driver
reports each side's CPU time (the busy columns)."""

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import pytest
from conftest import bench_module, require_uring, uring_unavailable_reason

import uringloop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")

pytestmark = pytest.mark.skipif(
    CC is None, reason="no C compiler (cc/gcc) to build benchmarks/loadgen.c"
)


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("loadgen") / "loadgen")
    # -Werror: the harness stays warning-free; no TLS so libssl-dev is not needed here
    r = subprocess.run(
        [
            CC,
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-DLOADGEN_NO_TLS",
            "-o",
            exe,
            os.path.join(BENCH, "loadgen.c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return exe


MODES = ["epoll", "uring"]


def run_loadgen(exe, port, mode, size=3000, *extra):
    if mode == "uring":
        require_uring()
    r = subprocess.run(
        [
            exe,
            "--tcp",
            f"127.0.0.1:{port}",
            "-c",
            "4",
            "-s",
            str(size),
            "--mode",
            mode,
            "-d",
            "0.5",
            "-w",
            "0.1",
            "--verify",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stdout.splitlines()
    return r.returncode, lines, r.stderr


@contextlib.contextmanager
def stock_server(kind, *extra):
    """net_server.py's `kind` server on the stock loop (extra: more of its
    options); yields its TCP port."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYTHONASYNCIODEBUG", None)
    srv = subprocess.Popen(
        [
            sys.executable,
            os.path.join(BENCH, "net_server.py"),
            "--loop",
            "asyncio",
            "--kind",
            kind,
            "--tcp",
            "0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([srv.stdout], [], [], 30)
        line = srv.stdout.readline().strip() if ready else ""
        assert line.startswith("READY "), line
        yield line.split()[1]
    finally:
        srv.kill()
        srv.wait(timeout=30)


@pytest.mark.parametrize("size", [3000, 300000])
@pytest.mark.parametrize("mode", MODES)
def test_loadgen_verifies_against_stock_echo_server(loadgen, mode, size):
    """300 kB messages pass through the sockets in pieces: the partial sends and
    receives (epoll's EPOLLOUT, io_uring's MSG_WAITALL) must add up."""
    with stock_server("protocol") as port:
        rc, lines, err = run_loadgen(loadgen, port, mode, size)
    assert rc == 0, err
    assert lines[0] == "START"
    res = json.loads(lines[1])
    assert res["verified"] is True
    assert res["verify_errors"] == 0
    assert res["requests"] > 0
    assert res["conns"] == 4 and res["size"] == size
    assert res["mode"] == mode
    assert res["cpu_s"] > 0


@pytest.mark.parametrize("kind", ["protocol", "buffered"])
def test_loadgen_think_and_net_server_spin_keep_the_echo_whole(loadgen, kind):
    """turn_batches.py's knobs (decision 940): net_server's --spin echo still
    echoes every byte, and loadgen --think spends its NS before every message
    in its one thread, so a window of `seconds` holds at most seconds / think
    + one message per connection (a count bound, not a timing: a slower
    machine only makes fewer)."""
    think_ns = 20_000_000
    with stock_server(kind, "--spin", "5") as port:
        rc, lines, err = run_loadgen(loadgen, port, "epoll", 3000, "--think", str(think_ns))
    assert rc == 0, err
    assert lines[0] == "START"
    res = json.loads(lines[1])
    assert res["verified"] is True and res["verify_errors"] == 0
    assert res["requests"] > 0
    assert res["requests"] <= res["seconds"] * 1e9 / think_ns + res["conns"], res


def test_turn_batches_counts_sends_a_turn_and_events_a_wait():
    """turn_batches.py's reading of `perf script` (decision 939): the server's
    sends between two of its kernel waits (io_uring_enter, epoll_wait,
    epoll_pwait; the first, partial turn left out; the last closed by its
    next wait), the client's epoll_wait returns, other processes ignored."""
    tb = _bench("turn_batches")
    text = "\n".join(
        [
            "   10 syscalls:sys_enter_sendto: fd: 0x5",  # before the server's first wait
            "   10 syscalls:sys_enter_io_uring_enter: fd: 0x3, to_submit: 0x0",
            "   10 syscalls:sys_enter_sendto: fd: 0x5",
            "   10 syscalls:sys_enter_sendto: fd: 0x6",
            "   20 syscalls:sys_exit_epoll_wait: 0x3",
            "   20 syscalls:sys_enter_sendto: fd: 0x7",  # the client's sends: not the server's
            "   10 syscalls:sys_enter_io_uring_enter: fd: 0x3",
            "   30 syscalls:sys_enter_sendto: fd: 0x5",  # another process
            "   10 syscalls:sys_enter_epoll_pwait: epfd: 0x4",
            "   10 syscalls:sys_enter_writev: fd: 0x9",
            "   10 syscalls:sys_enter_write: fd: 0x9",
            "   10 syscalls:sys_enter_sendmsg: fd: 0x9",
            "   20 syscalls:sys_exit_epoll_wait: 0x40",
            "   10 syscalls:sys_enter_epoll_wait: epfd: 0x4",
            "   10 syscalls:sys_enter_sendto: fd: 0x5",  # a turn the record cut: not closed
            "   20 syscalls:sys_exit_epoll_pwait: 0xfffffffffffffffc",  # -EINTR: no count
            "garbage line",
        ]
    )
    turns, waits = tb.parse_script(text, 10, 20)
    assert turns == [2, 0, 3]
    assert waits == [3, 64]
    d = tb.dist([5, 1, 9, 3, 7, 2, 8, 4, 0, 10])
    assert d == {"n": 10, "mean": 4.9, "p10": 1, "median": 5, "p90": 10, "zero": 0.1}
    assert tb.fmt_dist(d) == "  4.9 (1/5/10, n=10, 0: 10%)"
    assert tb.dist([]) is None and tb.fmt_dist(None) == "-"


@contextlib.contextmanager
def thread_server(serve):
    """A loopback TCP server running serve(conn, stop) in a thread per
    connection; yields its port. On exit: stop set, the accept loop joined,
    the listener closed."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.2)  # the accept loop looks at `stop` this often
    stop = threading.Event()

    def accept_all():
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn, stop), daemon=True).start()

    t = threading.Thread(target=accept_all, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        t.join(timeout=30)
        lsock.close()


@pytest.mark.parametrize("mode", MODES)
def test_loadgen_catches_corrupted_echo(loadgen, mode):
    """A server that echoes with one byte changed per message: --verify must say so (exit 2)."""

    def corrupt_echo(conn, stop):
        conn.settimeout(30)
        got = 0
        try:
            while not stop.is_set():
                data = bytearray(conn.recv(65536))
                if not data:
                    return
                if got % 3000 == 0:  # the first byte of each message
                    data[0] ^= 0xFF
                got += len(data)
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    with thread_server(corrupt_echo) as port:
        rc, lines, err = run_loadgen(loadgen, port, mode)
    assert rc == 2, (rc, lines, err)
    assert json.loads(lines[-1])["verify_errors"] > 0


# ------------------------------------------------------------------ --http

HTTP_ARGS = ("--http", "/", "--expect", "Hello, World!")


@pytest.mark.parametrize("kind", ["httptools", "aiohttp"])
@pytest.mark.parametrize("mode", MODES)
def test_loadgen_http_against_the_benchmark_servers(loadgen, mode, kind):
    """The net_bench HTTP servers (stock loop): every response 200 with the body."""
    pytest.importorskip(kind, reason=f"{kind} is not installed (net_server.py's {kind} kind)")
    with stock_server(kind) as port:
        rc, lines, err = run_loadgen(loadgen, port, mode, 3000, *HTTP_ARGS)
    assert rc == 0, err
    assert lines[0] == "START"
    res = json.loads(lines[1])
    assert res["http"] is True and res["verified"] is True
    assert res["verify_errors"] == 0 and res["status_errors"] == 0
    assert res["requests"] > 0 and res["mode"] == mode
    assert res["size"] > len("Hello, World!")  # a whole response, head and body


HTTP_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\nX-Seq: %d\r\n\r\nHello, World!"


@contextlib.contextmanager
def http_server(respond):
    """A keep-alive HTTP server, a thread per connection: respond(n) gives the
    pieces of the reply to a connection's n-th request, sent one by one with
    a pause between them (TCP_NODELAY: each its own segment)."""

    def serve(conn, stop):
        conn.settimeout(30)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf, n = b"", 0
        try:
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    pieces = respond(n)
                    for i, piece in enumerate(pieces):
                        if i:
                            time.sleep(0.002)
                        conn.sendall(piece)
                    n += 1
        except OSError:
            pass
        finally:
            conn.close()

    with thread_server(serve) as port:
        yield port


def split_ok(n):
    """Every 4th response in four pieces: the status line cut in two, the head
    without its blank line, then the body in two."""
    whole = HTTP_OK % n
    if n % 4 != 1:
        return [whole]
    head = whole.index(b"\r\n\r\n")
    return [whole[:10], whole[10:head], whole[head:-6], whole[-6:]]


@pytest.mark.parametrize("mode", MODES)
def test_loadgen_http_reads_responses_in_pieces(loadgen, mode):
    with http_server(split_ok) as port:
        rc, lines, err = run_loadgen(loadgen, port, mode, 3000, *HTTP_ARGS)
    assert rc == 0, err
    res = json.loads(lines[1])
    assert res["verify_errors"] == 0 and res["status_errors"] == 0
    # the pieces took 6 ms: at least one such response completed in the window
    assert res["requests"] > 1


def bad_status(n):
    status = b"500 Internal Server Error" if n % 5 == 3 else b"200 OK"
    return [b"HTTP/1.1 %s\r\nContent-Length: 13\r\n\r\nHello, World!" % status]


def bad_body(n):
    body = b"Hello, World?" if n % 5 == 3 else b"Hello, World!"
    return [b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n" + body]


def chunked(n):
    return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\nHello, World!\r\n0\r\n\r\n"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("respond", [bad_status, bad_body, chunked])
def test_loadgen_http_catches_bad_responses(loadgen, mode, respond):
    """One response in five with status 500 (status_errors), or with one byte of
    the body changed (verify_errors), or chunked (refused at once): exit 2."""
    with http_server(respond) as port:
        rc, lines, err = run_loadgen(loadgen, port, mode, 3000, *HTTP_ARGS)
    assert rc == 2, (rc, lines, err)
    if respond is chunked:
        assert "chunked" in err and not any(x.startswith("{") for x in lines)
        return
    res = json.loads(lines[-1])
    if respond is bad_status:
        assert res["status_errors"] > 0 and res["verify_errors"] == 0, res
        assert "status 500" in err
    else:
        assert res["verify_errors"] > 0 and res["status_errors"] == 0, res


_bench = bench_module


def _net_bench():
    return _bench("net_bench")


FAKE_WRK = """
import sys, time
while time.process_time() < 0.3:  # burn 0.3 s of CPU, whatever the load
    pass
print("  Latency Distribution\\n     50%  100.00us\\n     99%    1.00ms")
print("  1000 requests in 1.00s, 10.00KB read")
"""


def _render(nb, results):
    """net_bench's markdown for results (workload -> loop -> runs), uvloop only."""
    meta = dict.fromkeys(["date", "machine", "command", "settings", "versions", "malloc"], "-")
    return nb.markdown(nb.summarise(results, ["uvloop"]), meta)


def test_wrk_cpu_is_its_whole_life(tmp_path):
    """run_wrk reads wrk's CPU time from /proc/<pid>/stat after it exited and
    before it is reaped: a fake wrk that burns 0.3 s of CPU must show it."""
    nb = _net_bench()
    fake = tmp_path / "wrk"
    fake.write_text(f"#!{sys.executable}\n{FAKE_WRK}")
    fake.chmod(0o755)
    server = types.SimpleNamespace(
        addr="1", loop="uvloop", proc=subprocess.Popen(["sleep", "60"]), alive=lambda: True
    )
    opts = types.SimpleNamespace(wrk=str(fake), warmup=0, duration=1, client_cpu=0)
    try:
        t0 = time.monotonic()
        res = nb.run_wrk({"conns": 1}, server, opts)
        wall = time.monotonic() - t0
    finally:
        server.proc.kill()
        server.proc.wait(timeout=30)
    assert res["requests"] == 1000 and res["mode"] == "wrk"
    cpu_s = res["client_cpu_us_per_req"] * res["requests"] / 1e6
    assert cpu_s >= 0.29  # clock ticks are 10 ms
    assert res["client_busy_pct"] == pytest.approx(100 * cpu_s / wall, rel=0.5)


def test_results_md_has_the_busy_columns_and_the_client_mode():
    nb = _net_bench()
    wl = next(w for w in nb.WORKLOADS if w["id"] == "echo-1k-c100-protocol-tcp")
    run = {
        "rps": 1000.0,
        "p50_us": 10.0,
        "p99_us": 20.0,
        "cpu_us_per_req": 4.0,
        "client_cpu_us_per_req": 2.0,
        "server_busy_pct": 93.0,
        "client_busy_pct": 47.0,
        "mode": "uring",
    }
    results = {wl["id"]: {"uvloop": {"runs": [run]}}}
    md = _render(nb, results)
    assert "| server busy % | client busy % |" in md
    assert "| 4.00 | 1.00 | 93 | 47 |" in md
    assert "Client: loadgen, io_uring mode." in md


def test_each_repetition_starts_its_server_with_another_layout(tmp_path):
    """Every repetition's server gets a PYTHONPATH of another length (a
    nonexistent entry beside the tree), so that repetitions sample where
    start-up leaves glibc's heap (decisions 585, 586, 588)."""
    nb = _net_bench()
    wl = nb.select_workloads("echo-1k-c1-protocol-tcp")[0]
    seen = []
    for rep in range(3):
        server = nb.Server("asyncio", wl, 0, str(tmp_path), None, nb.layout_pad(rep))
        try:
            assert server.addr, server.stderr()
            with open(f"/proc/{server.proc.pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        finally:
            server.stop()
        entries = env[b"PYTHONPATH"].decode().split(os.pathsep)
        # the checkout first where it is built in place, else not at all
        # (CI's unbuilt clone: the installed package; decision 1047)
        if nb.server_root():
            assert entries.pop(0) == nb.ROOT
        assert nb.ROOT not in entries
        assert not any(os.path.exists(e) for e in entries)
        seen.append(len(env[b"PYTHONPATH"]))
    assert len(set(seen)) == 3, seen


def test_http_rows_drive_both_servers_with_loadgen_http():
    """net_bench has loadgen --http rows for both HTTP servers beside wrk's,
    asks for net_server.py's body, and its table names that client."""
    nb = _net_bench()
    net_server = _bench("net_server")
    assert nb.HTTP_BODY.encode() == net_server.HTTP_BODY
    rows = {w["id"]: w for w in nb.select_workloads("http")}
    for kind in ("aiohttp", "httptools"):
        assert rows[f"http-{kind}"]["client"] == "wrk"
        wl = rows[f"http-loadgen-{kind}"]
        assert wl["client"] == "loadgen" and wl["kind"] == kind and wl["conns"] == 100
        server = types.SimpleNamespace(addr="8080")
        opts = types.SimpleNamespace(duration=1.0, warmup=0.5, client_mode="epoll", verify=True)
        args = nb.loadgen_args(wl, server, opts)
        assert args[1:3] == ["--tcp", "127.0.0.1:8080"]
        assert args[-5:] == ["--http", "/", "--verify", "--expect", nb.HTTP_BODY]
        assert "-s" not in args
    run = {
        "rps": 1000.0,
        "p50_us": 10.0,
        "p99_us": 20.0,
        "cpu_us_per_req": 4.0,
        "server_busy_pct": 99.0,
        "client_busy_pct": 40.0,
        "mode": "http-epoll",
    }
    results = {"http-loadgen-httptools": {"uvloop": {"runs": [run]}}}
    md = _render(nb, results)
    assert "## HTTP keep-alive, loadgen, 100 conns" in md
    assert "Client: loadgen --http, epoll mode." in md


# ------------------------------------------------------------------ --reconnect (593, 594)


def _reconnect_run(exe, port, *extra):
    r = subprocess.run(
        [exe, "--tcp", f"127.0.0.1:{port}", "-c", "4", "-d", "0.5", "-w", "0.1",
         "--verify", "--reconnect", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stdout.splitlines()
    return r.returncode, lines, r.stderr


def test_loadgen_reconnect_sends_one_echo_per_connection(loadgen):
    """--reconnect: every connection carries exactly one message, echoed whole,
    then the client closes it (the server sees EOF, not a reset) and opens the
    next; connects = completed + the 4 slots open at the end."""
    per_conn = []  # per finished connection: (bytes received, ended by EOF)

    def serve(conn, stop):
        conn.settimeout(30)
        got, eof = 0, False
        try:
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    eof = True
                    break
                got += len(data)
                conn.sendall(data)
        except OSError:
            pass
        finally:
            per_conn.append((got, eof))
            conn.close()

    with thread_server(serve) as port:
        rc, lines, err = _reconnect_run(loadgen, port, "-s", "3000")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            res = json.loads(lines[1]) if len(lines) > 1 else {}
            if len(per_conn) >= res.get("connects", 0):
                break
            time.sleep(0.05)
    assert rc == 0, err
    assert lines[0] == "START"
    res = json.loads(lines[1])
    assert res["reconnect"] is True and res["mode"] == "epoll"
    assert res["verify_errors"] == 0 and res["requests"] > 0
    assert res["connects"] == res["completed"] + 4
    # the slots open when loadgen exits end with a reset, their echo unread
    assert sum(p == (3000, True) for p in per_conn) >= res["completed"]
    assert sum(not p[1] for p in per_conn) <= 4
    assert all(p[0] <= 3000 for p in per_conn)


@pytest.mark.parametrize("kind", ["httptools", "aiohttp"])
def test_loadgen_reconnect_http_connection_close(loadgen, kind):
    """--reconnect --http asks for `Connection: close`: the benchmark servers
    (stock loop) answer and close; every response is 200 with the body."""
    pytest.importorskip(kind, reason=f"{kind} is not installed (net_server.py's {kind} kind)")
    with stock_server(kind) as port:
        rc, lines, err = _reconnect_run(loadgen, port, *HTTP_ARGS)
    assert rc == 0, err
    res = json.loads(lines[1])
    assert res["http"] is True and res["reconnect"] is True
    assert res["status_errors"] == 0 and res["verify_errors"] == 0
    # a slot opens its next connection at the server's close, after its
    # response counted: up to the 4 slots may be waiting for that close
    assert res["requests"] > 0
    assert res["completed"] <= res["connects"] <= res["completed"] + 4


def test_loadgen_reconnect_http_refuses_a_second_response(loadgen):
    """After the response the client waits for the server's close: bytes
    before it (here the response once more) are refused, exit 2."""

    def serve(conn, stop):
        conn.settimeout(30)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            assert b"Connection: close\r\n" in data
            conn.sendall(HTTP_OK % 0)
            time.sleep(0.05)
            conn.sendall(HTTP_OK % 1)
            while not stop.is_set() and conn.recv(65536):
                pass
        except (OSError, AssertionError):
            pass
        finally:
            conn.close()

    with thread_server(serve) as port:
        rc, lines, err = _reconnect_run(loadgen, port, *HTTP_ARGS)
    assert rc == 2
    assert "bytes after the response" in err


def test_conn_rows_use_loadgen_reconnect():
    """net_bench's conn-* rows: loadgen --reconnect, always its epoll mode."""
    nb = _net_bench()
    rows = {w["id"]: w for w in nb.select_workloads("conn-")}
    assert set(rows) == {"conn-1k-c50-protocol-tcp", "conn-http-httptools"}
    server = types.SimpleNamespace(addr="8080")
    opts = types.SimpleNamespace(duration=1.0, warmup=0.5, client_mode="uring", verify=True)
    for wl in rows.values():
        args = nb.loadgen_args(wl, server, opts)
        assert args[-1] == "--reconnect"
        assert args[args.index("--mode") + 1] == "epoll"
    assert "--http" in nb.loadgen_args(rows["conn-http-httptools"], server, opts)


# ------------------------------------------------------------------ decisions 376, 379


def _at_eof(conn):
    """Whether the peer of conn has closed, from the TCP state (CLOSE_WAIT after
    its FIN, CLOSE after its RST). Not a MSG_PEEK for b"": a client that exits
    with a request in flight leaves that request unread ahead of its FIN (a CI
    3.13 failure)."""
    try:
        state = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:  # closed on our side
        return True
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


# linux/tcp_states.h
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8


def test_loadgen_rows_close_a_warm_up_connection_first(loadgen, monkeypatch):
    """run_loadgen opens and closes a warm-up connection before the measured
    client connects, as wrk's rows have their warm-up wrk's (decision 376): a
    stock-asyncio server's first EOF is what raises glibc's mmap threshold."""
    nb = _net_bench()
    monkeypatch.setattr(nb, "LOADGEN", loadgen)
    seen, lock = [], threading.Lock()

    def echo(conn, stop):
        conn.settimeout(30)
        with lock:
            # for each connection: had the first one been closed by the client?
            seen.append((conn, bool(seen) and _at_eof(seen[0][0])))
        try:
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            pass

    wl = dict(next(w for w in nb.WORKLOADS if w["id"] == "echo-1k-c1-protocol-tcp"), conns=4)
    # a measured second, not 0.3 s: CI's 3.12 leg once counted no request in
    # 0.3 s beside the ASan leg (a thread-per-connection server under load)
    opts = types.SimpleNamespace(
        duration=1.0, warmup=0.1, client_mode="epoll", verify=True, client_cpu=0
    )
    try:
        with thread_server(echo) as port:
            server = types.SimpleNamespace(
                addr=str(port),
                loop="uvloop",
                proc=subprocess.Popen(["sleep", "60"]),
                alive=lambda: True,
                stderr=lambda: "",
            )
            try:
                res = nb.run_loadgen(wl, server, opts)
            finally:
                server.proc.kill()
                server.proc.wait(timeout=30)
    finally:
        for c, _ in seen:
            c.close()
    assert res["verify_errors"] == 0 and res["requests"] > 0 and res["conns"] == 4
    # the warm-up's one connection, then the measured four, each after its close
    assert len(seen) == 5, seen
    assert all(first_closed for _, first_closed in seen[1:]), seen


def _rows(nb, wids, loops=("asyncio", "uvloop")):
    """summarise()'s rows for fake runs: req/s 1000 * (loop index + 1), server
    CPU per request 10 * (loop index + 1) + repetition (0, 1, 2)."""
    results = {}
    for wid in wids:
        per = results.setdefault(wid, {})
        for i, lp in enumerate(loops):
            runs = []
            for rep in range(3):
                if wid.startswith("idle"):
                    runs.append({"kib_per_conn": 1.0 + i, "mode": "epoll"})
                    continue
                runs.append(
                    {
                        "rps": 1000.0 * (i + 1),
                        "p50_us": 10.0,
                        "p99_us": 20.0,
                        "cpu_us_per_req": 10.0 * (i + 1) + rep,
                        "server_busy_pct": 90.0,
                        "client_busy_pct": 40.0,
                        "mode": "epoll",
                    }
                )
            per[lp] = {"runs": runs}
    return nb.summarise(results, list(loops))


def test_chart_shows_cpu_per_request_next_to_requests_per_second():
    """Every family's req/s panel has a server-CPU-per-request panel beside it
    (lower is better, said in its title), bars at the medians, whiskers at the
    min-max of the CPU (decision 379); idle keeps its one RSS panel."""
    pytest.importorskip("matplotlib", reason="matplotlib draws net_bench's chart")
    import matplotlib.pyplot as plt

    nb = _net_bench()
    wids = [
        "echo-1k-c100-protocol-tcp",
        "echo-1k-c100-streams-tcp",
        "echo-1k-c100-sock-unix",
        "http-httptools",
        "http-loadgen-aiohttp",
        "tls-1k-c10",
        "idle-10000",
    ]
    rows = _rows(nb, wids)
    meta = {"date": "-", "reps": 3, "machine_short": "-"}
    fig = nb.chart_figure(rows, ["asyncio", "uvloop"], meta)
    try:
        panels = {ax.panel: ax for ax in fig.axes}
        fams = dict.fromkeys(r["family"] for r in rows)
        for fam in fams:
            if fam.startswith("10,000 idle"):
                assert (fam, "idle") in panels and (fam, "cpu") not in panels
                continue
            rps, cpu = panels[(fam, "rps")], panels[(fam, "cpu")]
            assert "higher is better" in rps.get_title(loc="left")
            assert "CPU per request, LOWER is better" in cpu.get_title(loc="left")
            assert "CPU" in cpu.get_ylabel()
            # side by side: the same grid row, the CPU panel to the right
            assert cpu.get_position().y0 == pytest.approx(rps.get_position().y0)
            assert cpu.get_position().x0 > rps.get_position().x0
            nlabels = len({r["label"] for r in rows if r["family"] == fam})
            # asyncio's bars, then uvloop's: medians 11 and 21 µs
            heights = [p.get_height() for p in cpu.patches]
            assert heights == [11.0] * nlabels + [21.0] * nlabels
            assert [p.get_height() for p in rps.patches] == [1.0] * nlabels + [2.0] * nlabels
            # whiskers: min-max of the CPU, 10-12 and 20-22
            segs = [s for c in cpu.collections for s in c.get_segments()]
            assert sorted({(s[0][1], s[1][1]) for s in segs}) == [(10.0, 12.0), (20.0, 22.0)]
        assert "LOWER is better" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_results_md_keeps_the_runs_note():
    """A note kept in results.json's meta (what the run's conditions were)
    survives --render: results.md prints it under the command."""
    nb = _net_bench()
    rows = _rows(nb, ["echo-1k-c100-protocol-tcp"])
    meta = dict.fromkeys(["date", "machine", "command", "settings", "versions", "malloc"], "-")
    md = nb.markdown(rows, dict(meta, note="(main at abc, load 0.25)"))
    assert "Command: `-`  \n(main at abc, load 0.25)  \nSettings: -" in md


def test_a_window_that_served_nothing_stays_out_of_the_cost_medians():
    """A loaded machine can starve a server for a whole window: the client
    completes 0 requests and the run's CPU per request is 0 by construction.
    Its req/s (0) is a result; its costs per request are none, and must not
    pull the median or the CPU whiskers down (seen: uvloop's 0-request window
    in 7 repetitions made its median 6.21 instead of 6.24 µs)."""
    nb = _net_bench()
    runs = [
        {"rps": r, "requests": r, "cpu_us_per_req": c, "sys_us_per_req": c / 2}
        for r, c in ((1000.0, 6.0), (0.0, 0.0), (900.0, 6.4), (800.0, 6.2))
    ]
    (row,) = nb.summarise({"echo-1k-c100-protocol-tcp": {"uvloop": {"runs": runs}}}, ["uvloop"])
    assert row["cpu_us_per_req"] == 6.2 and row["sys_us_per_req"] == 3.1
    assert (row["cpu_min"], row["cpu_max"]) == (6.0, 6.4)
    assert row["rps"] == 850.0 and row["min"] == 0.0


GDB_HIT = """\
READY 4321
HIT 208896
#0  __GI___libc_free (mem=0x7ffff70ac010) at ./malloc/malloc.c:3371
#1  0x00007ffff7baee7a in _PyObject_Free (ctx=<optimized out>, p=0x2) at Objects/obmalloc.c:2285
#2  0x00007ffff7ba0fb0 in dictresize (mp=0x1) at Objects/dictobject.c:1500
Stack (most recent call first):
  File "<frozen importlib._bootstrap>", line 241 in _call_with_frames_removed
  File "/x/uringloop/engine.py", line 27 in <module>
ENDHIT
"""


def test_heap_tools_parse_gdb_and_count_unix_rows():
    """benchmarks/heapstate.py reads a threshold change out of its gdb log
    (value, C frames, Python frames without importlib's), and kcounts.py's
    events for a Unix server (no port) leave out the tcp_probe rows only."""
    heapstate = _bench("heapstate")
    kcounts = _bench("kcounts")
    ((at, size, cframes, py),) = heapstate.hits(GDB_HIT)
    assert at > GDB_HIT.index("READY") and size == 208896
    assert cframes == ["__GI___libc_free", "_PyObject_Free", "dictresize"]
    assert py == ["engine.py:27 <module>"]
    assert heapstate.pad_entry(0) == "" and len(heapstate.pad_entry(7)) == 7
    tcp, unix = kcounts.events(4321), kcounts.events(None)
    assert [e for e in tcp if not e[1].startswith("tcp:")] == unix
    assert len(tcp) - len(unix) == 4
    # --timers (decision 747) adds its rows after the others, to both kinds
    timed = kcounts.events(4321, timers=True)
    assert timed[: len(tcp)] == tcp and timed[len(tcp) :] == kcounts.TIMER_EVENTS
    assert ("  TSC deadline", "msr:write_msr", "msr == 1760") in timed
    assert kcounts.events(None, timers=True)[len(unix) :] == kcounts.TIMER_EVENTS


def test_kcounts_wrk_parts_waits_and_stopped_start():
    """kcounts.py's wrk support (decision 725): the epoll waits' return
    buckets give events per wait (lower bounds), a client profile splits the
    wake-ups out of a send's softirq (without the split it stays the NET_RX
    one), and a client started stopped runs only once let go, under the
    same pid."""
    kcounts = _bench("kcounts")
    rows = kcounts.epoll_returns()
    assert len(rows) == 2 * len(kcounts.EPOLL_BUCKETS)
    assert ("  epoll_wait -> 2-3", "syscalls:sys_exit_epoll_wait", "ret >= 2 && ret <= 3") in rows
    assert all(r in kcounts.events(None) for r in rows)
    counts = {"  epoll_wait -> 1": 2.0, "  epoll_pwait -> 2-3": 1.0, "  epoll_wait -> >= 64": 1.0}
    assert kcounts.events_per_wait(counts) == (4.0, 2.0 + 2.0 + 64.0)
    k = "[kernel.kallsyms]"
    stack = [
        ("io_poll_wake", k),
        ("__wake_up_sync_key", k),
        ("sock_def_readable", k),
        ("net_rx_action", k),
        ("tcp_sendmsg", k),
        ("__x64_sys_write", k),
        ("do_syscall_64", k),
        ("write", "libc.so.6"),
    ]
    split = kcounts.WAKE_PARTS + kcounts.PARTS
    assert kcounts.classify(stack, parts=split) == ("send (write)", "wake: io_uring poll/task work")
    assert kcounts.classify(stack) == ("send (write)", "net_rx softirq")
    proc = kcounts.start_stopped([sys.executable, "-c", "print('ran')"], 0)
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "T"
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == "ran\n"


def test_default_results_folder_never_overwrites_an_earlier_run(tmp_path):
    """Without --out a run writes to results/<date>; when that exists (an
    earlier, maybe published, run of the same day) it takes <date>-2, -3."""
    nb = _net_bench()
    root = str(tmp_path)
    assert nb.default_out(root, "2026-12-05") == os.path.join(root, "2026-12-05")
    os.makedirs(os.path.join(root, "2026-12-05"))
    assert nb.default_out(root, "2026-12-05") == os.path.join(root, "2026-12-05-2")
    os.makedirs(os.path.join(root, "2026-12-05-2"))
    assert nb.default_out(root, "2026-12-05") == os.path.join(root, "2026-12-05-3")


def test_hostmodes_probe_and_counting_server(tmp_path):
    """benchmarks/hostmodes.py (decisions 660-662): the probe reports its
    windows' CPU time per round trip with the CPU's other figures, and the
    counting streams server answers SIGUSR1 with its reads and, on uringloop,
    the streams' feeds and sends, while still echoing byte for byte."""
    out = tmp_path / "probe.json"
    r = subprocess.run(
        [sys.executable, os.path.join(BENCH, "hostmodes.py"), "probe", "--cpu", "0"]
        + ["--seconds", "0.3", "--window", "0.1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert len(got["windows"]) >= 2
    for w in got["windows"]:
        assert w["ns"] > 0
        assert set(w) == {"ns", "others", "steal", "preempted", "other_cpu_busy"}
    assert got["summary"]["q1"] <= got["summary"]["median"] <= got["summary"]["max"]
    # --tick's sampler: "<monotonic s> <ns per round trip>" every 50 ms until killed
    ticker = subprocess.Popen(
        [sys.executable, os.path.join(BENCH, "hostmodes.py"), "tick", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    # two samples, however long a loaded machine takes to start the sampler
    # (a guessed 0.4 s was not enough for Python to start and print twice)
    try:
        lines = []
        for _ in range(2):
            ready, _, _ = select.select([ticker.stdout], [], [], 30)
            assert ready, f"the sampler printed {len(lines)} samples in 30 s"
            lines.append(ticker.stdout.readline())
    finally:
        ticker.kill()
    lines += ticker.communicate(timeout=30)[0].splitlines()
    samples = [line.split() for line in lines if line.strip()]
    assert len(samples) >= 2
    assert all(float(at) > 0 and int(ns) > 0 for at, ns in samples)

    for loop in ("uringloop-io_uring", "uringloop-epoll", "asyncio"):
        if loop == "uringloop-io_uring" and uring_unavailable_reason() is not None:
            continue  # the other two still run; io_uring's own tests say why it cannot
        path = str(tmp_path / f"{loop}.sock")
        # the uringloop this test imported: the checkout built in place, or the
        # installed package where CI runs from outside an unbuilt checkout
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(uringloop.__file__)))
        env.pop("URINGLOOP_BACKEND", None)
        proc = subprocess.Popen(
            [sys.executable, os.path.join(BENCH, "hostmodes.py"), "serve", "--loop", loop]
            + ["--kind", "streams", "--unix", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the counting server did not start"
            assert proc.stdout.readline().startswith("READY ")
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(10)
                c.connect(path)
                for i in range(3):
                    msg = bytes([65 + i]) * 1024
                    c.sendall(msg)
                    got = b""
                    while len(got) < len(msg):
                        got += c.recv(65536)
                    assert got == msg
                proc.send_signal(signal.SIGUSR1)
                ready, _, _ = select.select([proc.stdout], [], [], 10)
                assert ready, "no STATS"
                line = proc.stdout.readline()
            assert line.startswith("STATS ")
            stats = json.loads(line[6:])
            assert stats["reads"] == 3
            if loop.startswith("uringloop-"):
                assert stats["stream_feeds"] == 3 and stats["stream_sends"] == 3
                assert "records" in stats
            else:
                assert stats["stream_feeds"] == 0 and "records" not in stats
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()


def _stats_line(proc):
    proc.send_signal(signal.SIGUSR1)
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready, "no STATS in 10 s"
    line = proc.stdout.readline()
    assert line.startswith("STATS "), line
    return json.loads(line[6:])


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
def test_net_server_reports_its_turns_and_net_bench_per_request(tmp_path, backend):
    """net_server.py's STATS line carries the loop's turns beside the engine's
    counters, and net_bench's window() reports them per request (decision
    938): 5 echoes one after another over a Unix socket, each sent only once
    the last came back, take at least one turn each. A server of an older
    tree, without turns, still gives the other counters."""
    if backend == "io_uring":
        require_uring()
    nb = _net_bench()
    assert "turns" in nb.ENGINE_COUNTS
    path = str(tmp_path / "s.sock")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(uringloop.__file__)))
    env.pop("URINGLOOP_BACKEND", None)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(BENCH, "net_server.py"), "--loop", f"uringloop-{backend}"]
        + ["--kind", "protocol", "--unix", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "net_server.py did not start in 30 s"
        assert proc.stdout.readline().startswith("READY ")
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(path)
            c.sendall(b"w")  # the connection is accepted and served
            assert c.recv(16) == b"w"
            s0 = _stats_line(proc)
            for i in range(5):
                msg = bytes([65 + i]) * 1024
                c.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += c.recv(65536)
                assert got == msg
            s1 = _stats_line(proc)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert isinstance(s1["turns"], int) and s1["turns"] >= s0["turns"] + 5, (s0, s1)
    ticks = (0, 0, 0, 0, 0)
    out = nb.window(5, 1.0, ticks, ticks, s0, s1)
    assert out["turns_per_req"] >= 1.0, out
    assert out["enters_per_req"] > 0 and out["records_per_req"] >= 1.0, out
    old = {k: v for k, v in s0.items() if k != "turns"}
    out = nb.window(5, 1.0, ticks, ticks, old, s1)
    assert "turns_per_req" not in out and out["enters_per_req"] > 0, out


def test_net_bench_probe_lists_the_runs_made_on_a_slow_host(tmp_path):
    """--probe (decision 662): every loadgen run carries the probe's ns per
    round trip, sampled on the server's CPU during its window, and results.md
    lists the runs whose probe was 1.25x the run's best quartile or more."""
    out = tmp_path / "res"
    r = subprocess.run(
        [sys.executable, os.path.join(BENCH, "net_bench.py"), "--probe", "--no-chart"]
        + ["--workloads", "echo-1k-c1-protocol-unix", "--loops", "asyncio", "--reps", "2"]
        # a 1 s window: the sampler ticks every 50 ms, and at 0.4 s a
        # sampler kept off its CPU by a loaded host (a helper's nice 19 run
        # at load 4.4) left one window without a sample (decision 831)
        + ["--duration", "1.0", "--warmup", "0.1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    runs = json.loads((out / "results.json").read_text())["results"]
    runs = runs["echo-1k-c1-protocol-unix"]["asyncio"]["runs"]
    assert len(runs) == 2 and all(run["probe_ns"] > 0 for run in runs)
    md = (out / "results.md").read_text()
    assert "## Host probe (--probe)" in md and "of 2 runs at 1.25x" in md

    nb = _net_bench()
    fake = {
        "w1": {"uvloop": {"runs": [{"probe_ns": 5000.0}, {"probe_ns": 5100.0}]}},
        "w2": {"uringloop-epoll": {"runs": [{"probe_ns": 4900.0}, {"probe_ns": 7400.0}]}},
        "w3": {"asyncio": {"runs": [{"cpu_us_per_req": 1.0}]}},  # no probe: not counted
    }
    text = "\n".join(nb.probe_section(fake))
    assert "1 of 4 runs at 1.25x" in text
    assert "- w2: uringloop-epoll #2 7,400" in text and "- w1" not in text
    assert nb.probe_section({"w": {"uvloop": {"runs": [{"cpu_us_per_req": 1.0}]}}}) == []


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
def test_server_instructions_tls_kind_drives_the_tls_echo(tmp_path, backend):
    """server_instructions.py's tls kind, without valgrind: net_server.py's TLS
    echo server with net_bench's certificate, its client's handshakes done,
    then 30 verified 1 KiB echoes in rounds over 3 connections."""
    if backend == "io_uring":
        require_uring()
    net_bench = _bench("net_bench")
    server_instructions = _bench("server_instructions")
    assert "tls" in server_instructions.KINDS
    cert, key = net_bench.make_cert(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(uringloop.__file__)))
    srv = subprocess.Popen(
        [sys.executable, os.path.join(BENCH, "net_server.py"), "--loop", f"uringloop-{backend}"]
        + ["--kind", "tls", "--tcp", "0", "--cert", cert, "--key", key],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        ready, _, _ = select.select([srv.stdout], [], [], 30)
        assert ready, "net_server.py did not start in 30 s"
        line = srv.stdout.readline().split()
        assert line[:1] == [b"READY"], line
        # drive() raises on a wrong echo, an early close, or no echo for 60 s
        server_instructions.drive(("127.0.0.1", int(line[1])), 30, 3, 1024, 0, backend, tls=True)
    finally:
        srv.kill()
        srv.wait()


def _server_instructions():
    return _bench("server_instructions")


def test_server_instructions_runs_this_interpreters_uringloop(monkeypatch):
    """The callgrind scripts' server imports the checkout only if it is built
    for the running Python, else the installed uringloop (decision 852): a
    checkout built for another version is not put on the server's path."""
    import importlib.machinery
    import importlib.util

    si = _server_instructions()
    pkg = os.path.join(si.ROOT, "uringloop")
    assert si.checkout_is_built() == os.path.samefile(os.path.dirname(uringloop.__file__), pkg)
    if si.checkout_is_built():
        assert si.uringloop_dir() == pkg
    # as on another Python: no _sched with this suffix in the checkout
    other = [".cpython-399-x86_64-linux-gnu.so"]
    monkeypatch.setattr(importlib.machinery, "EXTENSION_SUFFIXES", other)
    assert not si.checkout_is_built()
    found = importlib.util.find_spec("uringloop")
    assert si.uringloop_dir() == os.path.dirname(found.origin)


def test_server_instructions_server_names_its_uringloop(tmp_path):
    """The server template's READY line names the uringloop package it
    imported (decision 852), which callgrind_server checks: run here
    without valgrind, on the checkout it imports under this Python."""
    si = _server_instructions()
    code = si.SERVER.format(
        here=BENCH, loop="uringloop-epoll", kind="protocol", unix=None, tcp=0, cert=None, key=None
    )
    root = os.path.dirname(os.path.dirname(uringloop.__file__))
    env = dict(os.environ, PYTHONPATH=root)
    srv = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
    )
    try:
        ready, _, _ = select.select([srv.stdout], [], [], 30)
        assert ready, "the server did not start in 30 s"
        line = srv.stdout.readline().split()
        assert line[:1] == [b"READY"] and len(line) == 3, line
        assert os.path.samefile(line[2], os.path.dirname(uringloop.__file__))
        srv.stdin.close()  # its loop stops at the EOF
        assert srv.wait(timeout=30) == 0
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


# a callgrind file of a run with the cache simulation: names given once and then
# referred to by number, costs on a line number (relative ones too), and a call
# whose cost line is the callee's inclusive cost, not the caller's own
CALLGRIND_CACHE = """\
version: 1
creator: callgrind-3.19.0
positions: line
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim
summary: {total}

ob=(1) /usr/lib/libc.so.6
fl=(1) ???
fn=(1) memcpy
0 {memcpy}

ob=(2) /x/_sched.so
fl=(2) sched.c
fn=(2) run_turn
10 {turn}
+2 {turn}
cob=(1)
cfi=(1)
cfn=(1)
calls=1 0
12 {memcpy}
fn=(3) table_deliver
5 {deliver}
"""


def _cache_file(path, n):
    """A run of n requests: fixed start-up costs plus n times each request's."""

    def cost(base, per):
        return " ".join(str(b + n * p) for b, p in zip(base, per, strict=True))

    memcpy = cost([100] * 13, [136, 70, 70, 5, 16, 17, 5, 16, 17, 3, 0, 0, 0])
    turn = cost([50] * 13, [120, 50, 20, 15, 8, 0, 15, 8, 0, 20, 2, 1, 1])
    deliver = cost([7] * 13, [226, 96, 0, 20, 7, 0, 19, 7, 0, 30, 2, 0, 0])
    with open(path, "w") as f:
        f.write(CALLGRIND_CACHE.format(total="0", memcpy=memcpy, turn=turn, deliver=deliver))


def test_server_instructions_cache_columns_per_request(tmp_path):
    """--cache's reading of callgrind's files: each function's own counts (a
    call's inclusive line is not the caller's), compressed names resolved,
    the N and 2N runs' difference over N summed into the printed columns."""
    si = _server_instructions()
    p1, p2 = str(tmp_path / "cg.500.out"), str(tmp_path / "cg.1000.out")
    _cache_file(p1, 500)
    _cache_file(p2, 1000)
    total, per_fn = si.cache_per_request((p1, p2), 500)
    got = {name: cols for name, cols in per_fn}
    assert set(got) == {"memcpy [libc.so.6]", "run_turn [_sched.so]", "table_deliver [_sched.so]"}
    assert got["memcpy [libc.so.6]"] == {
        "Ir": 136,
        "D refs": 140,
        "D1 miss": 33,
        "LL D miss": 33,
        "I1 miss": 5,
        "LL I miss": 5,
        "mispred": 0,
    }
    # two cost lines of its own; the call's line is memcpy's, not run_turn's
    assert got["run_turn [_sched.so]"]["Ir"] == 240
    assert got["run_turn [_sched.so]"]["mispred"] == 6
    assert total == {
        "Ir": 136 + 240 + 226,
        "D refs": 140 + 140 + 96,
        "D1 miss": 33 + 16 + 7,
        "LL D miss": 33 + 16 + 7,
        "I1 miss": 5 + 30 + 20,
        "LL I miss": 5 + 30 + 19,
        "mispred": 0 + 6 + 2,
    }


def test_coldwait_counts_the_waits_that_may_block(tmp_path):
    """coldwait.c (server_instructions.py --cold, conn_counts.py), preloaded outside valgrind
    (its client requests do nothing there): it counts an epoll_wait with a
    timeout and an io_uring_enter through syscall() that asks for GETEVENTS
    with a min_complete, and nothing else; min_complete and flags are read as
    the unsigned ints they are, whatever the upper half of their registers."""
    if not os.path.exists("/usr/include/valgrind/callgrind.h"):
        pytest.skip("valgrind's callgrind.h is not installed (coldwait.c includes it)")
    si = _server_instructions()
    so = si.coldwait_so(str(tmp_path))
    log = tmp_path / "waits"
    code = r"""
import ctypes, select
ep = select.epoll()
ep.poll(0.001)   # a timeout: counted
ep.poll(0)       # no wait
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
U = ctypes.c_ulong
high = 1 << 63   # an int's undefined upper half, set
# io_uring_enter(-1, ...): EBADF, after the wrapper's count
libc.syscall(ctypes.c_long(426), -1, 0, U(high | 1), U(high | 1), None, 0)  # counted
libc.syscall(ctypes.c_long(426), -1, 0, U(0), U(1), None, 0)  # min_complete 0
libc.syscall(ctypes.c_long(426), -1, 1, U(1), U(0), None, 0)  # no GETEVENTS
libc.syscall(ctypes.c_long(39))  # getpid
"""
    env = dict(os.environ, LD_PRELOAD=so, COLDWAIT_LOG=str(log))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    # the waits, then every call of those kinds up to the last wait (conn_counts.py):
    # the epoll wait with a timeout, the zero-timeout one, the counted enter
    assert [int(x) for x in log.read_text().split()] == [2, 3]


# ------------------------------------------------- rsloop's environment (799-801)

PACKAGES_FIXTURE = """Package: libc6
Source: glibc
Version: 2.41-12+deb13u5
Depends: libgcc-s1
Description: GNU C Library: Shared libraries
 Contains the standard libraries
 that are used by nearly all programs.
Filename: pool/main/g/glibc/libc6_2.41-12+deb13u5_amd64.deb
SHA256: {libc6}

Package: libgcc-s1
Version: 14.2.0-19
Filename: pool/main/g/gcc-14/libgcc-s1_14.2.0-19_amd64.deb
SHA256: {gcc}

Package: libc6
Version: 0.0-older-duplicate
Filename: pool/elsewhere.deb
"""


def _deb(files):
    """A .deb (ar archive, data.tar.gz) holding files {path: bytes}."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, data in (
        (b"debian-binary", b"2.0\n"),
        (b"control.tar.xz", b"x"),  # odd length: the member after it is padded
        (b"data.tar.gz", buf.getvalue()),
    ):
        head = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6)
        head += b"100644".ljust(8) + str(len(data)).encode().ljust(10) + b"`\n"
        out += head + data + (b"\n" if len(data) & 1 else b"")
    return out


def test_rsloop_env_parses_the_index_and_checks_each_hash(tmp_path):
    """rsloop_env.py reads a Debian Packages file (continuation lines, the
    first stanza of a name wins), finds Packages.xz's SHA256 in InRelease,
    refuses a download whose SHA256 is not the index's, and unpacks a .deb's
    data.tar without dpkg-deb. No network."""
    re_ = _bench("rsloop_env")
    deb = _deb({"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": b"loader"})
    good = re_.sha256_of(deb)
    pkgs = re_.parse_packages(PACKAGES_FIXTURE.format(libc6=good, gcc="0" * 64))
    assert pkgs["libc6"]["Version"] == "2.41-12+deb13u5"
    assert pkgs["libc6"]["SHA256"] == good
    assert pkgs["libc6"]["Description"].endswith("used by nearly all programs.")
    assert pkgs["libgcc-s1"]["Filename"].endswith("libgcc-s1_14.2.0-19_amd64.deb")
    assert re_.check_sha256(deb, pkgs["libc6"]["SHA256"], "libc6") == good
    with pytest.raises(ValueError, match="SHA256"):
        re_.check_sha256(deb, pkgs["libgcc-s1"]["SHA256"], "libgcc-s1")
    with pytest.raises(ValueError, match="SHA256"):
        re_.check_sha256(deb + b"!", good, "libc6")
    with pytest.raises(ValueError, match="SHA256"):
        re_.check_sha256(deb, None, "not in the index")
    inrelease = (
        "Suite: trixie\nMD5Sum:\n"
        " d41d8cd98f00b204e9800998ecf8427e 12 main/binary-amd64/Packages.xz\n"
        f"SHA256:\n {'a' * 64} 100 main/binary-arm64/Packages.xz\n"
        f" {'b' * 64} 200 main/binary-amd64/Packages.xz\n"
    )
    assert re_.release_sha256(inrelease, "main/binary-amd64/Packages.xz") == "b" * 64
    assert re_.release_sha256(inrelease, "main/binary-i386/Packages.xz") is None
    re_.extract_deb(deb, str(tmp_path / "root"))
    assert (tmp_path / re_.LOADER).read_bytes() == b"loader"


def _fake_rsloop_env(tmp_path, log):
    """An environment folder whose 'loader' is a script: it writes its
    arguments and PYTHONPATH to log, then runs the Python it was given."""
    env = tmp_path / "env"
    loader = env / "root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    loader.parent.mkdir(parents=True)
    loader.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\necho "PYTHONPATH=$PYTHONPATH" >> {log}\n'
        'shift 2\nexec "$@"\n'
    )
    loader.chmod(0o755)
    (env / "site").mkdir()
    man = {
        "suite": "trixie",
        "glibc": "2.41",
        "rsloop": "0.1.66",
        "debs": {"libc6": {"version": "2.41-12+deb13u5"}},
        "wheel": {"file": "rsloop-0.1.66-cp311-cp311-manylinux_2_39_x86_64.whl"},
    }
    (env / "manifest.json").write_text(json.dumps(man))
    return env


def test_net_bench_starts_every_server_through_the_rsloop_env_loader(tmp_path):
    """With the rsloop environment (decision 800), a server of any loop (here
    stock asyncio) starts as `<env>/.../ld-linux-x86-64.so.2 --library-path
    <python's LIBDIR>:<env's libs>:<host's libs> <python> net_server.py ...`,
    the environment's site/ on its PYTHONPATH; the results header names the
    libc the servers and the client ran on."""
    nb = _net_bench()
    re_ = _bench("rsloop_env")
    log = tmp_path / "argv"
    env = _fake_rsloop_env(tmp_path, log)
    man = re_.load(str(env))
    assert man is not None and man["dir"] == str(env)
    assert re_.choose(str(env), wanted=False) is None
    assert re_.choose("off", wanted=True) is None
    assert re_.choose(str(env), wanted=True) == man
    with pytest.raises(SystemExit):
        re_.choose(str(tmp_path / "none"), wanted=True)
    wl = nb.select_workloads("echo-1k-c1-protocol-tcp")[0]
    server = nb.Server("asyncio", wl, 0, str(tmp_path), None, libc=man)
    try:
        assert server.addr, server.stderr()
    finally:
        server.stop()
    lines = log.read_text().splitlines()
    libdirs = lines[1].split(os.pathsep)
    assert lines[0] == "--library-path"
    assert libdirs[0] == re_.python_libdir()
    assert libdirs[1] == str(env / "root/usr/lib/x86_64-linux-gnu")
    assert lines[2] == sys.executable
    assert lines[3] == nb.SERVER
    assert lines[4:6] == ["--loop", "asyncio"]
    path = lines[-1].split("=", 1)[1].split(os.pathsep)
    assert (path[0] == nb.ROOT) if nb.server_root() else nb.ROOT not in path
    assert str(env / "site") in path
    md = _render(nb, {})
    assert "Malloc: -" in md  # _render's meta; the real line is libc_line's
    line = nb.libc_line(man)
    assert "every server (all loops alike) on Debian trixie's glibc 2.41" in line
    assert f"the client on the host's glibc {nb.platform.libc_ver()[1]}" in line
    assert nb.libc_line(None) == (
        f"every server on the host's glibc {nb.platform.libc_ver()[1]}, as the client"
    )
    assert "rsloop 0.1.66 (rsloop-0.1.66-cp311" in nb.versions(["rsloop"], man)


def test_loop_and_subprocess_bench_rerun_every_loop_under_the_rsloop_env(tmp_path, monkeypatch):
    """loop_bench (in one process) restarts itself, every loop, under the
    environment's loader; subprocess_bench starts every loop's interpreter
    through it (decision 801); neither does without rsloop among its loops,
    and a loop_bench restarted so does not restart again."""
    lb = _bench("loop_bench")
    sb = _bench("subprocess_bench")
    re_ = _bench("rsloop_env")
    env = _fake_rsloop_env(tmp_path, tmp_path / "argv")
    monkeypatch.delenv(lb.RSLOOP_ENV_VAR, raising=False)
    args = lb.parse_args(["--loop", "uvloop", "--loop", "rsloop", "--rsloop-env", str(env)])
    cmd, cenv = lb.rsloop_env_restart(args, ["--quick"])
    assert cmd[0] == str(env / re_.LOADER)
    assert cmd[3:] == [sys.executable, os.path.abspath(lb.__file__), "--quick"]
    assert cenv["PYTHONPATH"].split(os.pathsep)[0] == str(env / "site")
    assert "glibc 2.41" in cenv[lb.RSLOOP_ENV_VAR]
    args = lb.parse_args(["--loop", "uvloop", "--rsloop-env", str(env)])
    assert lb.rsloop_env_restart(args, []) is None
    monkeypatch.setenv(lb.RSLOOP_ENV_VAR, "already")
    args = lb.parse_args(["--loop", "rsloop", "--rsloop-env", str(env)])
    assert lb.rsloop_env_restart(args, []) is None
    launch, senv, said = sb.child_launch(str(env), True)
    assert launch[0] == str(env / re_.LOADER) and launch[-1] == sys.executable
    assert senv["PYTHONPATH"].split(os.pathsep)[0] == str(env / "site")
    assert "glibc 2.41" in said
    launch, senv, said = sb.child_launch(str(env), False)
    assert launch == [sys.executable] and senv is None and "host's glibc" in said


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
def test_spawn_breakdown_sees_every_exit_and_undoes_its_hooks(backend, monkeypatch):
    """spawn_breakdown.py (decisions 972-974) times each Popen and sees each
    child's exit through uringloop's child watch (transports/subprocess.py's
    _reap): 4 children, 2 at a time, all 4 exits seen, each before its
    wait() returned; the hooks on Popen and _reap are gone afterwards."""
    if backend == "io_uring":
        require_uring()
    from uringloop.transports import subprocess as us

    monkeypatch.setattr(sys, "path", list(sys.path))
    sbd = _bench("spawn_breakdown")
    execute, reap = subprocess.Popen._execute_child, us._reap
    r = sbd.child(backend, 4, 2, False)
    assert r["exits_seen"] == 4
    assert r["rate"] > 0 and r["popen"] > 0 and r["seen"] is not None and r["to_wait"] >= 0
    assert subprocess.Popen._execute_child is execute and us._reap is reap


def test_kcounts_stallhunt_and_heapstate_start_servers_under_the_rsloop_env(
    tmp_path, monkeypatch
):
    """kcounts.py, stallhunt.py and heapstate.py take --rsloop-env as
    net_bench does (decision 841): kcounts and stallhunt hand its manifest
    to net_bench.Server (which starts the server through the environment's
    loader, the test above), heapstate builds the same command for gdb;
    without it, this Python as it is."""
    import argparse
    import subprocess

    nb = _net_bench()
    kc = _bench("kcounts")
    sh = _bench("stallhunt")
    hs = _bench("heapstate")
    re_ = _bench("rsloop_env")
    for name in ("kcounts", "stallhunt", "heapstate"):
        out = subprocess.run(
            [sys.executable, os.path.join(BENCH, f"{name}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "--rsloop-env auto|off|DIR" in out.stdout, name
    env = _fake_rsloop_env(tmp_path, tmp_path / "argv")
    man = re_.choose(str(env), wanted=True)
    seen = []

    class FakeServer:
        def __init__(self, loop, wl, cpu, tmp, cert, pad=0, libc=None):
            seen.append(libc)
            self.skip = "fake"

        def stop(self):
            pass

    class RefusedServer(FakeServer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            raise RuntimeError("fake")

    wl = nb.select_workloads("echo-1k-c1-protocol-tcp")[0]
    monkeypatch.setattr(nb, "Server", FakeServer)
    opts = argparse.Namespace(server_cpu=0, libc=man)
    assert kc.run_one(wl, "asyncio", opts, str(tmp_path), 0) == {"skip": "fake"}
    opts.libc = None
    kc.run_one(wl, "asyncio", opts, str(tmp_path), 0)
    monkeypatch.setattr(nb, "Server", RefusedServer)
    opts.libc = man
    rec = sh.attempt(opts, ("asyncio", wl["id"], 1, 0), str(tmp_path), str(tmp_path), 0)
    assert rec["error"] == "server start: fake"
    assert seen == [man, None, man]
    args, cenv = hs.server_command("asyncio", wl, 0, str(tmp_path), 0, man)
    assert args[0] == str(env / re_.LOADER) and args[3] == sys.executable
    assert args[4:7] == [nb.SERVER, "--loop", "asyncio"]
    assert str(env / "site") in cenv["PYTHONPATH"].split(os.pathsep)
    args, cenv = hs.server_command("asyncio", wl, 0, str(tmp_path), 0)
    assert args[:2] == [sys.executable, nb.SERVER]
    assert cenv["PYTHONPATH"] == nb.ROOT


def test_rsloop_server_serves_an_echo_in_the_built_env(loadgen, tmp_path):
    """The environment `make rsloop-env` built (benchmarks/.rsloop-env): an
    rsloop protocol echo server started as net_bench starts it echoes what
    loadgen sends, every byte verified."""
    re_ = _bench("rsloop_env")
    man = re_.load(re_.ENV_DIR)
    if man is None:
        pytest.skip("benchmarks/.rsloop-env was not built (make rsloop-env downloads it)")
    nb = _net_bench()
    wl = nb.select_workloads("echo-1k-c1-protocol-tcp")[0]
    server = nb.Server("rsloop", wl, 0, str(tmp_path), None, libc=man)
    try:
        assert server.addr, server.skip or server.stderr()
        rc, lines, err = run_loadgen(loadgen, server.addr, "epoll")
    finally:
        server.stop()
    assert rc == 0, err
    assert json.loads(lines[-1])["requests"] > 0


@pytest.mark.parametrize("loop", ["asyncio", "uringloop-io_uring", "uringloop-epoll"])
def test_buffered_counts_counts_the_protocols_calls_per_request(tmp_path, loop):
    """benchmarks/buffered_counts.py (decision 830): net_server.py's buffered
    echo with counters, driven by loadgen at 100 KiB. Every request is at
    least two buffers of the 64 KiB one (102,400 / 65,536), the hints are
    the stock -1 once the reads are direct (uringloop, decision 350) as on
    the stock loop, and uringloop's engine counters come per request."""
    if loop == "uringloop-io_uring":
        require_uring()
    out = tmp_path / "counts.json"
    # the uringloop this test imported: the checkout built in place, or the
    # installed package where CI runs from outside an unbuilt checkout
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(uringloop.__file__)))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, "buffered_counts.py"),
            "--loops",
            loop,
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--server-cpu",
            "0",
            "--client-cpu",
            "0",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "| get_buffer |" in r.stdout and "| buffer_updated |" in r.stdout
    run = json.loads(out.read_text())["runs"][loop]
    assert run["requests"] >= 10, run
    per = run["protocol"]
    assert per["buffer_updated"] >= 102400 / 65536 - 1e-9
    assert per["get_buffer"] >= per["buffer_updated"] - 1e-9
    assert per.get("hint -1", 0.0) > 0.5 * per["get_buffer"], per
    if loop == "asyncio":
        assert run["engine"] == {}
    else:
        assert run["engine"]["records"] > 0 and "submitted" in run["engine"]


@pytest.mark.parametrize("loop", ["uringloop-io_uring", "uringloop-epoll"])
def test_echo_floor_runs_the_c_server_beside_the_loop(tmp_path, loop):
    """benchmarks/echo_floor.py (decision 1034): benchmarks/echo_floor.c, the
    echo server with no loop, and net_server.py's server for the loop, each
    through net_bench's measured loadgen window on the 100 KiB Unix echo,
    every byte verified; both windows come back with requests, the server's
    and loadgen's CPU per request, and uringloop's engine counters for the
    loop's (none for the C server). Counts, no timing. Fails without the
    tool."""
    if loop == "uringloop-io_uring":
        require_uring()
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) to build loadgen.c and echo_floor.c")
    out = tmp_path / "floor.json"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(uringloop.__file__)))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, "echo_floor.py"),
            "--loops",
            loop,
            "--reps",
            "1",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--server-cpu",
            "0",
            "--client-cpu",
            "0",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "medians of 1" in r.stdout, r.stdout
    runs = json.loads(out.read_text())["echo-100k-c10-protocol-unix"]
    assert set(runs) == {"c-floor", loop}
    for name, (w,) in runs.items():
        assert w["verified"] and w["verify_errors"] == 0, w
        assert w["requests"] >= 10 and w["cpu_us_per_req"] > 0, w
        assert w["client_cpu_us_per_req"] > 0, w
        assert ("records_per_req" in w) == (name != "c-floor"), w


@pytest.mark.parametrize("loop", ["asyncio", "uringloop-io_uring", "uringloop-epoll"])
def test_conn_counts_counts_waits_per_connection(tmp_path, loop):
    """benchmarks/conn_counts.py (decision 845): net_server's echo server
    natively with coldwait.so preloaded, short-lived connections one at a
    time; per connection at least one wait that may block (the accept's),
    every wait among the calls of its kind, the server's context switches
    read, and uringloop's engine counters (its waits are coldwait's, and
    every connection's four records: accept, data, EOF, close). Fails
    without the tool."""
    if not os.path.exists("/usr/include/valgrind/callgrind.h"):
        pytest.skip("valgrind's callgrind.h is not installed (coldwait.c includes it)")
    if loop == "uringloop-io_uring":
        require_uring()
    out = tmp_path / "counts.json"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(uringloop.__file__)))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, "conn_counts.py"),
            "--loop",
            loop,
            "-n",
            "10",
            "--warmup",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    per = json.loads(out.read_text())["per_connection"][loop]
    assert 1 <= per["waits"] <= per["enters"], per
    assert per["vcsw"] >= 0 and "ivcsw" in per
    if loop == "asyncio":
        assert not any(k.startswith("engine ") for k in per)
    else:
        # the engine counts a wait when it ends, coldwait when it starts: one a window apart
        assert abs(per["engine waits"] - per["waits"]) <= 2 / 30 + 1e-9, per
        # (and the stats requests' own records, a few a window)
        assert 4 - 1e-9 <= per["engine records"] <= 4.2, per


def test_conn_instructions_gives_the_garbage_collectors_share(tmp_path):
    """conn_instructions' gc column (decision 1011): the inclusive cost of
    each call of gc_collect_main from another function, its compressed
    name resolved, its own recursion and other callees left out."""
    ci = bench_module("conn_instructions")
    path = tmp_path / "cg.out"
    path.write_text(
        "version: 1\ncreator: callgrind-3.19.0\npositions: line\nevents: Ir\n\n"
        "ob=(1) /lib/libpython3.11.so\nfl=(1) gcmodule.c\n"
        "fn=(1) _PyObject_GC_Link\n10 50\n"
        "cfn=(2) gc_collect_main\ncalls=1 300\n12 4000\n"
        "cfn=(3) PyObject_Malloc\ncalls=2 40\n13 70\n\n"
        "fn=(2)\n300 900\n"
        "cfn=(2)\ncalls=1 300\n301 200\n\n"
        "fn=(4) run_turn\n5 20\n"
        "cfn=(2)\ncalls=1 300\n+2 3500\n"
    )
    assert ci.gc_cost(str(path)) == 4000 + 3500


def test_conn_rows_run_an_unmeasured_repetition_of_every_loop_first(tmp_path, monkeypatch):
    """net_bench's conn-* rows (loadgen --reconnect) start with one run of
    each loop whose figures are dropped, before the row's first measured
    window (decision 1013: the row's first runs were slow for every loop);
    the other rows do not, and each loop keeps --reps measured runs."""
    nb = _net_bench()
    calls, saved = [], {}

    class FakeServer:
        def __init__(self, loop, wl, cpu, tmp, cert, pad=0, libc=None, extra=()):
            self.loop, self.skip = loop, None

        def stop(self):
            pass

    def fake_run(wl, server, opts, strace_out=None):
        calls.append((wl["id"], server.loop))
        return {
            "rps": float(len(calls)),
            "p50_us": 1.0,
            "p99_us": 2.0,
            "cpu_us_per_req": 3.0,
            "server_busy_pct": 90.0,
            "client_busy_pct": 50.0,
            "mode": "epoll",
        }

    monkeypatch.setattr(nb, "Server", FakeServer)
    monkeypatch.setattr(nb, "run_loadgen", fake_run)
    monkeypatch.setattr(nb, "build_loadgen", lambda: True)
    monkeypatch.setattr(nb, "versions", lambda loops, libc=None: {})
    monkeypatch.setattr(nb.rsloop_env, "choose", lambda *a: None)
    monkeypatch.setattr(nb.os, "sched_setaffinity", lambda *a: None)
    monkeypatch.setattr(nb, "write_report", lambda meta, results, out, opts: saved.update(results))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "net_bench.py",
            "--quick",
            "--reps",
            "3",
            "--loops",
            "uvloop,asyncio",
            "--workloads",
            "echo-1k-c1-protocol-tcp,conn-1k-c50-protocol-tcp",
            "--out",
            str(tmp_path),
        ],
    )
    assert nb.main() == 0
    echo = [lp for wid, lp in calls if wid == "echo-1k-c1-protocol-tcp"]
    conn = [lp for wid, lp in calls if wid == "conn-1k-c50-protocol-tcp"]
    assert echo == ["uvloop", "asyncio", "asyncio", "uvloop", "uvloop", "asyncio"]
    # the unmeasured pass, then the three rotated repetitions
    assert conn == ["uvloop", "asyncio"] + echo
    for wid in ("echo-1k-c1-protocol-tcp", "conn-1k-c50-protocol-tcp"):
        for lp in ("uvloop", "asyncio"):
            assert len(saved[wid][lp]["runs"]) == 3
    # the warm-up's figures are not among the measured runs
    first = {wid: calls.index((wid, "uvloop")) + 1 for wid, _ in calls}
    conn_rps = [r["rps"] for r in saved["conn-1k-c50-protocol-tcp"]["uvloop"]["runs"]]
    assert float(first["conn-1k-c50-protocol-tcp"]) not in conn_rps
