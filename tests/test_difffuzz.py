"""A fixed set of tools/difffuzz.py's seeds, replayed on every uringloop kind
against the stock loop (decision 460): each seed is a random program of
transport operations (TCP, Unix, UDP, pipe); the trace (what every protocol
saw, what every call returned or raised, the exception handler, the asyncio
log, fds left) must equal the stock loop's, as the tool normalises it.

Seeds 8 and 55 are programs that differed before decisions 461 and 462.
"""

from __future__ import annotations

import os
import sys

import pytest
from conftest import LOOP_KINDS, make_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import difffuzz  # noqa: E402

# family per seed: 2 tcp (rst), 7 udp, 8 unix (EOF read again, decision
# 461), 12 pipe, 19 tcp, 55 tcp (write_eof after a reset, decision 462)
SEEDS = [2, 7, 8, 12, 19, 55]

_stock: dict[int, dict] = {}


@pytest.fixture(autouse=True)
def _test_kinds(monkeypatch):
    # the loops the tests make (URINGLOOP_REQUIRE_IO_URING honoured)
    monkeypatch.setattr(difffuzz, "make_loop", make_loop)


def _stock_trace(seed):
    if seed not in _stock:
        _stock[seed] = difffuzz.run("stock", difffuzz.generate(seed))
    return _stock[seed]


@pytest.mark.parametrize("kind", LOOP_KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_seed_same_as_stock(seed, kind):
    ref = _stock_trace(seed)
    assert ref["fatal"] is None and not ref["leaked_fds"], ref
    prog = difffuzz.generate(seed)
    got = difffuzz.run(kind, prog)
    assert difffuzz.differences(ref, got, prog["family"]) == []


def test_a_changed_trace_is_a_difference():
    """The comparison sees what it must: a byte, an event moved before a
    byte count, an exception type, a log line, a leaked fd, a hang."""
    ref = _stock_trace(8)
    assert difffuzz.differences(ref, ref) == []

    def changed(edit):
        import copy

        t = copy.deepcopy(ref)
        edit(t)
        return difffuzz.differences(ref, t)

    def moved_eof(t):
        ev = t["ends"]["a"]
        i = next(i for i, e in enumerate(ev) if e[0] == "eof")
        ev[i] = ["eof", ev[i][1] + 1]

    assert changed(moved_eof)
    assert changed(lambda t: t["ends"]["b"][-1].__setitem__(2, 12345))  # other bytes
    assert changed(lambda t: t["ends"]["a"].pop())  # an event lost
    assert changed(lambda t: t["ops"][-1].__setitem__(2, "other"))
    assert changed(lambda t: t["log"].append(["WARNING", "x"]))
    assert changed(lambda t: t["handler"].append(["x", None]))
    assert changed(lambda t: t["leaked_fds"].append("socket:[#]"))
    assert changed(lambda t: t.__setitem__("fatal", "hang"))
