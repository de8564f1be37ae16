"""uringloop.Loop: asyncio's BaseEventLoop driven by the completion engine.

Why inherit BaseEventLoop: it already is the scheduler every asyncio loop
shares (ready queue, timer heap, executor, exception handling, debug mode,
async generators, getaddrinfo), and CPython's own selector and proactor loops
are built the same way. What a subclass must supply is the I/O: the turn
(``_selector.select(timeout)`` then ``_process_events``), ``_write_to_self``,
readers/writers, signals, the sock_* methods and the make-transport hooks.
Here the turn is one ``Engine.run(timeout)``: completions are dispatched
inside it and schedule their callbacks through ``call_soon``-style appends, so
callback order is exactly the base loop's.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import heapq
import math
import os
import select
import signal
import socket
import stat
import sys
import warnings
import weakref
from asyncio import (
    base_events,
    constants,
    events,
    format_helpers,
    selector_events,
    sslproto,
    tasks,
    unix_events,
)
from asyncio.log import logger

from . import _sched, engine
from . import sock as _sock
from .sock import SockMixin, _OpFuture
from .transports import subprocess as _subprocess
from .transports.datagram import DatagramTransport
from .transports.pipe import ReadPipeTransport, WritePipeTransport
from .transports.stream import Acceptor, SocketTransport, _acceptor_setup

_SSL_SHUTDOWN_TIMEOUT = getattr(constants, "SSL_SHUTDOWN_TIMEOUT", 30.0)
_HAS_SSL_SHUTDOWN_TIMEOUT = sys.version_info >= (3, 11)
try:
    import ssl
except ImportError:  # pragma: no cover
    ssl = None
# 3.11+: our SSL protocol (decision 393); 3.10: the stock one
if _HAS_SSL_SHUTDOWN_TIMEOUT and ssl is not None:
    from .transports.tls import SSLProtocol as _SSLProtocol
else:
    _SSLProtocol = sslproto.SSLProtocol

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT


def _fileobj_to_fd(fileobj) -> int:
    """The selectors module's rules: an int, or an object with fileno()."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _unpollable(fd: int) -> bool:
    """Whether epoll refuses a character device (/dev/null, /dev/zero...: no
    poll method; a tty or pty has one). The stock selector loop's add_reader
    raises PermissionError for such an fd; io_uring would poll it as always
    ready (decision 423). A probe on a scratch epoll, for character devices
    only, on an fd's first registration."""
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
    except PermissionError:
        return True
    except OSError:
        return False
    finally:
        ep.close()
    return False


# weakrefs of transports left open at a loop's close, each holding the socket
# or pipe file its transport's __del__ closes (Loop._keep_files_until_collected)
_orphans: set = set()


def _ignore_completion(res, more, data):
    pass


def _sighandler_noop(signum, frame):
    """Signals arrive through set_wakeup_fd; the Python-level handler does nothing."""


def _callback_failed(handle, exc):
    """Handle._run's except clause, for a callback the native turn ran."""
    if sys.version_info >= (3, 13):
        cb = format_helpers._format_callback_source(
            handle._callback, handle._args, debug=handle._loop.get_debug()
        )
    else:
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def _run_handle_debug(loop, handle):
    """BaseEventLoop._run_once's debug branch, for a turn that entered debug mode
    while running (a turn that starts in debug mode is the stock Python one)."""
    try:
        loop._current_handle = handle
        t0 = loop.time()
        handle._run()
        dt = loop.time() - t0
        if dt >= loop.slow_callback_duration:
            logger.warning("Executing %s took %.3f seconds", base_events._format_handle(handle), dt)
    finally:
        loop._current_handle = None


_sched.setup(
    events.Handle,
    events.TimerHandle,
    collections.deque,
    base_events.BaseEventLoop,
    _OpFuture,
    _callback_failed,
    _run_handle_debug,
    heapq.heapify,
    base_events.MAXIMUM_SELECT_TIMEOUT,
    base_events._MIN_SCHEDULED_TIMER_HANDLES,
    base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION,
    tasks,
)
_sock.setup_native()  # after setup(): sock.c reads _OpFuture's slots


