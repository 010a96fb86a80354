"""Compiles the Cython kernels in ext/ into scheduler.kernels; the pure-Python twins need nothing."""

import os
import platform

from setuptools import Extension, setup

# The GPU masks are counted with __builtin_popcountll: without -mpopcnt x86-64 compilers emit a
# bit-twiddling routine instead of the POPCNT instruction (every x86-64 CPU since 2008 has it).
POPCNT = ["-mpopcnt"] if platform.machine().lower() in ("x86_64", "amd64") else []

if os.environ.get("BERTH_NO_EXTENSIONS"):
    extensions = []
else:
    from Cython.Build import cythonize

    extensions = cythonize(
        [Extension("scheduler.kernels._native", ["ext/_native.pyx"], extra_compile_args=["-O3", *POPCNT])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    )

setup(ext_modules=extensions)
