"""The compiled core is required in normal use; FASTMAIL_PURE=1 selects the pure-Python twins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastmail._core as core


def test_every_core_module_has_both_twins():
    assert set(core.MODULES) >= {"lines", "smtp", "data", "mime"}
    for name in core.MODULES:
        both = core.variants(name)
        assert core.is_compiled(both["compiled"]) and not core.is_compiled(both["pure"])
        public = {n for n in dir(both["pure"]) if not n.startswith("_") and n not in ("cython", "annotations")}
        missing = {n for n in public if not hasattr(both["compiled"], n)}
        assert not missing, f"{name}: compiled twin lacks {missing}"


def test_selected_implementation_follows_the_switch():
    from fastmail._core import smtp

    assert core.is_compiled(smtp) is (os.environ.get("FASTMAIL_PURE") != "1")


def test_missing_extension_is_a_loud_error(tmp_path):
    with pytest.raises(core.CoreNotCompiled, match="not compiled"):
        core.load_compiled("no_such_module")
    # a copy of the package without its .so files refuses to import the core unless asked for the twins
    pkg = tmp_path / "fastmail"
    subprocess.run(["cp", "-r", os.path.dirname(os.path.dirname(core.__file__)), str(tmp_path)], check=True)
    for so in (pkg / "_core").glob("*.so"):
        so.unlink()
    code = "import fastmail._core"
    env = {k: v for k, v in os.environ.items() if k != "FASTMAIL_PURE"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "is not compiled" in res.stderr
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "FASTMAIL_PURE": "1"},
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
