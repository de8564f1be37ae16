"""The C sources compile without a warning against the running Python's headers.

sched.c has version branches (PY_VERSION_HEX); a warning that only one Python's
headers provoke (an argument used only in a 3.11+ branch, say) breaks the
`UL_WERROR=1` build on that Python alone, so each interpreter the suite runs on
checks its own. The flags are the build's own (`compile_flags()` with
UL_WERROR set); `-fsyntax-only` keeps it to the compiler's front end.
"""

import importlib.util
import os
import shlex
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "uringloop", "_core")


def _werror_flags(monkeypatch) -> list[str]:
    spec = importlib.util.spec_from_file_location("_ul_build_flags", os.path.join(CORE, "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setenv("UL_WERROR", "1")
    monkeypatch.delenv("UL_SANITIZE", raising=False)
    cflags, _ = build.compile_flags()
    assert "-Werror" in cflags
    return cflags


def _compiler() -> list[str]:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler {cc[0]!r} on this machine (the build needs one too)")
    return cc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["sched.c", "common.c", "uring.c", "epoll.c"])
def test_c_source_compiles_without_warnings(source, monkeypatch):
    cmd = [
        *_compiler(),
        *_werror_flags(monkeypatch),
        "-fsyntax-only",
        "-I" + CORE,
        "-I" + sysconfig.get_paths()["include"],
        os.path.join(CORE, source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
