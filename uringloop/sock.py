"""The sock_* coroutines, as engine operations.

The one rule a completion loop adds to asyncio's: a cancelled operation may
still complete. A receive cancelled with its task can have taken bytes off the
socket; an accept can have taken a connection. Neither may be dropped, so such
results are kept per socket and returned by the next receive or accept on it.
Until a cancelled op's final record has arrived, the next receive or accept on
that socket waits for it, so the kept bytes always come before newer ones.

Receives never hand the caller's buffer to the kernel: data lands in the
engine's pool and is copied into the caller's buffer only while its await is
still running, so the buffer is never written after the await has ended.
"""

from __future__ import annotations

import _socket
import asyncio
import collections
import errno
import functools
import gc
import mmap
import os
import select
import socket
import weakref
from asyncio import exceptions
from operator import index as _index

from . import _sched
from ._sched import owner_is as _owner_is
from ._sched import recv_after as _recv_after
from ._sched import recv_now as _recv_now
from ._sched import recv_start as _recv_start
from ._sched import send_now as _send_now
from ._sched import stream_for_fd as _stream_for_fd
from .engine import encode_sockaddr

_CancelledError = asyncio.CancelledError
_SENDFILE_CHUNK = 1 << 30
# One engine send carries at most this much: a record's result is an int32,
# and io_uring refuses a longer SEND (EINVAL). Longer sendall data is queued
# as several sends, in order, without a copy.
_SEND_CHUNK = 1 << 30
# A datagram receive larger than this gets a lazily mapped buffer instead of a
# zero-filled bytearray (what recv(2**32) costs the stock loop: address space).
_BIG_DGRAM = 1 << 20
# a big sock_recv on a socket whose big receives come short of their n waits
# for readiness and then receives into its result (decision 675) up to this n;
# a larger n takes a pool buffer first, as before (decision 419)
_READY_MAX = 1 << 20
_POLLIN = 0x001
_U32_MAX = (1 << 32) - 1
# errors a non-blocking inet connect() returns itself, before any handshake
# (the stock loop raises them with strerror); the others come through SO_ERROR
_CONNECT_SYNC_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "EISCONN", "EALREADY", "EINVAL", "EAFNOSUPPORT", "EBADF", "ENOTSOCK",
        "EADDRNOTAVAIL", "EADDRINUSE", "ENETUNREACH", "EACCES", "EPERM",
    )
)
_SOCK_DGRAM = socket.SOCK_DGRAM
_MSG_DONTWAIT = socket.MSG_DONTWAIT
# the C member behind socket.type, without the enum conversion (75 ns, not 1 us)
_sock_type = _socket.socket.__dict__["type"].__get__


try:
    from ssl import SSLSocket as _SSLSocket
except ImportError:  # Python built without ssl
    _SSLSocket = ()


def _ignore(res, more, data):
    pass


def _error(res: int, what: str | None = None) -> OSError:
    return OSError(-res, what or os.strerror(-res))


class _OpFuture(asyncio.Future):
    """The future of one engine op, and the op's completion callback.

    The engine calls it with each record: a pending future takes the result
    (converted by the awaiting coroutine); a record that comes after the await
    was cancelled goes to the socket's state, to be returned later.

    Its cancel() cancels the op at once. Task.cancel() cancels the future the
    task awaits synchronously, but the task only runs again later, and
    completions dispatched in between must already find the op marked as
    cancelled, so that what it brings is kept (and later receives wait for it)
    instead of being dropped.
    """

    __slots__ = ("_fd", "_sock", "_convert", "_track", "_ud")

    def __call__(self, res, more, data):
        if not self.done():
            self.set_result((res, data))
        elif self._track:  # a send owes nothing to later calls
            self.get_loop()._sock_late(self, res, data)

    def cancel(self, msg=None):
        if not super().cancel(msg=msg):
            return False
        ud = self._ud
        if ud is not None:
            self._ud = None
            self.get_loop()._sock_cancel_op(self._fd, self._sock, ud, self._track)
        return True


class _SockState:
    """What a socket owes its next receive or accept after a cancel."""

    __slots__ = ("sockref", "pending", "waiters", "data", "datagrams", "accepted", "error")

    def __init__(self, sock, gone=None):
        self.sockref = weakref.ref(sock, gone)
        self.pending = 0  # cancelled ops whose final record is still to come
        self.waiters: list = []
        self.data = bytearray()
        self.datagrams: collections.deque = collections.deque()
        self.accepted: collections.deque = collections.deque()
        self.error = None  # met (and so taken from the kernel) after data: the next recv's

    def empty(self) -> bool:
        return not (
            self.pending or self.data or self.datagrams or self.accepted or self.error
        )


