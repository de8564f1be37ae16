"""The completion engine, seen from Python.

This is the only module that touches cffi. An :class:`Engine` takes operations
and hands back completions through callbacks ``cb(res, more, data)``:

* ``res`` is the result (``>= 0``) or ``-errno``;
* ``more`` is True while the operation lives on (multishot recv/accept, level
  polls); the call with ``more=False`` is the op's final one;
* ``data`` is the received ``bytes`` for pool receives, the peer address for
  ``recvmsg``, else None.

Ownership: every submission takes a slot. The slot keeps every Python object
the kernel may read or write (buffers, encoded addresses) until the op's final
record, cancelled ops included; user_data is ``slot | generation << 32``.
See docs/design.md for the whole contract.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import warnings
import weakref

from . import _sched
from ._engine_cffi import ffi, lib

__all__ = [
    "Engine",
    "backend_info",
    "OPT_NO_MULTISHOT",
    "OPT_NO_BUFRING",
    "OPT_NO_DEFER",
    "OPT_NO_CANCEL_FD",
    "OPT_NO_BUNDLE",
    "OPT_RECV_LIMIT",
    "OPT_TEST_EAGAIN",
    "OPT_GUARD",
    "OPT_TEST_NOBUF",
    "OPT_TEST_FALLBACKS",
    "RECV_WAIT_FIRST",
    "RECV_DRAINED",
    "POLL_KEPT",
    "POLL_DRAINED",
]

OPT_NO_MULTISHOT = lib.UL_OPT_NO_MULTISHOT
OPT_NO_BUFRING = lib.UL_OPT_NO_BUFRING
OPT_NO_DEFER = lib.UL_OPT_NO_DEFER
OPT_NO_CANCEL_FD = lib.UL_OPT_NO_CANCEL_FD
OPT_NO_BUNDLE = lib.UL_OPT_NO_BUNDLE
# a stream's multishot receive takes the kernel's total byte limit (6.16+) where
# the probe finds it (decision 924); asked for only (decision 945): without it the
# receive runs until cancelled, as where the kernel has no such limit
OPT_RECV_LIMIT = lib.UL_OPT_RECV_LIMIT
# test only: an op's first issue completes with EAGAIN (a connect with
# EINPROGRESS), so the readiness-retry paths run on kernels that never take them
OPT_TEST_EAGAIN = lib.UL_OPT_TEST_EAGAIN
# test only: every fallback forced plus the EAGAIN paths (the tests' and the
# tools' io_uring-fallbacks kind)
OPT_TEST_FALLBACKS = (
    OPT_NO_MULTISHOT
    | OPT_NO_BUFRING
    | OPT_NO_DEFER
    | OPT_NO_CANCEL_FD
    | OPT_NO_BUNDLE
    | OPT_TEST_EAGAIN
)
# pool guard mode (also URINGLOOP_GUARD=1): unowned pool buffers are PROT_NONE
OPT_GUARD = lib.UL_OPT_GUARD
# test only (io_uring): pool receives complete with data but no buffer id, so
# the engine's guard for a kernel that breaks buffer selection runs
OPT_TEST_NOBUF = lib.UL_OPT_TEST_NOBUF
# recv_into's flags: a read of the fd just came short, so the receive waits
# for data before it tries (a hint; decision 389)
RECV_WAIT_FIRST = lib.UL_RECV_WAIT_FIRST
# ... from an owner that keeps the fd open until the record: epoll waits on
# the fd's registration as it is, no epoll_ctl (decision 391)
RECV_DRAINED = lib.UL_RECV_DRAINED
# poll(level=POLL_KEPT): a level poll whose owner keeps the fd open (engine.h)
POLL_KEPT = lib.UL_POLL_KEPT
# poll(level=POLL_DRAINED): one record, from an owner that keeps the fd open
# and has just read it until a read came short (engine.h; decision 391)
POLL_DRAINED = lib.UL_POLL_DRAINED
# poll(level=POLL_MULTI): a record (more) each time the fd may have become
# ready, until cancelled; io_uring: one multishot POLL_ADD (decision 765)
POLL_MULTI = lib.UL_POLL_MULTI

_BACKENDS = {
    "auto": lib.UL_BACKEND_AUTO,
    "io_uring": lib.UL_BACKEND_URING,
    "epoll": lib.UL_BACKEND_EPOLL,
}
_U32 = 0xFFFFFFFF
_I32 = 0x7FFFFFFF

# The C functions _sched.Table calls directly (their addresses, taken once).
_ENTRY_POINTS = tuple(
    int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
    for name in ("ul_run_turn", "ul_nop", "ul_recv", "ul_send", "ul_sendv", "ul_accept",
                 "ul_shutdown", "ul_close_fd", "ul_cancel", "ul_cancel_fd", "ul_wake", "ul_ready",
                 "ul_recv_into", "ul_poll", "ul_op_known", "ul_recv_busy", "ul_close_release")
)

# Engine methods that are the C table's own (bound per instance in __init__)
_HOT = ("nop", "recv", "read_pool", "send", "sendv", "accept", "shutdown", "close_fd", "cancel",
        "cancel_fd", "wake")

# Every open engine, so that a fork()ed child can forget its copies (below).
_live: weakref.WeakSet = weakref.WeakSet()

# Objects of engines whose ops never completed (close() timed out): the kernel
# may still own their buffers, so they are kept alive for the process lifetime.
_graveyard: list = []


def _env_backend() -> tuple[str, bool]:
    value = os.environ.get("URINGLOOP_BACKEND", "").strip().lower()
    if not value:
        return "auto", False
    if value == "uring":
        value = "io_uring"
    if value not in _BACKENDS:
        raise ValueError(
            f"URINGLOOP_BACKEND={value!r} is not one of 'io_uring', 'epoll', 'auto'"
        )
    return value, True


def _check_fd(fd) -> int:
    if not isinstance(fd, int):
        raise TypeError(f"file descriptor must be an int, not {type(fd).__name__}")
    if fd < 0:
        raise ValueError(f"invalid file descriptor {fd}")
    if fd > _I32:
        raise ValueError(f"file descriptor {fd} out of range")
    return fd


def _c_int(value, what: str) -> int:
    """A C int, checked before a slot is taken (cffi would raise after)."""
    if not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not -_I32 - 1 <= value <= _I32:
        raise ValueError(f"{what} {value} out of range")
    return value


def _c_offset(offset) -> int:
    if not isinstance(offset, int):
        raise TypeError(f"offset must be an int, not {type(offset).__name__}")
    if offset >= 1 << 63:
        raise ValueError(f"offset {offset} out of range")
    return max(offset, -1)


def _read_buffer(data):
    """(pointer-able object, length) for data the kernel will read."""
    if type(data) is bytes:
        if len(data) > _U32:
            raise ValueError("more than 4 GiB in one operation")
        return data, len(data)  # cffi passes bytes to `const char *` without a copy
    view = _view(data, "a bytes-like object is required")
    if not view.c_contiguous:
        raise ValueError("buffer must be contiguous")
    if view.nbytes > _U32:
        raise ValueError("more than 4 GiB in one operation")
    return ffi.from_buffer(view), view.nbytes


def _view(obj, need: str) -> memoryview:
    if isinstance(obj, str):
        raise TypeError(f"{need}, not str")
    try:
        return memoryview(obj)
    except TypeError:
        raise TypeError(f"{need}, not {type(obj).__name__}") from None


def _write_buffer(buf, nbytes: int = 0):
    """(cdata, length) for a buffer the kernel will write."""
    if isinstance(buf, bytes):
        raise TypeError("a writable bytes-like object is required, not bytes")
    view = _view(buf, "a writable bytes-like object is required")
    if view.readonly:
        raise TypeError(
            f"a writable bytes-like object is required, not read-only {type(buf).__name__}"
        )
    if not view.c_contiguous:
        raise ValueError("buffer must be contiguous")
    size = view.nbytes
    if not isinstance(nbytes, int):
        raise TypeError("nbytes must be an int")
    if nbytes < 0:
        raise ValueError("negative buffersize in recv_into")
    if nbytes > size:
        raise ValueError("buffer too small for requested bytes")
    if size > _U32:
        size = _U32
    return ffi.from_buffer(view, require_writable=True), (nbytes or size)


# ---------------------------------------------------------------- sockaddr


def encode_sockaddr(family: int, address) -> bytes:
    """The C ``struct sockaddr`` for a numeric address (no name resolution).

    Only what the socket module itself would take for that family as it is:
    anything else (a list, a port or flowinfo out of range, a zone to look
    up, a path-like object, an int for a Unix path) raises TypeError or
    ValueError, and the sock_* callers hand it to the socket module, which
    resolves it or raises the stock loop's error (decision 420)."""
    if family == socket.AF_INET:
        if type(address) is not tuple or len(address) != 2:
            raise TypeError("not a plain AF_INET address")
        host, port = address
        if type(host) is not str or type(port) is not int or not 0 <= port <= 0xFFFF:
            raise ValueError("not a plain AF_INET address")
        return struct.pack("=HH4s8x", family, socket.htons(port), socket.inet_pton(family, host))
    if family == socket.AF_INET6:
        if type(address) is not tuple or not 2 <= len(address) <= 4:
            raise TypeError("not a plain AF_INET6 address")
        host, port, flowinfo, scope_id = (address + (0, 0))[:4]
        if (
            type(host) is not str
            or "%" in host  # a zone: getaddrinfo's to look up
            or any(type(v) is not int for v in (port, flowinfo, scope_id))
            or not 0 <= port <= 0xFFFF
            or not 0 <= flowinfo <= 0xFFFFF
            or not 0 <= scope_id <= 0xFFFFFFFF
        ):
            raise ValueError("not a plain AF_INET6 address")
        return struct.pack(
            "=HHI16sI",
            family,
            socket.htons(port),
            socket.htonl(flowinfo),
            socket.inet_pton(family, host),
            scope_id,
        )
    if family == socket.AF_UNIX:
        # str or a bytes-like object, as the socket module takes (not a
        # path-like object, not an int that bytes() would turn into NULs)
        path = os.fsencode(address) if isinstance(address, str) else memoryview(address).tobytes()
        if len(path) > 107:
            raise OSError(errno.ENAMETOOLONG, "AF_UNIX path too long")
        return struct.pack("=H", family) + path + (b"" if path[:1] == b"\0" else b"\0")
    raise ValueError(f"unsupported address family {family}")


