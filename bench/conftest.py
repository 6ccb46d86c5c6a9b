"""Benchmark plumbing: say what was compared, on which machine, with which versions and commit, and print
throughput (compiled vs pure side by side) after pytest-benchmark's timing table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections import defaultdict

import pytest

_RATES: dict[str, dict[str, tuple[float, str]]] = defaultdict(dict)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=os.path.dirname(__file__)).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_report_header(config):
    import Cython

    return [
        "fastmail bench: compiled (Cython) vs pure-Python twin of fastmail._core, same source",
        f"machine: {_cpu()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        f"versions: Python {sys.version.split()[0]}, Cython {Cython.__version__}; commit {_commit()}",
    ]


@pytest.fixture
def record_rate(benchmark):
    """record_rate(units_per_call, unit): after benchmark(...), note units/s (from the median time)."""

    def record(units: float, unit: str) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable
            return
        rate = units / stats.stats.median
        benchmark.extra_info[unit] = rate
        params = benchmark.name.rsplit("[", 1)[-1].rstrip("]").split("-")
        impl = "compiled" if "compiled" in params else "pure" if "pure" in params else "-".join(params)
        _RATES[benchmark.group or benchmark.name][impl] = (rate, unit)

    return record


def _fmt(rate: float, unit: str) -> str:
    if unit == "MB/s":
        return f"{rate:,.0f} MB/s"
    return f"{rate:,.0f} {unit}"


def pytest_terminal_summary(terminalreporter):
    if not _RATES:
        return
    tr = terminalreporter
    tr.section("throughput (median): compiled vs pure")
    for group, by_impl in _RATES.items():
        parts = [f"{impl} {_fmt(rate, unit)}" for impl, (rate, unit) in sorted(by_impl.items())]
        line = f"{group}: " + ", ".join(parts)
        if "compiled" in by_impl and "pure" in by_impl:
            line += f"  (x{by_impl['compiled'][0] / by_impl['pure'][0]:.1f})"
        tr.write_line(line)
