"""Subprocesses and pipe transports (issue 11), on io_uring, epoll and, where
the point is to behave as it does, the stock loop.

After each test: no child of this process is left (running or zombie) and no
fd is left open that was not open before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pty
import signal
import socket
import subprocess
import threading

import pytest
from conftest import epoll_events, is_stock, make_loop, run_in, wait_child_exited

PIPE = asyncio.subprocess.PIPE
MIB = 1024 * 1024


def _children() -> list[int]:
    me = str(os.getpid())
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            out.append(int(name))
    return out


@pytest.fixture(autouse=True)
def no_leaks():
    fds = set(os.listdir("/proc/self/fd"))
    yield
    import gc

    gc.collect()
    assert _children() == [], "children (running or zombie) left behind"
    leaked = set(os.listdir("/proc/self/fd")) - fds
    # the listdir's own fd comes and goes; anything else is a leak
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}


@pytest.fixture
def pattern_file(tmp_path):
    data = bytes(range(256)) * (8 * MIB // 256)
    path = tmp_path / "pattern"
    path.write_bytes(data)
    return str(path), data


@pytest.mark.timeout(300)
def test_100_children_stream_8mib_each_byte_exact(loop, pattern_file):
    path, data = pattern_file

    async def one(i):
        # a per-child header: bytes of one child can never pass for another's
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", 'printf "%08d" "$1"; exec cat "$2"', "sh", str(i), path, stdout=PIPE
        )
        out = await proc.stdout.read()
        assert await proc.wait() == 0
        return out

    async def main():
        outs = await asyncio.gather(*(one(i) for i in range(100)))
        for i, out in enumerate(outs):
            assert len(out) == 8 + len(data)
            assert out[:8] == b"%08d" % i
            assert out[8:] == data

    run_in(loop, main(), timeout=280)


@pytest.mark.timeout(120)
def test_stdin_stdout_8mib_through_cat(any_loop):
    data = os.urandom(8 * MIB)

    async def main():
        procs = [await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
                 for _ in range(4)]
        results = await asyncio.gather(*(p.communicate(data) for p in procs))
        for out, _err in results:
            assert out == data
        assert [p.returncode for p in procs] == [0] * 4

    run_in(any_loop, main(), timeout=100)


def test_child_closes_stdout_early(any_loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "echo early; exec 1>&-; sleep 0.3; exit 5", stdout=PIPE
        )
        out = await proc.stdout.read()  # EOF comes before the exit
        assert proc.returncode is None
        assert out == b"early\n"
        assert await proc.wait() == 5

    run_in(any_loop, main())


def _write_after_exit(lp):
    async def main():
        proc = await asyncio.create_subprocess_exec("true", stdin=PIPE)
        assert await proc.wait() == 0
        await asyncio.sleep(0.05)  # the closed read end is seen
        with pytest.raises((BrokenPipeError, ConnectionResetError)) as info:
            proc.stdin.write(b"x" * 200_000)
            await proc.stdin.drain()
        # communicate() ignores them, as documented
        proc2 = await asyncio.create_subprocess_exec("true", stdin=PIPE)
        await proc2.wait()
        await proc2.communicate(b"y" * 200_000)
        return info.type

    return run_in(lp, main())


def test_write_to_exited_child_as_stock(loop):
    stock = make_loop("stock")
    try:
        expected = _write_after_exit(stock)
    finally:
        stock.close()
    assert _write_after_exit(loop) is expected


def test_write_to_child_that_closed_stdin_epipe(loop):
    """A child that stops reading but runs on: the write fails with EPIPE."""

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "exec 0<&-; sleep 0.3", stdin=PIPE
        )
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):
                proc.stdin.write(b"z" * 65536)
                await proc.stdin.drain()
        assert await proc.wait() == 0

    run_in(loop, main())


@pytest.mark.parametrize("how", ["kill", "terminate", "send_signal"])
def test_kill_terminate_while_reading(any_loop, how):
    async def main():
        proc = await asyncio.create_subprocess_exec("yes", stdout=PIPE)
        got = await proc.stdout.readexactly(100_000)
        assert got[:4] == b"y\ny\n"
        if how == "send_signal":
            proc.send_signal(signal.SIGUSR1)
            sig = signal.SIGUSR1
        else:
            getattr(proc, how)()
            sig = signal.SIGKILL if how == "kill" else signal.SIGTERM
        while await proc.stdout.read(65536):
            pass
        assert await proc.wait() == -sig

    run_in(any_loop, main())


def test_signal_handlers_fire_while_children_run(loop):
    fired = []

    async def main():
        loop.add_signal_handler(signal.SIGUSR1, fired.append, "usr1")
        loop.add_signal_handler(signal.SIGCHLD, fired.append, "chld")
        try:
            procs = [await asyncio.create_subprocess_exec("sleep", "0.2") for _ in range(5)]
            os.kill(os.getpid(), signal.SIGUSR1)
            codes = await asyncio.gather(*(p.wait() for p in procs))
            assert codes == [0] * 5
            await asyncio.sleep(0.05)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
            loop.remove_signal_handler(signal.SIGCHLD)

    run_in(loop, main())
    assert "usr1" in fired and "chld" in fired


def test_child_exited_before_the_loop_watched_it(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 3")
        wait_child_exited(proc.pid)  # a zombie before its pidfd is polled
        assert await proc.wait() == 3

    run_in(loop, main())


def test_application_child_not_reaped(loop):
    """No waitpid(-1): a child the application owns keeps its status."""
    own = subprocess.Popen(["sh", "-c", "exit 7"])

    async def main():
        procs = [await asyncio.create_subprocess_exec("true") for _ in range(5)]
        await asyncio.gather(*(p.wait() for p in procs))
        await asyncio.sleep(0.1)

    run_in(loop, main())
    assert own.wait(timeout=10) == 7


def test_children_of_several_loops_in_several_threads(loop):
    kind = loop.backend
    errors, codes = [], []

    def worker(n):
        lp = make_loop(kind)
        try:
            async def main():
                procs = [await asyncio.create_subprocess_exec("sh", "-c", f"exit {n}")
                         for _ in range(5)]
                return await asyncio.gather(*(p.wait() for p in procs))

            codes.append(lp.run_until_complete(asyncio.wait_for(main(), 20)))
        except BaseException as exc:
            errors.append(exc)
        finally:
            lp.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(codes) == [[n] * 5 for n in range(4)]


def test_pidfd_refused_falls_back_to_stock_watcher(loop, pidfd_refused, caplog):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "echo hi; exit 4", stdout=PIPE
        )
        out, _ = await proc.communicate()
        assert out == b"hi\n" and proc.returncode == 4

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_in(loop, main())
    assert "pidfd_open() refused" in caplog.text


def test_pty_read_and_write(any_loop):
    master, slave = pty.openpty()

    async def main():
        reader = asyncio.StreamReader()
        rt, _ = await any_loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", 0)
        )
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "read line; echo got $line", stdin=slave, stdout=slave
        )
        os.close(slave)
        wt, wp = await any_loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(os.dup(master), "wb", 0)
        )
        wt.write(b"ping\n")
        out = b""
        while b"got ping" not in out:  # read while the child runs
            chunk = await reader.read(1024)
            if not chunk:
                break
            out += chunk
        assert b"got ping" in out
        assert await proc.wait() == 0
        wt.close()
        rt.close()
        await asyncio.sleep(0.05)

    run_in(any_loop, main())


def test_pty_eio_at_hangup_as_stock(any_loop):
    """A pty master reads EIO once the slave side is gone: connection_lost
    gets it, nothing is logged (the stock rule)."""
    master, slave = pty.openpty()
    lost = []

    class P(asyncio.Protocol):
        def __init__(self):
            self.data = b""
            self.done = any_loop.create_future()

        def data_received(self, data):
            self.data += data

        def connection_lost(self, exc):
            lost.append(exc)
            self.done.set_result(None)

    async def main():
        p = P()
        await any_loop.connect_read_pipe(lambda: p, os.fdopen(master, "rb", 0))
        os.write(slave, b"bye")
        await asyncio.sleep(0.05)
        os.close(slave)
        await p.done
        assert p.data == b"bye"

    run_in(any_loop, main())
    assert isinstance(lost[0], OSError) and lost[0].errno == errno.EIO


def test_pipe_kinds_accepted_as_stock(any_loop, tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    regular = tmp_path / "file"
    regular.write_bytes(b"x")

    async def main():
        with open(regular, "rb") as f, pytest.raises(ValueError):
            await any_loop.connect_read_pipe(asyncio.Protocol, f)
        with open(regular, "wb") as f, pytest.raises(ValueError):
            await any_loop.connect_write_pipe(asyncio.Protocol, f)
        # FIFO both ways, a socket, a character device
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        reader = asyncio.StreamReader()
        rt, _ = await any_loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", 0)
        )
        wt, _ = await any_loop.connect_write_pipe(asyncio.Protocol, os.fdopen(wfd, "wb", 0))
        wt.write(b"through the fifo")
        wt.close()
        assert await reader.read() == b"through the fifo"
        rt.close()
        a, b = socket.socketpair()
        with a, b:
            st, _ = await any_loop.connect_write_pipe(asyncio.Protocol, a.dup())
            st.write(b"sock")
            b.settimeout(5)
            assert b.recv(10) == b"sock"
            st.close()
        null = open(os.devnull, "wb", 0)
        nt, _ = await any_loop.connect_write_pipe(asyncio.Protocol, null)
        nt.write(b"gone")
        nt.close()
        await asyncio.sleep(0.05)

    run_in(any_loop, main())


def test_pause_resume_reading_pipe(any_loop):
    async def main():
        got = []

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.t = transport
                self.done = any_loop.create_future()

            def data_received(self, data):
                got.append(data)

            def connection_lost(self, exc):
                self.done.set_result(exc)

        r, w = os.pipe()
        p = P()
        t, _ = await any_loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", 0))
        t.pause_reading()
        os.write(w, b"held")
        await asyncio.sleep(0.05)
        assert got == []
        t.resume_reading()
        await asyncio.sleep(0.05)
        assert b"".join(got) == b"held"
        os.close(w)
        assert await p.done is None

    run_in(any_loop, main())


def test_read_pipe_eof_while_paused_comes_once_and_the_poll_ends(any_loop):
    """The EOF a paused transport reads (decision 365) waits behind the data,
    comes once after resume_reading, and the level poll that found it ends
    at once: a hung-up pipe does not make every turn of the paused loop poll
    and read it again."""
    events = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.done = any_loop.create_future()

        def data_received(self, data):
            events.append(data)

        def eof_received(self):
            events.append("eof")

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        r, w = os.pipe()
        p = P()
        t, _ = await any_loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", 0))
        t.pause_reading()
        os.write(w, b"last words")
        os.close(w)
        await asyncio.sleep(0.05)
        if not is_stock(any_loop):
            rearms = any_loop._engine.stats()["rearms"]
            await asyncio.sleep(0.1)
            assert any_loop._engine.stats()["rearms"] - rearms < 5
        assert events == []
        t.resume_reading()
        assert await asyncio.wait_for(p.done, 10) is None
        assert events == [b"last words", "eof"]

    run_in(any_loop, main())


def test_paused_read_pipe_leaves_the_rest_in_the_pipe(any_loop):
    """While paused, the transport takes a bounded amount from the pipe (ours:
    up to max_size held, plus what one turn brings; stock: nothing), so a
    writer that never stops is held back by the full pipe. On resume every
    byte arrives, in order."""
    import fcntl

    async def main():
        got = []

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.done = any_loop.create_future()

            def data_received(self, data):
                got.append(data)

            def connection_lost(self, exc):
                self.done.set_result(exc)

        r, w = os.pipe()
        os.set_blocking(w, False)
        cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        p = P()
        t, _ = await any_loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", 0))
        t.pause_reading()
        sent = bytearray()
        full = 0
        while full < 10 and len(sent) < 8 * MIB:
            chunk = bytes([len(sent) // 65536 % 251]) * 65536
            try:
                n = os.write(w, chunk)
                sent += chunk[:n]
                full = 0
            except BlockingIOError:
                full += 1
            await asyncio.sleep(0.005)
        assert got == []
        assert len(sent) <= cap + 256 * 1024 + 2 * cap, len(sent)
        t.resume_reading()
        os.set_blocking(w, True)
        os.close(w)
        assert await p.done is None
        assert b"".join(got) == bytes(sent)

    run_in(any_loop, main())


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(program="/nonexistent/prog"), FileNotFoundError),
        (dict(program="true", cwd="/nonexistent/dir"), FileNotFoundError),
        (dict(program="true", text=True), ValueError),
        (dict(program="true", universal_newlines=True), ValueError),
        (dict(program="true", encoding="utf-8"), ValueError),
        (dict(program="true", bufsize=1), ValueError),
    ],
)
def test_bad_input_as_stock(any_loop, kwargs, exc):
    kwargs = dict(kwargs)
    program = kwargs.pop("program")

    async def main():
        with pytest.raises(exc):
            await asyncio.create_subprocess_exec(program, stdout=PIPE, **kwargs)

    run_in(any_loop, main())


def _outcome(lp, coro_fn):
    async def main():
        try:
            return ("ok", await coro_fn())
        except Exception as exc:
            return ("raised", type(exc))

    return run_in(lp, main())


def _as_stock(loop, coro_fn):
    stock = make_loop("stock")
    try:
        expected = _outcome(stock, coro_fn)
    finally:
        stock.close()
    assert _outcome(loop, coro_fn) == expected
    return expected


def test_closed_fd_as_stdio_as_stock(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)

    async def body():
        proc = await asyncio.create_subprocess_exec("true", stdout=w)
        return await proc.wait()

    _as_stock(loop, body)


def test_signal_after_exit_as_stock(loop):
    async def body():
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        await asyncio.sleep(0.05)  # the transport has finished (stock: a race before)
        proc.send_signal(signal.SIGTERM)

    _as_stock(loop, body)


def test_subprocess_transport_api(loop):
    async def main():
        t, p = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "sh", "-c", "exit 2", stdin=PIPE, stdout=PIPE,
            stderr=None,
        )
        assert isinstance(t, asyncio.SubprocessTransport)
        assert t.get_pid() > 0
        assert isinstance(t.get_pipe_transport(0), asyncio.WriteTransport)
        assert isinstance(t.get_pipe_transport(1), asyncio.ReadTransport)
        assert t.get_pipe_transport(2) is None
        while t.get_returncode() is None:
            await asyncio.sleep(0.01)
        assert t.get_returncode() == 2
        t.close()
        await asyncio.sleep(0.05)

    run_in(loop, main())
    assert not is_stock(loop)


def test_popen_parameters_as_stock(any_loop, tmp_path):
    """stdio as PIPE/DEVNULL/STDOUT/fd/file object, env, cwd, pass_fds,
    start_new_session: the stock transport's Popen, so the stock results."""
    r, w = os.pipe()
    log = open(tmp_path / "log", "wb")

    async def main():
        proc = await asyncio.create_subprocess_shell(
            f'echo out; echo err >&2; echo "$FOO" >/dev/fd/{w}; pwd; ps -o sid= -p $$ | tr -d " "',
            stdin=asyncio.subprocess.DEVNULL, stdout=PIPE, stderr=asyncio.subprocess.STDOUT,
            env={"FOO": "bar", "PATH": os.environ["PATH"]}, cwd=str(tmp_path),
            pass_fds=(w,), start_new_session=True,
        )
        os.close(w)
        out, err = await proc.communicate()
        lines = out.decode().split("\n")
        assert lines[:3] == ["out", "err", str(tmp_path)]
        assert int(lines[3]) == proc.pid  # its own session
        assert err is None
        assert os.read(r, 100) == b"bar\n"
        proc = await asyncio.create_subprocess_exec("echo", "to file", stdout=log)
        assert await proc.wait() == 0

    try:
        run_in(any_loop, main())
    finally:
        os.close(r)
        log.close()
    assert (tmp_path / "log").read_bytes() == b"to file\n"


