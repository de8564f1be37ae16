"""Differential fuzzer for subprocesses: random child programs on stock and on uringloop.

From a seed, ``generate(seed)`` makes one to four children (each a
``sys.executable -S -c CHILD STEPS`` whose steps the generator picks: write N
bytes to stdout or stderr, echo stdin to stdout in chunks, read stdin to EOF
then answer its length and CRC, close stdout or stdin early and go on, sleep;
then exit with a code, kill itself with a signal, or block until killed;
SIGTERM ignored or not) with their stdio (PIPE, DEVNULL, a file's fd, stderr
merged into stdout) and whether the parent drives them through
``loop.subprocess_exec``/``subprocess_shell`` and a SubprocessProtocol or
``asyncio.create_subprocess_exec``'s streams, then the parent's ops on
them, interleaved (writes, drain, write_eof, close of stdin, reads of every
kind, communicate, wait, kill/terminate/send_signal, pause/resume_reading of
a pipe transport, transport.close(), get_returncode, a write to stdin after
the exit, a bad executable or cwd; any op also after a ``loop.stop()`` turn
and a re-run). ``run(kind, program)`` runs it on a new loop and returns its
trace; the traces of io_uring, epoll and io_uring-fallbacks must equal the
stock loop's (run twice: a program whose stock runs differ is skipped).

The generator keeps programs deterministic (decision 492): an op that waits
for a child's end comes only when the child will end (its stdin closed if it
reads it), a signal only to a child that blocks at its end and only after
every byte it writes before blocking has arrived and it blocks (op
``sync``), stdin is written only while the child will read it or blocks,
streams children write at most 60,000 bytes a pipe (nothing blocks unread).
``--study RUNS`` runs stock alone RUNS times a seed and prints what varies.

The trace: per child, the protocol's callbacks (connection_made,
pipe_connection_lost with the fd, exception and that fd's byte count,
process_exited, connection_lost), the bytes of each fd as one length and
CRC, the return code; each op's result or exception (type and errno); the
exception handler's calls; the asyncio log; fds left open; children of this
process left after the run (zombies). Normalised (decision 491): see
``_norm_events``, and pids in log messages.

``--extra`` (decisions 504-507) adds, from a second generator (a seed's
program is otherwise the same): pass_fds, start_new_session/process_group,
env, cwd and preexec_fn per child (the child reports what it got, in a
file), pidfd_open refused for the uringloop kinds, and the loop closed with
children running (what is warned, left open, reaped).

    python tools/subfuzz.py --seeds 100              # seeds 0..99, every kind
    python tools/subfuzz.py --extra --seeds 300      # with the spawn options
    python tools/subfuzz.py --seed 17 --kind epoll --shrink --script /tmp/r.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import difffuzz  # noqa: E402  (make_loop, _fds, _exc, _msg, _LogTrace)

KINDS = difffuzz.KINDS
TIMEOUT = 40.0  # seconds for one program on one loop (SIGALRM)
OP_TIMEOUT = 4.0  # one op; a timeout is traced as a result
PIPE_SIZES = [0, 1, 100, 4096, 65536, 70_000, 200_000]
STREAM_SIZES = [0, 1, 100, 4096, 30_000]
STREAM_BUDGET = 60_000  # bytes a streams child's pipe gets at most
SIGNALS = {"SIGKILL": 9, "SIGTERM": 15, "SIGUSR1": 10, "SIGHUP": 1}
_WRAPS = ("stoprun",)

# The child. Its payloads are slices of a 251-byte period (a newline every
# 251 bytes: readline is deterministic), rotated by a salt.
CHILD = r"""
import os, sys, json, time, zlib, signal
for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):  # not as inherited (nohup)
    signal.signal(sig, signal.SIG_DFL)
P = bytes(range(251)) * 1000
def wr(fd, b):
    m = memoryview(b)
    while m:
        try:
            n = os.write(fd, m)
        except BrokenPipeError:
            os._exit(77)
        m = m[n:]
