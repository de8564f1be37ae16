"""A pytest plugin that runs websockets' own asyncio tests on a chosen loop.

Loaded with ``-p thirdparty_websockets_plugin`` (tools/ on PYTHONPATH) from
inside a websockets source tree; its tests are not edited (decision 449).
``UL_THIRDPARTY_LOOP`` chooses the loop (tools/thirdparty_loop.py).

websockets' asyncio tests are unittest cases: ``IsolatedAsyncioTestCase``
(tests/asyncio) makes its loop with ``asyncio.Runner()`` and the legacy
``AsyncioTestCase`` (tests/legacy) with ``asyncio.new_event_loop()``, both
through the event loop policy (3.13's ``loop_factory`` attribute is None
by default: the policy again), so the policy binds them all
(the mitmproxy thread of the proxy tests too). IsolatedAsyncioTestCase runs
its loop in debug mode, as on stock. The terminal summary counts the
uringloop loops made.
"""

from __future__ import annotations

import thirdparty_loop


def pytest_configure(config):
    thirdparty_loop.install()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(thirdparty_loop.summary_line())