def test_pidfd_open_out_of_fds_still_waits(loop, monkeypatch, caplog):
    """pidfd_open failing for one child (EMFILE) after the child started:
    it is still waited for (no zombie), its status still comes."""
    real = os.pidfd_open

    def emfile(pid, flags=0):
        if pid != os.getpid():
            raise OSError(errno.EMFILE, "Too many open files")
        return real(pid, flags)

    monkeypatch.setattr(os, "pidfd_open", emfile)

    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 6")
        assert await proc.wait() == 6

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_in(loop, main())
    assert "a thread waits for the child" in caplog.text


# ----------------------------------- the read pipe's C core (decision 221)


class _Reader(asyncio.Protocol):
    def __init__(self, loop):
        self.chunks = []
        self.frames = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        import sys

        f, files = sys._getframe(1), []
        while f is not None:
            files.append(f.f_code.co_filename)
            f = f.f_back
        self.frames.append(files)
        self.chunks.append(data)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_read_pipe_data_goes_to_the_protocol_from_c(loop):
    """A pipe's data record reaches data_received from the C core: no Python
    frame of the transport between the loop and the protocol."""

    async def main():
        r, w = os.pipe()
        p = _Reader(loop)
        await loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", 0))
        for i in range(3):
            os.write(w, b"x" * 1000)
            while sum(map(len, p.chunks)) < 1000 * (i + 1):
                await asyncio.sleep(0.01)
        os.close(w)
        assert await p.lost is None
        assert b"".join(p.chunks) == b"x" * 3000
        for files in p.frames:
            assert not any(f.endswith(os.path.join("transports", "pipe.py")) for f in files), files

    run_in(loop, main())


