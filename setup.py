# cffi_modules is a setup() keyword that pyproject.toml cannot express; the
# scheduler extension is built with the engine's flags (UL_SANITIZE, UL_WERROR).
import importlib.util
import os

from setuptools import Extension, setup

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "_ul_build", os.path.join(_HERE, "uringloop", "_core", "build.py")
)
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)
_cflags, _ldflags = _build.compile_flags()

setup(
    cffi_modules=["uringloop/_core/build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "uringloop._sched",
            sources=["uringloop/_core/sched.c", "uringloop/_core/handles.c",
                     "uringloop/_core/dgram.c", "uringloop/_core/sslcore.c"],
            depends=["uringloop/_core/stream.c", "uringloop/_core/sock.c",
                     "uringloop/_core/engine.h", "uringloop/_core/handles.h",
                     "uringloop/_core/dgram.h",
                     "uringloop/_core/sslcore.h"],
            extra_compile_args=_cflags,
            extra_link_args=_ldflags,
        )
    ],
)
