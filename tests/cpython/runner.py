"""Run one module of CPython's own test.test_asyncio against uringloop.

Usage: python runner.py MODULE   (the backend comes from URINGLOOP_BACKEND)

Two ways of binding, as the issue asks:
* mixin modules (test_sock_lowlevel, test_events): the module's loop-agnostic
  test mixin is bound to uringloop.Loop in a TestCase of our own, and only that
  class runs;
* policy modules (test_tasks, test_locks, ...): the whole module runs with
  uringloop's policy installed, so every asyncio.new_event_loop() is ours.

Excluded tests (exclusions.py) are turned into skips that state the reason.
The last line is a JSON summary, including how many uringloop loops were made,
so the caller can tell that our loop really ran the tests.
"""

import asyncio
import faulthandler
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from exclusions import excluded  # noqa: E402

import uringloop  # noqa: E402
from uringloop.loop import Loop  # noqa: E402

loops_made = 0
_init = Loop.__init__


def _counting_init(self, *args, **kwargs):
    global loops_made
    loops_made += 1
    _init(self, *args, **kwargs)


Loop.__init__ = _counting_init

# module -> [(class, the method that makes the loop)]. A mixin is bound to
# uringloop.Loop in a TestCase of our own; a stock-loop class (Selector...) is
# subclassed with the factory replaced, so its extra tests run on ours too.
MIXINS = {
    "test_sock_lowlevel": [("BaseSockTestsMixin", "create_event_loop")],
    "test_events": [("EventLoopTestsMixin", "create_event_loop")],
    "test_server": [("SelectorStartServerTests", "new_loop")],
    "test_sendfile": [("SendfileTestsBase", "create_event_loop")],
    "test_sslproto": [("SelectorStartTLSTests", "new_loop")],
    "test_buffered_proto": [("BufferedProtocolSelectorTests", "new_loop")],
    # SubprocessMixin makes its loop in the TestCase's setUp (see below)
    "test_subprocess": [("SubprocessMixin", "setUp")],
}
# Mixin modules whose other TestCases also run, with uringloop's policy
# installed, except those that bind a stock loop themselves (they define their
# own new_loop/create_event_loop: SelectorStartServerTests, ...). test_events
# is not one: its other classes test the stock loops' internals.
WITH_POLICY_CLASSES = {"test_server", "test_sendfile", "test_sslproto", "test_buffered_proto"}


def bound_suite(modname: str) -> unittest.TestSuite:
    import importlib

    from test.test_asyncio import utils as test_utils

    mod = importlib.import_module(f"test.test_asyncio.{modname}")
    suite = unittest.TestSuite()
    for class_name, factory in MIXINS[modname]:
        mixin = getattr(mod, class_name)
        bases = (mixin,) if issubclass(mixin, unittest.TestCase) else (mixin, test_utils.TestCase)

        def create_event_loop(self):
            return uringloop.Loop()

        if factory == "setUp":

            def create_event_loop(self):
                test_utils.TestCase.setUp(self)
                self.loop = uringloop.Loop()
                self.set_event_loop(self.loop)

        name = class_name.replace("Mixin", "").replace("Selector", "")
        cls = type(
            f"Uringloop{name}",
            bases,
            {factory: create_event_loop, "__module__": mod.__name__},
        )
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(cls))
    if modname in WITH_POLICY_CLASSES:
        uringloop.install()
        for name in dir(mod):
            obj = getattr(mod, name)
            if (
                isinstance(obj, type)
                and issubclass(obj, unittest.TestCase)
                and obj.__module__ == mod.__name__
                and "new_loop" not in obj.__dict__
                and "create_event_loop" not in obj.__dict__
            ):
                suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(obj))
    return suite


