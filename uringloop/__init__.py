"""uringloop: an asyncio event loop for Linux on an io_uring completion engine.

The engine (``uringloop.engine``) runs io_uring where the kernel allows it and
an epoll backend behind the same interface where it does not. Use it with one
line::

    uringloop.run(main())                                   # like asyncio.run
    asyncio.run(main(), loop_factory=uringloop.new_event_loop)   # 3.12+
    uringloop.install()                                     # policy for asyncio.run
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def _explain_missing_build() -> None:
    """Raise a clear ImportError when the compiled extensions are missing.

    Importing the package from a source checkout that was never built (say
    ``python -m uringloop`` from the repository root, which puts the checkout
    first on sys.path) otherwise fails deep inside with a misleading
    "partially initialized module ... circular import" error.
    """
    import importlib.util

    missing = [
        f"{__name__}.{name}"
        for name in ("_engine_cffi", "_sched")
        if importlib.util.find_spec(f"{__name__}.{name}") is None
    ]
    if missing:
        where = __path__[0]
        raise ImportError(
            f"uringloop's compiled extensions ({', '.join(missing)}) are not built in {where}"
            " (a source checkout?). Build them in place with `make build` (or"
            " `python setup.py build_ext --inplace`), or install the package with"
            " `pip install .` and run from outside the checkout.",
            name=missing[0],
        ) from None  # the original error would only mislead


try:
    from .engine import Engine, backend_info
    from .loop import Loop
except ImportError:
    _explain_missing_build()
    raise

__all__ = ["Engine", "EventLoopPolicy", "Loop", "backend_info", "install", "new_event_loop", "run"]
__version__ = "0.1.0"


def new_event_loop() -> Loop:
    """A new uringloop event loop (backend from URINGLOOP_BACKEND, else auto)."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy, making uringloop loops."""

    def _loop_factory(self) -> Loop:
        return Loop()


def install() -> None:
    """Make asyncio.run() and get_event_loop() use uringloop."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


if sys.version_info >= (3, 11):

    def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
        """Run a coroutine on a new uringloop loop, as asyncio.run does."""
        if asyncio.events._get_running_loop() is not None:
            raise RuntimeError("asyncio.run() cannot be called from a running event loop")
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)

else:

    def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
        """Run a coroutine on a new uringloop loop, as asyncio.run does."""
        if asyncio.events._get_running_loop() is not None:
            raise RuntimeError("asyncio.run() cannot be called from a running event loop")
        if not asyncio.iscoroutine(main):
            raise ValueError(f"a coroutine was expected, got {main!r}")
        loop = new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            if debug is not None:
                loop.set_debug(debug)
            return loop.run_until_complete(main)
        finally:
            try:
                _cancel_all_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _cancel_all_tasks(loop: Loop) -> None:
        to_cancel = asyncio.all_tasks(loop)
        if not to_cancel:
            return
        for task in to_cancel:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
        for task in to_cancel:
            if task.cancelled():
                continue
            if task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception during uringloop.run() shutdown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
