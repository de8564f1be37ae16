"""CPython test_asyncio tests that do not run against uringloop, each with its reason.

Keys are "module.test_name"; the value is the reason. Every test here calls a
transport API (create_connection/create_server, datagram endpoints,
TLS), and uringloop's transports are not written yet: the loop's
make-transport hooks still raise NotImplementedError. They are listed one by
one so that each comes back when its transport lands.
"""

_STREAM = "needs socket stream transports (create_connection/create_server), not written yet"
_SSL = "needs TLS over socket transports (sslproto on our stream transport), not written yet"
_DGRAM = "needs datagram transports (create_datagram_endpoint), not written yet"

EXCLUDED: dict = {
    "test_events.test_create_datagram_endpoint": _DGRAM,
    "test_events.test_create_datagram_endpoint_ipv6": _DGRAM,
    "test_events.test_create_datagram_endpoint_sock": _DGRAM,
    "test_events.test_datagram_send_to_non_listening_address": _DGRAM,
    "test_sendfile.test_sendfile_not_supported": _DGRAM,
}


def excluded(key, version):
    return EXCLUDED.get(key)
