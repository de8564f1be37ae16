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

import asyncio
import collections
import errno
import functools
import os
import socket
import weakref
from asyncio import exceptions

from .engine import encode_sockaddr

_CancelledError = asyncio.CancelledError
_SENDFILE_CHUNK = 1 << 30


try:
    from ssl import SSLSocket as _SSLSocket
except ImportError:  # Python built without ssl
    _SSLSocket = ()


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

    __slots__ = ("sockref", "pending", "waiters", "data", "datagrams", "accepted")

    def __init__(self, sock):
        self.sockref = weakref.ref(sock)
        self.pending = 0  # cancelled ops whose final record is still to come
        self.waiters: list = []
        self.data = bytearray()
        self.datagrams: collections.deque = collections.deque()
        self.accepted: collections.deque = collections.deque()

    def empty(self) -> bool:
        return not (self.pending or self.data or self.datagrams or self.accepted)


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
        # the WeakValueDictionary's own dict is read first: no Python frame
        if fd in self._transports.data:
            self._ensure_fd_no_transport(fd)
        return fd

    def _sock_get_state(self, fd, sock, create=False):
        st = self._sock_state.get(fd)
        if st is not None and st.sockref() is not sock:
            del self._sock_state[fd]  # the number now belongs to another socket
            st = None
        if st is None and create:
            st = self._sock_state[fd] = _SockState(sock)
        return st

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
        if st is None:  # the socket is gone: nobody can receive this
            if res >= 0 and convert is _accept_result:
                os.close(res)
            return
        if res >= 0:
            self._sock_keep(fd, sock, convert(res, data, True))
        st.pending -= 1
        if not st.pending:
            for w in st.waiters:
                if not w.done():
                    w.set_result(None)
            st.waiters.clear()
        if st.empty():
            del self._sock_state[fd]

    def _sock_op(self, fd, sock, convert, track=True):
        """The future (and engine callback) of a sock_* op about to start; the
        caller sets its ``_ud`` once the engine has the op."""
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
                self._sock_keep(fd, sock, convert(res, data, True))

    async def _sock_await(self, fut, convert, fd, sock, track=True):
        try:
            res, data = await fut
        except _CancelledError:
            self._sock_on_cancel(fut, fd, sock, convert, track)
            raise
        if res < 0:
            raise _error(res)
        return convert(res, data, False)

    # ----------------------------------------------------------- receive

    async def sock_recv(self, sock, n):
        """Receive up to n bytes from sock (non-blocking)."""
        fd = self._sock_fd(sock)
        if n < 0:
            raise ValueError("negative buffersize in recv")
        if fd in self._sock_state:
            st = await self._sock_settled(fd, sock)
            if st is not None and st.data:
                out = bytes(st.data[:n])
                del st.data[:n]
                if st.empty():
                    del self._sock_state[fd]
                return out
        if n == 0:
            return b""
        fut = self._sock_op(fd, sock, _recv_result)
        fut._ud = self._engine.recv(fd, fut, multishot=False, nbytes=n)
        try:  # _sock_await inlined: this is the hottest await of all
            res, data = await fut
        except _CancelledError:
            self._sock_on_cancel(fut, fd, sock, _recv_result, True)
            raise
        if res < 0:
            raise _error(res)
        return data if data is not None else b""

    async def sock_recv_into(self, sock, buf):
        """Receive into buf; returns the number of bytes received."""
        fd = self._sock_fd(sock)
        try:
            view = memoryview(buf)
        except TypeError:
            view = None
        if view is None or view.readonly:
            raise TypeError(
                f"recv_into() argument 'buffer' must be read-write bytes-like object, "
                f"not {type(buf).__name__}"
            )
        view = view.cast("B")
        n = view.nbytes
        if fd in self._sock_state:
            st = await self._sock_settled(fd, sock)
            if st is not None and st.data:
                k = min(n, len(st.data))
                view[:k] = st.data[:k]
                del st.data[:k]
                if st.empty():
                    del self._sock_state[fd]
                return k
        if n == 0:
            return 0
        convert = functools.partial(_into_result, view)
        fut = self._sock_op(fd, sock, convert)
        fut._ud = self._engine.recv(fd, fut, multishot=False, nbytes=n)
        return await self._sock_await(fut, convert, fd, sock)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize bytes; returns (data, address)."""
        fd = self._sock_fd(sock)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        datagram = await self._sock_next_datagram(fd, sock)
        if datagram is not None:
            data, addr = datagram
            return data[:bufsize], addr
        buf = bytearray(bufsize)
        convert = functools.partial(_from_result, buf)
        fut = self._sock_op(fd, sock, convert)
        fut._ud = self._engine.recvmsg(fd, buf, fut, sock.family)
        return await self._sock_await(fut, convert, fd, sock)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf; returns (nbytes, address)."""
        fd = self._sock_fd(sock)
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise TypeError(
                "recvfrom_into() argument 'buffer' must be read-write bytes-like object"
            )
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
        fd = self._sock_fd(sock)
        sending = self._sock_sending
        if not sending.get(fd):
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
        if type(data) is not bytes:
            data = memoryview(data).tobytes()  # the caller may reuse a mutable buffer
        if not data:
            return None
        fut = self._sock_op(fd, sock, _none_result, track=False)
        fut._ud = self._engine.send(fd, data, fut)
        sending[fd] = sending.get(fd, 0) + 1
        try:
            res, short = await fut
        except _CancelledError:
            self._sock_on_cancel(fut, fd, sock, _none_result, False)
            raise
        finally:
            left = sending[fd] - 1
            if left:
                sending[fd] = left
            else:
                del sending[fd]
        if res < 0:
            raise _error(res)
        if short is not None:
            # the send stopped after res bytes (UL_F_SHORT): short is -errno, or
            # 0 when the kernel took no more without saying why
            if short:
                raise _error(short)
            raise OSError(errno.EIO, f"the kernel took {res} of {len(data)} bytes")
        return None

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to address; returns the number of bytes sent."""
        fd = self._sock_fd(sock)
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
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
        fut = self.create_future()

        def done(res, more, data):
            if fut.done():
                return
            if res < 0:
                # the stock loop's words: a unix connect fails in connect()
                # itself (strerror); an inet one later, through SO_ERROR
                what = None if sock.family == socket.AF_UNIX else f"Connect call failed {address}"
                fut.set_exception(_error(res, what))
            else:
                fut.set_result(None)

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
        fut = self._sock_op(fd, sock, _accept_result)
        fut._ud = self._engine.accept(fd, fut, multishot=False)
        return await self._sock_await(fut, _accept_result, fd, sock)

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
        fd = sock.fileno()
        total = 0
        try:
            while True:
                size = min(count - total, _SENDFILE_CHUNK) if count else _SENDFILE_CHUNK
                if size <= 0:
                    break
                try:
                    sent = os.sendfile(fd, fileno, offset, size)
                except (BlockingIOError, InterruptedError):
                    await self._sock_writable(fd)
                    continue
                except OSError as exc:
                    if total == 0:
                        raise exceptions.SendfileNotAvailableError(
                            "os.sendfile call failed"
                        ) from exc
                    raise
                if sent == 0:
                    break  # end of file
                offset += sent
                total += sent
        finally:
            if total > 0:
                os.lseek(fileno, offset, os.SEEK_SET)
        return total

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


# Result converters: (res, data, late) -> the await's value, or, when late, what
# the socket keeps for its next receive/accept (kind, value).


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


def _accept_result(res, data, late):
    conn = socket.socket(fileno=res)
    conn.setblocking(False)
    try:
        addr = conn.getpeername()
    except OSError:
        addr = ""
    return ("accept", (conn, addr)) if late else (conn, addr)
