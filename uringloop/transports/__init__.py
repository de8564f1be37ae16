"""Transports on the completion engine, one family per module.

stream.py: stream sockets (TCP and Unix) and the accept side of servers. TLS
is the stdlib's ``asyncio.sslproto`` running on top of a stream transport, as
in every stock loop; on 3.11+ through tls.py's subclass, whose steady state
is compiled (decisions 393-395).
"""

from .stream import Acceptor, SocketTransport

__all__ = ["Acceptor", "SocketTransport"]
