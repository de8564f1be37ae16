"""uringloop: an asyncio event loop for Linux on an io_uring completion engine.

The engine (``uringloop.engine``) runs io_uring where the kernel allows it and
an epoll backend behind the same interface where it does not.
"""

from .engine import Engine, backend_info

__all__ = ["Engine", "backend_info"]
__version__ = "0.1.0"
