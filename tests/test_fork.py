"""fork() with a live loop (review D1).

The rings, the buffer ring and the pool are MADV_DONTFORK: a fork()ed child has
no mapping there, and the kernel requests in flight are the parent's. A child
that drops, closes or exits with the parent's loop must touch none of it (it
used to segfault in the child reading the SQ head during close), a child that
tries to run the parent's loop gets a clear RuntimeError, and a child can make
a loop of its own. The parent's loop is unaffected by all of this.

Each scenario runs in a fresh interpreter (a subprocess) that forks, so the
child's normal exit (finalizers, atexit) is the real one and pytest never
forks; the scenario prints one line per process and the parent's line
carries the child's exit status.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ANY_LOOP_KINDS, fallback_options, require_uring

TIMEOUT = 60

PRELUDE = textwrap.dedent(
    """
    import asyncio, gc, os, socket, sys, warnings
    warnings.simplefilter("ignore")
    kind, options = sys.argv[1], int(sys.argv[2])
    backend = kind.split("-")[0]  # io_uring-fallbacks: io_uring with options

    def new_loop():
        if kind == "stock":
            return asyncio.SelectorEventLoop()
        import uringloop
        loop = uringloop.Loop(backend=backend, options=options)
        assert loop.backend == backend, loop.backend
        return loop

    def status(st):
        if os.WIFSIGNALED(st):
            return "signal %d" % os.WTERMSIG(st)
        return "exit %d" % os.WEXITSTATUS(st)

    loop = new_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    task = loop.create_task(loop.sock_recv(a, 100))   # an op in flight at fork
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not task.done()
    """
)

# After the child ended, the parent's op must still complete normally.
PARENT_CHECK = textwrap.dedent(
    """
    _, st = os.waitpid(pid, 0)
    b.send(b"parent data")
    got = loop.run_until_complete(asyncio.wait_for(task, 10))
    assert got == b"parent data", got
    loop.close()
    print("child", status(st))
    """
)

SCENARIOS = {
    # the child drops the loop with the op in flight and collects it
    "gc": """
        del task, loop
        gc.collect()
        os._exit(0)
    """,
    # the child returns normally; the loop is still referenced by a global,
    # so interpreter shutdown finalizes it
    "exit": """
        sys.exit(0)
    """,
    # the child closes the parent's loop explicitly
    "close": """
        task.cancel()   # a pending task on a closed loop; never runs
        loop.close()
        assert loop.is_closed()
        os._exit(0)
    """,
    # the child tries to run the parent's loop: a clear error, no crash
    "run": """
        try:
            loop.run_until_complete(asyncio.sleep(0))
        except RuntimeError as exc:
            ok = kind == "stock" or "parent process" in str(exc)
            print("child error:", exc, flush=True)
            os._exit(0 if ok else 3)
        os._exit(0 if kind == "stock" else 4)   # only the stock loop runs on
    """,
    # the child makes a loop of its own and does a socket round trip on it
    "new_loop": """
        async def round_trip(lp):
            c, d = socket.socketpair()
            c.setblocking(False)
            d.setblocking(False)
            await lp.sock_sendall(c, b"ping from the child")
            data = await asyncio.wait_for(lp.sock_recv(d, 100), 10)
            c.close()
            d.close()
            return data
        asyncio.set_event_loop(None)
        mine = new_loop()
        data = mine.run_until_complete(round_trip(mine))
        mine.close()
        os._exit(0 if data == b"ping from the child" else 5)
    """,
}


def _package_parent() -> str:
    spec = importlib.util.find_spec("uringloop")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)


def _script(child: str) -> str:
    body = "pid = os.fork()\nif pid == 0:\n" + textwrap.indent(textwrap.dedent(child), "    ")
    return PRELUDE + body + PARENT_CHECK


def _run_script(script, args, tmp_path, **env_extra):
    """script as `python -c` with args, on the package under test (no forced
    backend); returns (proc, a detail string for assertions)."""
    env = dict(os.environ)
    env.pop("URINGLOOP_BACKEND", None)
    env["PYTHONPATH"] = _package_parent() + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    detail = f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
    return proc, detail


@pytest.mark.parametrize("kind", ANY_LOOP_KINDS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fork_child_with_parent_loop(kind, scenario, tmp_path):
    if kind.startswith("io_uring"):
        require_uring()
    options = fallback_options() if kind == "io_uring-fallbacks" else 0
    proc, detail = _run_script(_script(SCENARIOS[scenario]), [kind, str(options)], tmp_path)
    assert proc.returncode == 0, detail
    assert proc.stdout.strip().splitlines()[-1] == "child exit 0", detail


# The child's copy of an engine is forgotten at fork (decision 30): every piece
# of plain heap it holds goes back then. Measured in the child as the bytes
# malloc has in use just before fork() against just after it (the at-fork hook
# has run by then), for two sets of N ops that differ in one allocation only:
# "fresh" -- multishot receives (noted in io_uring's list of ops that still
# need their file's identity, an array of N entries) against one-shot ones;
# "sendv" -- sendv of two buffers (each op owns an iovec block) against sendv
# of one (a plain send). The difference is that allocation, freed in the child;
# it was 0 while forget left it behind (decision 330). Python's own small
# objects live in pymalloc's arenas, which malloc does not count.
HEAP_SCRIPT = textwrap.dedent(
    """
    import ctypes, gc, os, socket, sys
    from uringloop import engine
    backend, options, what, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    def heap():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd  # in use: heap chunks and mmapped ones

    def freed_in_child(arm):
        eng = engine.Engine(backend, options=options, buf_count=n, buf_size=4096)
        a, b = socket.socketpair()
        a.setblocking(False)
        cb = lambda res, more, data: None
        big = bytes(65536)
        for _ in range(n):
            if what == "fresh":
                eng.recv(a.fileno(), cb, multishot=arm)
            else:  # b never reads: the sends stay queued
                eng.sendv(a.fileno(), [big, big] if arm else [big], cb)
        for _ in range(3):
            eng.run(0)
        assert eng.in_flight > n - 16, eng.in_flight
        gc.collect()
        r, w = os.pipe()
        before = heap()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"%d" % (before - heap()))
            os._exit(0)
        os.close(w)
        freed = int(os.read(r, 64))
        os.close(r)
        _, st = os.waitpid(pid, 0)
        assert st == 0, st
        eng.close()
        a.close()
        b.close()
        return freed

    print(freed_in_child(True) - freed_in_child(False))
    """
)

HEAP_OPS = 4096
HEAP_CASES = [
    pytest.param(kind, what, id=f"{kind}-{what}")
    for kind in ("io_uring", "epoll", "io_uring-fallbacks")
    for what in ("fresh", "sendv")
    if not (kind == "epoll" and what == "fresh")  # epoll keeps no such list
]


@pytest.mark.parametrize(("kind", "what"), HEAP_CASES)
def test_fork_child_frees_the_engines_heap(kind, what, tmp_path):
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("under ASan malloc is ASan's own: glibc's mallinfo2 counts none of it")
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc's mallinfo2 (glibc 2.33+) to count the bytes malloc has in use")
    if kind.startswith("io_uring"):
        require_uring()
    options = fallback_options() if kind == "io_uring-fallbacks" else 0
    args = [kind.split("-")[0], str(options), what, str(HEAP_OPS)]
    proc, detail = _run_script(HEAP_SCRIPT, args, tmp_path)
    assert proc.returncode == 0, detail
    extra = int(proc.stdout.split()[-1])
    # fresh: an array of at least n 16-byte entries; sendv: a msghdr and two
    # iovecs (88 bytes) per op
    per_op = 16 if what == "fresh" else 88
    assert extra >= HEAP_OPS * per_op // 2, detail


# The same under LeakSanitizer (the ASan leg, `make asan`): in the child,
# after forget, a leak check finds nothing the engine allocated (before
# decision 330 it found io_uring's fresh list, a batch head's iovec block and
# each queued sendv's). PYTHONMALLOC=malloc, so that LSan scans Python's
# objects too (a cffi object in a pymalloc arena holds the engine's address);
# Python's own unreachable blocks (the locks it re-creates at fork) are not
# the engine's and are let be.
LSAN_SCRIPT = textwrap.dedent(
    """
    import ctypes, os, socket, sys
    from uringloop import engine
    backend, options = sys.argv[1], int(sys.argv[2])
    eng = engine.Engine(backend, options=options)
    a, b = socket.socketpair()
    a.setblocking(False)
    cb = lambda res, more, data: None
    big = bytes(65536)
    for _ in range(100):  # b never reads: the sends stay queued
        eng.recv(a.fileno(), cb)
        eng.sendv(a.fileno(), [big, big], cb)
    for _ in range(3):
        eng.run(0)
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).__lsan_do_recoverable_leak_check()
        sys.stderr.flush()
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    eng.close()
    print("child", os.waitstatus_to_exitcode(st), flush=True)
    os._exit(0)  # no leak check of this process at exit: Python's own
    """
)


@pytest.mark.parametrize("kind", ["io_uring", "epoll", "io_uring-fallbacks"])
def test_fork_child_leaks_nothing_of_the_engine(kind, tmp_path):
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("needs LeakSanitizer: the ASan leg (make asan) runs it")
    if kind.startswith("io_uring"):
        require_uring()
    options = fallback_options() if kind == "io_uring-fallbacks" else 0
    proc, detail = _run_script(
        LSAN_SCRIPT, [kind.split("-")[0], str(options)], tmp_path,
        ASAN_OPTIONS="detect_leaks=1", PYTHONMALLOC="malloc",
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "child 0", detail
    # a leak's stack names our sources (symbolized) or our module (not)
    ours = [ln for ln in proc.stderr.splitlines() if "_core/" in ln or "_engine_cffi" in ln]
    assert not ours, detail
