"""Compiles the Cython kernels in ext/ into scheduler.kernels; the pure-Python twins need nothing."""

import os

from setuptools import Extension, setup

if os.environ.get("BERTH_NO_EXTENSIONS"):
    extensions = []
else:
    from Cython.Build import cythonize

    extensions = cythonize(
        [Extension("scheduler.kernels._native", ["ext/_native.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    )

setup(ext_modules=extensions)
