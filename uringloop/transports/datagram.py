"""Datagram socket transports (UDP, Unix datagram), on the engine.

What the engine gives a datagram transport, and how this module uses it:

* Receiving is one engine receive that lives as long as the transport reads.
  Every record is one datagram: one ``datagram_received(data, addr)``, never
  a datagram split or two merged. Where the engine can, that receive is a
  multishot ``recvmsg`` into its datagram pool (``Engine.recvmsg_pool``: the
  kernel writes header, sender address and payload into one pool buffer, in
  the ``io_uring_recvmsg_out`` layout). A pool buffer holds any UDP datagram
  whole (68 KiB). Unix datagrams can be longer (up to the sender's SO_SNDBUF),
  so a Unix endpoint receives one datagram at a time into a buffer of the
  stock transport's ``max_size`` (256 KiB, what the stock loop's ``recvfrom``
  asks for): what is delivered is exactly what the stock loop delivers. Should
  a pool receive ever meet a datagram too long for its buffer, it is reported
  (``error_received(OSError(EMSGSIZE))``), never handed over cut.
  ``pause_reading`` cancels the op; records that still arrive after the
  cancel (the cancel race) are held and handed over first on resume.
* Sending is the stock transport's: ``sendto`` tries the socket at once (the
  same syscall, the same errors, reported the same way: ``error_received``
  for an OSError such as ECONNREFUSED on a connected endpoint); only when the
  kernel says EAGAIN do datagrams queue, in order, behind a one-shot engine
  poll for writability, and the protocol is paused past the high-water mark.
* Closing goes through the engine's ``close_fd`` (cancel every op on the fd,
  wait for their final records, close), held: the close(2) also waits for
  ``_call_connection_lost``, which releases it where the stock transport
  closes its socket, after ``connection_lost`` (decision 884; a transport
  collected first releases it in ``__del__``, a closed loop has closed it).
  A reused fd number never meets a stale op.
"""

from __future__ import annotations

import collections
import contextvars
import errno
import functools
import inspect
import select
import socket
import sys
from asyncio import constants, events, futures, selector_events, transports
from asyncio.log import logger

from .. import _sched
from .._sched import Dgram
from .base import ECANCELED as _ECANCELED
from .base import SocketTransportBase
from .base import os_error as _os_error

__all__ = ["DatagramTransport"]

_EMSGSIZE = -errno.EMSGSIZE
_POOL_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _stock_sendto_rules():
    """(empty datagrams are sent, bytes counted per queued datagram beyond its
    length): the running Python's own stock transport decides (3.13 sends
    empty datagrams and counts 8 header bytes; patch releases differ)."""
    try:
        src = inspect.getsource(selector_events._SelectorDatagramTransport.sendto)
    except (OSError, TypeError):
        return sys.version_info >= (3, 13), 8 if sys.version_info >= (3, 13) else 0
    return "if not data:" not in src, 8 if "+ 8" in src else 0


_SEND_EMPTY, _HEADER = _stock_sendto_rules()