def decode_sockaddr(raw: bytes):
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET:
        port, packed = struct.unpack_from("!H4s", raw, 2)
        return socket.inet_ntop(family, packed), port
    if family == socket.AF_INET6:
        port, flowinfo, packed = struct.unpack_from("!HI16s", raw, 2)
        scope_id = struct.unpack_from("=I", raw, 24)[0]
        return socket.inet_ntop(family, packed), port, flowinfo, scope_id
    if family == socket.AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":
            return path
        return os.fsdecode(path.split(b"\0", 1)[0])
    return raw


# ---------------------------------------------------------------- engine


class Engine:
    """One completion engine: a ring (or an epoll set) and the slots it owns."""

    def __init__(
        self,
        backend: str | None = None,
        *,
        sq_entries: int = 0,
        cq_entries: int = 0,
        buf_count: int = 0,
        buf_size: int = 0,
        record_cap: int = 0,
        options: int = 0,
    ):
        forced_by_env = False
        if backend is None:
            backend, forced_by_env = _env_backend()
        if backend == "uring":
            backend = "io_uring"
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be 'io_uring', 'epoll' or 'auto', not {backend!r}")
        self._e = None
        for name, value in (("sq_entries", sq_entries), ("cq_entries", cq_entries),
                            ("buf_count", buf_count), ("buf_size", buf_size),
                            ("record_cap", record_cap), ("options", options)):
            if not isinstance(value, int) or value < 0 or value > _U32:
                raise ValueError(f"{name} must be an int in [0, 2**32)")
        cfg = ffi.new(
            "ul_config *",
            {
                "sq_entries": sq_entries,
                "cq_entries": cq_entries,
                "buf_count": buf_count,
                "buf_size": buf_size,
                "record_cap": record_cap,
                "options": options,
            },
        )
        err = ffi.new("char[256]")
        e = lib.ul_new(_BACKENDS[backend], cfg, err, 256)
        if e == ffi.NULL:
            message = ffi.string(err).decode(errors="replace")
            if backend == "io_uring":
                probe = ffi.new("ul_probe *")
                code = -lib.ul_probe_uring(probe) or errno.ENOTSUP
                where = " (forced by URINGLOOP_BACKEND=io_uring)" if forced_by_env else ""
                raise OSError(code, message + where)
            raise OSError(errno.EINVAL, message)
        self._e = e
        self.options = options  # the OPT_* bits asked for
        self._forked = False
        _live.add(self)
        info = ffi.new("ul_info *")
        lib.ul_get_info(e, info)
        self._info = info
        self.backend = "io_uring" if info.backend == lib.UL_BACKEND_URING else "epoll"
        reason = ffi.string(info.reason).decode(errors="replace")
        if self.backend == "epoll" and backend == "epoll":
            reason = (
                "forced by URINGLOOP_BACKEND=epoll" if forced_by_env else "epoll requested"
            )
        elif self.backend == "io_uring" and forced_by_env:
            reason = "forced by URINGLOOP_BACKEND=io_uring"
        self.reason = reason
        self._buf_size = info.buf_size
        self._record_cap = record_cap or 4096
        self._pool_size = info.buf_count * info.buf_size
        self._addr = ffi.new("char[128]")
        self._stats = ffi.new("ul_stats *")
        # The slots and the hot submissions live in C (uringloop._sched.Table),
        # which calls the engine's functions directly: no cffi wrapper, so no
        # GIL release per submission. Bound once here, so eng.send(...) is one
        # C call; the methods below say the same for help() and subclasses.
        t = self._t = _sched.Table(self._entry_points(e), self._addr_of)
        # a Protocol's direct reads wait on one multishot poll (decision 765)
        t.poll_multi = self.backend == "io_uring"
        dsize, dcount, dfirst = ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
        dpool = lib.ul_dgram_pool(e, dsize, dcount, dfirst)
        t.set_dgram_pool(int(ffi.cast("uintptr_t", dpool)), dsize[0], dcount[0], dfirst[0],
                         decode_sockaddr)
        t.set_read_pool(int(ffi.cast("uintptr_t", ffi.addressof(lib, "ul_read_pool"))))
        cls = type(self)
        for name in _HOT:
            if getattr(cls, name) is getattr(Engine, name):  # a subclass's override wins
                setattr(self, name, getattr(t, name))

    def _entry_points(self, e) -> tuple:
        def addr(ptr) -> int:
            return int(ffi.cast("uintptr_t", ptr))

        return (
            addr(e), addr(lib.ul_records(e)), self._record_cap, addr(lib.ul_pool(e)),
            self._pool_size, self._buf_size, *_ENTRY_POINTS,
        )

    def _closed_error(self) -> RuntimeError:
        if self._forked:
            return RuntimeError(
                "this engine belongs to the parent process: a fork()ed child "
                "must create its own loop"
            )
        return RuntimeError("engine is closed")

    @property
    def _dispatching(self) -> bool:
        """True while records are being delivered (run/close are refused then)."""
        t = self.__dict__.get("_t")
        return t is not None and t.dispatching

    def _cold(self, cb, keep, fn, *args) -> int:
        """A submission through cffi (the cold ops): fn(engine, ud, *args), a
        lib function. Arguments were checked before. The table takes the slot
        and calls fn in one C call, so no exception (a KeyboardInterrupt from
        a signal handler) can come between the two and leave the slot taken
        and keep pinned (decision 428); -errno raises OSError, the slot back
        (kept on -EBUSY)."""
        if self._e is None:
            raise self._closed_error()
        return self._t.submit(cb, keep, fn, self._e, *args)

    # --------------------------------------------------------- operations

    # The hot ones (nop, recv, send, sendv, accept, shutdown, close_fd,
    # cancel, cancel_fd, wake) are the C table's, bound in __init__; these
    # class methods say what they do and serve Engine.method(eng, ...).

    def nop(self, cb) -> int:
        return self._t.nop(cb)

    def recv(self, fd: int, cb, multishot: bool = True, nbytes: int = 0,
             coalesce: bool = False, view: bool = False, stream: bool = False) -> int:
        """Receive into the engine's pool; ``data`` is the bytes received.
        nbytes caps a one-shot receive (0: the pool buffer size). coalesce:
        the records one turn brings for this op come as one callback with the
        bytes joined (a stream transport wants one data_received per turn).
        view: ``data`` is a read-only memoryview of the pool buffer instead,
        valid only during the callback (released after it; no bytes made).
        stream: fd is a SOCK_STREAM socket (the caller knows; epoll then
        takes a short read at submission as the socket read empty, decision
        745; not for other sockets)."""
        return self._t.recv(fd, cb, multishot, nbytes, coalesce, view, stream)

    def read_pool(self, fd: int, cb, multishot: bool = True, nbytes: int = 0,
                  coalesce: bool = False, view: bool = False) -> int:
        """As recv, with read(2): for pipes, FIFOs, ptys and character devices
        (which refuse recv). Records as recv's: bytes, a final 0 at EOF, -errno;
        multishot through READ_MULTISHOT where the kernel has it (6.7+),
        emulated elsewhere."""
        return self._t.read_pool(fd, cb, multishot, nbytes, coalesce, view)

    def send(self, fd: int, data, cb, flags: int = 0) -> int:
        """Send all of data, after every send queued before it on fd."""
        return self._t.send(fd, data, cb, flags)

    def sendv(self, fd: int, buffers, cb, flags: int = 0) -> int:
        """Send every buffer of the sequence, in order, as one op ordered with
        send/write/shutdown on fd (one SENDMSG on io_uring, one sendmsg per
        try on epoll; short sends go on where they stopped)."""
        return self._t.sendv(fd, buffers, cb, flags)

    def accept(self, fd: int, cb, multishot: bool = True) -> int:
        return self._t.accept(fd, cb, multishot)

    def shutdown(self, fd: int, how: int, cb) -> int:
        return self._t.shutdown(fd, how, cb)

    def close_fd(self, fd: int, cb, reset_if_data: bool = False, hold: bool = False) -> int:
        """Cancel every op on fd, wait for their final records, then close it
        (reset_if_data: with SO_LINGER 0 if a receive brought bytes meanwhile;
        hold: not before close_release, decision 873)."""
        return self._t.close_fd(fd, cb, reset_if_data, hold)

    def close_release(self, close_ud: int, fd: int) -> int:
        """The held close of fd (close_fd(..., hold=True)'s user_data) may
        close(2) now, or when fd's last op ends. 0, or -ENOENT when that
        close is not pending and held (decision 873)."""
        return lib.ul_close_release(self._e, close_ud, fd) if self._e is not None else -errno.ENOENT

    def close_reset(self, close_ud: int, fd: int) -> int:
        """The pending close of fd (close_fd's user_data) sets SO_LINGER 0
        before close(2). 0, or -ENOENT when that close is no longer pending."""
        return lib.ul_close_reset(self._e, close_ud, fd)

    def cancel(self, ud: int) -> bool:
        """Ask the op to stop. Its final record still comes."""
        return self._t.cancel(ud)

    def cancel_fd(self, fd: int) -> int:
        return self._t.cancel_fd(fd)

    def recv_busy(self, fd: int) -> bool:
        """A receive of fd waits in the engine (engine.h ul_recv_busy): a
        recv(2) made now would take bytes before it (decision 689)."""
        return self._e is not None and lib.ul_recv_busy(self._e, fd) != 0

    def ended_with(self, fd: int, res: int) -> bool:
        """An op of fd has ended with res and its record has not come yet:
        io_uring's CQ holds it unreaped, or it waits for the next run
        (engine.h ul_ended_with; decision 839)."""
        return self._e is not None and lib.ul_ended_with(self._e, fd, res) != 0

    def settle_fd(self, fd: int) -> int:
        """fd's ops still live once its cancels waiting to be submitted
        have ended (io_uring: one enter, no wait; their records come at the
        next run): 0, none can act on fd any more, its owner may close it
        now (engine.h ul_fd_settle; decision 962)."""
        return lib.ul_fd_settle(self._e, fd) if self._e is not None else 0

    def fd_closing(self, fd: int) -> int:
        """fd's owner closes it next, no op of ours being live on it: epoll
        drops its registration (EPOLL_CTL_DEL), so the next file to get the
        number is armed with one ADD (engine.h ul_fd_closing; decision
        989). 0, or -EBUSY while ops of fd are live."""
        return lib.ul_fd_closing(self._e, fd) if self._e is not None else 0

    def ready_now(self) -> bool:
        """The next run would find a record without waiting (engine.h
        ul_ready): io_uring's CQ holds one, the kernel flags deferred work
        (a completion that came and is not posted yet), or a send or a
        receive from Python waits to be submitted (decision 932)."""
        return self._e is not None and lib.ul_ready(self._e) != 0

    def wake(self) -> None:
        """Thread-safe: make a sleeping run() return."""
        self._t.wake()

    def recv_into(self, fd: int, buf, cb, nbytes: int = 0, flags: int = 0) -> int:
        fd = _check_fd(fd)
        flags = _c_int(flags, "flags")
        ptr, size = _write_buffer(buf, nbytes)
        return self._cold(cb, (buf, ptr), lib.ul_recv_into, fd, ptr, size, flags)

    def sendmsg(self, fd: int, data, addr, cb, family: int = socket.AF_INET, flags: int = 0):
        fd = _check_fd(fd)
        flags = _c_int(flags, "flags")
        ptr, size = _read_buffer(data)
        raw = encode_sockaddr(family, addr) if addr is not None else ffi.NULL
        alen = len(raw) if addr is not None else 0
        return self._cold(cb, (data, ptr, raw), lib.ul_sendmsg, fd, ptr, size, raw, alen, flags)

    def recvmsg(self, fd: int, buf, cb, family: int = socket.AF_INET, flags: int = 0) -> int:
        """Receive a datagram into buf; ``data`` is the sender's address."""
        fd = _check_fd(fd)
        flags = _c_int(flags, "flags")
        ptr, size = _write_buffer(buf)
        return self._cold(cb, (buf, ptr), lib.ul_recvmsg, fd, ptr, size, flags)

    def recvmsg_pool(self, fd: int, cb, multishot: bool = True) -> int:
        """Receive datagrams into the engine's datagram pool, one record each:
        ``data`` is ``(payload, address)``. Multishot where the kernel has it
        (emulated elsewhere). A datagram longer than a pool buffer (64 KiB and
        more: only Unix datagrams can be) is consumed and reported as
        ``-EMSGSIZE`` with ``more`` set: never delivered cut."""
        fd = _check_fd(fd)
        ms = 1 if multishot else 0
        return self._cold(cb, None, lib.ul_recvmsg_pool, fd, ms)

    def connect(self, fd: int, family: int, addr, cb) -> int:
        fd = _check_fd(fd)
        raw = encode_sockaddr(family, addr)
        return self._cold(cb, raw, lib.ul_connect, fd, raw, len(raw))

    def poll(self, fd: int, events: int, cb, level: bool | int = False) -> int:
        """level: False, one record; True, a record (more) each run fd is
        ready, until cancelled; POLL_KEPT, as True from an owner that keeps fd
        open until the final record (epoll re-arms it with no syscall,
        decision 382); POLL_DRAINED, as False from an owner that keeps fd
        open and whose last read of it came short (epoll waits with no
        syscall, decision 391); POLL_MULTI, as True, where io_uring keeps
        one multishot poll (decision 765)."""
        fd = _check_fd(fd)
        if not isinstance(events, int) or events < 0 or events > _U32:
            raise ValueError("events must be a poll mask")
        if level not in (POLL_KEPT, POLL_DRAINED, POLL_MULTI):
            level = int(bool(level))
        return self._cold(cb, None, lib.ul_poll, fd, events, level)

    def read(self, fd: int, buf, cb, offset: int = -1) -> int:
        fd = _check_fd(fd)
        offset = _c_offset(offset)
        ptr, size = _write_buffer(buf)
        return self._cold(cb, (buf, ptr), lib.ul_read, fd, ptr, size, offset)

    def write(self, fd: int, data, cb, offset: int = -1) -> int:
        fd = _check_fd(fd)
        offset = _c_offset(offset)
        ptr, size = _read_buffer(data)
        return self._cold(cb, (data, ptr), lib.ul_write, fd, ptr, size, offset)

    def flush(self) -> None:
        """Hand queued operations to the kernel now, without waiting for any."""
        if self._e is None:
            raise self._closed_error()
        rc = lib.ul_flush(self._e)
        if rc < 0:
            _raise_submit_error(rc)

    def park(self) -> bool:
        """The loop stops running: every request leaves the kernel and waits in
        the engine for the next run, which may then come from any thread. Call
        it from the thread that ran the engine, never from a callback. True when
        parked (always on epoll); False when a request would not leave the
        kernel (the engine then stays bound to this thread)."""
        if self._e is None:
            raise self._closed_error()
        if self._dispatching:
            raise RuntimeError("park() from a completion callback")
        rc = lib.ul_park(self._e)
        if rc == -errno.EEXIST:
            raise RuntimeError("park() from a thread other than the one that ran the engine")
        return rc == 0

    # ---------------------------------------------------------------- run

    def run(self, timeout: float | None = None) -> int:
        """One turn: submit, wait up to timeout (None = until something completes,
        0 = not at all), and dispatch the completions. Returns how many."""
        return self.dispatch(self.wait(timeout))

    def wait(self, timeout: float | None = None) -> int:
        """The first half of run(): submit and wait; returns how many records are
        ready for dispatch() or deliver(). An exception a signal handler raises
        while it waits comes out of here."""
        e = self._e
        if e is None:
            raise self._closed_error()
        if self._dispatching:
            raise RuntimeError("run() from a completion callback")
        if timeout is None:
            ns = -1
        else:
            ns = int(timeout * 1e9) if timeout > 0 else 0
        # a turn that cannot block keeps the GIL (no cffi call); one that may
        # wait releases it, through cffi
        n = self._t.run_nowait() if ns == 0 else lib.ul_run(e, ns)
        while n == -errno.EINTR and ns < 0:
            # back in Python, so signal handlers have run (or raised); a blocking
            # run then goes on waiting. EINTR also comes without a signal, e.g.
            # from io_uring task_work after another ring was torn down.
            n = lib.ul_run(e, ns)
        if n < 0 and n != -errno.EINTR:
            self._raise_run_error(n)
        return max(n, 0)

    @staticmethod
    def _raise_run_error(n: int) -> None:
        """ul_run failed with n (< 0): the exception that says why."""
        if n == -errno.EEXIST:
            raise RuntimeError(
                "the engine is bound to the thread that last ran it: it must be "
                "parked there (Engine.park(), which a loop does when it stops "
                "running) before another thread runs it"
            )
        raise OSError(-n, os.strerror(-n))

    def native(self) -> tuple:
        """What uringloop._sched's turn needs: (engine, table). The table holds
        the engine's entry points; they are valid until close() detaches it."""
        if self._e is None:
            raise self._closed_error()
        return (self, self._t)

    def _addr_of(self, slot: int):
        """The peer address of a record flagged UL_F_ADDR, decoded."""
        e = self._e
        return decode_sockaddr(ffi.unpack(self._addr, lib.ul_op_addr(e, slot, self._addr, 128)))

    def dispatch(self, n: int) -> int:
        """Deliver the n records wait() (or a C-side ul_run) made ready. The first
        exception a callback raises is re-raised once all are delivered."""
        error = self.deliver(n)
        if error is not None:
            raise error
        return n

    def deliver(self, n: int):
        """As dispatch(), but the first exception a callback raised is returned
        (None if none did), for a caller that reports rather than raises."""
        if n <= 0:
            return None
        if self._e is None:
            raise self._closed_error()
        return self._t.deliver(n)

    # -------------------------------------------------------------- state

    @property
    def in_flight(self) -> int:
        return self._t.in_flight

    @property
    def closed(self) -> bool:
        return self._e is None

    def info(self) -> dict:
        i = self._info
        if self._e is not None:
            lib.ul_get_info(self._e, i)  # the ring fd is registered on the first run
        return {
            "backend": self.backend,
            "reason": self.reason,
            "ring_flags": _names(_SETUP_FLAGS, i.ring_flags),
            "features": _names(_FEATURES, i.features),
            "sq_entries": i.sq_entries,
            "cq_entries": i.cq_entries,
            "buffer_ring": bool(i.buffer_ring),
            "multishot_recv": bool(i.multishot_recv),
            "multishot_accept": bool(i.multishot_accept),
            "multishot_read": bool(i.multishot_read),
            "recv_bundle": bool(i.recv_bundle),
            "recv_limit": i.recv_limit,
            "cancel_fd": bool(i.cancel_fd),
            "registered_ring": bool(i.registered_ring),
            "buf_count": i.buf_count,
            "buf_size": i.buf_size,
            "guard": bool(i.guard),
            "op_bytes": i.op_bytes,
            "fd_bytes": i.fd_bytes,
        }

    def stats(self) -> dict:
        if self._e is None:
            raise self._closed_error()
        s = self._stats
        lib.ul_get_stats(self._e, s)
        return {name: getattr(s, name) for name in _STATS}

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything in flight, reap it, and free the engine."""
        if self._dispatching:
            raise RuntimeError("close() from a completion callback: close after run() returns")
        e, self._e = self._e, None
        if e is None:
            return
        # No wake may read the engine pointer from here on (D2: wake() runs
        # under the GIL, which this holds): only then is the engine freed.
        self._t.detach()
        left = lib.ul_free(e, int(timeout * 1e9))
        if left:
            _graveyard.append(self._t)  # its slots keep the kernel's buffers alive
            warnings.warn(
                f"engine closed with {left} operations still owned by the kernel; "
                "their buffers are kept alive",
                ResourceWarning,
                stacklevel=2,
            )
        else:
            self._t.release_all()

    def _forget(self) -> None:
        """In a fork()ed child: this engine is the parent's. Close the child's
        copies of its fds and free its heap memory, touching no ring or pool
        (they are not mapped in the child) and no kernel request (the parent's).
        The ops' callbacks never run here; their objects are dropped."""
        e, self._e = self._e, None
        if e is None:
            return
        self._forked = True
        self._t.detach()  # the C table's submissions and wakes see a closed engine
        lib.ul_forget(e)
        self._t.release_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_e", None) is not None:
            self.close(timeout=1.0)


def _raise_submit_error(rc: int):
    if rc == -errno.EEXIST:
        raise RuntimeError(
            "engine operation from another thread while the loop runs in its own "
            "(use loop.call_soon_threadsafe or asyncio.run_coroutine_threadsafe)"
        )
    raise OSError(-rc, os.strerror(-rc))


def _forget_all_after_fork() -> None:
    for eng in list(_live):
        eng._forget()


os.register_at_fork(after_in_child=_forget_all_after_fork)


_STATS = (
    "enters", "waits", "submitted", "records", "cq_overflows", "rearms",
    "eagain_retries", "wakeups", "guard_faults", "in_flight", "bufs_free", "ident_captures",
    "ident_checks", "cqes", "addr_blocks", "pool_resident", "fd_entries", "pool_takes",
    "ident_cookies", "ring_want", "pend_walked", "ctl_failed",
)

_SETUP_FLAGS = {
    1 << 0: "IOPOLL", 1 << 1: "SQPOLL", 1 << 2: "SQ_AFF", 1 << 3: "CQSIZE", 1 << 4: "CLAMP",
    1 << 5: "ATTACH_WQ", 1 << 6: "R_DISABLED", 1 << 7: "SUBMIT_ALL", 1 << 8: "COOP_TASKRUN",
    1 << 9: "TASKRUN_FLAG", 1 << 10: "SQE128", 1 << 11: "CQE32", 1 << 12: "SINGLE_ISSUER",
    1 << 13: "DEFER_TASKRUN", 1 << 14: "NO_MMAP", 1 << 15: "REGISTERED_FD_ONLY",
    1 << 16: "NO_SQARRAY",
}
_FEATURES = {
    1 << i: name
    for i, name in enumerate(
        "SINGLE_MMAP NODROP SUBMIT_STABLE RW_CUR_POS CUR_PERSONALITY FAST_POLL POLL_32BITS "
        "SQPOLL_NONFIXED EXT_ARG NATIVE_WORKERS RSRC_TAGS CQE_SKIP LINKED_FILE REG_REG_RING "
        "RECVSEND_BUNDLE MIN_TIMEOUT RW_ATTR NO_IOWAIT".split()
    )
}
_OPCODES = (
    "NOP READV WRITEV FSYNC READ_FIXED WRITE_FIXED POLL_ADD POLL_REMOVE SYNC_FILE_RANGE "
    "SENDMSG RECVMSG TIMEOUT TIMEOUT_REMOVE ACCEPT ASYNC_CANCEL LINK_TIMEOUT CONNECT "
    "FALLOCATE OPENAT CLOSE FILES_UPDATE STATX READ WRITE FADVISE MADVISE SEND RECV OPENAT2 "
    "EPOLL_CTL SPLICE PROVIDE_BUFFERS REMOVE_BUFFERS TEE SHUTDOWN RENAMEAT UNLINKAT MKDIRAT "
    "SYMLINKAT LINKAT MSG_RING FSETXATTR SETXATTR FGETXATTR GETXATTR SOCKET URING_CMD SEND_ZC "
    "SENDMSG_ZC READ_MULTISHOT WAITID FUTEX_WAIT FUTEX_WAKE FUTEX_WAITV FIXED_FD_INSTALL "
    "FTRUNCATE BIND LISTEN RECV_ZC EPOLL_WAIT READV_FIXED WRITEV_FIXED PIPE"
).split()


def _names(table: dict, bits: int) -> list[str]:
    names = [name for bit, name in table.items() if bits & bit]
    rest = bits & ~sum(table)
    if rest:
        names.append(hex(rest))
    return names


_info_cache: dict | None = None


def backend_info() -> dict:
    """What this process gets: the backend auto/URINGLOOP_BACKEND picks, why,
    and what the kernel offers. Probed once, then cached."""
    global _info_cache
    if _info_cache is None:
        probe = ffi.new("ul_probe *")
        lib.ul_probe_uring(probe)
        opcodes = [
            _OPCODES[i] if i < len(_OPCODES) else f"OP_{i}"
            for i in range(256)
            if probe.ops[i]
        ]
        info = {
            "kernel": os.uname().release,
            "io_uring_available": bool(probe.available),
            "probe_reason": ffi.string(probe.reason).decode(errors="replace"),
            "opcodes": opcodes,
        }
        try:
            with Engine() as eng:
                eng.run(0)  # enables the ring: registered ring fd is known after this
                info.update(eng.info())
        except OSError as exc:
            info.update(backend="none", reason=str(exc), ring_flags=[], features=[],
                        buffer_ring=False, multishot_recv=False, multishot_accept=False,
                        multishot_read=False, recv_bundle=False, recv_limit=0,
                        cancel_fd=False,
                        registered_ring=False)
        _info_cache = info
    return dict(_info_cache)
