"""CPython test_asyncio tests that do not run against uringloop, each with its reason.

Keys are "module.test_name"; the value is the reason. Every test here calls a
transport API (create_connection/create_server, datagram endpoints, pipes,
ptys, TLS), and uringloop's transports are not written yet: the loop's
make-transport hooks still raise NotImplementedError. They are listed one by
one so that each comes back when its transport lands.
"""

_STREAM = "needs socket stream transports (create_connection/create_server), not written yet"
_SSL = "needs TLS over socket transports (sslproto on our stream transport), not written yet"
_DGRAM = "needs datagram transports (create_datagram_endpoint), not written yet"
_PIPE = "needs pipe transports (connect_read_pipe/connect_write_pipe), not written yet"

EXCLUDED: dict = {
    "test_sock_lowlevel.test_create_connection_sock": _STREAM,
    "test_events.test_connect_accepted_socket": _STREAM,
    "test_events.test_create_connection": _STREAM,
    "test_events.test_create_connection_local_addr": _STREAM,
    "test_events.test_create_server": _STREAM,
    "test_events.test_create_server_addr_in_use": _STREAM,
    "test_events.test_create_server_dual_stack": _STREAM,
    "test_events.test_create_server_reuse_port": _STREAM,
    "test_events.test_create_server_sock": _STREAM,
    "test_events.test_create_server_trsock": _STREAM,
    "test_events.test_create_unix_connection": _STREAM,
    "test_events.test_create_unix_server": _STREAM,
    "test_events.test_create_unix_server_path_socket_error": _STREAM,
    "test_events.test_server_close": _STREAM,
    "test_events.test_create_server_ssl": _SSL,
    "test_events.test_create_server_ssl_match_failed": _SSL,
    "test_events.test_create_server_ssl_verified": _SSL,
    "test_events.test_create_server_ssl_verify_failed": _SSL,
    "test_events.test_create_ssl_connection": _SSL,
    "test_events.test_create_ssl_unix_connection": _SSL,
    "test_events.test_create_unix_server_ssl": _SSL,
    "test_events.test_create_unix_server_ssl_verified": _SSL,
    "test_events.test_create_unix_server_ssl_verify_failed": _SSL,
    "test_events.test_ssl_connect_accepted_socket": _SSL,
    "test_events.test_create_datagram_endpoint": _DGRAM,
    "test_events.test_create_datagram_endpoint_ipv6": _DGRAM,
    "test_events.test_create_datagram_endpoint_sock": _DGRAM,
    "test_events.test_datagram_send_to_non_listening_address": _DGRAM,
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
