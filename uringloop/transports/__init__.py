"""Transports on the completion engine, one family per module.

stream.py: stream sockets (TCP and Unix) and the accept side of servers. TLS
is not a transport of ours: it is the stdlib's ``asyncio.sslproto`` running on
top of a stream transport, as in every stock loop.
"""

from .stream import Acceptor, SocketTransport

__all__ = ["Acceptor", "SocketTransport"]
