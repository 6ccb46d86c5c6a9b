"""A plain (non-editable) `pip install` of the source into a fresh venv compiles the Cython core.

The source is the working tree's files as git sees them (tracked and new, nothing ignored: no .so, no .c,
no build/), copied to a temporary folder, so the build starts from scratch and writes nothing into the
repository.  The venv is a clean one (no system site-packages); pip uses this machine's configured index.
Then, from another folder (so nothing resolves to the repository), every fastmail._core module must be the
compiled extension from the venv's site-packages, the pure-Python twins must be installed beside them, and
the `fastmail` command must run.  About a minute: it compiles every core module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]

CHECK = r"""
import importlib.machinery, json, sys
import fastmail, fastmail._core as core
from fastmail._core import smtp
out = {"fastmail": fastmail.__file__, "suffixes": importlib.machinery.EXTENSION_SUFFIXES, "modules": {}}
for name in core.MODULES:
    mod = sys.modules["fastmail._core." + name]
    out["modules"][name] = {"file": mod.__file__, "compiled": core.is_compiled(mod),
                            "pure": core.load_pure(name).__file__}
out["parsed"] = repr(smtp.parse_mail_from(b"FROM:<a@b.example> SIZE=10"))
out["pure_parsed"] = repr(core.load_pure("smtp").parse_mail_from(b"FROM:<a@b.example> SIZE=10"))
print(json.dumps(out))
"""


def _source_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():  # a tracked file may be deleted in the working tree
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))


def test_pip_install_compiles_the_core_into_a_fresh_venv(tmp_path):
    src, venv, elsewhere = tmp_path / "src", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _source_copy(src)
    core_src = src / "fastmail" / "_core"
    assert (core_src / "smtp.py").is_file() and (src / "setup.py").is_file()
    assert not [p.name for p in core_src.iterdir() if p.suffix in (".so", ".c")]  # nothing prebuilt

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "FASTMAIL_PURE", "PYTHONSAFEPATH")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    py = venv / "bin" / "python"
    assert not subprocess.run([str(py), "-c", "import fastmail"], cwd=elsewhere, env=env,
                              capture_output=True).returncode == 0  # a clean venv: no fastmail yet
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=840)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    res = subprocess.run([str(py), "-c", CHECK], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip())
    assert Path(info["fastmail"]) == site / "fastmail" / "__init__.py"
    expected = sorted(p.stem for p in core_src.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(info["modules"]) == expected and "smtp" in expected
    for name, mod in info["modules"].items():
        so = Path(mod["file"])
        assert so.parent == site / "fastmail" / "_core", (name, so)
        assert so.name.startswith(name + ".") and so.name.endswith(".so") and mod["compiled"], (name, so)
        assert any(so.name == name + suffix for suffix in info["suffixes"])
        assert Path(mod["pure"]) == site / "fastmail" / "_core" / f"{name}.py"  # the twin is installed too
    assert info["parsed"] == info["pure_parsed"] and "a" in info["parsed"] and "b.example" in info["parsed"]

    fm = venv / "bin" / "fastmail"
    res = subprocess.run([str(fm), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: fastmail") and "serve" in res.stdout, res
    res = subprocess.run([str(fm), "check-config"], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("<defaults>: OK ("), res
    assert os.listdir(elsewhere) == []  # check-config creates nothing