spec = json.loads(sys.argv[1])
steps, tail, ignterm = spec[:3]
if len(spec) > 3:  # --extra: report what the spawn options made (a file)
    pfds = spec[3]
    fds = []
    for fd in range(3, 256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
    um = os.umask(0)
    os.umask(um)
    rep = {"passed": [fd in fds for fd in pfds], "others": len(set(fds) - set(pfds)),
           "sid": os.getsid(0) == os.getpid(), "pgid": os.getpgid(0) == os.getpid(),
           "pgid_parent": os.getpgid(0) == os.getpgid(os.getppid()),
           "env": os.environ.get("SUBFUZZ_X"), "path": "PATH" in os.environ,
           "cwd": os.getcwd(), "umask": um}
    with open(sys.argv[3] + ".t", "w") as f:
        json.dump(rep, f)
    os.rename(sys.argv[3] + ".t", sys.argv[3])
if ignterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for st in steps:
    k = st[0]
    if k == "out" or k == "err":
        wr(1 if k == "out" else 2, P[st[2] % 251: st[2] % 251 + st[1]])
    elif k == "echo":
        while True:
            d = os.read(0, st[1])
            if not d:
                break
            wr(1, d)
    elif k == "readall":
        n, c = 0, 0
        while True:
            d = os.read(0, 65536)
            if not d:
                break
            n, c = n + len(d), zlib.crc32(d, c)
        wr(1, b"%08x%08x" % (n & 0xffffffff, c))
    elif k == "closeout":
        os.close(1)
    elif k == "closein":
        os.close(0)
    elif k == "sleep":
        time.sleep(st[1] / 1000)
if tail[0] == "exit":
    os._exit(tail[1])
if tail[0] == "signal":
    os.kill(os.getpid(), tail[1])
    time.sleep(5)
    os._exit(99)
open(sys.argv[2], "w").close()  # blocking now: sync may signal
while True:
    time.sleep(60)
"""


def payload(n: int, salt: int) -> bytes:
    """The bytes the child's CHILD makes for ("out", n, salt)."""
    p = bytes(range(251)) * 1000
    return p[salt % 251 : salt % 251 + n]


class Hang(Exception):
    pass


# --------------------------------------------------------------------------
# programs


def generate(seed: int, extra: bool = False) -> dict:
    """The program of a seed; ``extra`` (--extra, decision 504) adds spawn
    options, a pidfd_open refused and a loop closed with children running,
    drawn from a second generator: the program without them is the same."""
    prog = _generate(seed)
    if extra:
        x = random.Random(f"extra-{seed}")
        for c in prog["children"]:
            c["opts"] = {
                "pass_fds": x.choice([0, 0, 1, 2]),
                "session": x.choice([None, None, "new_session", "process_group"]),
                "env": x.choice([None, None, "add", "replace"]),
                "cwd": x.random() < 0.3,
                "preexec": x.random() < 0.3,
            }
        prog["pidfd_refused"] = x.random() < 0.3
        prog["abandon"] = x.random() < 0.25
    return prog


def _generate(seed: int) -> dict:
    r = random.Random(seed)
    nchild = r.choice([1, 1, 2, 2, 3, 4])
    children = [_child(r) for _ in range(nchild)]
    per = [_child_ops(r, i, c) for i, c in enumerate(children)]
    ops = []
    while any(per):
        i = r.choice([j for j, p in enumerate(per) if p])
        op = per[i].pop(0)
        if r.random() < 0.1:
            op = ["stoprun", op]
        ops.append(op)
        if r.random() < 0.04:
            bad = ["bad", r.choice(["exe", "cwd", "dir", "text", "bufsize", "list"]),
                   r.choice(["proto", "streams"])]
            ops.insert(r.randrange(len(ops) + 1), bad)
    return {"seed": seed, "children": children, "ops": ops}


def _child(r: random.Random) -> dict:
    mode = r.choice(["proto", "proto", "shell", "streams", "streams"])
    c = {
        "mode": mode,
        "stdin": r.choices(["pipe", "devnull", "fd"], [6, 2, 2])[0],
        "stdout": r.choices(["pipe", "devnull", "fd"], [6, 2, 2])[0],
        "stderr": r.choices(["pipe", "devnull", "stdout", "fd"], [4, 2, 2, 1])[0],
        "ignterm": r.random() < 0.2,
        "stdin_file": r.choice([0, 1, 100, 5000]),
    }
    sizes = PIPE_SIZES if mode != "streams" else STREAM_SIZES
    budget = {1: STREAM_BUDGET, 2: STREAM_BUDGET} if mode == "streams" else None
    steps = []
    reader = None
    closed_out = closed_in = False
    for _ in range(r.randint(0, 4)):
        k = r.random()
        if k < 0.45:
            fd = r.choice([1, 1, 2])
            if fd == 1 and closed_out:
                fd = 2
            n = r.choice(sizes)
            dest = 1 if fd == 2 and c["stderr"] == "stdout" else fd
            if budget is not None:
                n = min(n, budget[dest])
                budget[dest] -= n
            steps.append(["out" if fd == 1 else "err", n, r.randrange(1000)])
        elif k < 0.65 and reader is None and not closed_out and not closed_in:
            reader = r.choice(["echo", "readall"])
            chunk = r.choice([1, 7, 4096, 65536])
            steps.append(["echo", chunk] if reader == "echo" else ["readall"])
        elif k < 0.75 and not closed_out:
            closed_out = True
            steps.append(["closeout"])
        elif k < 0.82 and reader is None and not closed_in and c["stdin"] == "pipe":
            # stdin closed, the child runs on; a byte written after it to an
            # output the parent sees tells sync the close has happened
            seen = ("pipe", "fd")
            if c["stdout"] in seen and not closed_out:
                mark = "out"
            elif c["stderr"] in seen or (c["stderr"] == "stdout" and c["stdout"] in seen
                                         and not closed_out):
                mark = "err"
            else:
                steps.append(["sleep", 1])
                continue
            closed_in = True
            steps += [["closein"], [mark, 1, 7]]
        else:
            steps.append(["sleep", r.choice([1, 5, 20])])
    c["steps"] = steps
    c["reader"] = reader
    c["closein"] = closed_in
    if budget is not None:
        c["budget"] = budget[1]  # what stdin writes an echo child may send back
    t = r.random()
    if t < 0.45:
        c["tail"] = ["exit", r.choice([0, 0, 1, 3, 255])]
    elif t < 0.65:
        sig = r.choice(["SIGKILL", "SIGUSR1"] + ([] if c["ignterm"] else ["SIGTERM"]))
        c["tail"] = ["signal", SIGNALS[sig]]
    else:
        c["tail"] = ["block"]
    return c


def _child_ops(r: random.Random, i: int, c: dict) -> list:
    """The parent's ops on child i, in order; a model of the child's state
    keeps each op one whose result does not depend on timing."""
    ops: list = [["spawn", i]]
    st = {"stdin": c["stdin"] == "pipe", "ended": False, "dead": False, "paused": set(),
          "synced": False, "partial": set()}
    block = c["tail"][0] == "block"
    streams = c["mode"] == "streams"  # else "proto" or "shell": a SubprocessProtocol
    budget = c.get("budget", 0)
    unread = 60_000  # what a child that never reads stdin may be written
    pipes = [fd for fd in (1, 2) if (c["stdout"] if fd == 1 else c["stderr"]) == "pipe"]

    def close_stdin():
        if st["stdin"]:
            ops.append([r.choice(["write_eof", "close_stdin"]), i])
            st["stdin"] = False

    def resume_all():
        for fd in sorted(st["paused"]):
            ops.append(["resume", i, fd])
        st["paused"].clear()

    def will_end():
        return not block and not (c["reader"] and st["stdin"])

    for _ in range(r.randint(1, 7)):
        if st["ended"]:
            k = r.random()
            if k < 0.4:
                ops.append(["returncode", i])
            elif k < 0.7 and not streams and c["stdin"] == "pipe":
                ops.append(["pwrite", i, r.choice([0, 1, 100, 70_000])])
            elif k < 0.85 and not streams:
                ops.append(["pclose", i])
            elif streams and pipes:
                fd = r.choice(pipes)
                n = -1 if fd in st["partial"] else r.choice([1, 100, -1])
                ops.append(["read", i, fd, n])
                st["partial"].add(fd) if n > 0 else None
            elif streams and c["stdin"] == "pipe":
                ops.append(["write", i, r.choice([0, 1, 100]), True])  # after the exit
            continue
        k = r.random()
        # stdin writes: to a child that reads stdin to EOF, or to one that
        # never reads it but blocks (alive until signalled) while the pipe
        # holds them; a child that exits by itself meanwhile makes a write's
        # EPIPE a matter of timing (seed 34)
        # (a child that closed its stdin: only after sync, when it has)
        writable = st["stdin"] and not st["dead"] and (
            c["reader"] or (block and (not c["closein"] or st["synced"]))
        )
        if k < 0.25 and writable:
            sizes = PIPE_SIZES if not streams else STREAM_SIZES
            n = r.choice(sizes)
            if not c["reader"]:
                n = min(n, unread)
                unread -= n
            elif streams and c["reader"] == "echo":
                n = min(n, budget)
                budget -= n
            if streams:
                ops.append(["write", i, n, r.random() < 0.7])
            else:
                ops.append(["pwrite", i, n])
        elif k < 0.32 and st["stdin"]:
            close_stdin()
        elif k < 0.45 and streams and pipes and will_end():
            fd = r.choice(pipes)
            how = r.choice(["read", "readline", "readexactly"])
            n = r.choice([1, 100, 4096, 100_000, -1]) if how != "readline" else 0
            if how == "readexactly" and n < 0:
                n = 10
            if fd in st["partial"]:
                # after read(n), what is left depends on how much had come:
                # only read() to the end (seed 1075)
                how, n = "read", -1
            ops.append([how, i, fd, n])
            st["partial"].add(fd) if how == "read" and n > 0 else None
        elif k < 0.52 and not streams and pipes:
            fd = r.choice(pipes)
            if fd in st["paused"] and r.random() < 0.6:
                ops.append(["resume", i, fd])
                st["paused"].discard(fd)
            else:
                ops.append(["pause", i, fd])
                st["paused"].add(fd)
        elif k < 0.64 and will_end():
            resume_all()
            if streams and r.random() < 0.5:
                n = r.choice(STREAM_SIZES) if st["stdin"] else None
                if n is not None and c["reader"] == "echo":
                    n = min(n, budget)
                ops.append(["communicate", i, n])
            else:
                close_stdin() if c["reader"] else None
                ops.append(["wait", i])
            st["ended"] = True
            st["stdin"] = False
        elif k < 0.8 and block and not st["dead"]:
            # a signal: after every byte the child writes before blocking
            close_stdin() if c["reader"] else None
            resume_all()
            ops.append(["sync", i])
            st["synced"] = True
            how = r.choice(["kill", "terminate", "send_signal", "pclose"])
            if how == "pclose" and streams:
                how = "kill"
            if how == "send_signal":
                ops.append([how, i, r.choice(["SIGUSR1", "SIGHUP"])])
            else:
                ops.append([how, i])
            if not (how == "terminate" and c["ignterm"]):
                st["dead"] = True
                if r.random() < 0.7:
                    ops.append(["wait", i])
                    st["ended"] = True
        elif k < 0.83 and block and not st["dead"] and not st["synced"]:
            close_stdin() if c["reader"] else None
            resume_all()
            ops.append(["sync", i])
            st["synced"] = True
        elif k < 0.86:
            ops.append(["sleep", i, r.choice([1, 10])])
        elif k < 0.9 and writable and streams:
            ops.append(["drain", i])
    return ops


# --------------------------------------------------------------------------
# protocol


class Proto(asyncio.SubprocessProtocol):
    def __init__(self, rec, loop):
        self.rec = rec
        self.events = rec["events"]
        self.exited = loop.create_future()
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append(["made"])

    def pipe_data_received(self, fd, data):
        self.rec["data"].setdefault(fd, bytearray()).extend(data)

    def pipe_connection_lost(self, fd, exc):
        n = len(self.rec["data"].get(fd, b""))
        self.events.append(["pipe_lost", fd, difffuzz._exc(exc), n])

    def process_exited(self):
        self.events.append(["exited"])
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc):
        self.events.append(["lost", difffuzz._exc(exc)])
        if not self.lost.done():
            self.lost.set_result(None)


