"""A pytest plugin that runs aiohttp's own test suite on a chosen loop.

Loaded with ``-p thirdparty_aiohttp_plugin`` (tools/ and the built uringloop
tree on PYTHONPATH) by ``tools/thirdparty_suite.py --suite aiohttp``; aiohttp's
tests are not edited (decisions 443, 470). ``UL_THIRDPARTY_LOOP`` chooses the loop
(tools/thirdparty_loop.py): on the uringloop way the event loop policy's loops
are uringloop's, so aiohttp's ``--aiohttp-loop=pyloop`` factory
(``asyncio.new_event_loop``), its ``loop`` fixture and ``run_app``/
``asyncio.run`` all get uringloop. The session fails if that way never made
a uringloop loop.
"""

from __future__ import annotations

import thirdparty_loop


def pytest_configure(config):  # noqa: ARG001
    thirdparty_loop.install()


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    if thirdparty_loop.LOOP == "uringloop" and not thirdparty_loop.made():
        session.exitstatus = 3


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(thirdparty_loop.summary_line())
