"""cffi builder for the engine (API mode).

setuptools runs this through ``cffi_modules`` (see setup.py). The cdef is the
part of engine.h between the CDEF markers, so the interface lives in one file.
``UL_SANITIZE=address`` builds the engine (and, through setup.py, the scheduler
extension) under AddressSanitizer (see Makefile).
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
REL = os.path.relpath(HERE)


def _cdef() -> str:
    with open(os.path.join(HERE, "engine.h")) as f:
        text = f.read()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    return text[start : text.index("/* CDEF END */")]


def compile_flags() -> tuple[list[str], list[str]]:
    """Flags for both extensions (the engine here, the scheduler in setup.py)."""
    cflags = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"]
    ldflags: list[str] = []
    if os.environ.get("UL_WERROR"):
        cflags.append("-Werror")
    san = os.environ.get("UL_SANITIZE")
    if san:
        cflags += [f"-fsanitize={san}", "-fno-omit-frame-pointer", "-O1", "-g"]
        ldflags += [f"-fsanitize={san}"]
    return cflags, ldflags


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
_cflags, _ldflags = compile_flags()
ffibuilder.set_source(
    "uringloop._engine_cffi",
    '#include "engine.h"',
    sources=[os.path.join(REL, n) for n in ("common.c", "uring.c", "epoll.c")],
    include_dirs=[REL],
    depends=[os.path.join(REL, n) for n in ("engine.h", "uapi.h", "internal.h")],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
