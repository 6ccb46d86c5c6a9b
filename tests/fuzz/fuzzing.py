"""The fuzz harnesses' hypothesis settings: one place decides how long tests/fuzz runs.

Two profiles (see tests/fuzz/README.md):

    ci    (the default)  each harness runs its own example count (the `examples` given to fuzz()), sized so
                         the whole directory takes a couple of minutes on a small machine; derandomized
                         (the same examples every run, no example database): CI never flakes.
    long  FASTMAIL_FUZZ=long: each harness runs FASTMAIL_FUZZ_SCALE times its CI count (default 25), or
                         exactly FASTMAIL_FUZZ_EXAMPLES examples when that is set; random (a new seed each
                         run, printed with a failure), failures kept in .hypothesis/ so a rerun replays them.

A crash found in a long run becomes a corpus case: an @example on the harness that found it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

MODE = os.environ.get("FASTMAIL_FUZZ", "ci").strip().lower() or "ci"
if MODE not in ("ci", "long"):
    raise RuntimeError(f"FASTMAIL_FUZZ={MODE!r}: expected ci or long")
SCALE = int(os.environ.get("FASTMAIL_FUZZ_SCALE", "25"))
EXAMPLES = int(os.environ["FASTMAIL_FUZZ_EXAMPLES"]) if os.environ.get("FASTMAIL_FUZZ_EXAMPLES") else None

_COMMON = dict(
    deadline=None,  # no wall-clock limit on one example: the machine is shared
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example],
)
settings.register_profile("fastmail-ci", derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("fastmail-long", derandomize=False, print_blob=True, **_COMMON)
PROFILE = settings.get_profile(f"fastmail-{MODE}")


def examples_for(ci_examples: int) -> int:
    """How many examples a harness sized `ci_examples` for CI runs in the selected mode."""
    if MODE == "ci":
        return ci_examples
    return EXAMPLES if EXAMPLES is not None else ci_examples * SCALE


def fuzz(ci_examples: int, **overrides) -> settings:
    """The settings of one harness: `ci_examples` examples in CI, more in the long mode."""
    return settings(PROFILE, max_examples=examples_for(ci_examples), **overrides)
