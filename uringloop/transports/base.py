"""What the transports share: the stock fatal-error report, and for the socket
transports (stream, datagram) the whole close sequence.

Every transport here follows a stock transport of the running Python
(``selector_events._SelectorTransport`` for sockets, ``unix_events``' pipe
transports for pipes), and those agree on the parts gathered below. What a
family does differently stays in its module, behind the small hooks named
here (``_force_close``, ``_sync``, ``_drop_queue``, ``_detach_fd``,
``_forget``, ``_write_busy``, ``_process``).

The socket transports' close (decision 3 of the architecture): the fd goes
through the engine's ``close_fd`` (cancel every op on it, wait for their final
records, close), so a reused fd number never meets a stale op and no buffer
goes while the kernel may write it. ``connection_lost`` does not wait for
that: it runs when the stock loop would run it (decision 509). The close(2)
is held until ``_call_connection_lost`` closes the socket, where stock's
does (decisions 873, 884).
"""

from __future__ import annotations

import collections
import errno
import os
import warnings
from asyncio import trsock
from asyncio.log import logger

from .. import _sched

ECANCELED = -errno.ECANCELED


def os_error(res: int) -> OSError:
    # OSError(errno, ...) picks the subclass itself: ECONNRESET gives
    # ConnectionResetError, EPIPE BrokenPipeError, as the socket module raises
    return OSError(-res, os.strerror(-res))


# ignore(res, more, data): the completion callback of an op whose records no
# one needs (close_fd's, shutdown's); in C, no Python frame per close (622)
ignore = _sched.ignore


# Accepted connections keep their local address and their peer's host as
# shared objects: a server's connections mostly have one sockname (146 bytes
# a tuple) and often few peer hosts (58 bytes a string), which an idle
# connection would otherwise keep a copy of. Tuples and strings are
# immutable, so sharing equal ones changes nothing but `is`. Bounded: the
# table starts over past _SHARED_MAX values (a server seeing many hosts).
_shared: dict = {}
_SHARED_MAX = 256


def _share(value):
    got = _shared.get(value)
    if got is None:
        if len(_shared) >= _SHARED_MAX:
            _shared.clear()
        _shared[value] = got = value
    return got


class TransportBase:
    """Every transport of ours (mixed in before the asyncio base classes)."""

    __slots__ = ()

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing

    @staticmethod
    def _quiet(exc):
        """An error only logged in debug mode, not reported: the stock rule."""
        return isinstance(exc, OSError)

    def _fatal_error(self, exc, message="Fatal error on transport"):
        if self._quiet(exc):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)