# --------------------------------------------------------------------------
# running


def run(kind: str, prog: dict) -> dict:
    unraisable = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(
        f"unraisable {difffuzz._exc(u.exc_value)}: {_msg(u.exc_value)}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            refused = kind != "stock" and bool(prog.get("pidfd_refused"))
            with _pidfd_refused(refused):
                trace = _run(kind, prog)
            if refused:
                trace["pidfd_refused"] = True
            gc.collect()
    finally:
        sys.unraisablehook = hook
    if prog.get("abandon") or caught or unraisable:
        # what the loop's close and the garbage collector warn (a repr's
        # class and fd numbers are each loop's own: only the words before
        # it), and the exceptions a __del__ raised
        # it), and the exceptions a __del__ raised. Not "unclosed file":
        # stock's pipe transports hold Popen's FileIO objects, and which of
        # the two the collector finalises first in their cycle decides
        # whether the FileIO warns before the transport's __del__ closes it;
        # ours hold the fds (the same fds closed either way; decision 506)
        trace["warnings"] = sorted(
            [f"{w.category.__name__}: {_msg(re.sub(r' ?<.*', '', str(w.message)))}"
             for w in caught if not str(w.message).startswith("unclosed file")] + unraisable
        )
    return trace


@contextlib.contextmanager
def _pidfd_refused(on):
    """uringloop with pidfd_open refused (ENOSYS): its stock child-watcher
    path (decision 113), as tests/test_subprocess_pipe.py forces it."""
    if not on:
        yield
        return
    from uringloop.transports import subprocess as ul_subprocess

    def refused(pid, flags=0):
        raise OSError(errno.ENOSYS, "Function not implemented")

    saved = ul_subprocess._pidfd_ok, os.pidfd_open
    ul_subprocess._pidfd_ok, os.pidfd_open = None, refused
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy.set_child_watcher(asyncio.ThreadedChildWatcher())
    try:
        yield
    finally:
        ul_subprocess._pidfd_ok, os.pidfd_open = saved
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policy.set_child_watcher(None)


# logged only by the loop that is told pidfd_open is refused (once a process)
_REFUSED_LOG = "uringloop: os.pidfd_open() refused"
# stock 3.11's ThreadedChildWatcher, from its thread, when a child of a closed
# loop ends (decision 506)
_CLOSED_LOG = re.compile(r"^Loop .* that handles pid # is closed$")


def _run(kind: str, prog: dict) -> dict:
    gc.collect()
    fds_before = difffuzz._fds()
    kids_before = _children()
    trace = {"children": [], "ops": [], "handler": [], "log": [], "fatal": None}
    log = _LogTrace(trace["log"])
    alog = logging.getLogger("asyncio")
    alog.addHandler(log)
    alog.propagate = False
    loop = difffuzz.make_loop(kind)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    runner = _Runner(loop, prog, trace)
    try:
        runner.go()
    except Hang:
        trace["fatal"] = "hang"
    except (Exception, asyncio.CancelledError) as exc:
        trace["fatal"] = f"{type(exc).__name__}: {difffuzz._msg(exc)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        with contextlib.suppress(Exception):
            if not loop.is_running():
                loop.close()
        if prog.get("abandon"):
            # the loop closed with children running: what is left of them
            trace["after_close"] = runner.after_close()
        runner.cleanup()
    gc.collect()
    leaked = sorted(v for k, v in difffuzz._fds().items() if fds_before.get(k) != v)
    trace["leaked_fds"] = [re.sub(r"\[\d+\]", "[#]", v) for v in leaked]
    if kind == "stock" and prog.get("abandon"):
        # 3.12+'s PidfdChildWatcher leaves the pidfd of a child still running
        # at close open for good (only its reader callback closes it); ours
        # are closed by close() (decision 506): stock's leak is not copied
        trace["leaked_fds"] = [v for v in trace["leaked_fds"] if v != "anon_inode:[pidfd]"]
    left = _children() - kids_before
    trace["zombies"] = len(left)
    if prog.get("abandon"):
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # stock's watcher thread (and ours where pidfd_open is refused)
        # reaps them; a zombie left after that is reaped below
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline and _children() - kids_before:
            time.sleep(0.005)
        # reaped by the closed loop's watcher: stock 3.11's thread does it,
        # uringloop's pidfds (and 3.12+'s PidfdChildWatcher) are gone with
        # the loop: compared only where pidfd_open is refused and stock's
        # own watcher is the thread too (3.11 and older; decision 506)
        trace["reaped"] = len(left - _children())
        time.sleep(0.05)  # a watcher thread's log line
    alog.removeHandler(log)
    alog.propagate = True
    trace["log"] = [x for x in trace["log"] if not x[1].startswith(_REFUSED_LOG)
                    and not _CLOSED_LOG.match(x[1])]
    if any(k.get("report") is not None for k in runner.kids):
        trace["reports"] = [k.get("report") for k in runner.kids]
    diag = os.environ.get("SUBFUZZ_DIAG")
    if diag and (left or trace["fatal"] or any(o[2] == "timeout" for o in trace["ops"])):
        with open(os.path.join(diag, f"{prog['seed']}-{kind}-{time.time():.0f}.json"), "w") as f:
            json.dump({"left": sorted(left), "before": sorted(kids_before), "trace": trace}, f)
    for pid in left:  # never leave them to the next run
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)
    return trace


