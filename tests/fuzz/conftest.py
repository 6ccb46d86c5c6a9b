"""tests/fuzz: the selected fuzz profile in pytest's header (see fuzzing.py)."""

from __future__ import annotations

from tests.fuzz import fuzzing


def pytest_report_header(config):
    if fuzzing.MODE == "ci":
        return "fuzz: ci profile (derandomized, each harness its CI example count)"
    count = fuzzing.EXAMPLES if fuzzing.EXAMPLES is not None else f"{fuzzing.SCALE}x the CI count"
    return f"fuzz: long profile (random seed, {count} examples per harness)"
