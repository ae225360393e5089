"""Builds the optional compiled kernel (pillow_nic._intmlp); everything else is in pyproject.toml.

Without a C compiler the package installs and works without it (ONNX Runtime then runs
the lossless networks, with identical results)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pillow_nic._intmlp", ["pillow_nic/_intmlp.c"], optional=True,
                             extra_compile_args=["-O3"])])
