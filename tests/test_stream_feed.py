"""A stock StreamReaderProtocol's chunks go straight into its StreamReader's
buffer (decision 636): the same streams as the stock loop's, the same
pause/resume, the same errors; subclasses and patched methods take the
ordinary data_received -> feed_data path."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from conftest import is_stock
from transport_helpers import run_in, tloop, wait_for

assert tloop  # fixture, imported for the tests below

SIZES = [1, 7, 1000, 16 * 1024, 16 * 1024 + 1, 100 * 1024, 300 * 1024, 1 << 20]


def _feeds(tr) -> int | None:
    """Chunks the C core put straight into a StreamReader (None on stock)."""
    core = getattr(tr, "_core", None)
    return None if core is None else core.feeds


async def _pair(loop, reader_factory=None, proto_factory=None, limit=2**16):
    """(server reader, server transport, client reader, client writer) over
    TCP; the server end's protocol and reader come from the factories."""
    accepted = loop.create_future()
    reader_factory = reader_factory or (lambda: asyncio.StreamReader(limit=limit, loop=loop))
    proto_factory = proto_factory or asyncio.StreamReaderProtocol

    def factory():
        reader = reader_factory()
        proto = proto_factory(reader)
        if not accepted.done():
            accepted.set_result((reader, proto))
        return proto

    srv = await loop.create_server(factory, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    cr, cw = await wait_for(asyncio.open_connection("127.0.0.1", port))
    reader, proto = await wait_for(accepted)
    for _ in range(100):  # connection_made runs a turn after the accept
        if proto._transport is not None:
            break
        await asyncio.sleep(0)
    srv.close()
    return reader, proto, cr, cw


def _transport_of(proto):
    # StreamReaderProtocol keeps its transport in _transport (3.10-3.13)
    return proto._transport


def test_byte_exact_streams_of_many_sizes(tloop):
    """Messages of 1 B to 1 MiB come out byte-exact through readexactly,
    readuntil and read(-1) on every loop; on ours the fast path took them."""

    async def main():
        reader, proto, cr, cw = await _pair(tloop, limit=1 << 20)
        tr = _transport_of(proto)
        out = []
        for size in SIZES:
            msg = os.urandom(size)
            cw.write(msg)
            out.append(await wait_for(reader.readexactly(size)) == msg)
        lines = [os.urandom(n).replace(b"\n", b"x") + b"\n" for n in (0, 5, 20_000, 200_000)]
        cw.write(b"".join(lines))
        for line in lines:
            out.append(await wait_for(reader.readuntil(b"\n")) == line)
        tail = os.urandom(500_000)
        cw.write(tail)
        cw.write_eof()
        out.append(await wait_for(reader.read(-1)) == tail)
        out.append(reader.at_eof())
        feeds = _feeds(tr)
        cw.close()
        tr.close()
        return out, feeds

    out, feeds = run_in(tloop, main())
    assert all(out), out
    if not is_stock(tloop):
        assert feeds > 0  # the chunks went straight into the reader's buffer


class _Events:
    """Wraps a transport's pause_reading/resume_reading (instance
    attributes, as the reader calls self._transport.pause_reading())."""

    def __init__(self, tr, reader):
        self.log = []
        self.tr = tr
        pause, resume = tr.pause_reading, tr.resume_reading

        def pause_reading():
            self.log.append(("pause", len(reader._buffer), tr.is_reading()))
            pause()

        def resume_reading():
            self.log.append(("resume", len(reader._buffer), tr.is_reading()))
            resume()

        tr.pause_reading = pause_reading
        tr.resume_reading = resume_reading


def test_pause_at_twice_the_limit_and_resume(tloop):
    """The reader pauses its transport once its buffer passes 2 * limit and
    resumes it at the limit, as stock; the transport stops and starts
    reading with it and every byte arrives in order."""
    limit = 1024

    async def main():
        reader, proto, cr, cw = await _pair(tloop, limit=limit)
        tr = _transport_of(proto)
        ev = _Events(tr, reader)
        msg = os.urandom(1 << 20)
        cw.write(msg)
        for _ in range(2000):  # until the reader paused the transport
            if reader._paused:
                break
            await asyncio.sleep(0.001)
        paused_state = (reader._paused, tr.is_reading(), len(reader._buffer) > 2 * limit)
        got = bytearray()
        while len(got) < len(msg):
            got += await wait_for(reader.read(4096))
        cw.close()
        tr.close()
        return ev.log, paused_state, bytes(got) == msg

    log, paused_state, same = run_in(tloop, main())
    assert same
    assert paused_state == (True, False, True)
    assert log and log[0][0] == "pause"
    for i, (what, size, reading) in enumerate(log):
        assert what == ("pause" if i % 2 == 0 else "resume")
        if what == "pause":
            assert size > 2 * limit and reading
        else:
            assert size <= limit and not reading


def test_transport_that_cannot_pause_is_forgotten(tloop):
    """pause_reading raising NotImplementedError: the reader forgets its
    transport (_transport None) and buffers everything, as stock."""

    async def main():
        reader, proto, cr, cw = await _pair(tloop, limit=1024)
        tr = _transport_of(proto)
        calls = []

        def pause_reading():
            calls.append(len(reader._buffer))
            raise NotImplementedError

        tr.pause_reading = pause_reading
        msg = os.urandom(300_000)
        cw.write(msg)
        got = await wait_for(reader.readexactly(len(msg)))
        state = (reader._transport is None, reader._paused, tr.is_reading(), len(calls))
        cw.close()
        tr.close()
        return got == msg, state

    same, state = run_in(tloop, main())
    assert same
    assert state == (True, False, True, 1)


def test_data_after_feed_eof_fails_the_transport_as_stock(tloop):
    """feed_eof() by the application, then more data: feed_data's assert
    fails inside data_received, the transport's fatal error, as stock."""

    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        reader, proto, cr, cw = await _pair(tloop)
        tr = _transport_of(proto)
        cw.write(b"first")
        assert await wait_for(reader.readexactly(5)) == b"first"
        reader.feed_eof()
        cw.write(b"late")
        for _ in range(2000):
            if tr.is_closing() and errors:
                break
            await asyncio.sleep(0.001)
        cw.close()
        tr.close()
        return [(c.get("message"), type(c.get("exception"))) for c in errors], bytes(reader._buffer)

    errors, buffered = run_in(tloop, main())
    assert errors == [("Fatal error: protocol.data_received() call failed.", AssertionError)]
    assert buffered == b""


class _CountingReader(asyncio.StreamReader):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.chunks = []

    def feed_data(self, data):
        self.chunks.append(len(data))
        super().feed_data(data)


class _SubProto(asyncio.StreamReaderProtocol):
    pass


def _exchange(tloop, **pair_kw):
    async def main():
        reader, proto, cr, cw = await _pair(tloop, **pair_kw)
        tr = _transport_of(proto)
        msg = os.urandom(700_000)
        cw.write(msg)
        got = await wait_for(reader.readexactly(len(msg)))
        cw.close()
        tr.close()
        return reader, got == msg, _feeds(tr)

    return run_in(tloop, main())


class _SubReader(asyncio.StreamReader):
    pass


def test_a_reader_subclass_takes_feed_data(tloop):
    """A StreamReader subclass's own feed_data sees every byte; one with
    the methods unchanged is not fed by the core either (feeds 0)."""
    reader, same, feeds = _exchange(
        tloop, reader_factory=lambda: _CountingReader(loop=asyncio.get_running_loop())
    )
    assert same and sum(reader.chunks) == 700_000
    assert feeds in (None, 0)
    reader, same, feeds = _exchange(
        tloop, reader_factory=lambda: _SubReader(loop=asyncio.get_running_loop())
    )
    assert same
    assert feeds in (None, 0)


class _CountingProto(asyncio.StreamReaderProtocol):
    seen: list

    def data_received(self, data):
        self.seen.append(len(data))
        super().data_received(data)


def test_a_protocol_subclass_takes_data_received(tloop):
    """A StreamReaderProtocol subclass takes the ordinary data_received ->
    feed_data path: its own data_received sees every byte, and one with
    the methods unchanged is not fed by the core either (feeds 0)."""
    reader, same, feeds = _exchange(tloop, proto_factory=_SubProto)
    assert same
    assert feeds in (None, 0)
    _CountingProto.seen = []
    reader, same, feeds = _exchange(tloop, proto_factory=_CountingProto)
    assert same and sum(_CountingProto.seen) == 700_000
    assert feeds in (None, 0)


def test_pause_comes_once_past_twice_the_limit(tloop):
    """300 KB unread with a limit of 100 KB: past 2 * limit, so the reader
    is paused and its transport stopped, on every loop; with a limit of
    200 KB it is not (below 2 * limit)."""

    async def main(limit):
        reader, proto, cr, cw = await _pair(tloop, limit=limit)
        tr = _transport_of(proto)
        cw.write(os.urandom(300_000))
        for _ in range(2000):
            if len(reader._buffer) >= 300_000 or reader._paused:
                break
            await asyncio.sleep(0.001)
        for _ in range(20):  # a pause would come with the chunk that passed
            await asyncio.sleep(0)
        state = (reader._paused, tr.is_reading())
        cw.close()
        tr.close()
        return state

    assert run_in(tloop, main(100_000)) == (True, False)
    assert run_in(tloop, main(200_000)) == (False, True)


def test_an_instance_feed_data_is_called(tloop):
    """A feed_data set on a stock reader instance (stock protocol) is
    called for every chunk, as stock's attribute lookup finds it."""
    seen = []

    def make_reader():
        r = asyncio.StreamReader(loop=asyncio.get_running_loop())
        stock = r.feed_data
        r.feed_data = lambda data: (seen.append(len(data)), stock(data))
        return r

    reader, same, feeds = _exchange(tloop, reader_factory=make_reader)
    assert same and sum(seen) == 700_000
    assert feeds in (None, 0)


def test_debug_mode_takes_data_received(tloop):
    """In debug mode the chunks take the ordinary path (feeds stays 0)."""
    tloop.set_debug(True)
    try:
        reader, same, feeds = _exchange(tloop)
    finally:
        tloop.set_debug(False)
    assert same
    assert feeds in (None, 0)


def test_feed_data_patched_at_run_time_is_called(tloop, monkeypatch):
    """StreamReader.feed_data replaced on the class while a connection is
    open: the new method gets every later chunk, as on stock."""

    async def main():
        reader, proto, cr, cw = await _pair(tloop)
        tr = _transport_of(proto)
        first = os.urandom(200_000)
        cw.write(first)
        ok1 = await wait_for(reader.readexactly(len(first))) == first
        before = _feeds(tr)
        seen = []
        stock = asyncio.StreamReader.feed_data

        def feed_data(self, data):
            seen.append(len(data))
            stock(self, data)

        monkeypatch.setattr(asyncio.StreamReader, "feed_data", feed_data)
        second = os.urandom(300_000)
        cw.write(second)
        ok2 = await wait_for(reader.readexactly(len(second))) == second
        after = _feeds(tr)
        monkeypatch.undo()
        cw.close()
        tr.close()
        return ok1, ok2, sum(seen), before, after

    ok1, ok2, seen, before, after = run_in(tloop, main())
    assert ok1 and ok2
    assert seen == 300_000
    if not is_stock(tloop):
        assert before > 0 and after == before


@pytest.mark.parametrize("unix", [False, True])
def test_many_small_messages_each_wake_the_reader(tloop, unix, tmp_path):
    """A request/response stream of small messages (the 1 KiB echo) over
    TCP and Unix sockets: every answer complete and in order."""

    async def main():
        loop = asyncio.get_running_loop()

        done = loop.create_future()

        async def echo(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
            finally:
                w.close()
                if not done.done():
                    done.set_result(None)

        if unix:
            path = str(tmp_path / "s")
            srv = await asyncio.start_unix_server(echo, path)
            cr, cw = await wait_for(asyncio.open_unix_connection(path))
        else:
            srv = await asyncio.start_server(echo, "127.0.0.1", 0)
            cr, cw = await wait_for(
                asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
            )
        ok = True
        for i in range(300):
            msg = bytes([i % 256]) * 1024
            cw.write(msg)
            ok = ok and await wait_for(cr.readexactly(1024)) == msg
        feeds = _feeds(cw.transport)
        cw.close()
        await wait_for(done)  # the server's handler saw EOF and closed its end
        srv.close()
        await wait_for(srv.wait_closed())
        assert loop is asyncio.get_running_loop()
        return ok, feeds

    ok, feeds = run_in(tloop, main())
    assert ok
    if not is_stock(tloop):
        assert feeds >= 300


def test_a_read_pipe_with_a_stream_reader_protocol(tloop):
    """connect_read_pipe with a StreamReaderProtocol (the stdin-reading
    idiom): the pipe's 64 KiB reads go into the reader's buffer on ours,
    the stream byte-exact and paused past 2 * limit as stock."""

    async def main():
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        reader = asyncio.StreamReader(limit=4096, loop=loop)
        tr, _ = await wait_for(
            loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb")
            )
        )
        msg = os.urandom(1 << 20)
        wtr, _ = await wait_for(loop.connect_write_pipe(asyncio.Protocol, os.fdopen(wfd, "wb")))
        wtr.write(msg)
        for _ in range(2000):
            if reader._paused:
                break
            await asyncio.sleep(0.001)
        try:
            reading = tr.is_reading()
        except NotImplementedError:  # 3.10's stock read pipe transport has none
            reading = None
        paused = (reader._paused, reading)
        got = bytearray()
        while len(got) < len(msg):
            got += await wait_for(reader.read(65536))
        wtr.close()
        rest = await wait_for(reader.read())
        feeds = _feeds(tr)
        tr.close()
        return bytes(got) == msg, rest, paused, feeds

    same, rest, paused, feeds = run_in(tloop, main())
    assert same and rest == b""
    no_is_reading = is_stock(tloop) and sys.version_info < (3, 11)
    assert paused == (True, None if no_is_reading else False)
    if not is_stock(tloop):
        assert feeds > 0
