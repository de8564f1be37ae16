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

from .engine import Engine, backend_info
from .loop import Loop

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

    def run(main, *, debug=None):
        """Run a coroutine on a new uringloop loop, as asyncio.run does."""
        if asyncio.events._get_running_loop() is not None:
            raise RuntimeError("asyncio.run() cannot be called from a running event loop")
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)

else:

    def run(main, *, debug=None):
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

    def _cancel_all_tasks(loop):
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
