"""Builds the Cython engine; metadata lives in pyproject.toml."""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# engine/*.pyx and its subpackages (engine/codecs/*.pyx): one extension module per file, named after its path.
extensions = [
    Extension(".".join(path.with_suffix("").parts), [str(path)], extra_compile_args=["-O3"])
    for path in sorted(Path("engine").rglob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
