# cffi_modules is a setup() keyword that pyproject.toml cannot express.
from setuptools import setup

setup(cffi_modules=["uringloop/_core/build.py:ffibuilder"])