def _mib_pipe() -> tuple[int, int]:
    """A pipe of 1 MiB (F_SETPIPE_SZ), so that a MiB written waits whole."""
    import fcntl

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, MIB)
    except PermissionError:
        os.close(r)
        os.close(w)
        pytest.skip("F_SETPIPE_SZ to 1 MiB refused (this user's pipe quota)")
    return r, w


def test_read_pipe_reads_straight_into_the_chunks(loop):
    """Decision 365: each data_received gets the bytes one read(2) of at most
    64 KiB wrote into, no engine pool buffer between. A 1 MiB pipe filled
    before the loop reads comes as 16 chunks of 64 KiB, and while
    data_received runs the engine's pool is whole (a pool read's buffers are
    in use until the next run)."""

    eng = loop._engine
    everything = eng.info()["buf_count"]
    seen = []

    class Reader(_Reader):
        def data_received(self, data):
            seen.append((len(data), eng.stats()["bufs_free"]))
            self.chunks.append(data)

    async def main():
        r, w = _mib_pipe()
        data = bytes(range(256)) * (MIB // 256)
        assert os.write(w, data) == MIB
        os.close(w)
        p = Reader(loop)
        await loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", 0))
        assert await asyncio.wait_for(p.lost, 10) is None
        assert b"".join(p.chunks) == data

    run_in(loop, main())
    assert seen == [(64 * 1024, everything)] * 16


def _epoll_et(tfd: int) -> bool | None:
    """Whether this process's epoll registration of tfd is edge-triggered,
    None when tfd is not registered."""
    import select

    events = epoll_events(tfd)
    return None if events is None else bool(events & select.EPOLLET)


def test_epoll_read_pipe_rearms_without_epoll_ctl(loop):
    """Decision 382: on epoll a read pipe's level poll is re-armed at each
    turn without a syscall (its fd registered level-triggered): 1 MiB read
    as 16 chunks costs the registration and the switches around a pause, not
    an epoll_ctl per chunk (17 before). While paused past the hold cap (the
    poll cancelled), the fd is edge-triggered again, so the full pipe does not
    wake every wait; after resume_reading every byte comes, in order."""

    if loop._engine.backend != "epoll":
        pytest.skip("io_uring re-arms with an SQE in the turn's one enter, no syscall of its own")
    eng = loop._engine
    data = os.urandom(MIB)
    state = {}

    class Reader(_Reader):
        def data_received(self, data):
            self.chunks.append(data)
            if len(self.chunks) == 4:
                self.t.pause_reading()

    async def main():
        r, w = _mib_pipe()
        assert os.write(w, data) == len(data)
        p = Reader(loop)
        before = eng.stats()["submitted"]
        t, _ = await loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", 0))
        while t._ud is not None:  # paused at 4 chunks, the cap cancels the poll at 8
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # an event for the fd nothing waits on
        state["et_paused"] = _epoll_et(r)
        n = eng.stats()["enters"]
        await asyncio.sleep(0.05)
        state["enters_paused"] = eng.stats()["enters"] - n
        t.resume_reading()
        while sum(map(len, p.chunks)) < len(data):
            await asyncio.sleep(0.01)
        state["et_reading"] = _epoll_et(r)
        os.close(w)
        assert await asyncio.wait_for(p.lost, 10) is None
        state["syscalls"] = eng.stats()["submitted"] - before
        assert b"".join(p.chunks) == data

    run_in(loop, main())
    assert state["et_paused"] is True
    assert state["enters_paused"] <= 3, state  # a sleep's wait, not a spin
    assert state["et_reading"] is False
    assert state["syscalls"] <= 6, state


def test_read_pipe_data_received_raising_is_reported_as_stock(any_loop):
    """An exception from data_received goes to the loop's exception handler
    and reading goes on, as with the stock reader handle."""
    errors = []

    class Raising(_Reader):
        def data_received(self, data):
            super().data_received(data)
            if len(self.chunks) == 1:
                raise ZeroDivisionError("first chunk")

    async def main():
        any_loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        r, w = os.pipe()
        p = Raising(any_loop)
        t, _ = await any_loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", 0))
        os.write(w, b"one")
        while not p.chunks:
            await asyncio.sleep(0.01)
        os.write(w, b"two")
        while len(p.chunks) < 2:
            await asyncio.sleep(0.01)
        assert not t.is_closing()
        os.close(w)
        assert await p.lost is None
        assert p.chunks == [b"one", b"two"]

    run_in(any_loop, main())
    assert len(errors) == 1, errors
    assert isinstance(errors[0]["exception"], ZeroDivisionError)
    assert errors[0]["message"].startswith("Exception in callback")


def test_read_pipe_set_protocol_takes_the_next_chunk(any_loop):
    async def main():
        r, w = os.pipe()
        p1, p2 = _Reader(any_loop), _Reader(any_loop)
        t, _ = await any_loop.connect_read_pipe(lambda: p1, os.fdopen(r, "rb", 0))
        os.write(w, b"first")
        while not p1.chunks:
            await asyncio.sleep(0.01)
        t.set_protocol(p2)
        os.write(w, b"second")
        while not p2.chunks:
            await asyncio.sleep(0.01)
        os.close(w)
        assert await p2.lost is None
        assert (p1.chunks, p2.chunks) == ([b"first"], [b"second"])

    run_in(any_loop, main())




_CHILD_STDIO = """
import fcntl, os
for fd in (1, 2):
    print(os.readlink(f"/proc/self/fd/{fd}").split(":")[0], fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ),
          flush=True)
with open("/dev/stdout", "w") as f:
    f.write("via /dev/stdout\\n")
with open("/dev/stderr", "w") as f:
    f.write("via /dev/stderr\\n")
"""


def test_child_stdio_pipes_are_the_kernels_own(any_loop):
    """A child's stdout and stderr are pipes of the kernel's default size, as
    with the stock loop (decision 325: not a socketpair, not enlarged), so the
    child can open /dev/stdout and /dev/stderr."""
    import fcntl
    import sys

    r, w = os.pipe()
    default = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    os.close(r)
    os.close(w)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD_STDIO, stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert out.decode() == f"pipe {default}\npipe {default}\nvia /dev/stdout\n"
        assert err == b"via /dev/stderr\n"

    run_in(any_loop, main())
