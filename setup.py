"""Build the Cython core.

Every parser in fastmail/_core/ is one pure-Python-mode source file (NAME.py), optionally augmented by
NAME.pxd with C types.  Cython compiles that same source into the extension fastmail._core.NAME; the .py
file stays installed as the pure-Python twin (selected with FASTMAIL_PURE=1, see fastmail/_core/__init__.py).
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

CORE = Path("fastmail") / "_core"
modules = sorted(p.stem for p in CORE.glob("*.py") if not p.stem.startswith("_"))

extensions = [
    Extension(f"fastmail._core.{name}", [str(CORE / f"{name}.py")], extra_compile_args=["-O2"])
    for name in modules
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    ),
)
