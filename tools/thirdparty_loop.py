"""The loop a third party's suite runs on, for the plugins of
tools/thirdparty_suite.py (decisions 438, 449).

``UL_THIRDPARTY_LOOP`` chooses it: ``stock`` (the suite as its own CI runs
it) or ``uringloop`` (``uringloop.new_event_loop``; ``URINGLOOP_BACKEND``
picks io_uring or epoll). ``install()`` sets an event loop policy whose loops
are uringloop's, so that ``asyncio.new_event_loop()``, ``asyncio.Runner()``
and ``asyncio.run()`` without a factory (unittest's IsolatedAsyncioTestCase,
anyio's runner without options) make them; ``made()`` counts the uringloop
loops made, the proof the binding took.
"""

from __future__ import annotations

import asyncio
import os

LOOP = os.environ.get("UL_THIRDPARTY_LOOP", "stock")
if LOOP not in ("stock", "uringloop"):
    raise SystemExit(f"UL_THIRDPARTY_LOOP must be stock or uringloop, not {LOOP!r}")

_made = 0


def new_loop():
    """A uringloop loop, counted."""
    global _made
    import uringloop

    _made += 1
    return uringloop.new_event_loop()


def made() -> int:
    return _made


class Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return new_loop()


def install() -> None:
    """On the uringloop way, make uringloop the policy's loop."""
    if LOOP == "uringloop":
        asyncio.set_event_loop_policy(Policy())


def summary_line() -> str:
    import uringloop

    line = f"thirdparty plugin: loop={LOOP}, uringloop loops made: {_made}"
    if LOOP == "uringloop":
        line += f", backend {uringloop.backend_info()['backend']}"
    return line