def _msg(text) -> str:
    return re.sub(r"\b(pid|subprocess) \d+", r"\1 #", difffuzz._msg(text))


class _LogTrace(difffuzz._LogTrace):
    def emit(self, record):
        self.out.append([record.levelname, _msg(record.getMessage())])


def _alarm(signum, frame):
    raise Hang()


def _children() -> set:
    me, out = os.getpid(), set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            out.add(int(name))
    return out


def _preexec():
    os.umask(0o027)  # the child reports its umask


class _Runner:
    def __init__(self, loop, prog, trace):
        self.loop, self.prog, self.trace = loop, prog, trace
        self.salt = 0
        self.kids: list[dict] = []
        self.files: list = []
        self.fds: list = []
        self.tmp = tempfile.TemporaryDirectory(prefix="subfuzz-")
        loop.set_exception_handler(self._handler)
        for c in prog["children"]:
            rec = {"events": [], "data": {}, "rc": None}
            trace["children"].append(rec)
            self.kids.append({"c": c, "rec": rec, "proc": None, "proto": None, "written": 0,
                              "files": {}, "dead": False})

    def _handler(self, loop, ctx):
        self.trace["handler"].append([_msg(ctx.get("message", "")),
                                      difffuzz._exc(ctx.get("exception"))])

    def after_close(self):
        """Per abandoned child: its transport's get_returncode() and whether
        its stdio pipes are closed, once the loop has closed."""
        out = []
        for k in self.kids:
            if not k.get("abandoned"):
                continue
            p = k["proc"]
            if k["c"]["mode"] == "streams":
                p = p._transport
            pipes = [None if p.get_pipe_transport(fd) is None
                     else p.get_pipe_transport(fd).is_closing() for fd in (0, 1, 2)]
            out.append([p.get_returncode(), p.is_closing(), pipes])
        return out

    def read_reports(self):
        for k in self.kids:
            path = k.get("report_path")
            if path and os.path.exists(path):
                with open(path) as f:
                    rep = json.load(f)
                cwd = rep["cwd"]
                rep["cwd"] = ("<cwd>" if cwd == os.getcwd() else
                              "<tmp>/" + os.path.basename(cwd) if cwd.startswith(self.tmp.name)
                              else cwd)
                k["report"] = rep

    def cleanup(self):
        self.read_reports()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for f in self.files:
            with contextlib.suppress(OSError):
                f.close()
        self.tmp.cleanup()

    def go(self):
        for i, op in enumerate(self.prog["ops"]):
            self.step(i, op)
        self.teardown()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def step(self, i, op):
        loop = self.loop
        if op[0] == "stoprun":
            op = op[1]
            loop.call_soon(loop.stop)
            loop.run_forever()
        res = self._do(op)
        self.trace["ops"].append([i, op[0], *res])

    def _do(self, op):
        async def bounded():
            return await asyncio.wait_for(self.call(op), OP_TIMEOUT)

        try:
            res = self.loop.run_until_complete(bounded())
        except asyncio.TimeoutError:
            return ["timeout"]
        except (Exception, asyncio.CancelledError) as exc:
            return ["raised", difffuzz._exc(exc)]
        return ["ok", res]

    # -- spawning

    def _stdio(self, k, which):
        c = k["c"]
        v = c[which]
        if v == "pipe":
            return subprocess.PIPE
        if v == "devnull":
            return subprocess.DEVNULL
        if v == "stdout":
            return subprocess.STDOUT
        path = os.path.join(self.tmp.name, f"{id(k)}-{which}")
        if which == "stdin":
            with open(path, "wb") as f:
                f.write(payload(c["stdin_file"], 5))
            f = open(path, "rb")  # noqa: SIM115
        else:
            f = open(path, "wb")  # noqa: SIM115
        self.files.append(f)
        k["files"][which] = path
        return f.fileno()

    async def spawn(self, k):
        c = k["c"]
        spec = json.dumps([c["steps"], c["tail"], c["ignterm"]])
        k["ready"] = os.path.join(self.tmp.name, f"ready-{len(self.files)}-{id(k)}")
        args = [sys.executable, "-S", "-c", CHILD, spec, k["ready"]]
        kw = {"stdin": self._stdio(k, "stdin"), "stdout": self._stdio(k, "stdout"),
              "stderr": self._stdio(k, "stderr")}
        o = c.get("opts")
        if o is not None:
            k["report_path"] = k["ready"] + ".report"
            pfds = []
            for _ in range(o["pass_fds"]):
                rfd, wfd = os.pipe()
                self.fds += [rfd, wfd]
                pfds.append(wfd)
            args[4] = json.dumps([c["steps"], c["tail"], c["ignterm"], pfds])
            args.append(k["report_path"])
            if pfds:
                kw["pass_fds"] = pfds
            if o["session"] == "new_session":
                kw["start_new_session"] = True
            elif o["session"] == "process_group" and sys.version_info >= (3, 11):
                kw["process_group"] = 0
            if o["env"] == "add":
                kw["env"] = dict(os.environ, SUBFUZZ_X="added")
            elif o["env"] == "replace":
                kw["env"] = {"SUBFUZZ_X": "replaced"}
            if o["cwd"]:
                d = os.path.join(self.tmp.name, "cwd")
                os.makedirs(d, exist_ok=True)
                kw["cwd"] = d
            if o["preexec"]:
                kw["preexec_fn"] = _preexec
        if c["mode"] != "streams":
            proto = Proto(k["rec"], self.loop)
            k["proto"] = proto
            if c["mode"] == "shell":
                cmd = "exec " + shlex.join(args)
                tr, _ = await self.loop.subprocess_shell(lambda: proto, cmd, **kw)
            else:
                tr, _ = await self.loop.subprocess_exec(lambda: proto, *args, **kw)
            k["proc"] = tr
        else:
            k["proc"] = await asyncio.create_subprocess_exec(*args, **kw)
            k["data"] = {1: bytearray(), 2: bytearray()}
            k["rec"]["data"] = k["data"]
        return None

    async def bad(self, what, mode):
        kw = {}
        args = [sys.executable, "-c", "pass"]
        if what == "exe":
            args = [os.path.join(self.tmp.name, "no-such-program")]
        elif what == "cwd":
            kw["cwd"] = os.path.join(self.tmp.name, "no-such-dir")
        elif what == "dir":
            args = [self.tmp.name]
        elif what == "text":
            kw["text"] = True
        elif what == "bufsize":
            kw["bufsize"] = 1
        else:  # a shell command that is not a string
            if mode == "proto":
                await self.loop.subprocess_shell(asyncio.SubprocessProtocol, args)
            else:
                await asyncio.create_subprocess_shell(args)
        if mode == "proto":
            await self.loop.subprocess_exec(asyncio.SubprocessProtocol, *args, **kw)
        else:
            await asyncio.create_subprocess_exec(*args, **kw)

    # -- one op

    async def call(self, op):
        name = op[0]
        if name == "bad":
            return await self.bad(op[1], op[2])
        k = self.kids[op[1]]
        c = k["c"]
        p = k["proc"]
        if name == "spawn":
            return await self.spawn(k)
        if name == "sleep":
            await asyncio.sleep(op[2] / 1000)
            return None
        if name in ("kill", "send_signal", "pclose") or (name == "terminate" and not c["ignterm"]):
            # a second signal would be Popen.send_signal's poll(), which
            # reaps the child behind stock's child watcher (255, "Unknown
            # child process"): the teardown does not kill it again
            k["dead"] = True
        if c["mode"] != "streams":
            return await self.call_proto(op, k, p)
        return await self.call_streams(op, k, p)

    def _salt(self):
        self.salt += 1
        return self.salt

    async def call_proto(self, op, k, tr):
        name, proto = op[0], k["proto"]
        if name == "pwrite":
            w = tr.get_pipe_transport(0)
            w.write(payload(op[2], self._salt()))
            k["written"] += op[2]
            return None
        if name in ("write_eof", "close_stdin"):
            w = tr.get_pipe_transport(0)
            return w.write_eof() if name == "write_eof" else w.close()
        if name in ("pause", "resume"):
            t = tr.get_pipe_transport(op[2])
            return t.pause_reading() if name == "pause" else t.resume_reading()
        if name == "wait":
            await proto.exited
            return tr.get_returncode()
        if name == "returncode":
            return tr.get_returncode()
        if name == "pclose":
            return tr.close()
        if name == "sync":
            await self.sync(k)
            return None
        if name == "kill":
            return tr.kill()
        if name == "terminate":
            return tr.terminate()
        if name == "send_signal":
            return tr.send_signal(SIGNALS[op[2]])
        raise AssertionError(op)

    async def call_streams(self, op, k, p):
        name = op[0]
        if name == "write":
            p.stdin.write(payload(op[2], self._salt()))
            k["written"] += op[2]
            if op[3]:
                await p.stdin.drain()
            return None
        if name == "drain":
            return await p.stdin.drain()
        if name == "write_eof":
            return p.stdin.write_eof()
        if name == "close_stdin":
            return p.stdin.close()
        if name in ("read", "readline", "readexactly"):
            s = p.stdout if op[2] == 1 else p.stderr
            try:
                if name == "read":
                    b = await s.read(op[3])
                elif name == "readline":
                    b = await s.readline()
                else:
                    b = await s.readexactly(op[3])
            except asyncio.IncompleteReadError as exc:
                k["data"][op[2]] += exc.partial
                return ["incomplete", len(exc.partial)]
            k["data"][op[2]] += b
            # read(n) returns what has come, up to n: only whether it was EOF;
            # read() all that is left (its bytes are in the fd's total)
            if name == "read":
                return None if op[3] < 0 else "eof" if not b else "data"
            return "eof" if not b else len(b)
        if name == "communicate":
            inp = None if op[2] is None else payload(op[2], self._salt())
            out, err = await p.communicate(inp)
            if out is not None:
                k["data"][1] += out
            if err is not None:
                k["data"][2] += err
            return [out is None, err is None, p.returncode]
        if name == "wait":
            return await p.wait()
        if name == "returncode":
            return p.returncode
        if name == "sync":
            await self.sync(k)
            return None
        if name == "kill":
            return p.kill()
        if name == "terminate":
            return p.terminate()
        if name == "send_signal":
            return p.send_signal(SIGNALS[op[2]])
        raise AssertionError(op)

    def expected(self, k) -> dict:
        """Bytes each output gets before the child's tail (a block)."""
        c = k["c"]
        out = {1: 0, 2: 0}
        src = {"pipe": k["written"], "devnull": 0, "fd": c["stdin_file"]}[c["stdin"]]
        for s in c["steps"]:
            if s[0] in ("out", "err"):
                fd = 1 if s[0] == "out" else 2
                if fd == 2 and c["stderr"] == "stdout":
                    fd = 1
                out[fd] += s[1]
            elif s[0] == "echo":
                out[1] += src
            elif s[0] == "readall":
                out[1] += 16
        return out

    async def sync(self, k):
        """Wait until every byte the child writes before its tail (a block)
        has come, and the child blocks."""
        c = k["c"]
        exp = self.expected(k)
        for fd, which in ((1, "stdout"), (2, "stderr")):
            n = exp[fd]
            if c[which] == "pipe":
                if c["mode"] == "streams":
                    s = k["proc"].stdout if fd == 1 else k["proc"].stderr
                    k["data"][fd] += await s.readexactly(n - len(k["data"][fd]))
                else:
                    while len(k["rec"]["data"].get(fd, b"")) < n:
                        await asyncio.sleep(0.002)
            elif c[which] == "fd":
                path = k["files"][which]
                while os.path.getsize(path) < n:
                    await asyncio.sleep(0.002)
        # and until it blocks (its signal dispositions are set: a SIGTERM
        # ignored, SIGHUP not as inherited from a nohup)
        while not os.path.exists(k["ready"]):
            await asyncio.sleep(0.002)

    # -- teardown: every child ends, its outputs read to their end

    def teardown(self):
        for idx, k in enumerate(self.kids):
            if k["proc"] is None:
                continue
            if self.prog.get("abandon") and k["c"]["tail"][0] == "block" and not k["dead"]:
                # left running as the loop closes (decision 505): its bytes
                # before the block have come; its callbacks from here on are
                # the closing's, not compared
                r = self._abandon(k)
                self.trace["ops"].append(["abandon", idx, *r])
                continue
            r = self._end(k)
            self.trace["ops"].append(["end", idx, *r])
        self.loop.run_until_complete(asyncio.sleep(0.01))
        for k in self.kids:
            rec = k["rec"]
            for which, fd in (("stdout", 1), ("stderr", 2)):
                if k["c"][which] == "fd":
                    with open(k["files"][which], "rb") as f:
                        rec["data"][fd] = f.read()
            rec["data"] = {fd: [len(b), zlib.crc32(b)] for fd, b in sorted(rec["data"].items())}
            if k["c"]["mode"] != "streams" and k["proc"] is not None and not k.get("abandoned"):
                k["proc"].close()

    def _abandon(self, k):
        k["abandoned"] = True
        if k["c"]["mode"] != "streams":
            # decision 777: its paused pipes resumed first, as `_end` does, so
            # that its bytes before the block come (stock: a child paused on
            # a full pipe never gets there; ours had read the paused pipe on,
            # 162, and the child went on: seed 21042 with --extra)
            for fd in (1, 2):
                t = k["proc"].get_pipe_transport(fd)
                if t is not None and not t.is_closing():
                    t.resume_reading()
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.sync(k), OP_TIMEOUT))
        except asyncio.TimeoutError:
            return ["timeout"]
        except (Exception, asyncio.CancelledError) as exc:
            return ["raised", difffuzz._exc(exc)]
        k["rec"]["events"] = "abandoned"
        return ["ok"]

    def _end(self, k):
        async def end():
            c, p = k["c"], k["proc"]
            if c["mode"] != "streams":
                w = p.get_pipe_transport(0)
                if w is not None:
                    w.close()
                for fd in (1, 2):
                    t = p.get_pipe_transport(fd)
                    if t is not None and not t.is_closing():
                        t.resume_reading()
                if c["tail"][0] == "block" and not k["dead"]:
                    await self.sync(k)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                await k["proto"].exited
                await k["proto"].lost
                return p.get_returncode()
            if p.stdin is not None:
                p.stdin.close()
            if c["tail"][0] == "block" and not k["dead"]:
                await self.sync(k)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
            for fd, s in ((1, p.stdout), (2, p.stderr)):
                if s is not None:
                    k["data"][fd] += await s.read()
            return await p.wait()

        try:
            rc = self.loop.run_until_complete(asyncio.wait_for(end(), OP_TIMEOUT))
        except asyncio.TimeoutError:
            return ["timeout"]
        except (Exception, asyncio.CancelledError) as exc:
            return ["raised", difffuzz._exc(exc)]
        k["rec"]["rc"] = rc
        return ["ok", rc]


