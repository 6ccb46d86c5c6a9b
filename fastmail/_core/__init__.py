"""The Cython core: bytes in, tokens out.  No asyncio, no config, no policy.

Each module NAME here is written once, in Cython's pure-Python mode (NAME.py, typed by NAME.pxd), and
compiled by setup.py into an extension of the same name.  Normal use requires the compiled extension: a
missing one is a loud ImportError, never a silent slow fallback.  FASTMAIL_PURE=1 in the environment
selects the pure-Python twins instead (same source, interpreted), which is how the test suite checks that
both behave alike.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
MODULES = tuple(sorted(p.stem for p in _HERE.glob("*.py") if not p.stem.startswith("_")))
PURE = os.environ.get("FASTMAIL_PURE", "") == "1"


class CoreNotCompiled(ImportError):
    pass


def is_compiled(module: ModuleType) -> bool:
    origin = getattr(module, "__file__", "") or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def load_pure(name: str) -> ModuleType:
    """Load the pure-Python twin of `name` from its .py source, under a private module name."""
    modname = f"fastmail._core._pure_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, _HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


def load_compiled(name: str) -> ModuleType:
    """Load the compiled extension `name`; raise CoreNotCompiled when only the .py source is there."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _HERE / f"{name}{suffix}"
        if path.exists():
            modname = f"fastmail._core.{name}"
            if modname in sys.modules and is_compiled(sys.modules[modname]):
                return sys.modules[modname]
            spec = importlib.util.spec_from_file_location(modname, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[modname] = module
            return module
    raise CoreNotCompiled(
        f"fastmail._core.{name} is not compiled: build it with `pip install .` (or `make compile`), "
        "or set FASTMAIL_PURE=1 to run the slow pure-Python twin"
    )


def variants(name: str) -> dict[str, ModuleType]:
    """Both implementations of `name`, for tests and benchmarks: {"compiled": ..., "pure": ...}."""
    return {"compiled": load_compiled(name), "pure": load_pure(name)}


# Bind every core module now, so `from fastmail._core import smtp` gets the selected implementation.
for _name in MODULES:
    _mod = load_pure(_name) if PURE else load_compiled(_name)
    sys.modules[f"fastmail._core.{_name}"] = _mod
    globals()[_name] = _mod
del _name, _mod
