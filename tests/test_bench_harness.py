"""Smoke test of the network benchmark's harness (benchmarks/loadgen.c and
benchmarks/net_server.py), so that it cannot rot unnoticed. Nothing here
measures speed: it only checks that the load generator builds cleanly, that it
completes requests against a stock-asyncio echo server with every echoed byte
verified, and that its verification does catch a server that corrupts bytes."""

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading

import pytest

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


def run_loadgen(exe, port, *extra):
    r = subprocess.run(
        [
            exe,
            "--tcp",
            f"127.0.0.1:{port}",
            "-c",
            "4",
            "-s",
            "3000",
            "-d",
            "1",
            "-w",
            "0.2",
            "--verify",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stdout.splitlines()
    return r.returncode, lines, r.stderr


def test_loadgen_verifies_against_stock_echo_server(loadgen):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYTHONASYNCIODEBUG", None)
    srv = subprocess.Popen(
        [
            sys.executable,
            os.path.join(BENCH, "net_server.py"),
            "--loop",
            "asyncio",
            "--kind",
            "protocol",
            "--tcp",
            "0",
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
        rc, lines, err = run_loadgen(loadgen, line.split()[1])
    finally:
        srv.kill()
        srv.wait(timeout=30)
    assert rc == 0, err
    assert lines[0] == "START"
    res = json.loads(lines[1])
    assert res["verified"] is True
    assert res["verify_errors"] == 0
    assert res["requests"] > 0
    assert res["conns"] == 4 and res["size"] == 3000


def test_loadgen_catches_corrupted_echo(loadgen):
    """A server that echoes with one byte changed per message: --verify must say so (exit 2)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.2)  # the accept loop looks at `stop` this often
    stop = threading.Event()

    def corrupt_echo(conn):
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

    def accept_all():
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=corrupt_echo, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept_all, daemon=True)
    t.start()
    try:
        rc, lines, err = run_loadgen(loadgen, lsock.getsockname()[1])
    finally:
        stop.set()
        t.join(timeout=30)
        lsock.close()
    assert rc == 2, (rc, lines, err)
    assert json.loads(lines[-1])["verify_errors"] > 0