# Loops whose native turn runs an engine, so that a fork()ed child can unhook
# them (engine.py forgets the engines themselves).
_attached: weakref.WeakSet = weakref.WeakSet()


def _detach_after_fork() -> None:
    for loop in list(_attached):
        loop._sched_detach()


os.register_at_fork(after_in_child=_detach_after_fork)


class _Turn:
    """What BaseEventLoop._run_once calls ``self._selector``: one engine run."""

    __slots__ = ("_engine", "_loop")

    def __init__(self, loop: Loop):
        self._loop = loop
        self._engine = loop._engine

    def select(self, timeout=None):
        loop = self._loop
        if loop._dirty:
            # the debug/Python turn flushes written transports before it waits,
            # as the native turn does (sched.c, Core_run_once)
            loop._flush_dirty()
            if loop._ready:
                timeout = 0
        if timeout:
            # a timer's wait, rounded up to the millisecond as the native turn
            # and the stock selector round it (sched.c, wait_ns)
            timeout = math.ceil(timeout * 1e3) * 1e-3
        # an exception from a signal handler comes out of wait() and propagates;
        # one from a completion callback is reported, and the turn goes on
        n = self._engine.wait(timeout)
        if n > 0:
            # the due timers go to _ready before the records' callbacks run,
            # as the native turn does (decision 414); what collecting raises
            # (a foreign timer's comparison) comes after the records. The
            # readers' first records of the batch wait only for what _ready
            # holds now, as the native turn's (decision 454).
            failed = None
            try:
                loop._sched_early(True)
            except Exception as exc:
                failed = exc
            try:
                error = self._engine.deliver(n)
            finally:
                loop._sched_early(False)
            if failed is not None:
                raise failed
        else:
            error = self._engine.deliver(n)
        if error is not None:
            if isinstance(error, (SystemExit, KeyboardInterrupt)):
                raise error
            self.report(error)
        return ()

    def report(self, exc):
        """A completion callback raised (or the engine failed): the loop's
        exception handler hears of it, the turn goes on."""
        self._loop.call_exception_handler(
            {"message": "Exception in engine completion callback", "exception": exc}
        )

    def close(self):
        pass


# 3.13's cleanup_socket (create_unix_server, stock's code, fills
# _unix_server_sockets): stock's _UnixSelectorEventLoop._stop_serving takes
# the path, calls super()._stop_serving(sock), then stats and unlinks the
# file. Ours runs that very function on a stand-in whose super() is our
# close of the listening socket, so the cleanup's calls, logging and
# exceptions are stock's, made from stock's frame (blockbuster's allow list
# names asyncio/unix_events.py::_stop_serving: decisions 566, 915).
_STOCK_UNIX_STOP = unix_events._UnixSelectorEventLoop.__dict__.get("_stop_serving")


class _StopServingSocket(selector_events.BaseSelectorEventLoop):
    def _stop_serving(self, sock):
        self._ul_loop._stop_serving_socket(sock)


class _StockUnixStop(unix_events._UnixSelectorEventLoop, _StopServingSocket):
    """Never a loop (made by object.__new__, no __init__): the self of stock's
    _stop_serving for one call, with the loop's _unix_server_sockets."""

    def __del__(self):
        pass