class DatagramTransport(
    SocketTransportBase, transports._FlowControlMixin, transports.DatagramTransport
):
    """A datagram socket's transport: the stock selector transport's behaviour,
    the engine's I/O."""

    # _dg: the hot half in C (a Dgram), in a slot at a fixed offset, where the
    # class's sendto (a C method, set below the class) finds it
    __slots__ = ("_dg", "__dict__", "__weakref__")

    max_size = 256 * 1024  # what the stock transport's recvfrom() asks for

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra, loop)
        self._init_socket(loop, sock)
        self._address = address
        self._connected = bool(self._extra["peername"])  # the stock test, made once
        self._protocol_connected = False
        self._dg = None  # the hot half in C (uringloop/_core/dgram.c)
        self.set_protocol(protocol)
        self._buffer = collections.deque()  # (bytes, addr) waiting for writability
        self._buffer_size = 0
        self._poll_ud = None  # the writability poll while datagrams wait
        self._conn_lost = 0
        self._closing = False
        self._paused = False
        self._fd_closing = False
        self._recv_ud = None  # the receive op, until its final record
        # UDP on the datagram pool; Unix datagrams may outgrow its buffers
        self._pool = sock.family in _POOL_FAMILIES and hasattr(self._engine, "recvmsg_pool")
        self._rbuf = None  # one-datagram buffer of the fallback receive
        self._held = None  # deque of (data, addr, exc) not yet handed over
        self._draining = False
        self._context = ctx = contextvars.copy_context()
        self._on_recv_cb = functools.partial(ctx.run, self._on_recv)
        self._on_writable_cb = functools.partial(ctx.run, self._on_writable)
        # The receive's owner and sendto's first try, in C: each takes the
        # common case and hands the rest to the Python methods below.
        self._dg = Dgram(
            self, protocol, ctx, loop._ready, self._on_recv_cb, sock, self._buffer,
            address or None, self._sock_fd, sock.family, self._connected,
        )
        self._dg.send_fast = 1
        loop._transports[self._sock_fd] = self
        loop.call_soon(self._protocol.connection_made, self)
        # only start reading when connection_made() has been called
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _write_busy(self):
        return self._poll_ud is not None

    # ------------------------------------------------------------ protocol

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._protocol_connected = True
        if self._dg is not None:
            self._dg.protocol = protocol

    def _sync(self):
        """Whether the C half may hand a record straight to datagram_received:
        the plain reading state (the loop's ready queue it checks itself);
        and whether sendto may use the fd (not once it is the engine's)."""
        dg = self._dg
        dg.recv_fast = (
            self._pool and self._held is None and not self._paused and not self._closing
        )
        if self._fd_closing:
            dg.send_fast = 0

    def get_write_buffer_size(self):
        if _HEADER or sys.version_info >= (3, 11):
            return self._buffer_size
        return sum(len(data) for data, _ in self._buffer)  # 3.10's way

    # ------------------------------------------------------------- reading

    def _start_reading(self):
        if (
            self._recv_ud is not None
            or self._closing
            or self._paused
            or self._held
            or self._fd_closing
        ):
            return
        if self._pool:
            self._sync()
            self._recv_ud = self._engine.recvmsg_pool(self._sock_fd, self._dg)
        else:
            if self._rbuf is None:
                self._rbuf = bytearray(self.max_size)
            self._recv_ud = self._engine.recvmsg(
                self._sock_fd, self._rbuf, self._on_recv_cb, self._sock.family
            )

    def _on_recv(self, res, more, data):
        """The engine's callback: one record, one datagram (or one error).
        (A pool datagram while plainly reading went straight to the protocol
        from C, see Dgram; this is the rest.)"""
        if not more:
            self._recv_ud = None
        if self._closing:
            return  # the stock transport stops reading at close()
        if res < 0:
            if res == _ECANCELED:
                if not more:
                    self._start_reading()  # pause_reading cancelled it; resumed since?
                return
            if res == _EMSGSIZE and self._pool:
                exc = OSError(errno.EMSGSIZE, "datagram longer than the receive buffer: dropped")
            else:
                exc = _os_error(res)
            item = (None, None, exc)
        elif self._pool:  # pool receive: data is (payload, address)
            item = (data[0], data[1], None)
        else:  # one-shot into _rbuf: data is the address
            item = (bytes(self._rbuf[:res]), data, None)
        if self._held is not None or self._paused or self._loop._sched_ahead(self._dg):
            # the stock loop queues its reader callback behind what is already
            # in _ready (not the timers collected before the records, decision
            # 414; for its first record of a batch, only what was there at
            # the poll, decision 454): the datagram waits in order
            self._hold(item)
            return
        self._process(*item)
        if not more:
            self._start_reading()

    def _process(self, data, addr, exc):
        if self._conn_lost:
            return
        try:
            if exc is None:
                self._protocol.datagram_received(data, addr)
            else:
                self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            self._hold_rest()
            raise
        except BaseException as exc:
            self._protocol_raised(exc)

    def _drain_held(self):
        """The held datagrams, in order, as the stock reader callback takes
        them: one a turn, so what one's callbacks scheduled (or what else is
        due) runs before the next (decision 409)."""
        self._draining = False
        held = self._held
        while held and self.is_reading():
            self._process(*held.popleft())
            if held and self.is_reading() and self._loop._ready:
                self._schedule_drain()
                return
        if not held:
            self._held = None
            self._sync()
            self._start_reading()

    def _hold_rest(self):
        """datagram_received or error_received let SystemExit or
        KeyboardInterrupt out (from C too): the stock loop stops there, and
        its reader callback reads the next datagram on a later turn. The
        turn's other records are held and handed over from the next turn, and
        a one-shot receive is re-armed there (decision 408)."""
        if self._held is None:
            self._held = collections.deque()
            self._sync()
        if not self._paused:
            self._schedule_drain()

    def _protocol_raised(self, exc, callback=None):
        """datagram_received or error_received raised: the stock transport
        calls them from its reader callback (or writer callback) and lets the
        exception out to the callback's handle, which reports it (and the
        transport reads on)."""
        self._raised = exc
        # (a copy of the current context: ours may be the one running)
        events.Handle(callback or self._read_ready, (), self._loop, None)._run()

    def _read_ready(self):
        # named after the stock reader callback: the handle's report names it
        exc, self._raised = self._raised, None
        raise exc

    def _writer_raised(self):
        exc, self._raised = self._raised, None
        raise exc

    # named after the stock writer callback: the handle's report names it
    _writer_raised.__qualname__ = "DatagramTransport._sendto_ready"

    # ------------------------------------------------------------- writing

    def _sendto_py(self, data, addr=None):
        """The stock sendto: what the class's sendto (C, set below the
        class) does not take itself comes here."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data and not _SEND_EMPTY:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        if self._conn_lost and self._address:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._buffer:
            # the stock transport's first try: straight to the socket
            try:
                if self._connected:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._sendto_failed(data, addr, exc)
                return
        self._queue(data, addr)

    def _sendto_failed(self, data, addr, exc):
        """The first try's syscall raised exc: the stock transport's except
        branches (EAGAIN: queue behind a writability wait; an OSError goes to
        error_received; anything else is fatal)."""
        if self._address:
            addr = self._address
        if isinstance(exc, (BlockingIOError, InterruptedError)):
            self._wait_writable()
            self._queue(data, addr)
        elif isinstance(exc, OSError):
            self._protocol.error_received(exc)
        else:
            self._fatal_error(exc, "Fatal write error on datagram transport")

    def _queue(self, data, addr):
        # what waits must not change under us
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data) + _HEADER
        self._maybe_pause_protocol()

    def _wait_writable(self):
        if self._poll_ud is None and not self._fd_closing:
            self._poll_ud = self._engine.poll(
                self._sock_fd, select.POLLOUT, self._on_writable_cb
            )

    def _on_writable(self, res, more, data):
        self._poll_ud = None
        if self._fd_closing or not self._buffer:
            return
        if res < 0:
            if res != _ECANCELED:
                self._fatal_error(_os_error(res), "Fatal write error on datagram transport")
            return
        self._sendto_ready()

    def _sendto_ready(self):
        """The stock transport's writer callback: the queue, in order."""
        while self._buffer:
            data, addr = self._buffer.popleft()
            self._buffer_size -= len(data) + _HEADER
            try:
                if self._connected:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self._buffer.appendleft((data, addr))  # try again later
                self._buffer_size += len(data) + _HEADER
                break
            except OSError as exc:
                # the stock writer stays registered: the rest goes next time,
                # whatever error_received does (raise, even SystemExit or
                # KeyboardInterrupt, decision 408)
                self._wait_writable()
                try:
                    self._protocol.error_received(exc)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as err:
                    # reported as the stock writer handle reports it
                    self._protocol_raised(err, self._writer_raised)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
        self._maybe_resume_protocol()  # may append to the buffer
        if self._buffer:
            self._wait_writable()
        elif self._closing:
            self._conn_lost += 1
            self._close_fd(None)

    # ------------------------------------------------------------- closing

    def close(self):
        if self._closing:
            return
        self._closing = True
        self._sync()
        self._stop_reading()
        if not self._buffer:
            self._conn_lost += 1
            self._close_fd(None)
        # else: the queued datagrams leave first (_sendto_ready closes)

    def _drop_queue(self):
        self._buffer.clear()
        self._buffer_size = 0

    def _detach_fd(self):
        sock = self._sock
        if not self._address:
            # The stock transport still sends an unconnected endpoint's
            # datagrams until connection_lost (and fails after): a duplicate
            # of the fd does that while the engine closes the original.
            try:
                self._sock = sock.dup()
            except OSError:
                pass  # then such a send fails (EBADF) and error_received says so
        return sock.detach()


# sendto is a C method of the class (dgram.c: no bound method made, no
# Python frame) over the Dgram in the _dg slot; it hands the rest to
# _sendto_py (decision 315)
DatagramTransport.sendto = _sched.sendto_method(DatagramTransport, DatagramTransport._dg)
