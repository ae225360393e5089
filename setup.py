"""Builds the optional compiled kernels (pillow_nic._intmlp: the lossless networks and their
features; pillow_nic._rans: rANS decoding); everything else is in pyproject.toml.

Without a C compiler the package installs and works without them (ONNX Runtime then runs
the lossless networks and constriction decodes, with identical results)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(name, [f"pillow_nic/{name.split('.')[-1]}.c"], depends=["pillow_nic/_buffers.h"],
                             optional=True, extra_compile_args=["-O3"])
                   for name in ("pillow_nic._intmlp", "pillow_nic._rans")])