# --------------------------------------------------------------------------
# comparing


def _norm_events(events: list) -> list:
    """A child's protocol callbacks as compared (decision 491): between
    connection_made and connection_lost, the pipe_connection_lost calls and
    process_exited in any order. Stock's order varies there from run to run
    (the child closes its pipes as it exits; which EOF, EPIPE or the child
    watcher's report reaches the loop first is the kernel's and the
    scheduler's): 36 of 150 programs run six times each on stock."""
    if len(events) >= 2 and events[0] == ["made"] and events[-1][0] == "lost":
        return [events[0], *sorted(events[1:-1], key=json.dumps), events[-1]]
    return events


def differences(ref: dict, got: dict) -> list[str]:
    out = []
    for key in ("fatal", "leaked_fds", "zombies", "reports", "after_close", "warnings", "reaped"):
        if key == "reaped" and not (got.get("pidfd_refused") and sys.version_info < (3, 12)):
            continue
        if ref.get(key) != got.get(key):
            out.append(f"{key}: stock {ref.get(key)!r} ours {got.get(key)!r}")
    for i, (a, b) in enumerate(zip(ref["children"], got["children"], strict=False)):
        if _norm_events(a["events"]) != _norm_events(b["events"]):
            out.append(f"child {i} events: stock {a['events']} ours {b['events']}")
        if a["data"] != b["data"]:
            out.append(f"child {i} data: stock {a['data']} ours {b['data']}")
        if a["rc"] != b["rc"]:
            out.append(f"child {i} returncode: stock {a['rc']} ours {b['rc']}")
    if len(ref["children"]) != len(got["children"]):
        out.append("children: not as many")
    if ref["ops"] != got["ops"]:
        for x, y in zip(ref["ops"], got["ops"], strict=False):
            if x != y:
                out.append(f"op: stock {x} ours {y}")
                break
        if len(ref["ops"]) != len(got["ops"]):
            out.append(f"ops: stock {len(ref['ops'])} results, ours {len(got['ops'])}")
    if ref["handler"] != got["handler"]:
        out.append(f"exception handler: stock {ref['handler']} ours {got['handler']}")
    if ref["log"] != got["log"]:
        out.append(f"asyncio log: stock {ref['log']} ours {got['log']}")
    return out


