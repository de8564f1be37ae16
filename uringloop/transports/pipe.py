"""Pipe transports (connect_read_pipe / connect_write_pipe, subprocess pipes)
on the engine.

They follow ``unix_events._UnixReadPipeTransport`` and
``_UnixWritePipeTransport`` of the running Python (the same checks, messages,
error paths and calls through ``call_soon``); only the I/O differs:

* Reading is one level-triggered engine ``poll`` while reading; at each of
  its records the read's C core (a ``_sched.Stream``) makes one read(2) of
  up to 64 KiB straight into the bytes that ``data_received`` gets (decision
  365). ``pause_reading`` leaves it armed and holds what it reads, up to
  ``max_size`` bytes (what the stock transport may read at once past the
  pause), and cancels it only beyond that: a consumer that drains at once (a
  StreamReader) then pauses and resumes at no engine cost. Everything held
  goes out, in order, before newer bytes, after ``resume_reading``.
* Writing is stock's (decision 1027): ``write()`` with nothing queued
  writes at once; what the kernel does not take is queued and an engine
  POLLOUT poll stands for stock's writer. At its record the writer callback
  runs where stock's runs (behind what ``_ready`` held at the poll) and
  writes the whole queue in one call (``os.writev`` of its pieces, 1028), so
  the bytes enter the pipe, and the sizes, pause/resume and connection_lost
  come, where and when stock's do (decision 1017's two differences).
* The write end of a pipe or socket is polled for POLLIN, as the stock
  transport adds a reader: it fires when the read end is closed.
* A child's stdout/stderr pipe that the loop made for ``PIPE`` (only those:
  ``subprocess.py`` asks, through ``_grow_when_streaming``) is enlarged to
  ``GROW_TO`` once the child has filled it ``GROW_AFTER`` times (the C core
  counts full reads), within a per-process budget ``GROW_BUDGET`` that a
  pipe gives back when it closes; refusals are ignored (decisions 580-582).
* ``connection_lost`` runs when the stock loop runs it (decision 509); the
  pipe object is closed then, once no op of ours on its fd is live (the
  engine's ``settle_fd`` ends the cancels still waiting to be submitted,
  decision 962), or else when the last op's final record comes (or the loop
  closes), so a reused fd number never meets a stale op. The pipe object
  owns the fd (stock closes the caller's object), so the engine's held
  close (873) is not used here (decision 886).
* The read end's close found at a poll is handled behind what ``_ready``
  held then, where stock's reader callback is queued (decisions 616, 960);
  a write's failure, in the writer callback, as stock's.
* A read's EOF or error record goes through a handle placed where the stock
  reader callback is queued, which call_soon's eof_received and
  _call_connection_lost, a turn after the poll, as stock's (decision 885).
"""

from __future__ import annotations

import collections
import contextvars
import errno
import fcntl
import functools
import os
import select
import stat
import threading
import warnings
from asyncio import constants, events, format_helpers, futures, transports
from asyncio.log import logger

from .. import _sched, engine
from .base import ECANCELED as _ECANCELED
from .base import TransportBase
from .base import os_error as _os_error

__all__ = ["ReadPipeTransport", "WritePipeTransport"]

# A child's stdout/stderr pipe made for PIPE grows to GROW_TO bytes after
# GROW_AFTER reads that found it full (decision 580); the pipes grown in this
# process add at most GROW_BUDGET bytes to the user's pipe quota (decision
# 581). _grown: what they add now (given back when each closes).
GROW_TO = 256 * 1024
GROW_AFTER = 16
GROW_BUDGET = 2 * 1024 * 1024
_grown = 0
# pieces one os.writev takes (more are joined first): the kernel's UIO_MAXIOV
_IOV_MAX = 1024
_grown_lock = threading.Lock()


def _fresh_lock() -> None:
    """A forked child: the lock anew (another thread may have held it). The
    count stays: the child's copies of the transports give theirs back."""
    global _grown_lock
    _grown_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock)


def _reserve(n: int, within: bool = True) -> bool:
    """Add n bytes to what the grown pipes take (n < 0: give back); refused
    past GROW_BUDGET unless not `within` (the kernel granted it already)."""
    global _grown
    with _grown_lock:
        if within and n > 0 and _grown + n > GROW_BUDGET:
            return False
        _grown += n
        return True


