"""CPython test_asyncio tests that do not run against uringloop, each with its reason.

Keys are "module.test_name"; the value is the reason. Empty: every transport
family is written (stream, TLS, datagram, pipe, subprocess). A test that must
be excluded again is listed here one by one, with the reason it cannot run.
"""

EXCLUDED: dict = {}


def excluded(key, version):
    return EXCLUDED.get(key)
