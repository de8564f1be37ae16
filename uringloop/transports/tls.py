"""TLS: the stdlib's ``asyncio.sslproto.SSLProtocol`` with a cheaper steady state.

Python 3.11+ only (3.10's sslproto is the older ``_SSLPipe`` design; the
loop uses the stock class there). ``SSLProtocol`` below is a subclass of the
stock class: the state machine, flow control, shutdown, errors and their
handler contexts are the stock methods. What it changes is how the hot
methods are run (decisions 393-395):

- reads stop when no byte is left to decrypt (``incoming.pending`` and
  ``sslobj.pending()`` both 0) instead of reading until ``SSLWantReadError``:
  a raised and caught SSLError costs about 12,000 instructions (decision
  384). A read that finds a partial record still raises, as in the stock
  loop, and a read that finds nothing to do is not made (it would only
  raise);
- the state tests compare with the members themselves (``is``), not through
  ``SSLProtocolState.X``, which on 3.11 goes through ``EnumType.__getattr__``.

Nothing in asyncio is patched: only the loops' own SSL transports
(``_make_ssl_transport`` and ``start_tls``) use this class.
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
    get_buffer/buffer_updated are C (_sched.SSLProtocolCore, decision 394)."""

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

    def _do_read(self):
        state = self._state
        if state is not _WRAPPED and state is not _FLUSHING:
            return
        try:
            if not self._app_reading_paused:
                if self._app_protocol_is_buffer:
                    self._do_read__buffered()
                else:
                    self._do_read__copied()
                if self._write_backlog:
                    self._do_write()
                else:
                    self._process_outgoing()
            self._control_ssl_reading()
        except Exception as ex:
            self._fatal_error(ex, "Fatal error on SSL protocol")

    def _do_read__buffered(self):
        offset = 0
        count = 1
        incoming = self._incoming
        sslobj = self._sslobj

        buf = self._app_protocol_get_buffer(incoming.pending)
        wants = len(buf)

        try:
            if not wants or incoming.pending or sslobj.pending():
                count = sslobj.read(wants, buf)
                if count > 0:
                    offset = count
                    while offset < wants:
                        if not (incoming.pending or sslobj.pending()):
                            break
                        count = sslobj.read(wants - offset, buf[offset:])
                        if count > 0:
                            offset += count
                        else:
                            break
                    else:
                        # the app's buffer is full: read the rest next turn
                        self._loop.call_soon(self._do_read)
        except _SSLAgainErrors:
            pass
        if offset > 0:
            self._app_protocol_buffer_updated(offset)
        if not count:
            # close_notify
            self._call_eof_received()
            self._start_shutdown()

    def _do_read__copied(self):
        chunk = b"1"
        zero = True
        one = False
        incoming = self._incoming
        sslobj = self._sslobj

        try:
            while incoming.pending or sslobj.pending():
                chunk = sslobj.read(self.max_size)
                if not chunk:
                    break
                if zero:
                    zero = False
                    one = True
                    first = chunk
                elif one:
                    one = False
                    data = [first, chunk]
                else:
                    data.append(chunk)
        except _SSLAgainErrors:
            pass
        if one:
            self._app_protocol.data_received(first)
        elif not zero:
            self._app_protocol.data_received(b"".join(data))
        if not chunk:
            # close_notify
            self._call_eof_received()
            self._start_shutdown()