class SocketTransportBase(TransportBase):
    """The stream and datagram socket transports: reading state, held
    records, the close sequence. Hooks: ``_sync()`` (recompute the C half's
    fast-path flags), ``_process(*item)`` (hand one held record over),
    ``_drop_queue()`` (an abort drops what waits to be sent), ``_detach_fd()``
    (the fd number the engine closes), ``_forget()`` (more to clear after
    connection_lost), ``_write_busy()`` (for repr)."""

    __slots__ = ()

    _close_ud = 0  # _close_fd's held close, until released (decision 884)

    def _init_socket(self, loop, sock, share=False):
        """The stock transport's extra info, and the socket. Asked for when
        the transport is made, as stock (a peer that resets the connection
        makes getpeername() fail later); with share (an accepted connection)
        the values are shared with the server's other connections (_share)."""
        extra = self._extra
        try:
            sockname = sock.getsockname()
            if share:
                sockname = _share(sockname)
        except OSError:
            sockname = None
        if extra and "peername" in extra:
            peername = extra["peername"]
        else:
            try:
                peername = sock.getpeername()
                if share and type(peername) is tuple and peername:
                    host = _share(peername[0])
                    if host is not peername[0]:
                        peername = (host, *peername[1:])
            except OSError:
                peername = None
        self._keep_names(sock, sockname, peername)
        self._sock = sock
        self._engine = loop._engine

    def _keep_names(self, sock, sockname, peername):
        """The stock extra info, in the extra dict, and the fd number (the
        stream transport keeps them in slots and in its C core instead)."""
        self._sock_fd = sock.fileno()
        extra = self._extra
        extra["socket"] = trsock.TransportSocket(sock)
        extra["sockname"] = sockname
        extra["peername"] = peername

    def _has_sock(self):
        """Not closed yet (connection_lost has not run)."""
        return self._sock is not None

    def _sock_closed(self):
        """The socket object was closed behind the transport's back."""
        return self._sock.fileno() < 0

    def __repr__(self):
        info = [self.__class__.__name__]
        if not self._has_sock():
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._loop is not None and not self._loop.is_closed():
            reading = self._recv_ud is not None and not self._paused and not self._closing
            info.append("read=polling" if reading else "read=idle")
            state = "polling" if self._write_busy() else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        if self._has_sock():
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
            if self._close_ud:
                # closed, collected before its _call_connection_lost ran:
                # the held close goes now (decision 884)
                self._release_close()
            self._unclosed()

    def _unclosed(self):
        """__del__ of a transport never closed: more to let go of."""

    # ------------------------------------------------------------- reading

    def is_reading(self):
        return not self._closing and not self._paused

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True
        self._sync()
        if self._recv_ud is not None:
            self._engine.cancel(self._recv_ud)  # its late records get held
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._sync()
        if self._held:
            self._schedule_drain()
        else:
            self._start_reading()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _hold(self, item):
        """A record that must wait (paused, or callbacks already in _ready:
        the stock loop queues its reader callback behind them): in order."""
        held = self._held
        if held is None:
            held = self._held = collections.deque()
            self._sync()
        held.append(item)
        if not self._paused:
            self._schedule_drain()

    def _schedule_drain(self):
        if not self._draining:
            self._draining = True
            h = self._loop.call_soon(self._drain_held, context=self._context)
            # before timers collected ahead of this batch (decision 414)
            self._loop._sched_io_place(h, False)

    def _drain_held(self):
        self._draining = False
        held = self._held
        try:
            while held and self.is_reading():
                self._process(*held.popleft())
        finally:
            if not held:
                self._held = None
                if not self._closing:
                    # (closing: the fast paths are off already and nothing
                    # is read; decision 600)
                    self._sync()
                    self._start_reading()
            elif self.is_reading():
                # SystemExit or KeyboardInterrupt went through a protocol
                # callback: the rest for the loop's next run (decision 405)
                self._schedule_drain()

    def _stop_reading(self):
        if self._recv_ud is not None and not self._engine.closed:
            self._engine.cancel(self._recv_ud)

    # ------------------------------------------------------------- closing

    def abort(self):
        self._force_close(None)

    def _force_close(self, exc):
        if self._conn_lost:
            return
        self._drop_queue()
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._sync()
        self._close_fd(exc)

    def _close_fd(self, exc, reset_if_data=False, queue_lost=True):
        """The fd goes to the engine's close (cancel every op on it, wait for
        their final records, close(2)), detached from the socket object, so
        nothing of ours uses it again. connection_lost(exc) is queued now, as
        the stock loop queues it, and does not wait for that close (decision
        509): a callback the protocol queues after this runs after
        connection_lost, as stock. The fd is closed by then unless a
        receive's cancel was still to end in the next engine run (510).
        queue_lost False: the caller calls connection_lost itself (533)."""
        if self._fd_closing:
            return
        self._fd_closing = True
        self._sync()
        if queue_lost:
            self._loop.call_soon(self._call_connection_lost, exc, context=self._context)
        if self._engine.closed or self._sock_closed():
            self._sock.close()
            return None
        # its user_data; reset_if_data: engine.close_fd's (decision 497);
        # the close(2) held until _call_connection_lost closes the socket,
        # as stock's (decision 884; the stream transports', 873)
        ud = self._engine.close_fd(self._detach_fd(), ignore, reset_if_data, True)
        self._close_ud = ud
        return ud

    def _release_close(self):
        """The held close of the fd (_close_fd's) may close(2) now, or when
        its ops end (engine.close_release; a closed engine closed it)."""
        ud, self._close_ud = self._close_ud, 0
        self._engine.close_release(ud, self._sock_fd)

    def _detach_fd(self):
        return self._sock.detach()

    def _call_connection_lost(self, exc):
        if not self._has_sock():
            return
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
            if self._close_ud:
                self._release_close()
            self._sock = None
            self._protocol = None
            self._loop = None
            self._forget()

    def _forget(self):
        """connection_lost has run: more to let go of."""
