"""Stream socket transports (TCP, Unix) and server accept, on the engine.

What the engine gives a stream transport, and how this module uses it:

* Receiving is one multishot ``recv`` into the engine's buffer pool that lives
  as long as the transport reads. Each record becomes one ``data_received``
  (or, for a BufferedProtocol, a copy into ``get_buffer()``'s buffer and
  ``buffer_updated``). ``pause_reading`` cancels the op, so the kernel keeps
  nothing armed; records that still arrive after the cancel (the cancel race)
  are held and handed over first when reading resumes, which re-arms.
* Writing never enters the kernel from ``write()``: the bytes are appended to
  a list and the transport goes on the loop's dirty list. Right before the
  loop waits (``Loop._flush_dirty``, called by the turn), everything a
  transport was given during the turn leaves as ONE ordered engine ``send``;
  at most one send is in flight per transport, what comes meanwhile waits for
  its completion and leaves as the next single send. ``write_eof`` is an
  engine ``shutdown``, which the engine orders after the queued send.
* Closing goes through the engine's ``close_fd`` (cancel every op on the fd,
  wait for their final records, close), so a reused fd number never meets a
  stale op; ``connection_lost`` runs when the stock loop runs it, without
  waiting for that close (decision 509).

Everything the protocol sees follows ``selector_events._SelectorSocketTransport``
of the running Python: the same messages, the same error paths, the same
calls through ``call_soon``. Engine callbacks run inside a context copied
when the transport was made (as the stock loop's reader handle does), so a
protocol that sets a context variable never touches the loop's own context.
"""

from __future__ import annotations

import collections
import contextvars
import errno
import functools
import operator
import os
import socket
import struct
import sys
import types
import warnings
import weakref
from asyncio import base_events, constants, futures, protocols, transports, trsock
from asyncio.log import logger

from .. import _sched
from .base import ECANCELED as _ECANCELED
from .base import SocketTransportBase, _share
from .base import ignore as _ignore
from .base import os_error as _os_error

__all__ = ["SocketTransport", "Acceptor"]

_PY312 = sys.version_info >= (3, 12)
# Server._attach()/_detach() take the transport from 3.13 on (close_clients)
_SERVER_TRACKS_TRANSPORTS = base_events.Server._attach.__code__.co_argcount == 2
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
# the stock default low-water mark (64 KiB // 4) is computed per transport:
# a new int object each time unless this one replaces it
_DEFAULT_LOW = 16 * 1024
_DEFAULT_HIGH = 64 * 1024
_ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# connections an Acceptor makes per turn; more wait, accepted, for the next
# turns (decision 314: as epoll's engine accepts 32 per op per run)
_ACCEPT_BUDGET = 64
# SocketTransport._peername while the C core keeps the peer's address
_IN_CORE = object()
# _feed_buffer's buf when the caller has no buffer from get_buffer() yet
_NO_BUFFER = object()
_INET = (socket.AF_INET, socket.AF_INET6)
_LINGER0 = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close(2) resets
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE
_stream_for_fd = _sched.stream_for_fd


def _stock_streams():
    """Hand the C core asyncio's stock StreamReaderProtocol.data_received,
    its _stream_reader property, StreamReader.feed_data and _wakeup_waiter,
    so that a stock StreamReaderProtocol's chunks go straight into its
    reader's buffer (decision 636). Only on the versions whose code was read
    (3.10-3.13: the same source), and only if they are the module's own,
    unpatched functions with the names and constants of that code."""
    if sys.version_info[:2] not in ((3, 10), (3, 11), (3, 12), (3, 13)):
        return None
    from asyncio import streams

    proto, reader = streams.StreamReaderProtocol, streams.StreamReader
    prop = proto.__dict__.get("_stream_reader")
    feed_names = {"NotImplementedError", "_buffer", "_eof", "_limit", "_paused", "_transport"}
    feed_names |= {"_wakeup_waiter", "extend", "len", "pause_reading"}
    funcs = (
        (
            proto.__dict__.get("data_received"),
            "StreamReaderProtocol.data_received",
            {"_stream_reader", "feed_data"},
            (None,),
        ),
        (
            getattr(prop, "fget", None),
            "StreamReaderProtocol._stream_reader",
            {"_stream_reader_wr"},
            (None,),
        ),
        (
            reader.__dict__.get("feed_data"),
            "StreamReader.feed_data",
            feed_names,
            (None, "feed_data after feed_eof", 2, True),
        ),
        (
            reader.__dict__.get("_wakeup_waiter"),
            "StreamReader._wakeup_waiter",
            {"_waiter", "cancelled", "set_result"},
            ("Wakeup read*() functions waiting for data or EOF.", None),
        ),
    )
    for fn, qualname, names, consts in funcs:
        code = getattr(fn, "__code__", None)
        if (
            type(fn) is not type(_stock_streams)
            or fn.__qualname__ != qualname
            or fn.__module__ != "asyncio.streams"
            or code.co_filename != streams.__file__
            or set(code.co_names) != names
            or code.co_consts != consts
        ):
            return None
    if type(prop) is not property or prop.fset is not None or prop.fdel is not None:
        return None
    if "len" in vars(streams) or "NotImplementedError" in vars(streams):
        return None
    args = (proto, reader, funcs[0][0], prop, funcs[2][0], funcs[3][0])
    _sched.stream_reader_stock(*args)
    return args


_STOCK_STREAMS = _stock_streams()


def _tp_name(obj):
    """The type name CPython's argument errors say (getargs' converterr):
    "None", a class's own name, a C type's dotted tp_name."""
    if obj is None:
        return "None"
    tp = type(obj)
    if tp.__flags__ & _HEAPTYPE or tp.__module__ == "builtins":
        return tp.__name__
    return f"{tp.__module__}.{tp.__name__}"


def _core_field(name):
    """A transport attribute that is its C core's field `name` (decision
    1002): read with no Python frame, set through the core."""

    def set_field(self, value):
        setattr(self._core, name, value)

    return property(operator.attrgetter("_core." + name), set_field)


