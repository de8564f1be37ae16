"""CPython test_asyncio tests that do not run against uringloop, each with its reason.

Keys are "module.test_name"; the value is the reason. Every transport family
is written (stream, TLS, datagram, pipe, subprocess): what is listed here are
tests of the stock classes' own internals, which no other loop's transports
have. A test that must be excluded is listed one by one, with the reason.
"""

# test_unix_events' pipe transport tests (UnixReadPipeTransportTests,
# UnixWritePipeTransportTests: the same 39 tests on 3.10-3.13) run with our
# transports on a real uringloop.Loop and a real pipe (runner.py,
# PIPE_CLASSES); the 14 that test behaviour pass. These inspect what only the
# stock selector-based classes have:
_REGISTRY = (
    "asserts the selector TestLoop's reader/writer registry (loop.readers, "
    "loop.writers, assert_reader, assert_writer); our pipe transports submit "
    "engine reads, writes and polls, and the loop keeps no such registry"
)
_READY = (
    "calls the stock transport's selector callback (_read_ready/_write_ready) "
    "directly; our completion-based pipe transports have none (their engine "
    "records drive them)"
)
_OS_MOCK = (
    "asserts calls of a mocked os.write on the fake fd 5 and the stock "
    "transport's bytearray _buffer and loop.writers; our transport writes to "
    "the real pipe and queues a list for the turn's engine write"
)
_UNIX_EVENTS = {
    "test_ctor": _REGISTRY,
    "test_pause_reading": _REGISTRY,
    "test_resume_reading": _REGISTRY,
    "test__close": _REGISTRY,
    "test_write_eof": _REGISTRY,
    "test_write_no_data": _REGISTRY,
    "test_write_partial": _REGISTRY,
    "test__read_ready": _READY,
    "test__read_ready_blocked": _READY,
    "test__read_ready_eof": _READY,
    "test__read_ready_error": _READY,
    "test__write_ready": _READY,
    "test__write_ready_again": _READY,
    "test__write_ready_closing": _READY,
    "test__write_ready_empty": _READY,
    "test__write_ready_err": _READY,
    "test__write_ready_partial": _READY,
    "test_abort": _READY,
    "test_write_buffer": _READY,
    "test_write_close": _READY,
    "test_write": _OS_MOCK,
    "test_write_again": _OS_MOCK,
    "test_write_err": _OS_MOCK,
}

EXCLUDED: dict = {f"test_unix_events.{name}": why for name, why in _UNIX_EVENTS.items()}


def excluded(key, version):
    return EXCLUDED.get(key)
