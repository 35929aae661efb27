"""Builds the Cython extensions (the engine and the clients' load generator); metadata lives in pyproject.toml."""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# Every .pyx under these packages becomes the module its path names (engine/srtp.pyx -> engine.srtp,
# signaling/clients/loadgen.pyx -> signaling.clients.loadgen); modules cimport each other by those names.
PACKAGES = ("engine", "signaling")

extensions = [
    Extension(".".join(path.with_suffix("").parts), [str(path)], extra_compile_args=["-O3"])
    for package in PACKAGES
    for path in sorted(Path(package).rglob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
