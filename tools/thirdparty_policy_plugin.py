"""A pytest plugin that runs httpx's, httpcore's or starlette's own test suite
on a chosen loop, by the event loop policy alone.

Loaded with ``-p thirdparty_policy_plugin`` (tools/ on PYTHONPATH) from inside
the suite's unpacked sdist; its tests are not edited (decision 466).
``UL_THIRDPARTY_LOOP`` chooses the loop (tools/thirdparty_loop.py). On the
uringloop way the policy's loops are uringloop's, which binds:

* the ``@pytest.mark.anyio`` tests: these suites keep anyio's own
  ``anyio_backend`` fixture (``"asyncio"``, no options), so anyio's runner
  makes its loop with ``asyncio.Runner()`` and no factory: the policy;
* starlette's ``TestClient``: its blocking portal runs the app on
  ``anyio.run(backend="asyncio")`` in a thread, again without a factory;
* httpx's ``server`` fixture: uvicorn in a thread with ``loop="asyncio"``,
  which names the stock SelectorEventLoop; here both ``"asyncio"`` and
  ``"auto"`` name uringloop's factory (uvicorn's ``module:callable`` form),
  so the server side of httpx's client tests runs on uringloop too;
* httpcore's ``pytest-httpbin`` server is a werkzeug thread (no loop).

anyio's plugin (4.12+) runs each anyio test on every backend it can import,
trio included (these suites' tests import trio, so it is installed): the
trio cases are deselected in every way, after anyio's plugin has made them
(some at ``pytest_collection_finish``). The session fails if the uringloop
way never made a uringloop loop; the terminal summary counts them.
"""

from __future__ import annotations

import pytest
import thirdparty_loop


def loop_factory(use_subprocess: bool = False):  # noqa: ARG001
    """uvicorn's loop setup: ``factory(use_subprocess) -> loop factory``."""
    return thirdparty_loop.new_loop


def pytest_configure(config):  # noqa: ARG001
    thirdparty_loop.install()
    if thirdparty_loop.LOOP == "uringloop":
        try:
            from uvicorn import config as uvicorn_config
        except ImportError:
            return
        for name in ("asyncio", "auto"):
            uvicorn_config.LOOP_FACTORIES[name] = f"{__name__}:loop_factory"


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    keep, drop = [], []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("anyio_backend") if callspec is not None else None
        name = param if param is None or isinstance(param, str) else param[0]
        (keep if name in (None, "asyncio") else drop).append(item)
    if drop:
        session.config.hook.pytest_deselected(items=drop)
        session.items[:] = keep


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    if thirdparty_loop.LOOP == "uringloop" and not thirdparty_loop.made():
        session.exitstatus = 3


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(thirdparty_loop.summary_line())