class _PipeBase(TransportBase):
    """What both directions share: repr, connection_lost and the deferred close."""

    __slots__ = ()

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        if self._pipe is not None and not self._loop.is_closed():
            info.extend(self._io_info())
        elif self._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))

    def set_protocol(self, protocol):
        self._protocol = protocol

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        # should be called by exception handler only
        super()._fatal_error(exc, message)

    def _force_close(self, exc):
        self._close(exc)

    def _ops_pending(self) -> bool:
        raise NotImplementedError

    def _call_connection_lost(self, exc):
        if self._pipe is None:
            return
        pipe = self._pipe
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._pipe = None
            self._protocol = None
            self._loop = None
            self._forget()
            if (
                self._ops_pending()
                and not self._engine.closed
                and self._engine.settle_fd(self._fileno) != 0
            ):
                # connection_lost runs when the stock loop runs it (decision
                # 509); the pipe is closed when the last op's final record
                # comes (a cancelled op included), as no op of ours may
                # outlive its fd. An op whose cancel ends now (settle_fd:
                # io_uring's cancel still unsubmitted, epoll's ended at once;
                # only its record waits for the next run) does not hold it:
                # the pipe closes here, as stock's (decision 962)
                self._pipe_closing = pipe
            else:
                self._close_pipe(pipe)

    def _close_pipe(self, pipe):
        """No op of ours is live on the fd: epoll lets go of its registration
        before the pipe closes it (the next file of the number is armed with
        one ADD, decision 989)."""
        if not self._engine.closed:
            self._engine.fd_closing(self._fileno)
        pipe.close()

    def _forget(self):
        """connection_lost has run: more to let go of."""

    def _forget_growth(self):
        """The pipe's growth (decision 580) goes back to the budget."""

    def _op_ended(self):
        """An op's final record came: the pipe that waited for it is closed."""
        pipe = self._pipe_closing
        if pipe is not None and not self._ops_pending():
            self._pipe_closing = None
            self._close_pipe(pipe)

    def _engine_closed(self):
        """The loop closed: its engine has reaped every op (their records
        never come), so a pipe that waited for them is closed now."""
        pipe, self._pipe_closing = self._pipe_closing, None
        if pipe is not None:
            pipe.close()

    def __del__(self, _warn=warnings.warn):
        self._forget_growth()
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()
        elif self._pipe_closing is not None:
            self._pipe_closing.close()  # connection_lost has run: no warning


class _ReadHooks:
    """What the read's C core (a ``_sched.Stream``, decisions 221, 365) calls
    by name: the record it does not deliver itself, and a ``data_received`` that
    raised (the stream transport's ``_fatal_error`` would close; a pipe reports
    and reads on, as the stock reader handle does)."""

    __slots__ = ("_on_recv", "_fatal_error")

    def __init__(self, transport):
        self._on_recv = transport._on_read
        self._fatal_error = transport._data_failed