def check(prog: dict, kinds, stock_twice=True) -> dict:
    """{kind: [differences]}; {'stock': [...]} if stock's two runs differ."""
    ref = run("stock", prog)
    if stock_twice:
        d = differences(ref, run("stock", prog))
        if d:
            return {"stock": d}
    return {k: differences(ref, run(k, prog)) for k in kinds}


def shrink(prog: dict, kind: str) -> dict:
    """Drop ops (not spawns) while the kind still differs."""

    def fails(ops):
        return bool(check(dict(prog, ops=ops), [kind]).get(kind))

    ops = list(prog["ops"])
    j = len(ops) - 1
    while j >= 0:
        op = ops[j][1] if ops[j][0] == "stoprun" else ops[j]
        if op[0] != "spawn":
            cand = ops[:j] + ops[j + 1 :]
            if fails(cand):
                ops = cand
            elif ops[j][0] == "stoprun" and fails(ops[:j] + [op] + ops[j + 1 :]):
                ops = ops[:j] + [op] + ops[j + 1 :]
        j -= 1
    return dict(prog, ops=ops)


def script(prog: dict) -> str:
    return f'''"""subfuzz repro, seed {prog["seed"]} (the dev interpreter, a built tree)."""
import json, sys
sys.path.insert(0, {HERE!r})
import subfuzz

PROGRAM = json.loads({json.dumps(prog)!r})
for kind in ["stock"] + subfuzz.KINDS:
    print(kind, json.dumps(subfuzz.run(kind, PROGRAM)))
for kind, diffs in subfuzz.check(PROGRAM, subfuzz.KINDS).items():
    print(kind, "SAME" if not diffs else "DIFFERENT")
    for d in diffs:
        print("   ", d)
'''