class Loop(SockMixin, _sched.Core, asyncio.BaseEventLoop):
    """An asyncio event loop on io_uring (or epoll where io_uring is refused)."""

    def __init__(self, *, backend: str | None = None, options: int = 0):
        """backend: 'io_uring', 'epoll', 'auto' or None (URINGLOOP_BACKEND, else
        auto). options: engine.OPT_* bits, for tests that force the engine's
        fallback paths (OPT_NO_*) or its test-only modes."""
        super().__init__()
        self._readers: dict[int, list] = {}
        self._writers: dict[int, list] = {}
        # fd -> transport, as stock; stream transports are in the C registry
        # instead (_sched.stream_for_fd, decision 257)
        self._transports = weakref.WeakValueDictionary()
        self._pipe_transports = weakref.WeakSet()  # for close(), decision 425
        self._dirty: list = []  # transports written to since the last flush
        self._acceptors: dict = {}  # listening socket -> Acceptor
        self._unix_server_sockets: dict = {}  # 3.13's cleanup_socket: sock -> inode
        self._polls: dict[int, list] = {}  # fd -> [ud, mask] of its reader/writer poll
        self._signal_handlers: dict[int, events.Handle] = {}
        self._ssock = self._csock = None
        self._sock_state: dict = {}
        self._sendfiling: dict = {}  # fd -> its sock_sendfile's before_close (860)
        self._sock_sending: dict = {}  # socket -> its sock_sendall ops in the engine
        self._sock_owner: dict = {}  # fd -> weakref of the socket last seen there
        self._child_pidfds: dict[int, int] = {}  # pidfd -> pid (transports/subprocess.py)
        try:
            self._engine = engine.Engine(backend, options=options)
        except BaseException:
            self._closed = True  # nothing to release; keeps __del__ quiet
            raise
        self._sock_bufsize = self._engine._buf_size  # a pool buffer (sock.py)
        self._selector = _Turn(self)
        self._sched_attach(self._engine.native(), self._selector.report)
        _attached.add(self)

    # ------------------------------------------------------------ identity

    @property
    def backend(self) -> str:
        """'io_uring' or 'epoll'."""
        return self._engine.backend

    @property
    def backend_reason(self) -> str:
        """Why this backend runs (empty when io_uring was simply available)."""
        return self._engine.reason

    def engine_stats(self) -> dict:
        """Cheap counters from the engine: kernel entries, records, ops in flight."""
        return self._engine.stats()

    # ------------------------------------------------------ run-turn hooks

    def run_forever(self):
        # When it stops, the engine lets go of this thread (Engine.park: no
        # request left in the kernel), so that another thread may run the loop
        # next, as asyncio allows. Before that, the writes of the last turn
        # leave (they would otherwise wait for the next run).
        started = not self.is_running()
        if started:
            self._sched_looping(True)  # _run_once loops until a stop (sched.c)
        try:
            super().run_forever()
        finally:
            if started:
                self._sched_looping(False)
            if started and not self.is_closed() and not self._engine.closed:
                try:
                    if self._dirty:
                        self._flush_dirty()
                        self._engine.flush()
                    self._engine.park()
                except RuntimeError:
                    pass  # not this thread's engine: the run itself said so

    def _process_events(self, event_list):
        pass  # completions were dispatched inside the turn

    # _write_to_self (call_soon_threadsafe's wakeup) is _sched.Core's: it reads
    # the engine and wakes it under the GIL, so it is safe against close().

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        for sig in list(self._signal_handlers):
            if sys.is_finalizing():
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown "
                    f"stage, skipping signal handlers removal",
                    ResourceWarning,
                    source=self,
                    stacklevel=2,
                )
                self._signal_handlers.clear()
                break
            self.remove_signal_handler(sig)
        self._sched_track_ready()  # before _ready is cleared (sched.c, lazy tracking)
        super().close()
        for table in (self._readers, self._writers):
            for handle, _obj in table.values():
                handle.cancel()
            table.clear()
        self._polls.clear()
        for fd in list(self._sock_state):
            self._sock_drop_state(fd)  # closes connections kept for a next accept
        # a server never closed: drop its accepting (the stock loop's close
        # drops its accept handles), so the listening socket is left to its
        # owner and the garbage collector, not kept alive by the closed loop
        for acceptor in self._acceptors.values():
            acceptor.stop()
        self._acceptors.clear()
        # cancels and reaps every operation still in flight, then frees the engine
        self._sched_detach()
        self._engine.close()
        for tr in list(self._pipe_transports):
            tr._engine_closed()  # a pipe whose ops had not ended (decision 509)
        _subprocess.close_pidfds(self)
        self._close_self_pipe()
        self._keep_files_until_collected()

    def _keep_files_until_collected(self):
        """A datagram or pipe transport still open at close is in a reference
        cycle through its C core: the collector would finalize its socket or
        pipe file (made first) before the transport's __del__ closes it, and
        the file object would warn too. A weakref of the transport whose
        callback holds that object keeps it reachable until the transport is
        collected (weakref callbacks run before finalizers): the transport's
        __del__ closes it and warns alone, as the stock transport does
        (decision 425)."""
        files = [(tr, tr._sock) for tr in self._transports.values() if tr._has_sock()]
        files += [(tr, tr._pipe) for tr in self._pipe_transports if tr._pipe is not None]
        for tr, f in files:
            _orphans.add(weakref.ref(tr, lambda ref, f=f: _orphans.discard(ref)))

    # ---------------------------------------------------------- transports

    def _flush_dirty(self):
        """Every transport written to since the last flush hands its queue to
        the engine: one send per transport per turn. The turn calls this right
        before the engine waits, so all of them leave in that kernel entry."""
        dirty = self._dirty
        self._dirty = []
        for transport in dirty:
            try:
                transport._flush()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport._fatal_error(exc, "Fatal write error on socket transport")

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        self._ensure_fd_no_transport(sock)
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        self._ensure_fd_no_transport(sock)
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_ssl_transport(
        self, rawsock, protocol, sslcontext, waiter=None, *, server_side=False,
        server_hostname=None, extra=None, server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=_SSL_SHUTDOWN_TIMEOUT,
    ):
        """The stdlib's SSLProtocol over our stream transport, as the stock
        selector loop does."""
        self._ensure_fd_no_transport(rawsock)
        kw = {"ssl_handshake_timeout": ssl_handshake_timeout}
        if _HAS_SSL_SHUTDOWN_TIMEOUT:
            kw["ssl_shutdown_timeout"] = ssl_shutdown_timeout
        ssl_protocol = _SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, **kw
        )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    if _HAS_SSL_SHUTDOWN_TIMEOUT:

        async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                            server_hostname=None, ssl_handshake_timeout=None,
                            ssl_shutdown_timeout=None):
            """BaseEventLoop.start_tls with our SSL protocol class (decision 393):
            the same checks, exceptions, waiter and cancellation."""
            if ssl is None:
                raise RuntimeError("Python ssl module is not available")
            if not isinstance(sslcontext, ssl.SSLContext):
                raise TypeError(
                    f"sslcontext is expected to be an instance of ssl.SSLContext, "
                    f"got {sslcontext!r}"
                )
            if not getattr(transport, "_start_tls_compatible", False):
                raise TypeError(f"transport {transport!r} is not supported by start_tls()")

            waiter = self.create_future()
            ssl_protocol = _SSLProtocol(
                self, protocol, sslcontext, waiter, server_side, server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                call_connection_made=False,
            )
            # paused early, so that the SSL protocol sees no data before
            # connection_made (as stock)
            transport.pause_reading()
            transport.set_protocol(ssl_protocol)
            conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
            resume_cb = self.call_soon(transport.resume_reading)
            try:
                await waiter
            except BaseException:
                transport.close()
                conmade_cb.cancel()
                resume_cb.cancel()
                raise
            return ssl_protocol._app_transport

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None,
                       backlog=100, ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=_SSL_SHUTDOWN_TIMEOUT):
        """Accept on a listening socket (Server._start_serving calls this once
        the socket listens): a multishot engine accept, see Acceptor."""
        acceptor = self._acceptors.get(sock)
        if acceptor is None or acceptor.stopped:
            acceptor = Acceptor(self, protocol_factory, sock, sslcontext, server, backlog,
                                ssl_handshake_timeout, ssl_shutdown_timeout)
            self._acceptors[sock] = acceptor
        else:
            # serving again (another server on this socket): the stock loop's
            # add_reader replaces the reader, so this call's arguments serve
            # the next connections (decision 424)
            acceptor.protocol_factory, acceptor.sslcontext = protocol_factory, sslcontext
            acceptor.server, acceptor.backlog = server, backlog
            acceptor.ssl_handshake_timeout = ssl_handshake_timeout
            acceptor.ssl_shutdown_timeout = ssl_shutdown_timeout
        acceptor.start()

    if _HAS_SSL_SHUTDOWN_TIMEOUT:
        _accept_connection2 = selector_events.BaseSelectorEventLoop._accept_connection2
    else:
        def _accept_connection2(self, protocol_factory, conn, extra, sslcontext=None,
                                server=None, ssl_handshake_timeout=None,
                                ssl_shutdown_timeout=None):
            return selector_events.BaseSelectorEventLoop._accept_connection2(
                self, protocol_factory, conn, extra, sslcontext, server, ssl_handshake_timeout
            )

    def _stop_serving(self, sock):
        """Stop accepting on a listening socket and close it (Server.close() calls
        this). A Unix server's socket with 3.13's cleanup_socket goes through
        stock's own _UnixSelectorEventLoop._stop_serving, whose super() call is
        _stop_serving_socket here (decision 915)."""
        if sock in self._unix_server_sockets and _STOCK_UNIX_STOP is not None:
            stand_in = object.__new__(_StockUnixStop)
            stand_in._unix_server_sockets = self._unix_server_sockets
            stand_in._ul_loop = self
            _STOCK_UNIX_STOP(stand_in, sock)
        else:
            self._stop_serving_socket(sock)

    def _stop_serving_socket(self, sock):
        """Stop accepting on a listening socket and close it. The fd is closed
        by the engine once the ops on it have ended, so a reused fd number can
        never receive a stale accept."""
        acceptor = self._acceptors.pop(sock, None)
        if acceptor is not None:
            acceptor.stop()
        if sock.fileno() < 0 or self.is_closed():
            sock.close()
        else:
            st = self._sock_state.get(sock.fileno())
            if st is not None and st.sockref() is sock:
                self._sock_drop_state(sock.fileno())  # connections kept for an accept
            # The stock loop's close() stops the listener at once: new connects
            # are refused from here on. close_fd alone cannot promise that (the
            # close waits for the accept op, which holds the file), but a
            # shutdown of a listening socket ends its listening state now (and
            # wakes the accept), TCP and Unix alike.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._engine.close_fd(sock.detach(), _ignore_completion)

    async def _sendfile_native(self, transp, file, offset, count):
        """loop.sendfile on our transport: sendfile(2) on its socket once the
        queued writes have left (the stock selector loop's way)."""
        transp._core.unregister()
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            transp._core.register()

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        transport = ReadPipeTransport(self, pipe, protocol, waiter, extra)
        self._pipe_transports.add(transport)
        return transport

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        transport = WritePipeTransport(self, pipe, protocol, waiter, extra)
        self._pipe_transports.add(transport)
        return transport

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, extra=None, **kwargs):
        """The stock transport; the child's exit comes through a pidfd."""
        return await _subprocess.make_subprocess_transport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs
        )

    # the stock path where pidfds are refused (transports/subprocess.py) calls it
    _child_watcher_callback = unix_events._UnixSelectorEventLoop._child_watcher_callback

    # the stock unix loop's own methods: they only call hooks this loop has
    create_unix_connection = unix_events._UnixSelectorEventLoop.create_unix_connection
    create_unix_server = unix_events._UnixSelectorEventLoop.create_unix_server

    # ---------------------------------------------------- readers / writers

    def _ensure_fd_no_transport(self, fd):
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        # stream transports are in the C core's registry (decision 257), the
        # others in _transports, as stock
        transport = self._transports.get(fileno)
        if transport is None or transport.is_closing():
            transport = _sched.stream_for_fd(self, fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(
                f"File descriptor {fd!r} is used by transport {transport!r}"
            )

    # A reader and a writer on one fd share one level-triggered poll whose mask
    # is the union, as a selector registers one key per fd: when both are
    # ready in one turn the reader's handle is queued before the writer's (the
    # stock order), and a writer removed by the reader's callback is cancelled
    # before its turn comes. _polls[fd] is [ud, mask] of the live poll; a
    # record of a poll that was replaced (mask changed) is recognised by
    # identity and ignored.

    def _watch(self, table, fileobj, callback, args):
        self._check_closed()
        fd = _fileobj_to_fd(fileobj)
        handle = events.Handle(callback, args, self, None)
        entry = table.get(fd)
        if entry is not None:
            entry[0].cancel()
            entry[0] = handle
            return handle
        mode = os.fstat(fd).st_mode  # EBADF for a closed fd, as epoll would say
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or (stat.S_ISCHR(mode) and _unpollable(fd)):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        table[fd] = [handle, fileobj]
        try:
            self._repoll(fd)
        except BaseException:
            del table[fd]
            raise
        return handle

    def _repoll(self, fd):
        """Make fd's poll ask for exactly what its reader and writer want."""
        mask = (_POLLIN if fd in self._readers else 0) | (_POLLOUT if fd in self._writers else 0)
        cur = self._polls.get(fd)
        if cur is not None:
            if cur[1] == mask:
                return
            del self._polls[fd]
            self._engine.cancel(cur[0])
        if not mask:
            return
        token = [None, mask]
        readers, writers, polls = self._readers, self._writers, self._polls

        def on_ready(res, more, data):
            if polls.get(fd) is not token:
                return  # a poll that was replaced or removed
            if res <= 0:
                if not more:
                    # the op ended (fd closed under it): the reader and writer
                    # stay registered, as a selector keeps the key of an fd
                    # closed under it (remove_* answers True, a callback added
                    # again on the number's next file replaces theirs and
                    # never runs); only the poll is gone (decision 430)
                    del polls[fd]
                return
            # the selectors module's mapping: an error or hangup wakes both
            # (before any timers the turn collected ahead of its records, as
            # stock's _process_events queues them: decision 414)
            if res & ~_POLLOUT:
                r = readers.get(fd)
                if r is not None and not r[0]._cancelled:
                    self._ready.append(r[0])
                    self._sched_io_place(r[0], True)
            if res & ~_POLLIN:
                w = writers.get(fd)
                if w is not None and not w[0]._cancelled:
                    self._ready.append(w[0])
                    self._sched_io_place(w[0], True)

        token[0] = self._engine.poll(fd, mask, on_ready, level=True)
        polls[fd] = token

    def _unwatch(self, table, fileobj) -> bool:
        if self.is_closed():
            return False
        try:
            fd = _fileobj_to_fd(fileobj)
        except ValueError:
            # a closed socket says fileno() == -1: find it by identity, as
            # the selectors module does
            fd = next((k for k, e in table.items() if e[1] is fileobj), None)
            if fd is None:
                raise
        entry = table.pop(fd, None)
        if entry is None:
            return False
        entry[0].cancel()
        self._repoll(fd)
        return True

    def add_reader(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._watch(self._readers, fd, callback, args)

    def remove_reader(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._unwatch(self._readers, fd)

    def add_writer(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._watch(self._writers, fd, callback, args)

    def remove_writer(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._unwatch(self._writers, fd)

    # ------------------------------------------------------------- signals

    def _make_self_pipe(self):
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._engine.recv(self._ssock.fileno(), self._on_signal_bytes, multishot=True)

    def _close_self_pipe(self):
        if self._ssock is not None:
            self._ssock.close()
            self._csock.close()
            self._ssock = self._csock = None

    def _on_signal_bytes(self, res, more, data):
        if res > 0:
            for signum in data:
                self._handle_signal(signum)
        elif not more and self._ssock is not None and not self.is_closed():
            # EOF or error on our own socketpair cannot normally happen
            self.call_exception_handler({"message": f"signal wakeup socket failed ({res})"})

    def _handle_signal(self, sig):
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self._add_callback_signalsafe(handle)

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig, callback, *args):
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if self._ssock is None:
            self._make_self_pipe()
        try:
            # raises ValueError outside the main thread
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        handle = events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    asyncio.log.logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                asyncio.log.logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True


_acceptor_setup(Loop)  # the Acceptor's records in C for this class (decision 867)