class ReadPipeTransport(_PipeBase, transports.ReadTransport):
    max_size = 256 * 1024  # as stock; here: what a paused transport may hold (decision 162)
    # one read(2) per poll record (decision 365): a default pipe's capacity, and
    # a bytes below glibc's mmap threshold (128 KiB), as is a turn's bytes
    read_size = 64 * 1024
    _grew = 0  # what the pipe's growth took from the budget (decision 581)
    _end_h = None  # the EOF or error record's handle, queued as stock's reader (885)

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._protocol = protocol
        self._closing = False
        self._paused = False
        self._pipe_closing = None  # the pipe, after connection_lost, until its ops end

        mode = os.fstat(self._fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            self._pipe = None
            self._fileno = None
            self._protocol = None
            raise ValueError("Pipe transport is for pipes/sockets only.")

        os.set_blocking(self._fileno, False)
        self._engine = loop._engine
        self._ud = None  # the level poll the core reads at, until its final record
        self._held = collections.deque()  # (res, data) that came after pause_reading
        self._held_bytes = 0
        self._cancelled = False  # the read in flight was asked to stop
        self._grow_to = 0  # > 0: a child's pipe, grown at the core's GROW_AFTER-th full read
        # data_received runs in this context, as the stock reader handle's
        self._context = contextvars.copy_context()
        # The poll's owner: the C core of the stream transports (stream.c),
        # used for its read half only. It reads the pipe at each poll record
        # (rsize); the bytes go straight to protocol.data_received while
        # `rfast` says nothing unusual is going on (not paused, nothing held,
        # not closing, nothing in _ready); every other record comes to
        # _on_read: bytes read, EOF (0), a read error (-errno), a record it
        # did not read for (rsize 0), the poll's final record.
        self._core = _sched.Stream(_ReadHooks(self), loop, self._fileno, self._context)
        self._core.set_protocol(protocol, False)
        self._core.rsize = self.read_size

        self._loop.call_soon(self._protocol.connection_made, self)
        # only start reading when connection_made() has been called
        self._loop.call_soon(self._start_reading)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            self._loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _io_info(self):
        return ["polling" if self._ud is not None and self.is_reading() else "idle"]

    def _forget(self):
        self._core.set_protocol(None, False)
        self._forget_growth()

    def _grow_when_streaming(self):
        """A child's stdout/stderr pipe made for PIPE (subprocess.py): once
        GROW_AFTER reads have found it full, it is enlarged (decision 580)."""
        if self._closing or self._grow_to or self._grew or GROW_AFTER <= 0:
            return
        self._grow_to = GROW_TO
        self._core.rgrow = GROW_AFTER

    def _grow(self):
        """The child streams: its pipe grows to GROW_TO, within the budget;
        never shrunk (the child may have grown it), refusals ignored. Past
        the budget it asks again after GROW_AFTER more full reads."""
        size, self._grow_to = self._grow_to, 0
        fd = self._fileno
        try:
            old = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            return
        if old >= size:
            return
        if not _reserve(size - old):
            self._grow_to = size  # other pipes hold the budget: later, maybe
            self._core.rgrow = GROW_AFTER
            return
        try:
            new = fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:  # EPERM (the user's quota, pipe-max-size), EBUSY
            new = old
        _reserve(new - size, False)  # what was granted, not what was asked for
        self._grew = max(new - old, 0)

    def _forget_growth(self):
        grew, self._grew = self._grew, 0
        if grew:
            _reserve(-grew, False)

    def _ops_pending(self):
        return self._ud is not None

    def is_reading(self):
        return not self._paused and not self._closing

    def _sync(self):
        """The C core's fast path runs only while nothing unusual goes on."""
        self._core.rfast = not (self._paused or self._closing or self._held)

    def _start_reading(self):
        if self._ud is None and self.is_reading() and not self._held and self._end_h is None:
            self._ud = self._engine.poll(
                self._fileno, select.POLLIN, self._core, level=engine.POLL_KEPT
            )
            self._cancelled = False
        self._sync()

    def _on_read(self, res, more, data):
        if self._grow_to and not self._core.rgrow:
            # the core's GROW_AFTER-th full read; it cleared rfast to say so
            self._grow()
            self._sync()
        if not more:
            self._ud = None
        elif data is None and res > 0:
            return  # a poll record the core did not read for (rsize 0)
        elif res <= 0:
            # EOF or a read error, the core's last read: the poll (which
            # would fire on every turn from now on) ends
            if not self._cancelled:
                self._cancelled = True
                self._engine.cancel(self._ud)
        if self._closing:
            if not more:
                self._op_ended()
            return
        if not more and (res >= 0 or res == _ECANCELED):
            # the poll ended on a cancel (pause_reading's cap, EOF, an error
            # held while paused); it fired meanwhile if res >= 0. Resumed since?
            self._start_reading()
            return
        if self._paused or self._held:
            self._held.append((res, data))
            self._sync()
            if res > 0:
                self._held_bytes += res
                if (self._paused and more and not self._cancelled
                        and self._held_bytes >= self.max_size):
                    self._cancelled = True  # enough held: leave the rest in the pipe
                    self._engine.cancel(self._ud)
            return
        if res <= 0:
            # EOF or a read error: the stock reader callback (_read_ready)
            # runs from _ready, where the selector queued it, and its
            # eof_received and _call_connection_lost are call_soon'd from
            # there, a turn after the poll; from the I/O step here they
            # would run in this turn (decision 885)
            h = self._end_h = self._loop.call_soon(self._read_end, res, data, context=self._context)
            self._loop._sched_io_place(h, True)
            return
        self._process(res, data)

    def _read_end(self, res, data):
        """The EOF or error record, from the turn's _ready (as stock's reader
        callback); paused since: held for resume_reading (stock's pause
        removed its reader: it reads the EOF again when resumed)."""
        self._end_h = None
        if self._closing:
            return
        if self._paused or self._held:
            self._held.append((res, data))
            self._sync()
            return
        self._process(res, data)

    def _process(self, res, data):
        if res > 0:
            try:  # in the transport's context (the core enters it for _on_read)
                self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._data_failed(exc)
        elif res == 0:
            if self._loop.get_debug():
                logger.info("%r was closed by peer", self)
            self._closing = True
            self._sync()
            self._loop.call_soon(self._protocol.eof_received, context=self._context)
            self._loop.call_soon(self._call_connection_lost, None, context=self._context)
        else:
            self._fatal_error(_os_error(res), "Fatal read error on pipe transport")

    def _data_failed(self, exc, message=None):
        """data_received raised: the stock reader handle reports the exception
        as a callback's, and reading goes on."""
        # called inside the transport's context, which the C core entered;
        # 3.13's call_exception_handler runs the handler in the handle's
        # context, and an entered context cannot be entered again: a copy
        # (the same values) stands in for it
        ctx = contextvars.copy_context()
        # the stock report names its reader callback, _read_ready (decision 409)
        handle = events.Handle(self._read_ready, (), self._loop, ctx)
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
        context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
        self._loop.call_exception_handler(context)

    def _read_ready(self):
        """Never called: named after the stock reader callback, which the
        report of a raising data_received names (_data_failed)."""

    def _drain_held(self):
        held = self._held
        try:
            while held and self.is_reading():
                res, data = held.popleft()
                if res > 0:
                    self._held_bytes -= res
                self._process(res, data)
        except (SystemExit, KeyboardInterrupt):
            # data_received let it out: the stock loop stops, and its reader
            # reads on at the next run; the rest held (EOF included) goes
            # from there, not never (decision 408)
            self._loop.call_soon(self._drain_held, context=self._context)
            raise
        self._start_reading()

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True  # the read stays armed: see _on_read
        self._sync()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._sync()
        if self._held:
            self._loop.call_soon(self._drain_held, context=self._context)
        else:
            self._start_reading()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._core.set_protocol(protocol, False)

    def close(self):
        if not self._closing:
            self._close(None)

    @staticmethod
    def _quiet(exc):
        return isinstance(exc, OSError) and exc.errno == errno.EIO

    def _close(self, exc):
        self._closing = True
        if self._end_h is not None:  # stock's _remove_reader cancels its handle
            self._end_h.cancel()
            self._end_h = None
        self._core.rsize = 0  # what is still in the pipe stays there, as stock
        self._core.rgrow = 0
        self._grow_to = 0
        self._held.clear()
        self._held_bytes = 0
        self._sync()
        if self._ud is not None and not self._engine.closed:
            self._engine.cancel(self._ud)
        self._loop.call_soon(self._call_connection_lost, exc)


class WritePipeTransport(_PipeBase, transports._FlowControlMixin, transports.WriteTransport):
    """Stock's write path (decision 1027): what the kernel does not take
    waits for the pipe to be writable (an engine POLLOUT poll, stock's
    writer), and the writer callback, run where stock's runs (behind what
    ``_ready`` held at the poll), writes the whole buffer in one call. The
    buffer is stock's bytearray as a list of pieces, written with one
    ``os.writev`` (decision 1028): a caller's bytes are kept, not copied."""

    _peer_h = None  # the deferred "read end closed" handle (decision 616)
    _write_h = None  # the writer callback's handle, behind _ready (1027)

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra, loop)
        self._extra["pipe"] = pipe
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._protocol = protocol
        self._buffer: list = []  # pieces: bytes, or memoryviews of bytes
        self._buffer_size = 0  # their bytes (stock's len(self._buffer))
        self._conn_lost = 0  # the stock counter of writes after the end (for its warning)
        self._lost = False  # _close() ran: no write leaves any more (decision 431)
        self._closing = False  # Set when close() or write_eof() called.
        self._pipe_closing = None  # the pipe, after connection_lost, until its ops end

        mode = os.fstat(self._fileno).st_mode
        is_char = stat.S_ISCHR(mode)
        is_fifo = stat.S_ISFIFO(mode)
        is_socket = stat.S_ISSOCK(mode)
        if not (is_char or is_fifo or is_socket):
            self._pipe = None
            self._fileno = None
            self._protocol = None
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")

        os.set_blocking(self._fileno, False)
        self._engine = loop._engine
        self._writing = False  # stock's writer is registered (1027)
        self._write_ud = None  # its POLLOUT poll
        self._poll_ud = None  # the "read end closed" poll
        self._context = ctx = contextvars.copy_context()
        self._on_writable_cb = functools.partial(ctx.run, self._on_writable)
        self._on_peer_cb = functools.partial(ctx.run, self._on_peer_closed)
        self._loop.call_soon(self._protocol.connection_made, self)
        if is_socket or is_fifo:
            # only start watching when connection_made() has been called
            self._loop.call_soon(self._watch_peer)
        if waiter is not None:
            self._loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _io_info(self):
        return [
            "polling" if self._writing else "idle",
            f"bufsize={self.get_write_buffer_size()}",
        ]

    def _ops_pending(self):
        return self._write_ud is not None or self._poll_ud is not None

    def get_write_buffer_size(self):
        return self._buffer_size

    def _watch_peer(self):
        if self._pipe is not None and not self._lost and self._poll_ud is None:
            self._poll_ud = self._engine.poll(self._fileno, select.POLLIN, self._on_peer_cb)

    def _on_peer_closed(self, res, more, data):
        self._poll_ud = None
        if res == _ECANCELED or self._pipe is None:
            self._op_ended()
            return
        if self._lost or self._peer_h is not None:
            return  # (the writer's record queued the reader's place already)
        self._peer_closing()

    def _peer_closing(self):
        if self._loop._sched_ahead():
            # Decision 616: the stock reader callback (_read_ready) is queued
            # behind what _ready held before the poll, so a write() queued
            # there meets the closed pipe itself (EPIPE: BrokenPipeError), and
            # a close() there removes the reader (_stop_watching cancels this)
            self._peer_closed_behind()
            return
        self._peer_closed()

    def _peer_closed_behind(self):
        """Queue _peer_closed where the stock reader callback is queued:
        behind what _ready held at the poll (decisions 616, 960)."""
        h = self._peer_h = self._loop.call_soon(self._peer_closed, context=self._context)
        self._loop._sched_io_place(h, True)

    def _peer_closed(self):
        self._peer_h = None
        if self._lost or self._pipe is None:
            return
        # the read end was closed (the stock transport's _read_ready)
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        if self._buffer_size:
            self._close(BrokenPipeError())
        else:
            self._close()

    def write(self, data):
        assert isinstance(data, (bytes, bytearray, memoryview)), repr(data)
        if isinstance(data, bytearray):
            data = memoryview(data)
        if not data:
            return
        if self._conn_lost or self._closing:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("pipe closed by peer or os.write(pipe, data) raised exception.")
            self._conn_lost += 1
            return
        if not self._buffer_size:
            # Attempt to send it right away first (stock's). A pipe's reader
            # is often a process (or a thread) that reacts at once, and code
            # may read the other end synchronously right after write().
            try:
                n = os.write(self._fileno, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._conn_lost += 1
                self._fatal_error(exc, "Fatal write error on pipe transport")
                return
            if n == len(data):
                return
            self._add_writer()
            if n > 0:
                data = memoryview(data)[n:]
        if type(data) is memoryview and not data.c_contiguous:
            # stock's `self._buffer += data` refuses it here, at write()
            raise TypeError("can't concat memoryview to bytearray")
        # stock copies into its bytearray what the caller may change; bytes
        # (and what is left of them) are kept as they are (1028)
        if type(data) is memoryview and type(data.obj) is bytes and data.format == "B":
            # a view of our own: the caller may release theirs (a `with`
            # block's end) while the piece waits
            data = data[:]
        elif type(data) is not bytes:
            data = bytes(data)
        self._buffer.append(data)
        self._buffer_size += len(data)
        self._maybe_pause_protocol()

    def _add_writer(self):
        """Stock's _add_writer: the pipe's next writable poll runs the writer
        callback."""
        self._writing = True
        if self._write_ud is None and self._write_h is None:
            self._write_ud = self._engine.poll(self._fileno, select.POLLOUT, self._on_writable_cb)

    def _remove_writer(self):
        """Stock's _remove_writer: its handle, queued or not, never runs; the
        poll is cancelled (its record ends it)."""
        self._writing = False
        h, self._write_h = self._write_h, None
        if h is not None:
            h.cancel()
        if self._write_ud is not None and not self._engine.closed:
            self._engine.cancel(self._write_ud)

    def _on_writable(self, res, more, data):
        self._write_ud = None
        if res == _ECANCELED or self._pipe is None:
            if self._pipe is not None and self._writing and not self._lost:
                self._add_writer()  # removed, then added before this record
                return
            self._op_ended()
            return
        if self._lost or not self._writing:
            return
        if res > 0 and res & ~select.POLLOUT and self._poll_ud is not None and self._peer_h is None:
            # the read end closed: the stock selector queues the POLLIN
            # watch's callback (its reader) before its writer's in that
            # select, and the reader closes with BrokenPipeError() (and
            # removes the writer); the peer watch's own record, later in
            # this batch or the next, finds that done (decisions 409, 960)
            self._peer_closing()
            if self._lost or not self._writing:
                return
        if self._loop._sched_ahead():
            # stock's writer callback is queued behind what _ready held at
            # the poll (as the readers' of decision 414)
            h = self._write_h = self._loop.call_soon(self._write_ready, context=self._context)
            self._loop._sched_io_place(h, True)
            return
        self._write_ready()

    def _write_ready(self):
        """Stock's writer callback: one os.write of the whole buffer."""
        self._write_h = None
        if self._lost or not self._writing or not self._buffer_size:
            return
        buf = self._buffer
        try:
            if len(buf) == 1:
                n = os.write(self._fileno, buf[0])
            else:
                if len(buf) > _IOV_MAX:
                    buf[:] = [b"".join(buf)]
                n = os.writev(self._fileno, buf)
        except (BlockingIOError, InterruptedError):
            n = 0
        except (SystemExit, KeyboardInterrupt):
            self._add_writer()
            raise
        except BaseException as exc:
            buf.clear()
            self._buffer_size = 0
            self._conn_lost += 1
            # Remove writer here, _fatal_error() doesn't it
            # because _buffer is empty.
            self._remove_writer()
            self._fatal_error(exc, "Fatal write error on pipe transport")
            return
        if n == self._buffer_size:
            buf.clear()
            self._buffer_size = 0
            self._remove_writer()
            try:
                self._maybe_resume_protocol()  # May append to buffer.
            except (SystemExit, KeyboardInterrupt):
                # the loop stops, as stock's does; what was written meanwhile
                # still leaves (write() registered the writer again) and a
                # write_eof still ends (decision 433)
                if self._closing and not self._buffer_size and not self._lost:
                    self._stop_watching()
                    self._loop.call_soon(self._call_connection_lost, None)
                raise
            if self._closing:
                self._stop_watching()
                self._call_connection_lost(None)
            return
        elif n > 0:
            self._buffer_size -= n
            i = 0
            while n >= len(buf[i]):
                n -= len(buf[i])
                i += 1
            if i:
                del buf[:i]
            if n:
                buf[0] = memoryview(buf[0])[n:]
        self._add_writer()

    def _stop_watching(self):
        if self._peer_h is not None:  # stock's _remove_reader cancels its handle
            self._peer_h.cancel()
            self._peer_h = None
        if self._poll_ud is not None and not self._engine.closed:
            self._engine.cancel(self._poll_ud)

    def _forget(self):
        # close() in connection_made: the peer watch queued at __init__ ran
        # after it and armed; the pipe's close must not wait for the reader
        self._stop_watching()
        self._remove_writer()

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing:
            return
        assert self._pipe
        self._closing = True
        if not self._buffer_size:
            self._stop_watching()
            self._loop.call_soon(self._call_connection_lost, None)
        # else: the writer callback ends it when the buffer is out

    def close(self):
        if self._pipe is not None and not self._closing:
            # write_eof is all we need to close the write pipe
            self.write_eof()

    def abort(self):
        self._close(None)

    def _close(self, exc=None):
        self._closing = True
        if self._buffer_size or self._writing:
            self._remove_writer()
        self._buffer.clear()
        self._buffer_size = 0
        self._lost = True
        self._stop_watching()
        self._loop.call_soon(self._call_connection_lost, exc)
