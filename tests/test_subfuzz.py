"""A fixed set of tools/subfuzz.py's seeds, replayed on every uringloop kind
against the stock loop (decision 491): each seed is one to four children and
the parent's operations on them (subprocess_exec and subprocess_shell with a
SubprocessProtocol, create_subprocess_exec streams; writes, reads,
communicate, wait, signals, pause/resume_reading, close); the trace (each
child's callbacks, bytes per fd, return code, every op's result, the
exception handler, the asyncio log, fds and children left) must equal the
stock loop's, as the tool normalises it.
"""

from __future__ import annotations

import copy
import os
import sys

import pytest
from conftest import LOOP_KINDS, make_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import difffuzz  # noqa: E402
import subfuzz  # noqa: E402

# 6: two protocols and a streams child, pause/resume, kill after sync;
# 10: two paused protocols, a streams child terminated, reads after its exit;
# 20: four children (a subprocess_shell one), kill, writes after the exit,
# close(); 26: four children that block: kill, terminate ignored, a bad
# executable; 37: communicate, stderr merged, a file's fd as stdin and stdout
SEEDS = [6, 10, 20, 26, 37]
# --extra (decisions 504-507): 5: three children with pass_fds, a new
# session, env added or replaced, cwd and preexec_fn; 44: pidfd_open refused
# (uringloop's stock child-watcher path), a streams child in a new session
# left running as the loop closes (what is warned, left open, reaped), a
# shell one in a process group
EXTRA_SEEDS = [5, 44]

_stock: dict = {}


@pytest.fixture(autouse=True)
def _test_kinds(monkeypatch):
    # the loops the tests make (URINGLOOP_REQUIRE_IO_URING honoured)
    monkeypatch.setattr(difffuzz, "make_loop", make_loop)


def _stock_trace(seed, extra=False):
    if (seed, extra) not in _stock:
        _stock[seed, extra] = subfuzz.run("stock", subfuzz.generate(seed, extra))
    return _stock[seed, extra]


