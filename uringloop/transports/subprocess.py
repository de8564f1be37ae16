"""Subprocess transports, child exits watched through pidfds on the engine.

The transport is the stock ``unix_events._UnixSubprocessTransport`` (a
``base_subprocess.BaseSubprocessTransport``: Popen, the pipe protocols,
``communicate``/``wait`` rules): its pipes are connected through the loop's
``connect_read_pipe``/``connect_write_pipe``, so they are our pipe transports.

What differs from the stock loop is how the child's exit is seen: a pidfd
(``os.pidfd_open``) polled by the engine for POLLIN, then
``os.waitpid(pid, WNOHANG)`` for that pid only. No SIGCHLD handler, no thread,
no ``waitpid(-1)`` that could reap a child the application owns; a child that
exited before the loop ran is a zombie whose pidfd is readable at once; each
loop watches its own children, in whatever thread it runs.

Where ``pidfd_open`` is missing or refused (old kernel, seccomp), the stock
loop's own ``_make_subprocess_transport`` runs instead (the child watcher the
running Python uses by default), and that is logged once.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from asyncio import unix_events
from asyncio.log import logger

from .pipe import ReadPipeTransport

__all__ = ["make_subprocess_transport", "SubprocessTransport"]

SubprocessTransport = unix_events._UnixSubprocessTransport

# None: not tried yet; True: pidfds work; False: refused, the stock path runs
_pidfd_ok = None if hasattr(os, "pidfd_open") else False
_REFUSED = (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL)


def _pidfd_usable() -> bool:
    global _pidfd_ok
    if _pidfd_ok is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
            _pidfd_ok = False
            logger.warning(
                "uringloop: os.pidfd_open() refused (%s); child exits are watched "
                "the stock asyncio way (the child watcher)", exc
            )
        else:
            _pidfd_ok = True
    return _pidfd_ok


async def make_subprocess_transport(loop, protocol, args, shell, stdin, stdout, stderr,
                                    bufsize, extra=None, **kwargs):
    if not _pidfd_usable():
        transp = await unix_events._UnixSelectorEventLoop._make_subprocess_transport(
            loop, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs
        )
        _grow_when_streaming(transp)
        return transp
    waiter = loop.create_future()
    transp = SubprocessTransport(loop, protocol, args, shell, stdin, stdout, stderr, bufsize,
                                 waiter=waiter, extra=extra, **kwargs)
    watch_child(loop, transp.get_pid(), transp)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise
    _grow_when_streaming(transp)
    return transp


def _grow_when_streaming(transp) -> None:
    """The child's stdout and stderr pipes, which Popen made for PIPE (never
    a user's fd: those get no pipe transport), grow once the child streams
    (decision 580). The child sees the kernel's default size at its start."""
    for fd in (1, 2):
        pipe = transp.get_pipe_transport(fd)
        if isinstance(pipe, ReadPipeTransport):
            pipe._grow_when_streaming()


def watch_child(loop, pid: int, transp) -> None:
    """Call transp._process_exited(returncode) from the loop when pid exits."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        # already reaped by someone else (a waitpid(-1) elsewhere): its status
        # is lost, as the stock watchers say
        _reap(loop, pid, transp)
        return
    except OSError as exc:
        # out of fds (EMFILE, ENFILE) or memory: the child runs already and
        # must not become a zombie nobody waits for; a thread waits for this
        # one (the stock ThreadedChildWatcher's way)
        logger.warning("pidfd_open(%d) failed (%s): a thread waits for the child", pid, exc)
        threading.Thread(target=_wait_in_thread, args=(loop, pid, transp), daemon=True,
                         name=f"uringloop-waitpid-{pid}").start()
        return
    pidfds = loop._child_pidfds

    def on_exit(res, more, data):
        if pidfds.pop(pidfd, None) is not None:  # else close_pidfds closed it
            # the poll was one-shot: nothing of ours is on it now; epoll lets
            # go of its registration, so the next pidfd of the number is
            # armed with one ADD (decision 989)
            loop._engine.fd_closing(pidfd)
            os.close(pidfd)
        if res == -errno.ECANCELED:
            return  # the loop is closing
        _reap(loop, pid, transp)

    pidfds[pidfd] = pid
    try:
        loop._engine.poll(pidfd, select.POLLIN, on_exit)
    except BaseException:
        del pidfds[pidfd]
        os.close(pidfd)
        raise


def _wait_in_thread(loop, pid, transp):
    try:
        _, status = os.waitpid(pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        returncode = 255
    if not loop.is_closed():
        loop.call_soon_threadsafe(transp._process_exited, returncode)


def _reap(loop, pid, transp):
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        wpid, status = pid, None
    if wpid == 0:
        # readable pidfd but not yet waitable cannot happen for an exited
        # child; watch again rather than lose it
        watch_child(loop, pid, transp)
        return
    if status is None:
        proc = getattr(transp, "_proc", None)
        if proc is not None and proc.returncode is not None:
            # the transport's own Popen reaped it (close() polls it before it
            # kills): its status is the child's, as the threaded watcher of
            # 3.10-3.11 reports it (decision 432)
            loop.call_soon(transp._process_exited, proc.returncode)
            return
        logger.warning(
            "child process pid %d exit status already read:  will report returncode 255", pid
        )
        returncode = 255
    else:
        returncode = os.waitstatus_to_exitcode(status)
    if loop.get_debug():
        logger.debug("process %s exited with returncode %s", pid, returncode)
    loop.call_soon(transp._process_exited, returncode)


def close_pidfds(loop) -> None:
    """The loop closed with children still running: their pidfds go (the
    children are the application's, as on the stock loop after close)."""
    pidfds = loop._child_pidfds
    for pidfd in list(pidfds):
        os.close(pidfd)
    pidfds.clear()

