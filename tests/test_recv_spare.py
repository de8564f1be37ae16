"""A received record's bytes may be the memory of an earlier one that nobody
holds any more (decision 730: one spare bytes past obmalloc's sizes, kept
when our reference was its last). What must hold: a bytes someone still
holds is never reused, a reused one reads as a fresh one (its size, its
content, its hash), and the bytes reach the peer in order. Request by
request (each answer back before the next message), so every message is one
record and the spare is taken by the next; sizes between 513 and 1,024
bytes, some smaller than the one before, so the spare's size is cut. On
every kind and on the stock loop."""

from __future__ import annotations

import asyncio
import socket

from conftest import run_in

SIZES = [1024, 700, 1024, 513, 1000, 1024, 600, 900, 1024, 800] * 3


def _payload(i: int, size: int) -> bytes:
    """size bytes unlike every other message's"""
    return bytes((i * 7 + k) % 251 for k in range(size))


class Echo(asyncio.Protocol):
    """echoes each piece; keeps every piece (keep) or only checks each one's
    hash against a fresh bytes of the same content, keeping copies"""

    def __init__(self, keep: bool):
        self.keep = keep
        self.pieces: list[bytes] = []
        self.bad_hashes = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.keep:
            self.pieces.append(data)
        else:
            if hash(data) != hash(bytes(bytearray(data))):
                self.bad_hashes += 1
            self.pieces.append(bytes(bytearray(data)))  # a copy: data itself is let go
        self.transport.write(data)


def _peer(listener: socket.socket) -> list[bytes]:
    """the other end, a blocking socket in a thread (so the loop's own
    receives are the echo side's alone): each message, then its echo"""
    listener.settimeout(5)
    conn, _ = listener.accept()
    sent = []
    with conn:
        conn.settimeout(5)
        for i, size in enumerate(SIZES):
            msg = _payload(i, size)
            sent.append(msg)
            conn.sendall(msg)
            got = bytearray()
            while len(got) < size:
                chunk = conn.recv(65536)
                assert chunk, "the transport closed early"
                got += chunk
            assert bytes(got) == msg, f"echo {i} differs"
    return sent


async def _round_trips(loop, keep: bool):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        peer = loop.run_in_executor(None, _peer, listener)
        tr, pr = await loop.create_connection(lambda: Echo(keep), "127.0.0.1", port)
        try:
            sent = await peer
        finally:
            tr.close()
    return pr, sent


def test_held_bytes_are_never_reused(any_loop):
    """a protocol that keeps every piece finds each as it came"""
    pr, sent = run_in(any_loop, _round_trips(any_loop, keep=True), timeout=30)
    assert b"".join(pr.pieces) == b"".join(sent)
    assert len(pr.pieces) == len(sent)
    for i, (piece, msg) in enumerate(zip(pr.pieces, sent, strict=True)):
        assert piece == msg, f"piece {i} changed after it was delivered"


def test_a_reused_bytes_reads_as_a_fresh_one(any_loop):
    """each piece hashed (which caches the hash in the object) and let go:
    the next piece's hash is its own"""
    pr, sent = run_in(any_loop, _round_trips(any_loop, keep=False), timeout=30)
    assert pr.bad_hashes == 0
    assert b"".join(pr.pieces) == b"".join(sent)


class BufferedEcho(asyncio.BufferedProtocol):
    """echoes each piece as a bytearray it overwrites right after write():
    the write must have copied it (stock's 3.10/3.11 copy into its buffer),
    into the spare bytes when one fits (decision 733)"""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray(65536)

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        piece = self.buf[:nbytes]
        self.transport.write(piece)
        piece[:] = b"\0" * nbytes


async def _buffered_round_trips(loop):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        peer = loop.run_in_executor(None, _peer, listener)
        tr, _ = await loop.create_connection(BufferedEcho, "127.0.0.1", port)
        try:
            return await peer
        finally:
            tr.close()


def test_a_written_bytearray_is_copied_into_the_spare_as_it_was(any_loop):
    """the peer gets each piece as written, not as overwritten after"""
    sent = run_in(any_loop, _buffered_round_trips(any_loop), timeout=30)
    assert len(sent) == len(SIZES)