class SocketTransport(SocketTransportBase, transports._FlowControlMixin, transports.Transport):
    """A stream socket's transport: the stock selector transport's behaviour,
    the engine's I/O."""

    # _core in a slot: write (and writelines on 3.12+) are the C core's own,
    # class attributes that find it there (core_method, below the class).
    # What every transport sets is in slots too, and the state an open
    # connection is in is the class's (below), set on a transport only when
    # it changes: an idle connection has no attribute values array (decision
    # 256). __dict__ stays for what user code sets on a transport.
    # The stock extra info (socket, sockname, peername) is in slots as well,
    # not in an extra dict (184 bytes with its keys): _extra is only the
    # dict a caller passed, or None; the socket's TransportSocket is made
    # when first asked for. The context and the kind of protocol are the
    # C core's (Stream.ctx, Stream.buffered): _context and _buffered are
    # read through it (decision 985).
    __slots__ = (
        "_core", "_sockobj", "_engine", "_protocol", "_server",
        "_closing", "_paused", "_sockname", "_peername", "_tsock",
        "__dict__", "__weakref__",
    )

    # the transport's context, the one its C core runs the protocol in
    # (no slot of its own: decision 985)
    _context = property(operator.attrgetter("_core.ctx"))
    # the protocol is a BufferedProtocol (set_protocol sets it in the core)
    _buffered = property(operator.attrgetter("_core.buffered"))

    # the state a close sets is the C core's, read and set through it: no
    # key of the instance's, so no entry in every transport's attribute
    # values array (48 -> 16 bytes a transport on 3.11/3.12, decision 1002)
    _conn_lost = _core_field("conn_lost")  # stock's count (0: open)
    _fd_closing = _core_field("fd_closing")  # close_fd submitted
    _read_done = _core_field("read_done")  # "eof" (EOF) or True (a read error) was seen
    _close_reset = _core_field("close_reset")  # close_fd's user_data: a TCP close in flight (497)

    _protocol_connected = True  # set_protocol() ran (in __init__)
    _eof = False  # write_eof() called
    _shut = False  # its shutdown submitted
    _empty_waiter = None
    _unread = False  # received bytes dropped at close (decision 463)
    _held = None  # deque of (res, data) records not yet handed over
    _draining = False  # a _drain_held is scheduled
    _resume_h = None  # the deferred resume's or a held send failure's handle (522, 530, 950)
    _send_failed = None  # a send's failure behind _ready: (res, data) (decision 950)
    _stream_sock = True  # the socket is SOCK_STREAM (an accepted one is; 745)

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    max_size = 256 * 1024  # as the stock transport; reads are pool-buffer sized

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        self._begin(loop, sock.fileno(), extra)
        if sock.type != socket.SOCK_STREAM:  # (a SOCK_SEQPACKET one: decision 745)
            self._stream_sock = False
        self._init_socket(loop, sock, server is not None)
        self._made(loop, protocol, server)
        base_events._set_nodelay(sock)
        self._started(loop, protocol, waiter)

    def _begin(self, loop, fd, extra):
        # what transports._FlowControlMixin.__init__(extra, loop) sets (the
        # same in 3.10-3.13), its default limits without its calls: 64 KiB
        # and a quarter of it (decision 600); stream.c's accepted_transport
        # has it written out (753, 811): keep the two the same
        self._loop = loop
        self._protocol_paused = False
        self._high_water = _DEFAULT_HIGH
        self._low_water = _DEFAULT_LOW
        self._extra = extra or None
        self._tsock = None
        ctx = contextvars.copy_context()
        # the hot half, in C (uringloop/_core/stream.c): the write queue
        # (c.buffer, c.buffer_size, c.sending, c.dirty), the receive and send
        # callbacks, and write() itself (the class's write is the core's);
        # also the fd number and an IPv4 peer's address (decisions 311, 312)
        # (True: its EOF record may take the C core's own path, stream_eof:
        # decision 707)
        self._core = _sched.Stream(self, loop, fd, ctx, True)

    def _made(self, loop, protocol, server):
        c = self._core
        c.high, c.low = self._high_water, self._low_water
        # epoll: write() sends at once when the transport is idle (as stock
        # and uvloop) while the turn delivers records (a protocol callback's
        # write, decision 210); a task's write waits for the turn's flush, as
        # every write on io_uring does, so the turn's responses leave
        # together (decision 398)
        c.direct = self._engine.backend == "epoll"
        self._server = server
        self._closing = False
        self._paused = False
        self.set_protocol(protocol)  # also sets the fast-path flags (_sync)
        if server is not None:
            if _SERVER_TRACKS_TRANSPORTS:
                server._attach(self)
            else:
                server._attach()
        c.register()  # the loop's transport for its fd (decision 257)

    def _started(self, loop, protocol, waiter):
        loop.call_soon(protocol.connection_made, self)
        # only start reading when connection_made() has been called
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _keep_names(self, sock, sockname, peername):
        self._sockname = sockname
        # an IPv4 peer's address and port, as getpeername() gave them (now,
        # as stock: after a reset it fails), are kept in the C core, and the
        # tuple is made when first asked for (decision 311); a peername the
        # caller passed in extra is kept as it is
        given = self._extra is not None and "peername" in self._extra
        self._peername = _IN_CORE if not given and self._core.keep_peer(peername) else peername

    @property
    def _sock_fd(self):
        """The fd number, kept in the C core as a C int: no int object per
        transport (decision 312)."""
        return self._core.fd

    def get_extra_info(self, name, default=None):
        if name == "peername":
            peername = self._peername
            if peername is _IN_CORE:
                host, port = self._core.peer
                peername = self._peername = (_share(host), port)
            return peername
        if name == "sockname":
            return self._sockname
        if name == "socket":
            tsock = self._tsock
            if tsock is None:
                tsock = self._tsock = trsock.TransportSocket(self._socket())
            elif type(tsock) is not trsock.TransportSocket:
                # the closed socket kept by _call_connection_lost
                tsock = self._tsock = trsock.TransportSocket(tsock)
            return tsock
        extra = self._extra
        return default if extra is None else extra.get(name, default)

    def _socket(self):
        """The socket object (what get_extra_info('socket') wraps)."""
        return self._sock

    # An accepted connection's socket object is the transport's alone: it
    # keeps the fd and the Acceptor's _Kind, and makes the object again
    # when something asks for it (decision 258). _sockobj: the socket, a
    # _Kind, or None once connection_lost has run.
    @property
    def _sock(self):
        s = self._sockobj
        if type(s) is _Kind:
            s = self._sockobj = socket.socket(s.family, s.type, s.proto, fileno=self._sock_fd)
        return s

    @_sock.setter
    def _sock(self, sock):
        self._sockobj = sock

    def _shed_socket(self, kind):
        """The Acceptor's: drop the socket object, keep its fd."""
        sock = self._sockobj
        if type(sock) is not _Kind and sock is not None and self._tsock is None:
            self._sockobj = kind
            sock.detach()

    def _has_sock(self):
        return self._sockobj is not None

    def _del_slow(self, _warn=warnings.warn):
        # __del__ (below the class: its common case is the C core's,
        # decision 754); base.py's, with _has_sock written out
        if self._sockobj is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
            self._unclosed()
        else:
            # a released Stream (694) that something still holds forgets
            # this transport (_core is unset only if _begin failed)
            c = getattr(self, "_core", None)
            if c is not None:
                c.unlink()

    def _call_connection_lost(self, exc):
        # base.py's, with _has_sock and _forget written out (decision 621).
        # The class's _call_connection_lost is the C core's (below the
        # class), which does these steps in C for an exact SocketTransport
        # whose socket object is a socket.socket (stream.c's
        # transport_lost_fast, decision 834), and this method otherwise: keep
        # the two the same
        s = self._sockobj
        if s is None:
            return
        if type(s) is _Kind:
            s = self._sock
        if self._tsock is None:
            # asked for after the close, the extra socket is the closed
            # socket, as stock: kept, wrapped when asked for (decision 600)
            self._tsock = s
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            # (a plain socket closed already, as a _Kind's closed one is,
            # has nothing left for close() to do)
            if type(s) is not socket.socket or not s._closed or s.fileno() >= 0:
                s.close()
            self._sockobj = None
            self._protocol = None
            self._loop = None
            # _forget, written out (its set_protocol(None, False) is the
            # lost() call below, decision 786)
            server = self._server
            if server is not None:
                if _SERVER_TRACKS_TRANSPORTS:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
            if self._empty_waiter is not None and not self._empty_waiter.done():
                self._empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))
            # the protocol's methods unbound, and the Stream stops holding
            # this transport unless something else holds the Stream (an op in
            # flight, ...): no reference cycle left for the garbage collector
            # (decisions 694, 786)
            self._core.lost()

    @property
    def _recv_ud(self):
        """The multishot recv's user_data, until its final record (None): kept
        in the C core as a number, not as an int object (decision 256)."""
        return self._core.recv_ud or None

    @_recv_ud.setter
    def _recv_ud(self, ud):
        self._core.recv_ud = ud or 0

    def _write_busy(self):
        return self._core.sending

    def _unclosed(self):
        if _SERVER_TRACKS_TRANSPORTS and self._server is not None:
            self._server._detach(self)

    # ------------------------------------------------------------ protocol

    def set_protocol(self, protocol):
        # the kind of protocol decides, once, how received bytes are handed over
        buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._protocol = protocol
        self._core.set_protocol(protocol, buffered)
        self._sync()

    def _sync(self):
        """The C core's fast paths run only while nothing unusual is going on;
        called after every change of the state they depend on."""
        c = self._core  # (_conn_lost, _fd_closing, _read_done: c's, 1002)
        c.rfast = not (self._closing or self._paused or self._held is not None or c.conn_lost)
        c.wfast = not (
            self._eof or self._empty_waiter is not None or c.conn_lost
            or c.fd_closing or self._closing or c.read_done
        )

    def _mark_dirty(self):
        c = self._core
        if not c.dirty:
            c.dirty = True
            self._loop._dirty.append(c)

    def _set_write_buffer_limits(self, high=None, low=None):
        super()._set_write_buffer_limits(high, low)
        if self._low_water == _DEFAULT_LOW:
            self._low_water = _DEFAULT_LOW  # one int object for every transport
        # (not self.__dict__: asking for it makes one, 64 bytes a transport)
        c = getattr(self, "_core", None)
        if c is not None:
            c.high, c.low = self._high_water, self._low_water

    def set_write_buffer_limits(self, high=None, low=None):
        c = getattr(self, "_core", None)
        if c is not None and c.hold:
            c.unhold()  # sent by the stock write(), under the old marks (646)
        super().set_write_buffer_limits(high, low)

    def _maybe_pause_protocol(self):
        super()._maybe_pause_protocol()
        self._core.wpaused = self._protocol_paused

    def _maybe_resume_protocol(self):
        super()._maybe_resume_protocol()
        self._core.wpaused = self._protocol_paused

    def can_write_eof(self):
        return True

    # ------------------------------------------------------------- reading

    def _start_reading(self):
        """Arm the multishot receive, unless one is still alive (a cancelled
        one re-arms from its final record) or there is nothing left to read."""
        c = self._core  # (its recv_ud and fd: the properties' own, read here)
        if (
            not c.recv_ud
            and not self._read_done
            and not self._closing
            and not self._paused
            and not self._held
        ):
            # a Protocol gets one turn's records joined (coalesce: one
            # data_received per turn); a BufferedProtocol's bytes go from the
            # pool buffer straight into its own: each record comes as a
            # short-lived memoryview
            # (stream: the socket is SOCK_STREAM, so epoll may take a short
            # read at submission as the socket read empty: decision 745)
            buffered = self._buffered
            c.recv_ud = (
                self._engine.recv(c.fd, c, True, 0, not buffered, buffered, self._stream_sock)
                or 0
            )

    def resume_reading(self):
        # A transport kept open after EOF (eof_received returned true) and
        # paused then resumed: the stock transport adds its reader again, the
        # socket reads EOF again and eof_received is called again (decision
        # 461); so the receive is armed again and brings that EOF.
        if self._read_done == "eof" and self._paused and not self._closing:
            self._read_done = False
        super().resume_reading()

    def _on_recv(self, res, more, data):
        """The multishot receive's records that the C core (stream.c) does not
        hand over itself: the final one, errors, EOF, and any while the
        transport is paused, closing, holding records or has callbacks ahead
        of it in _ready."""
        if not more:
            self._core.recv_ud = 0  # (the _recv_ud property's None)
        if self._closing:
            # (a final record with no bytes: stream.c's stream_closing_final
            # does these two steps itself, decision 833: keep them the same)
            if res > 0:
                self._dropped()  # bytes the stock loop would have left unread
            return  # the stock transport stops reading at close()
        if res == _ECANCELED and not more:
            self._start_reading()  # pause_reading cancelled it; resumed since?
            return
        # (the transport's first record of a batch waits only for what
        # _ready held at the poll: stock queues every reader callback of a
        # poll before it runs any; decisions 454, 824)
        wait = self._held is not None or self._paused or self._loop._sched_ahead(self._core)
        if data is not None and type(data) is not bytes and (not self._buffered or wait):
            data = data.tobytes()  # a pool view lives only during this call
        if wait:
            # The stock loop queues a reader callback behind what is already
            # in _ready; so do we when anything is (a task woken this turn, a
            # connection_made not yet run; not the timers the turn collected
            # before its records, decision 414): the record waits in order.
            self._hold((res, data))
            return
        try:
            if res == 0:  # EOF: _process's branch, without its call
                self._read_done = "eof"  # truthy; resume_reading reads it again
                self._on_eof()
            else:
                self._process(res, data)
        finally:
            if not more and not self._closing:
                # the op ended on data (emulated multishot); also when
                # SystemExit or KeyboardInterrupt went through (decision 405)
                self._start_reading()

    def _process(self, res, data):
        if res > 0:
            if self._conn_lost:
                return
            if self._buffered:
                self._feed_buffer(data)
                return
            try:
                self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
        elif res == 0:
            self._read_done = "eof"  # truthy; resume_reading reads it again
            self._on_eof()
        else:
            self._read_done = True
            self._fatal_error(_os_error(res), "Fatal read error on socket transport")

    def _feed_buffer(self, data, pos=0, buf=_NO_BUFFER):
        """BufferedProtocol: the received bytes go into get_buffer()'s buffer,
        as many buffers as it takes. What is left when the protocol pauses
        reading is held for resume_reading. The C core calls this to go on
        after it filled a first buffer (pos > 0) or with a first buffer it
        did not take (buf: read-only, empty, not contiguous)."""
        n = len(data)
        if pos and self._feeding_stops(data, pos, n):
            return
        c = self._core
        while pos < n:
            try:
                if buf is _NO_BUFFER:  # (None is what get_buffer() may have returned)
                    buf = self._protocol.get_buffer(n - pos)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                self._keep_rest(data, pos, n)
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            try:
                # a buffer recv_into() would refuse (not a buffer, read-only,
                # not contiguous): the stock transport's read fails, with
                # recv_into's message (decision 406)
                try:
                    view = memoryview(buf).cast("B")
                except (TypeError, ValueError, BufferError):
                    view = None
                if view is None or view.readonly:
                    raise TypeError(
                        "recv_into() argument 1 must be read-write bytes-like object, "
                        f"not {_tp_name(buf)}"
                    )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on socket transport")
                return
            buf = _NO_BUFFER
            k = min(len(view), n - pos)
            view[:k] = data if (pos == 0 and k == n) else memoryview(data)[pos:pos + k]
            view.release()  # the temporary slice above is already gone
            pos += k
            # a close in buffer_updated drops the rest: _close_fd resets
            # itself, as the engine's close may complete at once (634)
            c.feed_rest = pos < n
            try:
                self._protocol.buffer_updated(k)
            except (SystemExit, KeyboardInterrupt):
                c.feed_rest = False
                self._keep_rest(data, pos, n)
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                c.feed_rest = False
                return
            c.feed_rest = False
            if self._feeding_stops(data, pos, n):
                return

    def _keep_rest(self, data, pos, n):
        """SystemExit or KeyboardInterrupt went through get_buffer() or
        buffer_updated(): the bytes not handed over wait, first in line, for
        the loop's next run, as the stock loop's socket keeps what its read
        did not take (decision 405)."""
        if pos < n and not self._closing and not self._conn_lost:
            self._hold_first(data, pos, n)

    def _hold_first(self, data, pos, n):
        """data[pos:n], the rest of a record the protocol stopped taking,
        waits first in line (handed over from the next turn unless paused)."""
        rest = data[pos:]
        self._hold_record(n - pos, rest if type(rest) is bytes else rest.tobytes())

    def _hold_record(self, res, data):
        """The record (res, data) waits first in line."""
        held = self._held
        if held is None:
            held = self._held = collections.deque()
            self._sync()
        held.appendleft((res, data))
        if not self._paused:
            self._schedule_drain()

    def _feeding_stops(self, data, pos, n):
        if pos < n and (self._conn_lost or self._closing):
            self._dropped()
            return True
        if pos < n and not self._buffered:
            # set_protocol() to a Protocol inside buffer_updated: the rest is
            # its data_received's, as the stock loop's next read would be; first
            # in line (decision 406)
            if self._held is not None:
                self._hold_first(data, pos, n)
            else:
                rest = data[pos:]
                self._on_recv(n - pos, True, rest if type(rest) is bytes else rest.tobytes())
            return True
        if pos < n and self._paused:
            self._hold_first(data, pos, n)
            return True
        return False

    def _on_eof(self):
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        self._sync()  # _read_done: writes from here on leave at once (903)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            # the stock reader stays registered: the socket, still at EOF,
            # calls eof_received again on the next run (decision 457)
            if not self._closing and not self._conn_lost:
                self._hold_record(0, None)
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()
        # else: the receive op has ended; the protocol may still write

    def _eof_done(self, keep_open, exc):
        """The rest of _on_eof and of _on_recv's finally after the C core
        called eof_received() for an EOF record (stream.c stream_eof,
        decision 707): its answer when not None or False, or the exception
        it raised (keep_open None then)."""
        try:
            if exc is not None:
                if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    # as _on_eof: the EOF waits for the next run (457)
                    if not self._closing and not self._conn_lost:
                        self._hold_record(0, None)
                    raise exc
                self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            elif not keep_open:
                self.close()
        finally:
            if not self._closing:
                self._start_reading()

    # ------------------------------------------------------------- writing

    def get_write_buffer_size(self):
        c = self._core
        if c.hold:
            c.unhold()  # what the stock write() sent already (decision 646)
        return c.buffer_size

    def _write_slow(self, data):
        """write() when the C core's fast path does not apply (at EOF, during
        sendfile, once the connection is lost or closing, a type it does not
        take): the stock checks, then the same queue."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._core.hold:
            self._core.unhold()  # held writes leave first (decision 646)
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            self._sync()
            return
        if type(data) is not bytes:
            # the send leaves later: a mutable buffer is copied now, as the
            # stock loop of 3.10/3.11 copies into its bytearray
            data = bytes(data)
        c = self._core
        c.buffer.append(data)
        c.buffer_size += len(data)
        self._mark_dirty()
        if c.sending:
            self._maybe_pause_protocol()
        elif c.buffer_size > self._high_water or (self._read_done and not self._closing):
            # past the mark; or after the peer's EOF, where the stock
            # write()'s own send is what meets a peer gone since (EPIPE in
            # the second write, not one send of both at the flush: 903;
            # closing, stock's buffer is not empty: it only queues)
            self._send_now()

    def _send_now(self, pause=True):
        """More than the high-water mark is queued and no send is in flight:
        one non-blocking send() now, as the stock transport does on every
        write, and pause the protocol only if the kernel left more than the
        mark. Two reasons not to wait for the end of the turn here: the stock
        loop never pauses for bytes the kernel takes at once (sslproto asserts
        on a resume it did not expect), and a protocol that writes in a loop
        whose drain() does not yield would never let the turn end."""
        c = self._core
        buf = c.buffer
        data = buf[0] if len(buf) == 1 and type(buf[0]) is bytes else b"".join(buf)
        try:
            if type(self._sockobj) is _Kind:
                # an accepted connection's socket object never made (258):
                # write(2) on its fd is send(2) with no flags, what the
                # object's send() would make, without making the object
                # (socket(), its family and type enums) for one call: on
                # io_uring an HTTP server's write-then-close made it for
                # every connection (decision 816)
                n = os.write(c.fd, data)
            else:
                n = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        c.buffer = [data[n:]] if n < len(data) else []
        c.buffer_size -= n
        if pause:
            self._send_now_tail()

    def _send_now_tail(self):
        """After a direct send (here or in the C core's write): pause the
        protocol only if the kernel left more than the mark."""
        self._maybe_pause_protocol()
        if self._protocol_paused and self._core.buffer_size <= self._low_water:
            # paused earlier, drained now: resume as the stock writer
            # callback would, from the loop, not from inside write()
            self._loop.call_soon(self._resume_if_drained, context=self._context)

    def _resume_behind(self, after=False):
        """A send's completion drained the buffer to the low-water mark while
        _ready held callbacks from before the poll: the stock writer callback
        (which calls resume_writing) is queued behind them, so the resume is
        too (decision 522; the C core's Stream.sent calls this). Like stock's
        writer handle, abort() and fatal errors cancel it; close() does not
        (decision 530). after: _after_sent follows the resume (531)."""
        h = self._loop.call_soon(self._resume_deferred, after, context=self._context)
        # where stock's poll queues its writer: before the timers collected
        # early (414) and what this batch's callbacks scheduled (535)
        self._loop._sched_io_place(h, True)
        self._resume_h = h

    def _resume_deferred(self, after):
        self._resume_h = None
        c = self._core
        if c.sending:
            return  # its completion resumes, and closes if closing
        self._maybe_resume_protocol()  # may write more
        if self._conn_lost or not (after or self._closing):
            return
        if self._closing and c.buffer:
            # a close() came before this ran (decision 533): stock's writer
            # had emptied its buffer, so the write() from resume_writing sent
            # at once; what the kernel takes leaves now here too
            self._send_now(pause=False)
            if self._conn_lost:
                return  # the send failed: _fatal_error closed
        self._after_sent(True)

    def _resume_if_drained(self):
        if not self._core.sending and not self._conn_lost:
            self._maybe_resume_protocol()

    if _PY312:

        def _writelines_slow(self, list_of_data):
            """The stock writelines' checks, then the same queue."""
            if self._eof:
                raise RuntimeError("Cannot call writelines() after write_eof()")
            if self._empty_waiter is not None:
                raise RuntimeError("unable to writelines; sendfile is in progress")
            if not list_of_data:
                return
            if self._core.hold:
                self._core.unhold()  # held writes leave first (decision 646)
            chunks = [memoryview(data).tobytes() for data in list_of_data]
            if self._conn_lost:
                return  # the stock transport drops them silently here
            c = self._core
            for chunk in chunks:
                if chunk:
                    c.buffer.append(chunk)
                    c.buffer_size += len(chunk)
            if c.buffer:
                self._mark_dirty()
            if c.sending:
                self._maybe_pause_protocol()  # as in write()
            elif c.buffer_size > self._high_water or (
                self._read_done and c.buffer and not self._closing
            ):
                self._send_now()  # (after the peer's EOF: as in write(), 903)

    def write_eof(self):
        if self._closing or self._eof:
            return
        c = self._core
        if c.hold:
            c.unhold()  # the stock write() sent them before (decision 646)
        self._eof = True
        self._sync()
        if not c.buffer and not c.sending and self._empty_waiter is None:
            # Nothing queued or in flight: the stock transport shuts down at
            # once, and its OSError (ENOTCONN once the peer has reset the
            # connection) goes to the caller (decision 462).
            self._shut = True
            self._sock.shutdown(socket.SHUT_WR)
            return
        self._mark_dirty()  # the shutdown leaves with (after) the queued data

    def _flush(self):
        """Called by the loop right before it waits: what was written this
        turn leaves as one send (unless one is in flight: then it leaves as
        the next one, when that completes). The C core does this (its _flush
        is what the loop's dirty list holds); this serves a call through the
        transport."""
        self._core._flush()

    def _flush_slow(self):
        """The C core's _flush when its fast path does not apply."""
        c = self._core
        c.dirty = False
        if self._conn_lost or self._fd_closing:
            return
        buf = c.buffer
        if buf and not c.sending:
            c.buffer = []
            c.sends += 1
            if len(buf) == 1:
                c.sending = len(buf[0])
                self._engine.send(self._sock_fd, buf[0], c.sent)
            else:  # one vectored send, no join
                c.sending = sum(map(len, buf))
                self._engine.sendv(self._sock_fd, buf, c.sent)
            buf = c.buffer
        if self._eof and not self._shut and not buf:
            self._shut = True
            self._engine.shutdown(self._sock_fd, socket.SHUT_WR, _ignore)

    def _on_sent(self, res, more, data):
        """A send's completion that the C core (Stream.sent) does not handle
        itself: errors, and any while closing, at EOF or during sendfile."""
        c = self._core
        sent, c.sending = c.sending, 0
        if self._conn_lost:
            return  # aborted: close_fd cancelled it
        if res < 0 or data is not None:
            if self._loop._sched_ahead():
                # stock's writer callback, whose send fails, runs behind what
                # _ready held at the poll (unix 993067: a call_soon'd
                # is_closing() first, False); so does the failure here. The
                # send stays "in flight" until then: write() only queues, as
                # behind stock's unsent buffer, close() waits for it, abort()
                # cancels it as stock's _remove_writer does (decision 950)
                c.sending = sent
                self._send_failed = (res, data)
                h = self._loop.call_soon(self._send_failed_now, context=self._context)
                self._loop._sched_io_place(h, True)  # where stock's poll queues its writer
                self._resume_h = h
            else:
                self._send_error(res, data)
            return
        c.buffer_size -= sent
        if (
            self._closing or (self._protocol_paused and c.buffer_size <= self._low_water)
        ) and self._loop._sched_ahead():
            # stock's writer, which resumes and (closing) calls
            # connection_lost, runs behind _ready (531, 535)
            self._resume_behind(True)
            return
        self._maybe_resume_protocol()  # may write more
        self._after_sent()

    def _send_error(self, res, data):
        # an error, nothing sent; or (data = -errno) one after res bytes
        # went out: the stock transport reports the error either way
        exc = _os_error(res if res < 0 else (data or -errno.EIO))
        c = self._core
        c.buffer = []
        c.buffer_size = 0
        self._fatal_error(exc, "Fatal write error on socket transport")
        if self._empty_waiter is not None and not self._empty_waiter.done():
            self._empty_waiter.set_exception(exc)

    def _send_failed_now(self):
        """The failure _on_sent held behind _ready (decision 950)."""
        self._resume_h = None
        failed, self._send_failed = self._send_failed, None
        if failed is not None:
            self._core.sending = 0
            if not self._conn_lost:
                self._send_error(*failed)

    def _after_sent(self, lost_now=False):
        """lost_now: in the place of stock's writer callback, which calls
        connection_lost itself once closing and empty (decision 533); else
        (a completion, in the I/O step) connection_lost's handle goes where
        stock's poll queues that writer: ahead of the timers collected
        early and of what the batch's callbacks scheduled, so inside a
        stopped turn too (535)."""
        if self._core.buffer:
            self._mark_dirty()
            return
        if self._empty_waiter is not None and not self._empty_waiter.done():
            self._empty_waiter.set_result(None)
        if self._closing and not self._conn_lost:  # (resume_writing may have closed)
            self._conn_lost += 1
            self._sync()
            self._close_fd(None, False)
            if lost_now:
                self._call_connection_lost(None)
            else:
                loop = self._loop
                h = loop.call_soon(self._call_connection_lost, None, context=self._context)
                loop._sched_io_place(h, True)

    # ------------------------------------------------------------- closing

    def close(self):
        if self._closing:
            return
        c = self._core
        if c.hold:
            c.unhold()  # the stock write() sent them before (decision 646)
        if self._closing:
            return  # the send failed: _fatal_error closed
        self._closing = True
        sendfiling = self._loop._sendfiling
        if sendfiling and c.fd in sendfiling and not c.buffer:
            # a loop.sendfile on this transport: stock's close() removes its
            # writer, and the sendfile waits on (decision 892)
            sendfiling[c.fd](True)
        ud = c.recv_ud  # _stop_reading, written out (decision 621)
        if ud and not self._engine.closed:
            self._engine.cancel(ud)
        # c.idle: 0 bytes queued or a send in flight, 1 neither, 2 neither
        # and nothing fed in part (feed_rest) or held (held): one read of
        # the Stream for the four (decision 790)
        idle = c.idle
        if idle and self._resume_h is None:
            # nothing to send first: the fd closes now, and _close_fd's
            # _sync covers _closing and _conn_lost (decision 600)
            self._conn_lost += 1
            kind = self._sockobj
            engine = self._engine
            if (
                idle == 2
                and type(kind) is _Kind
                and not self._fd_closing
                and not self._unread
                and self._held is None
                and engine._e is not None
            ):
                # _close_fd's case of an accepted connection whose socket
                # object was never made, with nothing unread (no reset),
                # written out (decision 708): closing for good, the socket
                # extra a closed socket of its kind, the fd closed through
                # the engine. The class's close() is the C core's, which does
                # this whole case in C, stream_close_fast (decisions 812,
                # 820), and this method only where it does not apply: keep
                # the two the same
                self._fd_closing = True
                c.rfast = c.wfast = False
                self._loop.call_soon(self._call_connection_lost, None, context=self._context)
                self._sockobj = kind.closed
                inet = kind.family in _INET
                # the close(2) held until _call_connection_lost (decision 873)
                ud = c.close_ud = engine.close_fd(c.fd, _ignore, inet, True)
                if inet and ud:
                    self._close_reset = ud
                return
            self._close_fd(None)
            return
        self._sync()
        if c.buffer and not c.sending and not self._protocol_paused:
            # what the kernel takes leaves now, as the stock write() would
            # already have sent it: a closing transport does not wait a turn
            # for its last bytes (sslproto's close_notify, for one). Not while
            # the protocol is paused: it may still hold bytes (sslproto's BIO)
            # that it writes on resume_writing, which _on_sent will call.
            # (stream_close_fast does this in C for an accepted connection,
            # decision 820: keep the two the same)
            self._send_now(pause=False)
            if self._conn_lost:
                return  # the send failed: _fatal_error closed
        if not c.buffer and not c.sending and self._resume_h is None:
            self._conn_lost += 1
            self._sync()
            self._close_fd(None)
        # else: the queued data leaves first (_on_sent closes), or the
        # deferred resume runs first and closes, as stock's writer (533)

    def _fatal_error(self, exc, message="Fatal error on transport"):
        # A TCP reset that our receive took (its record held behind _ready,
        # not handed over yet) consumed the socket's pending error, so a send
        # made after it gets EPIPE; the stock write() sends before its reader
        # callback runs and gets the reset itself. Report what stock does
        # (decision 478). Every write failure (write(), _on_sent, the C
        # flush) comes through here.
        if (
            type(exc) is BrokenPipeError
            and message == "Fatal write error on socket transport"
            and getattr(self._sockobj, "family", None) in _INET
            and self._held_reset()
        ):
            exc = _os_error(-errno.ECONNRESET)
        super()._fatal_error(exc, message)

    def _held_reset(self):
        if any(rec[0] == -errno.ECONNRESET for rec in self._held_records()):
            return True
        # or the receive's record is made and not reaped yet: a ring without
        # DEFER_TASKRUN runs the receive's task work (which takes the reset)
        # as any syscall of this thread returns, the peer's close(2) in a
        # callback included (decision 839)
        if self._fd_closing:
            return False  # (fd may name another file now)
        return self._engine.ended_with(self._core.fd, -errno.ECONNRESET)

    def _force_close(self, exc):
        """abort(), fatal errors, and 3.13's sslproto ``_abort``: the stock
        write() has already sent what the kernel takes of the bytes queued
        since the last send, so they leave now (one non-blocking send, its
        error ignored: the transport closes anyway); only the rest is
        dropped (decision 444; aiohttp's write-then-abort)."""
        if self._resume_h is not None:  # stock's _remove_writer cancels its writer
            self._resume_h.cancel()
            self._resume_h = None
            if self._send_failed is not None:  # (decision 950) no send is in flight
                self._send_failed = None
                self._core.sending = 0
        c = self._core
        if c.hold:
            c.unhold()  # the stock write() sent them before (decision 646)
        if c.buffer and not c.sending and not self._conn_lost and not self._protocol_paused:
            buf = c.buffer
            try:
                self._sock.send(buf[0] if len(buf) == 1 else b"".join(buf))
            except OSError:
                pass
        super()._force_close(exc)

    def _close_fd(self, exc, queue_lost=True):
        # Bytes taken from the kernel but never handed to the protocol (held
        # while paused or behind _ready, or come after close()) were unread
        # in the stock loop's socket, whose close(2) then resets a TCP
        # connection: the peer gets ConnectionResetError, not EOF. SO_LINGER
        # 0 makes our close(2) do the same (decision 463).
        # Records of the receive in flight may still come, in this engine run
        # (reaped before the close) or in the one that closes the fd: their
        # bytes make the engine's close reset too (decision 497).
        # The rest is base.py's _close_fd with its hooks (_sync,
        # _sock_closed, _detach_fd) written out (decision 621).
        if self._fd_closing:
            return
        c = self._core
        sendfiling = self._loop._sendfiling
        if sendfiling and c.fd in sendfiling:
            # a loop.sendfile on this transport: its next sendfile(2) first
            # if the socket is writable, as the stock writer callback's
            # before _call_connection_lost's close (decisions 860, 890)
            sendfiling[c.fd](False)
        kind = self._sockobj
        inet = getattr(kind, "family", None) in _INET
        # (_has_unread's own quick answer first: no call when nothing is held)
        if inet and (
            c.feed_rest
            or ((self._unread or self._held is not None or c.held) and self._has_unread())
        ):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass
            inet = False  # resets already
            # decision 673: asking made an accepted connection's socket
            # object (258); it is detached below, not dropped with its fd
            kind = self._sockobj
        self._fd_closing = True
        # what _sync computes now: every caller has counted the connection
        # lost (_conn_lost), and the fd is closing
        c.rfast = c.wfast = False
        if queue_lost:
            self._loop.call_soon(self._call_connection_lost, exc, context=self._context)
        engine = self._engine
        made = type(kind) is not _Kind
        if engine.closed or (made and kind.fileno() < 0):
            self._sock.close()
            return
        if made:
            fd = kind.detach()
        else:
            # never made: after the close, the extra socket is a closed
            # socket of the same kind, as stock
            self._sockobj = kind.closed
            fd = c.fd
        # its user_data; the close(2) held until _call_connection_lost's
        # close of the socket (the core's lost(), decision 873)
        ud = c.close_ud = engine.close_fd(fd, _ignore, inet, True)
        if inet and ud:
            self._close_reset = ud  # (the fd: the core's, decision 622)

    def _dropped(self):
        """Received bytes dropped because the transport is closing: unread in
        the stock loop's socket, whose close(2) resets (decisions 463, 497)."""
        self._unread = True
        pending = self._close_reset
        if pending is not None:
            self._close_reset = None
            self._engine.close_reset(pending, self._core.fd)  # -ENOENT: closed already

    def _has_unread(self):
        if self._held is None and not self._core.held:
            return self._unread  # (every close asks: no generator then)
        return self._unread or any(rec[0] > 0 for rec in self._held_records())

    def _held_records(self):
        """The records waiting behind _ready, Python's then C's."""
        for held in (self._held, self._core.held):
            if held:
                yield from held

    def _drop_queue(self):
        c = self._core
        c.buffer = []
        c.buffer_size = 0

    # ------------------------------------------------------------ sendfile

    def _make_empty_waiter(self):
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        if self._core.hold:
            self._core.unhold()  # held writes leave first (decision 646)
        self._empty_waiter = self._loop.create_future()
        self._sync()
        if not self._core.buffer and not self._core.sending:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None
        self._sync()


# write(data), and writelines(list_of_data) on 3.12+ (before, the stock one
# calls write): the C core's, with no bound method per transport
SocketTransport.write = _sched.core_method(SocketTransport._core, "write")
if _PY312:
    SocketTransport.writelines = _sched.core_method(SocketTransport._core, "writelines")
# is_closing(): base.py's `return self._closing`, read from the slot in C
# (aiohttp asks once per request; decision 306)
SocketTransport.is_closing = _sched.core_method(SocketTransport._closing, "is_closing")
_START_READING = SocketTransport._start_reading  # (what accepted_transport compares)
# __del__ runs for every transport: one whose socket is gone (_sockobj None)
# unlinks its Stream in C, with no Python frame; anything else is _del_slow's
# (decision 754)
SocketTransport.__del__ = _sched.core_method(
    SocketTransport._core, "__del__", SocketTransport._sockobj, SocketTransport._del_slow
)
# An accepted TCP connection's transport is made in C with no Python frame,
# stream.c's accepted_transport (decisions 597, 785, 811); these are the
# slots it writes, in its order
_ACCEPTED_SLOTS = (
    "_sockobj", "_loop", "_protocol_paused", "_high_water", "_low_water", "_extra", "_tsock",
    "_core", "_engine", "_sockname", "_peername", "_server",
    "_closing", "_paused", "_protocol",
)
_sched.accepted_setup(
    SocketTransport, tuple(getattr(SocketTransport, n) for n in _ACCEPTED_SLOTS),
    _DEFAULT_HIGH, _DEFAULT_LOW, _IN_CORE, _share, protocols.BufferedProtocol,
    _START_READING, _SERVER_TRACKS_TRANSPORTS,
)
_accepted_transport = _sched.accepted_transport


def _stock_functions(cls, module, names):
    """cls's functions of those names, if they are still the module's own (a
    function patched in before this import is not taken for stock), else None."""
    fns = tuple(cls.__dict__.get(n) for n in names)
    ok = all(
        type(f) is types.FunctionType
        and f.__module__ == module
        and f.__qualname__ == f"{cls.__qualname__}.{n}"
        for f, n in zip(fns, names, strict=True)
    )
    return fns if ok else None


# The stock Server's _attach and _detach (asyncio's; every accepted
# transport's, at its creation and its _call_connection_lost) run in C with no
# Python frame for the exact Server with its class's functions unpatched, and
# on 3.13+ the exact WeakSet _clients with its class's add, discard and
# __len__ (decisions 861-863); anything else calls the method as before
_SERVER_FUNCTIONS = _stock_functions(
    base_events.Server, "asyncio.base_events", ("_attach", "_detach")
)
_WEAKSET_FUNCTIONS = (
    _stock_functions(weakref.WeakSet, "_weakrefset", ("add", "discard", "__len__"))
    if _SERVER_TRACKS_TRANSPORTS
    else None
)
if _SERVER_FUNCTIONS is not None and (_WEAKSET_FUNCTIONS or not _SERVER_TRACKS_TRANSPORTS):
    _sched.server_setup(
        base_events.Server,
        *_SERVER_FUNCTIONS,
        weakref.WeakSet if _WEAKSET_FUNCTIONS else None,
        *(_WEAKSET_FUNCTIONS or (None, None, None)),
    )


class _Kind:
    """What an accepted socket object is made from again (family, type,
    proto: the listener's), and one closed socket of that kind, for the
    socket extra of a closed transport whose object was never made."""

    __slots__ = ("family", "type", "proto", "__dict__")

    def __init__(self, family, type, proto):
        self.family, self.type, self.proto = family, type, proto

    @functools.cached_property
    def closed(self):
        # made on first asking, then an attribute: no call per connection
        sock = socket.socket(self.family, self.type, self.proto)
        sock.close()
        return sock


# close(): an exact SocketTransport's accepted connection with nothing
# pending (708's case) or with bytes queued and no send in flight (its
# _send_now, then 708's case) is closed in C with no Python frame, at its
# EOF (the Stream's stream_eof, decision 812) and when called
# (stream_close_fast, decision 820); anything else (a subclass, a patched
# close, another state) is the Python close above, the rule: keep the two
# the same
SocketTransport.close = _sched.core_method(SocketTransport._core, "close", SocketTransport.close)
# _call_connection_lost(exc): an exact SocketTransport's in C, the same
# steps (decision 834); a subclass, a socket object that is not a
# socket.socket (or still a _Kind) and anything else call the Python method
# above, the rule: keep the two the same. Both core methods answer
# __name__, __qualname__, __module__, __doc__ and __signature__ as that
# function (so a handle's repr and inspect.signature read as before; no
# __wrapped__, which would add a source location a bound method never had:
# 835). A closing transport's final record with no
# bytes does _on_recv's steps in C (833): keep its closing case the same.
SocketTransport._call_connection_lost = _sched.core_method(
    SocketTransport._core, "_call_connection_lost", SocketTransport._call_connection_lost
)
_sched.close_setup(
    SocketTransport.close, _Kind, _ignore, _INET, SocketTransport._on_recv, socket.socket
)


# the Python accept path's copy of the Acceptor's context for a connection
# (879); a module attribute, so a test can make it fail as PyContext_Copy
# does without memory (decision 887)
_ctx_copy = contextvars.Context.copy


class Acceptor(_sched.AcceptorCore):
    """One listening socket served by a multishot engine accept.

    Each accepted fd becomes a socket built from the listener's own family,
    type and proto (no probing syscalls), then protocol_factory() and a
    transport, as the stock loop's _accept_connection2 does; TLS connections
    go through that very coroutine (it awaits the handshake). When the process
    runs out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) accepting stops
    for constants.ACCEPT_RETRY_DELAY and resumes, as in the stock loop; the
    connections meanwhile wait in the kernel's backlog. At most
    _ACCEPT_BUDGET connections are made a turn (decision 314).

    The per-turn state (turn, made, waiting, stopped, ud) and what a
    record's plain case reads are the C base's fields: the engine's
    callback is the Acceptor itself (a call is ctx.run of the _on_accept
    bound at __init__), and a record of the plain case (a connection made
    now by an exact Acceptor of an exact Loop, outside debug mode, no TLS)
    is taken in C with _on_accept's steps (decision 867); everything else
    calls _on_accept. Keep the two the same. Each connection is made in its
    own copy of the Acceptor's context, as stock's accept task is (879).
    """

    def __init__(self, loop, protocol_factory, sock, sslcontext, server, backlog,
                 ssl_handshake_timeout, ssl_shutdown_timeout):
        self.loop = loop
        self.protocol_factory = protocol_factory
        self.sock = sock
        self.sslcontext = sslcontext
        self.server = server
        self.backlog = backlog
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.ssl_shutdown_timeout = ssl_shutdown_timeout
        self.family, self.type, self.proto = sock.family, sock.type, sock.proto
        self.kind = _Kind(self.family, self.type | _SOCK_NONBLOCK, self.proto)
        # an IPv4 or IPv6 TCP listener's connections are made with no socket
        # object (accepted_transport, decisions 597, 811); TCP_NODELAY on
        # them as base_events._set_nodelay decides for the accepted socket,
        # which has the listener's family, type and proto (599)
        # (not when a Loop subclass makes its own transports: its
        # _make_socket_transport is called per connection, as stock calls it)
        from ..loop import Loop

        self.plain = (
            self.family in _INET
            and self.type == socket.SOCK_STREAM
            and type(loop)._make_socket_transport is Loop._make_socket_transport
        )
        self.nodelay = self.plain and self.proto == socket.IPPROTO_TCP
        self.ud = None
        self.turn = -1  # the loop's turn of the latest connection made
        self.made = 0  # connections made in that turn
        self.waiting = None  # deque of accepted fds over the budget, in order
        self.stopped = False
        self.resting = False  # out of descriptors: accepting waits a while
        # the callback: ctx.run(self._bound, res, more, data) (decision 867;
        # what functools.partial(ctx.run, self._on_accept) was)
        self._ctx = contextvars.copy_context()
        self._bound = self._on_accept

    def start(self):
        if self.stopped or self.resting or self.ud is not None or self.sock.fileno() < 0:
            return
        self.ud = self.loop._engine.accept(self.sock.fileno(), self, multishot=True)

    def stop(self):
        self.stopped = True
        waiting, self.waiting = self.waiting, None
        while waiting:
            os.close(waiting.popleft())  # accepted, never made: their clients see the end

    def _on_accept(self, res, more, data):
        if not more:
            self.ud = None
        if res >= 0:
            if self.stopped:
                os.close(res)  # won the race against the server's close
                return
            # _take, written out (decision 708): a connection now, unless
            # this turn made its budget's worth: a burst (a multishot accept
            # hands over up to a batch of records, 4,096, in one run) would
            # make every transport with its handles at once, and the handles
            # freed a turn later leave pymalloc's pools half empty under the
            # transports for good (decision 314). The rest wait, in order,
            # for the next turns.
            loop = self.loop
            turn = loop._turns
            if turn != self.turn:
                self.turn, self.made = turn, 0
            if self.waiting is None and self.made < _ACCEPT_BUDGET:
                self.made += 1
                self._connect_copied(res)
            else:
                if self.waiting is None:
                    self.waiting = collections.deque()
                    self.loop.call_soon(self._make_waiting)
                self.waiting.append(res)
            if not more:
                self.start()
            return
        if self.stopped or res == _ECANCELED:
            if not more and not self.stopped:
                self.start()  # cancelled while resting, and the rest is over
            return
        exc = _os_error(res)
        loop = self.loop
        if -res in _ACCEPT_EXHAUSTED:
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(self.sock),
                }
            )
            self.resting = True
            if self.ud is not None:
                loop._engine.cancel(self.ud)
            loop.call_later(constants.ACCEPT_RETRY_DELAY, self._rest_over)
            return
        # The stock loop lets such an error escape its reader callback, which
        # logs it; the listener stays registered.
        loop.call_exception_handler(
            {
                "message": f"Exception in callback {self!r}",
                "exception": exc,
                "socket": trsock.TransportSocket(self.sock),
            }
        )
        if not more:
            self.start()

    def _connect_copied(self, fd):
        """_connection(fd) in the connection's own copy of the context, as
        stock's accept task (decision 879); a copy that fails (MemoryError)
        closes the fd first, as C's accept_record (decision 887)."""
        try:
            ctx = _ctx_copy(self._ctx)
        except BaseException:
            os.close(fd)
            raise
        ctx.run(self._connection, fd)

    def _make_waiting(self, again=False):
        """Up to the budget of the waiting connections. again: queued by
        this method from _ready, so this is a later turn (the first call may
        run in the very turn whose accepts filled the budget)."""
        waiting = self.waiting
        if waiting is None:
            return  # stopped meanwhile: closed
        turn = self.loop._turns
        if turn != self.turn or again:
            self.turn, self.made = turn, 0
        try:
            while waiting and self.made < _ACCEPT_BUDGET:
                self.made += 1
                self._connect_copied(waiting.popleft())
        finally:  # (stop() empties waiting; an error here leaves the rest to the next turn)
            if self.waiting is waiting:
                if waiting:
                    self.loop.call_soon(self._make_waiting, True)
                else:
                    self.waiting = None

    def _rest_over(self):
        self.resting = False
        self.start()

    def _connection(self, fd):
        loop = self.loop
        if self.plain and not self.sslcontext and not loop._debug:
            # an IPv4 or IPv6 TCP listener's connection outside debug mode
            # (whose log line shows the socket object): the transport is
            # made from the fd, no socket object (decision 597). stream.c's
            # accept_record has this case written out (867): keep the two
            # the same. Called in the connection's own copy of the
            # Acceptor's context (879)
            protocol = transport = None
            try:
                protocol = self.protocol_factory()
                # stock's check that no open transport has the fd (the
                # number of one closed behind its transport's back): asked
                # in Python only when either registry has an entry (620)
                # that may be open: the stream registry's entry for the
                # number is mostly the previous connection's, closed (693)
                if fd in loop._transports.data or (
                    (t := _stream_for_fd(loop, fd)) is not None and not t.is_closing()
                ):
                    loop._ensure_fd_no_transport(fd)
                # the transport, made in C (decision 811)
                transport = _accepted_transport(
                    loop, fd, self.kind, protocol, self.server, self.nodelay
                )
            except (SystemExit, KeyboardInterrupt):
                if transport is None:
                    os.close(fd)
                raise
            except BaseException as exc:
                if transport is None:
                    os.close(fd)
                self._creation_failed(exc, protocol)
            return
        try:
            # the engine accepts with SOCK_NONBLOCK: saying so here makes the
            # socket object non-blocking (timeout 0) without the ioctl that
            # setblocking(False) would cost per connection
            conn = socket.socket(self.family, self.type | _SOCK_NONBLOCK, self.proto, fileno=fd)
        except OSError:
            os.close(fd)
            raise
        if loop._debug:
            logger.debug("%r got a new connection: %r", self.server, conn)
        if self.sslcontext:
            loop.create_task(
                loop._accept_connection2(
                    self.protocol_factory, conn, {}, self.sslcontext, self.server,
                    self.ssl_handshake_timeout, self.ssl_shutdown_timeout,
                )
            )
            return
        # a plain connection needs no task: nothing is awaited but the
        # waiter that connection_made() has run, which no one else sees
        protocol = transport = None
        try:
            protocol = self.protocol_factory()
            transport = loop._make_socket_transport(conn, protocol, server=self.server)
            transport._shed_socket(self.kind)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            self._creation_failed(exc, protocol)

    def _creation_failed(self, exc, protocol):
        if self.loop._debug:
            context = {
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
            }
            if protocol is not None:
                context["protocol"] = protocol
            self.loop.call_exception_handler(context)

    def __repr__(self):
        return f"<Acceptor fd={self.sock.fileno()} server={self.server!r}>"


def _acceptor_setup(loop_cls):
    """An exact Acceptor's plain-case records are taken in C while its
    _bound is this _on_accept and its loop is exactly loop_cls (decision
    867); loop.py calls this once Loop is made."""
    _sched.acceptor_setup(Acceptor, Acceptor._on_accept, loop_cls, globals())
