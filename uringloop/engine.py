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

from . import _sched
from ._engine_cffi import ffi, lib

__all__ = [
    "Engine",
    "backend_info",
    "OPT_NO_MULTISHOT",
    "OPT_NO_BUFRING",
    "OPT_NO_DEFER",
    "OPT_NO_CANCEL_FD",
    "OPT_TEST_EAGAIN",
    "OPT_GUARD",
]

OPT_NO_MULTISHOT = lib.UL_OPT_NO_MULTISHOT
OPT_NO_BUFRING = lib.UL_OPT_NO_BUFRING
OPT_NO_DEFER = lib.UL_OPT_NO_DEFER
OPT_NO_CANCEL_FD = lib.UL_OPT_NO_CANCEL_FD
# test only: an op's first issue completes with EAGAIN (a connect with
# EINPROGRESS), so the readiness-retry paths run on kernels that never take them
OPT_TEST_EAGAIN = lib.UL_OPT_TEST_EAGAIN
# pool guard mode (also URINGLOOP_GUARD=1): unowned pool buffers are PROT_NONE
OPT_GUARD = lib.UL_OPT_GUARD

_BACKENDS = {
    "auto": lib.UL_BACKEND_AUTO,
    "io_uring": lib.UL_BACKEND_URING,
    "epoll": lib.UL_BACKEND_EPOLL,
}
_GEN_MASK = (1 << 30) - 1
_U32 = 0xFFFFFFFF
_SLOT_CHUNK = 1024

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
    return fd


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
    """The C ``struct sockaddr`` for a numeric address (no name resolution)."""
    if family == socket.AF_INET:
        host, port = address
        return struct.pack("=HH4s8x", family, socket.htons(port), socket.inet_pton(family, host))
    if family == socket.AF_INET6:
        host, port, flowinfo, scope_id = (tuple(address) + (0, 0))[:4]
        if "%" in host:
            host, _, zone = host.partition("%")
            scope_id = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
        return struct.pack(
            "=HHI16sI",
            family,
            socket.htons(port),
            socket.htonl(flowinfo),
            socket.inet_pton(family, host),
            scope_id,
        )
    if family == socket.AF_UNIX:
        path = os.fsencode(address) if isinstance(address, str) else bytes(address)
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
        self._cbs: list = []
        self._keep: list = []
        self._gen: list = []
        self._free: list = []
        self._addr = ffi.new("char[128]")
        self._stats = ffi.new("ul_stats *")
        self._dispatching = False  # set while records are being delivered
        self._native = self.native()

    # ------------------------------------------------------------ slots

    def _grow(self):
        base = len(self._cbs)
        self._cbs.extend([None] * _SLOT_CHUNK)
        self._keep.extend([None] * _SLOT_CHUNK)
        self._gen.extend([0] * _SLOT_CHUNK)
        self._free.extend(range(base + _SLOT_CHUNK - 1, base - 1, -1))

    def _take(self, cb, keep) -> int:
        if self._e is None:
            raise RuntimeError("engine is closed")
        if not callable(cb):
            raise TypeError("callback must be callable")
        if not self._free:
            self._grow()
        slot = self._free.pop()
        gen = (self._gen[slot] + 1) & _GEN_MASK or 1
        self._gen[slot] = gen
        self._cbs[slot] = cb
        self._keep[slot] = keep
        return slot | (gen << 32)

    def _submitted(self, ud: int, rc: int) -> int:
        if rc < 0:
            slot = ud & _U32
            self._cbs[slot] = self._keep[slot] = None
            self._free.append(slot)
            raise OSError(-rc, os.strerror(-rc))
        return ud

    # --------------------------------------------------------- operations

    def nop(self, cb) -> int:
        ud = self._take(cb, None)
        return self._submitted(ud, lib.ul_nop(self._e, ud))

    def recv(self, fd: int, cb, multishot: bool = True, nbytes: int = 0) -> int:
        """Receive into the engine's pool; ``data`` is the bytes received.
        nbytes caps a one-shot receive (0: the pool buffer size)."""
        fd = _check_fd(fd)
        if nbytes < 0:
            raise ValueError("negative buffersize in recv")
        ud = self._take(cb, None)
        return self._submitted(ud, lib.ul_recv(self._e, ud, fd, bool(multishot), nbytes))

    def recv_into(self, fd: int, buf, cb, nbytes: int = 0, flags: int = 0) -> int:
        fd = _check_fd(fd)
        ptr, size = _write_buffer(buf, nbytes)
        ud = self._take(cb, (buf, ptr))
        return self._submitted(ud, lib.ul_recv_into(self._e, ud, fd, ptr, size, flags))

    def send(self, fd: int, data, cb, flags: int = 0) -> int:
        """Send all of data, after every send queued before it on fd."""
        fd = _check_fd(fd)
        ptr, size = _read_buffer(data)
        ud = self._take(cb, (data, ptr))
        return self._submitted(ud, lib.ul_send(self._e, ud, fd, ptr, size, flags))

    def sendmsg(self, fd: int, data, addr, cb, family: int = socket.AF_INET, flags: int = 0):
        fd = _check_fd(fd)
        ptr, size = _read_buffer(data)
        raw = encode_sockaddr(family, addr) if addr is not None else ffi.NULL
        ud = self._take(cb, (data, ptr, raw))
        alen = len(raw) if addr is not None else 0
        return self._submitted(ud, lib.ul_sendmsg(self._e, ud, fd, ptr, size, raw, alen, flags))

    def recvmsg(self, fd: int, buf, cb, family: int = socket.AF_INET, flags: int = 0) -> int:
        """Receive a datagram into buf; ``data`` is the sender's address."""
        fd = _check_fd(fd)
        ptr, size = _write_buffer(buf)
        ud = self._take(cb, (buf, ptr))
        return self._submitted(ud, lib.ul_recvmsg(self._e, ud, fd, ptr, size, flags))

    def accept(self, fd: int, cb, multishot: bool = True) -> int:
        fd = _check_fd(fd)
        ud = self._take(cb, None)
        return self._submitted(ud, lib.ul_accept(self._e, ud, fd, bool(multishot)))

    def connect(self, fd: int, family: int, addr, cb) -> int:
        fd = _check_fd(fd)
        raw = encode_sockaddr(family, addr)
        ud = self._take(cb, raw)
        return self._submitted(ud, lib.ul_connect(self._e, ud, fd, raw, len(raw)))

    def poll(self, fd: int, events: int, cb, level: bool = False) -> int:
        fd = _check_fd(fd)
        if not isinstance(events, int) or events < 0 or events > _U32:
            raise ValueError("events must be a poll mask")
        ud = self._take(cb, None)
        return self._submitted(ud, lib.ul_poll(self._e, ud, fd, events, bool(level)))

    def read(self, fd: int, buf, cb, offset: int = -1) -> int:
        fd = _check_fd(fd)
        ptr, size = _write_buffer(buf)
        ud = self._take(cb, (buf, ptr))
        return self._submitted(ud, lib.ul_read(self._e, ud, fd, ptr, size, offset))

    def write(self, fd: int, data, cb, offset: int = -1) -> int:
        fd = _check_fd(fd)
        ptr, size = _read_buffer(data)
        ud = self._take(cb, (data, ptr))
        return self._submitted(ud, lib.ul_write(self._e, ud, fd, ptr, size, offset))

    def shutdown(self, fd: int, how: int, cb) -> int:
        fd = _check_fd(fd)
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError(f"invalid shutdown mode {how!r}")
        ud = self._take(cb, None)
        return self._submitted(ud, lib.ul_shutdown(self._e, ud, fd, how))

    def close_fd(self, fd: int, cb) -> int:
        """Cancel every op on fd, wait for their final records, then close it."""
        fd = _check_fd(fd)
        ud = self._take(cb, None)
        return self._submitted(ud, lib.ul_close_fd(self._e, ud, fd))

    def flush(self) -> None:
        """Hand queued operations to the kernel now, without waiting for any."""
        if self._e is None:
            raise RuntimeError("engine is closed")
        rc = lib.ul_flush(self._e)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))

    def cancel(self, ud: int) -> bool:
        """Ask the op to stop. Its final record still comes."""
        if self._e is None:
            raise RuntimeError("engine is closed")
        return lib.ul_cancel(self._e, ud) == 0

    def cancel_fd(self, fd: int) -> int:
        if self._e is None:
            raise RuntimeError("engine is closed")
        return lib.ul_cancel_fd(self._e, _check_fd(fd))

    def wake(self) -> None:
        """Thread-safe: make a sleeping run() return."""
        e = self._e
        if e is not None:
            lib.ul_wake(e)

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
            raise RuntimeError("engine is closed")
        if self._dispatching:
            raise RuntimeError("run() from a completion callback")
        if timeout is None:
            ns = -1
        else:
            ns = int(timeout * 1e9) if timeout > 0 else 0
        n = lib.ul_run(e, ns)
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
            raise RuntimeError("the engine belongs to the thread that first ran it")
        raise OSError(-n, os.strerror(-n))

    def native(self) -> tuple:
        """What uringloop._sched needs to run this engine and deliver its records
        from C: (engine, ul_engine *, ul_run, records, record_cap, pool,
        pool_size, buf_size, cbs, keep, free, addr_of). The addresses are valid
        until close()."""
        e = self._e
        if e is None:
            raise RuntimeError("engine is closed")

        def addr(ptr) -> int:
            return int(ffi.cast("uintptr_t", ptr))

        return (
            self, addr(e), addr(ffi.addressof(lib, "ul_run")), addr(lib.ul_records(e)),
            self._record_cap, addr(lib.ul_pool(e)), self._pool_size, self._buf_size,
            self._cbs, self._keep, self._free, self._addr_of,
        )

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
            raise RuntimeError("engine is closed")
        return _sched.deliver(self._native, n)

    # -------------------------------------------------------------- state

    @property
    def in_flight(self) -> int:
        return len(self._cbs) - len(self._free)

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
            "cancel_fd": bool(i.cancel_fd),
            "registered_ring": bool(i.registered_ring),
            "buf_count": i.buf_count,
            "buf_size": i.buf_size,
            "guard": bool(i.guard),
        }

    def stats(self) -> dict:
        if self._e is None:
            raise RuntimeError("engine is closed")
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
        self._native = None
        left = lib.ul_free(e, int(timeout * 1e9))
        if left:
            _graveyard.append((self._keep, self._cbs))
            warnings.warn(
                f"engine closed with {left} operations still owned by the kernel; "
                "their buffers are kept alive",
                ResourceWarning,
                stacklevel=2,
            )
        self._cbs, self._keep, self._free, self._gen = [], [], [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_e", None) is not None:
            self.close(timeout=1.0)


_STATS = (
    "enters", "waits", "submitted", "records", "cq_overflows", "rearms",
    "eagain_retries", "wakeups", "guard_faults", "in_flight", "bufs_free",
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
                        cancel_fd=False, registered_ring=False)
        _info_cache = info
    return dict(_info_cache)
