"""A pytest plugin that runs uvicorn's own test suite on a chosen loop.

Loaded with ``-p thirdparty_uvicorn_plugin`` (tools/ on PYTHONPATH) from
inside uvicorn's unpacked sdist; its tests are not edited (decision 449).
``UL_THIRDPARTY_LOOP`` chooses the loop (tools/thirdparty_loop.py). On the
uringloop way:

* the event loop policy makes uringloop's loops: the ``@pytest.mark.anyio``
  tests (anyio's runner, no loop_factory) and those that call
  ``asyncio.new_event_loop()`` get them;
* ``Config(loop="auto")`` (the default, taken by ``Server.run()`` and
  ``uvicorn.run()`` in the tests that start a server in a thread) names
  ``loop_factory`` below, uvicorn's ``module:callable`` form (0.36+).
  ``loop="asyncio"`` keeps naming the stock SelectorEventLoop: the tests that
  pass it run their server with ``Server.serve()`` on the test's own loop,
  and the one that calls its factory checks the stock class.

The terminal summary counts the uringloop loops made; servers in child
processes (workers, reload) run on the stock loop in every way.
"""

from __future__ import annotations

import thirdparty_loop


def loop_factory(use_subprocess: bool = False):
    """uvicorn's loop setup: ``factory(use_subprocess) -> loop factory``."""
    return thirdparty_loop.new_loop


def pytest_configure(config):
    thirdparty_loop.install()
    if thirdparty_loop.LOOP == "uringloop":
        from uvicorn import config as uvicorn_config

        uvicorn_config.LOOP_FACTORIES["auto"] = f"{__name__}:loop_factory"


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(thirdparty_loop.summary_line())