# test_unix_events' pipe transport tests build the stock classes by name
# (unix_events._UnixReadPipeTransport / _UnixWritePipeTransport) on a mock
# TestLoop, with os.read/os.write/os.fstat patched. Bound here: each test runs
# on a real uringloop.Loop with a real pipe end (wrapped in a Mock, so that
# `pipe.close` can still be asserted) and with our transport classes in place
# of the stock ones. The tests that inspect the stock classes' internals (the
# loop's reader/writer registry, _read_ready, _write_ready, the bytearray
# buffer, mocked os calls) cannot apply and are excluded one by one, each with
# its reason (exclusions.py).
PIPE_CLASSES = {
    "test_unix_events": [
        ("UnixReadPipeTransportTests", "_UnixReadPipeTransport", "ReadPipeTransport"),
        ("UnixWritePipeTransportTests", "_UnixWritePipeTransport", "WritePipeTransport"),
    ],
}


def pipe_suite(modname: str) -> unittest.TestSuite:
    import importlib
    import io
    from asyncio import unix_events
    from unittest import mock

    from test.test_asyncio import utils as test_utils

    from uringloop.transports import pipe as ul_pipe

    mod = importlib.import_module(f"test.test_asyncio.{modname}")
    suite = unittest.TestSuite()
    for class_name, stock_name, ours_name in PIPE_CLASSES[modname]:
        base = getattr(mod, class_name)
        reading = stock_name == "_UnixReadPipeTransport"

        def setUp(self, reading=reading, stock_name=stock_name, ours_name=ours_name):
            test_utils.TestCase.setUp(self)
            self.loop = uringloop.Loop()
            self.set_event_loop(self.loop)
            self.protocol = test_utils.make_test_protocol(
                asyncio.Protocol if reading else asyncio.BaseProtocol
            )
            r, w = os.pipe()
            mine, other = (r, w) if reading else (w, r)
            f = os.fdopen(mine, "rb" if reading else "wb", 0)
            self.pipe = mock.Mock(spec_set=io.RawIOBase, wraps=f)
            self.addCleanup(os.close, other)
            self.addCleanup(f.close)
            patcher = mock.patch.object(unix_events, stock_name, getattr(ul_pipe, ours_name))
            patcher.start()
            self.addCleanup(patcher.stop)

        cls = type(f"Uringloop{class_name}", (base,), {"setUp": setUp,
                                                       "__module__": mod.__name__})
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(cls))
    return suite


def policy_suite(modname: str) -> unittest.TestSuite:
    uringloop.install()
    return unittest.defaultTestLoader.loadTestsFromName(f"test.test_asyncio.{modname}")


def apply_exclusions(suite, modname, skipped_by_us):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            apply_exclusions(test, modname, skipped_by_us)
            continue
        name = test.id().rsplit(".", 2)
        key = f"{modname}.{name[-1]}"
        reason = excluded(key, sys.version_info)
        if reason:
            method = getattr(test, test._testMethodName)
            setattr(test, test._testMethodName, unittest.skip(f"uringloop: {reason}")(method))
            skipped_by_us.append(key)


def main():
    modname = sys.argv[1]
    # a hang prints every thread's stack and ends the run instead of stalling CI
    faulthandler.dump_traceback_later(int(os.environ.get("RUNNER_WATCHDOG", "420")), exit=True)
    if modname in PIPE_CLASSES:
        suite = pipe_suite(modname)
    else:
        suite = bound_suite(modname) if modname in MIXINS else policy_suite(modname)
    ours = []
    apply_exclusions(suite, modname, ours)
    verbosity = int(os.environ.get("V", "1"))
    result = unittest.TextTestRunner(verbosity=verbosity, stream=sys.stderr).run(suite)
    asyncio.set_event_loop_policy(None)
    failed = [t.id() for t, _ in result.failures + result.errors]
    print(
        json.dumps(
            {
                "module": modname,
                "backend": os.environ.get("URINGLOOP_BACKEND", "auto"),
                "ran": result.testsRun,
                "failed": failed,
                "unexpected_successes": len(result.unexpectedSuccesses),
                "skipped": len(result.skipped),
                "excluded": ours,
                "loops_made": loops_made,
            }
        )
    )
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
