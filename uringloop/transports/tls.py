"""TLS: the stdlib's ``asyncio.sslproto.SSLProtocol`` with a compiled steady state.

Python 3.11+ only (3.10's sslproto is the older ``_SSLPipe`` design; the
loop uses the stock class there). ``SSLProtocol`` below is a subclass of the
stock class with a C base first (``_sched.SSLProtocolCore``,
_core/sslcore.c); its app transport likewise (``_sched.SSLTransportCore``).
The state machine, flow-control transitions, handshake, shutdown, errors and
their handler contexts are the stock methods. What changes (decisions
393-395):

- reads stop when no byte is left to decrypt (``incoming.pending`` and
  ``sslobj.pending()`` both 0) instead of reading until ``SSLWantReadError``:
  a raised and caught SSLError costs about 12,000 instructions (decision
  384). A read that finds a partial record still raises, as in the stock
  class, and a read that finds nothing to do is not made (it would only
  raise);
- ``get_buffer``, ``buffer_updated`` and ``_do_read`` (the read itself, the
  app's ``data_received`` or ``get_buffer``/``buffer_updated``, the outgoing
  flush, the flow-control tests) and the app transport's ``write`` in the
  WRAPPED state are C; the protocol's hot attributes are members of the C
  base (the stock methods read and assign them as before);
- states are compared with the members themselves (``is``), not through
  ``SSLProtocolState.X``, which on 3.11 goes through ``EnumType.__getattr__``.

Nothing in asyncio is patched: only the loop's own SSL transports
(``_make_ssl_transport`` and ``start_tls``) use these classes.
"""

from __future__ import annotations

import ssl
from asyncio import constants, sslproto
from asyncio.log import logger

from .. import _sched

_S = sslproto.SSLProtocolState
_UNWRAPPED = _S.UNWRAPPED
_DO_HANDSHAKE = _S.DO_HANDSHAKE
_WRAPPED = _S.WRAPPED
_FLUSHING = _S.FLUSHING
_SHUTDOWN = _S.SHUTDOWN
_SSLAgainErrors = sslproto.SSLAgainErrors
_LOG_THRESHOLD = constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES

_sched.ssl_setup(
    (_WRAPPED, _DO_HANDSHAKE, _FLUSHING, _SHUTDOWN),
    _SSLAgainErrors,
    ssl.SSLObject,
    sslproto.SSLProtocol.get_buffer,
)


class _SSLProtocolTransport(_sched.SSLTransportCore, sslproto._SSLProtocolTransport):
    """The stock app transport; its write() is C in the steady state (decision 395)."""

    __slots__ = ()


class SSLProtocol(_sched.SSLProtocolCore, sslproto.SSLProtocol):
    """asyncio's SSL protocol; reads while bytes are pending (decision 393);
    get_buffer, buffer_updated and _do_read are C (_sched.SSLProtocolCore,
    decision 394)."""

    def _get_app_transport(self):
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            self._app_transport = _SSLProtocolTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport

    def _write_appdata(self, list_of_data):
        state = self._state
        if state is _FLUSHING or state is _SHUTDOWN or state is _UNWRAPPED:
            if self._conn_lost >= _LOG_THRESHOLD:
                logger.warning("SSL connection is closed")
            self._conn_lost += 1
            return

        for data in list_of_data:
            self._write_backlog.append(data)
            self._write_buffer_size += len(data)

        try:
            if self._state is _WRAPPED:
                self._do_write()
        except Exception as ex:
            self._fatal_error(ex, "Fatal error on SSL protocol")
