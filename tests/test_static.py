"""ruff and mypy are part of the test run (STYLE habit 10): a lint or type error fails the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tool, args", [
    ("ruff", ["check", "fastmail", "tests", "bench"]),
    ("mypy", ["fastmail"]),
])
def test_static_checks(tool, args):
    exe = shutil.which(tool, path=str(Path(sys.executable).parent)) or shutil.which(tool)
    assert exe, f"{tool} is a test dependency (pip install -e '.[test]')"
    res = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
