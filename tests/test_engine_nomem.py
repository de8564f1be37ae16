"""Allocation failures never lose an op or a record (review D13).

`ul_test_fail_allocs(1)` makes every allocation the engine attempts fail, as
if memory were exhausted. Under it, a submission either raises
OSError(ENOMEM) (and holds no slot) or is accepted, and then its final record
comes once memory is back: no op is dropped, no future would stay pending.
The paths that used to drop work on ENOMEM: the records kept outside a run
(pend), the backlog of ops to (re)start, io_uring cancels that found no SQE,
and epoll's list of fds to retry.
"""

from __future__ import annotations

import errno

import pytest
from conftest import Collector, drain, run_until

from uringloop.engine import lib


@pytest.fixture
def no_memory():
    """Call it to make allocations fail; they work again after the test."""
    yield lambda on=True: lib.ul_test_fail_allocs(1 if on else 0)
    lib.ul_test_fail_allocs(0)


def _submit_all(calls):
    """Run each submission; return the collectors of those accepted."""
    accepted = []
    for cb, call in calls:
        try:
            call()
        except OSError as exc:
            assert exc.errno == errno.ENOMEM, exc
        else:
            accepted.append(cb)
    return accepted


def test_backlog_and_pend_under_enomem(make_engine, no_memory):
    """More ops than the SQ holds before the first run (they wait in the
    backlog on io_uring), some cancelled at once (records made outside a run):
    every accepted op completes once memory is back."""
    eng = make_engine(sq_entries=8)
    first = [Collector("warm")]  # allocates the op table's first chunk; no run yet
    eng.nop(first[0])
    no_memory()
    cols = [Collector(f"nop{i}") for i in range(200)]
    accepted = _submit_all([(c, lambda c=c: eng.nop(c)) for c in cols])
    assert accepted, "nothing accepted: the engine reserves nothing ahead"
    if eng.backend == "io_uring":  # epoll's NOPs end at once: nothing stays live
        assert len(accepted) < len(cols), "past the reserve, submissions say ENOMEM"
    no_memory(False)
    drain(eng)
    assert all(c.finals == 1 for c in first + accepted)
    assert eng.in_flight == 0


def test_cancel_without_sqe_under_enomem(make_engine, socketpair, no_memory):
    """io_uring: before the first run the SQ is full, so cancels are stored to
    be submitted later; under ENOMEM they must not be dropped (the receives
    would wait forever). epoll: the cancels complete at once."""
    eng = make_engine(sq_entries=8)
    pairs = [socketpair() for _ in range(8)]
    cols = [Collector(f"recv{i}") for i in range(8)]
    for (a, _b), c in zip(pairs, cols, strict=True):
        a.setblocking(False)
        eng.recv_into(a.fileno(), bytearray(16), c)
    no_memory()
    for (a, _b) in pairs:
        eng.cancel_fd(a.fileno())
    no_memory(False)
    drain(eng)
    assert all(c.finals == 1 and c.res < 0 for c in cols), cols


def test_epoll_ready_list_under_enomem(make_engine, socketpair, no_memory):
    """An fd whose receive yields (pool empty) goes on the retry list; under
    ENOMEM it must not be forgotten (no new edge would ever come for it)."""
    eng = make_engine(buf_count=1)
    y1, y2 = socketpair()
    z1, z2 = socketpair()
    y1.setblocking(False)
    z1.setblocking(False)
    first = Collector("y first")
    eng.recv(y1.fileno(), first, multishot=False)
    y2.send(b"a")
    run_until(eng, lambda: first.finals == 1)
    y2.send(b"b")  # its edge comes while nothing waits on y
    for _ in range(3):
        eng.run(0.02)
    z2.send(b"z")
    z = Collector("z")
    eng.recv(z1.fileno(), z, multishot=False)  # takes the only pool buffer
    y = Collector("y second")
    no_memory()
    accepted = _submit_all([(y, lambda: eng.recv(y1.fileno(), y, multishot=False))])
    no_memory(False)
    run_until(eng, lambda: z.finals == 1 and all(c.finals == 1 for c in accepted),
              what="the receives")
    if accepted:
        assert y.payload() == b"b"
