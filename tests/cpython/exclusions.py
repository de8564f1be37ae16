"""CPython test_asyncio tests that do not run against uringloop, each with its reason.

Keys are "module.test_name"; the value is the reason. Every test here calls a
transport API (create_connection/create_server, datagram endpoints, pipes,
ptys, TLS), and uringloop's transports are not written yet: the loop's
make-transport hooks still raise NotImplementedError. They are listed one by
one so that each comes back when its transport lands.
"""

_STREAM = "needs socket stream transports (create_connection/create_server), not written yet"
_SSL = "needs TLS over socket transports (sslproto on our stream transport), not written yet"
_PIPE = "needs pipe transports (connect_read_pipe/connect_write_pipe), not written yet"

EXCLUDED: dict = {
    "test_streams.test_read_all_from_pipe_reader": _PIPE,
    "test_events.test_read_pipe": _PIPE,
    "test_events.test_write_pipe": _PIPE,
    "test_events.test_write_pipe_disconnect_on_close": _PIPE,
    "test_events.test_unclosed_pipe_transport": _PIPE,
    "test_events.test_read_pty_output": _PIPE,
    "test_events.test_write_pty": _PIPE,
    "test_events.test_bidirectional_pty": _PIPE,
}


def excluded(key, version):
    return EXCLUDED.get(key)