class SockMixin:
    """sock_* methods for a loop that has ``self._engine`` and ``self._sock_state``."""

    # ------------------------------------------------------------ helpers

    def _sock_fd(self, sock) -> int:
        if isinstance(sock, _SSLSocket):
            raise TypeError("Socket cannot be of type SSLSocket")
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        self._check_closed()
        fd = sock.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        # a socket a transport owns is not for sock_* (the stock loop's rule);
        # the registries are read first (the WeakValueDictionary's own dict
        # and the stream transports' C table): no Python frame
        if fd in self._transports.data or _stream_for_fd(self, fd) is not None:
            self._ensure_fd_no_transport(fd)
        return fd

    def _sock_get_state(self, fd, sock, create=False):
        """sock's state. The state under fd belongs to one socket object; a
        stale socket (closed, its number reused) never sees nor wipes the
        state of the socket that has the number now."""
        st = self._sock_state.get(fd)
        if st is not None and st.sockref() is not sock:
            if not create:
                return None
            self._sock_drop_state(fd)  # only the current owner creates
            st = None
        if st is None and create:
            st = self._sock_state[fd] = _SockState(sock, self._sock_state_gone(fd))
        return st

    def _sock_state_gone(self, fd):
        """Weakref callback: a socket with kept results was collected."""
        loopref = weakref.ref(self)

        def gone(ref):
            loop = loopref()
            if loop is not None:
                st = loop._sock_state.get(fd)
                if st is not None and st.sockref is ref:
                    loop._sock_drop_state(fd)

        return gone

    def _sock_drop_state(self, fd):
        """Forget what fd's socket was owed; close connections kept for it."""
        st = self._sock_state.pop(fd, None)
        if st is None:
            return
        for conn, _addr in st.accepted:
            conn.close()
        st.accepted.clear()
        for w in st.waiters:
            if not w.done():
                w.set_result(None)  # they look again and find no state
        st.waiters.clear()

    def _sock_claim(self, fd, sock, ref):
        """sock is not the socket last seen on fd. If that one was closed
        behind the loop's back (its number now names sock's file), whatever
        it still has in the engine on this number is stale: cancel it, so the
        old file is let go (on io_uring an op in flight holds it open) and
        nothing of it can act on the new file; its kept results go too."""
        old = ref() if ref is not None else None
        self._sock_owner[fd] = weakref.ref(sock)
        if old is not None and old.fileno() == fd:
            return  # two socket objects for one open file: nothing is stale
        st = self._sock_state.get(fd)
        if st is not None and st.sockref() is not sock:
            self._sock_drop_state(fd)
        if old is not None:
            self._sock_cancel_ops_of(old)

    def _sock_cancel_ops_of(self, sock):
        """Cancel every engine op that a sock_* call started for sock."""
        eng = self._engine
        if eng.closed:
            return
        # The op slots live in C (_sched.Table); what it holds for each slot
        # (the callback, here the op's future) is what the garbage collector
        # sees of it. A cold path: only for a socket closed behind our back
        # whose number is taken by another socket, or sock_close.
        for cb in gc.get_referents(eng._t):
            if type(cb) is _OpFuture and cb._sock is sock and cb._ud is not None:
                ud, cb._ud = cb._ud, None
                eng.cancel(ud)

    def sock_close(self, sock):
        """Close sock the way the loop can make safe: cancel the sock_* ops it
        has in the engine, then close it once they have ended. On io_uring an
        op in flight holds the file open, so a plain ``sock.close()`` with a
        sock_* op pending leaves the connection open (the peer sees no EOF)
        until that op ends; this closes it at once. Pending sock_* calls on
        sock raise OSError(EBADF), as calls on a closed socket do."""
        fd = sock.fileno()
        if fd < 0:
            return
        if self.is_closed() or self._engine.closed:
            sock.close()
            return
        self._sock_cancel_ops_of(sock)
        if self._sock_owner.get(fd) is not None:
            del self._sock_owner[fd]
        st = self._sock_state.get(fd)
        if st is not None and st.sockref() is sock:
            self._sock_drop_state(fd)
        self._engine.close_fd(sock.detach(), _ignore)

    def _sock_error(self, res, sock):
        """The exception for a failed sock_* op. An op that ended because its
        socket was closed under it says so (EBADF), not ECANCELED."""
        if res == -errno.ECANCELED and sock.fileno() < 0:
            res = -errno.EBADF
        return _error(res)

    async def _sock_settled(self, fd, sock):
        """The socket's state once no cancelled op is still to complete."""
        st = self._sock_get_state(fd, sock)
        while st is not None and st.pending:
            waiter = self.create_future()
            st.waiters.append(waiter)
            await waiter
            st = self._sock_get_state(fd, sock)
        return st

    def _sock_keep(self, fd, sock, keep):
        """Keep a result that arrived for an await that was cancelled."""
        kind, value = keep
        if kind == "data" and _sock_type(sock) == _SOCK_DGRAM:
            # a datagram from a pool receive: keep its boundary (and the peer
            # address where the socket is connected: recv() gives none)
            try:
                addr = sock.getpeername()
            except OSError:
                addr = None
            kind, value = "datagram", (bytes(value), addr)
        st = self._sock_get_state(fd, sock, create=True)
        if kind == "data":
            st.data += value
        elif kind == "datagram":
            st.datagrams.append(value)
        else:
            st.accepted.append(value)

    def _sock_late(self, fut, res, data):
        """A record for an op whose await was cancelled: keep what it brought."""
        fd, sock, convert = fut._fd, fut._sock, fut._convert
        st = self._sock_get_state(fd, sock)
        if st is None or sock.fileno() != fd:
            # the socket was closed (its number may be another socket's now):
            # nobody can receive this
            if res >= 0 and getattr(convert, "func", convert) is _accept_result:
                os.close(res)
            if st is None:
                return
        elif res >= 0:
            self._sock_keep(fd, sock, convert(res, data, True))
        self._sock_unhold(fd, st)

    def _sock_op(self, fd, sock, convert, track=True):
        """The future (and engine callback) of a sock_* op about to start; the
        caller sets its ``_ud`` once the engine has the op."""
        # Is sock the socket last seen with an op on fd? Checked only where
        # an op goes to the engine (not on sock_sendall's plain-send path).
        if not _owner_is(self._sock_owner, fd, sock):
            self._sock_claim(fd, sock, self._sock_owner.get(fd))
        fut = _OpFuture(loop=self)
        fut._fd = fd
        fut._sock = sock
        fut._convert = convert
        fut._track = track
        fut._ud = None
        return fut

    def _sock_cancel_op(self, fd, sock, ud, track):
        """The op's future was cancelled: cancel the op now. With track, its
        final record is still owed to the socket: later receives wait for it."""
        if track:
            self._sock_get_state(fd, sock, create=True).pending += 1
        if not self._engine.closed:
            self._engine.cancel(ud)

    def _sock_on_cancel(self, fut, fd, sock, convert, track):
        """The awaiting task got CancelledError."""
        if not fut.cancelled() and track:
            # it completed, but the task was cancelled before it could resume
            res, data = fut.result()
            if res >= 0:
                if sock.fileno() == fd:
                    self._sock_keep(fd, sock, convert(res, data, True))
                elif getattr(convert, "func", convert) is _accept_result:
                    os.close(res)

    async def _sock_await(self, fut, convert, fd, sock, track=True):
        try:
            res, data = await fut
        except _CancelledError:
            self._sock_on_cancel(fut, fd, sock, convert, track)
            raise
        if res < 0:
            raise self._sock_error(res, sock)
        return convert(res, data, False)

    # ----------------------------------------------------------- receive

    def _sock_recv_more(self, fd, sock, view):
        """What a stream socket holds now, into view, without waiting; see
        the note above the result converters.

        Only with no later receive on the socket: see _big_recvs."""
        try:
            return sock.recv_into(view, 0, _MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if sock.fileno() == fd:
                self._sock_get_state(fd, sock, create=True).error = exc
        return 0

    def _sock_recv_after(self, fd, sock, data, k):
        """data, then what the stream socket holds now, up to k more bytes,
        as one bytes: received in place after data (C, decision 337), as
        _sock_recv_more receives them into a buffer."""
        if sock.fileno() == fd:
            try:
                return _recv_after(fd, data, k)
            except OSError as exc:
                self._sock_get_state(fd, sock, create=True).error = exc
        return data

    def _sock_big_done(self, fd, sock, n, data):
        """data from a receive above a pool buffer: when it filled its n,
        more is likely waiting, and the next such receive on fd tries a
        recv(n) into its result at once (_big_socks, decision 351); when it
        brought more than a pool buffer but less than n, the next one waits
        for readiness, then receives into its result (_wide_socks, 675)."""
        k = len(data)
        if k == n:
            _big_socks[fd] = weakref.ref(sock)
            _wide_socks.discard(fd)
        elif k > self._sock_bufsize and n <= _READY_MAX:
            _big_socks[fd] = weakref.ref(sock)
            _wide_socks.add(fd)
        else:
            _big_socks.pop(fd, None)
            _wide_socks.discard(fd)
        return data

    async def _sock_recv_ready(self, fd, sock, n):
        """A big sock_recv on a stream socket whose last big receive brought
        more than a pool buffer and less than its n (decision 675): wait until
        the socket is readable, then one recv(n) into the result, as the
        stock loop's reader does; no pool buffer, so no copy of its bytes.
        A receive asked meanwhile on fd waits for this one (_sock_behind)."""
        _big_recvs[fd] = _POLLING  # later receives on fd: not C's, see _sock_behind
        try:
            while True:
                fut = self._sock_op(fd, sock, _ready_result, track=False)
                fut._ud = self._engine.poll(fd, _POLLIN, fut)
                res, _ = await fut  # a poll takes no byte: a cancel keeps nothing
                data = self._sock_ready_recv(fd, sock, n, res)
                if data is not None:  # else nothing there after all: wait again
                    return self._sock_big_done(fd, sock, n, data)
        finally:
            self._sock_ready_end(fd)

    def _sock_ready_recv(self, fd, sock, n, res):
        """The poll of a wide receive came back (res: its events or -errno):
        recv(n) into the result now; None when nothing is there."""
        if res < 0:
            raise self._sock_error(res, sock)
        if sock.fileno() != fd:  # closed meanwhile: its recv would say so
            raise _error(-errno.EBADF)
        return _recv_now(fd, n)

    def _sock_polled(self, fd, sock, n, res):
        """A wide receive whose poll sock.c started (recv_start) came back:
        its bytes, or None when nothing is there (the caller waits again,
        still holding the receives asked meanwhile)."""
        try:
            data = self._sock_ready_recv(fd, sock, n, res)
        except BaseException:
            self._sock_ready_end(fd)
            raise
        if data is None:
            return None
        self._sock_ready_end(fd)
        return self._sock_big_done(fd, sock, n, data)

    def _sock_ready_end(self, fd):
        """A wide receive is done waiting: later receives on fd go on. Its
        entry goes, and so does a None there: a receive that was not held
        (another socket's, now on fd) spoiled it, as it spoils a big receive
        in flight, which then drops it (_big_recv); an int is such a big
        receive's own, and stays."""
        mark = _big_recvs.get(fd, 0)
        if mark is _POLLING or mark is None:
            del _big_recvs[fd]
        if _behind:
            st = _behind.pop(fd, None)
            if st is not None:
                self._sock_unhold(fd, st)

    def _sock_behind(self, fd, sock):
        """A receive asked on fd while a big receive there waits for
        readiness (_sock_recv_ready): the socket's state holds it (and every
        later one) until that receive has read, as a cancelled op's does.
        Not a receive of another socket now on fd (the waiting one's was
        closed behind the loop's back): its op's claim cancels that poll."""
        ref = _big_socks.get(fd)
        if ref is None or ref() is not sock:
            return
        if fd not in _behind:
            st = self._sock_get_state(fd, sock, create=True)
            st.pending += 1
            _behind[fd] = st

    def _sock_unhold(self, fd, st):
        st.pending -= 1
        if not st.pending:
            for w in st.waiters:
                if not w.done():
                    w.set_result(None)
            st.waiters.clear()
        if st.empty() and self._sock_state.get(fd) is st:
            del self._sock_state[fd]

    async def sock_recv(self, sock, n):
        """Receive up to n bytes from sock (non-blocking)."""
        # the usual case's checks and submission in C (sock.c recv_start,
        # decision 320); anything else is the path below
        fut = _recv_start(self, sock, n)
        if fut is None:
            return await self._sock_recv(sock, n)
        if type(fut) is bytes:  # a big receive's inline try found them (678)
            return fut
        try:
            res, data = await fut
        except _CancelledError:
            if fut._convert is _ready_result:  # a poll (675): nothing to keep
                self._sock_ready_end(fut._fd)
                raise
            if _big_recvs and n > self._sock_bufsize:  # big: C noted it in _big_recvs
                _big_recvs.pop(fut._fd, None)
            self._sock_on_cancel(fut, fut._fd, sock, _recv_result, True)
            raise
        if _big_recvs and n > self._sock_bufsize:
            if fut._convert is _ready_result:  # C waited for readiness (675)
                data = self._sock_polled(fut._fd, sock, n, res)
                if data is None:  # nothing there after all: wait again
                    data = await self._sock_recv_ready(fut._fd, sock, n)
                return data
            if _big_recvs.pop(fut._fd, None) == fut._ud and res == self._sock_bufsize:
                data = self._sock_recv_after(fut._fd, sock, data, n - res)
                return self._sock_big_done(fut._fd, sock, n, data)
        if res < 0:
            raise self._sock_error(res, sock)
        return data if data is not None else b""

    async def _sock_recv(self, sock, n):
        fd = self._sock_fd(sock)
        if _big_recvs and _big_recvs.get(fd) is _POLLING:
            self._sock_behind(fd, sock)
        if type(n) is not int:
            n = _index(n)  # the socket module's TypeError (decision 421)
        if n < 0:
            raise ValueError("negative buffersize in recv")
        if fd in self._sock_state:
            st = await self._sock_settled(fd, sock)
            if st is not None and st.error is not None and not st.data:
                exc, st.error = st.error, None
                if st.empty():
                    del self._sock_state[fd]
                raise exc
            if st is not None and (st.data or st.datagrams):
                if st.data:
                    out = bytes(st.data[:n])
                    del st.data[:n]
                else:  # a datagram socket: one datagram, what does not fit is lost
                    out = st.datagrams.popleft()[0][:n]
                if st.empty():
                    del self._sock_state[fd]
                return out
        if n == 0:
            return b""
        big = 0
        if n > self._sock_bufsize:
            if _sock_type(sock) == _SOCK_DGRAM:
                # a datagram comes whole or not at all: never through a pool
                # buffer smaller than it may be
                data, _addr = await self._sock_recv_datagram(fd, sock, n)
                return data
            ref = _big_socks.get(fd)
            # not while a receive asked before waits in the engine: it goes
            # first (decision 689), so this one takes its turn there too
            if (
                ref is not None and ref() is sock and fd not in _big_recvs
                and not self._engine.recv_busy(fd)
            ):
                if fd not in _wide_socks:
                    # the last one filled its n: the stock loop's first try, a
                    # recv(n) straight into the result (no pool buffer, no
                    # copy); not while a big receive is in flight (it reads on)
                    data = _recv_now(fd, n)
                    if data is not None:
                        return self._sock_big_done(fd, sock, n, data)
                elif n <= _READY_MAX:  # the last one came big, short of n (675)
                    return await self._sock_recv_ready(fd, sock, n)
            big, n = n, 0  # a pool buffer's worth first, the rest below
        fut = self._sock_op(fd, sock, _recv_result)
        fut._ud = self._engine.recv(fd, fut, multishot=False, nbytes=n)
        if big or _big_recvs:
            ud = _big_recv(fd, big, fut._ud)
        try:  # _sock_await inlined: this is the hottest await of all
            res, data = await fut
        except _CancelledError:
            if big:
                _big_recvs.pop(fd, None)
            self._sock_on_cancel(fut, fd, sock, _recv_result, True)
            raise
        if big and _big_recvs.pop(fd, None) == ud and res == self._sock_bufsize:
            data = self._sock_recv_after(fd, sock, data, big - res)
            return self._sock_big_done(fd, sock, big, data)
        if res < 0:
            raise self._sock_error(res, sock)
        return data if data is not None else b""

    def _sock_recv_datagram(self, fd, sock, n):
        """recvmsg of one datagram of up to n bytes into a buffer of our own;
        awaits (bytes, address)."""
        buf = bytearray(n) if n <= _BIG_DGRAM else mmap.mmap(-1, min(n, _U32_MAX))
        convert = functools.partial(_from_result, buf)
        fut = self._sock_op(fd, sock, convert)
        fut._ud = self._engine.recvmsg(fd, buf, fut, sock.family)
        return self._sock_await(fut, convert, fd, sock)

    async def sock_recv_into(self, sock, buf):
        """Receive into buf; returns the number of bytes received."""
        fut = _recv_start(self, sock, buf)  # as in sock_recv (decision 320)
        if fut is None:
            return await self._sock_recv_into(sock, buf)
        # pins buf (a bytearray cannot be resized) until the await ends, as below
        view = memoryview(buf).cast("B")
        try:
            res, data = await fut
        except _CancelledError:
            self._sock_on_cancel(fut, fut._fd, sock, _recv_result, True)
            raise
        if res < 0:
            raise self._sock_error(res, sock)
        if data:
            view[:res] = data
        return res

    async def _sock_recv_into(self, sock, buf):
        fd = self._sock_fd(sock)
        if _big_recvs and _big_recvs.get(fd) is _POLLING:
            self._sock_behind(fd, sock)
        try:
            view = memoryview(buf)
            if not view.readonly:
                view = view.cast("B")  # TypeError when not contiguous
        except TypeError:
            view = None
        if view is None or view.readonly:
            _refuse(sock.recv_into, buf)
        n = view.nbytes
        if fd in self._sock_state:
            st = await self._sock_settled(fd, sock)
            if st is not None and st.error is not None and not st.data:
                exc, st.error = st.error, None
                if st.empty():
                    del self._sock_state[fd]
                raise exc
            if st is not None and (st.data or st.datagrams):
                if st.data:
                    k = min(n, len(st.data))
                    view[:k] = st.data[:k]
                    del st.data[:k]
                else:
                    data = st.datagrams.popleft()[0]
                    k = min(n, len(data))
                    view[:k] = data[:k]
                if st.empty():
                    del self._sock_state[fd]
                return k
        if n == 0:
            return 0
        big = 0
        if n > self._sock_bufsize:
            if _sock_type(sock) == _SOCK_DGRAM:
                data, _addr = await self._sock_recv_datagram(fd, sock, n)
                view[: len(data)] = data
                return len(data)
            big, n = n, 0  # a pool buffer's worth first, the rest below
        convert = functools.partial(_into_result, view)
        fut = self._sock_op(fd, sock, convert)
        fut._ud = self._engine.recv(fd, fut, multishot=False, nbytes=n)
        if big or _big_recvs:
            ud = _big_recv(fd, big, fut._ud)
        if not big:
            return await self._sock_await(fut, convert, fd, sock)
        try:
            res = await self._sock_await(fut, convert, fd, sock)
        finally:
            mine = _big_recvs.pop(fd, None) == ud
        if mine and res == self._sock_bufsize:
            res += self._sock_recv_more(fd, sock, view[res:])
        return res

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize bytes; returns (data, address)."""
        fd = self._sock_fd(sock)
        if _big_recvs and _big_recvs.get(fd) is _POLLING:
            self._sock_behind(fd, sock)
        if type(bufsize) is not int:
            bufsize = _index(bufsize)  # the socket module's TypeError
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        datagram = await self._sock_next_datagram(fd, sock)
        if datagram is not None:
            data, addr = datagram
            return data[:bufsize], addr
        return await self._sock_recv_datagram(fd, sock, bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf; returns (nbytes, address)."""
        fd = self._sock_fd(sock)
        if _big_recvs and _big_recvs.get(fd) is _POLLING:
            self._sock_behind(fd, sock)
        if not nbytes:
            len(buf)  # the stock loop's first step, and its TypeError (decision 421)
        elif type(nbytes) is not int:
            nbytes = _index(nbytes)
        try:
            view = memoryview(buf)
            if not view.readonly:
                view = view.cast("B")
        except TypeError:
            view = None
        if view is None or view.readonly:
            _refuse(sock.recvfrom_into, buf)
        if nbytes < 0:
            raise ValueError("negative buffersize in recvfrom_into")
        if nbytes > view.nbytes:
            raise ValueError("nbytes is greater than the length of the buffer")
        size = nbytes or view.nbytes
        datagram = await self._sock_next_datagram(fd, sock)
        if datagram is not None:
            data, addr = datagram
            k = min(size, len(data))
            view[:k] = data[:k]
            return k, addr
        tmp = bytearray(size)
        convert = functools.partial(_from_into_result, tmp, view)
        fut = self._sock_op(fd, sock, convert)
        fut._ud = self._engine.recvmsg(fd, tmp, fut, sock.family)
        return await self._sock_await(fut, convert, fd, sock)

    async def _sock_next_datagram(self, fd, sock):
        if fd not in self._sock_state:
            return None
        st = await self._sock_settled(fd, sock)
        if st is None or not st.datagrams:
            return None
        datagram = st.datagrams.popleft()
        if st.empty():
            del self._sock_state[fd]
        return datagram

    # -------------------------------------------------------------- send

    async def sock_sendall(self, sock, data):
        """Send all of data; returns None once the kernel has taken it."""
        # the checks and the first send(2) in C (sock.c send_now, decision 321)
        sent = _send_now(self, sock, data)
        if sent is None:
            return None
        return await self._sock_sendall(sock, data, sent)

    async def _sock_sendall(self, sock, data, sent):
        """sock_sendall after send_now: sent bytes went out (-1: none tried)."""
        fd = self._sock_fd(sock)
        sending = self._sock_sending  # per socket object, not per fd number
        if sent >= 0:
            data = memoryview(data).cast("B")[sent:]
        elif not sending.get(sock):
            # Nothing of ours is queued on fd: one plain non-blocking send, as the
            # stock loop does. Usually it takes everything and no loop turn is
            # needed; the rest goes to the engine's ordered queue.
            try:
                n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n == len(data):
                return None
            data = memoryview(data)[n:]
        if len(data) > _SEND_CHUNK:
            return await self._sock_sendall_chunks(fd, sock, memoryview(data).cast("B"))
        if type(data) is not bytes:
            data = memoryview(data).tobytes()  # the caller may reuse a mutable buffer
        if not data:
            return None
        fut = self._sock_op(fd, sock, _none_result, track=False)
        fut._ud = self._engine.send(fd, data, fut)
        sending[sock] = sending.get(sock, 0) + 1
        try:
            res, short = await fut
        except _CancelledError:
            self._sock_on_cancel(fut, fd, sock, _none_result, False)
            raise
        finally:
            self._sending_done(sock)
        if res < 0:
            raise self._sock_error(res, sock)
        if short is not None:
            raise self._sock_short(res, short, len(data), sock)
        return None

    def _sock_short(self, res, short, n, sock):
        """A send stopped after res of n bytes (UL_F_SHORT): short is -errno,
        or 0 when the kernel took no more without saying why."""
        if short:
            return self._sock_error(short, sock)
        return OSError(errno.EIO, f"the kernel took {res} of {n} bytes")

    def _sending_done(self, sock, k=1):
        sending = self._sock_sending
        left = sending.get(sock, 0) - k
        if left > 0:
            sending[sock] = left
        else:
            sending.pop(sock, None)

    async def _sock_sendall_chunks(self, fd, sock, view):
        """More than one engine send can carry: all chunks are queued at once
        (the engine keeps their order) as views of the caller's buffer; a copy
        of gigabytes would cost more than the send. The caller must not change
        the buffer until the await ends (the stock loop has the same rule)."""
        futs = []
        try:
            for start in range(0, len(view), _SEND_CHUNK):
                chunk = view[start : start + _SEND_CHUNK]
                fut = self._sock_op(fd, sock, _none_result, track=False)
                fut._ud = self._engine.send(fd, chunk, fut)
                futs.append((fut, len(chunk)))
                self._sock_sending[sock] = self._sock_sending.get(sock, 0) + 1
            for fut, n in futs:
                res, short = await fut
                if res < 0:
                    raise self._sock_error(res, sock)
                if short is not None:
                    raise self._sock_short(res, short, n, sock)
        finally:
            for fut, _n in futs:
                fut.cancel()  # nothing when done; a queued rest goes at once
            self._sending_done(sock, len(futs))
        return None

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to address; returns the number of bytes sent."""
        fd = self._sock_fd(sock)
        if type(data) is not bytes:
            try:
                data = memoryview(data).tobytes()
            except TypeError:
                sock.sendto(data, address)  # its TypeError, before any I/O (decision 421)
                raise
        try:
            encode_sockaddr(sock.family, address)
        except (OSError, ValueError, TypeError):
            # not a numeric address of sock's family: let the socket module
            # resolve it or raise exactly what the stock loop raises
            while True:
                try:
                    return sock.sendto(data, address)
                except (BlockingIOError, InterruptedError):
                    await self._sock_writable(fd)
        fut = self._sock_op(fd, sock, _count_result, track=False)
        fut._ud = self._engine.sendmsg(fd, data, address, fut, sock.family)
        return await self._sock_await(fut, _count_result, fd, sock, track=False)

    # ----------------------------------------------------- connect/accept

    async def sock_connect(self, sock, address):
        """Connect sock to address (resolved as the stock loop does)."""
        fd = self._sock_fd(sock)
        if sock.family == socket.AF_INET or (
            socket.has_ipv6 and sock.family == socket.AF_INET6
        ):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            _, _, _, _, address = resolved[0]
        try:
            encode_sockaddr(sock.family, address)
        except (OSError, ValueError, TypeError, OverflowError):
            # not an address we can encode (a port out of range, say): the
            # socket module's own connect() raises what the stock loop raises
            return await self._sock_connect_plain(fd, sock, address)
        fut = self.create_future()

        def done(res, more, data):
            if fut is None or fut.done():
                return
            if res < 0:
                # the stock loop's words: an error that connect() itself
                # returns says strerror (a unix connect's every error, and
                # the errors an inet connect finds before the handshake); an
                # inet connect that fails later, through SO_ERROR, says
                # "Connect call failed"
                sync = sock.family == socket.AF_UNIX or -res in _CONNECT_SYNC_ERRORS
                what = None if sync else f"Connect call failed {address}"
                fut.set_exception(_error(res, what))
            else:
                fut.set_result(None)

        if not _owner_is(self._sock_owner, fd, sock):
            self._sock_claim(fd, sock, self._sock_owner.get(fd))
        ud = self._engine.connect(fd, sock.family, address, done)
        # the stock loop calls connect() in this very step: the connection is
        # under way before the caller's next statement, and code relies on that
        self._engine.flush()
        try:
            return await fut
        except _CancelledError:
            if not self._engine.closed:
                self._engine.cancel(ud)
            raise
        finally:
            # as the stock loop does: a failed connect's traceback keeps this
            # frame, and the frame (through done's cell) must not keep the
            # future, which keeps the exception: a reference cycle that kept
            # the error alive until the collector ran (decision 437). A late
            # completion (after a cancel) finds None and is dropped.
            fut = None

    async def _sock_connect_plain(self, fd, sock, address):
        """The stock loop's connect, for addresses the engine cannot take."""
        try:
            sock.connect(address)
            return None
        except (BlockingIOError, InterruptedError):
            pass
        await self._sock_writable(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"Connect call failed {address}")
        return None

    async def sock_accept(self, sock):
        """Accept a connection; returns (conn, address) with conn non-blocking."""
        fd = self._sock_fd(sock)
        if fd in self._sock_state:
            st = await self._sock_settled(fd, sock)
            if st is not None and st.accepted:
                pair = st.accepted.popleft()
                if st.empty():
                    del self._sock_state[fd]
                return pair
        convert = functools.partial(_accept_result, sock.family, sock.type, sock.proto)
        fut = self._sock_op(fd, sock, convert)
        fut._ud = self._engine.accept(fd, fut, multishot=False)
        return await self._sock_await(fut, convert, fd, sock)

    # ---------------------------------------------------------- sendfile

    async def _sock_sendfile_native(self, sock, file, offset, count):
        try:
            fileno = file.fileno()
        except (AttributeError, OSError) as exc:
            raise exceptions.SendfileNotAvailableError("not a regular file") from exc
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # empty file
        # One sendfile(2) now, each next one where the stock loop's writer
        # callback (_sock_sendfile_native_impl) makes it (decision 858): in
        # the turn the socket is found writable, not a turn later in the
        # resumed task, after the turn's other callbacks (a hook that closes
        # the transport) ran; from the poll's record, or from a handle placed
        # where stock's select queues its writer when callbacks _ready held
        # come first (decision 890). A sendfile(2) that sent something is
        # followed by that wait, the last too (decision 614).
        fd = sock.fileno()
        fut = self.create_future()
        engine = self._engine
        total = 0
        ud = 0  # the writability poll in flight, 0 when none
        token = 0  # which poll's record ready() waits for (stale ones dropped)
        queued = None  # the writer's handle in _ready, and the poll's result
        aborted = False  # an abort() closed the socket while it was not writable
        behind = False  # the poll's record goes behind its batch's records (932)
        uring = engine.backend == "io_uring"

        def end(exc=None):
            # the file's position after the bytes sent, then the result
            if total > 0:
                try:
                    os.lseek(fileno, offset, os.SEEK_SET)
                except OSError as err:
                    exc = exc or err
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(total)

        def wait():
            nonlocal ud, token, behind
            token += 1
            mine = token
            # Decision 932: where stock's add_writer finds the socket
            # writable, its select reports the writer behind the fds whose
            # readiness came before (epoll's ready list: the peer's bytes
            # this sendfile(2) sent, a send of the turn). io_uring completes
            # the poll at its submission, ahead of the completions the
            # kernel holds as deferred work then (ready_now), which the
            # same enter posts after it: its writer then runs behind the
            # batch's records, as an add_writer callback's handle does.
            behind = uring and engine.ready_now() and _writable_now(fd)
            try:
                ud = engine.poll(fd, 0x004, lambda res, more, data: ready(mine, res))  # POLLOUT
            except Exception as exc:
                end(exc)

        def step(again):
            nonlocal offset, total
            size = min(count - total, _SENDFILE_CHUNK) if count else _SENDFILE_CHUNK
            if size <= 0:
                end()
                return
            try:
                if sock.fileno() != fd:
                    # closed under the sendfile (decision 859): fd may name
                    # another file by now. The stock loop's sock.fileno() is
                    # -1 then, and its sendfile(2) on -1 fails so
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                sent = os.sendfile(fd, fileno, offset, size)
            except (BlockingIOError, InterruptedError):
                wait()
                return
            except OSError as exc:
                if again and exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                    # stock's normalisation after the first call (decision 891)
                    err = ConnectionError("socket is not connected", errno.ENOTCONN)
                    err.__cause__ = exc
                    exc = err
                if total == 0:
                    err = exceptions.SendfileNotAvailableError("os.sendfile call failed")
                    err.__cause__ = exc
                    end(err)
                else:
                    end(exc)
                return
            if sent == 0:
                end()  # end of file
                return
            offset += sent
            total += sent
            wait()

        def ready(mine, res):
            nonlocal ud, queued
            if mine != token or fut is None:
                return  # stale, or the task has ended
            ud = 0
            if res < 0 and aborted and sock.fileno() != fd and _writable_now(fd, True):
                # the poll an abort() cancelled, the socket writable now
                # and not closed yet (its close(2) waits for
                # _call_connection_lost): stock's writer, still registered,
                # is queued by this select, behind that close (decision 892)
                res = 0x004
            if behind or loop._sched_ahead():
                # stock's writer handle runs behind what _ready held at its
                # select (and before what this batch's callbacks schedule):
                # placed there, as an add_writer callback is (decision 890);
                # behind the batch's records that came before it (932)
                h = loop.call_soon(writer, res)
                loop._sched_io_place(h, True)
                queued = (h, res)
                return
            writer(res)

        def writer(res):
            # stock's _sock_sendfile_native_impl run by its writer callback
            nonlocal queued
            queued = None
            if fut is None:
                return
            if fut.cancelled():
                # cancelled by a callback that ran ahead of the writer in
                # its turn: stock's impl sets the file's position and returns
                if total > 0:
                    os.lseek(fileno, offset, os.SEEK_SET)
                return
            if fut.done():
                return
            if res < 0:
                if sock.fileno() == fd:
                    end(_error(res))
                # else the poll the socket's close cancelled: stock's writer
                # went with the fd and its sendfile never ends (decision 892)
                return
            step(True)

        def before_close(removed):
            # the transport closes fd now (decision 860), where the stock
            # loop closes it in _call_connection_lost, after the writer
            # callback its last select queued: if the socket is writable,
            # the next sendfile(2) is made first, as there. removed: the
            # transport's close(), which removes stock's writer (its queued
            # handle too): the sendfile then never ends (decision 892)
            nonlocal ud, queued, token, aborted
            if fut is None or fut.done():
                return
            if removed:
                token += 1  # the poll's record, if any, is dropped
                if queued is not None:
                    queued[0].cancel()
                    queued = None
                if ud:
                    if not engine.closed:
                        engine.cancel(ud)
                    ud = 0
                return
            if queued is not None:
                # stock's writer handle is queued ahead of the
                # _call_connection_lost the close queues (decision 890)
                h, res = queued
                h.cancel()
                writer(res)
                return
            if not ud:
                return
            if not _writable_now(fd):
                aborted = True  # (ready() asks again at the poll's record)
                return
            if not engine.closed:
                engine.cancel(ud)
            ud = 0
            token += 1  # (its record is dropped)
            step(True)

        loop = self
        step(False)
        sendfiling = self._sendfiling
        if not fut.done():
            sendfiling[fd] = before_close
        try:
            return await fut
        except _CancelledError:
            # stock's cancellation callback removes the writer (its queued
            # handle too) and leaves the file's position as it was
            # (decision 891)
            if ud:
                if not engine.closed:
                    engine.cancel(ud)
                ud = 0
            if queued is not None:
                queued[0].cancel()
                queued = None
            raise
        finally:
            if sendfiling.get(fd) is before_close:
                del sendfiling[fd]
            # (as sock_connect's: no cycle through the error; a late record
            # after a cancel finds None)
            fut = None

    async def _sock_writable(self, fd):
        fut = self.create_future()

        def done(res, more, data):
            if not fut.done():
                if res < 0:
                    fut.set_exception(_error(res))
                else:
                    fut.set_result(None)

        ud = self._engine.poll(fd, 0x004, done)  # POLLOUT
        try:
            await fut
        except _CancelledError:
            if not self._engine.closed:
                self._engine.cancel(ud)
            raise


def _writable_now(fd, open_only=False):
    """fd polls writable (or in error, which the stock selector's write
    interest reports too) at this moment: one poll(2), no wait. open_only:
    not for a closed fd (POLLNVAL)."""
    p = select.poll()
    p.register(fd, select.POLLOUT)
    ready = p.poll(0)
    if open_only:
        return any(ev & ~select.POLLNVAL for _, ev in ready)
    return bool(ready)


# A stream receive asked for more than a pool buffer and the buffer came back
# full: the stock loop's recv(n) would have returned up to n bytes of what is
# there, so read the rest of what is there now, without waiting. Only when no
# receive on the socket was asked for after this one (_big_recvs): such a
# receive may hold bytes that came before these. EOF met here is met again by
# the next receive; an error is taken from the kernel by reading it, so the
# socket keeps it for its next receive (SockMixin._sock_recv_after for
# sock_recv, _sock_recv_more for sock_recv_into).



# fd -> user_data of the stream receive above a pool buffer in flight there,
# None once another receive was asked for on fd after it (it may then no longer
# read on: _sock_recv_more). Process-wide, keyed by fd (a socket is one loop's
# at a time; a clash only makes a receive return less): a module global is
# the cheapest test for the receives that are not big (the dict is empty).
_big_recvs: dict = {}

# fd -> a weak reference to the socket whose last stream receive above a
# pool buffer filled its n (more is likely waiting): its next such receive
# first tries one recv(n) into its result, as the stock loop's sock_recv does
# (decision 351), and so does not start in C (sock.c recv_start). Only that
# socket's receives are concerned: an entry left by a socket since closed
# (its number reused, perhaps by another loop's socket) names no live socket
# and changes nothing.
_big_socks: dict = {}

# fds in _big_socks whose socket's last big receive brought more than a pool
# buffer and less than its n: the next one waits for readiness, then receives
# into its result (SockMixin._sock_recv_ready, decision 675)
_wide_socks: set = set()

# _big_recvs' value for fd while such a receive waits for readiness there:
# sock.c's recv_start leaves any receive on fd to sock.py then, whose paths
# hold it behind the waiting one (_behind: fd -> the socket state holding them)
_POLLING = object()
_behind: dict = {}


def _refuse(method, buf):
    """Raise what the socket module's recv_into/recvfrom_into raises for a
    buffer it cannot write into (read-only, not contiguous, not a buffer):
    its argument check comes before any I/O, and MSG_PEEK|MSG_DONTWAIT
    would leave the socket as it is if it ever let buf through."""
    method(buf, 0, socket.MSG_PEEK | _MSG_DONTWAIT)
    raise TypeError(f"{method.__name__}() argument 1 must be read-write bytes-like object")


def _big_recv(fd, big, ud):
    if fd in _big_recvs:
        _big_recvs[fd] = None
    if big:
        _big_recvs[fd] = ud
    return ud


# Result converters: (res, data, late) -> the await's value, or, when late, what
# the socket keeps for its next receive/accept (kind, value).


def _ready_result(res, data, late):
    # a wide receive's poll (decision 675): it brings no byte; it marks the op
    return ("data", b"") if late else None


def _recv_result(res, data, late):
    data = data if data is not None else b""
    return ("data", data) if late else data


def _into_result(view, res, data, late):
    if late:
        return ("data", data or b"")
    view[:res] = data if data is not None else b""
    return res


def _from_result(buf, res, addr, late):
    value = (bytes(buf[:res]), addr)
    return ("datagram", value) if late else value


def _from_into_result(tmp, view, res, addr, late):
    if late:
        return ("datagram", (bytes(tmp[:res]), addr))
    view[:res] = tmp[:res]
    return res, addr


def _none_result(res, data, late):
    return None


def _count_result(res, data, late):
    return res


def _accept_result(family, type, proto, res, data, late):
    # what socket.accept() builds (the listener's family, type and proto), with
    # SOCK_NONBLOCK saying the fd already is non-blocking (accept4 made it so):
    # no probing getsockopt, no fcntl
    conn = socket.socket(family, type | socket.SOCK_NONBLOCK, proto, fileno=res)
    if data is not None:
        addr = data  # what accept(2) said (decision 422)
    else:  # the engine had no room for the address
        try:
            addr = conn.getpeername()
        except OSError:
            addr = ""
    return ("accept", (conn, addr)) if late else (conn, addr)


def setup_native():
    """Hand sock.c what its hot steps need (once _sched.setup knows _OpFuture);
    two probe sockets let it check that it reads a socket's fd and timeout
    in place correctly (else it leaves every call to the Python path)."""
    try:
        a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:  # no sockets here (a sandbox): the steps stay off
        return False
    try:
        b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        a.close()
        return False
    try:
        a.setblocking(False)
        b.settimeout(2.5)
        return _sched.sock_setup(
            socket.socket, _big_recvs, _big_socks, _recv_result, a, b,
            _wide_socks, _POLLING, _ready_result,
        )
    finally:
        a.close()
        b.close()