@pytest.mark.parametrize("kind", LOOP_KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_seed_same_as_stock(seed, kind):
    ref = _stock_trace(seed)
    assert ref["fatal"] is None and not ref["leaked_fds"] and not ref["zombies"], ref
    got = subfuzz.run(kind, subfuzz.generate(seed))
    assert subfuzz.differences(ref, got) == []


@pytest.mark.parametrize("kind", LOOP_KINDS)
@pytest.mark.parametrize("seed", EXTRA_SEEDS)
def test_extra_seed_same_as_stock(seed, kind):
    prog = subfuzz.generate(seed, extra=True)
    ref = _stock_trace(seed, True)
    assert ref["fatal"] is None and ref["reports"] and all(ref["reports"]), ref
    if prog["abandon"]:
        assert ref["zombies"] and ref["warnings"] and ref["after_close"], ref
    got = subfuzz.run(kind, prog)
    assert subfuzz.differences(ref, got) == []


# --extra seed 21042, reduced (decision 777): a child writes 70,000 B to its
# stderr pipe, which the parent pauses, then 1 B to its stdout file, then
# blocks; the loop closes with it running (abandon)
PAUSED_ABANDON = {
    "seed": 21042,
    "children": [
        {
            "mode": "proto",
            "stdin": "fd",
            "stdout": "fd",
            "stderr": "pipe",
            "ignterm": False,
            "stdin_file": 100,
            "steps": [["err", 70000, 572], ["out", 1, 964], ["sleep", 5]],
            "reader": None,
            "closein": False,
            "tail": ["block"],
            "opts": {"pass_fds": 0, "session": None, "env": None, "cwd": False, "preexec": False},
        }
    ],
    "ops": [["spawn", 0], ["pause", 0, 2]],
    "pidfd_refused": False,
    "abandon": True,
}


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_an_abandoned_child_paused_on_a_full_pipe(kind):
    """Decision 777: a child left running as the loop closes has its paused
    pipes resumed first, as every other child's end does, so its bytes
    before the block come on every loop (stock's child had stayed blocked
    on the full pipe and never wrote its stdout byte; ours, reading the
    paused pipe on (162), had)."""
    if "paused-abandon" not in _stock:
        _stock["paused-abandon"] = subfuzz.run("stock", PAUSED_ABANDON)
    ref = _stock["paused-abandon"]
    assert ["abandon", 0, "ok"] in ref["ops"], ref
    assert ref["children"][0]["data"][1][0] == 1, ref
    got = subfuzz.run(kind, PAUSED_ABANDON)
    assert subfuzz.differences(ref, got) == []


def test_extra_keeps_the_programs():
    """Decision 504: --extra only adds to a seed's program; without the
    additions it is the program of the seed as before (the seeds replayed
    above stay what they were)."""
    for seed in range(300):
        prog = subfuzz.generate(seed, extra=True)
        del prog["pidfd_refused"], prog["abandon"]
        for c in prog["children"]:
            del c["opts"]
        assert prog == subfuzz.generate(seed), seed


def test_extra_changes_are_differences():
    """What --extra adds to the trace is compared: a child's report, the
    state after the loop closed, a warning; whether a closed loop's child
    was reaped only where ours ran with pidfd_open refused (decision 506)."""
    ref = _stock_trace(44, True)
    assert not _changed(ref, lambda t: None)
    rep = ref["reports"][0]
    for key in ("sid", "pgid", "pgid_parent", "path"):
        assert _changed(ref, lambda t, key=key: t["reports"][0].__setitem__(key, not rep[key]))
    assert _changed(ref, lambda t: t["reports"][1].__setitem__("umask", 18))
    assert _changed(ref, lambda t: t["reports"][0].__setitem__("cwd", "<cwd>"))
    assert _changed(ref, lambda t: t["reports"][0].__setitem__("env", None))
    assert _changed(ref, lambda t: t["reports"][0].__setitem__("passed", [False]))
    assert _changed(ref, lambda t: t["after_close"][0].__setitem__(0, -9))
    assert _changed(ref, lambda t: t["warnings"].append("ResourceWarning: unclosed transport"))
    assert not _changed(ref, lambda t: t.__setitem__("reaped", ref["reaped"] + 1))
    refused = _changed(ref, lambda t: t.update(reaped=ref["reaped"] + 1, pidfd_refused=True))
    assert bool(refused) == (sys.version_info < (3, 12))


def _changed(ref, edit):
    t = copy.deepcopy(ref)
    edit(t)
    return subfuzz.differences(ref, t)


def test_a_changed_trace_is_a_difference():
    """The comparison sees what it must: bytes, a byte count at a pipe's
    connection_lost, a lost or added callback, process_exited after
    connection_lost, an exception, a return code, an op's result, a log line,
    a handler call, a leaked fd, a zombie, a hang."""
    ref = _stock_trace(20)
    assert subfuzz.differences(ref, ref) == []
    proto = next(i for i, c in enumerate(ref["children"]) if c["events"])
    ev = ref["children"][proto]["events"]
    lost = next(i for i, e in enumerate(ev) if e[0] == "pipe_lost")
    fd = next(fd for fd, d in ref["children"][proto]["data"].items())

    assert _changed(ref, lambda t: t["children"][proto]["data"][fd].__setitem__(1, 12345))
    assert _changed(ref, lambda t: t["children"][proto]["data"][fd].__setitem__(0, 1 << 40))
    assert _changed(ref, lambda t: t["children"][proto]["events"][lost].__setitem__(3, -1))
    assert _changed(ref, lambda t: t["children"][proto]["events"][lost].__setitem__(2, "OSError"))
    assert _changed(ref, lambda t: t["children"][proto]["events"].pop(lost))
    assert _changed(ref, lambda t: t["children"][proto]["events"].insert(1, ["exited"]))

    def exited_last(t):
        e = t["children"][proto]["events"]
        e.remove(["exited"])
        e.append(["exited"])

    assert _changed(ref, exited_last)
    assert _changed(ref, lambda t: t["children"][proto].__setitem__("rc", 7))
    assert _changed(ref, lambda t: t["ops"][-1].__setitem__(3, "other"))
    assert _changed(ref, lambda t: t["log"].append(["WARNING", "x"]))
    assert _changed(ref, lambda t: t["handler"].append(["x", None]))
    assert _changed(ref, lambda t: t["leaked_fds"].append("pipe:[#]"))
    assert _changed(ref, lambda t: t.__setitem__("zombies", 1))
    assert _changed(ref, lambda t: t.__setitem__("fatal", "hang"))


def test_stock_orders_are_normalised_and_only_those():
    """Decision 491: between connection_made and connection_lost, stock's
    order of pipe_connection_lost calls and process_exited varies from run
    to run; that order alone is not compared."""
    ref = _stock_trace(20)
    proto = next(i for i, c in enumerate(ref["children"]) if len(c["events"]) > 3)

    def reversed_middle(t):
        e = t["children"][proto]["events"]
        e[1:-1] = e[1:-1][::-1]

    assert not _changed(ref, reversed_middle)

    def made_later(t):
        e = t["children"][proto]["events"]
        e[0], e[1] = e[1], e[0]

    assert _changed(ref, made_later)


def test_signals_only_after_sync():
    """Decision 491: a signal (kill, terminate, send_signal, close()) goes
    only to a child that blocks at its end, after a sync op on it (every byte
    it writes first has come), so its bytes and return code do not depend on
    timing; no child is signalled twice before it is waited for."""
    for seed in range(1500):
        prog = subfuzz.generate(seed)
        synced, dead = set(), set()
        for op in prog["ops"]:
            op = op[1] if op[0] == "stoprun" else op
            if op[0] == "bad":
                continue
            c = prog["children"][op[1]]
            if op[0] == "sync":
                synced.add(op[1])
            elif op[0] in ("kill", "terminate", "send_signal") or (
                op[0] == "pclose" and op[1] not in dead and c["tail"][0] == "block"
            ):
                assert c["tail"][0] == "block" and op[1] in synced, (seed, op)
                assert op[1] not in dead, (seed, op)
                if not (op[0] == "terminate" and c["ignterm"]):
                    dead.add(op[1])
            elif op[0] == "wait":
                dead.discard(op[1])