def study(seeds, runs: int, extra=False) -> None:
    """Run stock `runs` times a seed; print what varies between runs."""
    for seed in seeds:
        prog = generate(seed, extra)
        traces = [run("stock", prog) for _ in range(runs)]
        seen = {json.dumps(t, sort_keys=True) for t in traces}
        if len(seen) > 1:
            print(f"seed {seed}: {len(seen)} different stock traces")
            for t in traces[1:]:
                for d in differences(traces[0], t):
                    print("    " + d[:600])
        sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="run seeds start..start+N-1")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--seed", type=int, help="one seed only")
    ap.add_argument("--kind", action="append", choices=KINDS, help="default: all three")
    ap.add_argument("--shrink", action="store_true", help="minimise a failing seed's op list")
    ap.add_argument("--script", help="write the (minimal) failing program as a script here")
    ap.add_argument("--study", type=int, metavar="RUNS", help="only run stock RUNS times a seed")
    ap.add_argument("--extra", action="store_true",
                    help="spawn options, pidfd_open refused, the loop closed with children running")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    kinds = args.kind or KINDS
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    if args.study:
        study(seeds, args.study, args.extra)
        return 0
    failed, varied, mix = 0, 0, {}
    t0 = time.monotonic()
    for seed in seeds:
        prog = generate(seed, args.extra)
        for op in prog["ops"]:
            name = f"stoprun:{op[1][0]}" if op[0] == "stoprun" else op[0]
            mix[name] = mix.get(name, 0) + 1
        if args.extra:
            for key in ("pidfd_refused", "abandon"):
                mix[key] = mix.get(key, 0) + prog[key]
            for c in prog["children"]:
                for key, v in c["opts"].items():
                    if v:
                        name = f"{key}={v}" if isinstance(v, str) else key
                        mix[name] = mix.get(name, 0) + 1
        res = check(prog, kinds)
        if "stock" in res:
            varied += 1
            print(f"seed {seed}: stock varies: {[d[:300] for d in res['stock'][:2]]}")
            continue
        bad = {k: d for k, d in res.items() if d}
        if not bad:
            if args.verbose:
                print(f"seed {seed}: same")
            continue
        failed += 1
        for k, d in bad.items():
            print(f"seed {seed} {k}:")
            for line in d:
                print("    " + line[:2000])
        if args.shrink:
            kind = next(iter(bad))
            small = shrink(prog, kind)
            print(f"  minimal ({kind}): {json.dumps(small)}")
            if args.script:
                with open(args.script, "w") as f:
                    f.write(script(small))
                print(f"  script: {args.script}")
        sys.stdout.flush()
    print(
        f"{len(seeds)} seeds x {len(kinds)} kinds ({', '.join(kinds)}) in "
        f"{time.monotonic() - t0:.0f} s: {failed} differ, {varied} skipped (stock varies)"
    )
    print("op mix:", dict(sorted(mix.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
