"""A pytest plugin that runs anyio's own test suite on a chosen asyncio loop.

Loaded with ``-p thirdparty_anyio_plugin`` (tools/ on PYTHONPATH) from inside
anyio's unpacked sdist; anyio's tests are not edited. ``UL_THIRDPARTY_LOOP``
chooses the loop (tools/thirdparty_loop.py):

* ``stock``     -- the stock loop, as anyio's own CI runs it;
* ``uringloop`` -- ``uringloop.new_event_loop`` (``URINGLOOP_BACKEND`` picks
  io_uring or epoll): it becomes the ``loop_factory`` of every asyncio case's
  ``anyio_backend`` options, and the event loop policy's loop, so that tests
  calling ``asyncio.new_event_loop()`` or ``anyio.run(..., backend="asyncio")``
  without options get it too.

In both ways only anyio's asyncio cases run: plain, and on Python 3.12+ its
eager task factory cases (``asyncio+eager``: their factory calls
``asyncio.new_event_loop()``, so the policy makes them uringloop's, with the
eager factory set; decision 471); the cases for other loops (uvloop) and for
trio are deselected. The terminal
summary says how many uringloop loops were made, the proof the binding took.
"""

from __future__ import annotations

import pytest
import thirdparty_loop

LOOP = thirdparty_loop.LOOP
_new_loop = thirdparty_loop.new_loop


def pytest_configure(config):
    thirdparty_loop.install()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("anyio_backend") if callspec is not None else None
        if param is None:
            keep.append(item)
            continue
        name, options = (param, {}) if isinstance(param, str) else param
        factory = options.get("loop_factory")
        # 3.12+: anyio's eager task cases make their loop with
        # asyncio.new_event_loop(), the policy's: kept, as they are
        eager = getattr(factory, "__name__", "") == "eager_task_loop_factory"
        if name != "asyncio" or (factory and not eager) or options.get("use_uvloop"):
            drop.append(item)
            continue
        if LOOP == "uringloop" and not eager:
            callspec.params["anyio_backend"] = (name, {**options, "loop_factory": _new_loop})
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(thirdparty_loop.summary_line())
