"""pytest plugin that runs a third-party test suite on uringloop.

Loaded with ``-p uringloop_suite_plugin`` (this directory and the built
uringloop tree on PYTHONPATH) by tools/aiohttp_suite.py.  UL_SUITE_LOOP picks
the loop: ``stock`` leaves asyncio alone (the reference run), anything else
installs a policy whose ``new_event_loop()`` makes uringloop loops, so that
aiohttp's ``--aiohttp-loop=pyloop`` factory (``asyncio.new_event_loop``), its
``loop`` fixture and ``run_app``/``asyncio.run`` all get uringloop without an
edit to the suite.  The backend comes from URINGLOOP_BACKEND as usual.  The
session fails if the uringloop run never made a uringloop loop.
"""

from __future__ import annotations

import asyncio
import os

_made: dict[str, int] = {}


def _wanted() -> bool:
    return os.environ.get("UL_SUITE_LOOP", "uringloop") != "stock"


def pytest_configure(config):  # noqa: ARG001
    if not _wanted():
        return
    import uringloop

    class _CountingPolicy(uringloop.EventLoopPolicy):
        def _loop_factory(self):
            loop = uringloop.Loop()
            _made[loop.backend] = _made.get(loop.backend, 0) + 1
            return loop

    asyncio.set_event_loop_policy(_CountingPolicy())


def pytest_report_header(config):  # noqa: ARG001
    if not _wanted():
        return "event loop: stock asyncio"
    import uringloop

    return f"event loop: uringloop, backend {uringloop.backend_info()['backend']}"


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    if not _wanted():
        return
    want = os.environ.get("URINGLOOP_BACKEND")
    other = {b: n for b, n in _made.items() if want and b != want}
    if not _made or other:
        session.exitstatus = 3
    print(f"\nuringloop loops made per backend: {_made}")
