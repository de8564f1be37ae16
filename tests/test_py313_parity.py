"""What third parties' suites met on Python 3.12 and 3.13 (decisions 913-918),
reduced to plain asyncio, each uringloop kind against the stock loop.

A Unix server's socket-file cleanup (3.13's ``create_unix_server(...,
cleanup_socket=True)``, the default): ``Server.close()`` stats and unlinks
the file from stock's own ``_UnixSelectorEventLoop._stop_serving`` frame on
every loop (decision 915). blockbuster, which aiohttp's tests run under,
allows those calls by that frame's file and function only; here a recorder
in ``os.stat``/``os.unlink`` reads the caller's frame as blockbuster does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import pytest
from conftest import run_in

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 13),
    reason="create_unix_server's cleanup_socket and the cleanup in _stop_serving are 3.13's",
)

STOCK_FRAME = ("asyncio/unix_events.py", "_stop_serving")


def _record_callers(monkeypatch, path, fail_unlink=False):
    """(call, file, function) of each os.stat/os.unlink of ``path``; with
    fail_unlink its unlink raises PermissionError instead."""
    calls = []
    real = {"stat": os.stat, "unlink": os.unlink}

    def recorder(name):
        def call(p, *args, **kw):
            if p == path:
                code = sys._getframe(1).f_code
                where = "/".join(code.co_filename.split(os.sep)[-2:])
                calls.append((name, where, code.co_name))
                if name == "unlink" and fail_unlink:
                    raise PermissionError(13, "refused", p)
            return real[name](p, *args, **kw)

        return call

    monkeypatch.setattr(os, "stat", recorder("stat"))
    monkeypatch.setattr(os, "unlink", recorder("unlink"))
    return calls


@pytest.mark.parametrize("case", ["removed", "replaced", "unlink_fails"])
def test_unix_server_cleanup_runs_in_stock_code(any_loop, tmp_path, monkeypatch, caplog, case):
    """Server.close() of a Unix server: the file's stat and unlink are made by
    stock's _stop_serving (the file removed; a file put at the path since is
    kept; an unlink error logged, the server closed all the same), on every
    loop."""
    path = str(tmp_path / "s")

    async def main():
        srv = await any_loop.create_unix_server(asyncio.Protocol, path)
        if case == "replaced":
            os.rename(path, path + ".old")
            open(path, "w").close()  # another inode at the path
        calls = _record_callers(monkeypatch, path, fail_unlink=case == "unlink_fails")
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            srv.close()
            monkeypatch.undo()
            await asyncio.wait_for(srv.wait_closed(), 5)
        return calls

    calls = run_in(any_loop, main())
    if case == "replaced":
        assert calls == [("stat", *STOCK_FRAME)]
        assert os.path.exists(path)
    else:
        assert calls == [("stat", *STOCK_FRAME), ("unlink", *STOCK_FRAME)]
        assert os.path.exists(path) == (case == "unlink_fails")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if case == "unlink_fails":
        assert len(errors) == 1
        assert errors[0].startswith(f"Unable to clean up listening UNIX socket {path!r}:")
    else:
        assert errors == []
